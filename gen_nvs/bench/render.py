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
- with `--reference` (the variants with published checkpoints): `ms_per_view_reference`,
  the published block arithmetic written out plainly (`gen_nvs.bench.reference`) on the
  same weights, one target per call like `ms_per_view_uncached`;
  `speed_vs_reference = ms_per_view_reference / ms_per_view_uncached` (>= 1: ours is at
  least as fast) and `max_abs_diff_reference` between the two renders.

With `--latent`, pixel against latent rendering (LVSM-VAE) instead: time and peak
memory per target view for 2, 4, 8 and 16 source views (`gen_nvs.bench.latent`).

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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gen_nvs.bench.common import check_settings, device_name, synthetic_scene, time_calls
from gen_nvs.bench.latent import VAES, bench_latent
from gen_nvs.bench.reference import REFERENCE_VARIANTS, reference_render
from gen_nvs.models.cache import SceneCache
from gen_nvs.models.config import MODEL_PRESETS, model_config
from gen_nvs.models.decoder import VARIANTS, HighwayDecoder
from gen_nvs.models.encoder import VGGTEncoder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Defaults per device: the published sizes on GPU, small ones on CPU; `--fast` is the
# smoke-test setting. Options given on the command line override all of them.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": dict(
        encoder_preset="lagernvs", decoder_preset="lagernvs", size=[256, 256],
        sources=[1, 2, 4, 9],
        targets=8, repeats=5, warmup=1,
    ),
    "cpu": dict(
        encoder_preset="small", decoder_preset="small", size=[256, 256],
        sources=[1, 2, 4, 9], targets=8, repeats=3, warmup=1,
    ),
    "fast": dict(
        encoder_preset="tiny", decoder_preset="tiny", size=[32, 32], sources=[1, 2],
        targets=2, repeats=1, warmup=0,
    ),
}  # fmt: skip
# The same for `--latent` (pixel vs latent rendering; `vae`: a `gen_nvs.bench.latent.VAES`
# name or a VAE folder).
LATENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": dict(
        encoder_preset="lagernvs", decoder_preset="lagernvs", size=[512, 512],
        sources=[2, 4, 8, 16], targets=8, repeats=5, warmup=2, vae="flux",
    ),
    "cpu": dict(
        encoder_preset="embedded", decoder_preset="small", size=[256, 256],
        sources=[2, 4, 8, 16], targets=2, repeats=2, warmup=1, vae="flux",
    ),
    "fast": dict(
        encoder_preset="tiny", decoder_preset="tiny", size=[32, 32], sources=[2, 4],
        targets=1, repeats=1, warmup=0, vae="tiny",
    ),
}  # fmt: skip
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
        help="decoder variants to time (default: all four; with --latent one, causal)",
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        type=int,
        metavar="S",
        help="numbers of source views, 1-9 (default: 1 2 4 9; with --latent 1-64, "
        "default 2 4 8 16)",
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
        choices=list(MODEL_PRESETS),
        help="the encoder of this model size (default: lagernvs on GPU, small on CPU)",
    )
    parser.add_argument(
        "--decoder-preset",
        choices=list(MODEL_PRESETS),
        help="the decoder of this model size (default: lagernvs on GPU, small on CPU)",
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
        "--reference",
        action="store_true",
        help="also time the published block arithmetic on the same weights (full_attention "
        "and cross_attention) and print the speed ratio",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="smoke test: tiny models, 32x32, sources 1 2, 2 targets, 1 repeat, no warmup",
    )
    latent = parser.add_argument_group("pixel vs latent rendering (LVSM-VAE)")
    latent.add_argument(
        "--latent",
        action="store_true",
        help="time and peak memory per target view, pixel vs latent rendering with the same "
        "transformer, for 2 4 8 16 source views (CPU default: small decoder, 256x256, "
        "embedded encoder's token count; GPU: the published sizes at 512x512)",
    )
    latent.add_argument(
        "--vae",
        help=f"with --latent: {' or '.join(VAES)} (an architecture with random weights; "
        "default flux: 16 channels, 8x, as the FLUX.1 VAE), or a diffusers AutoencoderKL "
        "folder or hf://",
    )
    latent.add_argument(
        "--latent-patch",
        type=int,
        default=2,
        help="with --latent: the latent decoder's patch size on the latent grid (default 2)",
    )


def run_render_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve the options of `add_render_arguments` and run `bench_render`."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    defaults = (LATENT_DEFAULTS if args.latent else DEFAULTS)["fast" if args.fast else device]

    def option(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    if args.latent:
        variants = args.variants or ["causal"]
        if len(variants) != 1 or args.reference:
            raise ValueError("--latent times one variant and has no --reference")
        return bench_latent(
            source_counts=option("sources"),
            image_hw=tuple(option("size")),
            num_targets=option("targets"),
            encoder_preset=option("encoder_preset"),
            decoder_preset=option("decoder_preset"),
            vae=option("vae"),
            latent_patch=args.latent_patch,
            device=device,
            dtype=args.dtype,
            repeats=option("repeats"),
            warmup=option("warmup"),
            variant=variants[0],
            seed=args.seed,
        )
    return bench_render(
        variants=args.variants or list(VARIANTS),
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
        reference=args.reference,
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
    reference: bool = False,
) -> dict[str, Any]:
    """Time encoding, cache building, cached and uncached rendering (see the module doc).

    Returns a JSON-ready dict: `settings`, `notes` and `results`, a list with one entry
    per (variant, number of sources) holding the figures named in the module docstring
    plus `cache_bytes`.
    """
    device = torch.device(device)
    _check_settings(variants, source_counts, dtype)
    check_settings(image_hw, device, repeats, warmup, targets=num_targets)
    encoder, decoders = _build_models(encoder_preset, decoder_preset, variants, device, seed)
    autocast = _autocast(device, DTYPES[dtype])
    generator = torch.Generator().manual_seed(seed)
    results = []
    with torch.inference_mode():
        for num_sources in source_counts:
            scene = synthetic_scene(num_sources, num_targets, image_hw, generator).to(device)

            def encode(scene=scene) -> Tensor:
                with autocast():
                    return encoder(scene.images, scene.tokens).tokens

            [encoded] = time_calls([encode], device, repeats, warmup)
            ms_encode, source_tokens = 1000.0 * encoded.seconds, encoded.result
            for variant in variants:
                entry = _bench_variant(
                    decoders[variant], source_tokens, scene.rays, autocast, device, repeats, warmup
                )
                if reference and variant in REFERENCE_VARIANTS:
                    entry |= _bench_reference(
                        decoders[variant], source_tokens, scene.rays, autocast, device, repeats,
                        warmup,
                    )  # fmt: skip
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
        reference=reference,
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
    render_cached = _one_target_per_call(lambda r: cache.render(r).rgb, rays, autocast)
    render_uncached = _one_target_per_call(lambda r: decoder(source_tokens, r).rgb, rays, autocast)
    built, cached, uncached = time_calls(
        [build, render_cached, render_uncached], device, repeats, warmup
    )
    ms_per_view_cached = 1000.0 * cached.seconds / num_targets
    ms_per_view_uncached = 1000.0 * uncached.seconds / num_targets
    return dict(
        ms_cache_build=round(1000.0 * built.seconds, 4),
        ms_per_view_cached=round(ms_per_view_cached, 4),
        ms_per_view_uncached=round(ms_per_view_uncached, 4),
        speedup=round(ms_per_view_uncached / ms_per_view_cached, 4),
        cache_bytes=cache.memory_bytes(),
        max_abs_diff=(cached.result.float() - uncached.result.float()).abs().max().item(),
    )


def _bench_reference(
    decoder: HighwayDecoder,
    source_tokens: Tensor,
    rays: Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    repeats: int,
    warmup: int,
) -> dict[str, float]:
    """Ours (uncached, a target per call) against the published arithmetic, timed in
    turns within each repeat."""
    num_targets = rays.shape[1]
    ours = _one_target_per_call(lambda r: decoder(source_tokens, r).rgb, rays, autocast)
    published = _one_target_per_call(
        lambda r: reference_render(decoder, source_tokens, r), rays, autocast
    )
    ours, published = time_calls([ours, published], device, repeats, warmup)
    ms_ours = 1000.0 * ours.seconds / num_targets
    ms_reference = 1000.0 * published.seconds / num_targets
    return dict(
        ms_per_view_reference=round(ms_reference, 4),
        ms_per_view_uncached_vs_reference=round(ms_ours, 4),
        speed_vs_reference=round(ms_reference / ms_ours, 3),
        max_abs_diff_reference=(ours.result.float() - published.result.float()).abs().max().item(),
    )


def _one_target_per_call(
    render: Callable[[Tensor], Tensor],
    rays: Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> Callable[[], Tensor]:
    """A timed call: `render(rays of one target)` for each target of rays [1, t, 6, h, w]
    in turn (a real-time renderer renders a view at a time) -> rgb [1, t, 3, h, w]."""

    def run() -> Tensor:
        with autocast():
            views = [render(rays[:, i : i + 1]) for i in range(rays.shape[1])]
        return torch.cat(views, dim=1)

    return run


def _autocast(device: torch.device, dtype: torch.dtype) -> Callable[[], Any]:
    """A factory of fresh autocast contexts (no-op ones for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------
# Models and settings
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
        encoder = VGGTEncoder(**model_config(encoder_preset).encoder.kwargs())
        decoders = {
            v: HighwayDecoder(
                **model_config(decoder_preset, variant=v, point_head=False).decoder.kwargs()
            )
            for v in variants
        }
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


def _check_settings(variants: Sequence[str], source_counts: Sequence[int], dtype: str) -> None:
    """ValueError for the settings only this benchmark has (`check_settings` does the rest)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if not variants or unknown:
        raise ValueError(f"variants must be among {VARIANTS}, got {list(variants)}")
    if not source_counts or any(not 1 <= s <= 9 for s in source_counts):
        raise ValueError(f"source counts must be between 1 and 9, got {list(source_counts)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")


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
        device_name=device_name(device),
        torch_version=torch.__version__,
        num_threads=torch.get_num_threads(),
        image_hw=list(image_hw),
        encoder_input_hw=list(encoder_hw),
        source_tokens_per_view=math.prod(s // encoder.patch_size for s in encoder_hw),
        target_tokens_per_view=math.prod(s // patch_size for s in image_hw),
        encoder_parameters=_num_parameters(encoder),
        decoder_parameters={v: _num_parameters(d) for v, d in decoders.items()},
    )


def _num_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
