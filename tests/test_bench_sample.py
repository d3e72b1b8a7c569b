"""The sample benchmark in its smoke setting: structure, sane figures, equal samples."""

from __future__ import annotations

import json

import pytest

from gen_nvs.bench.sample import bench_sample
from gen_nvs.cli import main


@pytest.fixture(scope="module")
def report():
    return bench_sample(
        preset="tiny",
        image_hw=(32, 32),
        encoder_size=28,
        num_sources=2,
        num_targets=2,
        num_samples=2,
        steps=2,
        scheduler="ddim",
    )


def test_report_is_json_with_settings(report):
    assert json.loads(json.dumps(report)) == report
    settings = report["settings"]
    assert settings["device"] == "cpu" and settings["weights"] == "random"
    assert settings["num_sources"] == 2 and settings["num_samples"] == 2
    assert settings["encoder_input_hw"] == [28, 28] and settings["source_tokens"] == 2 * 4
    assert any("random weights" in note for note in report["notes"])


def test_figures_are_positive_and_both_paths_draw_the_same_samples(report):
    results = report["results"]
    for name in ("seconds_cached", "seconds_naive", "seconds_per_view_cached", "speedup"):
        assert results[name] > 0
    # The patch shift's cost: the cached path with it on, against the fixed grid's.
    assert results["seconds_cached_patch_shift"] > 0
    shift = results["seconds_cached_patch_shift"] / results["seconds_cached"]
    assert results["patch_shift_cost"] == pytest.approx(shift, rel=0.05, abs=2e-3)
    # The report rounds to 4 decimals.
    per_view = results["seconds_naive"] / 4
    assert results["seconds_per_view_naive"] == pytest.approx(per_view, rel=1e-3, abs=1e-4)
    # The speedups (3 decimals) are the ratios of the reported times (4 decimals).
    for speedup, naive, cached in (
        ("speedup", "seconds_naive", "seconds_cached"),
        ("speedup_cpu_time", "cpu_seconds_naive", "cpu_seconds_cached"),
    ):
        low = (results[naive] - 5e-5) / (results[cached] + 5e-5)
        high = (results[naive] + 5e-5) / (results[cached] - 5e-5)
        assert low - 5e-4 <= results[speedup] <= high + 5e-4, (speedup, results)
    assert results["max_abs_diff"] < 1e-5


def test_command_prints_one_json_line(capsys):
    assert main(["bench", "sample", "--fast", "--sampler", "ddim", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "sample" and result["settings"]["preset"] == "tiny"
    assert main(["bench", "sample", "--fast", "--steps", "0"]) == 2
    assert "steps must be >= 1, got 0" in capsys.readouterr().err
