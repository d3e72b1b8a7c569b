"""The denoiser: a network together with what its output means (k-diffusion's `Denoiser`).

The network is `model_fn(x_t, t, conditional)` and knows no noise schedule. `Denoiser`
adds what it was trained as: its prediction type and the training noise schedule
(`alphas_cumprod`). Samplers see only a `Denoiser`, and the schedulers they drive are
built and checked from it (`samplers.schedulers.scheduler_for`).

This module is the one place that knows the prediction types. For a variance-preserving
input `x_t = alpha * x0 + sigma * eps` (alpha^2 + sigma^2 = 1):

- "epsilon": the network predicts eps, and x0 = (x_t - sigma * eps) / alpha;
- "v_prediction": v = alpha * eps - sigma * x0, and x0 = alpha * x_t - sigma * v;
- "sample": x0 itself.

Dimension legend: `n` samples; `...` any further dimensions (c, h, w); `b...` the
leading dimensions that own one noise level each (for a loss, e.g. b, t).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from torch import Tensor

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)

ModelFn = Callable[[Tensor, Tensor, bool], Tensor]
"""model_fn(x_t [n, ...], t [n], conditional) -> prediction [n, ...]."""


def check_prediction_type(prediction_type: str) -> None:
    """Raise ValueError unless `prediction_type` is one of `PREDICTION_TYPES`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )


def prediction_to_x0(
    prediction_type: str,
    prediction: Tensor,
    x_t: Tensor,
    alpha: float | Tensor,
    sigma: float | Tensor,
) -> Tensor:
    """x0 [n, ...] from a `prediction` [n, ...] of type `prediction_type` for the input
    `x_t = alpha * x0 + sigma * eps` [n, ...]; alpha, sigma scalars or broadcastable."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return (x_t - sigma * prediction) / alpha
    if prediction_type == "v_prediction":
        return alpha * x_t - sigma * prediction
    return prediction


def prediction_target(
    prediction_type: str,
    x0: Tensor,
    noise: Tensor,
    alpha: float | Tensor,
    sigma: float | Tensor,
) -> Tensor:
    """What a perfect network of type `prediction_type` predicts for the input
    `alpha * x0 + sigma * noise` (the training loss target): noise, `alpha * noise -
    sigma * x0` or x0, [n, ...]; alpha, sigma scalars or broadcastable."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return alpha * noise - sigma * x0
    return x0


def min_snr_weights(prediction_type: str, alpha: Tensor, sigma: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma loss weights [b...] (Hang et al. 2023) for a prediction of type
    `prediction_type` at noise levels alpha, sigma [b...].

    The x0-loss weight min(SNR, gamma), SNR = alpha^2 / sigma^2, divided by how much
    larger the prediction's squared error is than x0's: SNR for epsilon, SNR + 1 for v.
    Clean samples (sigma 0) get weight 0 for epsilon and v, pure noise (alpha 0) weight 1
    for epsilon.
    """
    check_prediction_type(prediction_type)
    snr = (alpha / sigma) ** 2
    if prediction_type == "epsilon":  # min(snr, gamma) / snr, finite at snr 0
        return (gamma / snr).clamp(max=1)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped


class Denoiser:
    """A network with its prediction type and training noise schedule.

    model_fn: the network, `model_fn(x_t [n, ...], t [n], conditional)`, returning its
        prediction [n, ...] of type `prediction_type` for the variance-preserving input
        `x_t` at the (training-scale, possibly fractional) timesteps `t`;
        `conditional=False` drops the condition (for guidance).
    prediction_type: one of `PREDICTION_TYPES`.
    alphas_cumprod: [T] the training schedule: timestep t noises x0 to
        `sqrt(a_t) x0 + sqrt(1 - a_t) eps`. Schedulers must run this schedule.
    """

    def __init__(
        self, model_fn: ModelFn, prediction_type: PredictionType, alphas_cumprod: Tensor
    ) -> None:
        check_prediction_type(prediction_type)
        if alphas_cumprod.ndim != 1 or len(alphas_cumprod) < 1:
            raise ValueError(
                f"alphas_cumprod must be [num_train_timesteps], got {list(alphas_cumprod.shape)}"
            )
        self.model_fn = model_fn
        self.prediction_type = prediction_type
        self.alphas_cumprod = alphas_cumprod

    def __call__(self, x_t: Tensor, t: Tensor, conditional: bool = True) -> Tensor:
        """The network's prediction [n, ...] (of type `prediction_type`, the type the
        schedulers built for this denoiser expect) for x_t [n, ...] at timesteps t [n]."""
        prediction = self.model_fn(x_t, t, conditional)
        if prediction.shape != x_t.shape:
            raise ValueError(
                f"model_fn returned shape {tuple(prediction.shape)}, expected {tuple(x_t.shape)}"
            )
        return prediction

    def to_x0(
        self, prediction: Tensor, x_t: Tensor, alpha: float | Tensor, sigma: float | Tensor
    ) -> Tensor:
        """x0 [n, ...] from this network's `prediction` [n, ...] for the input
        `x_t = alpha * x0 + sigma * eps` (see `prediction_to_x0`)."""
        return prediction_to_x0(self.prediction_type, prediction, x_t, alpha, sigma)
