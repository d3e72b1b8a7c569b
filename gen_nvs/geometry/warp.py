"""Backward warping: the source pixels each target pixel shows, by depth.

Each target pixel's surface point (target depth along its ray) is projected into every
source view; the source's colour there is read bilinearly, and the point counts as
*visible* in that source when it lands inside the image, in front of the camera, and
its depth agrees with the source's own depth map (within a relative tolerance of the
min/max over the 2x2 source pixels around the projection: the test of
`gen_nvs.geometry.rgbd.visibility_mask`, on the same helper). Computed in float32 even
under autocast. Differentiable in the colours and in
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
from gen_nvs.geometry.rgbd import neighbour_depth_range


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
    _check_shapes(
        source_images, source_depth, source_c2w, source_fxfycxcy, target_depth, target_c2w,
        target_fxfycxcy,
    )  # fmt: skip
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
    b, _, _, hs, ws = source_images.shape
    t, h = target_depth.shape[1:3]
    # Exact geometry even under autocast (bf16 matmuls move projections by pixels).
    with torch.autocast(source_images.device.type, enabled=False):
        target_valid = torch.isfinite(target_depth) & (target_depth > 0)
        safe = torch.where(target_valid, target_depth, 1.0).float()
        points = unproject_depth(safe, target_fxfycxcy.float(), target_c2w.float())
        points = rearrange(points, "b t h w xyz -> b 1 (t h w) xyz")
        uv, z = project_points(points, source_c2w.float(), source_fxfycxcy.float())  # (b s n _)
        # Far outside positions (and non-finite ones) only need to stay outside.
        uv = uv.nan_to_num(-2.0).clamp(-2.0, float(max(hs, ws) + 2))
        inside = (uv[..., 0] >= 0) & (uv[..., 0] < ws) & (uv[..., 1] >= 0) & (uv[..., 1] < hs)
        lo, hi, has_depth = neighbour_depth_range(
            rearrange(source_depth.float(), "b s hs ws -> (b s) hs ws"),
            rearrange(uv.detach(), "b s n uv -> (b s) n uv"),
        )
        lo, hi, has_depth = (rearrange(x, "(b s) n -> b s n", b=b) for x in (lo, hi, has_depth))
        target_ok = rearrange(target_valid, "b t h w -> b 1 (t h w)")
        inside = inside & (z > 0) & target_ok
        visible = inside & has_depth & (z >= lo * (1 - rel_tol)) & (z <= hi * (1 + rel_tol))
        with torch.no_grad():
            outside_range = torch.maximum(lo - z, z - hi).clamp_min(0) / z.clamp_min(1e-6)
            residual = torch.where(inside, outside_range.nan_to_num(1.0).clamp(0, 1), 1.0)

        size = torch.tensor([ws, hs], dtype=uv.dtype, device=uv.device)
        grid = rearrange(uv / size * 2 - 1, "b s n xy -> (b s) 1 n xy")
        images = rearrange(source_images.float(), "b s ch hs ws -> (b s) ch hs ws")
        # "border": a point inside the image but within half a pixel of its edge reads the
        # edge pixel, not a blend with black.
        colors = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    colors = rearrange(colors, "(b s) ch 1 (t h w) -> b t s ch h w", b=b, t=t, h=h)
    per_target = "b s (t h w) -> b t s h w"
    inside = rearrange(inside, per_target, t=t, h=h)
    return WarpedSources(
        colors=torch.where(inside.unsqueeze(3), colors, 0.0),  # no NaN through a mask
        visible=rearrange(visible, per_target, t=t, h=h),
        inside=inside,
        residual=rearrange(residual, per_target, t=t, h=h),
    )


def _check_shapes(
    source_images: Tensor,
    source_depth: Tensor,
    source_c2w: Tensor,
    source_fxfycxcy: Tensor,
    target_depth: Tensor,
    target_c2w: Tensor,
    target_fxfycxcy: Tensor,
) -> None:
    if source_images.ndim != 5 or source_images.shape[2] != 3:
        raise ValueError(f"source images must be [b, s, 3, h, w], got {list(source_images.shape)}")
    b, s, _, hs, ws = source_images.shape
    if target_depth.ndim != 4 or target_depth.shape[0] != b:
        raise ValueError(
            f"target depth must be [{b}, t, h, w] (one set per scene of the sources), got "
            f"{list(target_depth.shape)}"
        )
    t = target_depth.shape[1]
    expected = {
        "source depth": (source_depth, (b, s, hs, ws)),
        "source c2w": (source_c2w, (b, s, 4, 4)),
        "source fxfycxcy": (source_fxfycxcy, (b, s, 4)),
        "target c2w": (target_c2w, (b, t, 4, 4)),
        "target fxfycxcy": (target_fxfycxcy, (b, t, 4)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} must be {list(shape)} for {s} source image(s) of {hs}x{ws} and "
                f"target depth {list(target_depth.shape)}, got {list(tensor.shape)}"
            )
