"""User inputs shared by `gen-nvs render`, `gen-nvs sample` and the app: source images
(with optional cameras) and the target cameras to render or sample.

Source cameras come in the RealEstate10K metadata format (`gen_nvs.data.re10k`): a JSON
object whose `frames` hold `image_path`, `fxfycxcy` (pixels of that image) and the OpenCV
`w2c`. Without cameras the input is pose-free: the model's camera head estimates the
sources, in the scene frame of the first source camera at the normalised scale.

Targets are built in one of four ways (`TargetSpec`):
- a trajectory preset (`TRAJECTORY_PRESETS`, or "interpolate" through the sources) around
  the first source camera of the encoded scene, in its normalised frame;
- explicit cameras from a JSON file in the same metadata format, in the input world frame
  (for pose-free input: the normalised frame of the first source camera);
- a smooth path through the cameras of such a JSON file (keyframes), in the same frame;
- one view on a sphere around the point `focus` in front of a source camera, at an
  azimuth, elevation and distance, in the normalised frame.
`TargetCameras.normalized` says which frame the cameras are in: pass it as `normalized`
to `NVSModel.render` and `sample_views`.

The command-line options that choose all this are in `gen_nvs.options`.

Dimension legend:
    s   source views        t   target views
    h, w    image height / width of the model's inputs and renders
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from gen_nvs.data.re10k import read_metadata
from gen_nvs.data.scene import center_crop_resize, exif_orientation_size, load_image
from gen_nvs.geometry.cameras import (
    MAX_FOV_DEG,
    center_crop_box,
    crop_resize_intrinsics,
    fov_to_focal,
    invert_rigid,
    look_at,
    normalize_scene,
    validate_cameras,
)
from gen_nvs.geometry.rgbd import points_to_depth
from gen_nvs.geometry.trajectories import (
    TRAJECTORY_PRESETS,
    check_distance,
    interpolate,
    make_trajectory,
)

if TYPE_CHECKING:
    from gen_nvs.models.decoder import DecoderOutput
    from gen_nvs.models.nvs import EncodedScene, NVSModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TRAJECTORY_NAMES = (*TRAJECTORY_PRESETS, "interpolate")
MAX_VIEWS = 10
# Source images must agree this closely: a wider spread is almost surely a mix-up
# (portrait with landscape, a thumbnail among photos), not one capture.
MAX_ASPECT_SPREAD = 1.25  # largest aspect ratio / smallest
MAX_SIZE_SPREAD = 4.0  # longest side / shortest longest side
MIN_IMAGE_SIDE = 16  # pixels on the shorter side of a source image
# The longest side of an image the commands make (renders, procedural scenes): 4096 x
# 4096 RGB is 200 MB in float32 per view, and every larger request seen was a typo.
MAX_IMAGE_SIDE = 4096
DEFAULT_RESOLUTION = 64  # render/sample without --size: about 64 x 64 pixels
CROP_NOTE_FRACTION = 0.02  # cropping more of a side than this is said on stderr
MAX_UPSAMPLING = 4.0  # beyond this a source image is upsampled with a warning
# The most views a trajectory may have: 7 minutes of video at 24 fps. Every view is kept
# in memory (and in the video), so a mistyped count would allocate until it crashes.
MAX_FRAMES = 10000
# Pose-free input has no intrinsics; targets (and sources, where needed) assume this.
DEFAULT_FOV_DEG = 60.0
# Focus distance (normalised scene units) when no depth tells a better one.
DEFAULT_FOCUS = 1.0
# How far (normalised scene units, the scene about 1 across) float32 rounding may move a
# source camera before its cameras file is refused (`_check_float32_placement`).
MAX_PLACEMENT_ERROR = 1e-3


# --------------------------------------------------------------------------------------
# Source views
# --------------------------------------------------------------------------------------


@dataclass
class SourceViews:
    """Source images ready for `NVSModel.encode`.

    images: [s, 3, h, w] in [0, 1], centre-cropped and resized to the model's input size.
    c2w: [s, 4, 4] OpenCV camera-to-world poses (input world frame), or None (pose-free).
    fxfycxcy: [s, 4] intrinsics in pixels of `images`, or None (pose-free).
    names: the image file names, in view order.
    """

    images: Tensor
    c2w: Tensor | None
    fxfycxcy: Tensor | None
    names: list[str]

    @property
    def posed(self) -> bool:
        return self.c2w is not None

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def batch(self, device: torch.device | str) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(images [1, s, 3, h, w], c2w [1, s, 4, 4] or None, fxfycxcy [1, s, 4] or None)
        on `device`: the arguments of `NVSModel.encode`."""

        def one(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[None].to(device)

        return one(self.images), one(self.c2w), one(self.fxfycxcy)


def list_image_files(paths: Sequence[str | Path]) -> list[Path]:
    """`--images` values -> image files: the files as given, or the image files of one
    directory (by suffix, `IMAGE_SUFFIXES`), sorted by name."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no source images given")
    directories = [p for p in paths if p.is_dir()]
    if directories:
        if len(paths) > 1:
            raise ValueError(
                f"give image files or one directory, got directory {directories[0]} among "
                f"{len(paths)} paths"
            )
        files = sorted(
            p
            for p in directories[0].iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise ValueError(
                f"directory {directories[0]} holds no image files ({' '.join(IMAGE_SUFFIXES)})"
            )
        return files
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"source image not found: {path}")
    return paths


def render_size(image_hw: tuple[int, int], resolution: int, patch_size: int) -> tuple[int, int]:
    """The render size that keeps an input's aspect ratio at about `resolution`^2 pixels,
    both sides multiples of `patch_size` (at least one patch)."""
    if resolution < patch_size:
        raise ValueError(f"--resolution must be >= the patch size {patch_size}, got {resolution}")
    if resolution > MAX_IMAGE_SIDE:
        raise ValueError(f"--resolution must be at most {MAX_IMAGE_SIDE}, got {resolution}")
    aspect = image_hw[1] / image_hw[0]
    h, w = resolution / math.sqrt(aspect) / patch_size, resolution * math.sqrt(aspect) / patch_size
    # Of the patch grids around (h, w), the one closest in aspect, then in area.
    grids = [
        (max(1, gh), max(1, gw))
        for gh in (math.floor(h), math.ceil(h))
        for gw in (math.floor(w), math.ceil(w))
    ]
    gh, gw = min(
        grids,
        key=lambda g: (round(abs(math.log(g[1] / g[0] / aspect)), 6), abs(g[0] * g[1] - h * w)),
    )
    return gh * patch_size, gw * patch_size


def first_image_size(paths: Sequence[str | Path]) -> tuple[int, int]:
    """(h, w) of the first source image as `load_image` reads it (EXIF orientation
    applied), from its header."""
    files = list_image_files(paths)
    try:
        with Image.open(files[0]) as image:
            return exif_orientation_size(image)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {files[0]}: {err}") from None


def crop_note(names: Sequence[str], sizes: Sequence[tuple[int, int]], out_hw) -> str | None:
    """A line on what centre-cropping to the aspect of `out_hw` removes, when it removes
    more than CROP_NOTE_FRACTION of an image's width or height; else None."""
    worst, name, side = 0.0, "", ""
    for file, size in zip(names, sizes, strict=True):
        _, _, crop_h, crop_w = center_crop_box(size, out_hw)
        for lost, which in ((1 - crop_w / size[1], "width"), (1 - crop_h / size[0], "height")):
            if lost > worst:
                worst, name, side = lost, file, which
    if worst <= CROP_NOTE_FRACTION:
        return None
    return (
        f"source images are centre-cropped to the render size {out_hw[1]}x{out_hw[0]}: "
        f"{name} loses {100 * worst:.0f}% of its {side} (leave out --size to keep the aspect)"
    )


def load_source_views(
    paths: Sequence[str | Path],
    cameras: str | Path | None = None,
    image_hw: tuple[int, int] = (64, 64),
    max_views: int = MAX_VIEWS,
) -> SourceViews:
    """Load 1..max_views source images (files, or one directory), centre-cropped to the
    aspect of `image_hw` and resized to it.

    cameras: a RealEstate10K-style metadata JSON; its frames are matched to the images by
        file name (it may hold more frames than images) and their intrinsics converted to
        the cropped and resized images. None: pose-free.
    Raises FileNotFoundError for a missing file and ValueError for anything else that
    does not fit (non-image files, too many images, images of very different aspect
    ratios or sizes, cameras that do not match the images), naming what is wrong.
    """
    _check_image_hw(image_hw)
    files = list_image_files(paths)
    if len(files) > max_views:
        raise ValueError(
            f"{len(files)} source images given, at most {max_views} source views are supported"
        )
    raw = [load_image(path) for path in files]  # each [3, h_i, w_i]
    sizes = [tuple(image.shape[-2:]) for image in raw]
    _check_sizes(files, sizes)
    images = torch.stack([center_crop_resize(image, image_hw) for image in raw])  # (s, 3, h, w)
    names = [path.name for path in files]
    note = crop_note(names, sizes, image_hw)
    if note is not None:
        print(f"gen-nvs: note: {note}", file=sys.stderr)
    smallest = _argmin([min(size[0] / image_hw[0], size[1] / image_hw[1]) for size in sizes])
    factor = min(image_hw[0] / sizes[smallest][0], image_hw[1] / sizes[smallest][1])
    if factor > MAX_UPSAMPLING:
        print(
            f"gen-nvs: warning: source image {names[smallest]} is {_wxh(sizes[smallest])}, "
            f"upsampled {factor:.1f}x to {image_hw[1]}x{image_hw[0]}: expect blurred views",
            file=sys.stderr,
        )
    if cameras is None:
        return SourceViews(images=images, c2w=None, fxfycxcy=None, names=names)
    c2w, fxfycxcy = _source_cameras(Path(cameras), names, sizes, image_hw)
    return SourceViews(images=images, c2w=c2w, fxfycxcy=fxfycxcy, names=names)


def _check_image_hw(image_hw: Sequence[int]) -> None:
    if len(image_hw) != 2 or min(image_hw) < 1:
        raise ValueError(f"image size must be two positive numbers (H W), got {list(image_hw)}")
    if max(image_hw) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"image size {list(image_hw)} is too large: at most {MAX_IMAGE_SIDE} pixels a side"
        )


def _check_sizes(files: list[Path], sizes: list[tuple[int, int]]) -> None:
    """ValueError naming an image too small to use, or two images whose aspect ratios or
    sizes differ too much."""
    small = _argmin([min(size) for size in sizes])
    if min(sizes[small]) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"source image {files[small].name} is {_wxh(sizes[small])} pixels; at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} are needed"
        )
    aspects = [w / h for h, w in sizes]
    widest, narrowest = _argmax(aspects), _argmin(aspects)
    if aspects[widest] / aspects[narrowest] > MAX_ASPECT_SPREAD:
        raise ValueError(
            f"source images differ too much in aspect ratio: {files[widest].name} is "
            f"{_wxh(sizes[widest])} and {files[narrowest].name} is {_wxh(sizes[narrowest])} "
            f"(at most {MAX_ASPECT_SPREAD}x apart); use views of one capture"
        )
    longest = [max(size) for size in sizes]
    big, small = _argmax(longest), _argmin(longest)
    if longest[big] / longest[small] > MAX_SIZE_SPREAD:
        raise ValueError(
            f"source images differ too much in size: {files[big].name} is {_wxh(sizes[big])} "
            f"and {files[small].name} is {_wxh(sizes[small])} (at most {MAX_SIZE_SPREAD}x "
            "apart); use views of one capture"
        )


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _argmin(values: list[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def _source_cameras(
    path: Path, names: list[str], sizes: list[tuple[int, int]], image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The metadata frames of the named images -> (c2w [s, 4, 4], fxfycxcy [s, 4] in pixels
    of the `image_hw` images), float32."""
    meta = read_metadata(path)
    frame_names = [Path(p).name for p in meta.image_paths]
    repeated_images = sorted({n for n in names if names.count(n) > 1})
    if repeated_images:
        raise ValueError(
            f"source images {repeated_images} share a file name, so cameras cannot be matched "
            "to them by name"
        )
    missing = [n for n in names if n not in frame_names]
    if missing:
        raise ValueError(
            f"{path}: no camera for source image(s) {missing}: its {len(frame_names)} frame(s) "
            f"are for {_preview(frame_names)} and {len(names)} image(s) were given (frames "
            "are matched to images by file name)"
        )
    repeated = sorted({n for n in names if frame_names.count(n) > 1})
    if repeated:
        raise ValueError(f"{path}: several frames are for image(s) {repeated}")
    rows = [frame_names.index(n) for n in names]
    c2w, fxfycxcy = [], []
    for row, name, size in zip(rows, names, sizes, strict=True):
        w2c, k = meta.w2c[row : row + 1], meta.fxfycxcy[row : row + 1]
        where = f"{path}: frames[{row}] ({name}, {_wxh(size)})"
        validate_cameras(w2c, k, size, where, max_fov_deg=MAX_FOV_DEG)
        c2w.append(invert_rigid(w2c[0]))
        fxfycxcy.append(crop_resize_intrinsics(k[0], size, image_hw))
    c2w = torch.stack(c2w)  # (s, 4, 4) float64
    _check_float32_placement(path, c2w, [f"frames[{row}]" for row in rows])
    return c2w.float(), torch.stack(fxfycxcy).float()


def _check_float32_placement(path: Path, c2w: Tensor, views: list[str]) -> None:
    """ValueError unless the source cameras c2w [s, 4, 4] (float64) keep their places in
    the normalised scene when held in float32, as the model holds them.

    float32 keeps about 7 digits of a translation: cameras a few metres apart but
    millions of units from the origin (geo-referenced reconstructions) would land on a
    coarse grid and the scene come out distorted, not failing.
    """
    if c2w.shape[0] < 2:
        return  # one source is the normalised frame's origin, wherever it is
    exact, _ = normalize_scene(c2w, c2w.shape[0])
    try:
        rounded, _ = normalize_scene(c2w.float(), c2w.shape[0])
        error = (rounded.double() - exact)[:, :3, 3].norm(dim=-1).nan_to_num(math.inf).max()
    except ValueError:  # rounded onto one position
        error = math.inf
    if error > MAX_PLACEMENT_ERROR:
        far = int(c2w[:, :3, 3].norm(dim=-1).argmax())
        raise ValueError(
            f"{path}: the source cameras are {c2w[:, :3, 3].norm(dim=-1).max():.4g} units from "
            f"the world origin ({views[far]}) but only {_spread(c2w):.4g} apart: in float32 they "
            f"move by up to {error:.2g} of the scene's size; subtract a common offset "
            "(e.g. the first camera's position) from the cameras"
        )


def _spread(c2w: Tensor) -> float:
    """The largest distance between two camera centres of c2w [s, 4, 4]."""
    centres = c2w[:, :3, 3]
    return (centres[:, None] - centres[None]).norm(dim=-1).max().item()


def _preview(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------
# Target cameras
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """Which target cameras to build; one of three kinds (`kind`):

    "cameras": explicit cameras from the metadata JSON `cameras`.
    "view": one camera at `azimuth_deg` (to the right), `elevation_deg` (up) and
        `distance` (default: `focus`, the source's own) from the point `focus` in front of
        source `from_source`, looking at that point; (0, 0, None) is the source itself.
        Chosen by giving `azimuth_deg`.
    "trajectory": `frames` cameras of the preset `trajectory` (default "orbit");
        `trajectory_distance` its extent (`DISTANCE_MEANING`; None: the preset's default).
    "keyframes": `frames` cameras on a smooth path through the cameras of the metadata
        JSON `keyframes` (in the input world frame, like "cameras").
    focus: the distance (normalised scene units) from the reference camera to the point
        orbits look at; None: `DEFAULT_FOCUS` (see `scene_focus` for a measured one).
    """

    trajectory: str | None = None
    frames: int = 8
    cameras: str | Path | None = None
    keyframes: str | Path | None = None
    trajectory_distance: float | None = None
    azimuth_deg: float | None = None
    elevation_deg: float = 0.0
    distance: float | None = None
    from_source: int = 0
    focus: float | None = None

    def __post_init__(self) -> None:
        chosen = [
            name
            for name, value in (
                ("a trajectory", self.trajectory),
                ("a cameras file", self.cameras),
                ("a keyframes file", self.keyframes),
                ("an azimuth", self.azimuth_deg),
            )
            if value is not None
        ]
        if len(chosen) > 1:
            raise ValueError(f"give one kind of target cameras, got {' and '.join(chosen)}")
        if self.trajectory is not None and self.trajectory not in TRAJECTORY_NAMES:
            raise ValueError(
                f"unknown trajectory {self.trajectory!r}, expected one of {list(TRAJECTORY_NAMES)}"
            )
        if not 1 <= self.frames <= MAX_FRAMES:
            raise ValueError(f"frames must be between 1 and {MAX_FRAMES}, got {self.frames}")
        if self.azimuth_deg is not None and not math.isfinite(self.azimuth_deg):
            raise ValueError(f"azimuth must be a finite number of degrees, got {self.azimuth_deg}")
        if not -90 < self.elevation_deg < 90:
            raise ValueError(
                f"elevation must be strictly between -90 and 90, got {self.elevation_deg}"
            )
        if self.distance is not None and not (self.distance > 0 and math.isfinite(self.distance)):
            raise ValueError(f"distance must be positive and finite, got {self.distance}")
        if self.focus is not None and not (self.focus > 0 and math.isfinite(self.focus)):
            raise ValueError(f"focus must be positive and finite, got {self.focus}")
        if self.kind == "trajectory":
            check_distance(self.trajectory or "orbit", self.trajectory_distance)
        if self.from_source < 0:
            raise ValueError(f"source index must be >= 0, got {self.from_source}")

    @property
    def kind(self) -> str:
        if self.cameras is not None:
            return "cameras"
        if self.keyframes is not None:
            return "keyframes"
        return "view" if self.azimuth_deg is not None else "trajectory"


@dataclass
class TargetCameras:
    """c2w [t, 4, 4] and fxfycxcy [t, 4] (pixels of the rendered images).

    normalized: True when the cameras are in the encoded scene's normalised frame (render
        with `normalized=True`), False when in the input world frame.
    """

    c2w: Tensor
    fxfycxcy: Tensor
    normalized: bool

    @property
    def num_views(self) -> int:
        return self.c2w.shape[0]

    def batch(self, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """(c2w [1, t, 4, 4], fxfycxcy [1, t, 4]) on `device`, for one encoded scene."""
        return self.c2w[None].to(device), self.fxfycxcy[None].to(device)

    def scene_c2w(self, scene: EncodedScene) -> Tensor:
        """c2w [t, 4, 4] in the normalised frame of the first of `scene`'s scenes (on its
        device), as `NVSModel.render` places them."""
        return scene.scene_frame(self.c2w[None].to(scene.scale), self.normalized)[0]


def default_intrinsics(image_hw: tuple[int, int], fov_deg: float = DEFAULT_FOV_DEG) -> Tensor:
    """fxfycxcy [4] of a centred pinhole camera with horizontal field of view `fov_deg`."""
    h, w = image_hw
    focal = fov_to_focal(math.radians(fov_deg), w)
    return torch.tensor([focal, focal, w / 2, h / 2])


def target_cameras(
    spec: TargetSpec,
    image_hw: tuple[int, int],
    source_c2w: Tensor | None = None,
    source_fxfycxcy: Tensor | None = None,
    source_hw: tuple[int, int] | None = None,
) -> TargetCameras:
    """Build the target cameras of `spec` for `image_hw` renders.

    source_c2w: [s, 4, 4] the encoded scene's source cameras in its normalised frame
        (`EncodedScene.source_c2w[i]`: the given cameras, or the camera head's estimate for
        pose-free input); None when unknown, where the first source camera is the identity
        and the only usable reference.
    source_fxfycxcy: [s, 4] the sources' intrinsics in pixels of `source_hw` images
        (default `image_hw`); None (pose-free): a `DEFAULT_FOV_DEG` camera.
    Trajectory and view targets reuse their reference source's intrinsics.
    """
    _check_image_hw(image_hw)
    if spec.kind == "cameras":
        return _file_targets(Path(spec.cameras), image_hw)
    if spec.kind == "keyframes":
        return _keyframe_targets(Path(spec.keyframes), image_hw, spec.frames)
    focus = DEFAULT_FOCUS if spec.focus is None else spec.focus
    reference = spec.from_source if spec.kind == "view" else 0
    c2w = _reference_cameras(source_c2w, reference, spec)
    if source_fxfycxcy is None:
        intrinsics = default_intrinsics(image_hw)
    else:
        intrinsics = crop_resize_intrinsics(
            source_fxfycxcy[reference].float().cpu(), source_hw or image_hw, image_hw
        )
    if spec.kind == "view":
        distance = focus if spec.distance is None else spec.distance
        poses = orbit_view(c2w[reference], spec.azimuth_deg, spec.elevation_deg, distance, focus)[
            None
        ]
        return TargetCameras(c2w=poses.float(), fxfycxcy=intrinsics[None].clone(), normalized=True)
    path = make_trajectory(
        spec.trajectory or "orbit", c2w, spec.frames, focus=focus, distance=spec.trajectory_distance
    )
    return TargetCameras(
        c2w=path.c2w.float(), fxfycxcy=path.intrinsics(intrinsics).float(), normalized=True
    )


def _keyframe_targets(path: Path, image_hw: tuple[int, int], frames: int) -> TargetCameras:
    """`frames` cameras on a smooth path through a metadata JSON's cameras (`interpolate`:
    Catmull-Rom centres, slerped rotations), intrinsics interpolated linearly."""
    keys = _file_targets(path, image_hw)
    poses = interpolate(keys.c2w.double(), frames)
    k = keys.c2w.shape[0]
    if k == 1:
        intrinsics = keys.fxfycxcy.expand(frames, 4).clone()
    else:
        s = torch.linspace(0.0, k - 1, frames, dtype=torch.float64)
        low = s.floor().long().clamp(max=k - 2)
        t = (s - low)[:, None].float()
        intrinsics = (1 - t) * keys.fxfycxcy[low] + t * keys.fxfycxcy[low + 1]
    return TargetCameras(c2w=poses.float(), fxfycxcy=intrinsics, normalized=False)


def _reference_cameras(source_c2w: Tensor | None, reference: int, spec: TargetSpec) -> Tensor:
    """The source cameras [s, 4, 4] (CPU, float32) the targets are built from."""
    if source_c2w is None:
        if reference != 0 or spec.trajectory == "interpolate":
            raise ValueError(
                "the source cameras are unknown (pose-free input and a model without a camera "
                "head): only source 0 can be a reference and 'interpolate' is unavailable"
            )
        return torch.eye(4)[None]
    if source_c2w.ndim != 3 or source_c2w.shape[-2:] != (4, 4):
        raise ValueError(f"source cameras must be [s, 4, 4], got {list(source_c2w.shape)}")
    if not 0 <= reference < source_c2w.shape[0]:
        raise ValueError(
            f"source index {reference} does not exist: there are {source_c2w.shape[0]} source "
            f"views (0..{source_c2w.shape[0] - 1})"
        )
    return source_c2w.detach().float().cpu()


def orbit_view(
    reference: Tensor, azimuth_deg: float, elevation_deg: float, distance: float, focus: float
) -> Tensor:
    """c2w [4, 4] looking at the point `focus` in front of `reference` [4, 4], from
    `distance` away, turned by `azimuth_deg` to the right of the reference camera and
    `elevation_deg` up (its -y). (0, 0, focus) gives the reference camera back."""
    x, y, z = reference[:3, 0], reference[:3, 1], reference[:3, 2]
    center = reference[:3, 3] + focus * z
    azimuth, elevation = math.radians(azimuth_deg), math.radians(elevation_deg)
    horizontal = -math.cos(azimuth) * z + math.sin(azimuth) * x
    eye = center + distance * (math.cos(elevation) * horizontal - math.sin(elevation) * y)
    return look_at(eye, center, up=-y)


def _file_targets(path: Path, image_hw: tuple[int, int]) -> TargetCameras:
    """Targets from a metadata JSON. Intrinsics are in pixels of each frame's image when
    that file exists (absolute, or relative to the dataset root or the JSON's folder),
    else of the `image_hw` renders."""
    meta = read_metadata(path)
    c2w, fxfycxcy = [], []
    for k, stored in enumerate(meta.image_paths):
        size = _stored_image_size(path, stored) or tuple(image_hw)
        w2c, intrinsics = meta.w2c[k : k + 1], meta.fxfycxcy[k : k + 1]
        where = f"{path}: frames[{k}] ({_wxh(size)} image)"
        validate_cameras(w2c, intrinsics, size, where, max_fov_deg=MAX_FOV_DEG)
        c2w.append(invert_rigid(w2c[0]))
        fxfycxcy.append(crop_resize_intrinsics(intrinsics[0], size, image_hw))
    return TargetCameras(
        c2w=torch.stack(c2w).float(), fxfycxcy=torch.stack(fxfycxcy).float(), normalized=False
    )


def _stored_image_size(metadata: Path, stored: str) -> tuple[int, int] | None:
    """(h, w) of the image a metadata frame names, or None when there is no such image."""
    given = Path(stored)
    candidates = [given] if given.is_absolute() else []
    candidates += [metadata.parent.parent / given, metadata.parent / given]
    for candidate in candidates:
        if candidate.is_file():
            try:
                with Image.open(candidate) as image:
                    return exif_orientation_size(image)
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"{metadata}: cannot read image {candidate}: {err}") from err
    return None


def scene_focus(
    model: NVSModel,
    scene: EncodedScene,
    image_hw: tuple[int, int],
    source_fxfycxcy: Tensor | None = None,
    source_hw: tuple[int, int] | None = None,
    reference: int = 0,
    sources: DecoderOutput | None = None,
) -> float:
    """The median depth (normalised scene units) the model sees from source `reference` of
    the first encoded scene: a focus distance for orbits that turn about the scene rather
    than about an arbitrary point. `DEFAULT_FOCUS` without a point head or source cameras.

    source_fxfycxcy: [s, 4] in pixels of `source_hw` images (default `image_hw`); None:
    a `DEFAULT_FOV_DEG` camera.
    sources: `model.render` of the source cameras ([b, s, ...], normalised frame, at these
    intrinsics) when the caller has it; None: source `reference` is rendered here.
    """
    if model.decoder.point_head is None or scene.source_c2w is None:
        return DEFAULT_FOCUS
    c2w = scene.source_c2w[:1, reference : reference + 1]  # (1, 1, 4, 4)
    if sources is not None:
        points = sources.points[:1, reference : reference + 1].to(c2w)  # (1, 1, h, w, 3)
        return _median_depth(points, c2w)
    if source_fxfycxcy is None:
        intrinsics = default_intrinsics(image_hw)
    else:
        intrinsics = crop_resize_intrinsics(
            source_fxfycxcy[reference].float().cpu(), source_hw or image_hw, image_hw
        )
    intrinsics = intrinsics.to(c2w)[None, None]  # (1, 1, 4)
    with torch.no_grad():
        points = model.render(scene, c2w, intrinsics, image_hw, normalized=True).points
    return _median_depth(points, c2w)


def _median_depth(points: Tensor, c2w: Tensor) -> float:
    """The median positive depth of points [1, 1, h, w, 3] in camera c2w [1, 1, 4, 4];
    `DEFAULT_FOCUS` when there is none."""
    depth = points_to_depth(points, c2w)  # (1, 1, h, w)
    depth = depth[torch.isfinite(depth) & (depth > 0)]
    return depth.median().item() if depth.numel() else DEFAULT_FOCUS
