"""Classifier-free guidance on the network's prediction.

All functions work on predictions of any `prediction_type` (epsilon, v or x0) of shape
[N, ...]; statistics are taken per sample over every dimension but the first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def check_guidance(scale: float, rescale: float, interval: tuple[float, float] | None) -> None:
    """Raise ValueError for a scale that is not a finite number >= 0, a rescale outside
    [0, 1] (NaN included) or an interval that is not 0 <= low < high (NaN fails it).

    The interval's high may be infinite: the noise-to-signal ratio of a zero terminal SNR
    schedule's first step is, and (low, inf] guides it too.
    """
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"guidance scale must be a finite number >= 0, got {scale}")
    if not 0 <= rescale <= 1:
        raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
    if interval is not None:
        low, high = interval
        if not 0 <= low < high:
            raise ValueError(
                f"guidance interval must be (low, high) with 0 <= low < high, got {interval}"
            )


def cfg(cond_pred: Tensor, uncond_pred: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond).

    scale 0 gives the unconditional prediction, 1 the conditional one, > 1 extrapolates.
    """
    check_guidance(scale, 0.0, None)
    if cond_pred.shape != uncond_pred.shape:
        raise ValueError(
            f"conditional and unconditional predictions differ in shape: "
            f"{tuple(cond_pred.shape)} vs {tuple(uncond_pred.shape)}"
        )
    return uncond_pred + scale * (cond_pred - uncond_pred)


def rescale_guidance(guided: Tensor, cond_pred: Tensor, phi: float) -> Tensor:
    """Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
    are Flawed", Sec. 3.4).

    Large guidance scales inflate the prediction's standard deviation (over-exposure); the
    guided prediction is rescaled to the conditional prediction's per-sample std and blended
    back with weight `phi`: phi = 0 returns `guided` unchanged, phi = 1 the fully rescaled one.
    """
    check_guidance(1.0, phi, None)
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (cond_pred.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return torch.lerp(guided, rescaled, phi)


def in_guidance_interval(sigma: float, interval: tuple[float, float] | None) -> bool:
    """Whether guidance applies at noise level `sigma` (Kynkäänniemi et al. 2024, "Applying
    Guidance in a Limited Interval Improves Sample and Distribution Quality").

    `sigma` is the noise-to-signal ratio sqrt(1 - alpha_bar) / sqrt(alpha_bar) of the step
    (EDM's sigma); the interval is half-open, (low, high]. No interval: always.
    """
    if interval is None:
        return True
    low, high = interval
    return low < sigma <= high


def guided_prediction(
    predict: Callable[[bool], Tensor],
    scale: float,
    rescale: float = 0.0,
) -> Tensor:
    """The guided prediction from `predict(conditional) -> [N, ...]`.

    With scale == 1 only the conditional branch is evaluated and returned as is, so
    unguided sampling costs one network call per step.
    """
    check_guidance(scale, rescale, None)
    cond_pred = predict(True)
    if scale == 1:
        return cond_pred
    guided = cfg(cond_pred, predict(False), scale)
    return rescale_guidance(guided, cond_pred, rescale)
