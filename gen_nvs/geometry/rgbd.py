"""Geometry of RGB-D views: depth <-> point maps, cross-view visibility, fusion, PLY.

Conventions are those of `gen_nvs.geometry.cameras`: OpenCV camera axes, c2w poses,
`fxfycxcy` in pixels, pixel (u, v) centred at (u + 0.5, v + 0.5), depth = z along
the optical axis. A depth that is not finite or not positive marks a pixel without
depth.

Dimension legend: `v` views, `s` source views, `h`/`w` image height/width,
`n` points, `...` any leading batch dimensions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gen_nvs.geometry.cameras import project_points, unproject_depth, world_to_camera

# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _check_shape(name: str, x: Tensor, expected: tuple[int | None, ...]) -> None:
    """Raise ValueError unless `x` matches `expected` (None = any size) exactly."""
    if x.ndim != len(expected) or any(
        e is not None and s != e for s, e in zip(x.shape, expected, strict=True)
    ):
        want = "[" + ",".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")


def _check_finite(name: str, x: Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has non-finite values")


def _check_cameras(prefix: str, c2w: Tensor, fxfycxcy: Tensor, batch: tuple[int, ...]) -> None:
    _check_shape(f"{prefix}c2w", c2w, (*batch, 4, 4))
    _check_shape(f"{prefix}fxfycxcy", fxfycxcy, (*batch, 4))
    _check_finite(f"{prefix}c2w", c2w)
    _check_finite(f"{prefix}fxfycxcy", fxfycxcy)
    if (fxfycxcy[..., :2] <= 0).any():
        raise ValueError(f"{prefix}fxfycxcy: focal lengths must be positive")


def valid_depth(depth: Tensor) -> Tensor:
    """Bool mask, same shape as `depth`: True where depth is finite and positive."""
    return torch.isfinite(depth) & (depth > 0)


# --------------------------------------------------------------------------------------
# Depth <-> point maps
# --------------------------------------------------------------------------------------


def depth_to_points(depth: Tensor, fxfycxcy: Tensor, c2w: Tensor | None = None) -> Tensor:
    """Depth maps [..., h, w] -> point maps [..., h, w, 3].

    Points are in the world frame when `c2w` [..., 4, 4] is given, else in the camera
    frame. Pixels without depth give non-finite or behind-camera points; mask them
    with `valid_depth(depth)`.
    """
    if depth.ndim < 2:
        raise ValueError(f"depth must have shape [...,H,W], got {list(depth.shape)}")
    batch = tuple(depth.shape[:-2])
    _check_shape("fxfycxcy", fxfycxcy, (*batch, 4))
    if c2w is not None:
        _check_shape("c2w", c2w, (*batch, 4, 4))
    return unproject_depth(depth, fxfycxcy, c2w)


def points_to_depth(points: Tensor, c2w: Tensor | None = None) -> Tensor:
    """Pixel-aligned point maps [..., h, w, 3] -> depth maps [..., h, w].

    The depth of each point is its z in the camera frame of `c2w` [..., 4, 4] (world
    points), or its own z when `c2w` is None (camera-frame points). This reads a point
    map back into the view it belongs to; to render points into another view, project
    them with `cameras.project_points`.
    """
    if points.ndim < 3 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape [...,H,W,3], got {list(points.shape)}")
    if c2w is None:
        return points[..., 2]
    batch = tuple(points.shape[:-3])
    _check_shape("c2w", c2w, (*batch, 4, 4))
    h, w = points.shape[-3:-1]
    flat = points.reshape(*batch, h * w, 3)
    return world_to_camera(flat, c2w)[..., 2].reshape(*batch, h, w)


# --------------------------------------------------------------------------------------
# Visibility
# --------------------------------------------------------------------------------------


def neighbour_depth_range(depth: Tensor, uv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Min and max depth over the 2x2 pixels around each continuous pixel position.

    Args:
        depth: [s, h, w] source depth maps.
        uv: [s, n, 2] continuous pixel positions (pixel u covers [u, u + 1)).
    Returns:
        (lo [s, n], hi [s, n], inside [s, n]) over the pixels that have depth;
        `inside` is False where the position lies outside the image or none of its
        2x2 pixels has depth.
    """
    s, h, w = depth.shape
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
    # The 2x2 block of pixel centres that surrounds the position, clamped at borders.
    corner = torch.floor(uv - 0.5).long()  # (s, n, 2)
    u0 = corner[..., 0].clamp(0, w - 1)
    v0 = corner[..., 1].clamp(0, h - 1)
    u1 = (corner[..., 0] + 1).clamp(0, w - 1)
    v1 = (corner[..., 1] + 1).clamp(0, h - 1)
    flat = depth.reshape(s, h * w)
    samples = torch.stack(
        [flat.gather(1, v * w + u) for v, u in ((v0, u0), (v0, u1), (v1, u0), (v1, u1))], -1
    )  # (s, n, 4)
    has_depth = valid_depth(samples)
    lo = torch.where(has_depth, samples, torch.full_like(samples, float("inf"))).amin(-1)
    hi = torch.where(has_depth, samples, torch.full_like(samples, float("-inf"))).amax(-1)
    return lo, hi, inside & has_depth.any(-1)


def visibility_mask(
    target_c2w: Tensor,
    target_fxfycxcy: Tensor,
    target_depth: Tensor,
    source_c2w: Tensor,
    source_fxfycxcy: Tensor,
    source_depth: Tensor,
    rel_tol: float = 0.02,
) -> Tensor:
    """Which target pixels show a surface point that at least one source view saw.

    Each target pixel's surface point (from the target depth) is projected into every
    source view. A source saw the point when it lands inside the source image, in
    front of the camera, and its depth z agrees with the source depth map: z lies in
    [min * (1 - rel_tol), max * (1 + rel_tol)] of the source depths at the 2x2 pixels
    around the projection. Bracketing by the neighbours (rather than one nearest
    pixel) keeps surfaces seen at grazing angles visible, at the cost of counting a
    one-pixel band behind occluding edges as seen.

    Target pixels without depth are reported as not seen. The unseen mask (the
    region a generative decoder must invent) is the negation; see `unseen_mask`.

    Args:
        target_c2w: [4, 4]; target_fxfycxcy: [4]; target_depth: [h, w].
        source_c2w: [s, 4, 4]; source_fxfycxcy: [s, 4]; source_depth: [s, h', w'].
        rel_tol: relative depth tolerance (>= 0).
    Returns:
        bool [h, w]
    """
    _check_shape("target_depth", target_depth, (None, None))
    _check_cameras("target_", target_c2w, target_fxfycxcy, ())
    _check_shape("source_depth", source_depth, (None, None, None))
    num_sources = source_depth.shape[0]
    _check_cameras("source_", source_c2w, source_fxfycxcy, (num_sources,))
    if num_sources == 0:
        raise ValueError("visibility_mask needs at least one source view")
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")

    h, w = target_depth.shape
    target_valid = valid_depth(target_depth)
    safe_depth = torch.where(target_valid, target_depth, torch.ones_like(target_depth))
    points = unproject_depth(safe_depth, target_fxfycxcy, target_c2w).reshape(1, h * w, 3)
    uv, z = project_points(points, source_c2w, source_fxfycxcy)  # (s, n, 2), (s, n)
    lo, hi, inside = neighbour_depth_range(source_depth, uv)
    seen = inside & (z > 0) & (z >= lo * (1 - rel_tol)) & (z <= hi * (1 + rel_tol))
    return seen.any(0).reshape(h, w) & target_valid


def unseen_mask(
    target_c2w: Tensor,
    target_fxfycxcy: Tensor,
    target_depth: Tensor,
    source_c2w: Tensor,
    source_fxfycxcy: Tensor,
    source_depth: Tensor,
    rel_tol: float = 0.02,
) -> Tensor:
    """bool [h, w]: True where no source view saw the target pixel (see `visibility_mask`)."""
    return ~visibility_mask(
        target_c2w,
        target_fxfycxcy,
        target_depth,
        source_c2w,
        source_fxfycxcy,
        source_depth,
        rel_tol=rel_tol,
    )


# --------------------------------------------------------------------------------------
# Point cloud fusion
# --------------------------------------------------------------------------------------


def _quantile(values: Tensor, q: float) -> Tensor:
    """Linearly interpolated quantile of a 1-D tensor (torch.quantile without its
    16M-element limit)."""
    position = q * (values.numel() - 1)
    low, high = math.floor(position), math.ceil(position)
    v_low = values.kthvalue(low + 1).values
    v_high = values.kthvalue(high + 1).values
    return v_low + (v_high - v_low) * (position - low)


def _voxel_average(xyz: Tensor, rgb: Tensor, voxel_size: float) -> tuple[Tensor, Tensor]:
    """Average points and colours that fall into the same voxel: [n, 3] -> [m, 3]."""
    cells = torch.floor(xyz / voxel_size).long()  # (n, 3)
    _, inverse, counts = torch.unique(cells, dim=0, return_inverse=True, return_counts=True)
    m = counts.shape[0]
    denom = counts.to(xyz.dtype)[:, None]
    xyz_sum = xyz.new_zeros(m, 3).index_add_(0, inverse, xyz)
    rgb_sum = rgb.new_zeros(m, 3).index_add_(0, inverse, rgb)
    return xyz_sum / denom, rgb_sum / denom


def fuse_point_clouds(
    points: Tensor,
    colors: Tensor,
    confidence: Tensor | None = None,
    *,
    valid: Tensor | None = None,
    conf_threshold: float | None = None,
    conf_quantile: float | None = None,
    voxel_size: float | None = None,
    max_points: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Fuse per-view point maps into one coloured point cloud.

    A pixel is kept when its point is finite, `valid` is True, and its confidence
    reaches both `conf_threshold` and the `conf_quantile` quantile of the confidences
    of the finite, valid pixels. Kept points are then optionally averaged per voxel of
    edge `voxel_size` and randomly subsampled to at most `max_points` (with
    `generator`, or a fixed seed when None, so the result is reproducible).

    Args:
        points: [v, h, w, 3] world points.
        colors: [v, h, w, 3] float colours in [0, 1].
        confidence: [v, h, w] (higher is better) or None.
        valid: [v, h, w] bool or None.
    Returns:
        (xyz [n, 3], rgb [n, 3]) on the device of `points`.
    """
    _check_shape("points", points, (None, None, None, 3))
    grid = tuple(points.shape[:3])
    _check_shape("colors", colors, (*grid, 3))
    if not colors.is_floating_point():
        raise ValueError(f"colors must be floating point in [0, 1], got {colors.dtype}")
    if conf_quantile is not None and not 0 <= conf_quantile <= 1:
        raise ValueError(f"conf_quantile must be in [0, 1], got {conf_quantile}")
    if voxel_size is not None and not voxel_size > 0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if (conf_threshold is not None or conf_quantile is not None) and confidence is None:
        raise ValueError("conf_threshold / conf_quantile need a confidence map")

    keep = torch.isfinite(points).all(-1)
    if valid is not None:
        _check_shape("valid", valid, grid)
        keep &= valid.bool()
    if confidence is not None:
        _check_shape("confidence", confidence, grid)
        keep &= torch.isfinite(confidence)
        if conf_threshold is not None:
            keep &= confidence >= conf_threshold
        if conf_quantile is not None and keep.any():
            # The quantile is over the candidates left so far, so it is a share of them.
            keep &= confidence >= _quantile(confidence[keep], conf_quantile)

    xyz, rgb = points[keep], colors[keep].to(points.dtype)  # (n, 3)
    if voxel_size is not None and xyz.shape[0] > 0:
        xyz, rgb = _voxel_average(xyz, rgb, voxel_size)
    if max_points is not None and xyz.shape[0] > max_points:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        order = torch.randperm(xyz.shape[0], generator=generator, device=generator.device)
        chosen = order[:max_points].sort().values.to(xyz.device)
        xyz, rgb = xyz[chosen], rgb[chosen]
    return xyz, rgb


# --------------------------------------------------------------------------------------
# PLY files
# --------------------------------------------------------------------------------------

_PLY_TYPES = {
    "char": "i1",
    "uchar": "u1",
    "short": "<i2",
    "ushort": "<u2",
    "int": "<i4",
    "uint": "<u4",
    "float": "<f4",
    "double": "<f8",
    "int8": "i1",
    "uint8": "u1",
    "int16": "<i2",
    "uint16": "<u2",
    "int32": "<i4",
    "uint32": "<u4",
    "float32": "<f4",
    "float64": "<f8",
}


def _to_uint8_colors(rgb: Tensor) -> np.ndarray:
    if rgb.dtype == torch.uint8:
        return rgb.cpu().numpy()
    if not rgb.is_floating_point():
        raise ValueError(f"rgb must be uint8 or floating point in [0, 1], got {rgb.dtype}")
    _check_finite("rgb", rgb)
    return (rgb.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def write_ply(path: str | Path, xyz: Tensor, rgb: Tensor, normals: Tensor | None = None) -> Path:
    """Write a coloured point cloud as a binary little-endian PLY file.

    Vertex properties: float x, y, z, (float nx, ny, nz when `normals` is given),
    uchar red, green, blue; readable by MeshLab, Open3D and CloudCompare.

    Args:
        xyz: [n, 3] finite positions.
        rgb: [n, 3] uint8, or floats in [0, 1] (clamped, rounded to 8 bits).
        normals: [n, 3] or None.
    Returns:
        the path written.
    """
    _check_shape("xyz", xyz, (None, 3))
    n = xyz.shape[0]
    _check_shape("rgb", rgb, (n, 3))
    _check_finite("xyz", xyz)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        _check_shape("normals", normals, (n, 3))
        _check_finite("normals", normals)
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]

    vertices = np.empty(n, dtype=np.dtype(fields))
    position = xyz.detach().float().cpu().numpy()
    for i, name in enumerate("xyz"):
        vertices[name] = position[:, i]
    if normals is not None:
        normal = normals.detach().float().cpu().numpy()
        for i, name in enumerate(("nx", "ny", "nz")):
            vertices[name] = normal[:, i]
    color = _to_uint8_colors(rgb)
    for i, name in enumerate(("red", "green", "blue")):
        vertices[name] = color[:, i]

    ply_names = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment written by gen-nvs"]
    header.append(f"element vertex {n}")
    header += [f"property {ply_names[kind]} {name}" for name, kind in fields]
    header.append("end_header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertices.tobytes())
    return path


def _parse_ply_header(f) -> tuple[int, list[tuple[str, str]]]:
    """Read a PLY header up to end_header -> (vertex count, [(name, numpy dtype)])."""
    if f.readline().strip() != b"ply":
        raise ValueError("not a PLY file (missing 'ply' magic line)")
    count, fields, in_vertex = None, [], False
    while True:
        line = f.readline()
        if not line:
            raise ValueError("PLY header has no end_header line")
        words = line.decode("ascii").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format" and words[1:] != ["binary_little_endian", "1.0"]:
            raise ValueError(f"only binary_little_endian 1.0 PLY is supported, got {words[1:]}")
        if words[0] == "element":
            in_vertex = words[1] == "vertex"
            if in_vertex:
                count = int(words[2])
            elif count is None:
                raise ValueError("the vertex element must come first in the PLY file")
        elif words[0] == "property" and in_vertex:
            if words[1] == "list" or words[1] not in _PLY_TYPES:
                raise ValueError(f"unsupported vertex property: {' '.join(words[1:])}")
            fields.append((words[2], _PLY_TYPES[words[1]]))
    if count is None:
        raise ValueError("PLY file has no vertex element")
    return count, fields


def read_ply(path: str | Path) -> tuple[Tensor, Tensor, Tensor | None]:
    """Read a binary little-endian PLY point cloud (as written by `write_ply`).

    Returns:
        (xyz [n, 3] float32, rgb [n, 3] uint8, normals [n, 3] float32 or None).
    """
    with open(path, "rb") as f:
        count, fields = _parse_ply_header(f)
        data = np.frombuffer(f.read(), dtype=np.dtype(fields), count=count)
    names = {name for name, _ in fields}
    missing = {"x", "y", "z", "red", "green", "blue"} - names
    if missing:
        raise ValueError(f"PLY vertex element lacks properties {sorted(missing)}")

    def stack(keys, dtype):
        return torch.from_numpy(np.stack([data[k].astype(dtype) for k in keys], -1))

    xyz = stack(("x", "y", "z"), np.float32)
    rgb = stack(("red", "green", "blue"), np.uint8)
    normals = stack(("nx", "ny", "nz"), np.float32) if {"nx", "ny", "nz"} <= names else None
    return xyz, rgb, normals
