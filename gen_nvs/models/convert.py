"""One converter between the official checkpoints' key names and `NVSModel`'s.

| official key | NVSModel key |
| --- | --- |
| LagerNVS `reconstructor.vggt.aggregator.*` / VGGT-1B `aggregator.*` | `encoder.aggregator.*` |
| LagerNVS `reconstructor.{camera_mlp, geo_feature_connector, geo_feature_norm}.*` | `encoder.*` |
| LagerNVS `renderer.*` | `decoder.*` |
| VGGT-1B `camera_head.*` | `camera_head.*` |

`decoder.point_head.*` is ours alone (no official checkpoint has it). VGGT-1B's depth,
point and track heads have no counterpart and are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from gen_nvs.models import checkpoint as ckpt
from gen_nvs.models.config import model_config
from gen_nvs.models.decoder import HighwayDecoder
from gen_nvs.models.nvs import NVSModel, build_model

logger = logging.getLogger(__name__)

RENDERER_PREFIX = "renderer."
OURS_ONLY_PREFIXES = ("decoder.point_head.",)
# (official prefix, NVSModel prefix): our modules keep the official submodule names.
_PREFIXES = (
    (RENDERER_PREFIX, "decoder."),
    ("reconstructor.vggt.aggregator.", "encoder.aggregator."),
    ("reconstructor.camera_mlp.", "encoder.camera_mlp."),
    ("reconstructor.geo_feature_connector.", "encoder.geo_feature_connector."),
    ("reconstructor.geo_feature_norm.", "encoder.geo_feature_norm."),
    ("aggregator.", "encoder.aggregator."),  # VGGT-1B
    ("camera_head.", "camera_head."),  # VGGT-1B
)


def official_to_ours(key: str) -> str | None:
    """Official key -> NVSModel key, or None for tensors we do not use.

    >>> official_to_ours("reconstructor.vggt.aggregator.camera_token")
    'encoder.aggregator.camera_token'
    >>> official_to_ours("depth_head.norm.weight") is None
    True
    """
    for official, ours in _PREFIXES:
        if key.startswith(official):
            return ours + key.removeprefix(official)
    return None


def ours_to_official(key: str, checkpoint: str) -> str | None:
    """NVSModel key -> its name in `checkpoint` ("lagernvs" or "vggt"), or None if absent there."""
    if checkpoint not in ("lagernvs", "vggt"):
        raise ValueError(f"checkpoint must be 'lagernvs' or 'vggt', got {checkpoint!r}")
    if key.startswith(OURS_ONLY_PREFIXES):
        return None
    if key.startswith("decoder."):
        return RENDERER_PREFIX + key.removeprefix("decoder.") if checkpoint == "lagernvs" else None
    if key.startswith("camera_head."):
        return key if checkpoint == "vggt" else None
    inner = key.removeprefix("encoder.")
    if inner.startswith("aggregator."):
        return ("reconstructor.vggt." + inner) if checkpoint == "lagernvs" else inner
    return ("reconstructor." + inner) if checkpoint == "lagernvs" else None


def convert_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official state dict -> NVSModel keys (float32); unused official tensors dropped."""
    out = {}
    for key, value in state_dict.items():
        ours = official_to_ours(key)
        if ours is not None:
            out[ours] = value.float() if value.is_floating_point() else value
    return out


def load_official_weights(
    model: NVSModel,
    *,
    lagernvs: str | Path | Mapping[str, Tensor] | None = None,
    vggt: str | Path | Mapping[str, Tensor] | None = None,
) -> list[str]:
    """Load official checkpoints (paths, `hf://` paths or state dicts) into `model`.

    `lagernvs` fills the encoder and decoder; `vggt` (VGGT-1B) fills the aggregator and
    the camera head (LagerNVS's fine-tuned aggregator wins when both are given). Shapes
    must match exactly (a checkpoint of the wrong variant or size is a ValueError that
    lists the differences). Returns the model keys left at their initial values.
    """
    converted: dict[str, Tensor] = {}
    parts = (
        (vggt, ("encoder.aggregator.", "camera_head.")),
        (lagernvs, ("encoder.", "decoder.")),
    )
    for source, prefixes in parts:
        if source is None:
            continue
        name = "state dict" if isinstance(source, Mapping) else str(source)
        sd = source if isinstance(source, Mapping) else ckpt.load_official_state_dict(source)
        part = {k: v for k, v in convert_official(sd).items() if k.startswith(prefixes)}
        if not part:
            raise ValueError(f"{name}: holds none of the expected tensors {prefixes}")
        converted.update(part)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ckpt.check_layout(
        {k: tuple(v.shape) for k, v in converted.items()},
        {k: own[k] for k in converted if k in own},
        "official checkpoint does not fit the model (wrong variant or size?)",
    )
    model.load_state_dict(converted, strict=False)
    untouched = sorted(set(own) - set(converted))
    if untouched:
        logger.info("%d model tensors not in the checkpoint(s) keep their init", len(untouched))
    return untouched


def official_layout(model: NVSModel, checkpoint: str) -> dict[str, tuple[int, ...]]:
    """The model's state dict under official names: what `checkpoint` must contain."""
    layout = {}
    for key, value in model.state_dict().items():
        name = ours_to_official(key, checkpoint)
        if name is not None:
            layout[name] = tuple(value.shape)
    return layout


def check_official_layout(variant: str, manifest: str | Path) -> None:
    """Build the full-size model on the meta device and check that it converts to exactly
    the keys and shapes of an official manifest (`*.keys.json`); ValueError otherwise."""
    with torch.device("meta"):
        model = build_model(model_config("lagernvs", variant=variant))
    expected = ckpt.read_key_manifest(manifest)
    kind = (
        "vggt"
        if all(not k.startswith(("renderer.", "reconstructor.")) for k in expected)
        else "lagernvs"
    )
    actual = official_layout(model, kind)
    if kind == "vggt":  # VGGT-1B also ships depth/point/track heads, which we do not use
        expected = {k: v for k, v in expected.items() if official_to_ours(k) is not None}
    ckpt.check_layout(actual, expected, f"{variant} model vs {Path(manifest).name}")


def load_official_renderer(decoder: HighwayDecoder, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Load the renderer of an official LagerNVS state dict (its `"model"` entry) into a
    lone `decoder`, through the one key map (`official_to_ours`; tensors in float32).

    Keys of our own (the point head) are absent from official checkpoints: they stay at
    their initial values, are logged, and returned. Any other missing or unexpected key
    (e.g. a checkpoint of another variant) raises ValueError.
    """
    converted = {
        key.removeprefix("decoder."): value
        for key, value in convert_official(state_dict).items()
        if key.startswith("decoder.")
    }
    expected = decoder.state_dict()
    wrong = [
        f"{key} {list(value.shape)} (expected {list(expected[key].shape)})"
        for key, value in converted.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if wrong:
        raise ValueError(f"checkpoint sizes do not fit the decoder: {wrong[:5]} ({len(wrong)})")
    result = decoder.load_state_dict(converted, strict=False)
    ours_only = [key for key in result.missing_keys if key.startswith("point_head.")]
    missing = [key for key in result.missing_keys if key not in ours_only]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"checkpoint does not fit a {decoder.variant} decoder: missing {missing[:5]} "
            f"({len(missing)}), unexpected {result.unexpected_keys[:5]} "
            f"({len(result.unexpected_keys)})"
        )
    if ours_only:
        logger.warning(
            "official checkpoint has no point head: %d point-head tensors keep their init",
            len(ours_only),
        )
    return ours_only
