"""RealEstate10K read directly from pixelSplat's `.torch` chunks.

A chunk is a `torch.save`d list of examples, one per scene:

    {"key": str,
     "cameras": [n, 18] float: fx/W, fy/H, cx/W, cy/H, two unused numbers, then the
                OpenCV w2c as a row-major 3x4 matrix,
     "images": n uint8 1-D tensors, each an encoded JPEG,
     "timestamps": [n] (optional, unused)}

A split directory holds the chunks and, usually, `index.json` mapping each key to
its chunk file name. Chunks hold only plain containers, strings and tensors, so they
load with `torch.load(weights_only=True)`: no arbitrary code runs on reading them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from gen_nvs.data.scene import (
    SceneSample,
    ViewSampledDataset,
    check_finite,
    check_frame_indices,
    check_same_size,
    decode_image,
    resize_views,
)
from gen_nvs.geometry.cameras import MAX_FOV_DEG, invert_rigid, validate_cameras

INDEX_FILE = "index.json"
CAMERA_DIM = 18


def load_chunk(path: str | Path) -> list[dict]:
    """Read one chunk file: a list of examples (dicts)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pixelSplat chunk not found: {path}")
    try:
        chunk = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe pickles
        raise ValueError(f"{path}: cannot load pixelSplat chunk: {err}") from err
    if not isinstance(chunk, list) or not all(isinstance(e, dict) for e in chunk):
        raise ValueError(f"{path}: a pixelSplat chunk must be a list of dicts")
    for k, example in enumerate(chunk):
        if not isinstance(example.get("key"), str):
            raise ValueError(f"{path}: example {k}: missing string field 'key'")
    return chunk


def _check_example(example: dict, where: str) -> tuple[Tensor, list[Tensor]]:
    """The example's cameras [n, 18] float64 and its n encoded images, checked."""
    cameras = example.get("cameras")
    if not isinstance(cameras, Tensor) or cameras.ndim != 2 or cameras.shape[1] != CAMERA_DIM:
        shape = list(cameras.shape) if isinstance(cameras, Tensor) else type(cameras).__name__
        raise ValueError(f"{where}.cameras: expected a [N,{CAMERA_DIM}] tensor, got {shape}")
    cameras = cameras.double()
    check_finite(cameras, f"{where}.cameras")
    images = example.get("images")
    if not isinstance(images, (list, tuple)) or len(images) != cameras.shape[0]:
        count = len(images) if isinstance(images, (list, tuple)) else type(images).__name__
        raise ValueError(
            f"{where}.images: expected a list of {cameras.shape[0]} JPEGs, got {count}"
        )
    for i, image in enumerate(images):
        if not isinstance(image, Tensor) or image.dtype != torch.uint8 or image.ndim != 1:
            raise ValueError(f"{where}.images[{i}]: expected a 1-D uint8 tensor of JPEG bytes")
    return cameras, list(images)


def decode_cameras(cameras: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """pixelSplat camera rows [..., 18] -> (w2c [..., 4, 4], fxfycxcy [..., 4] in pixels)."""
    h, w = image_hw
    fxfycxcy = cameras[..., :4] * cameras.new_tensor([w, h, w, h])
    w2c = torch.zeros(*cameras.shape[:-1], 4, 4, dtype=cameras.dtype)
    w2c[..., :3, :] = cameras[..., 6:].reshape(*cameras.shape[:-1], 3, 4)
    w2c[..., 3, 3] = 1.0
    return w2c, fxfycxcy


class PixelSplatReader:
    """Scenes of one pixelSplat split directory (e.g. `re10k/test`).

    With `index.json` present only the chunks holding requested scenes are read;
    without it every chunk is read once to list the scenes. The most recently read
    chunk is kept in memory, so visiting scenes chunk by chunk is fastest.

    Args:
        root: the directory of `*.torch` chunks.
        image_hw: output (height, width); centre crop to its aspect, then resize.
            None keeps the stored size.
    """

    def __init__(self, root: str | Path, image_hw: tuple[int, int] | None) -> None:
        self.root = Path(root)
        self.image_hw = None if image_hw is None else tuple(image_hw)
        if not self.root.is_dir():
            raise FileNotFoundError(f"pixelSplat directory not found: {self.root}")
        index_path = self.root / INDEX_FILE
        if index_path.is_file():
            self._chunk_of = self._read_index(index_path)
        else:
            self._chunk_of = {}
            chunks = sorted(self.root.glob("*.torch"))
            if not chunks:
                raise FileNotFoundError(f"no *.torch chunks and no {INDEX_FILE} in {self.root}")
            for chunk_path in chunks:
                for example in load_chunk(chunk_path):
                    self._chunk_of[example["key"]] = chunk_path.name
        self.scene_names = list(self._chunk_of)
        self._cached_path: Path | None = None
        self._cached: dict[str, dict] = {}

    @staticmethod
    def _read_index(path: Path) -> dict[str, str]:
        try:
            index = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from err
        if not isinstance(index, dict) or not all(isinstance(v, str) for v in index.values()):
            raise ValueError(f"{path}: expected an object mapping scene keys to chunk file names")
        return index

    def _example(self, scene: str) -> tuple[dict, str]:
        if scene not in self._chunk_of:
            raise KeyError(f"scene {scene!r} is not in {self.root}")
        path = self.root / self._chunk_of[scene]
        if path != self._cached_path:
            self._cached = {e["key"]: e for e in load_chunk(path)}
            self._cached_path = path
        if scene not in self._cached:
            raise ValueError(
                f"{path}: scene {scene!r} is listed in {INDEX_FILE} but not in the chunk"
            )
        return self._cached[scene], f"{path}: scene {scene}"

    def num_frames(self, scene: str) -> int:
        example, where = self._example(scene)
        return _check_example(example, where)[0].shape[0]

    def load(self, scene: str, frame_indices: Sequence[int], num_sources: int) -> SceneSample:
        example, where = self._example(scene)
        cameras, jpegs = _check_example(example, where)
        indices = check_frame_indices(frame_indices, cameras.shape[0], where)
        images, c2w, fxfycxcy = [], [], []
        for k in indices:
            image = decode_image(jpegs[k].numpy().tobytes(), f"{where}.images[{k}]")
            hw = tuple(image.shape[-2:])
            w2c, intrinsics = decode_cameras(cameras[k : k + 1], hw)
            validate_cameras(w2c, intrinsics, hw, f"{where}.cameras[{k}]", max_fov_deg=MAX_FOV_DEG)
            image, intrinsics, _, _ = resize_views(image[None], intrinsics.float(), self.image_hw)
            images.append(image)
            c2w.append(invert_rigid(w2c).float())
            fxfycxcy.append(intrinsics)
        check_same_size(images, indices, where)
        return SceneSample(
            images=torch.cat(images),
            c2w=torch.cat(c2w),
            fxfycxcy=torch.cat(fxfycxcy),
            num_sources=num_sources,
            scene=scene,
            frame_indices=torch.tensor(indices),
        )


class PixelSplatDataset(ViewSampledDataset):
    """Training dataset over a pixelSplat split directory: one item per scene, views
    drawn by `sample_views` (see `ViewSampledDataset` for seeding)."""

    def __init__(
        self,
        root: str | Path,
        image_hw: tuple[int, int] | None,
        num_sources: int | tuple[int, int],
        num_targets: int,
        frame_gap: tuple[int, int],
        seed: int = 0,
        skip_short_scenes: bool = True,
        target_margin: int = 0,
    ) -> None:
        reader = PixelSplatReader(root, image_hw)
        super().__init__(
            reader, num_sources, num_targets, frame_gap, seed, skip_short_scenes, target_margin
        )
