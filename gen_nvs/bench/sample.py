"""Sample benchmark: seconds per sampled view, cached pipeline against a naive loop.

On one synthetic scene (random source images, source cameras on an arc, targets on an
orbit) and a randomly initialised model with a diffusion decoder, both paths draw the same
samples (same seeds, scheduler and steps, mask off):

- `cached`: `NVSPipeline.encode` once, then `NVSPipeline.sample`: the encoder and the
  source stream run once, every network call runs the target stream only.
- `naive`: the same sampling loop whose network call reruns the whole model, the encoder,
  the source stream and the target stream (the null sources too, with guidance).

Figures are wall-clock seconds of one run of each (medians over `repeats`, the two paths
taking turns), per sampled view (samples x targets) and in total; `speedup` is naive over
cached. On a CPU shared with other processes wall-clock time also counts their load, so
the process's own CPU time is reported beside it (`cpu_seconds_*`, `speedup_cpu_time`).
`max_abs_diff` compares their RGB, so both are known to compute the same samples. Both
run with the patch shift off (a fixed patch grid, so they make the same network calls);
`cached_patch_shift` times the cached path with it on, the sampler's default, and
`patch_shift_cost` is its time over the fixed grid's. Random weights suffice for speed;
the images mean nothing.

Dimension legend:
    s   source views        t   target views        n   samples
    h, w    image height / width
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

import samplers
from gen_nvs.bench.common import check_settings, device_name, synthetic_scene, time_calls
from gen_nvs.inputs import SourceViews, TargetCameras
from gen_nvs.models.config import MODEL_PRESETS, model_config
from gen_nvs.models.diffusion import from_diffusion_space, make_model_fn
from gen_nvs.models.nvs import NVSModel, build_model
from gen_nvs.pipeline import NVSPipeline, SamplingConfig
from gen_nvs.sampling import model_denoiser, model_scheduler, sample_seeds
from gen_nvs.threads import configure_threads

# Defaults per device; `--fast` is the smoke-test setting. Options given override them.
# On the CPU the encoder sees 224 px inputs (16 x 16 patches a view) so that the naive
# loop, which runs it at every step, finishes in minutes on two cores.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": dict(
        preset="lagernvs", size=[512, 512], encoder_size=518, sources=6, targets=1, samples=4,
        steps=20, repeats=3, warmup=1,
    ),
    "cpu": dict(
        preset="small", size=[64, 64], encoder_size=224, sources=4, targets=1, samples=4,
        steps=20, repeats=1, warmup=0,
    ),
    "fast": dict(
        preset="tiny", size=[32, 32], encoder_size=28, sources=2, targets=1, samples=2,
        steps=2, repeats=1, warmup=0,
    ),
}  # fmt: skip
TARGET_SPEEDUP = 5.0
NOTES = [
    "random weights: a speed benchmark, the sampled images are not meaningful",
    "cached: NVSPipeline.encode once + NVSPipeline.sample (mask off); the encoder and the "
    "source stream run once, each network call runs the target stream",
    "naive: each network call reruns the encoder, the source stream and the target stream",
    "seconds_per_view = seconds / (samples x targets); speedup = seconds_naive / "
    "seconds_cached (wall clock); speedup_cpu_time: the same with this process's CPU time, "
    "which load from other processes does not inflate; max_abs_diff compares the two "
    "paths' RGB samples",
    "cached_patch_shift: the cached path with the patch shift on (the sampler's default; "
    "the others keep the grid fixed); patch_shift_cost = seconds_cached_patch_shift / "
    "seconds_cached",
    f"target: speedup >= {TARGET_SPEEDUP} on the CPU (small model, 4 sources, 4 samples x "
    "20 steps); on a GPU, full size at 512x512 with 6 sources, under 1 s for 4 samples",
]


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `gen-nvs bench sample`; unset ones take the device's (or --fast) default."""
    parser.add_argument(
        "--preset",
        choices=list(MODEL_PRESETS),
        help="model size (default: lagernvs on GPU, small on CPU)",
    )
    parser.add_argument(
        "--size", nargs=2, type=int, metavar=("H", "W"), help="source and target image size"
    )
    parser.add_argument(
        "--encoder-size",
        type=int,
        help="the encoder's input size, a multiple of 14 (default: 518 on GPU, 224 on CPU)",
    )
    parser.add_argument("--sources", type=int, help="source views (default: 6 on GPU, 4 on CPU)")
    parser.add_argument("--targets", type=int, help="target views (default 1)")
    parser.add_argument("--samples", type=int, help="samples per target (default 4)")
    parser.add_argument("--steps", type=int, help="solver steps (default 20)")
    parser.add_argument(
        "--sampler",
        default=samplers.DEFAULT_SCHEDULER,
        choices=samplers.SCHEDULER_NAMES,
        help=f"scheduler (default {samplers.DEFAULT_SCHEDULER})",
    )
    parser.add_argument(
        "--guidance", type=float, default=1.0, help="guidance scale (default 1: unguided)"
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], help="device (default: cuda when available)"
    )
    parser.add_argument("--repeats", type=int, help="timed runs, median reported")
    parser.add_argument("--warmup", type=int, help="untimed runs first")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    parser.add_argument(
        "--fast", action="store_true", help="smoke test: tiny model, 32x32, 2 samples x 2 steps"
    )


def run_sample_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve the options of `add_sample_arguments` and run `bench_sample`."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    defaults = DEFAULTS["fast" if args.fast else device]

    def option(name: str) -> Any:
        value = getattr(args, name)
        return defaults[name] if value is None else value

    if args.threads is not None:
        configure_threads(args.threads)
    return bench_sample(
        preset=option("preset"),
        image_hw=tuple(option("size")),
        encoder_size=option("encoder_size"),
        num_sources=option("sources"),
        num_targets=option("targets"),
        num_samples=option("samples"),
        steps=option("steps"),
        scheduler=args.sampler,
        guidance_scale=args.guidance,
        device=device,
        repeats=option("repeats"),
        warmup=option("warmup"),
        seed=args.seed,
    )


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


def bench_sample(
    *,
    preset: str,
    image_hw: tuple[int, int],
    encoder_size: int,
    num_sources: int,
    num_targets: int,
    num_samples: int,
    steps: int,
    scheduler: str = samplers.DEFAULT_SCHEDULER,
    guidance_scale: float = 1.0,
    device: str | torch.device = "cpu",
    repeats: int = 1,
    warmup: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Time the cached and the naive sampling paths (see the module docstring).

    Returns a JSON-ready dict: `settings`, `notes` and `results` (seconds, seconds per
    view, speedup, max_abs_diff, meets_target).
    """
    device = torch.device(device)
    check_settings(
        image_hw, device, repeats, warmup,
        sources=num_sources, targets=num_targets, samples=num_samples, steps=steps,
    )  # fmt: skip
    model = _build_model(preset, encoder_size, device, seed)
    pipe = NVSPipeline(model, device)
    generator = torch.Generator().manual_seed(seed)
    scene = synthetic_scene(num_sources, num_targets, image_hw, generator).to(device)
    images, c2w, fxfycxcy = scene.images, scene.c2w, scene.fxfycxcy
    s = num_sources
    options = dict(scheduler=scheduler, steps=steps, guidance_scale=guidance_scale)
    sources = SourceViews(images[0, :s], c2w[0, :s], fxfycxcy[0, :s], [str(i) for i in range(s)])
    targets = TargetCameras(c2w[0, s:], fxfycxcy[0, s:], normalized=False)
    # The patch shift off: both paths then make the same network calls on the same grid,
    # so the figures compare the source cache alone.
    config = SamplingConfig(
        sampler=scheduler, steps=steps, guidance=guidance_scale, samples=num_samples,
        seed=seed, mask="off", patch_shift=False,
    )  # fmt: skip

    def cached(config: SamplingConfig = config) -> Tensor:
        views = pipe.sample(pipe.encode(sources), targets, config)
        return views.rgb  # (n, 1, t, 3, h, w)

    def cached_patch_shift() -> Tensor:
        return cached(dataclasses.replace(config, patch_shift=True))

    def naive() -> Tensor:
        return _naive_samples(model, images, scene.tokens, scene.rays, num_samples, seed, options)

    with torch.inference_mode():
        cached_timing, naive_timing, shift_timing = time_calls(
            [cached, naive, cached_patch_shift], device, repeats, warmup
        )
    seconds_cached, cpu_cached = cached_timing.seconds, cached_timing.cpu_seconds
    seconds_naive, cpu_naive = naive_timing.seconds, naive_timing.cpu_seconds
    views = num_samples * num_targets
    speedup = seconds_naive / seconds_cached
    results = dict(
        seconds_cached=round(seconds_cached, 4),
        seconds_naive=round(seconds_naive, 4),
        seconds_per_view_cached=round(seconds_cached / views, 4),
        seconds_per_view_naive=round(seconds_naive / views, 4),
        speedup=round(speedup, 3),
        cpu_seconds_cached=round(cpu_cached, 4),
        cpu_seconds_naive=round(cpu_naive, 4),
        speedup_cpu_time=round(cpu_naive / cpu_cached, 3),
        meets_target=speedup >= TARGET_SPEEDUP,
        seconds_cached_patch_shift=round(shift_timing.seconds, 4),
        seconds_per_view_cached_patch_shift=round(shift_timing.seconds / views, 4),
        patch_shift_cost=round(shift_timing.seconds / seconds_cached, 3),
        max_abs_diff=(cached_timing.result - naive_timing.result).abs().max().item(),
    )
    encoder_hw = model.encoder.resized_size(*image_hw, "keep_aspect")
    settings = dict(
        device=str(device),
        device_name=device_name(device),
        torch_version=torch.__version__,
        num_threads=torch.get_num_threads(),
        preset=preset,
        variant=model.decoder.variant,
        parameters=sum(p.numel() for p in model.parameters()),
        image_hw=list(image_hw),
        encoder_input_hw=list(encoder_hw),
        source_tokens=s * math.prod(x // model.encoder.patch_size for x in encoder_hw),
        num_sources=num_sources,
        num_targets=num_targets,
        num_samples=num_samples,
        steps=steps,
        scheduler=scheduler,
        guidance_scale=guidance_scale,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
        weights="random",
    )
    return dict(benchmark="sample", settings=settings, notes=NOTES, results=results)


def _naive_samples(
    model: NVSModel,
    images: Tensor,
    tokens: Tensor,
    rays: Tensor,
    num_samples: int,
    seed: int,
    options: dict[str, Any],
) -> Tensor:
    """The samples of `NVSPipeline.sample` (mask off) with the whole model rerun per network
    call: images [1, s, 3, h, w], their camera tokens [1, s, 11], target rays
    [1, t, 6, h, w] -> rgb [n, 1, t, 3, h, w]."""
    diffusion = model.diffusion
    t, _, h, w = rays.shape[1:]

    def model_fn(x_t: Tensor, timesteps: Tensor, conditional: bool) -> Tensor:
        source_tokens = model.encoder(images, tokens).tokens  # (1, s, p, c)
        context = diffusion.decoder.prepare_sources(source_tokens)
        null = None if conditional else diffusion.null_context(1, context.tokens.shape[1])
        return make_model_fn(diffusion, context, null, rays)(x_t, timesteps, conditional)

    x = samplers.sample(
        model_denoiser(model, model_fn),
        shape=(diffusion.noise_channels, h, w),
        num_samples=num_samples * t,
        seeds=sample_seeds(seed, range(num_samples), t),
        scheduler=model_scheduler(model, options["scheduler"]),
        steps=options["steps"],
        guidance_scale=options["guidance_scale"],
        device=images.device,
        dtype=images.dtype,
    )  # (n t, k, h, w)
    rgb, _ = from_diffusion_space(x.reshape(num_samples, t, *x.shape[1:]))
    return rgb[:, None]


def _build_model(preset: str, encoder_size: int, device: torch.device, seed: int) -> NVSModel:
    """A randomly initialised model of `preset` with a diffusion decoder, eval mode.

    The diffusion decoder's zero-initialised layers get small random weights too, so that
    its prediction depends on the noise and the timestep (as a trained one's does) and
    the cached and naive samples are a real comparison.
    """
    config = model_config(preset).override({"encoder": {"image_size": encoder_size}})
    # Module initialisers draw from the global RNG: seed it without leaking the state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config)
        diffusion = model.add_diffusion()
        with torch.no_grad():
            for name, param in diffusion.named_parameters():
                if name.startswith(("noise_embedder", "block_modulation", "head_modulation")):
                    param.normal_(std=0.02)
    return model.eval().to(device)
