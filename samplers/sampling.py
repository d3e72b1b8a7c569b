"""The sampling loop: seeded, guided diffusion sampling with RePaint-style completion.

Dimension legend: `n` samples, `c` channels, `h`/`w` image height/width.

Randomness: every sample owns a CPU `torch.Generator` seeded with its seed. It draws the
sample's initial noise and every later draw, in the same order whatever the batch: the
known-region noise (RePaint), the stochastic scheduler steps (DDPM, DDIM with eta > 0,
ancestral, SDE) and the resampling noise. Diffusers' `step(..., generator=...)` accepts a
list of generators, one per batch row (`randn_tensor` draws row k from generator k), so one
scheduler instance serves the whole batch; scheduler state (step index, multistep history)
is shared, which is right since every sample runs the same timesteps. Noise is drawn on the
CPU so a seed gives the same sample on any device, up to the network's numerics.
"""

from __future__ import annotations

import copy
import enum
import functools
import inspect
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import SchedulerMixin
from torch import Tensor

from samplers.denoiser import Denoiser
from samplers.guidance import check_guidance, guided_prediction, in_guidance_interval
from samplers.schedulers import (
    DEFAULT_SCHEDULER,
    add_noise,
    model_levels,
    noise_levels,
    scheduler_for,
    set_steps,
    solver_steps,
)

# The largest seed of a `torch.Generator`; it takes negative ones too, but folds them onto
# large ones (-1 is 2**64 - 1), so seeds are kept to [0, MAX_SEED].
MAX_SEED = 2**64 - 1


class SamplingCancelled(Exception):
    """Sampling was cancelled by the step callback; `step` is the last finished step."""

    def __init__(self, step: int | None = None):
        super().__init__("sampling cancelled" + ("" if step is None else f" after step {step}"))
        self.step = step


class Signal(enum.Enum):
    """What a step callback may return to control sampling."""

    STOP = "stop"


STOP = Signal.STOP


@dataclass(frozen=True)
class StepInfo:
    """What the step callback sees after each solver step, for previews and progress.

    `timestep` and `sigma` are those the step started at (sigma: noise-to-signal ratio);
    `x_t` [n, c, h, w] is the network's input there (variance preserving:
    alpha * x0 + sigma_vp * eps, whatever the scheduler's own sample space) and `x0_pred`
    [n, c, h, w] the clean sample the guided prediction implies.
    """

    step: int
    num_steps: int
    timestep: float
    sigma: float
    x_t: Tensor
    x0_pred: Tensor


StepCallback = Callable[[StepInfo], Signal | None]


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    *,
    shape: tuple[int, int, int],
    num_samples: int = 1,
    seeds: int | Sequence[int] = 0,
    scheduler: str | SchedulerMixin = DEFAULT_SCHEDULER,
    steps: int = 20,
    eta: float = 0.0,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    known: Tensor | None = None,
    mask: Tensor | None = None,
    resample_jumps: int = 0,
    callback: StepCallback | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw `num_samples` samples of shape `shape` (c, h, w) -> [n, c, h, w].

    denoiser: the network with its prediction type and training schedule; called as
        `denoiser(x_t, t, conditional)` on the variance-preserving input `x_t` [n, c, h, w]
        at the scheduler's timesteps `t` [n] (integer-valued except for fractional
        Euler/Heun spacings), `conditional=False` for guidance's unconditional branch.
        Runs without autograd.
    seeds: one seed per sample, or a base seed `s` giving sample k the seed `s + k`, all in
        [0, MAX_SEED]. Sample k depends only on its seed, not on `num_samples`.
    scheduler: a name from `SCHEDULER_NAMES` (built for the denoiser's prediction type,
        default options otherwise) or a scheduler from `build_scheduler`, which must expect
        the denoiser's prediction type and run its schedule (`scheduler_for`); it is
        copied, never modified.
    steps: solver steps (Heun evaluates the network about twice per step).
    eta: DDIM's stochasticity (0: deterministic DDIM, 1: DDPM-like); other schedulers only
        accept 0.
    guidance_scale: classifier-free guidance scale; 1 evaluates the conditional branch only.
    guidance_rescale: Lin et al.'s rescale factor phi in [0, 1].
    guidance_interval: (low, high] bounds on the noise-to-signal ratio sigma outside which
        guidance is off (Kynkäänniemi et al. 2024); None: guide at every step.
    known, mask: RePaint-style completion. `known` [c, h, w] or [n, c, h, w] is the image to
        keep where `mask` ([h, w] or [n, 1, h, w], in [0, 1], soft edges allowed) is 1. Before
        every network call the sample is blended, by `mask`, with `known` noised to the
        current level (with the sample's generator), and the result gets `known` exactly
        there. None: sample freely (extrapolation).
    resample_jumps: RePaint resampling (jump length 1), with a mask only: after each step,
        re-noise back to the step's starting level and redo the step, this many times. Each
        redo costs one more step of network calls.
    callback: called after each step with a `StepInfo`; returning `STOP` (or raising
        `SamplingCancelled`) cancels.

    Raises:
        SamplingCancelled: the callback cancelled; nothing is returned.
        ValueError: invalid arguments, naming what was expected and what was got.
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (channels, height, width), all >= 1, got {tuple(shape)}")
    seed_list = _seed_list(seeds, num_samples)
    check_guidance(guidance_scale, guidance_rescale, guidance_interval)
    known, mask = _completion_inputs(known, mask, shape, num_samples, device, dtype)
    if resample_jumps < 0:
        raise ValueError(f"resample_jumps must be >= 0, got {resample_jumps}")
    if resample_jumps > 0 and mask is None:
        raise ValueError(f"resample_jumps={resample_jumps} needs a mask, got mask=None")

    scheduler = set_steps(scheduler_for(denoiser, scheduler), steps, device)
    generators = [torch.Generator().manual_seed(seed) for seed in seed_list]
    loop = _Loop(
        denoiser=denoiser,
        generators=generators,
        step_kwargs=_step_kwargs(scheduler, eta, generators),
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        guidance_interval=guidance_interval,
        known=known,
        mask=mask,
    )

    x = loop.noise((num_samples, *shape), device, dtype) * scheduler.init_noise_sigma
    alpha, sigma = noise_levels(scheduler)
    levels = list(zip(alpha.tolist(), sigma.tolist(), strict=True))  # (alpha, sigma) per call
    step_calls = solver_steps(scheduler)
    for step, calls in enumerate(step_calls):
        for _ in range(resample_jumps):
            x = loop.solver_step(copy.deepcopy(scheduler), calls, x)[0]
            x = loop.renoise(x, levels[calls[-1] + 1], levels[calls[0]])
        x, first_call = loop.solver_step(scheduler, calls, x)
        if callback is not None:
            info = StepInfo(step, len(step_calls), *first_call)
            if callback(info) is STOP:
                raise SamplingCancelled(step)
    if mask is not None:
        x = torch.lerp(x, known, mask)
    return x


@dataclass
class _Loop:
    """What stays fixed during one `sample` run."""

    denoiser: Denoiser
    generators: list[torch.Generator]
    step_kwargs: dict
    guidance_scale: float
    guidance_rescale: float
    guidance_interval: tuple[float, float] | None
    known: Tensor | None  # [n, c, h, w]
    mask: Tensor | None  # [n, 1, h, w]

    def noise(self, shape: tuple[int, ...], device, dtype) -> Tensor:
        """Standard normal [n, ...], row k from sample k's generator."""
        rows = [torch.randn(shape[1:], generator=g) for g in self.generators]
        return torch.stack(rows).to(device=device, dtype=dtype)

    def renoise(
        self, x: Tensor, level_from: tuple[float, float], level_to: tuple[float, float]
    ) -> Tensor:
        """Forward diffusion q(x_to | x_from) from a lower noise level to a higher one, with
        levels given as (alpha, sigma) of the loop's sample."""
        (alpha_from, sigma_from), (alpha_to, sigma_to) = level_from, level_to
        ratio = alpha_to / alpha_from
        std = max(sigma_to**2 - (ratio * sigma_from) ** 2, 0.0) ** 0.5
        return ratio * x + std * self.noise(x.shape, x.device, x.dtype)

    def solver_step(
        self, scheduler: SchedulerMixin, calls: range, x: Tensor
    ) -> tuple[Tensor, tuple[float, float, Tensor, Tensor]]:
        """Run the scheduler calls of one solver step from sample `x` [n, c, h, w].

        Returns the new sample and, for the step's first call, (timestep, sigma, network
        input, x0 prediction).
        """
        alpha, sigma = noise_levels(scheduler)
        first_call = None
        for i in calls:
            if self.mask is not None:
                known_t = add_noise(
                    scheduler, self.known, self.noise(x.shape, x.device, x.dtype), i
                )
                x = torch.lerp(x, known_t, self.mask)
            t = scheduler.timesteps[i]
            x_in = scheduler.scale_model_input(x, t)
            alpha_in, sigma_in = model_levels(alpha[i].item(), sigma[i].item())
            noise_to_signal = sigma_in / alpha_in if alpha_in > 0 else math.inf
            guided = in_guidance_interval(noise_to_signal, self.guidance_interval)
            prediction = guided_prediction(
                functools.partial(self.denoiser, x_in, t.repeat(x_in.shape[0])),
                self.guidance_scale if guided else 1.0,
                self.guidance_rescale,
            )
            if first_call is None:
                x0_pred = self.denoiser.to_x0(prediction, x_in, alpha_in, sigma_in)
                first_call = (t.item(), noise_to_signal, x_in, x0_pred)
            x = scheduler.step(prediction, t, x, **self.step_kwargs).prev_sample
        return x, first_call


def check_seeds(first: int, count: int = 1, name: str = "seed") -> None:
    """ValueError, naming the option `name`, unless the seeds `first` ... `first + count - 1`
    all lie in [0, MAX_SEED]."""
    if 0 <= first <= MAX_SEED - (count - 1):
        return
    if count == 1:
        raise ValueError(
            f"{name} must be in [0, 2**64 - 1] (a torch generator's seeds), got {first}"
        )
    raise ValueError(
        f"{name} must be in [0, 2**64 - {count}]: the {count} samples use seeds {name} to "
        f"{name} + {count - 1}, and a torch generator's seeds are in [0, 2**64 - 1]; got {first}"
    )


def check_eta(eta: float) -> None:
    """ValueError unless DDIM's `eta` is a finite number >= 0."""
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")


def _seed_list(seeds: int | Sequence[int], num_samples: int) -> list[int]:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not isinstance(seeds, Sequence):
        first = operator.index(seeds)
        check_seeds(first, num_samples)
        return [first + k for k in range(num_samples)]
    seeds = [operator.index(seed) for seed in seeds]
    if len(seeds) != num_samples:
        raise ValueError(f"expected {num_samples} seeds (one per sample), got {len(seeds)}")
    for seed in seeds:
        check_seeds(seed)
    return seeds


def _completion_inputs(
    known: Tensor | None,
    mask: Tensor | None,
    shape: tuple[int, int, int],
    num_samples: int,
    device,
    dtype,
) -> tuple[Tensor | None, Tensor | None]:
    """`known` as [n, c, h, w] and `mask` as [n, 1, h, w], checked; or (None, None)."""
    if (known is None) != (mask is None):
        given = "known" if mask is None else "mask"
        raise ValueError(f"completion needs both known and mask, got {given} only")
    if known is None:
        return None, None
    c, h, w = shape
    if tuple(known.shape) not in ((c, h, w), (num_samples, c, h, w)):
        raise ValueError(
            f"known must be {(c, h, w)} or {(num_samples, c, h, w)}, got {tuple(known.shape)}"
        )
    if tuple(mask.shape) not in ((h, w), (num_samples, 1, h, w)):
        raise ValueError(
            f"mask must be {(h, w)} or {(num_samples, 1, h, w)}, got {tuple(mask.shape)}"
        )
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError(
            f"mask values must be in [0, 1], got [{mask.min().item()}, {mask.max().item()}]"
        )
    known = known.to(device=device, dtype=dtype).expand(num_samples, c, h, w)
    mask = mask.to(device=device, dtype=dtype).expand(num_samples, 1, h, w)
    return known, mask


def _step_kwargs(scheduler: SchedulerMixin, eta: float, generators: list[torch.Generator]) -> dict:
    """Keyword arguments for `scheduler.step`: the per-sample generators where it draws
    noise, and DDIM's eta."""
    check_eta(eta)
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {"generator": generators} if "generator" in accepted else {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    elif eta != 0:
        raise ValueError(f"eta applies to DDIM only, got eta={eta} for {type(scheduler).__name__}")
    return kwargs
