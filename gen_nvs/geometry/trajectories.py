"""Camera trajectories for rendering videos and novel views.

All trajectories are built around a reference camera (usually the first source view
after scene normalisation) and a focus distance: the point `focus` units in front of
the reference camera is what orbits and spirals look at. They return OpenCV c2w
poses [n, 4, 4] in the reference camera's world frame; intrinsics are reused from
the reference view.

Presets (as in generative NVS tools): orbit, orbit-360, spiral, lemniscate, dolly-in,
dolly-out, pan, zoom-in and zoom-out (the focal length changes, the camera stays),
dolly-zoom (the camera backs away while the focal length grows so that the focus plane
keeps its size), move-forward/backward/left/right/up/down, and `interpolate` through
given cameras (the sources, or keyframes from a file). A trajectory is poses plus a
focal-length scale per frame (`Trajectory`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gen_nvs.geometry.cameras import look_at, matrix_to_quaternion, quaternion_to_matrix


def _check(reference: Tensor, num_frames: int) -> None:
    if reference.shape != (4, 4):
        raise ValueError(f"reference camera must be a 4x4 c2w, got {tuple(reference.shape)}")
    if not torch.isfinite(reference).all():
        raise ValueError("reference camera has non-finite values")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def _focus_point(reference: Tensor, focus: float) -> Tensor:
    if focus <= 0:
        raise ValueError(f"focus distance must be positive, got {focus}")
    return reference[:3, 3] + focus * reference[:3, 2]


def orbit(
    reference: Tensor,
    num_frames: int,
    focus: float = 1.0,
    degrees: float = 360.0,
    elevation_deg: float = 0.0,
) -> Tensor:
    """Cameras on a circle around the focus point, starting at the reference camera.

    The circle lies in the plane spanned by the reference camera's x and z axes
    (its horizontal plane), raised by `elevation_deg` towards the camera's up (-y).
    """
    _check(reference, num_frames)
    center = _focus_point(reference, focus)
    x, y, z = reference[:3, 0], reference[:3, 1], reference[:3, 2]
    full_turn = abs(degrees) >= 360.0  # a closed loop must not repeat its first frame
    angles = torch.linspace(
        0.0, math.radians(degrees), num_frames + int(full_turn), dtype=reference.dtype
    )[:num_frames]
    elev = math.radians(elevation_deg)
    # Offset from the centre: -z at angle 0 (the reference camera's position).
    horizontal = -torch.cos(angles)[:, None] * z + torch.sin(angles)[:, None] * x
    offset = focus * (math.cos(elev) * horizontal - math.sin(elev) * y)
    eyes = center + offset
    return look_at(eyes, center.expand_as(eyes), up=(-y).expand_as(eyes))


def spiral(
    reference: Tensor,
    num_frames: int,
    focus: float = 1.0,
    radius: float = 0.1,
    rotations: float = 2.0,
    depth_amplitude: float = 0.05,
) -> Tensor:
    """Forward-facing spiral (as for LLFF / RealEstate10K scenes) looking at the focus point."""
    _check(reference, num_frames)
    center = _focus_point(reference, focus)
    x, y, z = reference[:3, 0], reference[:3, 1], reference[:3, 2]
    t = torch.linspace(0.0, 2 * math.pi * rotations, num_frames, dtype=reference.dtype)
    offset = (
        radius * torch.cos(t)[:, None] * x
        + radius * torch.sin(t)[:, None] * y
        + depth_amplitude * torch.sin(t / max(rotations, 1e-6))[:, None] * z
    )
    eyes = reference[:3, 3] + offset - radius * x  # starts at the reference camera
    return look_at(eyes, center.expand_as(eyes), up=(-y).expand_as(eyes))


def dolly(reference: Tensor, num_frames: int, distance: float = 0.5) -> Tensor:
    """Move along the viewing direction: positive `distance` dollies in, negative out."""
    _check(reference, num_frames)
    steps = torch.linspace(0.0, distance, num_frames, dtype=reference.dtype)
    poses = reference.expand(num_frames, 4, 4).clone()
    poses[:, :3, 3] = reference[:3, 3] + steps[:, None] * reference[:3, 2]
    return poses


def dolly_in(reference: Tensor, num_frames: int, distance: float = 0.5) -> Tensor:
    return dolly(reference, num_frames, abs(distance))


def dolly_out(reference: Tensor, num_frames: int, distance: float = 0.5) -> Tensor:
    return dolly(reference, num_frames, -abs(distance))


def pan(reference: Tensor, num_frames: int, degrees: float = 30.0) -> Tensor:
    """Rotate the camera in place about its vertical axis, sweeping -degrees/2..degrees/2."""
    _check(reference, num_frames)
    angles = torch.linspace(-math.radians(degrees) / 2, math.radians(degrees) / 2, num_frames)
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.zeros(num_frames, 3, 3, dtype=reference.dtype)
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = c, s, 1.0, -s, c
    poses = reference.expand(num_frames, 4, 4).clone()
    poses[:, :3, :3] = reference[:3, :3] @ rot.to(reference)  # yaw in the camera frame
    return poses


def _slerp(q0: Tensor, q1: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of unit quaternions q0, q1 [4] at times t [n] -> [n, 4]."""
    dot = (q0 * q1).sum()
    if dot < 0:  # take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t[:, None] * (q1 - q0)
        return torch.nn.functional.normalize(q, dim=-1)
    theta = torch.acos(dot.clamp(-1, 1))
    w0 = torch.sin((1 - t) * theta) / torch.sin(theta)
    w1 = torch.sin(t * theta) / torch.sin(theta)
    return w0[:, None] * q0 + w1[:, None] * q1


def _catmull_rom(p: Tensor, seg: int, t: Tensor) -> Tensor:
    """Uniform Catmull-Rom between key points p[seg] and p[seg+1]."""
    n = p.shape[0]
    p0, p1 = p[max(seg - 1, 0)], p[seg]
    p2, p3 = p[seg + 1], p[min(seg + 2, n - 1)]
    t = t[:, None]
    return 0.5 * (
        2 * p1
        + (p2 - p0) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )


def interpolate(keyframes: Tensor, num_frames: int) -> Tensor:
    """A smooth path through key cameras [k, 4, 4] with `num_frames` poses.

    Positions follow a Catmull-Rom spline through the camera centres; rotations are
    slerped between consecutive keys. The first and last poses equal the first and
    last keys.
    """
    if keyframes.ndim != 3 or keyframes.shape[-2:] != (4, 4) or keyframes.shape[0] < 1:
        raise ValueError(f"keyframes must be [K,4,4] with K >= 1, got {tuple(keyframes.shape)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    k = keyframes.shape[0]
    if k == 1:
        return keyframes.expand(num_frames, 4, 4).clone()
    quats = matrix_to_quaternion(keyframes[:, :3, :3])
    centers = keyframes[:, :3, 3]
    s = torch.linspace(0.0, k - 1, num_frames, dtype=keyframes.dtype)
    seg = s.floor().long().clamp(max=k - 2)
    local = s - seg
    poses = torch.zeros(num_frames, 4, 4, dtype=keyframes.dtype)
    poses[:, 3, 3] = 1.0
    for i in range(k - 1):
        sel = seg == i
        if sel.any():
            poses[sel, :3, :3] = quaternion_to_matrix(_slerp(quats[i], quats[i + 1], local[sel]))
            poses[sel, :3, 3] = _catmull_rom(centers, i, local[sel])
    return poses


def lemniscate(
    reference: Tensor, num_frames: int, focus: float = 1.0, radius: float = 0.1
) -> Tensor:
    """A figure eight (lemniscate of Bernoulli, half-width `radius`) in the reference
    camera's image plane, always looking at the focus point; starts and ends at the
    reference camera."""
    _check(reference, num_frames)
    center = _focus_point(reference, focus)
    x, y = reference[:3, 0], reference[:3, 1]
    t = torch.linspace(0.0, 2 * math.pi, num_frames + 1, dtype=reference.dtype)[:num_frames]
    denominator = 1 + torch.sin(t) ** 2
    # Starts at the crossing point (the reference camera): t shifted by a quarter turn.
    u = radius * torch.sin(t) / denominator  # the x excursion, 0 at t = 0
    v = radius * torch.sin(t) * torch.cos(t) / denominator
    eyes = reference[:3, 3] + u[:, None] * x + v[:, None] * y
    return look_at(eyes, center.expand_as(eyes), up=(-y).expand_as(eyes))


# Camera-frame directions (OpenCV: x right, y down, z forward) of the move presets.
MOVES: dict[str, tuple[float, float, float]] = {
    "forward": (0.0, 0.0, 1.0),
    "backward": (0.0, 0.0, -1.0),
    "left": (-1.0, 0.0, 0.0),
    "right": (1.0, 0.0, 0.0),
    "up": (0.0, -1.0, 0.0),
    "down": (0.0, 1.0, 0.0),
}


def move(reference: Tensor, num_frames: int, direction: str, distance: float) -> Tensor:
    """Translate `distance` along a camera axis (`MOVES`) without turning."""
    _check(reference, num_frames)
    if direction not in MOVES:
        raise ValueError(f"move direction must be one of {list(MOVES)}, got {direction!r}")
    axis = reference[:3, :3] @ reference.new_tensor(MOVES[direction])
    steps = torch.linspace(0.0, distance, num_frames, dtype=reference.dtype)
    poses = reference.expand(num_frames, 4, 4).clone()
    poses[:, :3, 3] = reference[:3, 3] + steps[:, None] * axis
    return poses


def zoom(num_frames: int, factor: float) -> Tensor:
    """Focal-length scales [n] from 1 to `factor` (> 1 zooms in), geometric in between
    (a steady zoom)."""
    if factor <= 0:
        raise ValueError(f"zoom factor must be positive, got {factor}")
    return torch.logspace(0.0, math.log10(factor), num_frames, dtype=torch.float64)


def dolly_zoom(
    reference: Tensor, num_frames: int, focus: float, distance: float
) -> tuple[Tensor, Tensor]:
    """The vertigo effect: the camera backs away by `distance` along its axis while the
    focal length grows with the distance to the focus plane, whose image keeps its size.
    -> (poses [n, 4, 4], focal scales [n])."""
    poses = dolly(reference, num_frames, -abs(distance))
    behind = torch.linspace(0.0, abs(distance), num_frames, dtype=torch.float64)
    return poses, (focus + behind) / focus


@dataclass
class Trajectory:
    """c2w [n, 4, 4] poses and focal_scale [n]: each frame's focal length over the
    reference camera's (1 where the preset does not zoom)."""

    c2w: Tensor
    focal_scale: Tensor

    def intrinsics(self, fxfycxcy: Tensor) -> Tensor:
        """The reference camera's fxfycxcy [4] -> each frame's [n, 4]."""
        scale = self.focal_scale.to(fxfycxcy)
        out = fxfycxcy.expand(self.c2w.shape[0], 4).clone()
        out[:, :2] = out[:, :2] * scale[:, None]
        return out


def _move_preset(direction: str) -> Callable[[Tensor, int, float, float | None], Tensor]:
    return lambda ref, n, f, d: move(ref, n, direction, _or(d, 0.3 * f))


# name -> builder(reference [4,4], num_frames, focus, distance) -> poses [n,4,4], or
# (poses, focal scales [n]). `distance`: how far the preset travels (None: its default,
# a fraction of the focus distance); for the orbits the angle in degrees.
TRAJECTORY_PRESETS: dict[str, Callable[[Tensor, int, float, float | None], Tensor | tuple]] = {
    "orbit": lambda ref, n, f, d: orbit(ref, n, focus=f, degrees=60.0 if d is None else d),
    "orbit-360": lambda ref, n, f, d: orbit(ref, n, focus=f, degrees=360.0),
    "spiral": lambda ref, n, f, d: spiral(ref, n, focus=f, radius=_or(d, 0.1 * f)),
    "lemniscate": lambda ref, n, f, d: lemniscate(ref, n, focus=f, radius=_or(d, 0.15 * f)),
    "dolly-in": lambda ref, n, f, d: dolly_in(ref, n, distance=_or(d, 0.4 * f)),
    "dolly-out": lambda ref, n, f, d: dolly_out(ref, n, distance=_or(d, 0.4 * f)),
    "pan": lambda ref, n, f, d: pan(ref, n, degrees=30.0 if d is None else d),
    "zoom-in": lambda ref, n, f, d: (_still(ref, n), zoom(n, _or(d, 1.5))),
    "zoom-out": lambda ref, n, f, d: (_still(ref, n), zoom(n, 1 / _or(d, 1.5))),
    "dolly-zoom": lambda ref, n, f, d: dolly_zoom(ref, n, focus=f, distance=_or(d, 0.5 * f)),
    **{f"move-{direction}": _move_preset(direction) for direction in MOVES},
}
# What `distance` means per preset, for help texts.
DISTANCE_MEANING = (
    "orbit, pan: degrees; spiral, lemniscate: radius; zoom-in/out: focal factor; dolly, "
    "dolly-zoom, move: travel (scene units)"
)
# The farthest a trajectory or a single view goes (normalised scene units: the sources lie
# within 1 / 1.35 of the first): well past anything the sources show, and far from the
# float32 overflow that astronomical values end in.
MAX_TRAVEL = 100.0
# Focal factors past 10 either way leave a 64-pixel render 6 source pixels wide, or turn
# a 60-degree camera into a 160-degree one.
MAX_ZOOM = 10.0
_DEGREES = ("degrees", -360.0, 360.0)
_TRAVEL = ("a travel in scene units", -MAX_TRAVEL, MAX_TRAVEL)
# name -> (what `distance` is, its lowest and highest value); presets missing here take none.
DISTANCE_RANGES: dict[str, tuple[str, float, float]] = {
    "orbit": _DEGREES,
    "pan": _DEGREES,
    "spiral": ("a radius in scene units", 0.0, MAX_TRAVEL),
    "lemniscate": ("a radius in scene units", 0.0, MAX_TRAVEL),
    "zoom-in": ("a focal factor", 1 / MAX_ZOOM, MAX_ZOOM),
    "zoom-out": ("a focal factor", 1 / MAX_ZOOM, MAX_ZOOM),
    **{name: _TRAVEL for name in ("dolly-in", "dolly-out", "dolly-zoom")},
    **{f"move-{direction}": _TRAVEL for direction in MOVES},
}


def check_distance(name: str, distance: float | None) -> None:
    """ValueError unless `distance` (None: the preset's default) is a valid extent of
    trajectory `name` (`DISTANCE_RANGES`); the message names --trajectory-distance."""
    if distance is None:
        return
    if name not in DISTANCE_RANGES:
        raise ValueError(
            f"trajectory distance (--trajectory-distance) does not apply to {name}; presets "
            f"that take one: {', '.join(DISTANCE_RANGES)}"
        )
    meaning, low, high = DISTANCE_RANGES[name]
    if not low <= distance <= high:  # NaN fails too
        raise ValueError(
            f"trajectory distance (--trajectory-distance) of {name} is {meaning} in "
            f"[{low:g}, {high:g}], got {distance:g}"
        )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _still(reference: Tensor, num_frames: int) -> Tensor:
    _check(reference, num_frames)
    return reference.expand(num_frames, 4, 4).clone()


def make_trajectory(
    name: str,
    source_c2w: Tensor,
    num_frames: int,
    focus: float = 1.0,
    distance: float | None = None,
) -> Trajectory:
    """A named preset around the first source camera, or `interpolate` through all sources.

    Args:
        name: one of TRAJECTORY_PRESETS or "interpolate".
        source_c2w: [s, 4, 4] source cameras (normalised scene frame).
        num_frames: number of poses to return.
        focus: distance from the first camera to the point orbits look at.
        distance: the preset's extent (`DISTANCE_MEANING`); None: its default.
    Returns:
        the Trajectory (poses [num_frames, 4, 4] and focal scales).
    """
    if name == "interpolate":
        check_distance(name, distance)
        poses = interpolate(source_c2w, num_frames)
        return Trajectory(poses, torch.ones(num_frames, dtype=torch.float64))
    if name not in TRAJECTORY_PRESETS:
        valid = ", ".join([*TRAJECTORY_PRESETS, "interpolate"])
        raise ValueError(f"unknown trajectory {name!r}; valid: {valid}")
    check_distance(name, distance)
    if not (math.isfinite(focus) and focus > 0):
        raise ValueError(f"focus distance must be positive and finite, got {focus}")
    built = TRAJECTORY_PRESETS[name](source_c2w[0], num_frames, focus, distance)
    if isinstance(built, tuple):
        return Trajectory(*built)
    return Trajectory(built, torch.ones(num_frames, dtype=torch.float64))
