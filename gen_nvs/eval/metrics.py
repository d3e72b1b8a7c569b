"""Image metrics for novel view synthesis: PSNR, SSIM, LPIPS, sharpness, distances.

Images are float in [0, 1], [..., 3, h, w]; every metric returns one value per image,
[...]. Each metric takes an optional region `mask` [..., h, w] (bool, broadcast over
the leading dimensions) and then measures the prediction on that region only:

- PSNR and RMS distance use the masked pixels' squared errors;
- SSIM, LPIPS and sharpness are image filters whose windows reach past the region, so
  the prediction outside the mask is first replaced by the reference; the per-pixel
  map (SSIM map, LPIPS `spatial` map, gradient magnitude) is then averaged over the mask.

A region metric therefore depends on the prediction inside the region alone. An empty
region gives NaN. `mask_iou` compares two region masks.

Full-image PSNR and SSIM follow the LVSM / LagerNVS evaluation protocol: per-image MSE
over all channels and pixels, PSNR = -10 log10(MSE) (data range 1; +inf for a perfect
prediction unless capped by `max_db`); SSIM as `skimage.metrics.structural_similarity(
..., win_size=11, gaussian_weights=True, channel_axis=0, data_range=1.0)`: 11x11
Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, sample-covariance normalisation
(121 / 120), the map averaged over the pixels at least 5 from the border, then over
channels. LPIPS is VGG v0.1 on inputs in [0, 1] (see `gen_nvs.models.perceptual`).

Dimension legend: `n` samples, `...` any leading dimensions, `h`/`w` image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lpips as lpips_package
import torch
import torch.nn.functional as F
from torch import Tensor

from gen_nvs.models.perceptual import lpips_distance

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_images(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.ndim < 3 or pred.shape[-3] != 3:
        raise ValueError(
            f"images must both be [..., 3, h, w], got {list(pred.shape)} and {list(target.shape)}"
        )


def _check_mask(mask: Tensor, images: Tensor) -> Tensor:
    """mask [..., h, w] bool, broadcast to the images' leading dimensions."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    hw = tuple(images.shape[-2:])
    if tuple(mask.shape[-2:]) != hw:
        raise ValueError(f"mask must be [..., {hw[0]}, {hw[1]}], got {list(mask.shape)}")
    return mask.expand(*images.shape[:-3], *hw)


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of values [..., h, w] over the last two dimensions (only where `mask`);
    NaN where the mask is empty."""
    if mask is None:
        return values.mean((-2, -1))
    mask = mask.expand_as(values)
    return torch.where(mask, values, torch.zeros_like(values)).sum((-2, -1)) / mask.sum((-2, -1))


def composite(pred: Tensor, reference: Tensor, mask: Tensor | None) -> Tensor:
    """pred inside the mask, reference elsewhere (pred itself when mask is None)."""
    if mask is None:
        return pred
    return torch.where(_check_mask(mask, pred)[..., None, :, :], pred, reference)


# --------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------


def mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over channels and (masked) pixels: [..., 3, h, w] -> [...]."""
    _check_images(pred, target)
    if mask is not None:
        mask = _check_mask(mask, pred)
    error = ((pred.float() - target.float()) ** 2).mean(-3)  # (..., h, w)
    return masked_mean(error, mask)


def psnr(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, max_db: float | None = None
) -> Tensor:
    """PSNR in dB (data range 1): -10 log10(MSE) -> [...]. A perfect prediction gives
    +inf, or `max_db` when given (every value is clamped to it)."""
    value = -10 * torch.log10(mse(pred, target, mask))
    return value if max_db is None else value.clamp(max=max_db)


def rms_distance(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Root mean square pixel difference, sqrt(MSE) -> [...] (a distance, not a score)."""
    return mse(a, b, mask).sqrt()


# --------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    window = torch.exp(-0.5 * (x / sigma) ** 2)
    return window / window.sum()


def _pad_symmetric(x: Tensor, r: int) -> Tensor:
    """Pad the last two dimensions by mirroring, edge included (SciPy's 'reflect')."""
    x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], -2)
    return torch.cat([x[..., :r].flip(-1), x, x[..., -r:].flip(-1)], -1)


def _gaussian_filter(x: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian blur of x [n, c, h, w], same size, symmetric borders."""
    c, r = x.shape[1], window.shape[0] // 2
    x = _pad_symmetric(x, r)
    x = F.conv2d(x, window.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, window.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim_map(pred: Tensor, target: Tensor, *, sample_covariance: bool = True) -> Tensor:
    """The SSIM map, averaged over channels: [..., 3, h, w] -> [..., h, w].

    Computed in float64 with symmetric borders, exactly as skimage's `full=True` map.
    `sample_covariance=False` gives the population covariance of Wang et al. (2004) and
    pytorch-msssim instead of skimage's default.
    """
    _check_images(pred, target)
    h, w = pred.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} pixels, got {h}x{w}")
    leading = pred.shape[:-3]
    x = pred.reshape(-1, 3, h, w).double()
    y = target.reshape(-1, 3, h, w).double()
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, x.device, x.dtype)
    stats = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y], 1), window)
    mu_x, mu_y, xx, yy, xy = stats.split(3, dim=1)
    norm = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1) if sample_covariance else 1.0
    var_x, var_y = norm * (xx - mu_x**2), norm * (yy - mu_y**2)
    cov = norm * (xy - mu_x * mu_y)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(1).reshape(*leading, h, w)


def ssim(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, *, sample_covariance: bool = True
) -> Tensor:
    """SSIM per image -> [...] (float32).

    Without a mask: the protocol's SSIM, the map's mean over pixels at least 5 from the
    border. With a mask: the map of the composite prediction over the masked pixels,
    border pixels included (unseen regions often lie at the border).
    """
    full = ssim_map(composite(pred, target, mask), target, sample_covariance=sample_covariance)
    if mask is None:
        r = SSIM_WINDOW // 2
        return full[..., r:-r, r:-r].mean((-2, -1)).float()
    return masked_mean(full, _check_mask(mask, pred).to(full.device)).float()


# --------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------


def lpips(
    pred: Tensor,
    target: Tensor,
    net: lpips_package.LPIPS,
    mask: Tensor | None = None,
    *,
    chunk_size: int = 16,
) -> Tensor:
    """LPIPS (lower is better) per image -> [...], `chunk_size` images at a time.

    `net` comes from `gen_nvs.models.perceptual.load_lpips`. With a mask: the spatial
    LPIPS map of the composite prediction, averaged over the masked pixels.
    """
    _check_images(pred, target)
    leading, hw = pred.shape[:-3], pred.shape[-2:]
    x = composite(pred, target, mask).reshape(-1, 3, *hw).float()
    y = target.reshape(-1, 3, *hw).float()
    m = None if mask is None else _check_mask(mask, pred).reshape(-1, *hw)
    values = []
    for start in range(0, x.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        if m is None:
            values.append(lpips_distance(net, x[part], y[part]))
        else:
            distance = lpips_distance(net, x[part], y[part], spatial=True)  # (k, h, w)
            values.append(masked_mean(distance, m[part]))
    return torch.cat(values).reshape(leading)


# --------------------------------------------------------------------------------------
# Sharpness and diversity
# --------------------------------------------------------------------------------------


def gradient_magnitude(images: Tensor) -> Tensor:
    """Per-pixel image gradient magnitude [..., 3, h, w] -> [..., h, w]: forward
    differences (0 past the last row / column), RMS over channels."""
    dx = F.pad(images[..., :, 1:] - images[..., :, :-1], (0, 1))
    dy = F.pad(images[..., 1:, :] - images[..., :-1, :], (0, 0, 0, 1))
    return (dx**2 + dy**2).mean(-3).sqrt()


def sharpness(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean gradient magnitude of the prediction relative to the reference's -> [...].

    1 matches the reference's detail; below 1 is blurrier (a regression model's
    averaged guess), above 1 holds more edges or noise than the reference. NaN where
    the reference region is flat.
    """
    _check_images(pred, target)
    if mask is not None:
        mask = _check_mask(mask, pred)
    own = masked_mean(gradient_magnitude(composite(pred, target, mask).float()), mask)
    reference = masked_mean(gradient_magnitude(target.float()), mask)
    return torch.where(reference > 0, own / reference, torch.full_like(own, math.nan))


def pairwise_mean(samples: Tensor, distance: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Mean of distance(samples[i], samples[j]) over all pairs i < j: [n, ...] -> the
    distance's shape. Needs n >= 2."""
    n = samples.shape[0]
    if n < 2:
        raise ValueError(f"pairwise_mean needs at least 2 samples, got {n}")
    first, second = torch.triu_indices(n, n, offset=1, device=samples.device)
    return distance(samples[first], samples[second]).mean(0)


# --------------------------------------------------------------------------------------
# Region masks
# --------------------------------------------------------------------------------------


def mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of two bool masks [..., h, w] -> [...] in [0, 1].

    Two empty masks agree perfectly: their IoU is 1 (not 0 / 0).
    """
    if a.dtype != torch.bool or b.dtype != torch.bool or a.shape != b.shape:
        raise ValueError(
            f"masks must both be bool [..., h, w] of one shape, got {a.dtype} {list(a.shape)} "
            f"and {b.dtype} {list(b.shape)}"
        )
    intersection = (a & b).sum((-2, -1))
    union = (a | b).sum((-2, -1))
    ratio = intersection / union.clamp(min=1)
    return torch.where(union > 0, ratio, torch.ones_like(ratio))
