"""Procedural RGB-D scenes: analytic primitives ray-cast in pure PyTorch.

A scene is a ground plane, optional walls, a few objects (spheres, boxes and
cylinders at arbitrary orientations) with procedural solid textures, a directional
light with cast shadows and an ambient term, and a sky. Cameras follow a rig: an
object-centric orbit or a forward-facing walk (RealEstate10K-like). Every random
choice is drawn from one CPU `torch.Generator` seeded by the scene's seed, so a
seed gives the same scene on any device; rendering then runs on the requested
device, all views and rays batched.

World frame: z is up and the ground is the plane z = 0; the objects stand in a disc
of radius `SceneConfig.scene_radius` around the origin. Cameras use the project's
conventions (OpenCV axes, c2w, `fxfycxcy` in pixels, depth = z along the optical
axis).

The sky is a sphere of radius `SceneConfig.sky_radius` around the origin, so every
pixel has a finite depth. `depth_valid` is all True unless `sky_depth_valid` is
False, in which case sky pixels are marked invalid (as in real data, where the sky
has no measured depth).

Dimension legend: `r` rays, `n` planes, `m` objects, `p` = n + m primitives, `k`
selected items (candidate (object, ray) pairs, or rays that hit something), `v`
views, `h`/`w` image height/width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from gen_nvs.data.scene import SceneSample
from gen_nvs.geometry.cameras import camera_rays, fov_to_focal, look_at, quaternion_to_matrix

RIGS = ("orbit", "walk", "mixed")
WALLS = ("none", "back", "room", "random")
TEXTURES = ("solid", "checkers", "stripes", "noise", "gradient")
OBJECT_KINDS = ("sphere", "box", "cylinder")

_UP = (0.0, 0.0, 1.0)
_INF = float("inf")
# Rays shorter than this (in units of the ray direction) do not count as hits, so
# that shadow rays do not hit the surface they start on.
_T_MIN = 1e-4
# Seeds the source/target split of dataset items apart from the scenes' own seeds.
_SPLIT_SEED_OFFSET = 1 << 40


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneConfig:
    """How procedural scenes are drawn. Ranges are inclusive (low, high) pairs.

    Sizes are in world units (the objects are roughly 0.5 to 2 units across), angles
    in degrees, `fov_deg` is the horizontal field of view.
    """

    num_objects: tuple[int, int] = (3, 7)
    object_kinds: tuple[str, ...] = OBJECT_KINDS
    object_size: tuple[float, float] = (0.3, 0.9)  # bounding-sphere radius
    scene_radius: float = 2.5
    walls: str = "random"  # none | back | room | random (each scene picks one)
    wall_distance: tuple[float, float] = (4.5, 8.0)
    wall_height: tuple[float, float] = (1.5, 4.0)
    textures: tuple[str, ...] = TEXTURES
    rig: str = "mixed"  # orbit | walk | mixed (each scene picks one)
    fov_deg: tuple[float, float] = (50.0, 75.0)
    orbit_radius: tuple[float, float] = (4.0, 6.5)
    orbit_elevation_deg: tuple[float, float] = (5.0, 40.0)
    orbit_arc_deg: tuple[float, float] = (40.0, 180.0)
    walk_length: tuple[float, float] = (0.75, 3.5)
    walk_height: tuple[float, float] = (0.7, 1.8)
    walk_turn_deg: tuple[float, float] = (-20.0, 20.0)
    light_elevation_deg: tuple[float, float] = (25.0, 70.0)
    ambient: tuple[float, float] = (0.2, 0.45)
    shadows: bool = True
    sky_radius: float = 100.0
    sky_depth_valid: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], str):
                if value[0] > value[1]:
                    raise ValueError(f"SceneConfig.{f.name}: empty range {value}")
        if self.num_objects[0] < 0:
            raise ValueError(f"SceneConfig.num_objects must be >= 0, got {self.num_objects}")
        if min(self.object_size) <= 0 or self.scene_radius <= 0:
            raise ValueError("SceneConfig: object_size and scene_radius must be positive")
        for name, value, allowed in (
            ("rig", (self.rig,), RIGS),
            ("walls", (self.walls,), WALLS),
            ("textures", self.textures, TEXTURES),
            ("object_kinds", self.object_kinds, OBJECT_KINDS),
        ):
            unknown = [x for x in value if x not in allowed]
            if unknown or not value:
                raise ValueError(
                    f"SceneConfig.{name}: {value} is not a non-empty choice of {allowed}"
                )
        if not (0 < self.fov_deg[0] and self.fov_deg[1] < 180):
            raise ValueError(f"SceneConfig.fov_deg must lie in (0, 180), got {self.fov_deg}")
        if self.sky_radius <= 4 * max(self.wall_distance[1], self.orbit_radius[1]):
            raise ValueError(
                f"SceneConfig.sky_radius {self.sky_radius} must be far beyond the walls and cameras"
            )


# --------------------------------------------------------------------------------------
# Random draws (CPU generator, float64 host numbers)
# --------------------------------------------------------------------------------------


def _uniform(gen: torch.Generator, low: float, high: float, n: int | None = None):
    """A float (n None) or a float64 tensor [n] uniform in [low, high]."""
    x = torch.rand(() if n is None else (n,), generator=gen, dtype=torch.float64)
    x = low + (high - low) * x
    return float(x) if n is None else x


def _choice(gen: torch.Generator, options):
    return options[int(torch.randint(len(options), (), generator=gen))]


def _random_rotation(gen: torch.Generator) -> Tensor:
    """A uniformly random rotation matrix [3, 3] (float64)."""
    q = torch.randn(4, generator=gen, dtype=torch.float64)
    return quaternion_to_matrix(q)


def _yaw_rotation(yaw: float) -> Tensor:
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _hsv_to_rgb(h: float, s: float, v: float) -> list[float]:
    """One HSV colour (all in [0, 1]) -> RGB."""
    k = [(n + h * 6) % 6 for n in (5, 3, 1)]
    return [v - v * s * max(0.0, min(kk, 4 - kk, 1.0)) for kk in k]


# --------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------


def _intrinsics(gen: torch.Generator, config: SceneConfig, n: int, image_hw) -> Tensor:
    """[n, 4] pinhole intrinsics: square pixels, principal point at the centre."""
    h, w = image_hw
    fov = math.radians(_uniform(gen, *config.fov_deg))
    f = fov_to_focal(fov, w)
    return torch.tensor([[f, f, w / 2, h / 2]], dtype=torch.float64).repeat(n, 1)


def orbit_rig(gen: torch.Generator, config: SceneConfig, num_views: int) -> Tensor:
    """Cameras on an arc around the scene centre, looking at it: c2w [v, 4, 4].

    The arc spans `orbit_arc_deg` of azimuth at a random start; each view has its own
    elevation around a per-scene one and a slightly jittered radius and look-at point.
    """
    center = torch.tensor(
        [_uniform(gen, -0.3, 0.3), _uniform(gen, -0.3, 0.3), _uniform(gen, 0.3, 0.8)],
        dtype=torch.float64,
    )
    radius = _uniform(gen, *config.orbit_radius) * _uniform(gen, 0.92, 1.08, num_views)
    arc = math.radians(_uniform(gen, *config.orbit_arc_deg))
    azimuth = _uniform(gen, 0, 2 * math.pi) + arc * _uniform(gen, 0, 1, num_views).sort().values
    low, high = (math.radians(x) for x in config.orbit_elevation_deg)
    base = _uniform(gen, low, high)
    elevation = (base + _uniform(gen, -0.15, 0.15, num_views)).clamp(low, high)
    direction = torch.stack(
        [
            elevation.cos() * azimuth.cos(),
            elevation.cos() * azimuth.sin(),
            elevation.sin(),
        ],
        -1,
    )  # (v, 3)
    eye = center + radius[:, None] * direction
    eye[:, 2] = eye[:, 2].clamp_min(0.2)
    target = center + 0.25 * torch.randn(num_views, 3, generator=gen, dtype=torch.float64)
    return look_at(eye, target, eye.new_tensor(_UP).expand_as(eye))


def walk_rig(gen: torch.Generator, config: SceneConfig, num_views: int) -> Tensor:
    """A forward-facing camera path (RealEstate10K-like): c2w [v, 4, 4].

    The camera starts outside the object disc facing roughly towards the scene and
    moves `walk_length` units, mostly forwards and sideways, while slowly turning
    (`walk_turn_deg` over the path) with small pitch and roll changes.
    """
    heading = _uniform(gen, 0, 2 * math.pi)
    forward = torch.tensor([math.cos(heading), math.sin(heading), 0.0], dtype=torch.float64)
    side = torch.tensor([-math.sin(heading), math.cos(heading), 0.0], dtype=torch.float64)
    start_distance = config.scene_radius + _uniform(gen, 1.0, 3.0)
    start = -start_distance * forward + _uniform(gen, -1.0, 1.0) * side
    start[2] = _uniform(gen, *config.walk_height)
    move_angle = _uniform(gen, -1.3, 1.3)  # 0 = straight ahead, +-1.3 rad ~ sideways
    move = _uniform(gen, *config.walk_length) * (
        math.cos(move_angle) * forward + math.sin(move_angle) * side
    )
    progress = torch.linspace(0, 1, num_views, dtype=torch.float64)
    progress = (progress + _uniform(gen, -0.3, 0.3, num_views) / max(num_views, 2)).clamp(0, 1)
    eye = start + progress[:, None] * move
    eye[:, 2] += _uniform(gen, -0.05, 0.05, num_views)

    turn = math.radians(_uniform(gen, *config.walk_turn_deg))
    yaw = heading + _uniform(gen, -0.3, 0.3) + turn * progress
    yaw = yaw + _uniform(gen, -0.03, 0.03, num_views)
    pitch = _uniform(gen, -0.35, 0.0) + _uniform(gen, -0.03, 0.03, num_views)
    look = torch.stack([pitch.cos() * yaw.cos(), pitch.cos() * yaw.sin(), pitch.sin()], -1)
    c2w = look_at(eye, eye + look, eye.new_tensor(_UP).expand_as(eye))
    roll = _uniform(gen, -0.02, 0.02, num_views)
    zero, one = torch.zeros_like(roll), torch.ones_like(roll)
    roll_matrix = torch.stack(
        [
            torch.stack([roll.cos(), -roll.sin(), zero], -1),
            torch.stack([roll.sin(), roll.cos(), zero], -1),
            torch.stack([zero, zero, one], -1),
        ],
        -2,
    )  # (v, 3, 3) rotation about the optical axis
    c2w[:, :3, :3] = c2w[:, :3, :3] @ roll_matrix
    return c2w


# --------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------


@dataclass
class ProceduralScene:
    """Everything a renderer needs: primitives, materials, light and sky.

    Primitives are numbered planes first, then objects; objects are sorted by kind
    (OBJECT_KINDS order). Material rows follow the primitive numbering. Rotations
    hold an object's local axes as columns (local -> world); a cylinder's axis is
    its local z.

    Fields (n planes, m objects, p = n + m primitives):
        plane_normal [n, 3] (unit, facing the visible side), plane_offset [n]: the
            plane is normal . x = offset; planes are seen from the front only and
            end at height plane_top [n] (inf for the ground; walls are finite so
            that they do not shade the whole room).
        object_kind [m] (index into OBJECT_KINDS), object_center [m, 3],
        object_rotation [m, 3, 3], object_size [m, 3]: sphere (r, r, r), box half
        extents, cylinder (r, r, half height); object_bound [m]: bounding-sphere
        radius around the centre.
        color_a, color_b [p, 3]: the two colours of each texture.
        texture [p] (index into TEXTURES), frequency [p] (texture cycles per unit),
        texture_dir [p, 3] (stripes / gradient direction, texture frame),
        noise_seed [p], texture_origin [p, 3], texture_rotation [p, 3, 3]: the
        texture's frame (textures stick to their object).
        light_dir [3] (towards the light, unit), light_color [3], ambient [].
        sky_horizon, sky_zenith [3]; sky_radius [].
    """

    plane_normal: Tensor
    plane_offset: Tensor
    plane_top: Tensor
    object_kind: Tensor
    object_center: Tensor
    object_rotation: Tensor
    object_size: Tensor
    object_bound: Tensor
    color_a: Tensor
    color_b: Tensor
    texture: Tensor
    frequency: Tensor
    texture_dir: Tensor
    noise_seed: Tensor
    texture_origin: Tensor
    texture_rotation: Tensor
    light_dir: Tensor
    light_color: Tensor
    ambient: Tensor
    sky_horizon: Tensor
    sky_zenith: Tensor
    sky_radius: Tensor

    def to(self, device: torch.device | str) -> ProceduralScene:
        """A copy on `device`, floats in float32 (integer fields stay int64)."""

        def move(x: Tensor) -> Tensor:
            return x.to(device, torch.float32) if x.is_floating_point() else x.to(device)

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    @property
    def num_planes(self) -> int:
        return self.plane_normal.shape[0]

    @property
    def num_objects(self) -> int:
        return self.object_kind.shape[0]


@dataclass
class _Object:
    kind: int  # index into OBJECT_KINDS
    center: Tensor  # (3,)
    rotation: Tensor  # (3, 3)
    size: Tensor  # (3,), as in ProceduralScene.object_size
    bound: float


def _draw_object(gen: torch.Generator, config: SceneConfig, kind: str, xy: Tensor) -> _Object:
    """One object of `kind` standing on (or, sometimes, floating above) the ground at xy."""
    scale = _uniform(gen, *config.object_size)
    lift = _uniform(gen, 0.2, 1.0) if _uniform(gen, 0, 1) < 0.15 else 0.0
    tilted = _uniform(gen, 0, 1) < 0.35
    rotation = _random_rotation(gen) if tilted else _yaw_rotation(_uniform(gen, 0, 2 * math.pi))
    if kind == "sphere":
        size = torch.full((3,), scale, dtype=torch.float64)
        rest = scale
    elif kind == "box":
        size = scale * _uniform(gen, 0.35, 0.75, 3)
        rest = float((rotation[2].abs() * size).sum())  # the lowest corner touches the ground
    else:
        radius, half_height = scale * _uniform(gen, 0.35, 0.7), scale * _uniform(gen, 0.5, 0.95)
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
        kind = _choice(gen, config.object_kinds)
        for _attempt in range(20):
            r = config.scene_radius * math.sqrt(_uniform(gen, 0, 1))
            angle = _uniform(gen, 0, 2 * math.pi)
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
    yaw = float(torch.atan2(forward[1], forward[0])) + _uniform(gen, -0.4, 0.4)
    top = _uniform(gen, *config.wall_height)
    sides = range(4) if kind == "room" else range(1)
    normals, offsets = [], []
    for k in sides:
        angle = yaw + k * math.pi / 2
        outward = torch.tensor([math.cos(angle), math.sin(angle), 0.0], dtype=torch.float64)
        # Beyond the objects, and behind every camera.
        distance = max(
            _uniform(gen, *config.wall_distance),
            config.scene_radius + config.object_size[1] + 0.5,
            float((eyes @ outward).max()) + 0.75,
        )
        normals.append(-outward)
        offsets.append(-distance)
    tops = torch.full((len(offsets),), top, dtype=torch.float64)
    return torch.stack(normals), torch.tensor(offsets, dtype=torch.float64), tops


def _draw_material(gen: torch.Generator, config: SceneConfig, scale: float, ground: bool):
    """(color_a [3], color_b [3], texture id, frequency, direction [3], noise seed)."""
    hue = _uniform(gen, 0, 1)
    saturation = _uniform(gen, 0.1, 0.45) if ground else _uniform(gen, 0.3, 0.9)
    value = _uniform(gen, 0.45, 0.95)
    color_a = _hsv_to_rgb(hue, saturation, value)
    if _uniform(gen, 0, 1) < 0.5:  # a darker shade of the same hue
        shade = (saturation * _uniform(gen, 0.5, 1.0), value * _uniform(gen, 0.35, 0.7))
        color_b = _hsv_to_rgb(hue, *shade)
    else:  # a second hue
        color_b = _hsv_to_rgb(
            _uniform(gen, 0, 1), _uniform(gen, 0.2, 0.9), _uniform(gen, 0.3, 0.95)
        )
    texture = _choice(gen, config.textures)
    period = {  # world units per texture cycle
        "solid": 1.0,
        "checkers": _uniform(gen, 0.3, 1.2),
        "stripes": _uniform(gen, 0.15, 0.8),
        "noise": _uniform(gen, 0.25, 1.0),
        "gradient": 2.0 * scale,
    }[texture]
    if ground and texture != "gradient":
        period *= 2.0
    direction = F.normalize(torch.randn(3, generator=gen, dtype=torch.float64), dim=0)
    seed = int(torch.randint(0, 2**20, (), generator=gen))
    return color_a, color_b, TEXTURES.index(texture), 1.0 / period, direction, seed


def _light(gen: torch.Generator, config: SceneConfig) -> Tensor:
    """Unit direction towards the sun [3]."""
    azimuth = _uniform(gen, 0, 2 * math.pi)
    elevation = math.radians(_uniform(gen, *config.light_elevation_deg))
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
    walls = _choice(gen, WALLS[:3]) if config.walls == "random" else config.walls
    wall_normal, wall_offset, wall_top = _walls(gen, config, c2w, walls)
    plane_normal = torch.cat([torch.tensor([[0.0, 0.0, 1.0]], dtype=f64), wall_normal])
    plane_offset = torch.cat([torch.zeros(1, dtype=f64), wall_offset])
    plane_top = torch.cat([torch.full((1,), _INF, dtype=f64), wall_top])
    objects = _place_objects(gen, config, c2w[:, :3, 3])

    # Planes use the world frame as texture frame, objects their own.
    num_planes = plane_normal.shape[0]
    origins = [torch.zeros(3, dtype=f64)] * num_planes + [o.center for o in objects]
    rotations = [torch.eye(3, dtype=f64)] * num_planes + [o.rotation for o in objects]
    scales = [config.scene_radius] * num_planes + [o.bound for o in objects]
    materials = [_draw_material(gen, config, s, ground=i == 0) for i, s in enumerate(scales)]
    color_a, color_b, texture, frequency, direction, seed = zip(*materials, strict=True)
    light_dir = _light(gen, config)
    warmth = _uniform(gen, -0.08, 0.08)
    sky_hue = _uniform(gen, 0.52, 0.66)
    sky_zenith = _hsv_to_rgb(sky_hue, _uniform(gen, 0.4, 0.7), 0.8)

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
        ambient=torch.tensor(_uniform(gen, *config.ambient), dtype=f64),
        sky_horizon=torch.tensor(_hsv_to_rgb(sky_hue, 0.15, 0.95), dtype=f64),
        sky_zenith=torch.tensor(sky_zenith, dtype=f64),
        sky_radius=torch.tensor(config.sky_radius, dtype=f64),
    )


# --------------------------------------------------------------------------------------
# Ray casting. Rays: origins o [r, 3], directions d [r, 3], not necessarily unit; t
# is in units of d. Objects are first culled by their bounding spheres over all
# (object, ray) pairs, then intersected exactly on the surviving pairs only.
# --------------------------------------------------------------------------------------


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x[index] for index [k] along dim 0 (index_select: fast on CPU for any row shape)."""
    return x.reshape(x.shape[0], -1).index_select(0, index).reshape(-1, *x.shape[1:])


def _into_frames(x: Tensor, rotation: Tensor) -> Tensor:
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
    rotation = _gather(scene.object_rotation, obj)  # (k, 3, 3)
    o_local = _into_frames(_gather(o, ray) - _gather(scene.object_center, obj), rotation)
    d_local = _into_frames(_gather(d, ray), rotation)
    size = _gather(scene.object_size, obj)
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


def _sky_distance(o: Tensor, d: Tensor, radius: Tensor) -> Tensor:
    """t at which rays starting inside the sky sphere (centred at the origin) leave it."""
    a = (d * d).sum(-1)
    half_b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius * radius  # < 0 inside
    return (-half_b + (half_b * half_b - a * c).sqrt()) / a


# --------------------------------------------------------------------------------------
# Surface normals, textures and shading (hit rays only: p [k, 3], primitive index [k])
# --------------------------------------------------------------------------------------


def _object_normals(scene: ProceduralScene, p: Tensor, obj: Tensor) -> Tensor:
    """Outward unit normals [k, 3] at points p [k, 3] on objects obj [k]."""
    rotation = _gather(scene.object_rotation, obj)  # (k, 3, 3)
    q = _into_frames(p - _gather(scene.object_center, obj), rotation)  # local point
    size = _gather(scene.object_size, obj)
    kind = _gather(scene.object_kind, obj)[:, None]

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
    normal = _gather(scene.plane_normal, index.clamp_max(n_planes - 1))
    on_object = (index >= n_planes).nonzero().squeeze(1)
    if on_object.numel():
        obj = index.index_select(0, on_object) - n_planes
        normal.index_copy_(0, on_object, _object_normals(scene, _gather(p, on_object), obj))
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
    frequency = _gather(scene.frequency, index)
    rotation = _gather(scene.texture_rotation, index)
    q = _into_frames(p - _gather(scene.texture_origin, index), rotation) * frequency[:, None]
    along = (q * _gather(scene.texture_dir, index)).sum(-1)  # cycles along the direction
    texture = _gather(scene.texture, index)

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
        seed = _gather(scene.noise_seed, index.index_select(0, is_noise))
        noise = _value_noise(_gather(q, is_noise), seed)
        mix.index_copy_(0, is_noise, ((noise - 0.3) / 0.4).clamp(0, 1))
    color_a, color_b = _gather(scene.color_a, index), _gather(scene.color_b, index)
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


def _shade_rays(
    scene: ProceduralScene, o: Tensor, d: Tensor, pixel_angle: Tensor, shadows: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Trace camera rays -> (rgb [r, 3], depth [r], hit_something [r]).

    `d` are camera rays K^-1 [u, v, 1] turned into the world, so t along them is the
    depth (z in the camera frame). `pixel_angle` [r] is 1 / focal length of each
    ray's camera.
    """
    t, index = cast_rays(scene, o, d)
    sky_t = _sky_distance(o, d, scene.sky_radius)
    hit = (index >= 0) & (t < sky_t)  # far ground beyond the sky sphere is sky
    depth = torch.where(hit, t, sky_t)
    rgb = _sky_color(scene, d)
    rays = hit.nonzero().squeeze(1)  # index tensors: cheaper than boolean masks on CPU
    if not rays.numel():
        return rgb, depth, hit
    d_hit, t_hit, index = _gather(d, rays), _gather(depth, rays), _gather(index, rays)
    p = _gather(o, rays) + t_hit[:, None] * d_hit
    normal = _normals(scene, p, index)
    cosine = (normal * d_hit).sum(-1)
    normal = torch.where(cosine[:, None] > 0, -normal, normal)  # face the camera
    grazing = cosine.abs() / d_hit.norm(dim=-1)
    footprint = t_hit * _gather(pixel_angle, rays) / grazing.clamp_min(0.05)
    albedo = _albedo(scene, p, index, footprint)
    light = (normal @ scene.light_dir).clamp_min(0)
    if shadows:
        lit = (light > 0).nonzero().squeeze(1)
        blocked = _in_shadow(scene, _gather(p, lit), _gather(normal, lit), _gather(t_hit, lit))
        light.index_fill_(0, lit[blocked], 0.0)
    shading = scene.ambient + (1 - scene.ambient) * light
    rgb.index_copy_(0, rays, (albedo * shading[:, None] * scene.light_color).clamp(0, 1))
    return rgb, depth, hit


# --------------------------------------------------------------------------------------
# Rendering and the public entry points
# --------------------------------------------------------------------------------------


@dataclass
class RenderedViews:
    """Rendered RGB-D views of one scene.

    Fields:
        images [v, 3, h, w] in [0, 1]; depth [v, h, w] (z in the camera frame);
        depth_valid [v, h, w] bool; points [v, h, w, 3] world-frame surface points;
        c2w [v, 4, 4]; fxfycxcy [v, 4]; seed: the scene's seed.
    """

    images: Tensor
    depth: Tensor
    depth_valid: Tensor
    points: Tensor
    c2w: Tensor
    fxfycxcy: Tensor
    seed: int

    def to_sample(self, num_sources: int, order: list[int] | None = None) -> SceneSample:
        """A `SceneSample` of the views in `order` (default: as rendered), the first
        `num_sources` of them sources."""
        order = list(range(self.images.shape[0])) if order is None else order
        index = torch.tensor(order, dtype=torch.long, device=self.images.device)
        return SceneSample(
            images=self.images[index],
            c2w=self.c2w[index],
            fxfycxcy=self.fxfycxcy[index],
            num_sources=num_sources,
            scene=scene_name(self.seed),
            frame_indices=index.cpu(),
            depth=self.depth[index],
            depth_valid=self.depth_valid[index],
        )


def scene_name(seed: int) -> str:
    """The name of the procedural scene with this seed."""
    return f"procedural_{seed:08d}"


def render_views(
    scene: ProceduralScene,
    c2w: Tensor,
    fxfycxcy: Tensor,
    image_hw: tuple[int, int],
    shadows: bool = True,
    sky_depth_valid: bool = True,
    chunk_rays: int = 1 << 17,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ray-cast views of `scene` on the scene's device.

    Args:
        c2w [v, 4, 4], fxfycxcy [v, 4] (moved to the scene's device, float32).
        chunk_rays: rays traced together (bounds memory; chunks span views).
    Returns:
        images [v, 3, h, w], depth [v, h, w], depth_valid [v, h, w], points [v, h, w, 3].
    """
    device = scene.plane_normal.device
    c2w = c2w.to(device, torch.float32)
    fxfycxcy = fxfycxcy.to(device, torch.float32)
    v, (h, w) = c2w.shape[0], image_hw
    d_cam = camera_rays(fxfycxcy, h, w).reshape(v, h * w, 3)  # z = 1: t is depth
    d = (d_cam @ c2w[:, :3, :3].transpose(1, 2)).reshape(-1, 3)
    o = c2w[:, None, :3, 3].expand(v, h * w, 3).reshape(-1, 3)
    pixel_angle = (1.0 / fxfycxcy[:, :1]).expand(v, h * w).reshape(-1)

    rgb = torch.empty(v * h * w, 3, device=device)
    depth = torch.empty(v * h * w, device=device)
    hit = torch.empty(v * h * w, dtype=torch.bool, device=device)
    for start in range(0, v * h * w, chunk_rays):
        part = slice(start, start + chunk_rays)
        rgb[part], depth[part], hit[part] = _shade_rays(
            scene, o[part], d[part], pixel_angle[part], shadows
        )
    points = o + depth[:, None] * d
    valid = torch.ones_like(hit) if sky_depth_valid else hit
    images = rgb.reshape(v, h, w, 3).permute(0, 3, 1, 2).contiguous()
    return images, depth.reshape(v, h, w), valid.reshape(v, h, w), points.reshape(v, h, w, 3)


def sample_cameras(
    gen: torch.Generator, config: SceneConfig, num_views: int, image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Draw a rig (per `config.rig`) -> (c2w [v, 4, 4], fxfycxcy [v, 4]), float64 on CPU."""
    rig = _choice(gen, RIGS[:2]) if config.rig == "mixed" else config.rig
    c2w = orbit_rig(gen, config, num_views) if rig == "orbit" else walk_rig(gen, config, num_views)
    return c2w, _intrinsics(gen, config, num_views, image_hw)


def generate_scene(
    seed: int,
    num_views: int,
    image_hw: tuple[int, int] = (128, 128),
    config: SceneConfig | None = None,
    device: torch.device | str = "cpu",
) -> RenderedViews:
    """Draw procedural scene `seed` and render `num_views` views of its camera rig.

    Deterministic per seed: the same seed gives the same scene and cameras on every
    device (pixels agree up to float rounding across devices).
    """
    config = SceneConfig() if config is None else config
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if len(image_hw) != 2 or min(image_hw) < 1:
        raise ValueError(f"image_hw must be two positive sizes, got {image_hw}")
    gen = torch.Generator().manual_seed(seed)
    c2w, fxfycxcy = sample_cameras(gen, config, num_views, image_hw)
    scene = sample_scene(gen, config, c2w).to(device)
    images, depth, valid, points = render_views(
        scene, c2w, fxfycxcy, image_hw, config.shadows, config.sky_depth_valid
    )
    return RenderedViews(
        images=images,
        depth=depth,
        depth_valid=valid,
        points=points,
        c2w=c2w.to(device, torch.float32),
        fxfycxcy=fxfycxcy.to(device, torch.float32),
        seed=seed,
    )


class ProceduralDataset(Dataset):
    """Item i: procedural scene `seed + i` as a `SceneSample`, sources first.

    `num_sources + num_targets` views are rendered along the scene's rig; a random
    subset of them (drawn from the item's own generator) are the sources, the others
    the targets, so targets both interpolate and extrapolate the sources.
    """

    def __init__(
        self,
        num_scenes: int,
        num_sources: int = 2,
        num_targets: int = 2,
        image_hw: tuple[int, int] = (128, 128),
        config: SceneConfig | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_scenes < 1 or num_sources < 1 or num_targets < 0:
            raise ValueError(
                f"need num_scenes >= 1, num_sources >= 1, num_targets >= 0, got "
                f"{num_scenes}, {num_sources}, {num_targets}"
            )
        self.num_scenes = num_scenes
        self.num_sources = num_sources
        self.num_targets = num_targets
        self.image_hw = tuple(image_hw)
        self.config = SceneConfig() if config is None else config
        self.seed = seed
        self.device = device

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> SceneSample:
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"index {index} out of range for {self.num_scenes} scenes")
        seed = self.seed + index
        num_views = self.num_sources + self.num_targets
        views = generate_scene(seed, num_views, self.image_hw, self.config, self.device)
        # A separate stream for the split, so that it does not perturb the scene's draws.
        split = torch.Generator().manual_seed(seed + _SPLIT_SEED_OFFSET)
        order = torch.randperm(num_views, generator=split).tolist()
        sources = sorted(order[: self.num_sources])
        targets = sorted(order[self.num_sources :])
        return views.to_sample(self.num_sources, sources + targets)
