"""The app's own pictures, drawn with PIL and numpy only: enlarged previews, the
unseen-region overlay and a plot of source and target cameras. The pictures `gen-nvs
render` writes too (colourised depth, animated GIFs) are in `gen_nvs.outputs`.

Images go in as tensors [3, h, w] in [0, 1] (or [h, w] maps) and come out as PIL images.

Dimension legend: `t` views, `h`/`w` image height/width, `n` cameras.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from gen_nvs.outputs import to_pil

UNSEEN_COLOUR = (255, 0, 200)
SOURCE_COLOUR = (40, 110, 230)
TARGET_COLOUR = (235, 90, 30)


def enlarge(image: Image.Image, min_side: int = 256) -> Image.Image:
    """Scale a small image up by a whole factor (nearest pixels) to at least `min_side`."""
    factor = max(1, math.ceil(min_side / min(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def overlay_mask(image: Tensor, mask: Tensor, alpha: float = 0.6) -> Image.Image:
    """Tint image [3, h, w] by `mask` [h, w] (bool, or weights in [0, 1] for a soft edge):
    the unseen region shows in magenta."""
    if mask.shape != image.shape[-2:]:
        raise ValueError(
            f"mask {list(mask.shape)} does not match the image size {list(image.shape[-2:])}"
        )
    base = np.asarray(to_pil(image), dtype=np.float32)
    tint = np.asarray(UNSEEN_COLOUR, dtype=np.float32)
    weight = alpha * mask.detach().float().cpu().clamp(0, 1).numpy()[..., None]
    out = (1 - weight) * base + weight * tint
    return Image.fromarray(out.round().astype(np.uint8))


# --------------------------------------------------------------------------------------
# Camera plot
# --------------------------------------------------------------------------------------


def _frustum(c2w: Tensor, size: float, aspect: float) -> Tensor:
    """Camera centre and the four corners of its image plane at depth `size`: [n, 5, 3]."""
    half_w, half_h = 0.5 * size * aspect, 0.5 * size
    corners = torch.tensor(
        [
            [0, 0, 0],
            [-half_w, -half_h, size],
            [half_w, -half_h, size],
            [half_w, half_h, size],
            [-half_w, half_h, size],
        ],
        dtype=c2w.dtype,
    )
    return corners @ c2w[:, :3, :3].transpose(1, 2) + c2w[:, None, :3, 3]


# Frustum edges as (corner, corner) pairs of `_frustum`'s five points.
FRUSTUM_EDGES = ((0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1))


def frustum_points(
    c2w: Tensor, size: float, aspect: float, color: tuple[int, int, int], per_edge: int = 24
) -> tuple[Tensor, Tensor]:
    """Cameras c2w [n, 4, 4] as points along their frustum edges, for a point-cloud
    viewer: (xyz [m, 3], rgb [m, 3] uint8 in `color`)."""
    corners = _frustum(c2w.float(), size, aspect)  # (n, 5, 3)
    t = torch.linspace(0.0, 1.0, per_edge)[:, None]
    lines = [
        corners[:, a, None] * (1 - t) + corners[:, b, None] * t for a, b in FRUSTUM_EDGES
    ]  # each (n, per_edge, 3)
    xyz = torch.cat(lines, dim=1).reshape(-1, 3)
    rgb = torch.tensor(color, dtype=torch.uint8).expand(xyz.shape[0], 3)
    return xyz, rgb


def camera_plot(
    source_c2w: Tensor,
    target_c2w: Tensor | None = None,
    *,
    aspect: float = 1.0,
    size: tuple[int, int] = (360, 270),
    elevation_deg: float = 55.0,
) -> Image.Image:
    """An orthographic sketch of source cameras (blue, numbered) and targets (orange).

    Cameras are OpenCV c2w [n, 4, 4] in one frame (y down, z forward, as the first
    source camera sees it). The sketch looks down on that frame from behind the first
    camera, `elevation_deg` above its horizon; a trajectory's targets are joined by a
    line and its first camera is drawn bold.
    """
    source_c2w = source_c2w.detach().double().cpu()
    targets = None if target_c2w is None else target_c2w.detach().double().cpu()
    everything = source_c2w if targets is None else torch.cat([source_c2w, targets])
    centres = everything[:, :3, 3]
    extent = float((centres - centres.mean(0)).norm(dim=-1).max())
    frustum_size = 0.25 * extent if extent > 1e-6 else 0.25
    src = _frustum(source_c2w, frustum_size, aspect)
    tgt = None if targets is None else _frustum(targets, frustum_size, aspect)

    # Screen axes: right = x, up = a tilt between "forward" (z, seen from above) and "up" (-y).
    e = math.radians(elevation_deg)
    right = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    up = torch.tensor([0.0, -math.cos(e), math.sin(e)], dtype=torch.float64)
    points = torch.cat([src.reshape(-1, 3)] + ([] if tgt is None else [tgt.reshape(-1, 3)]))
    screen = torch.stack([points @ right, points @ up], -1)
    lo, hi = screen.amin(0), screen.amax(0)
    width, height = size
    margin = 28
    span = (hi - lo).clamp(min=1e-6)
    scale = min((width - 2 * margin) / span[0].item(), (height - 2 * margin - 16) / span[1].item())
    centre = (lo + hi) / 2

    def project(p: Tensor) -> list[tuple[float, float]]:
        uv = torch.stack([p @ right, p @ up], -1)
        u = width / 2 + (uv[:, 0] - centre[0]) * scale
        v = (height + 16) / 2 - (uv[:, 1] - centre[1]) * scale
        return list(zip(u.tolist(), v.tolist(), strict=True))

    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)

    def frustum_lines(corners: Tensor, colour, line_width: int) -> None:
        c, a, b, d, f = project(corners)
        for corner in (a, b, d, f):
            draw.line([c, corner], fill=colour, width=line_width)
        draw.line([a, b, d, f, a], fill=colour, width=line_width)

    if tgt is not None:
        path = project(tgt[:, 0])
        if len(path) > 1:
            draw.line(path, fill=TARGET_COLOUR, width=2)
        # A few frusta along a long path; more would hide each other.
        shown = torch.linspace(0, tgt.shape[0] - 1, min(tgt.shape[0], 6)).round().long()
        for i in shown.flip(0).tolist():
            frustum_lines(tgt[i], TARGET_COLOUR, 2 if i == 0 else 1)
    for i in range(src.shape[0]):
        frustum_lines(src[i], SOURCE_COLOUR, 2)
        (cu, cv), *_ = project(src[i, :1])
        draw.text((cu + 4, cv + 2), str(i + 1), fill=SOURCE_COLOUR)
    draw.text((8, 6), "sources", fill=SOURCE_COLOUR)
    if tgt is not None:
        label = "target" if tgt.shape[0] == 1 else f"targets ({tgt.shape[0]} frames)"
        draw.text((70, 6), label, fill=TARGET_COLOUR)
    return image
