"""The render benchmark in its smoke setting: structure, sane figures, equal renders."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from gen_nvs.bench.render import add_render_arguments, bench_render, run_render_bench
from gen_nvs.models.decoder import VARIANTS

FIGURES = (
    "ms_encode",
    "ms_cache_build",
    "ms_per_view_cached",
    "ms_per_view_uncached",
    "ms_per_view_reencode",
    "speedup",
    "cache_bytes",
)


@pytest.fixture(scope="module")
def report():
    return bench_render(
        variants=VARIANTS,
        source_counts=[1, 2],
        image_hw=(32, 32),
        num_targets=2,
        encoder_preset="tiny",
        decoder_preset="tiny",
        device="cpu",
        dtype="float32",
        repeats=1,
        warmup=0,
        reference=True,
    )


def test_report_is_json_with_settings(report):
    assert json.loads(json.dumps(report)) == report
    settings = report["settings"]
    assert settings["device"] == "cpu"
    assert settings["torch_version"]
    assert settings["image_hw"] == [32, 32]
    assert settings["num_targets"] == 2
    assert settings["source_tokens_per_view"] == 37 * 37  # 518 / 14 patches a side
    assert settings["target_tokens_per_view"] == 4 * 4  # 32 / 8
    assert any("encoder tokens are reused" in note for note in report["notes"])


def test_one_entry_per_variant_and_source_count(report):
    keys = [(r["variant"], r["num_sources"]) for r in report["results"]]
    assert sorted(keys) == sorted((v, s) for v in VARIANTS for s in (1, 2))


def test_figures_are_positive_and_finite(report):
    for entry in report["results"]:
        for name in FIGURES:
            assert math.isfinite(entry[name]) and entry[name] > 0, (entry, name)
        # The report rounds to 4 decimals: a speedup below 0.1 loses more than 1e-3 of itself.
        assert entry["speedup"] == pytest.approx(
            entry["ms_per_view_uncached"] / entry["ms_per_view_cached"], rel=1e-3, abs=6e-5
        )


def test_cached_and_uncached_renders_are_equal(report):
    for entry in report["results"]:
        assert entry["max_abs_diff"] < 1e-4, entry


def test_causal_cache_holds_source_keys_values(report):
    by_key = {(r["variant"], r["num_sources"]): r for r in report["results"]}
    # Keys/values of every block outweigh the encoder tokens alone, and grow with the views.
    assert by_key["causal", 1]["cache_bytes"] > by_key["full_attention", 1]["cache_bytes"]
    assert by_key["causal", 2]["cache_bytes"] == 2 * by_key["causal", 1]["cache_bytes"]


def test_fast_option_resolves_to_tiny_settings():
    parser = argparse.ArgumentParser()
    add_render_arguments(parser)
    args = parser.parse_args(
        ["--fast", "--device", "cpu", "--variants", "causal", "--sources", "1"]
    )
    report = run_render_bench(args)
    settings = report["settings"]
    assert (settings["encoder_preset"], settings["decoder_preset"]) == ("tiny", "tiny")
    assert (settings["repeats"], settings["num_targets"]) == (1, 2)
    assert [(r["variant"], r["num_sources"]) for r in report["results"]] == [("causal", 1)]


@pytest.mark.parametrize(
    "overrides",
    [dict(source_counts=[0]), dict(source_counts=[10]), dict(variants=["nope"]), dict(repeats=0)],
)
def test_bad_settings_raise(overrides):
    settings = dict(
        variants=["causal"],
        source_counts=[1],
        image_hw=(32, 32),
        num_targets=1,
        encoder_preset="tiny",
        decoder_preset="tiny",
        device="cpu",
        dtype="float32",
        repeats=1,
        warmup=0,
    )
    with pytest.raises(ValueError):
        bench_render(**{**settings, **overrides})


def test_mismatched_widths_raise():
    with pytest.raises(ValueError, match="channels"):
        bench_render(
            variants=["causal"],
            source_counts=[1],
            image_hw=(32, 32),
            num_targets=1,
            encoder_preset="tiny",
            decoder_preset="small",
            device="cpu",
            dtype="float32",
            repeats=1,
            warmup=0,
        )


def test_reference_arithmetic_equals_the_decoder_and_is_timed(report):
    """The published arithmetic written out plainly computes the decoder's images, so the
    ratio compares two implementations of the same numbers (full_attention and
    cross_attention: the variants with published checkpoints)."""
    timed = [e for e in report["results"] if "speed_vs_reference" in e]
    assert {e["variant"] for e in timed} == {"full_attention", "cross_attention"}
    for entry in timed:
        assert entry["max_abs_diff_reference"] < 1e-5
        assert entry["speed_vs_reference"] > 0 and entry["ms_per_view_reference"] > 0


@pytest.mark.parametrize("variant", ["full_attention", "cross_attention"])
def test_reference_arithmetic_matches_a_golden_fixture(variant):
    """Anchored to the official outputs, not only to our decoder: the reference renders a
    fixture's targets from its encoder tokens as the official code did."""
    import torch

    from gen_nvs.bench.reference import reference_render
    from gen_nvs.fixtures import read_fixture
    from tests.conftest import REFERENCE_DIR
    from tests.test_decoder import fixture_decoder

    files = sorted(REFERENCE_DIR.glob(f"{variant}_*.safetensors"))
    assert files, f"no {variant} fixture in {REFERENCE_DIR}"
    meta, tensors = read_fixture(files[0])
    decoder = fixture_decoder(meta, tensors)
    s = meta["num_source_views"]
    with torch.no_grad():
        rgb = reference_render(
            decoder, tensors["io.encoder_tokens"][None], tensors["io.plucker_rays"][None, s:]
        )
    assert (rgb[0] - tensors["io.rendered_targets"]).abs().max() < 1e-4


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU refusal")
def test_gpu_check_refuses_without_cuda_in_one_line(capsys):
    from gen_nvs.cli import main

    assert main(["bench", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bench gpu needs a CUDA device" in err


def test_gpu_check_collects_only_the_files_with_cuda_tests():
    """On a GPU machine the app's and the browser's test modules (gradio, Playwright) could
    not be imported: the CUDA tests run from their own files alone, and those are all."""
    from gen_nvs.bench.gpu import gpu_test_files

    files = gpu_test_files()
    names = [Path(f).name for f in files]
    assert {"test_decoder.py", "test_procedural.py"} <= set(names)
    assert "test_app.py" not in names and "test_browser.py" not in names
    assert all("@pytest.mark.gpu" in Path(f).read_text() for f in files)
