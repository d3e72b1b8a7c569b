"""Draw diffusion samples of novel views from an encoded scene.

`sample_views` is the pipeline the `sample` command and the app run on top of
`samplers.sample`:

1. The regression decoder renders the targets (rgb, points, confidence): the known
   region and the fallback output (or the caller passes the render it already has).
2. A mask says which target pixels no source saw (1 = unseen, to generate): by geometry
   (the sources' depth, rendered by the point head, tested by reprojection), by the
   point head's confidence (both `unseen_region`, which the app's regression view shows
   too), given by the caller, or none (generate everything).
3. The diffusion decoder samples every target, RePaint-style where there is a mask: the
   regression render is kept where the sources saw the scene and the rest is generated.
   The scene's `diffusion_cache` holds the encoder tokens and the source stream, so one
   encoding serves every step of every sample. Schedulers given by name follow the
   model's training noise schedule (`model_scheduler`).

Randomness: sample k draws from a CPU generator seeded with `seed + k` (it seeds one
sampler row per target view), so a sample does not change with `num_samples` or
`max_batch`.

Dimension legend:
    n   samples             b   scenes (batch)      t   target views per scene
    s   source views        k   diffusion channels (3 rgb + 3 xyz, or 3 rgb)
    h, w    render height / width
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin
from einops import rearrange, repeat
from torch import Tensor

import samplers
from gen_nvs.geometry import rgbd
from gen_nvs.geometry.cameras import invert_rigid, plucker_rays
from gen_nvs.inputs import default_intrinsics
from gen_nvs.models.decoder import DecoderOutput
from gen_nvs.models.diffusion import (
    DiffusionDecoder,
    from_diffusion_space,
    make_model_fn,
    to_diffusion_space,
)
from gen_nvs.models.nvs import EncodedScene, NVSModel, require_diffusion
from samplers.guidance import check_guidance
from samplers.sampling import ModelFn

MASK_MODES = ("auto", "off", "confidence")
# "confidence" without a threshold: unseen where the confidence falls below this share of
# the median confidence of the sources' own renders (what the model gives a seen surface).
CONFIDENCE_FRACTION = 0.5
# Relative depth tolerance of the "auto" mask's reprojection test. The test compares the
# model's *predicted* depths (targets against sources), which disagree by far more than
# measured depths do (`gen_nvs.eval` keeps 0.02 for the dataset's true depth); chosen by
# the IoU of the model's mask with the true unseen region on held-out procedural scenes
# (the default model's card, "Unseen region").
PREDICTED_REL_TOL = 0.5
# The memory sampling may use off the GPU when no budget is given.
DEFAULT_CPU_MEMORY_BUDGET = 8 * 2**30
# Rough activation copies per token of a transformer block (residual, norm, q/k/v, out).
_ACTIVATION_COPIES = 6
# Rows of per-pixel state the sampling loop holds (sample, known, mask, noise, history).
_SAMPLER_COPIES = 8

StepCallback = Callable[[samplers.StepInfo], samplers.Signal | None]


@dataclass
class SampledViews:
    """What `sample_views` returns; points and depth are in the normalised scene frame.

    rgb: [n, b, t, 3, h, w] in [0, 1], sample-major.
    points: [n, b, t, h, w, 3], or None for an rgb-only diffusion decoder.
    depth: [n, b, t, h, w] z in each target camera, or None with `points`.
    regression: the regression render (DecoderOutput rgb [b, t, 3, h, w], ...).
    mask: [b, t, h, w] in [0, 1], 1 where the view was generated (unseen by the sources;
        soft at the edge), or None when everything was generated.
    target_c2w: [b, t, 4, 4] the target cameras in the normalised scene frame.
    """

    rgb: Tensor
    points: Tensor | None
    depth: Tensor | None
    regression: DecoderOutput
    mask: Tensor | None
    target_c2w: Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling options, with the defaults every entry point uses (CLI, app, eval).

    sampler: a `samplers.SCHEDULER_NAMES` entry; steps: denoising steps; guidance:
    classifier-free guidance scale (1: off, measured best on the embedded model); samples:
    samples per target view; seed: sample k uses `seed + k`; mask: "auto" keeps what the
    sources saw and generates the rest, "off" generates freely, "confidence" uses the
    point head's confidence; noise: "independent" per view or "shared" by every view of a
    sample (consistent trajectories); eta: DDIM's stochasticity.
    """

    sampler: str = samplers.DEFAULT_SCHEDULER
    steps: int = 20
    guidance: float = 1.0
    samples: int = 4
    seed: int = 0
    mask: str = "auto"
    noise: str = "independent"
    eta: float = 0.0

    def __post_init__(self) -> None:
        check_sampling_options(
            scheduler=self.sampler, steps=self.steps, num_samples=self.samples,
            guidance_scale=self.guidance, mask_mode=self.mask,
        )  # fmt: skip


def check_sampling_options(
    *,
    scheduler: str | SchedulerMixin = samplers.DEFAULT_SCHEDULER,
    steps: int = 20,
    num_samples: int = 1,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    mask_mode: str = "auto",
    resample_jumps: int = 0,
    max_batch: int | None = None,
    memory_budget: float | None = None,
) -> None:
    """Raise ValueError, naming the offending value, for options `sample_views` cannot run.

    Cheap: callers run it before loading models or images.
    """
    if isinstance(scheduler, str) and scheduler not in samplers.SCHEDULER_NAMES:
        raise ValueError(
            f"unknown sampler {scheduler!r}, expected one of {list(samplers.SCHEDULER_NAMES)}"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if num_samples < 1:
        raise ValueError(f"the number of samples must be >= 1, got {num_samples}")
    check_guidance(guidance_scale, guidance_rescale, guidance_interval)
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {list(MASK_MODES)}, got {mask_mode!r}")
    if resample_jumps < 0:
        raise ValueError(f"resample jumps must be >= 0, got {resample_jumps}")
    if resample_jumps > 0 and mask_mode == "off":
        raise ValueError(f"resample jumps ({resample_jumps}) need a mask, got mask mode 'off'")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
    if memory_budget is not None and not (math.isfinite(memory_budget) and memory_budget > 0):
        raise ValueError(f"memory budget must be a positive number of bytes, got {memory_budget}")


@torch.no_grad()
def sample_views(
    model: NVSModel,
    scene: EncodedScene,
    target_c2w: Tensor,
    target_fxfycxcy: Tensor,
    image_hw: tuple[int, int],
    *,
    normalized: bool = False,
    num_samples: int = 1,
    seed: int = 0,
    scheduler: str | SchedulerMixin = samplers.DEFAULT_SCHEDULER,
    steps: int = 20,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    mask_mode: str = "auto",
    mask: Tensor | None = None,
    resample_jumps: int = 0,
    callback: StepCallback | None = None,
    max_batch: int | None = None,
    source_fxfycxcy: Tensor | None = None,
    conf_threshold: float | None = None,
    memory_budget: int | None = None,
    regression: DecoderOutput | None = None,
    sources: DecoderOutput | None = None,
    noise: str = "independent",
) -> SampledViews:
    """Draw `num_samples` samples of every target view of the encoded scenes.

    scene: `model.encode(...)` of b scenes (with the model's diffusion decoder).
    target_c2w [b, t, 4, 4], target_fxfycxcy [b, t, 4] (pixels of the `image_hw` renders):
        as for `NVSModel.render`, in the input world frame or, with `normalized`, in the
        scene's normalised frame.
    seed: sample k uses seed `seed + k`, whatever `num_samples` and `max_batch`.
    noise: "independent" (each view its own noise) or "shared" (every view of a sample
        the same: consistent frames along a trajectory; `sample_seeds`).
    scheduler, steps, eta, guidance_*, resample_jumps: as for `samplers.sample`; a
        scheduler name builds it on the model's noise schedule (`model_scheduler`).
    mask_mode: "off" generates everything; "confidence" generates where the point head's
        confidence of the regression render is below `conf_threshold` (None: a share
        `CONFIDENCE_FRACTION` of the median confidence of the sources' renders, or of the
        targets' when the source cameras are unknown); "auto" uses geometry when the source
        cameras are known or estimated (the sources' depth, from the point head, tests the
        targets' points by reprojection), else the confidence, else (no point head) off.
        Computed masks (`unseen_region`) get a soft edge into the seen region.
    mask: [b, t, h, w] in [0, 1], 1 = generate; replaces the computed mask (with mask_mode
        "auto" only).
    callback: called after every solver step with a `samplers.StepInfo` whose `step` and
        `num_steps` count over all batches; returning `samplers.STOP` cancels.
    max_batch: samples drawn per sampler call (None: as many as fit `memory_budget`); the
        results do not depend on it.
    source_fxfycxcy: [b, s, 4] the sources' intrinsics in pixels of `image_hw` images, for
        the geometry and confidence masks; None: a default field of view
        (`gen_nvs.inputs.DEFAULT_FOV_DEG`).
    memory_budget: bytes sampling may use; None: the free GPU memory, or
        `DEFAULT_CPU_MEMORY_BUDGET` on the CPU. Not even one sample fitting, or `max_batch`
        samples not fitting, is an error that says how many fit.
    regression: `model.render` of these targets (rgb [b, t, 3, h, w], points, conf, on the
        scene's device) when the caller has it; None: rendered here.
    sources: `model.render` of the source cameras, as for `unseen_region`; None: rendered
        here when the mask needs it.

    Raises:
        ValueError: a regression-only model, invalid options, cameras or mask, too little
            memory.
        samplers.SamplingCancelled: the callback cancelled.
    """
    diffusion = require_diffusion(model, "the model")
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
    check_sampling_options(
        scheduler=scheduler,
        steps=steps,
        num_samples=num_samples,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        guidance_interval=guidance_interval,
        mask_mode=mask_mode,
        resample_jumps=resample_jumps,
        max_batch=max_batch,
        memory_budget=memory_budget,
    )
    if scene.diffusion_cache is None or scene.diffusion_cache.decoder is not diffusion.decoder:
        raise ValueError(
            "the scene was not encoded for this model's diffusion decoder; encode it with "
            "model.encode after the diffusion decoder was added"
        )
    if mask is not None and mask_mode != "auto":
        raise ValueError(f"give a mask or a mask mode, got a mask and mask mode {mask_mode!r}")
    scheduler = _scheduler(scheduler, model)
    b, t = target_c2w.shape[:2]
    if regression is None:
        regression = model.render(
            scene, target_c2w, target_fxfycxcy, image_hw, normalized=normalized
        )
    elif tuple(regression.rgb.shape) != (b, t, 3, *image_hw):
        raise ValueError(
            f"the regression render must be {[b, t, 3, *image_hw]} (scenes, targets, rgb, "
            f"height, width), got {list(regression.rgb.shape)}"
        )
    target_c2w = scene.scene_frame(target_c2w, normalized)
    batch = _samples_per_batch(
        diffusion, scene, image_hw, t, num_samples, max_batch, guidance_scale, memory_budget
    )
    if mask is not None:
        unseen = _checked_mask(mask, (b, t, *image_hw)).to(regression.rgb)
    else:
        unseen = unseen_region(
            model, scene, regression, target_c2w, target_fxfycxcy, image_hw,
            mode=mask_mode, source_fxfycxcy=source_fxfycxcy, conf_threshold=conf_threshold,
            sources=sources,
        )  # fmt: skip
        if unseen is not None:
            unseen = _soft_edge(unseen.to(regression.rgb))
    points = regression.points if diffusion.noise_channels == 6 else None
    known = to_diffusion_space(regression.rgb, points)  # (b, t, k, h, w)
    null = None
    if guidance_scale != 1:
        context = scene.diffusion_cache.context
        null = diffusion.null_context(b, context.tokens.shape[1], context.rays)
    rays = plucker_rays(target_c2w, target_fxfycxcy, *image_hw)  # (b, t, 6, h, w)
    model_fn = make_model_fn(diffusion, scene.diffusion_cache, null, rays)
    options = dict(
        scheduler=scheduler,
        steps=steps,
        eta=eta,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        guidance_interval=guidance_interval,
        resample_jumps=resample_jumps,
    )
    x = _draw(model_fn, known, unseen, num_samples, batch, seed, noise, callback, options)
    return _views(x, num_samples, regression, unseen, target_c2w)


def model_scheduler(model: NVSModel, name: str) -> SchedulerMixin:
    """The scheduler `name` (one of `samplers.SCHEDULER_NAMES`) on the model's training noise
    schedule: `samplers.build_scheduler(name, **model.noise_schedule)` when the model has
    one (exports carry it), else the default schedule with the diffusion decoder's
    prediction type.

    Raises ValueError for a regression-only model, or a schedule whose prediction type
    is not the diffusion decoder's.
    """
    diffusion = require_diffusion(model, "the model")
    options = {"prediction_type": diffusion.prediction_type, **(model.noise_schedule or {})}
    if options["prediction_type"] != diffusion.prediction_type:
        raise ValueError(
            f"the model's noise schedule has prediction_type {options['prediction_type']!r} "
            f"but its diffusion decoder predicts {diffusion.prediction_type!r}"
        )
    return samplers.build_scheduler(name, **options)


NOISE_MODES = ("independent", "shared")


def sample_seeds(seed: int, samples: range, views: int, noise: str = "independent") -> list[int]:
    """The sampler's row seeds, sample-major: the `views` rows (scenes x targets) of sample
    k take their seeds from a generator seeded with `seed + k`; with `noise="shared"` they
    all take its first, so every view of a sample starts from the same noise and draws the
    same step noise (frames of a trajectory then change only where the scene does)."""
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
    seeds = []
    for k in samples:
        generator = torch.Generator().manual_seed(seed + k)
        drawn = torch.randint(0, 2**62, (views,), generator=generator).tolist()
        seeds += drawn if noise == "independent" else drawn[:1] * views
    return seeds


def estimate_sample_bytes(
    diffusion: DiffusionDecoder,
    num_source_tokens: int,
    image_hw: tuple[int, int],
    num_targets: int,
    guided: bool = False,
) -> int:
    """Rough peak memory (bytes, float32) one sample of `num_targets` target views of one
    scene needs during a denoising step: the target stream's activations and attention
    scores (for the variants that update the sources per target, their copies too), twice
    with guidance, plus the sampling loop's per-pixel state. Errs on the high side."""
    decoder = diffusion.decoder
    config = decoder.config
    h, w = image_hw
    n = (h // decoder.patch_size) * (w // decoder.patch_size) + decoder.num_registers
    m = num_source_tokens
    c, heads = decoder.width, config["num_heads"]
    hidden = int(c * config["mlp_ratio"])
    per_view = _ACTIVATION_COPIES * n * (c + hidden) + heads * n * (n + m)
    if not decoder.routing.cacheable_sources:
        per_view += _ACTIVATION_COPIES * m * (c + hidden) + heads * m * (n + m)
    network = per_view * (2 if guided else 1)
    state = _SAMPLER_COPIES * diffusion.noise_channels * h * w
    return 4 * num_targets * (network + state)


def available_memory(device: torch.device, memory_budget: int | None = None) -> int:
    """Bytes sampling may use on `device`: `memory_budget` when given, else the free GPU
    memory, or `DEFAULT_CPU_MEMORY_BUDGET` off the GPU."""
    if memory_budget is not None:
        return memory_budget
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return DEFAULT_CPU_MEMORY_BUDGET


def scene_to_world(scene: EncodedScene, points: Tensor) -> Tensor:
    """Points [b, ..., 3] in the normalised scene frame -> the input world frame (the
    inverse of `EncodedScene.normalize`; the identity for pose-free scenes)."""
    b = points.shape[0]
    flat = points.reshape(b, -1, 3) * scene.scale.to(points)[:, None, None]
    c2w_reference = invert_rigid(scene.reference_w2c.to(points))  # (b, 4, 4)
    world = flat @ c2w_reference[:, :3, :3].transpose(1, 2) + c2w_reference[:, None, :3, 3]
    return world.reshape(points.shape)


def unseen_region(
    model: NVSModel,
    scene: EncodedScene,
    regression: DecoderOutput,
    target_c2w: Tensor,
    target_fxfycxcy: Tensor,
    image_hw: tuple[int, int],
    *,
    mode: str = "auto",
    source_fxfycxcy: Tensor | None = None,
    conf_threshold: float | None = None,
    sources: DecoderOutput | None = None,
    rel_tol: float = PREDICTED_REL_TOL,
) -> Tensor | None:
    """bool [b, t, h, w]: the target pixels no source saw, on the regression render's
    device; None with mode "off", or "auto" for a model without a point head.

    regression: `model.render` of the targets (rgb [b, t, 3, h, w], points, conf).
    target_c2w [b, t, 4, 4] in the scene's normalised frame, target_fxfycxcy [b, t, 4] in
        pixels of the `image_hw` renders.
    mode: one of MASK_MODES, as `sample_views`' mask_mode: "auto" tests the targets'
        regressed points by reprojection into the sources' depth when the source cameras
        are known or estimated, else uses "confidence": the point head's confidence below
        `conf_threshold` (None: a share `CONFIDENCE_FRACTION` of the median confidence of
        the sources' renders, or of the targets' when the source cameras are unknown).
    source_fxfycxcy: [b, s, 4] the sources' intrinsics in pixels of `image_hw` images; None:
        a default field of view (`gen_nvs.inputs.DEFAULT_FOV_DEG`).
    sources: `model.render` of the source cameras ([b, s, ...], normalised frame) when the
        caller has it; None: rendered here when needed.
    rel_tol: the geometry test's depth tolerance (`rgbd.unseen_mask`).

    Raises ValueError for an unknown mode, or mode "confidence" without a point head.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {list(MASK_MODES)}, got {mode!r}")
    if mode == "off" or (mode == "auto" and regression.points is None):
        return None
    if regression.points is None:
        raise ValueError("mask mode 'confidence' needs a model with a point head")
    source_c2w = scene.source_c2w
    if source_c2w is None:
        return _confidence_unseen(regression, conf_threshold, sources=None)
    if source_fxfycxcy is None:
        b, s = source_c2w.shape[:2]
        source_fxfycxcy = default_intrinsics(image_hw).to(source_c2w).expand(b, s, 4)
    source_fxfycxcy = source_fxfycxcy.to(source_c2w.device)
    geometry = mode == "auto"
    if sources is None and (geometry or conf_threshold is None):
        sources = model.render(scene, source_c2w, source_fxfycxcy, image_hw, normalized=True)
    if geometry:
        return _geometry_unseen(
            scene, regression, target_c2w, target_fxfycxcy, source_fxfycxcy, sources, rel_tol
        )
    return _confidence_unseen(regression, conf_threshold, sources)


# --------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------


def _scheduler(scheduler: str | SchedulerMixin, model: NVSModel) -> SchedulerMixin:
    """A scheduler for the model (built from a name by `model_scheduler`, or checked
    against the diffusion decoder's prediction type)."""
    if isinstance(scheduler, str):
        return model_scheduler(model, scheduler)
    diffusion = model.diffusion
    if scheduler.config.prediction_type != diffusion.prediction_type:
        raise ValueError(
            f"the scheduler's prediction_type {scheduler.config.prediction_type!r} differs from "
            f"the diffusion decoder's {diffusion.prediction_type!r}"
        )
    return scheduler


def _checked_mask(mask: Tensor, expected: tuple[int, ...]) -> Tensor:
    """A caller's generation mask, checked: [b, t, h, w] with values in [0, 1]."""
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"mask must be {list(expected)} (scenes, targets, height, width), got "
            f"{list(mask.shape)}"
        )
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError(
            f"mask values must be in [0, 1], got [{mask.min().item()}, {mask.max().item()}]"
        )
    return mask


def _geometry_unseen(
    scene: EncodedScene,
    regression: DecoderOutput,
    target_c2w: Tensor,
    target_fxfycxcy: Tensor,
    source_fxfycxcy: Tensor,
    sources: DecoderOutput,
    rel_tol: float,
) -> Tensor:
    """bool [b, t, h, w]: target pixels whose regressed point no source saw, on the
    device of the regression render."""
    target_depth = rgbd.points_to_depth(regression.points, target_c2w)  # (b, t, h, w)
    device = target_depth.device
    source_c2w = scene.source_c2w.to(device)
    source_fxfycxcy = source_fxfycxcy.to(device)
    source_depth = rgbd.points_to_depth(sources.points.to(device), source_c2w)  # (b, s, h, w)
    b, t = target_c2w.shape[:2]
    return torch.stack(
        [
            torch.stack(
                [
                    rgbd.unseen_mask(
                        target_c2w[i, j],
                        target_fxfycxcy[i, j],
                        target_depth[i, j],
                        source_c2w[i],
                        source_fxfycxcy[i],
                        source_depth[i],
                        rel_tol,
                    )
                    for j in range(t)
                ]
            )
            for i in range(b)
        ]
    )


def _confidence_unseen(
    regression: DecoderOutput, conf_threshold: float | None, sources: DecoderOutput | None
) -> Tensor:
    """bool [b, t, h, w]: target pixels the point head is unsure of."""
    if conf_threshold is not None:
        return regression.conf < conf_threshold
    reference = regression.conf if sources is None else sources.conf.to(regression.conf)
    threshold = CONFIDENCE_FRACTION * reference.flatten(1).median(dim=1).values  # (b,)
    return regression.conf < threshold[:, None, None, None]


def _soft_edge(unseen: Tensor) -> Tensor:
    """[b, t, h, w] in {0, 1} -> grown by a pixel, then a 3x3 box blur: every unseen pixel
    stays 1 and the mask fades to 0 over two pixels of the seen region."""
    x = rearrange(unseen, "b t h w -> (b t) 1 h w")
    x = F.max_pool2d(x, 3, stride=1, padding=1)
    x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return rearrange(x, "(b t) 1 h w -> b t h w", b=unseen.shape[0])


def _samples_per_batch(
    diffusion: DiffusionDecoder,
    scene: EncodedScene,
    image_hw: tuple[int, int],
    num_targets: int,
    num_samples: int,
    max_batch: int | None,
    guidance_scale: float,
    memory_budget: int | None,
) -> int:
    """Samples per sampler call: `max_batch`, or (None) as many as fit the memory;
    ValueError, saying how many fit, when not even one does or `max_batch` do not."""
    cache = scene.diffusion_cache
    per_sample = cache.num_scenes * estimate_sample_bytes(
        diffusion, cache.num_source_tokens, image_hw, num_targets, guided=guidance_scale != 1
    )
    device = cache.context.tokens.device
    available = available_memory(device, memory_budget)
    fit = int(available // per_sample)
    if max_batch is None:
        batch = max(1, min(num_samples, fit))
    else:
        batch = min(max_batch, num_samples)
    if batch > fit:
        where = "free on the GPU" if device.type == "cuda" and memory_budget is None else "budget"
        advice = (
            "draw fewer target views or use a smaller size"
            if fit == 0
            else f"set max_batch (--max-batch) to at most {fit}, or leave it unset"
        )
        raise ValueError(
            f"{batch} sample(s) of {num_targets} target view(s) per batch need about "
            f"{_format_bytes(batch * per_sample)}, {_format_bytes(available)} {where}: "
            f"{fit} sample(s) fit; {advice}"
        )
    return batch


def _format_bytes(num: float) -> str:
    """Bytes as GiB, or MiB below one GiB."""
    return f"{num / 2**30:.2f} GiB" if num >= 2**30 else f"{num / 2**20:.1f} MiB"


def _draw(
    model_fn: ModelFn,
    known: Tensor,
    unseen: Tensor | None,
    num_samples: int,
    batch: int,
    seed: int,
    noise: str,
    callback: StepCallback | None,
    options: dict,
) -> Tensor:
    """Run `samplers.sample` over the samples, `batch` at a time -> rows [(n b t), k, h, w].

    known [b, t, k, h, w] is kept where `unseen` [b, t, h, w] is 0 (everything is generated
    when it is None); `options` are the sampler's.
    """
    b, t = known.shape[:2]
    chunks = [range(i, min(i + batch, num_samples)) for i in range(0, num_samples, batch)]
    x = []
    for index, chunk in enumerate(chunks):
        completion = {}
        if unseen is not None:
            completion = dict(
                known=repeat(known, "b t k h w -> (n b t) k h w", n=len(chunk)),
                mask=repeat(1 - unseen, "b t h w -> (n b t) 1 h w", n=len(chunk)),
            )
        x.append(
            samplers.sample(
                model_fn,
                shape=tuple(known.shape[2:]),
                num_samples=len(chunk) * b * t,
                seeds=sample_seeds(seed, chunk, b * t, noise),
                callback=_chunk_callback(callback, index, len(chunks)),
                device=known.device,
                dtype=known.dtype,
                **options,
                **completion,
            )
        )  # (len(chunk) b t, k, h, w)
    return torch.cat(x)


def _chunk_callback(
    callback: StepCallback | None, index: int, num_chunks: int
) -> StepCallback | None:
    """The callback with steps counted over all sampler calls."""
    if callback is None or num_chunks == 1:
        return callback

    def chunk_callback(info: samplers.StepInfo) -> samplers.Signal | None:
        return callback(
            dataclasses.replace(
                info,
                step=index * info.num_steps + info.step,
                num_steps=num_chunks * info.num_steps,
            )
        )

    return chunk_callback


def _views(
    x: Tensor,
    num_samples: int,
    regression: DecoderOutput,
    unseen: Tensor | None,
    target_c2w: Tensor,
) -> SampledViews:
    """Sampler rows x [(n b t), k, h, w] -> SampledViews."""
    b, t = target_c2w.shape[:2]
    rgb, points = from_diffusion_space(rearrange(x, "(n b t) k h w -> (n b) t k h w", b=b, t=t))
    rgb = rearrange(rgb, "(n b) t c h w -> n b t c h w", n=num_samples)
    depth = None
    if points is not None:
        points = rearrange(points, "(n b) t h w k -> n b t h w k", n=num_samples)
        depth = rgbd.points_to_depth(points, target_c2w.expand(num_samples, b, t, 4, 4))
    return SampledViews(
        rgb=rgb,
        points=points,
        depth=depth,
        regression=regression,
        mask=unseen,
        target_c2w=target_c2w,
    )
