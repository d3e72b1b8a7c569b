"""Scene data: one sample format, view sampling, and readers for each dataset format."""

from gen_nvs.data.eval_index import EvalDataset, EvalEntry, EvalIndex
from gen_nvs.data.nerfstudio import NerfstudioDataset, NerfstudioReader, opengl_to_opencv
from gen_nvs.data.pixelsplat import PixelSplatDataset, PixelSplatReader, load_chunk
from gen_nvs.data.re10k import (
    RE10KDataset,
    RE10KReader,
    load_scene,
    read_metadata,
    write_full_list,
    write_re10k_scene,
)
from gen_nvs.data.scene import (
    SceneBatch,
    SceneReader,
    SceneSample,
    ViewSampledDataset,
    center_crop_resize,
    center_crop_resize_depth,
    collate_scenes,
    decode_image,
    frames_needed,
    load_image,
    mirror_scenes,
    sample_views,
)

__all__ = [
    "EvalDataset",
    "EvalEntry",
    "EvalIndex",
    "NerfstudioDataset",
    "NerfstudioReader",
    "PixelSplatDataset",
    "PixelSplatReader",
    "RE10KDataset",
    "RE10KReader",
    "SceneBatch",
    "SceneReader",
    "SceneSample",
    "ViewSampledDataset",
    "center_crop_resize",
    "center_crop_resize_depth",
    "collate_scenes",
    "decode_image",
    "frames_needed",
    "load_chunk",
    "load_image",
    "load_scene",
    "mirror_scenes",
    "opengl_to_opencv",
    "read_metadata",
    "sample_views",
    "write_full_list",
    "write_re10k_scene",
]
