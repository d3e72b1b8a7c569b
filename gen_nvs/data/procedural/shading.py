"""Shading camera rays: surface normals, procedural solid textures, a directional light
with cast shadows and an ambient term, and the sky.

The sky is a sphere of radius `SceneConfig.sky_radius` around the origin, so every ray
has a finite depth. Per-hit functions take hit rays only: points p [k, 3] and the
primitive index [k] each lies on.

Dimension legend: `r` rays, `k` rays that hit something.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gen_nvs.data.procedural.config import TEXTURES
from gen_nvs.data.procedural.raycast import cast_rays, gather, into_frames, sky_distance
from gen_nvs.data.procedural.scene import ProceduralScene


def _object_normals(scene: ProceduralScene, p: Tensor, obj: Tensor) -> Tensor:
    """Outward unit normals [k, 3] at points p [k, 3] on objects obj [k]."""
    rotation = gather(scene.object_rotation, obj)  # (k, 3, 3)
    q = into_frames(p - gather(scene.object_center, obj), rotation)  # local point
    size = gather(scene.object_size, obj)
    kind = gather(scene.object_kind, obj)[:, None]

    sphere = q
    scaled = q / size
    face = scaled.abs().argmax(-1, keepdim=True)  # the box face the point lies on
    box = torch.zeros_like(q).scatter_(1, face, scaled.gather(1, face).sign())
    radial = q[:, :2].norm(dim=-1)
    on_cap = (q[:, 2].abs() - size[:, 2]).abs() < (radial - size[:, 0]).abs()
    side = torch.cat([q[:, :2], torch.zeros_like(q[:, :1])], -1)
    cap = torch.zeros_like(q)
    cap[:, 2] = q[:, 2].sign()
    cylinder = torch.where(on_cap[:, None], cap, side)
    local = torch.where(kind == 0, sphere, torch.where(kind == 1, box, cylinder))
    world = (rotation @ local[:, :, None]).squeeze(-1)
    return F.normalize(world, dim=-1)


def _normals(scene: ProceduralScene, p: Tensor, index: Tensor) -> Tensor:
    """Outward unit normals [k, 3] at points p [k, 3] on primitives index [k] (>= 0)."""
    n_planes = scene.num_planes
    normal = gather(scene.plane_normal, index.clamp_max(n_planes - 1))
    on_object = (index >= n_planes).nonzero().squeeze(1)
    if on_object.numel():
        obj = index.index_select(0, on_object) - n_planes
        normal.index_copy_(0, on_object, _object_normals(scene, gather(p, on_object), obj))
    return normal


_HASH_MASK = 0x7FFFFFFF
_AXIS_PRIMES = (73856093, 19349663, 83492791)


def _hash_lattice(axis_x: Tensor, axis_y: Tensor, axis_z: Tensor) -> Tensor:
    """Pseudo-random values in [0, 1] for lattice points given by their per-axis hashes.

    int64 arithmetic whose products stay below 2**62: no overflow, and the same
    values on every device.
    """
    h = (axis_x ^ axis_y ^ axis_z) & _HASH_MASK
    h = ((h ^ (h >> 15)) * 1274126177) & _HASH_MASK
    h = h ^ (h >> 13)
    return (h & 0xFFFF).float() * (1.0 / 0xFFFF)


def _value_noise(q: Tensor, seed: Tensor, octaves: int = 2) -> Tensor:
    """Smooth fractal value noise in [0, 1] at points q [k, 3] with per-point seeds [k]."""
    total = torch.zeros_like(q[:, 0])
    amplitude, weight = 1.0, 0.0
    for octave in range(octaves):
        x = q * (2.0**octave)
        cell = torch.floor(x)
        f = x - cell
        f = f * f * (3 - 2 * f)  # smoothstep: continuous derivative across cells
        weights = [(1 - f).unbind(-1), f.unbind(-1)]  # [near/far corner][axis] -> (k,)
        # Per axis, the hashed lattice coordinate of the near (0) and far (1) corner.
        cell = cell.long() + (seed * (octave + 1))[:, None]
        axes = [
            [cell[:, a] * prime, (cell[:, a] + 1) * prime] for a, prime in enumerate(_AXIS_PRIMES)
        ]
        value = torch.zeros_like(total)
        for cx in (0, 1):
            for cy in (0, 1):
                for cz in (0, 1):
                    w = weights[cx][0] * weights[cy][1] * weights[cz][2]
                    value += w * _hash_lattice(axes[0][cx], axes[1][cy], axes[2][cz])
        total += amplitude * value
        weight += amplitude
        amplitude *= 0.5
    return total / weight


def _albedo(scene: ProceduralScene, p: Tensor, index: Tensor, footprint: Tensor) -> Tensor:
    """Texture colours [k, 3] at points p [k, 3] on primitives index [k] (>= 0).

    `footprint` [k] is the world size of each pixel on the surface; stripes and
    checkers fade to their mean colour where their cells shrink to a pixel (a cheap
    mip-map against aliasing).
    """
    frequency = gather(scene.frequency, index)
    rotation = gather(scene.texture_rotation, index)
    q = into_frames(p - gather(scene.texture_origin, index), rotation) * frequency[:, None]
    along = (q * gather(scene.texture_dir, index)).sum(-1)  # cycles along the direction
    texture = gather(scene.texture, index)

    mix = torch.zeros_like(frequency)  # 0 -> color_a, 1 -> color_b
    is_checkers = texture == TEXTURES.index("checkers")
    is_stripes = texture == TEXTURES.index("stripes")
    # Cells of half a cycle, shifted off the texture frame's axes: a face lying on a
    # cell boundary (the ground at z = 0) would flip between cells with rounding.
    parity = torch.floor(2 * q + 0.5).sum(-1).remainder(2)
    mix = torch.where(is_checkers, parity, mix)
    mix = torch.where(is_stripes, torch.floor(2 * along).remainder(2), mix)
    contrast = (2.0 - 4.0 * footprint * frequency).clamp(0, 1)  # 1 below half a cell, 0 at one
    mix = torch.where(is_checkers | is_stripes, 0.5 + (mix - 0.5) * contrast, mix)
    is_gradient = texture == TEXTURES.index("gradient")
    mix = torch.where(is_gradient, (0.5 + along).clamp(0, 1), mix)
    is_noise = (texture == TEXTURES.index("noise")).nonzero().squeeze(1)
    if is_noise.numel():
        seed = gather(scene.noise_seed, index.index_select(0, is_noise))
        noise = _value_noise(gather(q, is_noise), seed)
        mix.index_copy_(0, is_noise, ((noise - 0.3) / 0.4).clamp(0, 1))
    color_a, color_b = gather(scene.color_a, index), gather(scene.color_b, index)
    return color_a + (color_b - color_a) * mix[:, None]


def _sky_color(scene: ProceduralScene, d: Tensor) -> Tensor:
    """Sky colours [r, 3] for ray directions d [r, 3]: horizon to zenith."""
    up = F.normalize(d, dim=-1)[:, 2].clamp(0, 1).sqrt()
    return scene.sky_horizon + (scene.sky_zenith - scene.sky_horizon) * up[:, None]


def _in_shadow(scene: ProceduralScene, p: Tensor, normal: Tensor, depth: Tensor) -> Tensor:
    """bool [k]: the light is blocked between points p [k, 3] and the sun."""
    # Start off the surface, further for far points (float precision grows with range).
    origin = p + normal * (1e-3 * (1 + depth))[:, None]
    t, _ = cast_rays(scene, origin, scene.light_dir.expand_as(p))
    return torch.isfinite(t)


def shade_rays(
    scene: ProceduralScene, o: Tensor, d: Tensor, pixel_angle: Tensor, shadows: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Trace camera rays -> (rgb [r, 3], depth [r], hit_something [r]).

    `d` are camera rays K^-1 [u, v, 1] turned into the world, so t along them is the
    depth (z in the camera frame). `pixel_angle` [r] is 1 / focal length of each
    ray's camera.
    """
    t, index = cast_rays(scene, o, d)
    sky_t = sky_distance(o, d, scene.sky_radius)
    hit = (index >= 0) & (t < sky_t)  # far ground beyond the sky sphere is sky
    depth = torch.where(hit, t, sky_t)
    rgb = _sky_color(scene, d)
    rays = hit.nonzero().squeeze(1)  # index tensors: cheaper than boolean masks on CPU
    if not rays.numel():
        return rgb, depth, hit
    d_hit, t_hit, index = gather(d, rays), gather(depth, rays), gather(index, rays)
    p = gather(o, rays) + t_hit[:, None] * d_hit
    normal = _normals(scene, p, index)
    cosine = (normal * d_hit).sum(-1)
    normal = torch.where(cosine[:, None] > 0, -normal, normal)  # face the camera
    grazing = cosine.abs() / d_hit.norm(dim=-1)
    footprint = t_hit * gather(pixel_angle, rays) / grazing.clamp_min(0.05)
    albedo = _albedo(scene, p, index, footprint)
    light = (normal @ scene.light_dir).clamp_min(0)
    if shadows:
        lit = (light > 0).nonzero().squeeze(1)
        blocked = _in_shadow(scene, gather(p, lit), gather(normal, lit), gather(t_hit, lit))
        light.index_fill_(0, lit[blocked], 0.0)
    shading = scene.ambient + (1 - scene.ambient) * light
    rgb.index_copy_(0, rays, (albedo * shading[:, None] * scene.light_color).clamp(0, 1))
    return rgb, depth, hit
