"""`python -m gen_nvs.train.noise_scale`: the gradient noise scale of a training setup."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gen_nvs.train.noise_scale import main, measure, noise_scale
from tests.test_train import TINY, tiny_config


def _batch_gradients(true: torch.Tensor, sigma: float, batch: int, k: int, seed: int):
    """K batch gradients: `true` plus the mean of `batch` per-scene noises N(0, sigma^2 I)."""
    gen = torch.Generator().manual_seed(seed)
    noise = sigma * torch.randn(k, batch, true.numel(), generator=gen, dtype=torch.float64)
    return true + noise.mean(1)


def test_the_estimate_recovers_a_known_noise_scale():
    dim, batch, sigma = 4000, 8, 0.05
    true = torch.full((dim,), 0.01, dtype=torch.float64)  # |G|^2 = 0.4
    expected = sigma**2 * dim / float(true @ true)  # tr(Sigma) / |G|^2 = 25
    g = _batch_gradients(true, sigma, batch, k=64, seed=0)
    scale = noise_scale(g @ g.T, batch)
    assert scale.gradient_sq == pytest.approx(0.4, rel=0.1)
    assert scale.trace == pytest.approx(sigma**2 * dim, rel=0.1)
    assert scale.b_noise == pytest.approx(expected, rel=0.15)
    low, high = scale.b_noise_interval
    assert low < expected < high and high < 2 * expected


def test_more_noise_gives_a_larger_scale_and_pure_noise_no_signal():
    true = torch.full((2000,), 0.01, dtype=torch.float64)
    quiet = _batch_gradients(true, 0.02, 8, k=32, seed=1)
    loud = _batch_gradients(true, 0.08, 8, k=32, seed=1)
    assert noise_scale(loud @ loud.T, 8).b_noise > 8 * noise_scale(quiet @ quiet.T, 8).b_noise
    noise_only = _batch_gradients(torch.zeros(2000, dtype=torch.float64), 0.05, 8, 32, seed=2)
    pure = noise_scale(noise_only @ noise_only.T, 8)
    assert pure.b_noise > 1000 or math.isinf(pure.b_noise)
    assert math.isinf(pure.b_noise_interval[1])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 3 gradients"):
        noise_scale(torch.eye(2), 8)
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        noise_scale(torch.eye(4), 0)


def test_measured_on_a_training_config_per_part(tmp_path):
    config = tiny_config(tmp_path, "noise", "loss.camera=0")
    result = measure(config, batches=4)
    assert {"all", "encoder", "decoder"} <= set(result)
    for scale in result.values():
        assert scale.trace > 0 and math.isfinite(scale.gradient_sq)
    # The parts' squared norms add up to the whole's (disjoint parameters).
    parts = sum(s.gradient_sq for name, s in result.items() if name != "all")
    assert parts == pytest.approx(result["all"].gradient_sq, rel=1e-6)


def test_the_command_writes_its_figures_and_refuses_too_few_batches(tmp_path, capsys):
    out = tmp_path / "noise.json"
    args = [*TINY, f"run.output_dir={tmp_path}", "loss.camera=0"]
    assert main([*args, "--batches", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "B_noise" in printed and "decoder" in printed
    record = json.loads(out.read_text())
    assert record["batches"] == 3 and record["parts"]["all"]["trace"] > 0
    assert main([*args, "--batches", "2"]) == 2
    assert "--batches must be >= 3, got 2" in capsys.readouterr().err
