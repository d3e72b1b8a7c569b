"""Recompute a golden fixture of the official implementation with our modules.

A fixture (`*.safetensors`) holds a reduced-size model's weights (`model.*`,
`camera_head.*`), the inputs (`io.c2w_raw`, `io.fxfycxcy`, `io.images`) and every
intermediate the official code produced (`io.*`). Its header's `meta` entry gives the
variant, view counts, image size, whether cameras were given, and the configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from gen_nvs.geometry import cameras as cam
from gen_nvs.models.convert import load_official_weights
from gen_nvs.models.nvs import NVSModel

TOLERANCE = 1e-4
REQUIRED_INPUTS = ("io.c2w_raw", "io.fxfycxcy", "io.images")


def read_fixture(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(meta, tensors) of a fixture file; ValueError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fixture not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    if "meta" not in header:
        raise ValueError(f"{path}: the safetensors header has no 'meta' entry")
    meta = json.loads(header["meta"])
    missing = [k for k in REQUIRED_INPUTS if k not in tensors]
    if missing:
        raise ValueError(f"{path}: missing input tensors {missing}")
    return meta, tensors


def fixture_model_config(meta: dict[str, Any]) -> dict[str, Any]:
    """NVSModel config from a fixture's `meta` (its reduced configuration)."""
    c = meta["config"]
    return {
        "encoder": {
            "embed_dim": c["vggt_embed_dim"],
            "depth": c["vggt_depth"],
            "num_heads": c["vggt_heads"],
            "patch_embed_depth": c["dino_patch_embed_depth"],
            "patch_embed_heads": c["dino_heads"],
            "num_register_tokens": c["register_tokens"],
            "patch_size": c["vggt_patch"],
            "image_size": c["vggt_image_size"],
            "camera_token_dim": c["camera_token_dim"],
            "out_dim": c["decoder_hidden"],
            "patch_embed_layer_scale_init": 1.0,
        },
        "decoder": {
            "variant": meta["variant"],
            "width": c["decoder_hidden"],
            "depth": c["decoder_depth"],
            "num_heads": c["decoder_heads"],
            "patch_size": c["decoder_patch"],
        },
        "camera_head": {
            "dim": 2 * c["vggt_embed_dim"],
            "num_heads": c["camera_head_heads"],
            "trunk_depth": c["camera_head_trunk_depth"],
        },
    }


def _official_parts(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The fixture's weights as official LagerNVS and VGGT state dicts."""
    lagernvs = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    vggt = {k: v for k, v in tensors.items() if k.startswith("camera_head.")}
    return lagernvs, vggt


@torch.no_grad()
def recompute_fixture(path: str | Path) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Recompute every io quantity of a fixture -> name -> (ours, reference or None)."""
    meta, t = read_fixture(path)
    s, posed = meta["num_source_views"], meta["posed"]
    h, w = meta["image_hw"]
    model = NVSModel.from_config(fixture_model_config(meta)).eval()
    lagernvs, vggt = _official_parts(t)
    untouched = load_official_weights(model, lagernvs=lagernvs, vggt=vggt)
    if untouched:
        raise ValueError(f"{path}: weights missing from the fixture: {untouched[:5]}")

    c2w, camera_scale = cam.normalize_scene(t["io.c2w_raw"], s)
    tokens = cam.camera_tokens(c2w, t["io.fxfycxcy"], (h, w), s, camera_scale, posed=posed)
    rays = cam.plucker_rays(c2w, t["io.fxfycxcy"], h, w)
    if not posed:
        rays[:s] = 0.0  # the official code blanks the source ray maps without cameras
    images = t["io.images"][:s]
    encoder_tokens = model.encoder(images[None], tokens[None, :s]).tokens[0]
    rendered = model(t["io.images"][None], t["io.c2w_raw"][None], t["io.fxfycxcy"][None], s,
                     posed=posed).rgb[0]  # fmt: skip
    aggregated = model.encoder.aggregate(images, tokens[:s], resize="square")
    pose_enc = model.camera_head(aggregated)

    ours = {
        "io.c2w_normalized": c2w,
        "io.camera_scale": camera_scale,
        "io.camera_tokens": tokens,
        "io.plucker_rays": rays,
        "io.encoder_tokens": encoder_tokens,
        "io.rendered_targets": rendered,
        "io.aggregator_last_tokens": aggregated,
        "io.camera_head_pose_enc": pose_enc,
    }
    return {name: (value, t.get(name)) for name, value in ours.items()}


def check_fixture(path: str | Path) -> dict[str, float]:
    """Max absolute error per io quantity; ValueError on a shape mismatch."""
    errors = {}
    for name, (ours, ref) in recompute_fixture(path).items():
        if ref is None:
            continue
        if ours.shape != ref.shape:
            raise ValueError(
                f"{path}: {name} has shape {list(ours.shape)}, fixture {list(ref.shape)}"
            )
        errors[name] = (ours.float() - ref.float()).abs().max().item()
    return errors
