"""The one sample format every loader yields, view sampling and image operations.

A `SceneSample` holds V views of one scene, source views first, then target views.
Cameras follow `gen_nvs.geometry.cameras`: OpenCV axes, c2w 4x4 poses and
`fxfycxcy` in pixels of the sample's images.

Dimension legend: `v` views, `h`/`w` image height/width, `b` batch, `...` any
leading dimensions.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from gen_nvs.geometry.cameras import center_crop_box, crop_resize_intrinsics, mirror_cameras


@dataclass
class SceneSample:
    """V views of one scene: the first `num_sources` are sources, the rest targets.

    Fields:
        images: [v, 3, h, w] float in [0, 1].
        c2w: [v, 4, 4] OpenCV camera-to-world poses.
        fxfycxcy: [v, 4] intrinsics in pixels of `images`.
        num_sources: how many leading views are sources (0..v).
        scene: the scene's name.
        frame_indices: [v] int64, each view's frame in its scene.
        depth: optional [v, h, w] z-depth; meaningful only where `depth_valid`.
        depth_valid: [v, h, w] bool, given exactly when `depth` is.
    """

    images: Tensor
    c2w: Tensor
    fxfycxcy: Tensor
    num_sources: int
    scene: str
    frame_indices: Tensor
    depth: Tensor | None = None
    depth_valid: Tensor | None = None

    def __post_init__(self) -> None:
        self.frame_indices = torch.as_tensor(self.frame_indices, dtype=torch.long)
        v = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"{self.scene}: images must be [V,3,H,W], got {_shape(self.images)}")
        expected = {"c2w": (v, 4, 4), "fxfycxcy": (v, 4), "frame_indices": (v,)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"{self.scene}: {name} must have shape {list(shape)}, "
                    f"got {_shape(getattr(self, name))}"
                )
        if not 0 <= self.num_sources <= v:
            raise ValueError(f"{self.scene}: num_sources must be in 0..{v}, got {self.num_sources}")
        if (self.depth is None) != (self.depth_valid is None):
            raise ValueError(f"{self.scene}: depth and depth_valid must be given together")
        if self.depth is not None:
            hw = (v, *self.images.shape[-2:])
            if tuple(self.depth.shape) != hw or tuple(self.depth_valid.shape) != hw:
                raise ValueError(
                    f"{self.scene}: depth and depth_valid must be {list(hw)}, got "
                    f"{_shape(self.depth)} and {_shape(self.depth_valid)}"
                )
            if self.depth_valid.dtype != torch.bool:
                raise ValueError(
                    f"{self.scene}: depth_valid must be bool, got {self.depth_valid.dtype}"
                )

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def num_targets(self) -> int:
        return self.num_views - self.num_sources

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    @property
    def has_depth(self) -> bool:
        return self.depth is not None

    def select(self, views: Sequence[int] | Tensor, num_sources: int) -> SceneSample:
        """A new sample made of `views` (indices into this sample), the first `num_sources`
        of them sources."""
        views = torch.as_tensor(views, dtype=torch.long)
        # Every tensor field is per view; one replace() so the new source count is checked
        # against the new views, not the old count against them.
        changes = {f.name: getattr(self, f.name) for f in fields(self)}
        picked = {k: v[views] for k, v in changes.items() if isinstance(v, Tensor)}
        return replace(self, **picked, num_sources=num_sources)

    def sources(self) -> SceneSample:
        """The source views alone (all of them sources)."""
        n = self.num_sources
        return self.select(range(n), num_sources=n)

    def targets(self) -> SceneSample:
        """The target views alone (num_sources = 0)."""
        return self.select(range(self.num_sources, self.num_views), num_sources=0)

    def split(self) -> tuple[SceneSample, SceneSample]:
        """(sources, targets)."""
        return self.sources(), self.targets()

    def to(self, device: torch.device | str) -> SceneSample:
        return _map_tensors(self, lambda x: x.to(device))


@dataclass
class SceneBatch:
    """A batch of `SceneSample`s with equal view counts, source counts and image sizes.

    Fields are those of `SceneSample` with a leading `b`: images [b, v, 3, h, w],
    c2w [b, v, 4, 4], fxfycxcy [b, v, 4], frame_indices [b, v], depth and
    depth_valid [b, v, h, w] (when every sample has depth); `scenes` has b names.
    """

    images: Tensor
    c2w: Tensor
    fxfycxcy: Tensor
    num_sources: int
    scenes: list[str]
    frame_indices: Tensor
    depth: Tensor | None = None
    depth_valid: Tensor | None = None

    def to(self, device: torch.device | str) -> SceneBatch:
        return _map_tensors(self, lambda x: x.to(device))


def mirror_scenes(batch: SceneBatch, which: Tensor) -> SceneBatch:
    """The scenes of `batch` where `which` [b] (bool) is set, reflected left-right
    (`gen_nvs.geometry.cameras.mirror_cameras`: images and depth flipped along their
    width, cameras reflected to match); the others as they are. A training augmentation:
    the world has no handedness, a camera rig's motion may have (e.g. orbits drawn always
    counter-clockwise), and a model should not learn it."""
    if which.shape != (batch.images.shape[0],):
        raise ValueError(
            f"which must have one flag per scene, shape {(batch.images.shape[0],)}, "
            f"got {tuple(which.shape)}"
        )
    width = batch.images.shape[-1]
    c2w, fxfycxcy = mirror_cameras(batch.c2w, batch.fxfycxcy, width)
    flags = which.to(batch.images.device)

    def pick(mirrored: Tensor, original: Tensor) -> Tensor:
        return torch.where(flags.view(-1, *[1] * (original.ndim - 1)), mirrored, original)

    changes = {
        "images": pick(batch.images.flip(-1), batch.images),
        "c2w": pick(c2w, batch.c2w),
        "fxfycxcy": pick(fxfycxcy, batch.fxfycxcy),
    }
    if batch.depth is not None:
        changes["depth"] = pick(batch.depth.flip(-1), batch.depth)
    if batch.depth_valid is not None:
        changes["depth_valid"] = pick(batch.depth_valid.flip(-1), batch.depth_valid)
    return replace(batch, **changes)


def _map_tensors(obj, fn):
    """A copy of dataclass `obj` with `fn` applied to every tensor field (None stays)."""
    changes = {f.name: getattr(obj, f.name) for f in fields(obj)}
    return replace(obj, **{k: fn(v) for k, v in changes.items() if isinstance(v, Tensor)})


def collate_scenes(samples: Sequence[SceneSample]) -> SceneBatch:
    """DataLoader `collate_fn`: stack samples into a `SceneBatch`.

    Depth is kept only if every sample has it.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    first = samples[0]
    for s in samples[1:]:
        if (s.num_views, s.num_sources, s.image_hw) != (
            first.num_views,
            first.num_sources,
            first.image_hw,
        ):
            raise ValueError(
                "samples in a batch must share view count, source count and image size: "
                f"{first.scene} has ({first.num_views}, {first.num_sources}, {first.image_hw}), "
                f"{s.scene} has ({s.num_views}, {s.num_sources}, {s.image_hw})"
            )
    with_depth = all(s.has_depth for s in samples)
    return SceneBatch(
        images=torch.stack([s.images for s in samples]),
        c2w=torch.stack([s.c2w for s in samples]),
        fxfycxcy=torch.stack([s.fxfycxcy for s in samples]),
        num_sources=first.num_sources,
        scenes=[s.scene for s in samples],
        frame_indices=torch.stack([s.frame_indices for s in samples]),
        depth=torch.stack([s.depth for s in samples]) if with_depth else None,
        depth_valid=torch.stack([s.depth_valid for s in samples]) if with_depth else None,
    )


# --------------------------------------------------------------------------------------
# Scene readers and view-sampled training datasets
# --------------------------------------------------------------------------------------


class SceneReader(Protocol):
    """What every format's reader offers: scene names, frame counts, loading views.

    `load(scene, frame_indices, num_sources)` returns the listed frames (in that
    order) as a `SceneSample` at the reader's output resolution.
    """

    scene_names: list[str]

    def num_frames(self, scene: str) -> int: ...

    def load(self, scene: str, frame_indices: Sequence[int], num_sources: int) -> SceneSample: ...


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] (both inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _as_range(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else tuple(value)
    if low > high:
        raise ValueError(f"{name} range ({low}, {high}) is empty")
    return int(low), int(high)


def frames_needed(
    num_sources: int | tuple[int, int], num_targets: int, frame_gap: tuple[int, int]
) -> int:
    """The fewest frames a scene needs for `sample_views` with these arguments.

    Raises ValueError for arguments no scene can satisfy.
    """
    src_low, src_high = _as_range(num_sources, "num_sources")
    gap_low, gap_high = _as_range(frame_gap, "frame_gap")
    if src_low < 1 or num_targets < 0 or gap_low < 0:
        raise ValueError(
            f"need num_sources >= 1, num_targets >= 0 and frame_gap >= 0, got "
            f"{num_sources}, {num_targets}, {frame_gap}"
        )
    # The window (gap + 1 frames) must hold the most sources that can be drawn and
    # the distinct targets.
    if max(src_high, num_targets) - 1 > gap_high:
        raise ValueError(
            f"a window of at most {gap_high + 1} frames (frame gap {frame_gap}) cannot hold "
            f"{src_high} sources or {num_targets} distinct targets"
        )
    return max(gap_low, src_high - 1, num_targets - 1) + 1


def sample_views(
    num_frames: int,
    num_sources: int | tuple[int, int],
    num_targets: int,
    frame_gap: tuple[int, int],
    generator: torch.Generator,
    *,
    target_margin: int = 0,
) -> tuple[list[int], list[int]]:
    """Pick source and target frames of one scene, as the published training setups do.

    A context window of `gap + 1` consecutive frames is drawn (gap uniform in
    `frame_gap`, clipped to what the scene and the view counts allow). The first and
    last sources sit at the window's ends, further sources at distinct frames in
    between (a single source sits at one end, chosen at random); the targets are
    distinct frames drawn uniformly from the whole window and may coincide with
    sources. With `target_margin` m > 0 (not in the published setups) the targets are
    drawn from the window widened by up to m frames on each side (within the scene),
    so that training also sees views beyond the sources (extrapolation).

    Args:
        num_frames: frames in the scene.
        num_sources: a count, or an inclusive (min, max) range drawn from uniformly.
        num_targets: target count (>= 0).
        frame_gap: inclusive (min, max) range of the distance between the window ends.
        generator: the only source of randomness.
        target_margin: frames (>= 0) the targets' window reaches past each end.
    Returns:
        (source frame indices, target frame indices), targets sorted.
    """
    if target_margin < 0:
        raise ValueError(f"target_margin must be >= 0, got {target_margin}")
    needed = frames_needed(num_sources, num_targets, frame_gap)
    if num_frames < needed:
        raise ValueError(
            f"cannot sample {num_sources} sources and {num_targets} targets with frame gap "
            f"{frame_gap} from a scene of {num_frames} frames (needs {needed})"
        )
    src_low, src_high = _as_range(num_sources, "num_sources")
    gap_low, gap_high = _as_range(frame_gap, "frame_gap")
    feasible_high = min(gap_high, num_frames - 1)
    n_src = _randint(src_low, src_high, generator)
    gap = _randint(max(gap_low, n_src - 1, num_targets - 1), feasible_high, generator)
    left = _randint(0, num_frames - 1 - gap, generator)
    right = left + gap
    if n_src == 1:
        sources = [left if _randint(0, 1, generator) == 0 else right]
    else:
        inner = torch.randperm(gap - 1, generator=generator)[: n_src - 2] + left + 1
        sources = [left, *sorted(inner.tolist()), right]
    low = max(0, left - target_margin)
    high = min(num_frames - 1, right + target_margin)
    targets = torch.randperm(high - low + 1, generator=generator)[:num_targets] + low
    return sources, sorted(targets.tolist())


class ViewSampledDataset(Dataset):
    """A training dataset: item i is scene i of `reader` with freshly sampled views.

    Every item draws its views from its own generator seeded by (seed, epoch, index),
    so a sample does not depend on batch size, worker count or iteration order; call
    `set_epoch` to draw new views each epoch. Scenes too short for the requested
    views are replaced by the next long-enough scene when `skip_short_scenes`,
    otherwise they raise ValueError. `target_margin`: as `sample_views`'.
    """

    def __init__(
        self,
        reader: SceneReader,
        num_sources: int | tuple[int, int],
        num_targets: int,
        frame_gap: tuple[int, int],
        seed: int = 0,
        skip_short_scenes: bool = True,
        target_margin: int = 0,
    ) -> None:
        if target_margin < 0:
            raise ValueError(f"target_margin must be >= 0, got {target_margin}")
        self.reader = reader
        self.num_sources = num_sources
        self.num_targets = num_targets
        self.frame_gap = frame_gap
        self.target_margin = target_margin
        self.seed = seed
        self.epoch = 0
        self.skip_short_scenes = skip_short_scenes
        self.frames_needed = frames_needed(num_sources, num_targets, frame_gap)
        if not reader.scene_names:
            raise ValueError("the dataset has no scenes")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def item_seed(self, index: int) -> int:
        """The seed of item `index` this epoch: (seed, epoch, index) mixed by NumPy's
        SeedSequence, so that nearby triples give unrelated streams."""
        sequence = np.random.SeedSequence([self.seed, self.epoch, index])
        return int(sequence.generate_state(1, np.uint64)[0]) % 2**63

    def __len__(self) -> int:
        return len(self.reader.scene_names)

    def __getitem__(self, index: int) -> SceneSample:
        names = self.reader.scene_names
        for offset in range(len(names)):
            scene = names[(index + offset) % len(names)]
            num_frames = self.reader.num_frames(scene)
            if num_frames < self.frames_needed:
                if self.skip_short_scenes:
                    continue
                raise ValueError(
                    f"scene {scene} has {num_frames} frames; {self.frames_needed} are needed for "
                    f"{self.num_sources} sources, {self.num_targets} targets and frame gap "
                    f"{self.frame_gap}"
                )
            generator = torch.Generator().manual_seed(self.item_seed(index))
            sources, targets = sample_views(
                num_frames, self.num_sources, self.num_targets, self.frame_gap, generator,
                target_margin=self.target_margin,
            )  # fmt: skip
            return self.reader.load(scene, sources + targets, num_sources=len(sources))
        raise ValueError(f"no scene has the {self.frames_needed} frames needed")


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


# Greyscale modes whose samples are 16-bit (as Pillow reads 16-bit PNG and TIFF files).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _pil_to_tensor(image: Image.Image) -> Tensor:
    """A PIL image -> [3, h, w] float RGB in [0, 1], turned upright by its EXIF orientation.

    8-bit modes go through `convert("RGB")` (greyscale repeated, palettes looked up,
    CMYK converted); an alpha channel is dropped, keeping the colour under it. 16-bit
    greyscale is scaled by 65535 (`convert` would clip it to white), 32-bit integer
    greyscale likewise when its values fit 16 bits, float greyscale is taken as is when
    in [0, 1]; other values raise ValueError.
    """
    if _orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        gray = torch.from_numpy(np.asarray(image).astype(np.float32))  # (h, w)
        return _high_depth_gray(gray, image.mode).expand(3, -1, -1).clone()
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's route for palettes with transparency
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (h, w, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def _high_depth_gray(gray: Tensor, mode: str) -> Tensor:
    """A greyscale image [h, w] of PIL mode I;16*, I or F -> [1, h, w] in [0, 1]."""
    low, high = gray.min().item(), gray.max().item()
    if mode == "F":
        if not (torch.isfinite(gray).all() and 0 <= low and high <= 1):
            raise ValueError(
                f"a floating-point image must hold values in [0, 1], got [{low:.4g}, {high:.4g}]"
            )
        return gray[None]
    if mode == "I" and not (0 <= low and high <= 65535):
        raise ValueError(
            f"a 32-bit integer image must hold 16-bit values (0..65535), got {low:.0f}..{high:.0f}"
        )
    return gray[None] / 65535.0


def exif_orientation_size(image: Image.Image) -> tuple[int, int]:
    """(h, w) of `image` as shown, after its EXIF orientation (`load_image` turns it so),
    read from the header without decoding the pixels."""
    # Orientations 5-8 transpose the image (a quarter turn, possibly mirrored).
    turned = _orientation(image) in (5, 6, 7, 8)
    return (image.width, image.height) if turned else (image.height, image.width)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of `image` (1: stored upright)."""
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def load_image(path: str | Path) -> Tensor:
    """Read an image file as [3, h, w] float RGB in [0, 1], turned upright by its EXIF
    orientation (as viewers show it; see `_pil_to_tensor` for the modes read).

    Raises FileNotFoundError if the file is missing, ValueError if it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return _pil_to_tensor(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def decode_image(data: bytes, where: str) -> Tensor:
    """Decode encoded image bytes (JPEG, PNG, ...) as [3, h, w] float RGB in [0, 1], as
    `load_image` reads files (EXIF orientation applied).

    `where` names the data in the error raised when it cannot be decoded.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _pil_to_tensor(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{where}: cannot decode image: {err}") from err


def center_crop_resize(images: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Centre-crop [..., c, h, w] images to the aspect of `out_hw`, then resize to it.

    Bilinear with antialiasing; matches `cameras.crop_resize_intrinsics` (same crop
    box, pixel-centre aligned resize).
    """
    in_hw = tuple(images.shape[-2:])
    top, left, crop_h, crop_w = center_crop_box(in_hw, out_hw)
    cropped = images[..., top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) == tuple(out_hw):
        return cropped.clone()
    flat = cropped.reshape(-1, *cropped.shape[-3:])  # (n, c, crop_h, crop_w)
    resized = F.interpolate(
        flat.float(), size=tuple(out_hw), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.reshape(*cropped.shape[:-2], *out_hw).to(images.dtype)


def center_crop_resize_depth(
    depth: Tensor, valid: Tensor, out_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """`center_crop_resize` for depth maps [..., h, w] and their validity masks.

    Nearest-neighbour (pixel-centre aligned), so depths are never blended across
    edges or with invalid pixels; invalid pixels come out as depth 0.
    """
    in_hw = tuple(depth.shape[-2:])
    top, left, crop_h, crop_w = center_crop_box(in_hw, out_hw)
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    both = torch.stack([depth.float(), valid.float()], -3)  # (..., 2, h, w)
    both = both[..., top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) != tuple(out_hw):
        flat = both.reshape(-1, 2, crop_h, crop_w)
        flat = F.interpolate(flat, size=tuple(out_hw), mode="nearest-exact")
        both = flat.reshape(*both.shape[:-2], *out_hw)
    out_valid = both[..., 1, :, :] > 0.5
    return both[..., 0, :, :].to(depth.dtype), out_valid


def resize_views(
    images: Tensor,
    fxfycxcy: Tensor,
    out_hw: tuple[int, int] | None,
    depth: Tensor | None = None,
    depth_valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Centre-crop and resize images [v, 3, h, w] (and depth [v, h, w]) to `out_hw`,
    adjusting the intrinsics [v, 4]; `out_hw` None keeps everything as is."""
    if out_hw is None:
        return images, fxfycxcy, depth, depth_valid
    in_hw = tuple(images.shape[-2:])
    images = center_crop_resize(images, out_hw)
    fxfycxcy = crop_resize_intrinsics(fxfycxcy, in_hw, out_hw)
    if depth is not None:
        depth, depth_valid = center_crop_resize_depth(depth, depth_valid, out_hw)
    return images, fxfycxcy, depth, depth_valid


def check_frame_indices(frame_indices: Sequence[int], num_frames: int, where: str) -> list[int]:
    """Frame indices as ints, or ValueError naming `where` for one out of 0..num_frames-1."""
    out = []
    for i in frame_indices:
        if not 0 <= int(i) < num_frames:
            raise ValueError(
                f"{where}: frame {int(i)} does not exist (the scene has {num_frames} frames)"
            )
        out.append(int(i))
    if not out:
        raise ValueError(f"{where}: no frames requested")
    return out


def check_same_size(images: Sequence[Tensor], indices: Sequence[int], where: str) -> None:
    """ValueError naming `where` if the frames' images [..., h, w] differ in size (only
    possible without a target `image_hw`)."""
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) > 1:
        raise ValueError(f"{where}: frames {indices} differ in size {sorted(sizes)}; pass image_hw")


def check_finite(values: Tensor, where: str) -> None:
    """ValueError naming `where` if `values` has NaN or infinite entries."""
    if not torch.isfinite(values).all():
        raise ValueError(f"{where}: contains non-finite values")


def _shape(x: Tensor | None) -> list[int] | None:
    return None if x is None else list(x.shape)
