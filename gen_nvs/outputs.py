"""The files `gen-nvs render` and `gen-nvs sample` write, and the pictures the app shows.

Under an output directory, target view j's files go in `target_{j:03d}/`; both commands
start with its regression render (`write_regression`):

    target_000/regression_rgb.png    8-bit RGB
    target_000/regression_depth.png  16-bit depth: units = value / depth_scale, 0 = none
    cameras.json                     the target cameras (RealEstate10K metadata format)
    <name>.json                      the run's summary (`write_summary`)

`output_dir` makes the output directory (and takes back what it made when the command
fails). Point clouds are PLY files (`gen_nvs.geometry.rgbd.write_ply`), videos MP4 or
animated GIFs. Images go in as tensors [3, h, w] in [0, 1] (or [h, w] maps), pictures
come out as PIL images.

Dimension legend: `t` target views, `h`/`w` image height/width.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gen_nvs.data.re10k import depth_scale_for, quantise_depth, write_png
from gen_nvs.geometry import rgbd
from gen_nvs.geometry.cameras import invert_rigid

if TYPE_CHECKING:
    from gen_nvs.inputs import SourceViews
    from gen_nvs.models.nvs import EncodedScene

MAX_PLY_POINTS = 500_000
REGRESSION_RGB = "regression_rgb.png"
REGRESSION_DEPTH = "regression_depth.png"
DEPTH_FORMAT = "uint16 PNG, depth = value / depth_scale (0: no depth), z in the target camera"
# Polynomial fit of the Turbo colour map (Mikhailov, Google 2019), lowest order first.
_TURBO = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


# --------------------------------------------------------------------------------------
# Images and depth maps
# --------------------------------------------------------------------------------------


def to_pil(image: Tensor) -> Image.Image:
    """[3, h, w] in [0, 1] -> RGB PIL image."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, h, w], got {list(image.shape)}")
    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def write_rgb(path: Path, rgb: Tensor) -> None:
    """rgb [3, h, w] in [0, 1] -> 8-bit PNG."""
    to_pil(rgb).save(path)


def write_gray(path: Path, values: Tensor) -> None:
    """values [h, w] in [0, 1] -> 8-bit grayscale PNG."""
    Image.fromarray((values.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()).save(path)


def fit_depth_scale(depth: Tensor) -> float:
    """Stored value per depth unit: the largest power of two that keeps every finite
    positive depth within uint16 (1 when there is none)."""
    valid = depth[rgbd.valid_depth(depth)]
    if valid.numel() == 0:
        return 1.0
    return depth_scale_for(valid.max().item())


def write_depth(path: Path, depth: Tensor, depth_scale: float) -> None:
    """depth [h, w] -> 16-bit PNG of depth * depth_scale, the RealEstate10K layout's depth
    format (`gen_nvs.data.re10k`); 0 where there is no depth. ValueError when a depth
    does not fit (`fit_depth_scale` gives a scale where all do)."""
    write_png(quantise_depth(depth, rgbd.valid_depth(depth), depth_scale, str(path)), path)


def turbo(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + [3]) on the Turbo colour map."""
    x = np.clip(values, 0.0, 1.0)[..., None]
    powers = x ** np.arange(6)  # (..., 6)
    return (np.clip(powers @ _TURBO.T, 0.0, 1.0) * 255).round().astype(np.uint8)


def colorize_depth(depth: Tensor, valid: Tensor | None = None) -> Image.Image:
    """Depth [h, w] -> Turbo-coloured inverse depth (near red, far blue); invalid pixels black.

    The range is the 2nd to 98th percentile of the valid inverse depths, so that a few
    outliers do not wash out the picture; it spans Turbo's blue to red (its near-black ends
    would read as missing depth).
    """
    if depth.ndim != 2:
        raise ValueError(f"depth must be [h, w], got {list(depth.shape)}")
    depth = depth.detach().float().cpu()
    ok = torch.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok &= valid.detach().cpu().bool()
    rgb = np.zeros((*depth.shape, 3), dtype=np.uint8)
    if ok.any():
        inverse = 1.0 / depth[ok]
        lo, hi = torch.quantile(inverse, torch.tensor([0.02, 0.98])).tolist()
        scaled = ((inverse - lo) / max(hi - lo, 1e-8)).clamp(0, 1).numpy()
        rgb[ok.numpy()] = turbo(0.1 + 0.8 * scaled)
    return Image.fromarray(rgb)


def write_gif(frames: Sequence[Image.Image], path: str | Path, fps: float = 8.0) -> Path:
    """Write frames as a looping animated GIF (playable everywhere, no video codec needed)."""
    if not frames:
        raise ValueError("a video needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = [f.convert("RGB") for f in frames]
    first.save(
        path,
        format="GIF",
        save_all=True,
        append_images=rest,
        duration=round(1000 / fps),
        loop=0,
        optimize=False,
    )
    return path


VIDEO_FORMATS = ("mp4", "gif")
DEFAULT_CRF = 18  # H.264 constant rate factor: 0 lossless, 18 visually lossless, 51 worst


def write_mp4(
    frames: Sequence[Image.Image], path: str | Path, fps: float = 8.0, crf: int = DEFAULT_CRF
) -> Path:
    """Write frames as an H.264 MP4 (yuv420p, what browsers and players expect) through
    PyAV, which brings its own FFmpeg. yuv420p needs even sizes: an odd width or height
    gets its last column or row repeated. `crf`: quality, 0 (lossless) to 51."""
    import av  # imported here: only video writing needs it

    if not frames:
        raise ValueError("a video needs at least one frame")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 <= crf <= 51:
        raise ValueError(f"video quality (crf) must be in 0..51, got {crf}")
    images = [np.asarray(frame.convert("RGB")) for frame in frames]
    h, w = images[0].shape[:2]
    if any(image.shape[:2] != (h, w) for image in images):
        raise ValueError("video frames must all have the same size")
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = w + w % 2, h + h % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.pad(image, pad, mode="edge"), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush
    return path


def write_video(
    frames: Sequence[Image.Image],
    out: Path,
    formats: Sequence[str],
    fps: float,
    crf: int = DEFAULT_CRF,
    stem: str = "video",
) -> list[str]:
    """Write `stem.mp4` and/or `stem.gif` in `out`; -> the file names written."""
    unknown = set(formats) - set(VIDEO_FORMATS)
    if unknown:
        raise ValueError(f"video formats must be among {VIDEO_FORMATS}, got {sorted(unknown)}")
    written = []
    for fmt in formats:
        file = out / f"{stem}.{fmt}"
        if fmt == "mp4":
            write_mp4(frames, file, fps, crf)
        else:
            write_gif(frames, file, fps)
        written.append(file.name)
    return written


def side_by_side(*rows: Sequence[Image.Image]) -> list[Image.Image]:
    """Frames of several videos of one length placed left to right (e.g. regression |
    sample | depth)."""
    if not rows or len({len(row) for row in rows}) != 1:
        raise ValueError("side-by-side videos need the same number of frames each")
    frames = []
    for parts in zip(*rows, strict=True):
        height = max(p.height for p in parts)
        canvas = Image.new("RGB", (sum(p.width for p in parts), height))
        x = 0
        for part in parts:
            canvas.paste(part.convert("RGB"), (x, 0))
            x += part.width
        frames.append(canvas)
    return frames


# --------------------------------------------------------------------------------------
# The output directory of `render` and `sample`
# --------------------------------------------------------------------------------------


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """ValueError unless `path` can be written: absent (below a folder this process may
    write in), an empty directory, or (with `overwrite`) a directory whose files are then
    replaced. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ValueError(f"output directory {path} is not empty; pass --overwrite to write into it")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise ValueError(f"cannot create the output folder {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == path else f"its parent {existing}"
        raise ValueError(f"cannot write the output folder {path}: {where} is not writable")
    return path


def prepare_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Create `path` after `check_output_dir`; ValueError naming the folder and the reason
    when the system refuses (permissions, a read-only or virtual file system)."""
    path = check_output_dir(path, overwrite)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot create the output folder {path} in {_nearest_existing(path)}: "
            f"{err.strerror or err}"
        ) from err
    return path


def _nearest_existing(path: Path) -> Path:
    """`path` itself or its nearest ancestor that exists (the root at worst)."""
    return next(p for p in (path, *path.parents) if p.exists() or p == p.parent)


@contextlib.contextmanager
def output_dir(path: str | Path, overwrite: bool) -> Iterator[Path]:
    """`prepare_output_dir`, undone when the body fails: what the command created goes
    (the folder itself if it made it), what was there before stays."""
    path = Path(path)
    created = not path.exists()
    before = set() if created else set(path.iterdir())
    out = prepare_output_dir(path, overwrite)
    try:
        yield out
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for item in set(out.iterdir()) - before:
                shutil.rmtree(item) if item.is_dir() else item.unlink(missing_ok=True)
        raise


def _target_folder(j: int) -> str:
    return f"target_{j:03d}"


def write_regression(
    out: Path, rgb: Tensor, depth: Tensor | None, depth_scale: float | None
) -> list[Path]:
    """The regression render of t targets, rgb [t, 3, h, w] and depth [t, h, w] | None
    (`write_depth` with `depth_scale`), into out/target_{j:03d}/ -> those folders."""
    folders = []
    for j in range(rgb.shape[0]):
        folder = out / _target_folder(j)
        folder.mkdir(exist_ok=True)
        write_rgb(folder / REGRESSION_RGB, rgb[j])
        if depth is not None:
            write_depth(folder / REGRESSION_DEPTH, depth[j], depth_scale)
        folders.append(folder)
    return folders


def write_point_cloud(path: Path, points: Tensor, rgb: Tensor, depth: Tensor) -> Path:
    """The points [t, h, w, 3] of t views, coloured by rgb [t, 3, h, w], fused into one PLY
    of at most `MAX_PLY_POINTS` points; pixels without depth ([t, h, w]) are left out."""
    xyz, colors = rgbd.fuse_point_clouds(
        points,
        rgb.permute(0, 2, 3, 1),
        valid=rgbd.valid_depth(depth),
        max_points=MAX_PLY_POINTS,
    )
    return rgbd.write_ply(path, xyz, colors)


def write_cameras(
    path: Path, scene: EncodedScene, target_c2w: Tensor, target_fxfycxcy: Tensor
) -> None:
    """Target cameras [t, 4, 4] (normalised frame) -> RealEstate10K metadata, in the input
    world frame, naming the regression renders as the frames' images."""
    c2w = target_c2w.double().clone()
    c2w[:, :3, 3] *= scene.scale[0].item()
    c2w = invert_rigid(scene.reference_w2c[0].double()) @ c2w
    frames = [
        {
            "image_path": f"{_target_folder(j)}/{REGRESSION_RGB}",
            "fxfycxcy": [float(x) for x in target_fxfycxcy[j]],
            "w2c": [[float(x) for x in row] for row in invert_rigid(c2w[j])],
        }
        for j in range(c2w.shape[0])
    ]
    path.write_text(json.dumps({"scene_name": "targets", "frames": frames}, indent=1) + "\n")


def write_summary(
    path: Path,
    args: argparse.Namespace,
    sources: SourceViews,
    scene: EncodedScene,
    focus: float | None,
    num_targets: int,
    files: dict,
) -> None:
    """The run's JSON summary: the command-line settings, the sources, the frame of the
    outputs, the focus distance, the number of targets and `files` (what each file is)."""
    settings = {k: v for k, v in vars(args).items() if k not in ("_module", "command")}
    summary = {
        "settings": settings,
        "sources": sources.names,
        "posed": scene.posed,
        "frame": "input world frame" if scene.posed else "first source camera, normalised scale",
        "focus": focus,
        "num_targets": num_targets,
        **files,
    }
    path.write_text(json.dumps(summary, indent=2) + "\n")
