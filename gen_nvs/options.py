"""Command-line options shared by `gen-nvs render`, `gen-nvs sample`, `gen-nvs eval` and
the app: the argparse arguments for the sources, model, size, device, output, target
cameras and videos, and the helpers that check their values and turn them into what
`gen_nvs.inputs` and `gen_nvs.outputs` take (ValueError naming the option otherwise).
"""

from __future__ import annotations

import argparse
import math

import torch

from gen_nvs.geometry.trajectories import DISTANCE_MEANING, MAX_TRAVEL
from gen_nvs.inputs import (
    DEFAULT_RESOLUTION,
    MAX_FRAMES,
    MAX_IMAGE_SIDE,
    MAX_VIEWS,
    TRAJECTORY_NAMES,
    TargetSpec,
    first_image_size,
    render_size,
)
from gen_nvs.models.checkpoint import HF_EXPORT_FORM
from gen_nvs.outputs import DEFAULT_CRF, VIDEO_FORMATS


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Options for the sources, model, size, device and output of `render` and `sample`."""
    group = parser.add_argument_group("inputs and output")
    group.add_argument(
        "--images",
        nargs="+",
        required=True,
        metavar="PATH",
        help=f"1-{MAX_VIEWS} source images, or one directory of them",
    )
    group.add_argument(
        "--cameras",
        metavar="JSON",
        help="source cameras, RealEstate10K metadata format (frames matched to the images by "
        "file name); default: pose-free, the model estimates them",
    )
    add_model_arguments(group, default_size=None, size_default="default: the first image's aspect")
    group.add_argument(
        "--resolution",
        type=int,
        default=DEFAULT_RESOLUTION,
        metavar="N",
        help="without --size: render about N x N pixels at the first image's aspect ratio, "
        f"sides multiples of the patch size, at most {MAX_IMAGE_SIDE} (default "
        f"{DEFAULT_RESOLUTION}, the embedded model's training size)",
    )
    add_output_arguments(group, "output directory")


def add_output_arguments(
    group: argparse._ActionsContainer,
    out_help: str,
    overwrite_help: str = "write into a non-empty --out directory",
) -> None:
    """--out DIR (required) and --overwrite, the output folder of every command that
    writes one (see `gen_nvs.outputs.check_output_dir`)."""
    group.add_argument("--out", required=True, metavar="DIR", help=out_help)
    group.add_argument("--overwrite", action="store_true", help=overwrite_help)


def add_model_arguments(
    group: argparse._ActionsContainer,
    default_size: tuple[int, int] | None = (64, 64),
    size_default: str = "default: as stored",
) -> None:
    """--checkpoint, --size and --device (to a parser or an argument group): which model
    runs, at what size, where (see `check_render_size` and `resolve_device`).

    default_size: --size when not given; None: the caller decides (`size_default` says how).
    """
    default = size_default
    if default_size is not None:
        default = f"default {default_size[0]} {default_size[1]}"
    group.add_argument(
        "--checkpoint",
        metavar="PATH",
        help=f"model export (directory or {HF_EXPORT_FORM}); default: the embedded model",
    )
    group.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=None if default_size is None else list(default_size),
        metavar=("H", "W"),
        help=f"input and render size, multiples of the model's patch size, at most "
        f"{MAX_IMAGE_SIDE} ({default})",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...",
    )


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """Options choosing the target cameras (see `target_spec_from_args`)."""
    group = parser.add_argument_group(
        "target cameras",
        "one of --trajectory, --target-cameras or a single view (--azimuth, --elevation, "
        "--distance, --from-source); default: --trajectory orbit",
    )
    group.add_argument(
        "--trajectory",
        choices=TRAJECTORY_NAMES,
        help="camera path around the first source camera (default orbit)",
    )
    group.add_argument(
        "--frames",
        type=int,
        default=8,
        help=f"views along the trajectory or keyframe path, 1-{MAX_FRAMES} (default 8)",
    )
    group.add_argument(
        "--trajectory-distance",
        type=float,
        metavar="D",
        help=f"how far the trajectory goes ({DISTANCE_MEANING}); default: the preset's",
    )
    group.add_argument(
        "--keyframes",
        metavar="JSON",
        help="a smooth path of --frames cameras through the cameras of this metadata JSON "
        "(RealEstate10K format, in the --cameras frame)",
    )
    group.add_argument(
        "--target-cameras",
        metavar="JSON",
        help="explicit target cameras, RealEstate10K metadata format, in the --cameras frame",
    )
    group.add_argument(
        "--azimuth", type=float, metavar="DEG", help="single view: degrees to the right"
    )
    group.add_argument("--elevation", type=float, metavar="DEG", help="single view: degrees up")
    group.add_argument(
        "--distance",
        type=float,
        help="single view: distance from the focus point (default: the source's)",
    )
    group.add_argument(
        "--from-source",
        type=int,
        metavar="I",
        help="single view: the source camera it turns from (default 0)",
    )
    group.add_argument(
        "--focus",
        type=float,
        help="distance from the reference camera to the point orbits look at, normalised "
        "scene units (default: the median depth the model sees from that camera)",
    )


def target_spec_from_args(args: argparse.Namespace) -> TargetSpec:
    """The TargetSpec of the `add_target_arguments` options; ValueError on a conflict or
    a value out of range, naming the option."""
    for option in ("azimuth", "elevation", "distance", "focus", "trajectory_distance"):
        value = getattr(args, option)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{option.replace('_', '-')} must be a finite number, got {value}")
    if not 1 <= args.frames <= MAX_FRAMES:
        raise ValueError(f"--frames must be between 1 and {MAX_FRAMES}, got {args.frames}")
    for option, value in (("--distance", args.distance), ("--focus", args.focus)):
        if value is not None and not 0 < value <= MAX_TRAVEL:
            raise ValueError(
                f"{option} must be in (0, {MAX_TRAVEL:g}] (normalised scene units), got {value}"
            )
    view_options = {
        "--azimuth": args.azimuth,
        "--elevation": args.elevation,
        "--distance": args.distance,
        "--from-source": args.from_source,
    }
    view = [name for name, value in view_options.items() if value is not None]
    others = [
        name
        for name, value in (
            ("--trajectory", args.trajectory),
            ("--target-cameras", args.target_cameras),
            ("--keyframes", args.keyframes),
        )
        if value is not None
    ]
    if args.trajectory_distance is not None and args.trajectory is None:
        raise ValueError("--trajectory-distance needs --trajectory")
    if len(others) + bool(view) > 1:
        raise ValueError(f"give one kind of target cameras, got {' and '.join(others + view)}")
    if view:
        return TargetSpec(
            azimuth_deg=args.azimuth or 0.0,
            elevation_deg=args.elevation or 0.0,
            distance=args.distance,
            from_source=args.from_source or 0,
            focus=args.focus,
        )
    return TargetSpec(
        trajectory=args.trajectory,
        frames=args.frames,
        cameras=args.target_cameras,
        keyframes=args.keyframes,
        trajectory_distance=args.trajectory_distance,
        focus=args.focus,
    )


def source_render_size(args: argparse.Namespace, patch_size: int) -> tuple[int, int]:
    """`--size`, or without it the first source image's aspect ratio at `--resolution`
    (`render_size`)."""
    if args.size is not None:
        image_hw = (int(args.size[0]), int(args.size[1]))
        check_render_size(image_hw, patch_size)
        return image_hw
    first = first_image_size(args.images)
    image_hw = render_size(first, args.resolution, patch_size)
    if max(image_hw) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"--resolution {args.resolution} at the aspect of the first image ({first[1]}x"
            f"{first[0]}) renders {image_hw[1]}x{image_hw[0]}, more than {MAX_IMAGE_SIDE} "
            "pixels a side; lower --resolution or give --size"
        )
    return image_hw


def check_render_size(image_hw: tuple[int, int], patch_size: int) -> None:
    """ValueError unless `--size` is positive, at most `MAX_IMAGE_SIDE` and a multiple of
    the model's patch size."""
    given = f"--size {image_hw[0]} {image_hw[1]}"
    if min(image_hw) < 1 or max(image_hw) > MAX_IMAGE_SIDE:
        raise ValueError(f"{given} must be between 1 and {MAX_IMAGE_SIDE} pixels a side")
    if image_hw[0] % patch_size or image_hw[1] % patch_size:
        raise ValueError(f"{given} must be multiples of the model's patch size {patch_size}")


def resolve_device(name: str) -> torch.device:
    """A `--device` value -> torch.device ("auto": cuda when available, else cpu);
    ValueError naming the option for a device that is unknown or not here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(
            f"--device: unknown device {name!r}; expected auto, cpu or cuda[:N]"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device: device {name!r} was asked for but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device: device {name!r} was asked for but there are "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device: device {name!r} was asked for but MPS is not available")
    elif device.type != "cpu":
        raise ValueError(f"--device: device {name!r} is not supported: use auto, cpu or cuda[:N]")
    return device


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """--fps, --video and --video-quality, shared by `render` and `sample`."""
    group = parser.add_argument_group("video (written when there is more than one target)")
    group.add_argument("--fps", type=float, default=8.0, help="frame rate (default 8)")
    group.add_argument(
        "--video", nargs="+", choices=[*VIDEO_FORMATS, "none"], default=["mp4"],
        help="video formats: mp4 (H.264), gif, both, or none (default mp4)",
    )  # fmt: skip
    group.add_argument(
        "--video-quality", type=int, default=DEFAULT_CRF, metavar="CRF",
        help=f"H.264 CRF, 0 (lossless) to 51 (worst) (default {DEFAULT_CRF})",
    )  # fmt: skip


def video_formats(args: argparse.Namespace) -> list[str]:
    """The checked video options of `add_video_arguments` -> the formats to write."""
    if not (args.fps > 0 and math.isfinite(args.fps)):
        raise ValueError(f"--fps must be positive and finite, got {args.fps}")
    if not 0 <= args.video_quality <= 51:
        raise ValueError(f"--video-quality must be in 0..51, got {args.video_quality}")
    if "none" in args.video:
        if len(args.video) > 1:
            raise ValueError(f"--video none cannot be combined with {args.video}")
        return []
    return list(dict.fromkeys(args.video))
