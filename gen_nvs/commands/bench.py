"""`gen-nvs bench NAME`: benchmarks that report their figures as one JSON object.

Each benchmark is an entry of `BENCHMARKS`: a one-line help, a function that adds
its options to its sub-parser, and a function `run(args) -> dict` returning the
figures. Adding a benchmark (say `bench render`) means adding one entry; `--json`
is added to every benchmark, all other options (device included) are its own.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gen_nvs.bench.flicker import add_flicker_arguments, run_flicker_bench
from gen_nvs.bench.gpu import add_gpu_arguments, run_gpu_bench
from gen_nvs.bench.render import add_render_arguments, run_render_bench
from gen_nvs.bench.sample import add_sample_arguments, run_sample_bench
from gen_nvs.bench.threads import add_threads_arguments, run_threads_bench
from gen_nvs.cli import CommandError
from gen_nvs.threads import configure_threads


@dataclass(frozen=True)
class Benchmark:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]


# --------------------------------------------------------------------------------------
# bench scenes
# --------------------------------------------------------------------------------------


def _scenes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(128, 128),
        metavar=("H", "W"),
        help="image size (default 128 128)",
    )
    parser.add_argument("--views", type=int, default=8, help="views per rendered scene (default 8)")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="time spent measuring speed (default 10)"
    )
    parser.add_argument(
        "--target-views",
        type=int,
        default=200,
        help="target views over which the unseen fraction is measured (default 200)",
    )
    parser.add_argument(
        "--sources", type=int, default=2, help="source views per sample (default 2)"
    )
    parser.add_argument(
        "--targets", type=int, default=2, help="target views per sample (default 2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="first scene seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: torch's own choice)"
    )


def _render_speed(args: argparse.Namespace, image_hw: tuple[int, int]) -> dict:
    """Views per second rendering whole scenes (scene drawing included)."""
    from gen_nvs.data.procedural import generate_scene

    generate_scene(args.seed, args.views, image_hw, device=args.device)  # warm-up
    scenes, start = 0, time.perf_counter()
    while True:
        generate_scene(args.seed + 1 + scenes, args.views, image_hw, device=args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        scenes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= args.seconds:
            break
    return {
        "scenes_rendered": scenes,
        "views_rendered": scenes * args.views,
        "seconds": round(elapsed, 3),
        "views_per_second": round(scenes * args.views / elapsed, 2),
    }


def _unseen_fractions(args: argparse.Namespace, image_hw: tuple[int, int]) -> dict:
    """Share of each target view's pixels that no source view saw, sampled like training."""
    from gen_nvs.data.procedural import ProceduralDataset
    from gen_nvs.geometry.rgbd import visibility_mask

    num_scenes = math.ceil(args.target_views / args.targets)
    dataset = ProceduralDataset(
        num_scenes, args.sources, args.targets, image_hw, seed=args.seed, device=args.device
    )
    fractions = []
    for sample in dataset:
        s = sample.num_sources
        for t in range(s, sample.num_views):
            seen = visibility_mask(
                sample.c2w[t],
                sample.fxfycxcy[t],
                sample.depth[t],
                sample.c2w[:s],
                sample.fxfycxcy[:s],
                sample.depth[:s],
            )
            fractions.append(1.0 - seen.float().mean().item())
    values = torch.tensor(fractions[: args.target_views], dtype=torch.float64)
    quartiles = torch.quantile(values, values.new_tensor([0.25, 0.5, 0.75])).tolist()
    return {
        "count": values.numel(),
        "min": round(values.min().item(), 4),
        "q25": round(quartiles[0], 4),
        "median": round(quartiles[1], 4),
        "q75": round(quartiles[2], 4),
        "max": round(values.max().item(), 4),
        "mean": round(values.mean().item(), 4),
    }


def _scenes_run(args: argparse.Namespace) -> dict:
    if min(args.size) < 1 or args.views < 1 or args.seconds < 0:
        raise CommandError("--size and --views must be positive and --seconds >= 0")
    if args.target_views < 1 or args.sources < 1 or args.targets < 1:
        raise CommandError("--target-views, --sources and --targets must be >= 1")
    if args.threads is not None:
        configure_threads(args.threads)
    image_hw = tuple(args.size)
    return {
        "bench": "scenes",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "image_hw": list(image_hw),
        "views_per_scene": args.views,
        "render": _render_speed(args, image_hw),
        "num_sources": args.sources,
        "num_targets": args.targets,
        "unseen_fraction": _unseen_fractions(args, image_hw),
    }


BENCHMARKS: dict[str, Benchmark] = {
    "scenes": Benchmark(
        help="procedural scene rendering speed and the unseen fraction of target views",
        add_arguments=_scenes_arguments,
        run=_scenes_run,
    ),
    "render": Benchmark(
        help="per-target render time with and without the scene cache, per variant and "
        "source-view count",
        add_arguments=add_render_arguments,
        run=run_render_bench,
    ),
    "sample": Benchmark(
        help="seconds per sampled view with the scene cache and with a naive loop that "
        "reruns the whole model at every step",
        add_arguments=add_sample_arguments,
        run=run_sample_bench,
    ),
    "flicker": Benchmark(
        help="frame-to-frame change of sampled orbits (independent vs shared noise) against "
        "the truth, on held-out procedural scenes",
        add_arguments=add_flicker_arguments,
        run=run_flicker_bench,
    ),
    "gpu": Benchmark(
        help="the GPU check: CUDA tests, render FPS and sampling at 512x512, peak memory, "
        "training throughput (one JSON; about 8 minutes on one H200)",
        add_arguments=add_gpu_arguments,
        run=run_gpu_bench,
    ),
    "threads": Benchmark(
        help="sampling speed by threads and OpenMP wait policy, idle vs a busy machine",
        add_arguments=add_threads_arguments,
        run=run_threads_bench,
    ),
}


# --------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, bench in BENCHMARKS.items():
        cmd = sub.add_parser(name, help=bench.help, description=bench.help)
        bench.add_arguments(cmd)
        cmd.add_argument("--json", action="store_true", help="print the figures as one JSON line")


def _readable_lines(result: dict, prefix: str = "") -> list[str]:
    """Nested figures as `a.b: value` lines."""
    lines = []
    for key, value in result.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            value = {str(i): v for i, v in enumerate(value)}  # e.g. one entry per run
        if isinstance(value, dict):
            lines += _readable_lines(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key}: {value}")
    return lines


def run(args: argparse.Namespace) -> int:
    result = BENCHMARKS[args.bench].run(args)
    print(json.dumps(result) if args.json else "\n".join(_readable_lines(result)))
    return 0
