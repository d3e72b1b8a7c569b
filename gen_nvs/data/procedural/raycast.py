"""Ray casting against a `ProceduralScene`'s primitives.

Rays: origins o [r, 3], directions d [r, 3], not necessarily unit; t is in units of d.
Objects are first culled by their bounding spheres over all (object, ray) pairs, then
intersected exactly on the surviving pairs only.

Dimension legend: `r` rays, `n` planes, `m` objects, `p` = n + m primitives, `k`
candidate (object, ray) pairs or selected rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gen_nvs.data.procedural.config import OBJECT_KINDS
from gen_nvs.data.procedural.scene import ProceduralScene

_INF = float("inf")
# Rays shorter than this (in units of the ray direction) do not count as hits, so
# that shadow rays do not hit the surface they start on.
_T_MIN = 1e-4


def gather(x: Tensor, index: Tensor) -> Tensor:
    """x[index] for index [k] along dim 0 (index_select: fast on CPU for any row shape)."""
    return x.reshape(x.shape[0], -1).index_select(0, index).reshape(-1, *x.shape[1:])


def into_frames(x: Tensor, rotation: Tensor) -> Tensor:
    """Vectors x [k, 3] expressed in frames rotation [k, 3, 3] (R^T x): [k, 3]."""
    return x[:, 0:1] * rotation[:, 0] + x[:, 1:2] * rotation[:, 1] + x[:, 2:3] * rotation[:, 2]


def _valid_or_inf(t: Tensor, ok: Tensor) -> Tensor:
    return torch.where(ok & (t > _T_MIN), t, _INF)


def _hit_planes(scene: ProceduralScene, o_rows: Tensor, d_rows: Tensor) -> Tensor:
    """t [n, r] for one-sided planes (only rays travelling against the normal hit).

    o_rows, d_rows: [3, r] (component rows)."""
    facing = scene.plane_normal @ d_rows  # (n, r)
    distance = scene.plane_offset[:, None] - scene.plane_normal @ o_rows
    t = distance / facing.clamp_max(-1e-12)
    below_top = o_rows[2] + t * d_rows[2] <= scene.plane_top[:, None]
    return _valid_or_inf(t, (facing < 0) & below_top)


def _candidate_pairs(scene: ProceduralScene, o_rows: Tensor, d_rows: Tensor):
    """(object [k], ray [k]) pairs whose ray meets the object's bounding sphere ahead.

    Pairs come sorted by object, hence grouped by object kind.
    """
    center, bound = scene.object_center, scene.object_bound
    a = (d_rows * d_rows).sum(0)  # (r,)
    half_b = (o_rows * d_rows).sum(0) - center @ d_rows  # (m, r): (o - c) . d
    c = (
        (o_rows * o_rows).sum(0)
        - 2 * (center @ o_rows)
        + ((center * center).sum(1) - bound**2)[:, None]
    )
    # Real roots, not both behind the origin (c < 0: the origin is inside the sphere).
    meets = (half_b * half_b >= a * c) & ((half_b < 0) | (c < 0))
    return meets.nonzero(as_tuple=True)


def _hit_spheres(o: Tensor, d: Tensor, size: Tensor) -> Tensor:
    """t [k] for rays o, d [k, 3] in the frames of spheres of radius size[:, 0]."""
    a = (d * d).sum(-1)
    half_b = (o * d).sum(-1)
    disc = half_b * half_b - a * ((o * o).sum(-1) - size[:, 0] ** 2)
    root = disc.clamp_min(0).sqrt()
    near, far = (-half_b - root) / a, (-half_b + root) / a
    hit = disc >= 0
    return torch.minimum(_valid_or_inf(near, hit), _valid_or_inf(far, hit))


def _hit_boxes(o: Tensor, d: Tensor, size: Tensor) -> Tensor:
    """t [k] for rays o, d [k, 3] in the frames of boxes with half extents size [k, 3]."""
    inv = 1.0 / torch.where(d.abs() < 1e-12, 1e-12, d)
    t0, t1 = (-size - o) * inv, (size - o) * inv
    enter = torch.minimum(t0, t1).amax(-1)
    leave = torch.maximum(t0, t1).amin(-1)
    hit = enter <= leave
    return torch.minimum(_valid_or_inf(enter, hit), _valid_or_inf(leave, hit))


def _hit_cylinders(o: Tensor, d: Tensor, size: Tensor) -> Tensor:
    """t [k] for rays o, d [k, 3] in the frames of z-axis cylinders (r, r, half height)."""
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    radius, half_height = size[:, 0], size[:, 2]
    a = (dx * dx + dy * dy).clamp_min(1e-12)
    half_b = ox * dx + oy * dy
    disc = half_b * half_b - a * (ox * ox + oy * oy - radius * radius)
    root = disc.clamp_min(0).sqrt()
    best = torch.full_like(a, _INF)
    for t in ((-half_b - root) / a, (-half_b + root) / a):  # the side
        best = torch.minimum(
            best, _valid_or_inf(t, (disc >= 0) & ((oz + t * dz).abs() <= half_height))
        )
    safe_dz = torch.where(dz.abs() < 1e-12, 1e-12, dz)
    for cap in (half_height, -half_height):  # the two caps
        t = (cap - oz) / safe_dz
        px, py = ox + t * dx, oy + t * dy
        best = torch.minimum(best, _valid_or_inf(t, px * px + py * py <= radius * radius))
    return best


_HIT_BY_KIND = (_hit_spheres, _hit_boxes, _hit_cylinders)


def _hit_objects(scene: ProceduralScene, o: Tensor, d: Tensor, o_rows: Tensor, d_rows: Tensor):
    """t [m, r] of every object along every ray (inf where missed)."""
    t = o.new_full((scene.num_objects, o.shape[0]), _INF)
    if scene.num_objects == 0:
        return t
    obj, ray = _candidate_pairs(scene, o_rows, d_rows)
    rotation = gather(scene.object_rotation, obj)  # (k, 3, 3)
    o_local = into_frames(gather(o, ray) - gather(scene.object_center, obj), rotation)
    d_local = into_frames(gather(d, ray), rotation)
    size = gather(scene.object_size, obj)
    # Pairs are grouped by kind: cut them where each kind's first object begins.
    kind_starts = torch.searchsorted(
        scene.object_kind, torch.arange(len(OBJECT_KINDS) + 1, device=obj.device)
    )
    pair_starts = torch.searchsorted(obj, kind_starts).tolist()
    t_pairs = torch.empty_like(size[:, 0])
    for kind, hit in enumerate(_HIT_BY_KIND):
        part = slice(pair_starts[kind], pair_starts[kind + 1])
        if part.stop > part.start:
            t_pairs[part] = hit(o_local[part], d_local[part], size[part])
    return t.index_put_((obj, ray), t_pairs)


def cast_rays(scene: ProceduralScene, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest hit of each ray o, d [r, 3] -> (t [r], primitive index [r], -1 for none).

    The sky is not a primitive: rays that hit nothing see the sky.
    """
    o_rows, d_rows = o.T.contiguous(), d.T.contiguous()
    t_all = torch.cat(
        [_hit_planes(scene, o_rows, d_rows), _hit_objects(scene, o, d, o_rows, d_rows)]
    )  # (p, r)
    t, index = t_all.min(0)
    return t, torch.where(torch.isfinite(t), index, -1)


def sky_distance(o: Tensor, d: Tensor, radius: Tensor) -> Tensor:
    """t at which rays starting inside the sky sphere (centred at the origin) leave it."""
    a = (d * d).sum(-1)
    half_b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius * radius  # < 0 inside
    return (-half_b + (half_b * half_b - a * c).sqrt()) / a
