"""`gen-nvs eval`: PSNR / SSIM / LPIPS of a model on a dataset, seen vs unseen regions.

Reads a dataset in the processed RealEstate10K layout (`gen-nvs make-scenes` writes
one). With `--index` (the LVSM / LagerNVS evaluation index format) each scene's context
frames are the sources and its target frames the targets; without one the first
`--num-sources` frames of every scene are the sources and at most `--max-targets` of the
rest, evenly spaced, the targets.
A diffusion model also draws `--samples` samples per target (0 turns sampling off).

LPIPS needs torchvision's VGG16 ImageNet weights (see `gen_nvs.models.perceptual`);
without them the evaluation still runs, records `"lpips": null` and the reason, and
says so on stderr, unless `--require-lpips`.

With depth in the dataset and a point head in the model it also scores the model's own
unseen estimate (the sampler's "auto" mask) against the depth's: IoU and unseen shares.
Targets may repeat the sources (`configs/eval/procedural64-copy.json`, the copy probe):
their unseen region is empty, and null in the results.

Writes OUT/results.json and OUT/grids/*.png, and prints the means. OUT must be new or
empty unless `--overwrite`; a failed evaluation takes back what it wrote there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from gen_nvs.cli import CommandError
from gen_nvs.data.eval_index import EvalDataset, EvalIndex
from gen_nvs.data.re10k import FULL_LIST, RE10KReader
from gen_nvs.eval.evaluate import RESULTS_FILE, FirstViewsDataset, SamplingSettings, evaluate
from gen_nvs.models.nvs import DEFAULT_MODEL_DIR
from gen_nvs.models.perceptual import load_lpips
from gen_nvs.options import (
    add_model_arguments,
    add_output_arguments,
    check_render_size,
    resolve_device,
)
from gen_nvs.outputs import check_output_dir, output_dir
from gen_nvs.pipeline import NVSPipeline
from gen_nvs.sampling import SamplingConfig, check_sampling_options
from gen_nvs.unseen import MASK_MODES, PREDICTED_REL_TOL
from samplers.sampling import check_seeds

DEFAULT_SAMPLES = SamplingConfig().samples
DEFAULT_MAX_TARGETS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="dataset root (RE10K layout)")
    add_output_arguments(
        parser,
        "output directory for results.json and grids/ (new or empty; see --overwrite)",
        "write into a non-empty --out directory: results.json and the evaluated scenes' "
        "grids are replaced, other files stay",
    )
    parser.add_argument(
        "--index", type=Path, help="evaluation index JSON (default: first views are sources)"
    )
    parser.add_argument(
        "--num-sources",
        type=int,
        default=2,
        help="without --index: leading frames used as sources (default 2)",
    )
    parser.add_argument(
        "--max-targets",
        type=int,
        default=DEFAULT_MAX_TARGETS,
        help="without --index: target frames per scene, evenly spaced over the frames after "
        f"the sources (default {DEFAULT_MAX_TARGETS})",
    )
    add_model_arguments(parser, default_size=None)
    parser.add_argument(
        "--samples",
        type=int,
        help=f"diffusion samples per target (default {DEFAULT_SAMPLES} for a diffusion "
        "model; 0 evaluates regression only)",
    )
    defaults = SamplingConfig()  # the project's one set of sampling defaults
    parser.add_argument(
        "--steps", type=int, default=defaults.steps, help=f"sampling steps ({defaults.steps})"
    )
    parser.add_argument(
        "--sampler", default=defaults.sampler, help=f"scheduler (default {defaults.sampler})"
    )
    parser.add_argument(
        "--guidance", type=float, default=defaults.guidance,
        help=f"classifier-free guidance scale (default {defaults.guidance:g})",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=defaults.seed, help="sampling seed (0)")
    parser.add_argument(
        "--no-patch-shift",
        dest="patch_shift",
        action="store_false",
        help="keep the decoder's patch grid fixed at the image corner (default: it moves "
        "between denoising steps, so samples carry no block seams along it)",
    )
    parser.add_argument(
        "--mask-mode",
        choices=MASK_MODES,
        default="auto",
        help="what the sampler generates: auto (the region the model finds unseen; the "
        "regression render elsewhere), off (everything), confidence (default auto)",
    )
    parser.add_argument(
        "--mask-tolerance",
        type=float,
        default=PREDICTED_REL_TOL,
        help="the model's unseen mask (scored against the dataset's depth, and the samples' "
        "auto mask): the relative depth tolerance of its reprojection test (default "
        f"{PREDICTED_REL_TOL:g})",
    )
    parser.add_argument("--max-scenes", type=int, help="evaluate only the first K scenes")
    parser.add_argument(
        "--lpips-weights",
        help="torchvision VGG16 weights for LPIPS (.pth / .safetensors / hf://...; an error "
        "when missing)",
    )
    parser.add_argument(
        "--require-lpips",
        action="store_true",
        help="fail instead of skipping LPIPS when the VGG16 weights are missing",
    )


def _check_args(args: argparse.Namespace) -> None:
    if args.size is not None and min(args.size) < 1:
        raise CommandError(f"--size must be positive, got {args.size}")
    if args.samples is not None and args.samples < 0:
        raise CommandError(f"--samples must be >= 0, got {args.samples}")
    check_sampling_options(
        scheduler=args.sampler, steps=args.steps, guidance_scale=args.guidance,
        mask_mode=args.mask_mode, mask_tolerance=args.mask_tolerance,
    )  # fmt: skip
    check_seeds(args.seed, name="--seed")  # and for every sample, once they are counted
    if args.max_scenes is not None and args.max_scenes < 1:
        raise CommandError(f"--max-scenes must be >= 1, got {args.max_scenes}")
    if args.num_sources < 1:
        raise CommandError(f"--num-sources must be >= 1, got {args.num_sources}")
    if args.max_targets < 1:
        raise CommandError(f"--max-targets must be >= 1, got {args.max_targets}")
    check_output_dir(args.out, args.overwrite)


def _reader(args: argparse.Namespace) -> RE10KReader:
    root: Path = args.data
    if not root.is_dir():
        raise CommandError(f"--data {root} is not a directory")
    list_file = FULL_LIST if (root / FULL_LIST).is_file() else None
    reader = RE10KReader(root, None if args.size is None else tuple(args.size), list_file)
    if not reader.scene_names:
        raise CommandError(
            f"no scenes found under {root} (expected metadata/*.json or {FULL_LIST}, in the "
            "RealEstate10K layout that `gen-nvs make-scenes` writes)"
        )
    return reader


def _dataset(args: argparse.Namespace, reader: RE10KReader):
    if args.index is None:
        return FirstViewsDataset(reader, args.num_sources, args.max_targets)
    dataset = EvalDataset(reader, EvalIndex.load(args.index))
    if len(dataset) == 0:
        raise CommandError(f"{args.index}: the index has no scenes to evaluate")
    # Check every entry before the first scene is evaluated, not halfway through.
    for entry in dataset.entries:
        num_frames = reader.num_frames(entry.scene)
        missing = [f for f in (*entry.context, *entry.target) if f >= num_frames]
        if missing:
            raise CommandError(
                f"{args.index}: scene {entry.scene} references frame(s) {missing} but has "
                f"{num_frames} frames"
            )
    return dataset


def _lpips(args: argparse.Namespace, device: torch.device):
    """(LPIPS network or None, why it is missing)."""
    try:
        return load_lpips(args.lpips_weights, device), None
    except FileNotFoundError as err:
        if args.require_lpips or args.lpips_weights is not None:
            raise
        print(f"gen-nvs eval: LPIPS skipped: {err}", file=sys.stderr)
        return None, str(err)


def _sampling(
    args: argparse.Namespace, can_sample: bool, num_scenes: int
) -> SamplingSettings | None:
    """The sampling settings, or None for regression only; CommandError for samples from
    a regression model, ValueError for a --seed too large for every sample's seed."""
    samples = args.samples
    if samples is None:
        samples = DEFAULT_SAMPLES if can_sample else 0
    if samples == 0:
        return None
    if not can_sample:
        raise CommandError(
            f"--samples {samples}: the model is a regression model (no diffusion decoder) "
            "and cannot sample; use a diffusion checkpoint or --samples 0"
        )
    check_seeds(args.seed, num_scenes * samples, "--seed")  # scene i: seed + i * samples + k
    return SamplingSettings(
        num_samples=samples,
        steps=args.steps,
        scheduler=args.sampler,
        guidance_scale=args.guidance,
        mask_mode=args.mask_mode,
        seed=args.seed,
        patch_shift=args.patch_shift,
    )


def _print_means(results: dict) -> None:
    means = results["means"]
    # Regions without a pixel in any target (the unseen region of a copy probe).
    empty = {
        region
        for region, count in results["empty_regions"]["targets"].items()
        if count == results["num_targets"]
    }

    def row(name: str, group: dict | None) -> str:
        if group is None:
            why = " (empty in every target)" if name.strip() in empty else ""
            return f"  {name:<24} -{why}"
        cells = []
        for key in ("psnr", "ssim", "lpips"):
            value = group.get(key)
            cells.append(f"{key} {'-' if value is None else f'{value:.4f}'}")
        return f"  {name:<24} " + "  ".join(cells)

    print(f"{results['dataset']['num_scenes']} scenes, {results['num_targets']} targets")
    groups = [("regression", means["regression"])]
    if "diffusion" in means:
        groups += [
            ("diffusion mean", means["diffusion"]["mean"]),
            ("diffusion best-of-n", means["diffusion"]["best_of_n"]),
        ]
    for name, group in groups:
        print(row(name, group))
        for region in ("seen", "unseen"):
            if region in group:
                print(row(f"  {region}", group[region]))
    diversity = means.get("diffusion", {}).get("diversity")
    if diversity is not None:
        lp = diversity["lpips"]
        print(
            f"  diversity: rms {diversity['rms']:.4f}" + ("" if lp is None else f"  lpips {lp:.4f}")
        )
    medians = results["medians"]
    sharpness = {"regression": (means["regression"], medians["regression"])}
    if "diffusion" in means:
        sharpness["samples"] = (means["diffusion"]["mean"], medians["diffusion"]["mean"])
    cells = []
    for name, groups in sharpness.items():
        mean_value, median_value = (_unseen_sharpness(group) for group in groups)
        if mean_value is not None and median_value is not None:
            cells.append(f"{name} {mean_value:.2f} (median {median_value:.2f})")
    if cells:
        print("  unseen-region sharpness vs the truth's: " + ", ".join(cells))
    mask = means.get("mask")
    if mask is not None:
        print(
            f"  unseen mask, model vs depth: iou {mask['iou']:.4f}  model unseen "
            f"{mask['model_unseen_fraction']:.4f}  true unseen {mask['true_unseen_fraction']:.4f}"
        )
    counts = results["empty_regions"]["targets"]
    if any(counts.values()):
        shown = ", ".join(f"{region} in {n}" for region, n in counts.items() if n)
        print(f"  empty regions (no metrics): {shown} of {results['num_targets']} targets")


def _unseen_sharpness(group: dict) -> float | None:
    """A metrics group's unseen-region sharpness; None where the region is empty."""
    unseen = group.get("unseen")
    return None if unseen is None else unseen["sharpness"]


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    device = resolve_device(args.device)
    reader = _reader(args)
    dataset = _dataset(args, reader)
    pipe = NVSPipeline.from_pretrained(args.checkpoint, device)
    if args.size is not None:
        check_render_size(tuple(args.size), pipe.model.patch_size)
    num_scenes = len(dataset) if args.max_scenes is None else min(len(dataset), args.max_scenes)
    sampling = _sampling(args, pipe.model.can_sample, num_scenes)
    lpips_net, lpips_reason = _lpips(args, device)
    with output_dir(args.out, args.overwrite) as out:  # removed again if anything fails
        results = evaluate(
            pipe,
            dataset,
            out_dir=out,
            lpips_net=lpips_net,
            lpips_unavailable=lpips_reason,
            sampling=sampling,
            max_scenes=args.max_scenes,
            mask_tolerance=args.mask_tolerance,
            model_info={
                "checkpoint": args.checkpoint,
                "path": str(args.checkpoint or DEFAULT_MODEL_DIR),
                "embedded": args.checkpoint is None,
            },
            dataset_info={
                "root": str(args.data),
                "index": None if args.index is None else str(args.index),
                "num_sources": None if args.index is not None else args.num_sources,
                "max_targets": None if args.index is not None else args.max_targets,
                "image_size": None if args.size is None else list(args.size),
            },
        )
    _print_means(results)
    print(f"wrote {out / RESULTS_FILE} and {len(results['scenes'])} grid(s)")
    return 0
