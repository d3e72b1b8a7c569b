"""Regression renders of many target views, as `NVSPipeline.render` makes them.

`render_targets` renders the targets of one encoded scene a few views per decoder call,
so that memory stays bounded and progress is steady however long the trajectory.

Dimension legend: `t` target views, `h`/`w` render height/width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gen_nvs.inputs import TargetCameras
from gen_nvs.models.decoder import DecoderOutput
from gen_nvs.models.nvs import EncodedScene, NVSModel

# progress(fraction in [0, 1], description); gr.Progress fits.
Progress = Callable[[float, str], object]

RENDER_CHUNK = 4  # target views per decoder call (steady progress, bounded memory)


def no_progress(fraction: float, desc: str) -> None:
    return None


def render_targets(
    model: NVSModel,
    scene: EncodedScene,
    targets: TargetCameras,
    image_hw: tuple[int, int],
    device: torch.device | str,
    progress: Progress = no_progress,
    out_device: torch.device | str = "cpu",
) -> DecoderOutput:
    """The regression render of every target of one encoded scene, `RENDER_CHUNK` views
    per decoder call; on `out_device`, rgb [1, t, 3, h, w], points [1, t, h, w, 3] and
    conf [1, t, h, w] (None without a point head)."""
    c2w, fxfycxcy = targets.batch(device)
    t = targets.num_views
    what = f"rendering {t} view{'s' * (t > 1)}"
    with torch.no_grad():
        out = model.render(
            scene, c2w, fxfycxcy, image_hw, normalized=targets.normalized,
            chunk_size=RENDER_CHUNK, progress=lambda fraction: progress(fraction, what),
            out_device=out_device,
        )  # fmt: skip
    progress(1.0, "rendered")
    return out
