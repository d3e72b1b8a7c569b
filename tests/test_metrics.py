"""Image metrics: PSNR, SSIM against a direct reference computation, region masks,
sharpness, LPIPS maps and pairwise diversity."""

from __future__ import annotations

import math
import warnings

import lpips as lpips_package
import numpy as np
import pytest
import torch

from gen_nvs.eval import metrics


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _reference_ssim_map(x: np.ndarray, y: np.ndarray, sample_covariance: bool) -> np.ndarray:
    """SSIM map [c, h, w] straight from the definition: for every pixel, Gaussian-weighted
    means, variances and covariance over its 11x11 window of the edge-mirrored image."""
    r, sigma = 5, 1.5
    offsets = np.arange(-r, r + 1)
    g = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    g /= g.sum()
    norm = 121 / 120 if sample_covariance else 1.0
    c1, c2 = 0.01**2, 0.03**2
    pad = ((0, 0), (r, r), (r, r))
    xp, yp = np.pad(x, pad, mode="symmetric"), np.pad(y, pad, mode="symmetric")
    out = np.zeros(x.shape)
    for c in range(x.shape[0]):
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                wx = xp[c, i : i + 2 * r + 1, j : j + 2 * r + 1]
                wy = yp[c, i : i + 2 * r + 1, j : j + 2 * r + 1]
                mx, my = (g * wx).sum(), (g * wy).sum()
                vx = norm * ((g * wx * wx).sum() - mx * mx)
                vy = norm * ((g * wy * wy).sum() - my * my)
                cxy = norm * ((g * wx * wy).sum() - mx * my)
                out[c, i, j] = ((2 * mx * my + c1) * (2 * cxy + c2)) / (
                    (mx * mx + my * my + c1) * (vx + vy + c2)
                )
    return out


# --------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------


def test_psnr_of_a_known_error():
    target = _images(2, 3, 8, 8)
    pred = (target + 0.1).clamp(0, 1)
    expected = -10 * torch.log10(((pred - target) ** 2).mean((1, 2, 3)))
    torch.testing.assert_close(metrics.psnr(pred, target), expected)
    pred = torch.full((3, 4, 4), 0.5)
    assert metrics.psnr(pred, pred + 0.1).item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_of_a_perfect_prediction_is_inf_or_the_cap():
    image = _images(3, 8, 8)
    assert metrics.psnr(image, image).item() == math.inf
    assert metrics.psnr(image, image, max_db=100.0).item() == 100.0
    assert metrics.psnr(image, image * 0.5, max_db=100.0).item() < 100.0


def test_masked_psnr_uses_only_the_masked_pixels():
    target, pred = _images(3, 8, 8), _images(3, 8, 8, seed=1)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 1:7] = True
    expected = metrics.psnr(pred[:, 2:5, 1:7], target[:, 2:5, 1:7])
    torch.testing.assert_close(metrics.psnr(pred, target, mask), expected)
    assert math.isnan(metrics.psnr(pred, target, torch.zeros_like(mask)).item())


def test_region_errors_partition_the_image_error():
    target, pred = _images(2, 3, 12, 12), _images(2, 3, 12, 12, seed=1)
    unseen = _images(2, 12, 12, seed=2) > 0.7
    share = unseen.float().mean((-2, -1))
    combined = share * metrics.mse(pred, target, unseen) + (1 - share) * metrics.mse(
        pred, target, ~unseen
    )
    torch.testing.assert_close(combined, metrics.mse(pred, target))


# --------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample_covariance", [True, False])
def test_ssim_map_matches_the_direct_computation(sample_covariance):
    target, pred = _images(3, 16, 19), _images(3, 16, 19, seed=1)
    pred = 0.6 * target + 0.4 * pred  # correlated, so the map is far from 0 and 1
    reference = _reference_ssim_map(
        pred.double().numpy(), target.double().numpy(), sample_covariance
    )
    ours = metrics.ssim_map(pred, target, sample_covariance=sample_covariance)
    np.testing.assert_allclose(ours.numpy(), reference.mean(0), rtol=0, atol=1e-10)
    # The protocol's SSIM: the map's mean away from the 5-pixel border, then over channels.
    expected = reference[:, 5:-5, 5:-5].mean()
    value = metrics.ssim(pred, target, sample_covariance=sample_covariance)
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_ssim_bounds_and_batching():
    target = _images(2, 3, 3, 16, 16)
    assert torch.allclose(metrics.ssim(target, target), torch.ones(2, 3))
    noisy = (target + 0.2 * _images(2, 3, 3, 16, 16, seed=1)).clamp(0, 1)
    values = metrics.ssim(noisy, target)
    assert values.shape == (2, 3) and (values < 0.99).all()
    torch.testing.assert_close(values[1, 2], metrics.ssim(noisy[1, 2], target[1, 2]))


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(_images(3, 8, 16), _images(3, 8, 16))


# --------------------------------------------------------------------------------------
# Region metrics depend on the region alone
# --------------------------------------------------------------------------------------


def test_region_metrics_ignore_the_prediction_outside_the_region():
    target, pred = _images(2, 3, 16, 16), _images(2, 3, 16, 16, seed=1)
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, 4:12, 3:10] = True
    other = torch.where(mask[:, None], pred, _images(2, 3, 16, 16, seed=2))
    for fn in (metrics.psnr, metrics.ssim, metrics.sharpness, metrics.rms_distance):
        torch.testing.assert_close(fn(pred, target, mask), fn(other, target, mask))
        assert not torch.allclose(fn(pred, target), fn(other, target))
    # A prediction equal to the target inside the region is perfect there.
    inside_perfect = torch.where(mask[:, None], target, pred)
    assert torch.allclose(metrics.ssim(inside_perfect, target, mask), torch.ones(2))
    assert (metrics.rms_distance(inside_perfect, target, mask) == 0).all()


def test_masked_mean_of_an_empty_mask_is_nan():
    values = torch.ones(2, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 1] = True
    out = metrics.masked_mean(values, mask)
    assert out[0].item() == 1.0 and math.isnan(out[1].item())


# --------------------------------------------------------------------------------------
# Sharpness and diversity
# --------------------------------------------------------------------------------------


def test_sharpness_is_one_for_the_target_and_lower_for_a_blur():
    target = _images(3, 16, 16)
    assert metrics.sharpness(target, target).item() == pytest.approx(1.0)
    blurred = torch.nn.functional.avg_pool2d(target[None], 3, stride=1, padding=1)[0]
    assert metrics.sharpness(blurred, target).item() < 0.6
    flat = torch.full((3, 16, 16), 0.3)
    assert math.isnan(metrics.sharpness(target, flat).item())


def test_gradient_magnitude_of_a_step_edge():
    image = torch.zeros(3, 4, 6)
    image[..., 3:] = 1.0
    magnitude = metrics.gradient_magnitude(image)
    expected = torch.zeros(4, 6)
    expected[:, 2] = 1.0  # the forward difference at the last dark column
    torch.testing.assert_close(magnitude, expected)


def test_pairwise_mean_over_all_pairs():
    samples = _images(4, 2, 3, 8, 8)
    expected = torch.stack(
        [metrics.rms_distance(samples[i], samples[j]) for i in range(4) for j in range(i + 1, 4)]
    ).mean(0)
    torch.testing.assert_close(metrics.pairwise_mean(samples, metrics.rms_distance), expected)
    same = samples[:1].expand(3, -1, -1, -1, -1)
    assert (metrics.pairwise_mean(same, metrics.rms_distance) == 0).all()
    with pytest.raises(ValueError, match="at least 2"):
        metrics.pairwise_mean(samples[:1], metrics.rms_distance)


# --------------------------------------------------------------------------------------
# LPIPS (a randomly initialised trunk: the code path is the real one)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lpips_net():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lpips_package.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()


def test_lpips_matches_the_package_and_its_region_variant(lpips_net):
    target, pred = _images(2, 3, 32, 32), _images(2, 3, 32, 32, seed=1)
    with torch.no_grad():
        expected = lpips_net(pred, target, normalize=True).flatten()
        torch.testing.assert_close(metrics.lpips(pred, target, lpips_net, chunk_size=1), expected)
        assert (metrics.lpips(target, target, lpips_net) == 0).all()
        mask = torch.zeros(2, 32, 32, dtype=torch.bool)
        mask[:, 8:24, 4:20] = True
        other = torch.where(mask[:, None], pred, _images(2, 3, 32, 32, seed=2))
        region = metrics.lpips(pred, target, lpips_net, mask)
        torch.testing.assert_close(region, metrics.lpips(other, target, lpips_net, mask))
        assert (region > 0).all()
