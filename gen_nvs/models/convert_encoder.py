"""Official checkpoint keys -> `VGGTEncoder` / `CameraHead` state-dict keys.

Our modules keep the official submodule names, so the mapping is a prefix change:

| official key (LagerNVS `model.pt["model"]`, VGGT-1B `model.pt`) | ours |
| --- | --- |
| `reconstructor.vggt.aggregator.*` | encoder `aggregator.*` |
| `reconstructor.camera_mlp.*` | encoder `camera_mlp.*` |
| `reconstructor.geo_feature_connector.*` | encoder `geo_feature_connector.*` |
| `reconstructor.geo_feature_norm.*` | encoder `geo_feature_norm.*` |
| `aggregator.*` (VGGT-1B) | encoder `aggregator.*` |
| `camera_head.*` (VGGT-1B) | camera head `*` |

Everything else (the LagerNVS renderer, VGGT's depth/point/track heads) is not ours to map.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Component = Literal["encoder", "camera_head"]

_PREFIXES: tuple[tuple[str, Component, str], ...] = (
    ("reconstructor.vggt.aggregator.", "encoder", "aggregator."),
    ("reconstructor.camera_mlp.", "encoder", "camera_mlp."),
    ("reconstructor.geo_feature_connector.", "encoder", "geo_feature_connector."),
    ("reconstructor.geo_feature_norm.", "encoder", "geo_feature_norm."),
    ("aggregator.", "encoder", "aggregator."),
    ("camera_head.", "camera_head", ""),
)


def map_official_key(key: str) -> tuple[Component, str] | None:
    """Official key -> (component, key inside that component), or None if neither the encoder
    nor the camera head owns it.

    >>> map_official_key("reconstructor.vggt.aggregator.camera_token")
    ('encoder', 'aggregator.camera_token')
    >>> map_official_key("camera_head.trunk.0.ls1.gamma")
    ('camera_head', 'trunk.0.ls1.gamma')
    """
    for official, component, ours in _PREFIXES:
        if key.startswith(official):
            return component, ours + key.removeprefix(official)
    return None


def convert_official_state_dict(
    state_dict: dict[str, Tensor],
) -> dict[Component, dict[str, Tensor]]:
    """Split an official state dict into `{"encoder": ..., "camera_head": ...}` state dicts
    for `VGGTEncoder.load_state_dict` / `CameraHead.load_state_dict`; unmapped keys are
    dropped. A VGGT-1B checkpoint has no camera MLP or connector: load it with
    `strict=False` and those stay at their initialisation."""
    converted: dict[Component, dict[str, Tensor]] = {"encoder": {}, "camera_head": {}}
    for key, tensor in state_dict.items():
        mapped = map_official_key(key)
        if mapped is not None:
            converted[mapped[0]][mapped[1]] = tensor
    return converted
