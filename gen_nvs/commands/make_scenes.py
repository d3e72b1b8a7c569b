"""`gen-nvs make-scenes`: render procedural RGB-D scenes to disk (RealEstate10K layout).

Scene i is procedural scene `seed + i` (see `gen_nvs.data.procedural`), written as
`images/<scene>/NNNNN.png`, `depths/<scene>/NNNNN.png` and `metadata/<scene>.json`,
plus `full_list.txt`. The same arguments on the same number of CPU threads give the same
bytes (across thread counts a depth pixel may differ in its last bit); `--workers N`
renders each scene on one thread, exactly as one process with `OMP_NUM_THREADS=1`.
"""

from __future__ import annotations

import argparse
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from gen_nvs.cli import CommandError
from gen_nvs.data.procedural import (
    ORBIT_DIRECTIONS,
    RIGS,
    WALLS,
    SceneConfig,
    generate_scene,
    scene_name,
)
from gen_nvs.data.re10k import write_full_list, write_re10k_scene
from gen_nvs.inputs import MAX_IMAGE_SIDE
from gen_nvs.options import add_output_arguments, resolve_device
from gen_nvs.outputs import prepare_output_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output_arguments(
        parser,
        "output dataset root (new or empty; see --overwrite)",
        "write into a non-empty OUT, replacing files of the same names",
    )
    parser.add_argument("--scenes", type=int, default=10, help="number of scenes (default 10)")
    parser.add_argument("--views", type=int, default=8, help="views per scene (default 8)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(128, 128),
        metavar=("H", "W"),
        help=f"image size, at most {MAX_IMAGE_SIDE} a side (default 128 128)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first scene (default 0)")
    parser.add_argument("--rig", choices=RIGS, default="mixed", help="camera rig (default mixed)")
    parser.add_argument("--walls", choices=WALLS, default="random", help="walls (default random)")
    parser.add_argument(
        "--orbit-direction", choices=ORBIT_DIRECTIONS, default="ccw",
        help="ccw: every orbit counter-clockwise (default, as every dataset so far); both: "
        "each orbit either way, so the rig teaches no handedness",
    )  # fmt: skip
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device to render on: cpu (default), cuda, cuda:1, ..., auto (cuda when "
        "available)",
    )
    parser.add_argument(
        "--workers", type=int, default=1,
        help="processes rendering scenes on the CPU side by side (default 1)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.scenes < 1 or args.views < 1:
        raise CommandError(f"--scenes and --views must be >= 1, got {args.scenes}, {args.views}")
    if min(args.size) < 1 or max(args.size) > MAX_IMAGE_SIDE:
        raise CommandError(
            f"--size must be between 1 and {MAX_IMAGE_SIDE} pixels a side, got {args.size}"
        )
    if args.seed < 0:
        raise CommandError(f"--seed must be >= 0, got {args.seed}")
    if args.workers < 1:
        raise CommandError(f"--workers must be >= 1, got {args.workers}")
    device = resolve_device(args.device)
    if args.workers > 1 and device.type != "cpu":
        raise CommandError(
            f"--workers {args.workers} renders on CPU processes; with --device {args.device} "
            "leave it at 1"
        )
    out = prepare_output_dir(args.out, args.overwrite)  # a file there, a non-empty folder: refused

    config = SceneConfig(rig=args.rig, walls=args.walls, orbit_direction=args.orbit_direction)
    image_hw = tuple(args.size)
    seeds = range(args.seed, args.seed + args.scenes)
    progress = tqdm(total=args.scenes, desc="scenes", unit="scene")
    if args.workers == 1:
        for seed in seeds:
            write_scene(out, seed, args.views, image_hw, config, device)
            progress.update(1)
    else:
        # Chunks of at most 16 scenes, at least four per worker: few round trips, every
        # worker busy, and the progress bar still moves.
        size = max(1, min(16, len(seeds) // (4 * args.workers)))
        chunks = [seeds[i : i + size] for i in range(0, len(seeds), size)]
        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            jobs = [
                pool.submit(write_scenes, out, chunk, args.views, image_hw, config)
                for chunk in chunks
            ]
            try:
                for job, chunk in zip(jobs, chunks, strict=True):
                    job.result()
                    progress.update(len(chunk))
            except BaseException:  # a worker's error or an interrupt: no more new scenes
                pool.shutdown(cancel_futures=True)
                raise
    progress.close()
    list_path = write_full_list(out)
    print(
        f"wrote {args.scenes} scenes x {args.views} views at {image_hw[0]}x{image_hw[1]} "
        f"to {out} ({list_path.name})"
    )
    return 0


def write_scene(
    out: Path, seed: int, views: int, image_hw: tuple[int, int], config: SceneConfig, device
) -> None:
    """Render procedural scene `seed` and write it under `out` (RealEstate10K layout)."""
    scene = generate_scene(seed, views, image_hw, config, device)
    write_re10k_scene(
        out,
        scene_name(seed),
        scene.images,
        scene.c2w,
        scene.fxfycxcy,
        depth=scene.depth,
        depth_valid=scene.depth_valid,
    )


def write_scenes(
    out: Path, seeds: range, views: int, image_hw: tuple[int, int], config: SceneConfig
) -> None:
    """A worker's share: the scenes of `seeds`, on one CPU thread (one process per core)."""
    torch.set_num_threads(1)
    for seed in seeds:
        write_scene(out, seed, views, image_hw, config, torch.device("cpu"))
