"""What the benchmarks share: timing, the machine's name, a synthetic scene and the checks
of their common settings.

Dimension legend:
    s   source views        t   target views
    h, w    image height / width
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gen_nvs.geometry.cameras import (
    camera_tokens,
    fov_to_focal,
    look_at,
    normalize_scene,
    plucker_rays,
)
from gen_nvs.geometry.trajectories import orbit

FIELD_OF_VIEW_DEG = 60.0
SOURCE_ARC_DEG = 40.0
FOCUS = 2.0  # distance from the first source camera to the point every camera looks at
TARGET_ELEVATION_DEG = 15.0


# --------------------------------------------------------------------------------------
# Timing and the machine
# --------------------------------------------------------------------------------------


@dataclass
class Timing:
    """One function's figures: median wall-clock and process CPU seconds over the timed
    calls, and the result of its last call."""

    seconds: float
    cpu_seconds: float
    result: Any


def time_calls(
    fns: Sequence[Callable[[], Any]], device: torch.device, repeats: int, warmup: int
) -> list[Timing]:
    """Time each of `fns` over `repeats` calls, after `warmup` untimed turns.

    The functions take turns within each repeat, so that a change in machine load (other
    processes on a shared CPU) weighs on all of them alike rather than on one.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    results: list[Any] = [None for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            results[i] = fn()
            synchronize(device)
            wall[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
    return [
        Timing(statistics.median(w), statistics.median(c), r)
        for w, c, r in zip(wall, cpu, results, strict=True)
    ]


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def check_settings(
    image_hw: Sequence[int], device: torch.device, repeats: int, warmup: int, **counts: int
) -> None:
    """ValueError, naming the value, for an image size that is not two positive numbers,
    a count (`counts`: name -> value) or `repeats` below 1, a negative `warmup`, or a
    CUDA device without CUDA."""
    if len(image_hw) != 2 or min(image_hw) < 1:
        raise ValueError(f"image size must be two positive numbers (H W), got {list(image_hw)}")
    for name, value in {**counts, "repeats": repeats}.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but CUDA is not available")


# --------------------------------------------------------------------------------------
# The synthetic scene
# --------------------------------------------------------------------------------------


@dataclass
class SyntheticScene:
    """Random source images and cameras around one point, and what `NVSModel.encode` and
    `NVSModel.render` compute from the cameras.

    images: [1, s, 3, h, w] uniform noise.
    c2w: [1, s + t, 4, 4] sources on an arc, then targets on an orbit, all looking at the
        point `FOCUS` in front of the first source camera (input world frame).
    fxfycxcy: [1, s + t, 4] a `FIELD_OF_VIEW_DEG` camera for every view.
    tokens: [1, s, 11] the sources' camera tokens (normalised scene frame).
    rays: [1, t, 6, h, w] the targets' Plücker rays (normalised scene frame).
    """

    images: Tensor
    c2w: Tensor
    fxfycxcy: Tensor
    tokens: Tensor
    rays: Tensor

    def to(self, device: torch.device) -> SyntheticScene:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def synthetic_scene(
    num_sources: int, num_targets: int, image_hw: tuple[int, int], generator: torch.Generator
) -> SyntheticScene:
    """A `SyntheticScene` whose images are drawn from `generator` (on the CPU)."""
    height, width = image_hw
    reference = look_at(torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    sources = orbit(reference, num_sources, focus=FOCUS, degrees=SOURCE_ARC_DEG)
    targets = orbit(
        reference, num_targets, focus=FOCUS, degrees=360.0, elevation_deg=TARGET_ELEVATION_DEG
    )
    c2w = torch.cat([sources, targets])  # (s + t, 4, 4)
    focal = fov_to_focal(math.radians(FIELD_OF_VIEW_DEG), width)
    fxfycxcy = torch.tensor([focal, focal, width / 2, height / 2]).expand(c2w.shape[0], 4)
    normalized, camera_scale = normalize_scene(c2w, num_sources)
    tokens = camera_tokens(
        normalized[:num_sources], fxfycxcy[:num_sources], image_hw, num_sources, camera_scale
    )  # (s, 11)
    rays = plucker_rays(normalized[num_sources:], fxfycxcy[num_sources:], height, width)
    images = torch.rand(num_sources, 3, height, width, generator=generator)
    return SyntheticScene(
        images=images[None],
        c2w=c2w[None],
        fxfycxcy=fxfycxcy[None],
        tokens=tokens[None],
        rays=rays[None],
    )
