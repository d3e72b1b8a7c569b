"""Losses for the renderer's outputs and the diffusion decoder's predictions.

Dimension legend: `...` any leading dimensions (e.g. b, t, h, w pixels); `ch` channels of
a pixel (3 for points); for the denoising loss, `b...` the sample dimensions (e.g. b, t)
that own one noise level each.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from samplers.denoiser import (
    PredictionType,
    check_prediction_type,
    min_snr_weights,
    prediction_target,
)


class ConfidencePointLoss:
    """Confidence-weighted point loss, the aleatoric form of DUSt3R and VGGT.

    Per valid pixel: `conf * ||p - p_gt|| - alpha * log(conf)`, for points [..., 3] or
    any other per-pixel vector (depth [..., 1]: `conf * |d - d_gt| - alpha * log(conf)`).
    The network may lower the confidence where it cannot be right, at the price of the
    log term, so conf learns how far off each point is. Reduced over valid pixels by their
    mean (the default, so the scale does not depend on image size or mask coverage) or
    their sum.

    With `gradient` > 0, VGGT's gradient term joins it: `gradient * conf * ||dp - dp_gt||`
    for the differences dp of horizontally and vertically neighbouring pixels (inputs
    [..., h, w, ch]; conf of the first pixel of each pair; pairs with both pixels valid,
    reduced as the pixels are): it weighs the shape of the map (relative positions,
    edges) apart from where the map sits as a whole.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.2,
        reduction: Literal["mean", "sum"] = "mean",
        gradient: float = 0.0,
    ) -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if gradient < 0:
            raise ValueError(f"gradient must be >= 0, got {gradient}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.alpha = alpha
        self.reduction = reduction
        self.gradient = gradient

    def __call__(self, points: Tensor, conf: Tensor, points_gt: Tensor, valid: Tensor) -> Tensor:
        """points, points_gt [..., ch] (ch = 3 for points); conf [...] (> 0); valid [...]
        bool -> scalar loss.

        With no valid pixel the loss is 0 (still attached to the graph).
        """
        if points.shape != points_gt.shape or points.ndim < 2:
            raise ValueError(
                f"points and points_gt must both be [..., ch] of one shape, got "
                f"{list(points.shape)} and {list(points_gt.shape)}"
            )
        if conf.shape != points.shape[:-1] or valid.shape != points.shape[:-1]:
            raise ValueError(
                f"conf and valid must be {list(points.shape[:-1])}, got {list(conf.shape)} "
                f"and {list(valid.shape)}"
            )
        if valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool mask, got {valid.dtype}")
        if self.gradient > 0 and points.ndim < 3:
            raise ValueError(
                f"the gradient term needs maps [..., h, w, ch], got {list(points.shape)}"
            )
        # Invalid pixels may hold NaN/inf ground truth; masking only the loss would still
        # send NaN gradients through them, so their target becomes the prediction itself.
        gt = torch.where(valid[..., None], points_gt, points.detach())
        error = torch.linalg.vector_norm(points - gt, dim=-1)  # [...]
        per_pixel = conf * error - self.alpha * torch.log(conf)
        total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
        loss = total if self.reduction == "sum" else total / valid.sum().clamp(min=1)
        if self.gradient > 0:
            loss = loss + self.gradient * self._gradient_term(points, gt, conf, valid)
        return loss

    def _gradient_term(self, points: Tensor, gt: Tensor, conf: Tensor, valid: Tensor) -> Tensor:
        """conf * ||dp - dp_gt|| over neighbouring valid pairs along w, then h."""
        total, pairs = points.new_zeros(()), valid.new_zeros((), dtype=torch.long)
        for dim in (-2, -3):  # w, then h, of [..., h, w, ch]
            n = points.shape[dim]
            step = points.narrow(dim, 1, n - 1) - points.narrow(dim, 0, n - 1)
            step_gt = gt.narrow(dim, 1, n - 1) - gt.narrow(dim, 0, n - 1)
            both = valid.narrow(dim + 1, 1, n - 1) & valid.narrow(dim + 1, 0, n - 1)
            error = conf.narrow(dim + 1, 0, n - 1) * torch.linalg.vector_norm(
                step - step_gt, dim=-1
            )
            total = total + torch.where(both, error, torch.zeros_like(error)).sum()
            pairs = pairs + both.sum()
        return total if self.reduction == "sum" else total / pairs.clamp(min=1)


class DenoisingLoss:
    """Mean squared error of a denoiser's prediction against its target.

    The loss is schedule-agnostic: the caller passes each sample's noise level (alpha,
    sigma) with `x_t = alpha * x0 + sigma * noise` (from a discrete schedule,
    alpha = sqrt(alphas_cumprod[t]) and sigma = sqrt(1 - alphas_cumprod[t])). The target
    is what a perfect network of `prediction_type` predicts
    (`samplers.denoiser.prediction_target`). Per sample the squared error is averaged over
    its valid elements, then weighted, then averaged over samples.

    weighting "min_snr": Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training
    via Min-SNR Weighting Strategy"), in the prediction type's scale
    (`samplers.denoiser.min_snr_weights`).
    """

    def __init__(
        self,
        *,
        prediction_type: PredictionType,
        weighting: Literal["none", "min_snr"] = "none",
        min_snr_gamma: float = 5.0,
    ) -> None:
        check_prediction_type(prediction_type)
        if weighting not in ("none", "min_snr"):
            raise ValueError(f"weighting must be 'none' or 'min_snr', got {weighting!r}")
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {min_snr_gamma}")
        self.prediction_type = prediction_type
        self.weighting = weighting
        self.min_snr_gamma = min_snr_gamma

    def target(self, x0: Tensor, noise: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """What a perfect prediction is: x0, noise [b..., ...]; alpha, sigma [b...]."""
        alpha, sigma = _per_sample(alpha, x0), _per_sample(sigma, x0)
        return prediction_target(self.prediction_type, x0, noise, alpha, sigma)

    def weights(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Per-sample loss weights [b...] for noise levels alpha, sigma [b...]."""
        if self.weighting == "none":
            return torch.ones_like(alpha)
        return min_snr_weights(self.prediction_type, alpha, sigma, self.min_snr_gamma)

    def __call__(
        self,
        prediction: Tensor,
        x0: Tensor,
        noise: Tensor,
        alpha: Tensor,
        sigma: Tensor,
        valid: Tensor | None = None,
    ) -> Tensor:
        """prediction, x0, noise [b..., ...]; alpha, sigma [b...] -> scalar loss.

        valid: optional bool mask broadcastable to the prediction (e.g. [b, t, 1, h, w]);
        invalid elements (say, points without ground truth, which may hold NaN) are left
        out. A sample without valid elements contributes 0.
        """
        if prediction.shape != x0.shape or prediction.shape != noise.shape:
            raise ValueError(
                f"prediction, x0 and noise must have one shape, got {list(prediction.shape)}, "
                f"{list(x0.shape)} and {list(noise.shape)}"
            )
        sample_shape = prediction.shape[: alpha.ndim]
        if alpha.shape != sigma.shape or alpha.shape != sample_shape or alpha.ndim == 0:
            raise ValueError(
                f"alpha and sigma must be the prediction's sample dimensions {list(sample_shape)}"
                f", got {list(alpha.shape)} and {list(sigma.shape)}"
            )
        target = self.target(x0, noise, alpha, sigma)
        dims = tuple(range(alpha.ndim, prediction.ndim))
        if valid is None:
            per_sample = (prediction - target).square().mean(dim=dims)
        else:
            if valid.dtype != torch.bool:
                raise ValueError(f"valid must be a bool mask, got {valid.dtype}")
            valid = valid.expand_as(prediction)
            # Masking only the loss would still send NaN gradients through invalid targets.
            target = torch.where(valid, target, prediction.detach())
            count = valid.sum(dim=dims).clamp(min=1)
            per_sample = (prediction - target).square().sum(dim=dims) / count
        return (self.weights(alpha, sigma) * per_sample).mean()


def _per_sample(level: Tensor, like: Tensor) -> Tensor:
    """Noise levels [b...] -> [b..., 1, ...], broadcastable against `like`."""
    return level.reshape(*level.shape, *[1] * (like.ndim - level.ndim))
