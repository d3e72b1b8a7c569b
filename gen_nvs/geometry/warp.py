"""Backward warping: the source pixels each target pixel shows, by depth.

Each target pixel's surface point (target depth along its ray) is projected into every
source view; the source's colour there is read bilinearly, and the point counts as
*visible* in that source when it lands inside the image, in front of the camera, and
its depth agrees with the source's own depth map (within a relative tolerance of the
min/max over the 2x2 source pixels around the projection, as
`gen_nvs.geometry.rgbd.visibility_mask` tests). Differentiable in the colours and in
the target depth (through the sampling position); the visibility test is not.

At a source's own camera the warp is the identity whatever the depth: a pixel's ray
projects back onto the same pixel.

Conventions are `gen_nvs.geometry.cameras`': OpenCV axes, c2w poses, `fxfycxcy` in
pixels of each view's own image, pixel (u, v) centred at (u + 0.5, v + 0.5).

Dimension legend:
    b   scenes    s   source views    t   target views
    h, w    target image size       hs, ws  source image size
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from gen_nvs.geometry.cameras import project_points, unproject_depth


@dataclass
class WarpedSources:
    """What every target pixel sees in every source.

    colors [b, t, s, 3, h, w]: the source colour at the projection (0 outside the image);
    visible [b, t, s, h, w] bool: inside, in front and depth-consistent;
    inside [b, t, s, h, w] bool: inside the source image and in front of its camera;
    residual [b, t, s, h, w]: how far the point's depth in the source lies outside the
    source depths around its projection, relative to it (0 inside that range), clamped
    to 1, and 1 where the point is not inside (no gradient).
    """

    colors: Tensor
    visible: Tensor
    inside: Tensor
    residual: Tensor


def backward_warp(
    source_images: Tensor,
    source_depth: Tensor,
    source_c2w: Tensor,
    source_fxfycxcy: Tensor,
    target_depth: Tensor,
    target_c2w: Tensor,
    target_fxfycxcy: Tensor,
    rel_tol: float,
) -> WarpedSources:
    """Read every source at the projections of the targets' surface points.

    source_images [b, s, 3, hs, ws]; source_depth [b, s, hs, ws]; source_c2w [b, s, 4, 4];
    source_fxfycxcy [b, s, 4] (pixels of the source images); target_depth [b, t, h, w];
    target_c2w [b, t, 4, 4]; target_fxfycxcy [b, t, 4] (pixels of the targets), all
    cameras in one frame. A depth that is not finite or not positive is no surface: a
    target pixel without one sees nothing, a source pixel without one confirms nothing.
    rel_tol (>= 0): the depth test's relative tolerance.
    """
    b, s, _, hs, ws = source_images.shape
    t, h = target_depth.shape[1:3]
    if source_depth.shape != (b, s, hs, ws):
        raise ValueError(
            f"source depth must be [{b}, {s}, {hs}, {ws}] like the source images, got "
            f"{list(source_depth.shape)}"
        )
    if target_c2w.shape != (b, t, 4, 4) or target_fxfycxcy.shape != (b, t, 4):
        raise ValueError(
            f"target cameras must be [{b}, {t}, 4, 4] and [{b}, {t}, 4] like the target depth "
            f"{list(target_depth.shape)}, got {list(target_c2w.shape)} and "
            f"{list(target_fxfycxcy.shape)}"
        )
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
    target_valid = torch.isfinite(target_depth) & (target_depth > 0)
    safe = torch.where(target_valid, target_depth, torch.ones_like(target_depth))
    points = unproject_depth(safe, target_fxfycxcy, target_c2w)  # (b, t, h, w, 3)
    points = rearrange(points, "b t h w xyz -> b 1 (t h w) xyz")
    uv, z = project_points(points, source_c2w, source_fxfycxcy)  # (b, s, t*h*w, 2), (b, s, ...)

    inside = (uv[..., 0] >= 0) & (uv[..., 0] < ws) & (uv[..., 1] >= 0) & (uv[..., 1] < hs) & (z > 0)
    lo, hi = _neighbour_range(source_depth, uv)
    visible = inside & (z >= lo * (1 - rel_tol)) & (z <= hi * (1 + rel_tol))
    target_ok = rearrange(target_valid, "b t h w -> b 1 (t h w)")
    inside, visible = inside & target_ok, visible & target_ok
    with torch.no_grad():
        z_safe = z.clamp_min(1e-6)
        outside_range = torch.maximum(lo - z, z - hi).clamp_min(0) / z_safe
        residual = torch.where(inside, outside_range.nan_to_num(1.0).clamp(0, 1), 1.0)

    size = torch.tensor([ws, hs], dtype=uv.dtype, device=uv.device)
    grid = rearrange(uv / size * 2 - 1, "b s n xy -> (b s) 1 n xy")
    images = rearrange(source_images, "b s ch hs ws -> (b s) ch hs ws").to(grid.dtype)
    colors = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    colors = rearrange(colors, "(b s) ch 1 (t h w) -> b t s ch h w", b=b, t=t, h=h)
    colors = colors * rearrange(inside, "b s (t h w) -> b t s 1 h w", t=t, h=h)
    per_target = "b s (t h w) -> b t s h w"
    return WarpedSources(
        colors=colors,
        visible=rearrange(visible, per_target, t=t, h=h),
        inside=rearrange(inside, per_target, t=t, h=h),
        residual=rearrange(residual, per_target, t=t, h=h),
    )


def _neighbour_range(depth: Tensor, uv: Tensor) -> tuple[Tensor, Tensor]:
    """Min and max depth over the 2x2 pixels around each position uv [b, s, n, 2] in the
    depth maps [b, s, hs, ws] (borders clamped; pixels without depth left out: +inf / -inf
    where none of the four has depth) -> (lo, hi) [b, s, n]."""
    hs, ws = depth.shape[-2:]
    valid = torch.isfinite(depth) & (depth > 0)
    inf = torch.full_like(depth, float("inf"))
    lo_map = torch.where(valid, depth, inf)
    hi_map = torch.where(valid, depth, -inf)
    # Each map's 2x2 minimum / maximum, indexed by the block's top-left pixel.
    lo_map = -F.max_pool2d(-F.pad(lo_map, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
    hi_map = F.max_pool2d(F.pad(hi_map, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
    corner = torch.floor(uv.detach() - 0.5).long()
    u = corner[..., 0].clamp(-1, ws - 1)
    v = corner[..., 1].clamp(-1, hs - 1)
    # A position left of the first centre (corner -1) takes the first column's pair.
    index = v.clamp_min(0) * ws + u.clamp_min(0)
    lo = lo_map.flatten(-2).gather(-1, index)
    hi = hi_map.flatten(-2).gather(-1, index)
    return lo, hi
