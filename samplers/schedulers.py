"""Diffusers schedulers by name, and the noise levels the sampling loop reads off them.

The loop drives a scheduler call by call: call `i` feeds the network
`scheduler.scale_model_input(x, timesteps[i])` and hands its prediction to `step`. Two sample
spaces occur, with `x = alpha * x0 + sigma * eps` in both:

- variance preserving (DDPM, DDIM, DPM-Solver++, UniPC): alpha^2 + sigma^2 = 1, the network
  sees `x` itself;
- variance exploding (Euler, Euler ancestral, Heun): alpha = 1, the network sees
  `x / sqrt(1 + sigma^2)`, the variance-preserving sample at the same noise level.

So the network always sees a variance-preserving sample and its `prediction_type` means the
same thing whichever scheduler runs it. `noise_levels` gives (alpha, sigma) of `x` at every
call, indexed by call rather than looked up by timestep value: Heun repeats timesteps and
Karras schedules can round two sigmas to one timestep, which makes diffusers' own
timestep-keyed `add_noise` ambiguous there.
"""

from __future__ import annotations

import copy
import inspect

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)
from torch import Tensor

from samplers.denoiser import Denoiser, check_prediction_type

DEFAULT_SCHEDULER = "dpmpp-2m"  # the one default of every sampling entry point

# name -> (class, options fixed by the name)
_SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "dpmpp-2m-sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "dpmpp-2m-karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}
SCHEDULER_NAMES = tuple(_SCHEDULERS)

# How each supported class stores its noise levels (see the module docstring).
_ALPHA_BAR_TABLE = (DDPMScheduler, DDIMScheduler)
_VP_SIGMA_TABLE = (DPMSolverMultistepScheduler, UniPCMultistepScheduler)
_VE_SIGMA_TABLE = (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler)
_SUPPORTED_CLASSES = _ALPHA_BAR_TABLE + _VP_SIGMA_TABLE + _VE_SIGMA_TABLE


def build_scheduler(
    name: str,
    *,
    prediction_type: str = "epsilon",
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    timestep_spacing: str = "trailing",
    rescale_betas_zero_snr: bool = False,
) -> SchedulerMixin:
    """A diffusers scheduler by name (see `SCHEDULER_NAMES`), configured for pixel-space data.

    `prediction_type` must match the network's (`samplers.denoiser.PREDICTION_TYPES`);
    `scheduler_for` builds the scheduler of a `Denoiser` with the denoiser's.
    `timestep_spacing` defaults to "trailing", which starts sampling at the last training
    timestep (Lin et al. 2023, Table 2); diffusers' own defaults differ per scheduler.
    `rescale_betas_zero_snr` rescales the betas to zero terminal SNR (same paper); it needs
    v or sample prediction and a scheduler that implements it (all but "heun").
    Sample clipping is off: point-map channels are not bounded to [-1, 1].
    Set the number of steps with `set_steps`.
    """
    if name not in _SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}, expected one of {list(SCHEDULER_NAMES)}")
    cls, fixed = _SCHEDULERS[name]
    options = dict(
        fixed,
        prediction_type=prediction_type,
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        timestep_spacing=timestep_spacing,
    )
    if rescale_betas_zero_snr:
        if not _accepts(cls.__init__, "rescale_betas_zero_snr"):
            supported = [
                n
                for n, (c, _) in _SCHEDULERS.items()
                if _accepts(c.__init__, "rescale_betas_zero_snr")
            ]
            raise ValueError(
                f"scheduler {name!r} does not implement rescale_betas_zero_snr, "
                f"expected one of {supported}"
            )
        options["rescale_betas_zero_snr"] = True
    if _accepts(cls.__init__, "clip_sample"):
        options["clip_sample"] = False
    scheduler = cls(**options)
    check_scheduler(scheduler)
    return scheduler


def check_scheduler(scheduler: SchedulerMixin) -> None:
    """Raise ValueError if the sampling loop cannot drive `scheduler` correctly."""
    if not isinstance(scheduler, _SUPPORTED_CLASSES):
        raise ValueError(
            f"unsupported scheduler class {type(scheduler).__name__}, expected one of "
            f"{[c.__name__ for c in _SUPPORTED_CLASSES]}"
        )
    prediction_type = scheduler.config.prediction_type
    check_prediction_type(prediction_type)
    if prediction_type == "sample" and isinstance(scheduler, EulerAncestralDiscreteScheduler):
        raise ValueError(
            "EulerAncestralDiscreteScheduler does not implement prediction_type 'sample', "
            "expected 'epsilon' or 'v_prediction'"
        )
    if scheduler.config.get("rescale_betas_zero_snr", False) and prediction_type == "epsilon":
        # At zero SNR the input is pure noise, so an epsilon prediction determines nothing
        # about x0 (Lin et al. 2023, Sec. 3.2).
        raise ValueError(
            "rescale_betas_zero_snr needs prediction_type 'v_prediction' or 'sample', got 'epsilon'"
        )


def scheduler_for(denoiser: Denoiser, scheduler: str | SchedulerMixin) -> SchedulerMixin:
    """The scheduler that drives `denoiser`: a name from `SCHEDULER_NAMES` is built with the
    denoiser's prediction type (and default options otherwise); a scheduler instance is
    returned as is. Either must expect the denoiser's prediction type and run its training
    schedule (`alphas_cumprod`), else ValueError: for a network trained on another
    schedule, build the scheduler with it (`build_scheduler(name, **schedule)`).
    """
    if isinstance(scheduler, str):
        scheduler = build_scheduler(scheduler, prediction_type=denoiser.prediction_type)
    check_scheduler(scheduler)
    if scheduler.config.prediction_type != denoiser.prediction_type:
        raise ValueError(
            f"the scheduler expects prediction_type {scheduler.config.prediction_type!r}, "
            f"the denoiser predicts {denoiser.prediction_type!r}"
        )
    ours, theirs = denoiser.alphas_cumprod.float().cpu(), scheduler.alphas_cumprod.float().cpu()
    # Zero-SNR schedulers clamp the last alpha_bar from 0 to 2**-24: hence the atol.
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6):
        raise ValueError(
            f"{type(scheduler).__name__} runs another noise schedule than the denoiser's "
            f"(alphas_cumprod of {len(theirs)} and {len(ours)} training timesteps differ); "
            "build it with the network's training schedule, build_scheduler(name, **schedule)"
        )
    return scheduler


def set_steps(
    scheduler: SchedulerMixin,
    steps: int,
    device: torch.device | str | None = None,
) -> SchedulerMixin:
    """A fresh copy of `scheduler` set to `steps` solver steps.

    The caller's instance is left untouched, so one configured scheduler can serve many runs.
    A scheduler is given as an instance, never by name: a name alone does not say what the
    network predicts (`scheduler_for` builds one for a denoiser).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if isinstance(scheduler, str):
        raise ValueError(
            f"set_steps needs a scheduler instance, got the name {scheduler!r}: build it for "
            "the network with scheduler_for(denoiser, name)"
        )
    check_scheduler(scheduler)
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def noise_levels(scheduler: SchedulerMixin) -> tuple[Tensor, Tensor]:
    """(alpha, sigma), each [num_calls + 1], of the loop's sample at the input of each
    scheduler call, x = alpha * x0 + sigma * eps; the last entry is the level after the final
    call, clean data (1, 0) for every scheduler `build_scheduler` makes.

    `scheduler` must have had `set_timesteps` called (see `set_steps`).
    """
    timesteps = scheduler.timesteps.cpu()
    if isinstance(scheduler, _ALPHA_BAR_TABLE):
        final = scheduler.final_alpha_cumprod if isinstance(scheduler, DDIMScheduler) else 1.0
        alpha_bar = scheduler.alphas_cumprod[timesteps.long()].float()
        alpha_bar = torch.cat([alpha_bar, torch.tensor([float(final)])])
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    table = scheduler.sigmas.float().cpu()
    if table.shape[0] != timesteps.shape[0] + 1:
        raise ValueError(
            f"{type(scheduler).__name__} has {table.shape[0]} sigmas for "
            f"{timesteps.shape[0]} timesteps, expected one more sigma than timesteps"
        )
    if isinstance(scheduler, _VE_SIGMA_TABLE):
        return torch.ones_like(table), table
    alpha = 1 / (1 + table**2).sqrt()
    return alpha, table * alpha


def add_noise(scheduler: SchedulerMixin, x0: Tensor, noise: Tensor, call: int) -> Tensor:
    """`x0` noised to the level of the loop's sample at the input of scheduler call `call`
    (`num_calls` for after the last call); any shape."""
    alpha, sigma = noise_levels(scheduler)
    return alpha[call].item() * x0 + sigma[call].item() * noise


def solver_steps(scheduler: SchedulerMixin) -> list[range]:
    """The scheduler calls that make up each solver step, in order.

    One call per step for first-order and multistep schedulers; Heun (`order` 2) pairs a
    predictor and a corrector call per step, except for the last step, a single Euler call.
    """
    num_calls = len(scheduler.timesteps)
    ends = [i + 1 for i in range(num_calls) if (i + 1) % scheduler.order == 0 or i == num_calls - 1]
    return [range(start, end) for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def model_levels(alpha: float, sigma: float) -> tuple[float, float]:
    """(alpha, sigma) of the network's input for a loop sample at (alpha, sigma): the
    variance-preserving sample at the same noise-to-signal ratio."""
    norm = (alpha**2 + sigma**2) ** 0.5
    return alpha / norm, sigma / norm


def _accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters
