"""Flicker benchmark: how much sampled trajectories change from frame to frame, against the
truth (`gen-nvs bench flicker`).

On held-out procedural scenes (seeds from 1 000 000, the test set's), two views of the
scene's rig are the sources and an orbit of `--frames` cameras starts at the first; the
procedural renderer gives the true frames. Flicker is the mean absolute change between
consecutive frames (RGB in [0, 1]), for the truth, the regression render and one sample
per scene drawn with independent noise per frame and with the noise shared by all frames
(`gen_nvs.sampling.sample_seeds`). Ratios to the truth: 1 changes as much as the scene
does; well above 1 is flicker.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch
from torch import Tensor

from gen_nvs.inputs import MAX_FRAMES
from gen_nvs.options import check_render_size
from gen_nvs.sampling import SamplingConfig

TEST_SEEDS = 1_000_000  # the held-out set's first seed (`gen_nvs.train.recipe.TEST_SET`)


def add_flicker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="model export (default: the embedded model)")
    parser.add_argument("--scenes", type=int, default=8, help="held-out scenes (8)")
    parser.add_argument("--frames", type=int, default=8, help="orbit frames (8)")
    parser.add_argument("--degrees", type=float, default=30.0, help="orbit angle (30)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps (10)")
    parser.add_argument("--size", type=int, default=64, help="square image size (64)")


def run_flicker_bench(args: argparse.Namespace) -> dict[str, Any]:
    from gen_nvs.pipeline import NVSPipeline

    if args.scenes < 1 or not 2 <= args.frames <= MAX_FRAMES or args.steps < 1:
        raise ValueError(
            f"need --scenes >= 1, --frames in 2..{MAX_FRAMES} and --steps >= 1, got "
            f"{args.scenes}, {args.frames} and {args.steps}"
        )
    check_render_size((args.size, args.size), 1)  # the pixel limit, before loading
    pipe = NVSPipeline.from_pretrained(args.checkpoint)
    if not pipe.model.can_sample:
        raise ValueError("bench flicker needs a model with a diffusion decoder")
    rows = [_scene_flicker(pipe, TEST_SEEDS + i, args) for i in range(args.scenes)]
    mean = {key: statistics.fmean(row[key] for row in rows) for key in rows[0]}
    return {
        "settings": {
            "scenes": args.scenes, "frames": args.frames, "orbit_degrees": args.degrees,
            "steps": args.steps, "image_size": args.size, "sampler": SamplingConfig.sampler,
            "checkpoint": args.checkpoint or "embedded default",
        },
        "mean_abs_frame_change": {k: round(v, 5) for k, v in mean.items()},
        "ratio_to_truth": {k: round(v / mean["truth"], 3) for k, v in mean.items()},
    }  # fmt: skip


def _scene_flicker(pipe, seed: int, args: argparse.Namespace) -> dict[str, float]:
    from gen_nvs.data.procedural import (
        SceneConfig,
        render_views,
        sample_cameras,
        sample_scene,
    )
    from gen_nvs.geometry.trajectories import orbit
    from gen_nvs.inputs import SourceViews, TargetCameras

    hw = (args.size, args.size)
    config = SceneConfig()
    gen = torch.Generator().manual_seed(seed)
    c2w, k = sample_cameras(gen, config, 2, hw)
    scene = sample_scene(gen, config, c2w).to("cpu")  # float32, as generate_scene has it
    c2w, k = c2w.float(), k.float()
    images, depth, valid, _ = render_views(scene, c2w, k, hw)
    focus = float(depth[0][valid[0]].median()) if valid[0].any() else 1.0
    path = orbit(c2w[0], args.frames, focus=focus, degrees=args.degrees)
    path_k = k[:1].expand(args.frames, 4)
    truth, _, _, _ = render_views(scene, path, path_k, hw)
    encoded = pipe.encode(SourceViews(images, c2w, k, names=["0", "1"]))
    targets = TargetCameras(path, path_k, normalized=False)
    regression = pipe.render(encoded, targets).rgb
    drawn = {}
    for noise in ("independent", "shared"):
        sampling = SamplingConfig(steps=args.steps, samples=1, noise=noise)
        drawn[noise] = pipe.sample(encoded, targets, sampling).rgb[0, 0]  # sample 0: [t, 3, h, w]
    return {
        "truth": _change(truth),
        "regression": _change(regression),
        "samples_independent_noise": _change(drawn["independent"]),
        "samples_shared_noise": _change(drawn["shared"]),
    }


def _change(frames: Tensor) -> float:
    """Mean absolute change between consecutive frames [t, 3, h, w]."""
    return (frames[1:] - frames[:-1]).abs().mean().item()
