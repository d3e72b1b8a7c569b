"""Camera rigs of procedural scenes: an object-centric orbit or a forward-facing walk
(RealEstate10K-like), with pinhole intrinsics. Cameras follow the project's conventions
(OpenCV axes, c2w, `fxfycxcy` in pixels); all draws come from the scene's generator.

Dimension legend: `v` views.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gen_nvs.data.procedural.config import RIGS, SceneConfig
from gen_nvs.data.procedural.draws import choice, uniform
from gen_nvs.geometry.cameras import fov_to_focal, look_at

_UP = (0.0, 0.0, 1.0)


def _intrinsics(gen: torch.Generator, config: SceneConfig, n: int, image_hw) -> Tensor:
    """[n, 4] pinhole intrinsics: square pixels, principal point at the centre."""
    h, w = image_hw
    fov = math.radians(uniform(gen, *config.fov_deg))
    f = fov_to_focal(fov, w)
    return torch.tensor([[f, f, w / 2, h / 2]], dtype=torch.float64).repeat(n, 1)


def orbit_rig(gen: torch.Generator, config: SceneConfig, num_views: int) -> Tensor:
    """Cameras on an arc around the scene centre, looking at it: c2w [v, 4, 4].

    The arc spans `orbit_arc_deg` of azimuth at a random start, counter-clockwise or, with
    `orbit_direction="both"`, either way; each view has its own
    elevation around a per-scene one and a slightly jittered radius and look-at point.
    """
    center = torch.tensor(
        [uniform(gen, -0.3, 0.3), uniform(gen, -0.3, 0.3), uniform(gen, 0.3, 0.8)],
        dtype=torch.float64,
    )
    radius = uniform(gen, *config.orbit_radius) * uniform(gen, 0.92, 1.08, num_views)
    arc = math.radians(uniform(gen, *config.orbit_arc_deg))
    azimuth = uniform(gen, 0, 2 * math.pi) + arc * uniform(gen, 0, 1, num_views).sort().values
    if config.orbit_direction == "both" and uniform(gen, 0, 1) < 0.5:
        azimuth = azimuth.flip(0)  # clockwise (drawn only then: "ccw" scenes stay as they were)
    low, high = (math.radians(x) for x in config.orbit_elevation_deg)
    base = uniform(gen, low, high)
    elevation = (base + uniform(gen, -0.15, 0.15, num_views)).clamp(low, high)
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
    heading = uniform(gen, 0, 2 * math.pi)
    forward = torch.tensor([math.cos(heading), math.sin(heading), 0.0], dtype=torch.float64)
    side = torch.tensor([-math.sin(heading), math.cos(heading), 0.0], dtype=torch.float64)
    start_distance = config.scene_radius + uniform(gen, 1.0, 3.0)
    start = -start_distance * forward + uniform(gen, -1.0, 1.0) * side
    start[2] = uniform(gen, *config.walk_height)
    move_angle = uniform(gen, -1.3, 1.3)  # 0 = straight ahead, +-1.3 rad ~ sideways
    move = uniform(gen, *config.walk_length) * (
        math.cos(move_angle) * forward + math.sin(move_angle) * side
    )
    progress = torch.linspace(0, 1, num_views, dtype=torch.float64)
    progress = (progress + uniform(gen, -0.3, 0.3, num_views) / max(num_views, 2)).clamp(0, 1)
    eye = start + progress[:, None] * move
    eye[:, 2] += uniform(gen, -0.05, 0.05, num_views)

    turn = math.radians(uniform(gen, *config.walk_turn_deg))
    yaw = heading + uniform(gen, -0.3, 0.3) + turn * progress
    yaw = yaw + uniform(gen, -0.03, 0.03, num_views)
    pitch = uniform(gen, -0.35, 0.0) + uniform(gen, -0.03, 0.03, num_views)
    look = torch.stack([pitch.cos() * yaw.cos(), pitch.cos() * yaw.sin(), pitch.sin()], -1)
    c2w = look_at(eye, eye + look, eye.new_tensor(_UP).expand_as(eye))
    roll = uniform(gen, -0.02, 0.02, num_views)
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


def sample_cameras(
    gen: torch.Generator, config: SceneConfig, num_views: int, image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Draw a rig (per `config.rig`) -> (c2w [v, 4, 4], fxfycxcy [v, 4]), float64 on CPU."""
    rig = choice(gen, RIGS[:2]) if config.rig == "mixed" else config.rig
    c2w = orbit_rig(gen, config, num_views) if rig == "orbit" else walk_rig(gen, config, num_views)
    return c2w, _intrinsics(gen, config, num_views, image_hw)
