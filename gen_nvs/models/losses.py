"""Losses for the renderer's outputs.

Dimension legend: `...` any leading dimensions (e.g. b, t, h, w pixels).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


class ConfidencePointLoss:
    """Confidence-weighted point loss, the aleatoric form of DUSt3R and VGGT.

    Per valid pixel: `conf * ||p - p_gt|| - alpha * log(conf)`. The network may lower the
    confidence where it cannot be right, at the price of the log term, so conf learns
    how far off each point is. Reduced over valid pixels by their mean (the default, so
    the scale does not depend on image size or mask coverage) or their sum.
    """

    def __init__(self, *, alpha: float = 0.2, reduction: Literal["mean", "sum"] = "mean") -> None:
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.alpha = alpha
        self.reduction = reduction

    def __call__(self, points: Tensor, conf: Tensor, points_gt: Tensor, valid: Tensor) -> Tensor:
        """points, points_gt [..., 3]; conf [...] (> 0); valid [...] bool -> scalar loss.

        With no valid pixel the loss is 0 (still attached to the graph).
        """
        if points.shape != points_gt.shape or points.shape[-1] != 3:
            raise ValueError(
                f"points and points_gt must both be [..., 3], got {list(points.shape)} and "
                f"{list(points_gt.shape)}"
            )
        if conf.shape != points.shape[:-1] or valid.shape != points.shape[:-1]:
            raise ValueError(
                f"conf and valid must be {list(points.shape[:-1])}, got {list(conf.shape)} "
                f"and {list(valid.shape)}"
            )
        if valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool mask, got {valid.dtype}")
        # Invalid pixels may hold NaN/inf ground truth; masking only the loss would still
        # send NaN gradients through them, so their target becomes the prediction itself.
        gt = torch.where(valid[..., None], points_gt, points.detach())
        error = torch.linalg.vector_norm(points - gt, dim=-1)  # [...]
        per_pixel = conf * error - self.alpha * torch.log(conf)
        total = torch.where(valid, per_pixel, torch.zeros_like(per_pixel)).sum()
        if self.reduction == "sum":
            return total
        return total / valid.sum().clamp(min=1)
