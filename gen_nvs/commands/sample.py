"""`gen-nvs sample`: diffusion samples of novel views from source images.

Sources come with cameras (a RealEstate10K metadata JSON) or pose-free; the targets are a
trajectory preset, explicit cameras or one view (see `gen_nvs.inputs`). Each target view
is sampled `--samples` times (`NVSPipeline.sample`), keeping what the sources saw
(`--mask`). Written under --out:

    sample.json                   settings, depth scale, source names, what each file is
    cameras.json                  the target cameras (RealEstate10K metadata format)
    target_000/regression_rgb.png    the regression render (the known region)
    target_000/regression_depth.png  16-bit depth: metres-or-units = value / depth_scale
    target_000/mask.png              white where the view was generated
    target_000/sample_00_rgb.png, sample_00_depth.png, ...
    sample_00.ply, ...            each sample's target views fused into one point cloud
    sample_00.mp4, ...            each sample's target views as a video (more than one
                                  target; --video mp4/gif/none, --fps, --video-quality)
    side_by_side.mp4              with --side-by-side: regression | sample 0 | its depth

Points, depth and cameras are in the input world frame when source cameras are given,
else in the first source camera's frame at the normalised scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

import samplers
from gen_nvs.data.scene import load_image
from gen_nvs.geometry import rgbd
from gen_nvs.inputs import load_source_views
from gen_nvs.models.nvs import EncodedScene, require_diffusion
from gen_nvs.options import (
    add_input_arguments,
    add_target_arguments,
    add_video_arguments,
    resolve_device,
    source_render_size,
    target_spec_from_args,
    video_formats,
)
from gen_nvs.outputs import (
    DEPTH_FORMAT,
    check_output_dir,
    colorize_depth,
    fit_depth_scale,
    output_dir,
    side_by_side,
    to_pil,
    write_cameras,
    write_depth,
    write_gray,
    write_point_cloud,
    write_regression,
    write_rgb,
    write_summary,
    write_video,
)
from gen_nvs.pipeline import NVSPipeline
from gen_nvs.sampling import (
    NOISE_MODES,
    SampledViews,
    SamplingConfig,
    check_sampling_options,
    scene_to_world,
)
from gen_nvs.unseen import MASK_MODES, PREDICTED_REL_TOL
from samplers.sampling import check_seeds

DEFAULTS = SamplingConfig()  # the project's one set of sampling defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    add_target_arguments(parser)
    add_video_arguments(parser)
    parser.add_argument(
        "--noise", choices=["auto", *NOISE_MODES], default="auto",
        help="independent: each target view its own noise; shared: every view of a sample "
        "the same, for consistent frames along a trajectory (auto: shared for several "
        "targets, independent for one)",
    )  # fmt: skip
    parser.add_argument(
        "--side-by-side", action="store_true",
        help="also write side_by_side.<format>, a video of regression | sample 0 | depth of "
        "sample 0 (needs more than one target view and a --video format)",
    )  # fmt: skip
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--sampler",
        default=DEFAULTS.sampler,
        help=f"scheduler: {', '.join(samplers.SCHEDULER_NAMES)} (default {DEFAULTS.sampler})",
    )
    group.add_argument(
        "--steps", type=int, default=DEFAULTS.steps, help=f"solver steps ({DEFAULTS.steps})"
    )
    group.add_argument(
        "--guidance", type=float, default=DEFAULTS.guidance,
        help=f"classifier-free guidance scale (default {DEFAULTS.guidance:g}: off)",
    )  # fmt: skip
    group.add_argument(
        "--guidance-rescale", type=float, default=0.0, help="guidance rescale phi (default 0)"
    )
    group.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="guide only at noise-to-signal ratios in (LOW, HIGH] (default: every step)",
    )
    group.add_argument("--eta", type=float, default=DEFAULTS.eta, help="DDIM stochasticity (0)")
    group.add_argument(
        "--no-patch-shift",
        dest="patch_shift",
        action="store_false",
        help="keep the decoder's patch grid fixed at the image corner (default: it moves "
        "between denoising steps, so samples carry no block seams along it)",
    )
    group.add_argument(
        "--samples", type=int, default=DEFAULTS.samples,
        help=f"samples per target (default {DEFAULTS.samples})",
    )  # fmt: skip
    group.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="sample k uses seed + k, each in [0, 2**64 - 1] (default 0)",
    )
    group.add_argument(
        "--mask",
        choices=MASK_MODES,
        default=DEFAULTS.mask,
        help="what to generate: auto (unseen by geometry, else by confidence), confidence, "
        "off (everything) (default auto)",
    )
    group.add_argument(
        "--mask-file",
        metavar="PNG",
        help="explicit mask for every target, --size large, white = generate (instead of --mask)",
    )
    group.add_argument(
        "--conf-threshold",
        type=float,
        help="the confidence mask's threshold, > 1: a pixel whose confidence is below it is "
        "generated (default: half the sources' median)",
    )
    group.add_argument(
        "--mask-tolerance",
        type=float,
        default=PREDICTED_REL_TOL,
        help="auto mask: a target pixel counts as seen when its predicted point lies within "
        "this relative depth tolerance of a source's predicted surface (default "
        f"{PREDICTED_REL_TOL:g}, chosen for the embedded model's depth)",
    )
    group.add_argument(
        "--resample-jumps", type=int, default=0, help="RePaint resampling per step (default 0)"
    )
    group.add_argument(
        "--max-batch",
        type=int,
        help="samples per sampler call (default: as many as fit --memory-budget)",
    )
    group.add_argument(
        "--memory-budget",
        type=float,
        metavar="GIB",
        help="memory sampling may use (default: free GPU memory, or 8 GiB on the CPU)",
    )


def run(args: argparse.Namespace) -> int:
    config, options = _sampling(args)  # checked before any loading
    videos = video_formats(args)
    spec = target_spec_from_args(args)
    if args.side_by_side:  # explicit cameras are counted once read, below
        _check_side_by_side(videos, 1 if spec.kind == "view" else spec.frames)
    check_output_dir(args.out, args.overwrite)  # before any loading
    device = resolve_device(args.device)
    pipe = NVSPipeline.from_pretrained(args.checkpoint, device)
    require_diffusion(pipe.model, f"checkpoint {args.checkpoint or '(the embedded default)'}")
    image_hw = source_render_size(args, pipe.model.patch_size)
    sources = load_source_views(args.images, args.cameras, image_hw)
    mask = None if args.mask_file is None else _read_mask(Path(args.mask_file), image_hw)

    with output_dir(args.out, args.overwrite) as out:  # removed again if anything fails
        scene = pipe.encode(sources)
        spec = scene.focused(spec)
        targets = pipe.targets(scene, spec)
        if args.side_by_side:
            _check_side_by_side(videos, targets.num_views)
        if mask is not None:
            mask = mask.expand(1, targets.num_views, *image_hw).to(device)
        config = dataclasses.replace(config, noise=_noise(args, targets.num_views))

        with tqdm(desc="sampling", unit="step") as bar:

            def progress(info: samplers.StepInfo) -> None:
                bar.total = info.num_steps
                bar.update(1)

            views = pipe.sample(scene, targets, config, callback=progress, mask=mask, **options)
        files = _write_outputs(out, scene.encoded, views, targets.fxfycxcy)
        if targets.num_views > 1 and videos:
            files["videos"] = _write_videos(out, views, videos, args)
        summary = out / "sample.json"
        write_summary(summary, args, sources, scene.encoded, spec.focus, targets.num_views, files)
    print(
        f"wrote {args.samples} sample(s) of {targets.num_views} target view(s) to {out} "
        f"(see {summary})"
    )
    return 0


def _write_videos(
    out: Path, views: SampledViews, formats: list[str], args: argparse.Namespace
) -> list[str]:
    """Each sample's trajectory as a video, and with --side-by-side regression | sample 0 |
    depth (sample 0's, else the regression's); -> the file names."""
    written, fps, crf = [], args.fps, args.video_quality
    for k in range(views.rgb.shape[0]):
        frames = [to_pil(frame) for frame in views.rgb[k, 0]]
        written += write_video(frames, out, formats, fps, crf, f"sample_{k:02d}")
    if args.side_by_side:
        regression = [to_pil(frame) for frame in views.regression.rgb[0]]
        sample = [to_pil(frame) for frame in views.rgb[0, 0]]
        if views.depth is not None:
            depth = views.depth[0, 0]
        elif views.regression.points is not None:
            depth = rgbd.points_to_depth(views.regression.points, views.target_c2w)[0]
        else:
            depth = None
        rows = [regression, sample]
        if depth is not None:
            rows.append([colorize_depth(d) for d in depth])
        frames = side_by_side(*rows)
        written += write_video(frames, out, formats, fps, crf, "side_by_side")
    return written


def _check_side_by_side(videos: list[str], num_views: int) -> None:
    """ValueError unless --side-by-side has a video to write: a format, more than one view."""
    if not videos:
        raise ValueError(
            "--side-by-side writes a video; it needs --video mp4 or gif, got --video none"
        )
    if num_views < 2:
        raise ValueError(
            f"--side-by-side writes a video of the target views; it needs more than one, got "
            f"{num_views}"
        )


def _noise(args: argparse.Namespace, num_views: int) -> str:
    if args.noise != "auto":
        return args.noise
    return "shared" if num_views > 1 else "independent"


def _sampling(args: argparse.Namespace) -> tuple[SamplingConfig, dict]:
    """The sampling options of the command line, checked (`check_sampling_options`) ->
    (SamplingConfig, the further options of `NVSPipeline.sample`)."""
    _check_options(args)
    options = dict(
        guidance_rescale=args.guidance_rescale,
        guidance_interval=None if args.guidance_interval is None else tuple(args.guidance_interval),
        conf_threshold=args.conf_threshold,
        mask_tolerance=args.mask_tolerance,
        resample_jumps=args.resample_jumps,
        max_batch=args.max_batch,
        memory_budget=None if args.memory_budget is None else math.ceil(args.memory_budget * 2**30),
    )
    check_sampling_options(
        scheduler=args.sampler, steps=args.steps, num_samples=args.samples, eta=args.eta,
        guidance_scale=args.guidance, mask_mode=args.mask, **options,
    )  # fmt: skip
    config = SamplingConfig(
        sampler=args.sampler, steps=args.steps, guidance=args.guidance, samples=args.samples,
        seed=args.seed, mask=args.mask, eta=args.eta, patch_shift=args.patch_shift,
    )  # fmt: skip
    return config, options


def _check_options(args: argparse.Namespace) -> None:
    """ValueError, naming the option, for what the command line alone gets wrong (before
    `check_sampling_options` sees the values, in the units it takes)."""
    if args.samples >= 1:  # fewer is check_sampling_options' error
        check_seeds(args.seed, args.samples, "--seed")
    budget = args.memory_budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"--memory-budget must be a positive number of GiB, got {budget}")
    if args.mask_file is not None and args.mask != "auto":
        raise ValueError(f"give --mask-file or --mask, got both (--mask {args.mask})")
    if args.conf_threshold is not None and (args.mask == "off" or args.mask_file is not None):
        used = "--mask off" if args.mask == "off" else "--mask-file"
        raise ValueError(
            f"--conf-threshold sets the confidence mask's threshold, but {used} has no such mask"
        )


def _read_mask(path: Path, image_hw: tuple[int, int]) -> Tensor:
    """A mask image -> [h, w] in [0, 1] (the mean of its channels), checked against --size."""
    mask = load_image(path).mean(dim=0)  # (h, w)
    if tuple(mask.shape) != tuple(image_hw):
        raise ValueError(
            f"mask file {path} is {mask.shape[1]}x{mask.shape[0]}, expected {image_hw[1]}x"
            f"{image_hw[0]} (--size H W)"
        )
    return mask


def _write_outputs(
    out: Path, scene: EncodedScene, views: SampledViews, target_fxfycxcy: Tensor
) -> dict:
    """Write the PNGs, PLYs and cameras of the first scene; -> what sample.json lists.

    Without sampled points (an rgb-only diffusion decoder) there are no sample depth maps
    and point clouds; without a point head no depth at all.
    """
    scale = scene.scale[0].item()
    num_samples = views.rgb.shape[0]
    depth = regression_depth = None
    if views.depth is not None:
        depth = views.depth[:, 0] * scale  # (n, t, h, w)
    if views.regression.points is not None:
        regression_depth = rgbd.points_to_depth(views.regression.points, views.target_c2w)[0]
        regression_depth = regression_depth * scale  # (t, h, w)
    known = [d.flatten() for d in (depth, regression_depth) if d is not None]
    depth_scale = fit_depth_scale(torch.cat(known)) if known else None
    mask = views.mask[0] if views.mask is not None else torch.ones_like(views.rgb[0, 0, :, 0])
    folders = write_regression(out, views.regression.rgb[0], regression_depth, depth_scale)
    for j, folder in enumerate(folders):
        write_gray(folder / "mask.png", mask[j])
        for k in range(num_samples):
            write_rgb(folder / f"sample_{k:02d}_rgb.png", views.rgb[k, 0, j])
            if depth is not None:
                write_depth(folder / f"sample_{k:02d}_depth.png", depth[k, j], depth_scale)
    plys = []
    if views.points is not None:
        points = scene_to_world(scene, views.points.transpose(0, 1))[0]  # (n, t, h, w, 3)
        for k in range(num_samples):
            path = out / f"sample_{k:02d}.ply"
            plys.append(write_point_cloud(path, points[k], views.rgb[k, 0], depth[k]).name)
    write_cameras(out / "cameras.json", scene, views.target_c2w[0], target_fxfycxcy)
    return {
        "depth_scale": depth_scale,
        "depth": DEPTH_FORMAT,
        "mask": "white where the view was generated (unseen by the sources), black where kept",
        "point_clouds": plys,
        "cameras": "cameras.json",
    }
