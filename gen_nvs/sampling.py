"""Draw diffusion samples of novel views from an encoded scene.

`sample_views` is the pipeline the `sample` command and the app run on top of
`samplers.sample`:

1. The regression decoder renders the targets (rgb, points, confidence): the known
   region and the fallback output (or the caller passes the render it already has).
2. A mask says which target pixels no source saw (1 = unseen, to generate): computed
   (`gen_nvs.unseen.unseen_region`, by geometry or the point head's confidence), given
   by the caller, or none (generate everything).
3. The diffusion decoder, wrapped as a `samplers.Denoiser` with its prediction type and
   the model's training noise schedule (`model_denoiser`), samples every target,
   RePaint-style where there is a mask: the regression render is kept where the sources
   saw the scene and the rest is generated. The scene's `diffusion_cache` holds the
   encoder tokens and the source stream, so one encoding serves every step of every
   sample. Schedulers given by name follow the model's training noise schedule
   (`model_scheduler`). How many samples run at once comes from `gen_nvs.memory`. By
   default the decoder's patch grid moves between network calls (`shifted_model_fn`):
   a decoder that paints in patches otherwise leaves block seams along a fixed grid.

In the latent mode (a model with an image VAE, `NVSModel.codec`) the same steps run on
the latent grid: the known region is the regression render's latents (and its points
taken back to the latent grid), the mask is brought to the latent grid (a latent pixel
is generated as much as the most generated pixel of its f x f block) and the samples
are decoded to RGB, their points upsampled; `SampledViews` keeps the pixel mode's shapes.

Randomness: sample k draws from a CPU generator seeded with `seed + k` (it seeds one
sampler row per target view), so a sample does not change with `num_samples` or
`max_batch`.

Dimension legend:
    n   samples             b   scenes (batch)      t   target views per scene
    s   source views        k   diffusion channels (3 rgb + 3 xyz, or 3 rgb; in the
                                latent mode the VAE's latent channels, + 3 xyz)
    h, w    render height / width       gh, gw  the decoder's grid (h/f, w/f in the
                                                latent mode, f the VAE's downsampling)
    p       the decoder's patch size in grid cells; oy, ox  a patch-shift grid offset
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
from gen_nvs.geometry.cameras import invert_rigid
from gen_nvs.memory import samples_per_batch
from gen_nvs.models.decoder import DecoderOutput, SourceContext
from gen_nvs.models.diffusion import DiffusionDecoder, make_model_fn
from gen_nvs.models.nvs import EncodedScene, NVSModel, require_diffusion
from gen_nvs.unseen import (
    MASK_MODES,
    PREDICTED_REL_TOL,
    check_conf_threshold,
    check_mask_tolerance,
    soft_edge,
    unseen_region,
)
from samplers.denoiser import ModelFn
from samplers.guidance import check_guidance
from samplers.sampling import check_eta, check_seeds
from samplers.schedulers import set_steps

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
    sample (consistent trajectories); eta: DDIM's stochasticity; patch_shift: move the
    decoder's patch grid between network calls (`shifted_model_fn`; no block seams).
    """

    sampler: str = samplers.DEFAULT_SCHEDULER
    steps: int = 20
    guidance: float = 1.0
    samples: int = 4
    seed: int = 0
    mask: str = "auto"
    noise: str = "independent"
    eta: float = 0.0
    patch_shift: bool = True

    def __post_init__(self) -> None:
        check_sampling_options(
            scheduler=self.sampler, steps=self.steps, num_samples=self.samples, seed=self.seed,
            eta=self.eta, guidance_scale=self.guidance, mask_mode=self.mask,
            patch_shift=self.patch_shift,
        )  # fmt: skip


def check_sampling_options(
    *,
    scheduler: str | SchedulerMixin = samplers.DEFAULT_SCHEDULER,
    steps: int = 20,
    num_samples: int = 1,
    seed: int = 0,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    mask_mode: str = "auto",
    conf_threshold: float | None = None,
    mask_tolerance: float = PREDICTED_REL_TOL,
    resample_jumps: int = 0,
    max_batch: int | None = None,
    memory_budget: float | None = None,
    patch_shift: bool = True,
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
    check_seeds(seed, num_samples)
    check_eta(eta)
    check_guidance(guidance_scale, guidance_rescale, guidance_interval)
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {list(MASK_MODES)}, got {mask_mode!r}")
    check_conf_threshold(conf_threshold)
    check_mask_tolerance(mask_tolerance)
    if resample_jumps < 0:
        raise ValueError(f"resample jumps must be >= 0, got {resample_jumps}")
    if resample_jumps > 0 and mask_mode == "off":
        raise ValueError(f"resample jumps ({resample_jumps}) need a mask, got mask mode 'off'")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
    if memory_budget is not None and not (math.isfinite(memory_budget) and memory_budget > 0):
        raise ValueError(f"memory budget must be a positive number of bytes, got {memory_budget}")
    if not isinstance(patch_shift, bool):
        raise ValueError(f"patch_shift must be True or False, got {patch_shift!r}")


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
    mask_tolerance: float = PREDICTED_REL_TOL,
    memory_budget: int | None = None,
    regression: DecoderOutput | None = None,
    sources: DecoderOutput | None = None,
    noise: str = "independent",
    patch_shift: bool = True,
) -> SampledViews:
    """Draw `num_samples` samples of every target view of the encoded scenes.

    scene: `model.encode(...)` of b scenes (with the model's diffusion decoder).
    target_c2w [b, t, 4, 4], target_fxfycxcy [b, t, 4] (pixels of the `image_hw` renders):
        as for `NVSModel.render`, in the input world frame or, with `normalized`, in the
        scene's normalised frame.
    seed: sample k uses seed `seed + k` (each in [0, 2**64 - 1]), whatever `num_samples` and
        `max_batch`.
    noise: "independent" (each view its own noise) or "shared" (every view of a sample
        the same: consistent frames along a trajectory; `sample_seeds`).
    scheduler, steps, eta, guidance_*, resample_jumps: as for `samplers.sample`; a
        scheduler name builds it on the model's noise schedule (`model_scheduler`).
    mask_mode: "off" generates everything; "confidence" generates where the point head's
        confidence of the regression render is below `conf_threshold` (> 1; None: a share
        `gen_nvs.unseen.CONFIDENCE_FRACTION` of the median confidence of the sources'
        renders, or of the targets' when the source cameras are unknown); "auto" uses
        geometry when the source cameras are known or estimated (the sources' depth, from
        the point head, tests the targets' points by reprojection, with the relative depth
        tolerance `mask_tolerance`), else the confidence, else (no point head) off.
        Computed masks (`gen_nvs.unseen.unseen_region`) get a soft edge into the seen
        region.
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
        `gen_nvs.memory.DEFAULT_CPU_MEMORY_BUDGET` on the CPU. Not even one sample
        fitting, or `max_batch` samples not fitting, is an error that says how many fit.
    regression: `model.render` of these targets (rgb [b, t, 3, h, w], points, conf, on the
        scene's device) when the caller has it; None: rendered here.
    sources: `model.render` of the source cameras, as for `unseen_region`; None: rendered
        here when the mask needs it.
    patch_shift: move the decoder's patch grid between network calls (`shifted_model_fn`),
        so that the samples carry no seams along a fixed patch grid; False: the grid stays
        on the image's corner.

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
        seed=seed,
        eta=eta,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        guidance_interval=guidance_interval,
        mask_mode=mask_mode,
        conf_threshold=conf_threshold,
        mask_tolerance=mask_tolerance,
        resample_jumps=resample_jumps,
        max_batch=max_batch,
        memory_budget=memory_budget,
        patch_shift=patch_shift,
    )
    if scene.diffusion_cache is None or scene.diffusion_cache.decoder is not diffusion.decoder:
        raise ValueError(
            "the scene was not encoded for this model's diffusion decoder; encode it with "
            "model.encode after the diffusion decoder was added"
        )
    if mask is not None and mask_mode != "auto":
        raise ValueError(f"give a mask or a mask mode, got a mask and mask mode {mask_mode!r}")
    if isinstance(scheduler, str):
        scheduler = model_scheduler(model, scheduler)
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
    if diffusion.latent and regression.latents is None:
        raise ValueError(
            "the regression render of a latent-mode model must hold its latents "
            "(as model.render gives them)"
        )
    target_c2w = scene.scene_frame(target_c2w, normalized)
    shifted = _shifts_grid(diffusion, patch_shift)
    batch = samples_per_batch(
        diffusion, scene, network_grid(model, image_hw, patch_shift), t, num_samples,
        max_batch, guidance_scale, memory_budget,
    )  # fmt: skip
    if mask is not None:
        unseen = _checked_mask(mask, (b, t, *image_hw)).to(regression.rgb)
    else:
        unseen = unseen_region(
            model, scene, regression, target_c2w, target_fxfycxcy, image_hw,
            mode=mask_mode, source_fxfycxcy=source_fxfycxcy, conf_threshold=conf_threshold,
            sources=sources, rel_tol=mask_tolerance,
        )  # fmt: skip
        if unseen is not None:
            unseen = soft_edge(unseen.to(regression.rgb))
    known = _known(model, diffusion, regression)  # (b, t, k, gh, gw)
    null = None
    if guidance_scale != 1:
        context = scene.diffusion_cache.context
        null = diffusion.null_context(b, context.tokens.shape[1], context.rays)
    if shifted:
        model_fn = _patch_shift_fn(
            model, scene, null, target_c2w, target_fxfycxcy, image_hw, scheduler, steps
        )
    else:
        rays = model.target_rays(target_c2w, target_fxfycxcy, image_hw)  # (b, t, 6, gh, gw)
        model_fn = make_model_fn(diffusion, scene.diffusion_cache, null, rays)
    denoiser = model_denoiser(model, model_fn)
    options = dict(
        scheduler=scheduler,
        steps=steps,
        eta=eta,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        guidance_interval=guidance_interval,
        resample_jumps=resample_jumps,
    )
    generate = None if unseen is None else _grid_mask(unseen, model.downsample)
    x = _draw(denoiser, known, generate, num_samples, batch, seed, noise, callback, options)
    return _views(model, x, num_samples, regression, unseen, target_c2w, image_hw)


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


def model_denoiser(model: NVSModel, model_fn: ModelFn) -> samplers.Denoiser:
    """`model_fn` (the diffusion decoder's, `make_model_fn`) as a `samplers.Denoiser`: with
    the diffusion decoder's prediction type and the model's training noise schedule
    (`model_scheduler`'s), which every scheduler that samples it must run."""
    diffusion = require_diffusion(model, "the model")
    alphas_cumprod = model_scheduler(model, "ddpm").alphas_cumprod
    return samplers.Denoiser(model_fn, diffusion.prediction_type, alphas_cumprod)


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


def samples_to_views(
    model: NVSModel, x: Tensor, image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor | None]:
    """Diffusion samples x [b, t, k, gh, gw] of the model's diffusion decoder -> (rgb
    [b, t, 3, h, w] in [0, 1], points [b, t, h, w, 3] in the scene frame or None): in the
    latent mode the latents decoded by the VAE, one scene at a time, and the points
    upsampled from the latent grid."""
    diffusion = require_diffusion(model, "the model")
    image, points = diffusion.from_sample(x)
    if not diffusion.latent:
        return image, points
    views = [
        model.to_views(DecoderOutput(latents=image[i : i + 1], points=_row(points, i)), image_hw)
        for i in range(image.shape[0])
    ]
    rgb = torch.cat([view.rgb for view in views])
    return rgb, None if points is None else torch.cat([view.points for view in views])


def scene_to_world(scene: EncodedScene, points: Tensor) -> Tensor:
    """Points [b, ..., 3] in the normalised scene frame -> the input world frame (the
    inverse of `EncodedScene.normalize`; the identity for pose-free scenes)."""
    b = points.shape[0]
    flat = points.reshape(b, -1, 3) * scene.scale.to(points)[:, None, None]
    c2w_reference = invert_rigid(scene.reference_w2c.to(points))  # (b, 4, 4)
    world = flat @ c2w_reference[:, :3, :3].transpose(1, 2) + c2w_reference[:, None, :3, 3]
    return world.reshape(points.shape)


# --------------------------------------------------------------------------------------
# Patch shift
# --------------------------------------------------------------------------------------


def network_grid(model: NVSModel, image_hw: tuple[int, int], patch_shift: bool) -> tuple[int, int]:
    """The grid (gh, gw) the diffusion decoder sees when sampling targets of `image_hw`:
    the model's grid, with `patch_shift` (and patches larger than a cell) one patch
    larger, (gh + p, gw + p): the window of `shifted_model_fn`."""
    grid_hw = model.grid_size(image_hw)
    diffusion = require_diffusion(model, "the model")
    if not _shifts_grid(diffusion, patch_shift):
        return grid_hw
    patch = diffusion.decoder.patch_size
    return (grid_hw[0] + patch, grid_hw[1] + patch)


# Grid offsets, in patches, whose predictions the last network call averages.
FINAL_SHIFTS = ((0.0, 0.0), (0.5, 0.5), (0.0, 0.5), (0.5, 0.0))


def shifted_model_fn(
    make_fn: Callable[[Tensor], ModelFn],
    canvas: Tensor,
    canvas_rays: Tensor,
    alphas_cumprod: Tensor,
    patch: int,
    final_timestep: float,
) -> ModelFn:
    """A patch-grid network `model_fn(x_t, t, conditional)` whose grid moves between calls.

    A decoder that embeds and paints its image in patches paints each patch apart: its
    samples show seams along the fixed patch grid (8 px blocks on the embedded model) that
    no denoising step removes, since every step sees the same grid. Here each call sees the
    target inside a window one patch larger than it, (gh + p, gw + p), placed so that the
    grid starts (oy, ox) cells before the target's corner (and ends p - oy, p - ox cells
    after it): an offset drawn from the call's timestep alone (every row of a call shares
    its window, so sample k of seed s stays sample 0 of seed s + k, whatever the batch),
    and at every call at `final_timestep` or below the mean of the predictions at the
    `FINAL_SHIFTS` offsets (one call for most schedulers; Heun's last two, a Karras
    schedule's calls rounded to the same timestep and RePaint's repeats of the last step
    pay it too). The window's cells outside the target hold `canvas` noised to the call's
    level (fresh noise, drawn from the same generator): the part of the canvas around the
    target, for the unconditional branch of guidance too. The prediction is cropped back
    to the target.

    make_fn: rays [b, t, 6, gh + p, gw + p] of a window -> the network on that window
        (`make_model_fn`); rows of x_t are (samples, scenes, targets) as there.
    canvas: [b, t, k, gh + 2p, gw + 2p] the targets and one patch around them on every
        side, in diffusion space (the regression render of the enlarged cameras);
        canvas_rays: their rays [b, t, 6, gh + 2p, gw + 2p].
    alphas_cumprod: [T] the model's training schedule (the network's input levels).
    patch: the decoder's patch size in grid cells (p).
    """
    b, t, k, height, width = canvas.shape
    h, w = height - 2 * patch, width - 2 * patch
    if h < 1 or w < 1:
        raise ValueError(
            f"the canvas must hold a target of at least 1 x 1 cells inside a {patch}-cell "
            f"border, got canvas {list(canvas.shape)}"
        )
    if tuple(canvas_rays.shape) != (b, t, 6, height, width):
        raise ValueError(
            f"canvas rays must be {[b, t, 6, height, width]} like the canvas, got "
            f"{list(canvas_rays.shape)}"
        )
    alphas_cumprod = alphas_cumprod.double()

    def window(x: Tensor, oy: int, ox: int) -> Tensor:
        """The window of offset (oy, ox) of a canvas-sized x [..., gh + 2p, gw + 2p] ->
        [..., gh + p, gw + p]; the target starts at (oy, ox) in it."""
        return x[..., patch - oy : patch - oy + h + patch, patch - ox : patch - ox + w + patch]

    def at_offset(
        x_t: Tensor,
        timesteps: Tensor,
        conditional: bool,
        offset: tuple[int, int],
        generator: torch.Generator,
    ) -> Tensor:
        """The network's prediction [(n b t), k, gh, gw] for x_t [(n b t), k, gh, gw] seen
        through the window at `offset`."""
        (oy, ox), samples = offset, x_t.shape[0] // (b * t)
        alpha_bar = _alpha_bar(alphas_cumprod, float(timesteps[0]))
        around = window(canvas, oy, ox)  # (b, t, k, gh + p, gw + p)
        noise = torch.randn(around.shape, generator=generator).to(around)
        around = alpha_bar**0.5 * around + (1 - alpha_bar) ** 0.5 * noise
        x = repeat(around, "b t k h w -> (n b t) k h w", n=samples).to(x_t.dtype).clone()
        x[..., oy : oy + h, ox : ox + w] = x_t
        prediction = make_fn(window(canvas_rays, oy, ox))(x, timesteps, conditional)
        return prediction[..., oy : oy + h, ox : ox + w]  # ((n b t), k, gh, gw)

    def model_fn(x_t: Tensor, timesteps: Tensor, conditional: bool) -> Tensor:
        if tuple(x_t.shape[1:]) != (k, h, w) or x_t.shape[0] % (b * t):
            raise ValueError(
                f"x_t must be [samples * {b * t}, {k}, {h}, {w}], got {list(x_t.shape)}"
            )
        timestep = float(timesteps[0])
        generator = torch.Generator().manual_seed(round(timestep * 1000))
        if timestep <= final_timestep:
            offsets = [(round(dy * patch), round(dx * patch)) for dy, dx in FINAL_SHIFTS]
        else:
            offsets = [tuple(torch.randint(patch, (2,), generator=generator).tolist())]
        predictions = [at_offset(x_t, timesteps, conditional, o, generator) for o in offsets]
        return torch.stack(predictions).mean(0)

    return model_fn


# --------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------


def _patch_shift_fn(
    model: NVSModel,
    scene: EncodedScene,
    null: SourceContext | None,
    target_c2w: Tensor,
    target_fxfycxcy: Tensor,
    image_hw: tuple[int, int],
    scheduler: SchedulerMixin,
    steps: int,
) -> ModelFn:
    """`shifted_model_fn` for `sample_views`: the canvas is the regression render of the
    target cameras (scene frame) enlarged by one patch on each side. In the latent mode
    only its latents are read: the decoder's own output, not decoded by the VAE."""
    diffusion = require_diffusion(model, "the model")
    patch = diffusion.decoder.patch_size
    pad = patch * model.downsample  # pixels
    big_fxfycxcy = target_fxfycxcy + target_fxfycxcy.new_tensor([0, 0, pad, pad])
    big_hw = (image_hw[0] + 2 * pad, image_hw[1] + 2 * pad)
    canvas_rays = model.target_rays(target_c2w, big_fxfycxcy, big_hw)
    if diffusion.latent:
        raw = scene.cache.render(canvas_rays)  # latents and points on the latent grid
        canvas = diffusion.to_sample(raw.latents, raw.points if diffusion.with_points else None)
    else:
        render = model.render(scene, target_c2w, big_fxfycxcy, big_hw, normalized=True)
        canvas = _known(model, diffusion, render)
    cache = scene.diffusion_cache
    timesteps = set_steps(scheduler, steps).timesteps
    return shifted_model_fn(
        lambda rays: make_model_fn(diffusion, cache, null, rays),
        canvas,
        canvas_rays,
        model_scheduler(model, "ddpm").alphas_cumprod,
        patch,
        float(timesteps.min()),
    )


def _shifts_grid(diffusion: DiffusionDecoder, patch_shift: bool) -> bool:
    """Whether sampling moves the decoder's patch grid: asked for, and patches larger
    than one grid cell (a one-cell grid has no seams to move)."""
    return patch_shift and diffusion.decoder.patch_size > 1


def _alpha_bar(alphas_cumprod: Tensor, timestep: float) -> float:
    """The training schedule's alpha-bar at a (possibly fractional) timestep, linearly
    interpolated between its integer neighbours."""
    last = len(alphas_cumprod) - 1
    timestep = min(max(timestep, 0.0), float(last))
    low = math.floor(timestep)
    high = min(low + 1, last)
    return float(torch.lerp(alphas_cumprod[low], alphas_cumprod[high], timestep - low))


def _row(x: Tensor | None, i: int) -> Tensor | None:
    return None if x is None else x[i : i + 1]


def _known(model: NVSModel, diffusion: DiffusionDecoder, regression: DecoderOutput) -> Tensor:
    """The regression render in diffusion space on the decoder's grid [b, t, k, gh, gw]:
    its rgb, or in the latent mode its latents with its points taken back to the latent
    grid (`NVSModel.render` upsampled them by repetition)."""
    points = regression.points if diffusion.with_points else None
    if not diffusion.latent:
        return diffusion.to_sample(regression.rgb, points)
    f = model.downsample
    if points is not None:
        points = points[:, :, ::f, ::f]
    return diffusion.to_sample(regression.latents, points)


def _grid_mask(unseen: Tensor, factor: int) -> Tensor:
    """The generation mask [b, t, h, w] on the decoder's grid [b, t, h/f, w/f]: each cell
    the largest value of its f x f block (the mask itself in pixel mode)."""
    if factor == 1:
        return unseen
    b = unseen.shape[0]
    pooled = F.max_pool2d(rearrange(unseen, "b t h w -> (b t) h w"), factor)
    return rearrange(pooled, "(b t) h w -> b t h w", b=b)


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


def _draw(
    denoiser: samplers.Denoiser,
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
                denoiser,
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
    model: NVSModel,
    x: Tensor,
    num_samples: int,
    regression: DecoderOutput,
    unseen: Tensor | None,
    target_c2w: Tensor,
    image_hw: tuple[int, int],
) -> SampledViews:
    """Sampler rows x [(n b t), k, gh, gw] -> SampledViews (images of `image_hw`)."""
    b, t = target_c2w.shape[:2]
    rows = rearrange(x, "(n b t) k h w -> (n b) t k h w", b=b, t=t)
    rgb, points = samples_to_views(model, rows, image_hw)
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
