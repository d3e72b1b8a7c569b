"""DL3DV and other scenes in nerfstudio's `transforms.json` format.

    {"fl_x", "fl_y", "cx", "cy", "w", "h",        intrinsics, in pixels of a w x h image;
                                                  each may instead be given per frame
     "frames": [{"file_path", "transform_matrix"}, ...]}

`transform_matrix` is camera-to-world in OpenGL/Blender camera axes (x right, y up,
z backward); flipping the camera's y and z axes gives OpenCV. `file_path` is relative
to the json's folder. Images may be stored smaller than w x h (DL3DV's `images_4`):
intrinsics are rescaled to the size of the image actually read.

Not used: `applied_transform` (a change of world frame, irrelevant once scenes are
normalised to their first source camera) and distortion coefficients (the pinhole
model is used as is). A frame's index is its position in `frames`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import torch
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
from gen_nvs.geometry.cameras import MAX_FOV_DEG, validate_cameras

TRANSFORMS = "transforms.json"
# Where scenes sit below a root: the root itself, <scene>/, <batch>/<scene>/, and
# DL3DV's benchmark layout with a nerfstudio/ folder per scene.
_SCENE_PATTERNS = ("", "*/", "*/*/", "*/nerfstudio/", "*/*/nerfstudio/")
# Camera axes OpenGL -> OpenCV: x stays, y and z flip.
OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """c2w [..., 4, 4] with OpenGL camera axes -> c2w with OpenCV camera axes."""
    return c2w @ OPENGL_TO_OPENCV.to(c2w)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    check_finite(torch.tensor(float(value)), where)
    return float(value)


class _Transforms:
    """One parsed transforms.json: per-frame file paths, OpenCV c2w and raw intrinsics."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise FileNotFoundError(f"transforms file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from err
        frames = data.get("frames") if isinstance(data, dict) else None
        if not isinstance(frames, list) or not frames:
            raise ValueError(f"{path}: 'frames' must be a non-empty list")
        self.file_paths: list[str] = []
        self.intrinsics: list[dict[str, float]] = []
        c2w = []
        for k, frame in enumerate(frames):
            where = f"{path}: frames[{k}]"
            if not isinstance(frame, dict):
                raise ValueError(f"{where}: expected an object")
            file_path = frame.get("file_path")
            if not isinstance(file_path, str):
                raise ValueError(f"{where}.file_path: expected a string, got {file_path!r}")
            self.file_paths.append(file_path)
            self.intrinsics.append(self._frame_intrinsics(data, frame, where, f"{path}"))
            c2w.append(self._matrix(frame.get("transform_matrix"), f"{where}.transform_matrix"))
        self.c2w = opengl_to_opencv(torch.stack(c2w))  # (n, 4, 4) float64

    @staticmethod
    def _frame_intrinsics(data: dict, frame: dict, where: str, top: str) -> dict[str, float]:
        """fl_x, fl_y, cx, cy, w, h from the frame, else the top level; fl_x is required."""
        values = {}
        for name in _INTRINSICS:
            if name in frame:
                values[name] = _number(frame[name], f"{where}.{name}")
            elif name in data:
                values[name] = _number(data[name], f"{top}: {name}")
        if "fl_x" not in values:
            raise ValueError(f"{where}: no focal length 'fl_x' in the frame or at the top level")
        values.setdefault("fl_y", values["fl_x"])
        return values

    @staticmethod
    def _matrix(value, where: str) -> Tensor:
        try:
            matrix = torch.tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{where}: expected a 4x4 matrix of numbers, got {value!r}") from err
        if tuple(matrix.shape) == (3, 4):
            matrix = torch.cat([matrix, matrix.new_tensor([[0.0, 0.0, 0.0, 1.0]])])
        if tuple(matrix.shape) != (4, 4):
            raise ValueError(f"{where}: expected a 4x4 matrix, got shape {list(matrix.shape)}")
        check_finite(matrix, where)
        return matrix


def _pixel_intrinsics(values: dict[str, float], image_hw: tuple[int, int], where: str) -> Tensor:
    """fxfycxcy [4] in pixels of the image read, from the json's values for a w x h image."""
    h, w = image_hw
    ref_w, ref_h = values.get("w", float(w)), values.get("h", float(h))
    if ref_w <= 0 or ref_h <= 0:
        raise ValueError(f"{where}: image size w={ref_w}, h={ref_h} must be positive")
    sx, sy = w / ref_w, h / ref_h
    # Downscaled copies round their sizes; anything beyond a pixel is another aspect.
    if abs(ref_h * sx - h) > 1.0 or abs(ref_w * sy - w) > 1.0:
        raise ValueError(
            f"{where}: the image read is {w}x{h}, which is not a rescaled copy of the "
            f"{ref_w:g}x{ref_h:g} image that w, h describe"
        )
    cx, cy = values.get("cx", ref_w / 2), values.get("cy", ref_h / 2)
    fxfycxcy = [values["fl_x"] * sx, values["fl_y"] * sy, cx * sx, cy * sy]
    return torch.tensor(fxfycxcy, dtype=torch.float64)


def find_scenes(root: str | Path) -> dict[str, Path]:
    """Scene name -> transforms.json below `root` (see `_SCENE_PATTERNS`).

    A scene's name is its folder relative to `root` (a trailing `nerfstudio` folder
    dropped), e.g. `1K/<hash>` for DL3DV; a root that is itself a scene is named
    after its folder.
    """
    root = Path(root)
    scenes = {}
    for pattern in _SCENE_PATTERNS:
        for path in sorted(root.glob(pattern + TRANSFORMS)):
            folder = PurePosixPath(path.parent.relative_to(root).as_posix())
            if folder.name == "nerfstudio":
                folder = folder.parent
            name = root.name if str(folder) == "." else str(folder)
            scenes.setdefault(name, path)
    return dict(sorted(scenes.items()))


class NerfstudioReader:
    """Scenes in nerfstudio format below `root`.

    Args:
        root: a scene folder or a folder of scene folders (see `find_scenes`).
        image_hw: output (height, width); centre crop to its aspect, then resize.
            None keeps the stored size.
        image_folder: read images from this folder instead of the first folder of
            each `file_path` (e.g. "images_4" for `images/frame_00001.png`).
    """

    def __init__(
        self,
        root: str | Path,
        image_hw: tuple[int, int] | None,
        image_folder: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.image_hw = None if image_hw is None else tuple(image_hw)
        self.image_folder = image_folder
        self._paths = find_scenes(self.root)
        if not self._paths:
            raise FileNotFoundError(f"no {TRANSFORMS} found in or below {self.root}")
        self.scene_names = list(self._paths)
        self._cached: tuple[str, _Transforms] | None = None

    def transforms(self, scene: str) -> _Transforms:
        if self._cached is None or self._cached[0] != scene:
            if scene not in self._paths:
                raise KeyError(f"scene {scene!r} is not in {self.root}")
            self._cached = (scene, _Transforms(self._paths[scene]))
        return self._cached[1]

    def _image_path(self, transforms: _Transforms, file_path: str) -> Path:
        relative = PurePosixPath(file_path)
        if self.image_folder is not None and len(relative.parts) > 1:
            relative = PurePosixPath(self.image_folder, *relative.parts[1:])
        return transforms.path.parent / relative

    def num_frames(self, scene: str) -> int:
        return len(self.transforms(scene).file_paths)

    def load(self, scene: str, frame_indices: Sequence[int], num_sources: int) -> SceneSample:
        transforms = self.transforms(scene)
        indices = check_frame_indices(
            frame_indices, len(transforms.file_paths), str(transforms.path)
        )
        images, fxfycxcy = [], []
        for k in indices:
            where = f"{transforms.path}: frames[{k}]"
            image = load_image(self._image_path(transforms, transforms.file_paths[k]))
            hw = tuple(image.shape[-2:])
            intrinsics = _pixel_intrinsics(transforms.intrinsics[k], hw, where)[None]
            validate_cameras(
                transforms.c2w[k : k + 1],
                intrinsics,
                hw,
                f"{where} (transform_matrix, intrinsics)",
                max_fov_deg=MAX_FOV_DEG,
            )
            image, intrinsics, _, _ = resize_views(image[None], intrinsics.float(), self.image_hw)
            images.append(image)
            fxfycxcy.append(intrinsics)
        check_same_size(images, indices, str(transforms.path))
        return SceneSample(
            images=torch.cat(images),
            c2w=transforms.c2w[indices].float(),
            fxfycxcy=torch.cat(fxfycxcy),
            num_sources=num_sources,
            scene=scene,
            frame_indices=torch.tensor(indices),
        )


class NerfstudioDataset(ViewSampledDataset):
    """Training dataset over nerfstudio scenes (e.g. DL3DV): one item per scene, views
    drawn by `sample_views` (see `ViewSampledDataset` for seeding)."""

    def __init__(
        self,
        root: str | Path,
        image_hw: tuple[int, int] | None,
        num_sources: int | tuple[int, int],
        num_targets: int,
        frame_gap: tuple[int, int],
        seed: int = 0,
        image_folder: str | None = None,
        skip_short_scenes: bool = True,
        target_margin: int = 0,
    ) -> None:
        reader = NerfstudioReader(root, image_hw, image_folder=image_folder)
        super().__init__(
            reader, num_sources, num_targets, frame_gap, seed, skip_short_scenes, target_margin
        )
