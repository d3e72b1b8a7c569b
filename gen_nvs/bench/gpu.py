"""The GPU check in one command (`gen-nvs bench gpu`): what a session lent a GPU runs
and records in README "Benchmarks", sized to finish in about 8 minutes on one H200.

1. the CUDA tests (`pytest -m gpu`: bf16 autocast, procedural rendering on the GPU; they
   fail, not skip, when selected without a GPU);
2. `bench render` at 512x512, bf16, the published sizes (VGGT-1B encoder, ViT-B
   decoder), every variant, 1, 4 and 9 source views: frames per second of the cached
   renderer (goal: >= 90 FPS for `causal` and `cross_attention` with 9 views);
3. `bench sample` at 512x512 with 6 source views, 4 samples x 20 steps (goal: < 1 s);
4. the peak GPU memory of 2 and 3;
5. a short training run (regression stage, `small` preset, 256x256 procedural scenes,
   bf16): training steps per second after the first steps.

Everything lands in one JSON object.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RENDER_FPS_GOAL = 90.0  # cached causal and cross_attention, 9 source views
SAMPLE_SECONDS_GOAL = 1.0  # 4 samples x 20 steps, 6 source views
REPO = Path(__file__).resolve().parents[2]


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["tests", "render", "sample", "train"],
        help="parts to leave out",
    )  # fmt: skip
    parser.add_argument(
        "--train-steps", type=int, default=60, help="steps of the training run (60)"
    )


def run_gpu_bench(args: argparse.Namespace) -> dict[str, Any]:
    if not torch.cuda.is_available():
        raise ValueError(
            "bench gpu needs a CUDA device (torch.cuda.is_available() is False); the CPU "
            "benchmarks are bench render, bench sample and bench threads"
        )
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0)}
    start = time.perf_counter()
    if "tests" not in args.skip:
        result["cuda_tests"] = _cuda_tests()
    if "render" not in args.skip:
        result["render"] = _render()
    if "sample" not in args.skip:
        result["sample"] = _sample()
    if "train" not in args.skip:
        result["train"] = _train(args.train_steps)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def gpu_test_files() -> list[str]:
    """The test files that hold CUDA tests: only these are collected, so that the app's
    and the browser's tests (gradio, Playwright: not on a GPU machine) are not imported."""
    tests = sorted((REPO / "tests").glob("test_*.py"))
    return [str(path) for path in tests if "pytest.mark.gpu" in path.read_text()]


def _cuda_tests() -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", *gpu_test_files()]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-200:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", last)}
    return {"returncode": done.returncode, "summary": last, **counts}


def _render() -> dict[str, Any]:
    from gen_nvs.bench.render import bench_render
    from gen_nvs.models.decoder import VARIANTS

    torch.cuda.reset_peak_memory_stats()
    report = bench_render(
        variants=VARIANTS, source_counts=[1, 4, 9], image_hw=(512, 512), num_targets=8,
        encoder_preset="lagernvs", decoder_preset="lagernvs", device="cuda", dtype="bfloat16",
        repeats=3, warmup=1,
    )  # fmt: skip
    fps = {
        f"{e['variant']}/{e['num_sources']}": round(1000.0 / e["ms_per_view_cached"], 1)
        for e in report["results"]
    }
    goal = [fps[f"{variant}/9"] for variant in ("causal", "cross_attention")]
    return {
        "fps_cached": fps,
        "fps_uncached": {
            f"{e['variant']}/{e['num_sources']}": round(1000.0 / e["ms_per_view_uncached"], 1)
            for e in report["results"]
        },
        "ms_encode": {str(e["num_sources"]): e["ms_encode"] for e in report["results"]},
        "meets_goal_90fps_9views": min(goal) >= RENDER_FPS_GOAL,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def _sample() -> dict[str, Any]:
    from gen_nvs.bench.sample import bench_sample

    torch.cuda.reset_peak_memory_stats()
    report = bench_sample(
        preset="lagernvs", image_hw=(512, 512), encoder_size=518, num_sources=6, num_targets=1,
        num_samples=4, steps=20, device="cuda", repeats=3, warmup=1,
    )  # fmt: skip
    seconds = report["results"]["seconds_cached"]
    return {
        "seconds_4_samples_20_steps": seconds,
        "meets_goal_under_1s": seconds < SAMPLE_SECONDS_GOAL,
        "speedup_vs_naive": report["results"]["speedup"],
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def _train(steps: int) -> dict[str, Any]:
    from gen_nvs.train.config import load_config
    from gen_nvs.train.loop import train

    with tempfile.TemporaryDirectory() as runs:
        overrides = [
            "model.preset=small", "data.image_size=[256, 256]",
            "data.datasets.scenes.type=procedural", "data.datasets.scenes.num_scenes=512",
            "train.batch_size=8", f"train.steps={steps}", "train.mixed_precision=bf16",
            "loss.perceptual=0", "log.eval_every=0", "log.probe_every=0", "log.tracker=none",
            f"checkpoint.every={steps}", f"run.output_dir={runs}", "run.name=throughput",
        ]  # fmt: skip
        config = load_config(None, overrides)
        start = time.perf_counter()
        train(config)
        seconds = time.perf_counter() - start
    return {
        "steps": steps,
        "seconds": round(seconds, 1),
        "steps_per_second_incl_startup": round(steps / seconds, 2),
        "images_per_second_incl_startup": round(steps * 8 / seconds, 1),
    }
