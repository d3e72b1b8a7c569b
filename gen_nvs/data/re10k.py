"""RealEstate10K in the processed layout of LVSM / LagerNVS: reader, dataset and writer.

Layout under ROOT:

    images/<scene>/00000.png ...          RGB frames
    depths/<scene>/00000.png ...          optional uint16 depth (depth = value / depth_scale,
                                          0 = invalid)
    metadata/<scene>.json                 {"scene_name", "frames": [{"image_path",
                                          "fxfycxcy", "w2c", "depth_path"?}], "depth_scale"?}
    full_list.txt                         one metadata json path per line

`fxfycxcy` is in pixels of the stored image and `w2c` is the OpenCV world-to-camera
4x4 matrix. Paths in the files are relative to ROOT or absolute; an absolute path
that no longer exists (data moved since it was processed) is looked up at its
usual place under ROOT.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from gen_nvs.data.scene import (
    SceneSample,
    ViewSampledDataset,
    check_finite,
    check_frame_indices,
    check_same_size,
    load_image,
    resize_views,
)
from gen_nvs.geometry.cameras import MAX_FOV_DEG, invert_rigid, validate_cameras

FULL_LIST = "full_list.txt"
UINT16_MAX = 65535  # the largest stored depth value


@dataclass
class _SceneMetadata:
    """One parsed metadata file; cameras in float64, exactly as stored."""

    path: Path
    scene: str
    image_paths: list[str]
    depth_paths: list[str] | None
    w2c: Tensor  # (n, 4, 4)
    fxfycxcy: Tensor  # (n, 4)
    depth_scale: float | None


def _number_tensor(value, shape: tuple[tuple[int, ...], ...], where: str) -> Tensor:
    """float64 tensor from JSON numbers with one of the allowed `shape`s, else ValueError."""
    try:
        tensor = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{where}: expected numbers, got {value!r}") from err
    if tuple(tensor.shape) not in shape:
        allowed = " or ".join(str(list(s)) for s in shape)
        raise ValueError(f"{where}: expected shape {allowed}, got {list(tensor.shape)}")
    check_finite(tensor, where)
    return tensor


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return data


def read_metadata(path: str | Path) -> _SceneMetadata:
    """Parse and check one `metadata/<scene>.json` (shapes, finiteness, required fields)."""
    path = Path(path)
    data = _read_json(path, "metadata file")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path}: 'frames' must be a non-empty list")
    image_paths, depth_paths, w2c, fxfycxcy = [], [], [], []
    for k, frame in enumerate(frames):
        where = f"{path}: frames[{k}]"
        if not isinstance(frame, dict):
            raise ValueError(f"{where}: expected an object")
        for field in ("image_path", "fxfycxcy", "w2c"):
            if field not in frame:
                raise ValueError(f"{where}: missing field '{field}'")
        if not isinstance(frame["image_path"], str):
            raise ValueError(f"{where}.image_path: expected a string")
        image_paths.append(frame["image_path"])
        depth_paths.append(frame.get("depth_path"))
        fxfycxcy.append(_number_tensor(frame["fxfycxcy"], ((4,),), f"{where}.fxfycxcy"))
        matrix = _number_tensor(frame["w2c"], ((4, 4), (3, 4)), f"{where}.w2c")
        if matrix.shape[0] == 3:
            matrix = torch.cat([matrix, matrix.new_tensor([[0.0, 0.0, 0.0, 1.0]])])
        w2c.append(matrix)
    has_depth = [p is not None for p in depth_paths]
    if any(has_depth) and not all(has_depth):
        raise ValueError(f"{path}: 'depth_path' is given for some frames but not all")
    depth_scale = data.get("depth_scale")
    if any(has_depth):
        if (
            not isinstance(depth_scale, (int, float))
            or not math.isfinite(depth_scale)
            or depth_scale <= 0
        ):
            raise ValueError(
                f"{path}: 'depth_scale' must be a positive number, got {depth_scale!r}"
            )
    return _SceneMetadata(
        path=path,
        scene=path.stem,
        image_paths=image_paths,
        depth_paths=depth_paths if any(has_depth) else None,
        w2c=torch.stack(w2c),
        fxfycxcy=torch.stack(fxfycxcy),
        depth_scale=float(depth_scale) if any(has_depth) else None,
    )


def _resolve(root: Path, stored: str, usual: Path, where: str) -> Path:
    """The file a stored path refers to: absolute as is, relative to ROOT, else `usual`."""
    given = Path(stored)
    candidates = [given if given.is_absolute() else root / given, usual]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise FileNotFoundError(f"{where}: file {stored!r} not found (looked at {tried})")


def _read_depth(path: Path, depth_scale: float, image_hw: tuple[int, int], where: str):
    """uint16 depth PNG -> (depth [h, w] float32, valid [h, w] bool)."""
    try:
        with Image.open(path) as image:
            values = np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{where}: cannot read depth image {path}: {err}") from err
    if values.ndim != 2 or values.dtype.kind not in "iu" or values.dtype.itemsize < 2:
        raise ValueError(f"{where}: depth image {path} must be a single-channel 16-bit PNG")
    if tuple(values.shape) != tuple(image_hw):
        raise ValueError(
            f"{where}: depth image {path} is {values.shape[1]}x{values.shape[0]}, "
            f"the RGB image is {image_hw[1]}x{image_hw[0]}"
        )
    values = torch.from_numpy(values.astype(np.int64))
    return (values.double() / depth_scale).float(), values > 0


def _load_frame(
    meta: _SceneMetadata, root: Path, k: int, image_hw: tuple[int, int] | None, with_depth: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Frame k, resized: image [1, 3, h, w], c2w [1, 4, 4], fxfycxcy [1, 4], depth and
    validity [1, h, w] (None without depth)."""
    where = f"{meta.path}: frames[{k}]"
    stored = meta.image_paths[k]
    usual = root / "images" / meta.scene / Path(stored).name
    image = load_image(_resolve(root, stored, usual, f"{where}.image_path"))
    hw = tuple(image.shape[-2:])
    w2c, fxfycxcy = meta.w2c[k : k + 1], meta.fxfycxcy[k : k + 1]
    # Rigidity is the same check for w2c and c2w; checking before inverting keeps
    # singular matrices from turning into NaNs.
    validate_cameras(w2c, fxfycxcy, hw, f"{where} (w2c, fxfycxcy)", max_fov_deg=MAX_FOV_DEG)
    depth = valid = None
    if with_depth:
        stored = meta.depth_paths[k]
        usual = root / "depths" / meta.scene / Path(stored).name
        depth_file = _resolve(root, stored, usual, f"{where}.depth_path")
        depth, valid = _read_depth(depth_file, meta.depth_scale, hw, f"{where}.depth_path")
        depth, valid = depth[None], valid[None]
    image, fxfycxcy, depth, valid = resize_views(
        image[None], fxfycxcy.float(), image_hw, depth, valid
    )
    return image, invert_rigid(w2c).float(), fxfycxcy, depth, valid


def _load_views(
    meta: _SceneMetadata,
    root: Path,
    frame_indices: Sequence[int],
    num_sources: int | None,
    image_hw: tuple[int, int] | None,
    load_depth: bool,
) -> SceneSample:
    indices = check_frame_indices(frame_indices, len(meta.image_paths), str(meta.path))
    with_depth = load_depth and meta.depth_paths is not None
    views = [_load_frame(meta, root, k, image_hw, with_depth) for k in indices]
    check_same_size([v[0] for v in views], indices, str(meta.path))
    images, c2w, fxfycxcy, depth, valid = (
        None if v[0] is None else torch.cat(v) for v in zip(*views, strict=True)
    )
    return SceneSample(
        images=images,
        c2w=c2w,
        fxfycxcy=fxfycxcy,
        num_sources=len(indices) if num_sources is None else num_sources,
        scene=meta.scene,
        frame_indices=torch.tensor(indices),
        depth=depth,
        depth_valid=valid,
    )


class RE10KReader:
    """Scenes of a processed RealEstate10K root (see the module docstring).

    Args:
        root: the dataset root.
        image_hw: output (height, width); frames are centre-cropped to its aspect and
            resized, intrinsics follow. None keeps the stored size.
        list_file: scene list relative to ROOT; None lists `metadata/*.json` instead.
        load_depth: read depth maps when the scene has them.
    """

    def __init__(
        self,
        root: str | Path,
        image_hw: tuple[int, int] | None,
        list_file: str | None = FULL_LIST,
        load_depth: bool = True,
    ) -> None:
        self.root = Path(root)
        self.image_hw = None if image_hw is None else tuple(image_hw)
        self.load_depth = load_depth
        if list_file is None:
            self._stored = [str(p) for p in sorted((self.root / "metadata").glob("*.json"))]
        else:
            list_path = self.root / list_file
            if not list_path.is_file():
                raise FileNotFoundError(f"scene list not found: {list_path}")
            self._stored = [
                line.strip() for line in list_path.read_text().splitlines() if line.strip()
            ]
        self.scene_names = [Path(p).stem for p in self._stored]
        self._index = {name: i for i, name in enumerate(self.scene_names)}
        if len(self._index) != len(self.scene_names):
            raise ValueError(f"{self.root / (list_file or 'metadata')}: scene names repeat")
        self._cached: _SceneMetadata | None = None

    def metadata(self, scene: str) -> _SceneMetadata:
        if self._cached is not None and self._cached.scene == scene:
            return self._cached
        if scene not in self._index:
            raise KeyError(f"scene {scene!r} is not in {self.root}")
        stored = self._stored[self._index[scene]]
        path = _resolve(self.root, stored, self.root / "metadata" / f"{scene}.json", "scene list")
        self._cached = read_metadata(path)
        return self._cached

    def num_frames(self, scene: str) -> int:
        return len(self.metadata(scene).image_paths)

    def load(self, scene: str, frame_indices: Sequence[int], num_sources: int) -> SceneSample:
        meta = self.metadata(scene)
        return _load_views(
            meta, self.root, frame_indices, num_sources, self.image_hw, self.load_depth
        )


class RE10KDataset(ViewSampledDataset):
    """Training dataset over a processed RealEstate10K root: one item per scene, views
    drawn by `sample_views` (see `ViewSampledDataset` for seeding)."""

    def __init__(
        self,
        root: str | Path,
        image_hw: tuple[int, int] | None,
        num_sources: int | tuple[int, int],
        num_targets: int,
        frame_gap: tuple[int, int],
        seed: int = 0,
        list_file: str | None = FULL_LIST,
        load_depth: bool = True,
        skip_short_scenes: bool = True,
        target_margin: int = 0,
    ) -> None:
        reader = RE10KReader(root, image_hw, list_file=list_file, load_depth=load_depth)
        super().__init__(
            reader, num_sources, num_targets, frame_gap, seed, skip_short_scenes, target_margin
        )


def load_scene(
    root: str | Path,
    scene: str,
    frame_indices: Sequence[int],
    image_hw: tuple[int, int] | None,
    num_sources: int | None = None,
    load_depth: bool = True,
) -> SceneSample:
    """Load the listed frames of `ROOT/metadata/<scene>.json` (no scene list needed).

    `num_sources` None makes every view a source.
    """
    root = Path(root)
    meta = read_metadata(root / "metadata" / f"{scene}.json")
    return _load_views(meta, root, frame_indices, num_sources, image_hw, load_depth)


# --------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------


def _check_scene_name(scene_name: str) -> None:
    if not scene_name or scene_name in (".", "..") or any(c in scene_name for c in "/\\"):
        raise ValueError(f"scene name {scene_name!r} cannot be used as a file name")


def depth_scale_for(max_depth: float) -> float:
    """The largest power of two that keeps `max_depth` within uint16 (exact in JSON)."""
    return 2.0 ** math.floor(math.log2(UINT16_MAX / max_depth))


def quantise_depth(depth: Tensor, valid: Tensor, depth_scale: float, where: str) -> np.ndarray:
    """depth [h, w] -> the stored uint16 values [h, w]: round(depth * depth_scale) where
    `valid` [h, w] (at least 1), 0 elsewhere; ValueError naming `where` when a valid depth
    does not fit."""
    depth, valid = depth.detach().cpu(), valid.detach().cpu()
    values = torch.round(depth.double() * depth_scale)
    if valid.any() and values[valid].max() > UINT16_MAX:
        raise ValueError(
            f"{where}: depth {depth[valid].max().item():.6g} times depth_scale {depth_scale} "
            f"exceeds {UINT16_MAX}"
        )
    # A valid depth must not become 0 ("invalid"); 1 is within one step of it.
    values = torch.where(valid, values.clamp(min=1), torch.zeros_like(values))
    return values.numpy().astype(np.uint16)


def write_png(array: np.ndarray, path: Path) -> None:
    """uint8 [h, w, 3] or uint16 [h, w] -> PNG at `path` (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_re10k_scene(
    root: str | Path,
    scene_name: str,
    images: Tensor,
    c2w: Tensor,
    fxfycxcy: Tensor,
    depth: Tensor | None = None,
    depth_valid: Tensor | None = None,
    depth_scale: float | None = None,
) -> Path:
    """Write one scene in the processed RealEstate10K layout; returns its metadata path.

    Byte-deterministic: the same inputs give the same PNG and JSON bytes.

    Args:
        root: the dataset root (created if needed).
        scene_name: file-name-safe scene name.
        images: [v, 3, h, w] in [0, 1], stored as 8-bit PNG.
        c2w: [v, 4, 4] OpenCV camera-to-world poses (stored as w2c).
        fxfycxcy: [v, 4] intrinsics in pixels of `images`.
        depth: optional [v, h, w] z-depth, stored as uint16 PNG.
        depth_valid: [v, h, w] bool; default: finite positive depths.
        depth_scale: stored value per depth unit; default: the largest power of two
            that fits the largest valid depth into uint16.
    """
    _check_scene_name(scene_name)
    root = Path(root)
    where = f"write_re10k_scene({scene_name!r})"
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{where}: images must be [V,3,H,W], got {list(images.shape)}")
    v, _, h, w = images.shape
    check_finite(images, f"{where}: images")
    validate_cameras(c2w, fxfycxcy, (h, w), f"{where}: cameras")
    c2w, fxfycxcy = c2w.detach().cpu().double(), fxfycxcy.detach().cpu().double()
    # w2c = [R^T | -R^-1 t]: reading it back with invert_rigid gives R exactly and
    # t up to float64 rounding, so cameras survive the round trip in float32.
    w2c = torch.zeros_like(c2w)
    w2c[:, :3, :3] = c2w[:, :3, :3].transpose(-1, -2)
    w2c[:, :3, 3] = -torch.linalg.solve(c2w[:, :3, :3], c2w[:, :3, 3:])[..., 0]
    w2c[:, 3, 3] = 1.0

    pixels = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()  # (v, h, w, 3)
    metadata: dict = {"scene_name": scene_name, "frames": []}
    if depth is not None:
        depth = depth.detach().cpu()
        if tuple(depth.shape) != (v, h, w):
            raise ValueError(f"{where}: depth must be [{v},{h},{w}], got {list(depth.shape)}")
        if depth_valid is None:
            depth_valid = torch.isfinite(depth) & (depth > 0)
        depth_valid = depth_valid.detach().cpu().bool()
        if tuple(depth_valid.shape) != (v, h, w):
            raise ValueError(
                f"{where}: depth_valid must be [{v},{h},{w}], got {list(depth_valid.shape)}"
            )
        if not torch.isfinite(depth[depth_valid]).all() or (depth[depth_valid] <= 0).any():
            raise ValueError(f"{where}: valid depths must be finite and positive")
        if depth_scale is None:
            max_depth = depth[depth_valid].max().item() if depth_valid.any() else 1.0
            depth_scale = depth_scale_for(max_depth)
        if not math.isfinite(depth_scale) or depth_scale <= 0:
            raise ValueError(f"{where}: depth_scale must be positive, got {depth_scale}")
        metadata["depth_scale"] = float(depth_scale)
    elif depth_valid is not None:
        raise ValueError(f"{where}: depth_valid given without depth")

    for i in range(v):
        name = f"{i:05d}.png"
        image_rel = f"images/{scene_name}/{name}"
        write_png(pixels[i], root / image_rel)
        frame = {
            "image_path": image_rel,
            "fxfycxcy": [float(x) for x in fxfycxcy[i]],
            "w2c": [[float(x) for x in row] for row in w2c[i]],
        }
        if depth is not None:
            depth_rel = f"depths/{scene_name}/{name}"
            write_png(
                quantise_depth(depth[i], depth_valid[i], depth_scale, where), root / depth_rel
            )
            frame["depth_path"] = depth_rel
        metadata["frames"].append(frame)

    meta_path = root / "metadata" / f"{scene_name}.json"
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    # Python's float repr is the shortest exact round trip: fixed, platform-independent text.
    meta_path.write_text(json.dumps(metadata, sort_keys=True) + "\n")
    return meta_path


def write_full_list(root: str | Path) -> Path:
    """Write ROOT/full_list.txt listing every metadata json (relative to ROOT, sorted)."""
    root = Path(root)
    names = sorted(p.name for p in (root / "metadata").glob("*.json"))
    if not names:
        raise FileNotFoundError(f"no metadata/*.json under {root}")
    list_path = root / FULL_LIST
    list_path.write_text("".join(f"metadata/{name}\n" for name in names))
    return list_path
