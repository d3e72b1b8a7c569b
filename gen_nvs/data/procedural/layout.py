"""Drawing a scene's layout: walls behind what the cameras look at, objects (spheres,
boxes and cylinders at arbitrary orientations) standing in a disc around the origin and
clear of the cameras, their materials, the sun and the sky.

World frame: z is up and the ground is the plane z = 0; the objects stand in a disc of
radius `SceneConfig.scene_radius` around the origin. Every draw comes from the scene's
CPU generator, in float64.

Dimension legend: `v` views, `n` planes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gen_nvs.data.procedural.config import OBJECT_KINDS, TEXTURES, WALLS, SceneConfig
from gen_nvs.data.procedural.draws import choice, uniform
from gen_nvs.data.procedural.scene import ProceduralScene
from gen_nvs.geometry.cameras import quaternion_to_matrix


def _random_rotation(gen: torch.Generator) -> Tensor:
    """A uniformly random rotation matrix [3, 3] (float64)."""
    q = torch.randn(4, generator=gen, dtype=torch.float64)
    return quaternion_to_matrix(q)


def _yaw_rotation(yaw: float) -> Tensor:
    """The rotation [3, 3] (float64) by `yaw` radians about the z (up) axis."""
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _hsv_to_rgb(h: float, s: float, v: float) -> list[float]:
    """One HSV colour (all in [0, 1]) -> RGB."""
    k = [(n + h * 6) % 6 for n in (5, 3, 1)]
    return [v - v * s * max(0.0, min(kk, 4 - kk, 1.0)) for kk in k]


@dataclass
class _Object:
    kind: int  # index into OBJECT_KINDS
    center: Tensor  # (3,)
    rotation: Tensor  # (3, 3)
    size: Tensor  # (3,), as in ProceduralScene.object_size
    bound: float


def _draw_object(gen: torch.Generator, config: SceneConfig, kind: str, xy: Tensor) -> _Object:
    """One object of `kind` standing on (or, sometimes, floating above) the ground at xy."""
    scale = uniform(gen, *config.object_size)
    lift = uniform(gen, 0.2, 1.0) if uniform(gen, 0, 1) < 0.15 else 0.0
    tilted = uniform(gen, 0, 1) < 0.35
    rotation = _random_rotation(gen) if tilted else _yaw_rotation(uniform(gen, 0, 2 * math.pi))
    if kind == "sphere":
        size = torch.full((3,), scale, dtype=torch.float64)
        rest = scale
    elif kind == "box":
        size = scale * uniform(gen, 0.35, 0.75, 3)
        rest = float((rotation[2].abs() * size).sum())  # the lowest corner touches the ground
    else:
        radius, half_height = scale * uniform(gen, 0.35, 0.7), scale * uniform(gen, 0.5, 0.95)
        size = torch.tensor([radius, radius, half_height], dtype=torch.float64)
        axis_z = float(rotation[2, 2].abs())  # the lowest rim point touches the ground
        rest = half_height * axis_z + radius * math.sqrt(max(0.0, 1 - axis_z**2))
    bound = (
        scale if kind == "sphere" else float(size[1:].norm() if kind == "cylinder" else size.norm())
    )
    center = torch.cat([xy, xy.new_tensor([rest + lift])])
    return _Object(OBJECT_KINDS.index(kind), center, rotation, size, bound)


def _place_objects(gen: torch.Generator, config: SceneConfig, eyes: Tensor) -> list[_Object]:
    """Objects in the scene disc, away from the cameras and not too entangled."""
    objects: list[_Object] = []
    count = int(torch.randint(config.num_objects[0], config.num_objects[1] + 1, (), generator=gen))
    for _ in range(count):
        kind = choice(gen, config.object_kinds)
        for _attempt in range(20):
            r = config.scene_radius * math.sqrt(uniform(gen, 0, 1))
            angle = uniform(gen, 0, 2 * math.pi)
            xy = torch.tensor([r * math.cos(angle), r * math.sin(angle)], dtype=torch.float64)
            candidate = _draw_object(gen, config, kind, xy)
            clear_of_cameras = (eyes - candidate.center).norm(dim=-1).min() > candidate.bound + 0.4
            clear_of_objects = all(
                (o.center - candidate.center).norm() > 0.7 * (o.bound + candidate.bound)
                for o in objects
            )
            if clear_of_cameras and clear_of_objects:
                objects.append(candidate)
                break
    return sorted(objects, key=lambda o: o.kind)


def _walls(gen: torch.Generator, config: SceneConfig, c2w: Tensor, kind: str):
    """Inward-facing walls around the scene: (normals [n, 3], offsets [n], tops [n]).

    A single ("back") wall stands roughly where the cameras look; a room has four.
    """
    if kind == "none":
        empty = torch.zeros(0, dtype=torch.float64)
        return empty.reshape(0, 3), empty, empty
    eyes, forward = c2w[:, :3, 3], c2w[:, :3, 2].mean(0)
    yaw = float(torch.atan2(forward[1], forward[0])) + uniform(gen, -0.4, 0.4)
    top = uniform(gen, *config.wall_height)
    sides = range(4) if kind == "room" else range(1)
    normals, offsets = [], []
    for k in sides:
        angle = yaw + k * math.pi / 2
        outward = torch.tensor([math.cos(angle), math.sin(angle), 0.0], dtype=torch.float64)
        # Beyond the objects, and behind every camera.
        distance = max(
            uniform(gen, *config.wall_distance),
            config.scene_radius + config.object_size[1] + 0.5,
            float((eyes @ outward).max()) + 0.75,
        )
        normals.append(-outward)
        offsets.append(-distance)
    tops = torch.full((len(offsets),), top, dtype=torch.float64)
    return torch.stack(normals), torch.tensor(offsets, dtype=torch.float64), tops


def _draw_material(gen: torch.Generator, config: SceneConfig, scale: float, ground: bool):
    """(color_a [3], color_b [3], texture id, frequency, direction [3], noise seed)."""
    hue = uniform(gen, 0, 1)
    saturation = uniform(gen, 0.1, 0.45) if ground else uniform(gen, 0.3, 0.9)
    value = uniform(gen, 0.45, 0.95)
    color_a = _hsv_to_rgb(hue, saturation, value)
    if uniform(gen, 0, 1) < 0.5:  # a darker shade of the same hue
        shade = (saturation * uniform(gen, 0.5, 1.0), value * uniform(gen, 0.35, 0.7))
        color_b = _hsv_to_rgb(hue, *shade)
    else:  # a second hue
        color_b = _hsv_to_rgb(uniform(gen, 0, 1), uniform(gen, 0.2, 0.9), uniform(gen, 0.3, 0.95))
    texture = choice(gen, config.textures)
    period = {  # world units per texture cycle
        "solid": 1.0,
        "checkers": uniform(gen, 0.3, 1.2),
        "stripes": uniform(gen, 0.15, 0.8),
        "noise": uniform(gen, 0.25, 1.0),
        "gradient": 2.0 * scale,
    }[texture]
    if ground and texture != "gradient":
        period *= 2.0
    direction = F.normalize(torch.randn(3, generator=gen, dtype=torch.float64), dim=0)
    seed = int(torch.randint(0, 2**20, (), generator=gen))
    return color_a, color_b, TEXTURES.index(texture), 1.0 / period, direction, seed


def _light(gen: torch.Generator, config: SceneConfig) -> Tensor:
    """Unit direction towards the sun [3]."""
    azimuth = uniform(gen, 0, 2 * math.pi)
    elevation = math.radians(uniform(gen, *config.light_elevation_deg))
    return torch.tensor(
        [
            math.cos(elevation) * math.cos(azimuth),
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
        ],
        dtype=torch.float64,
    )


def sample_scene(gen: torch.Generator, config: SceneConfig, c2w: Tensor) -> ProceduralScene:
    """Draw a scene layout (CPU, float64) for cameras c2w [v, 4, 4]: walls behind
    what they look at, objects clear of them."""
    f64 = torch.float64
    walls = choice(gen, WALLS[:3]) if config.walls == "random" else config.walls
    wall_normal, wall_offset, wall_top = _walls(gen, config, c2w, walls)
    plane_normal = torch.cat([torch.tensor([[0.0, 0.0, 1.0]], dtype=f64), wall_normal])
    plane_offset = torch.cat([torch.zeros(1, dtype=f64), wall_offset])
    plane_top = torch.cat([torch.full((1,), math.inf, dtype=f64), wall_top])
    objects = _place_objects(gen, config, c2w[:, :3, 3])

    # Planes use the world frame as texture frame, objects their own.
    num_planes = plane_normal.shape[0]
    origins = [torch.zeros(3, dtype=f64)] * num_planes + [o.center for o in objects]
    rotations = [torch.eye(3, dtype=f64)] * num_planes + [o.rotation for o in objects]
    scales = [config.scene_radius] * num_planes + [o.bound for o in objects]
    materials = [_draw_material(gen, config, s, ground=i == 0) for i, s in enumerate(scales)]
    color_a, color_b, texture, frequency, direction, seed = zip(*materials, strict=True)
    light_dir = _light(gen, config)
    warmth = uniform(gen, -0.08, 0.08)
    sky_hue = uniform(gen, 0.52, 0.66)
    sky_zenith = _hsv_to_rgb(sky_hue, uniform(gen, 0.4, 0.7), 0.8)

    def stack(get, empty_shape) -> Tensor:
        items = [get(o) for o in objects]
        return torch.stack(items) if items else torch.zeros(empty_shape, dtype=f64)

    return ProceduralScene(
        plane_normal=plane_normal,
        plane_offset=plane_offset,
        plane_top=plane_top,
        object_kind=torch.tensor([o.kind for o in objects], dtype=torch.long),
        object_center=stack(lambda o: o.center, (0, 3)),
        object_rotation=stack(lambda o: o.rotation, (0, 3, 3)),
        object_size=stack(lambda o: o.size, (0, 3)),
        object_bound=torch.tensor([o.bound for o in objects], dtype=f64),
        color_a=torch.tensor(color_a, dtype=f64),
        color_b=torch.tensor(color_b, dtype=f64),
        texture=torch.tensor(texture, dtype=torch.long),
        frequency=torch.tensor(frequency, dtype=f64),
        texture_dir=torch.stack(direction),
        noise_seed=torch.tensor(seed, dtype=torch.long),
        texture_origin=torch.stack(origins),
        texture_rotation=torch.stack(rotations),
        light_dir=light_dir,
        light_color=torch.tensor([1.0 + warmth, 1.0, 1.0 - warmth], dtype=f64),
        ambient=torch.tensor(uniform(gen, *config.ambient), dtype=f64),
        sky_horizon=torch.tensor(_hsv_to_rgb(sky_hue, 0.15, 0.95), dtype=f64),
        sky_zenith=torch.tensor(sky_zenith, dtype=f64),
        sky_radius=torch.tensor(config.sky_radius, dtype=f64),
    )
