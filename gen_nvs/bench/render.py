"""Render benchmark: per-target render time with and without the SceneCache.

For each decoder variant and number of source views, on one synthetic scene (random
images, source cameras on an arc, targets on an orbit around the scene):

- `ms_encode`: the encoder on the source views, once per scene.
- `ms_cache_build`: `SceneCache.build` from the encoder tokens, once per scene.
- `ms_per_view_cached`: targets rendered one per call from the cache (a real-time
  renderer renders a view at a time).
- `ms_per_view_uncached`: the same decoder called as `decoder(source_tokens, rays)` per
  target: the source stream is recomputed for every view, the encoder tokens are reused.
- `ms_per_view_reencode`: `ms_encode + ms_per_view_uncached`, the cost of a naive loop
  that also reruns the encoder per view (derived, not timed).
- `max_abs_diff`: largest difference between the cached and uncached renders, so that
  both timings are known to compute the same images.

Times are medians over repeats, taken with `time.perf_counter` under
`torch.inference_mode` (and `torch.cuda.synchronize` on GPU). Within a repeat the cache
build, the cached and the uncached renders take turns, so that load from other processes
on a shared machine does not bias their ratio.

Dimension legend:
    s   source views        t   target views
    h, w    image height / width
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
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
from gen_nvs.models.cache import SceneCache
from gen_nvs.models.decoder import DECODER_PRESETS, VARIANTS, HighwayDecoder
from gen_nvs.models.encoder import ENCODER_PRESETS, VGGTEncoder, build_encoder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Defaults per device: the published sizes on GPU, small ones on CPU; `--fast` is the
# smoke-test setting. Options given on the command line override all of them.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": dict(
        encoder_preset="vggt-1b", decoder_preset="base", size=[256, 256], sources=[1, 2, 4, 9],
        targets=8, repeats=5, warmup=1,
    ),
    "cpu": dict(
        encoder_preset="vggt-small", decoder_preset="small", size=[256, 256],
        sources=[1, 2, 4, 9], targets=8, repeats=3, warmup=1,
    ),
    "fast": dict(
        encoder_preset="tiny", decoder_preset="tiny", size=[32, 32], sources=[1, 2],
        targets=2, repeats=1, warmup=0,
    ),
}  # fmt: skip
FIELD_OF_VIEW_DEG = 60.0
SOURCE_ARC_DEG = 40.0
NOTES = [
    "ms_per_view_cached: SceneCache built once per scene (ms_cache_build, not included), "
    "then the targets are rendered one per call",
    "ms_per_view_uncached: decoder(source_tokens, rays) per target; the source stream is "
    "recomputed for every view, the encoder tokens are reused (ms_encode not included)",
    "ms_per_view_reencode = ms_encode + ms_per_view_uncached (derived, not timed)",
    "speedup = ms_per_view_uncached / ms_per_view_cached",
    "times are medians over repeats; within a repeat the cache build, the cached and the "
    "uncached renders take turns; inputs are random images and an orbit of targets",
]


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `gen-nvs bench render`; unset ones take the device's (or --fast) default."""
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="decoder variants to time (default: all four)",
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        type=int,
        metavar="S",
        help="numbers of source views, 1-9 (default: 1 2 4 9)",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="source and target image size (default: 256 256)",
    )
    parser.add_argument("--targets", type=int, help="target views per scene (default: 8)")
    parser.add_argument(
        "--encoder-preset",
        choices=list(ENCODER_PRESETS),
        help="encoder size (default: vggt-1b on GPU, vggt-small on CPU)",
    )
    parser.add_argument(
        "--decoder-preset",
        choices=list(DECODER_PRESETS),
        help="decoder size (default: base on GPU, small on CPU)",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        help="device (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="float32, or bfloat16 autocast (default: float32)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="timed repeats, the median is reported (default: 5 on GPU, 3 on CPU)",
    )
    parser.add_argument("--warmup", type=int, help="untimed runs before timing (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="smoke test: tiny models, 32x32, sources 1 2, 2 targets, 1 repeat, no warmup",
    )


def run_render_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve the options of `add_render_arguments` and run `bench_render`."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    defaults = DEFAULTS["fast" if args.fast else device]

    def option(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    return bench_render(
        variants=args.variants,
        source_counts=option("sources"),
        image_hw=tuple(option("size")),
        num_targets=option("targets"),
        encoder_preset=option("encoder_preset"),
        decoder_preset=option("decoder_preset"),
        device=device,
        dtype=args.dtype,
        repeats=option("repeats"),
        warmup=option("warmup"),
        seed=args.seed,
    )


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


def bench_render(
    *,
    variants: Sequence[str],
    source_counts: Sequence[int],
    image_hw: tuple[int, int],
    num_targets: int,
    encoder_preset: str,
    decoder_preset: str,
    device: str | torch.device,
    dtype: str,
    repeats: int,
    warmup: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Time encoding, cache building, cached and uncached rendering (see the module doc).

    Returns a JSON-ready dict: `settings`, `notes` and `results`, a list with one entry
    per (variant, number of sources) holding the figures named in the module docstring
    plus `cache_bytes`.
    """
    device = torch.device(device)
    _check_settings(variants, source_counts, image_hw, num_targets, device, dtype, repeats, warmup)
    encoder, decoders = _build_models(encoder_preset, decoder_preset, variants, device, seed)
    autocast = _autocast(device, DTYPES[dtype])
    generator = torch.Generator().manual_seed(seed)
    results = []
    with torch.inference_mode():
        for num_sources in source_counts:
            images, tokens, rays = _synthetic_scene(num_sources, num_targets, image_hw, generator)
            images, tokens, rays = images.to(device), tokens.to(device), rays.to(device)

            def encode(images=images, tokens=tokens) -> Tensor:
                with autocast():
                    return encoder(images, tokens).tokens

            [(ms_encode, source_tokens)] = _time([encode], device, repeats, warmup)
            for variant in variants:
                entry = _bench_variant(
                    decoders[variant], source_tokens, rays, autocast, device, repeats, warmup
                )
                results.append(
                    dict(variant=variant, num_sources=num_sources, ms_encode=round(ms_encode, 4))
                    | entry
                    | dict(ms_per_view_reencode=round(ms_encode + entry["ms_per_view_uncached"], 4))
                )
    settings = _settings(encoder, decoders, image_hw, device) | dict(
        dtype=dtype,
        num_targets=num_targets,
        source_counts=list(source_counts),
        variants=list(variants),
        encoder_preset=encoder_preset,
        decoder_preset=decoder_preset,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
    )
    return dict(benchmark="render", settings=settings, notes=NOTES, results=results)


def _bench_variant(
    decoder: HighwayDecoder,
    source_tokens: Tensor,
    rays: Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    repeats: int,
    warmup: int,
) -> dict[str, float | int]:
    """source_tokens [1, s, p, c], rays [1, t, 6, h, w] -> one result entry (no keys of
    the variant or the source count)."""
    num_targets = rays.shape[1]

    def build() -> SceneCache:
        with autocast():
            return SceneCache.build(decoder, source_tokens)

    cache = build()

    def render_cached() -> Tensor:
        with autocast():
            views = [cache.render(rays[:, i : i + 1]).rgb for i in range(num_targets)]
        return torch.cat(views, dim=1)  # (1, t, 3, h, w)

    def render_uncached() -> Tensor:
        with autocast():
            views = [decoder(source_tokens, rays[:, i : i + 1]).rgb for i in range(num_targets)]
        return torch.cat(views, dim=1)  # (1, t, 3, h, w)

    timings = _time([build, render_cached, render_uncached], device, repeats, warmup)
    (ms_cache_build, _), (ms_cached, rgb_cached), (ms_uncached, rgb_uncached) = timings
    ms_per_view_cached = ms_cached / num_targets
    ms_per_view_uncached = ms_uncached / num_targets
    return dict(
        ms_cache_build=round(ms_cache_build, 4),
        ms_per_view_cached=round(ms_per_view_cached, 4),
        ms_per_view_uncached=round(ms_per_view_uncached, 4),
        speedup=round(ms_per_view_uncached / ms_per_view_cached, 4),
        cache_bytes=cache.memory_bytes(),
        max_abs_diff=(rgb_cached.float() - rgb_uncached.float()).abs().max().item(),
    )


def _time(
    fns: Sequence[Callable[[], Any]], device: torch.device, repeats: int, warmup: int
) -> list[tuple[float, Any]]:
    """For each fn: (median milliseconds over `repeats` calls, its last result).

    The functions take turns within each repeat, so that a change in machine load
    (other processes on a shared CPU) weighs on all of them alike rather than on one.
    `warmup` untimed turns come first.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    results: list[Any] = [None for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _synchronize(device)
            start = time.perf_counter()
            results[i] = fn()
            _synchronize(device)
            times[i].append(time.perf_counter() - start)
    return [(1000.0 * statistics.median(t), r) for t, r in zip(times, results, strict=True)]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: torch.dtype) -> Callable[[], Any]:
    """A factory of fresh autocast contexts (no-op ones for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------
# Models and the synthetic scene
# --------------------------------------------------------------------------------------


def _build_models(
    encoder_preset: str,
    decoder_preset: str,
    variants: Sequence[str],
    device: torch.device,
    seed: int,
) -> tuple[VGGTEncoder, dict[str, HighwayDecoder]]:
    """Randomly initialised encoder and one decoder per variant, in eval mode on `device`."""
    # Module initialisers draw from the global RNG: seed it without leaking the state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_encoder(encoder_preset)
        decoders = {v: HighwayDecoder.from_preset(decoder_preset, variant=v) for v in variants}
    width = next(iter(decoders.values())).width
    if encoder.geo_feature_connector.out_features != width:
        raise ValueError(
            f"encoder preset {encoder_preset!r} outputs "
            f"{encoder.geo_feature_connector.out_features} channels but decoder preset "
            f"{decoder_preset!r} is {width} wide"
        )
    encoder.eval().to(device)
    for decoder in decoders.values():
        decoder.eval().to(device)
    return encoder, decoders


def _synthetic_scene(
    num_sources: int, num_targets: int, image_hw: tuple[int, int], generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Random source images [1, s, 3, h, w], their camera tokens [1, s, 11] and the target
    rays [1, t, 6, h, w]: sources on an arc, targets on a full orbit, all looking at the
    scene centre 2 units in front of the first source camera."""
    height, width = image_hw
    reference = look_at(torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    sources = orbit(reference, num_sources, focus=2.0, degrees=SOURCE_ARC_DEG)
    targets = orbit(reference, num_targets, focus=2.0, degrees=360.0, elevation_deg=15.0)
    c2w, camera_scale = normalize_scene(torch.cat([sources, targets]), num_sources)
    focal = fov_to_focal(math.radians(FIELD_OF_VIEW_DEG), width)
    fxfycxcy = torch.tensor([focal, focal, width / 2, height / 2]).expand(c2w.shape[0], 4)
    tokens = camera_tokens(c2w, fxfycxcy, image_hw, num_sources, camera_scale)  # (s + t, 11)
    rays = plucker_rays(c2w[num_sources:], fxfycxcy[num_sources:], height, width)  # (t, 6, h, w)
    images = torch.rand(num_sources, 3, height, width, generator=generator)
    return images[None], tokens[None, :num_sources], rays[None]


def _check_settings(
    variants: Sequence[str],
    source_counts: Sequence[int],
    image_hw: tuple[int, int],
    num_targets: int,
    device: torch.device,
    dtype: str,
    repeats: int,
    warmup: int,
) -> None:
    unknown = [v for v in variants if v not in VARIANTS]
    if not variants or unknown:
        raise ValueError(f"variants must be among {VARIANTS}, got {list(variants)}")
    if not source_counts or any(not 1 <= s <= 9 for s in source_counts):
        raise ValueError(f"source counts must be between 1 and 9, got {list(source_counts)}")
    if len(image_hw) != 2 or min(image_hw) < 1:
        raise ValueError(f"image size must be two positive numbers (H W), got {list(image_hw)}")
    if num_targets < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"need targets >= 1, repeats >= 1 and warmup >= 0, got targets {num_targets}, "
            f"repeats {repeats}, warmup {warmup}"
        )
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but CUDA is not available")


def _settings(
    encoder: VGGTEncoder,
    decoders: dict[str, HighwayDecoder],
    image_hw: tuple[int, int],
    device: torch.device,
) -> dict[str, Any]:
    """The machine, the models and the token counts they run on."""
    encoder_hw = encoder.resized_size(*image_hw, "keep_aspect")
    patch_size = next(iter(decoders.values())).patch_size
    return dict(
        device=str(device),
        device_name=_device_name(device),
        torch_version=torch.__version__,
        num_threads=torch.get_num_threads(),
        image_hw=list(image_hw),
        encoder_input_hw=list(encoder_hw),
        source_tokens_per_view=math.prod(s // encoder.patch_size for s in encoder_hw),
        target_tokens_per_view=math.prod(s // patch_size for s in image_hw),
        encoder_parameters=_num_parameters(encoder),
        decoder_parameters={v: _num_parameters(d) for v, d in decoders.items()},
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _num_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
