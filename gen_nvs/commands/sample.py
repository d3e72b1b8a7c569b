"""`gen-nvs sample`: diffusion samples of novel views from source images.

Sources come with cameras (a RealEstate10K metadata JSON) or pose-free; the targets are a
trajectory preset, explicit cameras or one view (see `gen_nvs.inputs`). Each target view
is sampled `--samples` times (`gen_nvs.sampling.sample_views`), keeping what the sources
saw (`--mask`). Written under --out:

    sample.json                   settings, depth scale, source names, what each file is
    cameras.json                  the target cameras (RealEstate10K metadata format)
    target_000/regression_rgb.png    the regression render (the known region)
    target_000/regression_depth.png  16-bit depth: metres-or-units = value / depth_scale
    target_000/mask.png              white where the view was generated
    target_000/sample_00_rgb.png, sample_00_depth.png, ...
    sample_00.ply, ...            each sample's target views fused into one point cloud

Points, depth and cameras are in the input world frame when source cameras are given,
else in the first source camera's frame at the normalised scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

import samplers
from gen_nvs.data.scene import load_image
from gen_nvs.geometry import rgbd
from gen_nvs.geometry.cameras import invert_rigid
from gen_nvs.inputs import (
    add_input_arguments,
    add_target_arguments,
    load_source_views,
    prepare_output_dir,
    resolve_device,
    scene_focus,
    target_cameras,
    target_spec_from_args,
)
from gen_nvs.models.nvs import EncodedScene, load_model_or_default, require_diffusion
from gen_nvs.sampling import (
    MASK_MODES,
    SampledViews,
    check_sampling_options,
    sample_views,
    scene_to_world,
)

UINT16_MAX = 65535
MAX_PLY_POINTS = 500_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    add_target_arguments(parser)
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--sampler",
        default="dpmpp-2m",
        help=f"scheduler: {', '.join(samplers.SCHEDULER_NAMES)} (default dpmpp-2m)",
    )
    group.add_argument("--steps", type=int, default=20, help="solver steps (default 20)")
    group.add_argument(
        "--guidance", type=float, default=2.0, help="classifier-free guidance scale (default 2)"
    )
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
    group.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (default 0)")
    group.add_argument("--samples", type=int, default=4, help="samples per target (default 4)")
    group.add_argument("--seed", type=int, default=0, help="sample k uses seed + k (default 0)")
    group.add_argument(
        "--mask",
        choices=MASK_MODES,
        default="auto",
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
        help="confidence below which a pixel is generated (default: half the sources' median)",
    )
    group.add_argument(
        "--resample-jumps", type=int, default=0, help="RePaint resampling per step (default 0)"
    )
    group.add_argument(
        "--max-batch", type=int, help="samples per sampler call (default: all at once)"
    )
    group.add_argument(
        "--memory-budget",
        type=float,
        metavar="GIB",
        help="memory sampling may use (default: free GPU memory, or 8 GiB on the CPU)",
    )


def run(args: argparse.Namespace) -> int:
    options = _sampling_options(args)
    check_sampling_options(**options)
    if args.mask_file is not None and args.mask != "auto":
        raise ValueError(f"give --mask-file or --mask, got both (--mask {args.mask})")
    out = prepare_output_dir(args.out, args.overwrite)
    device = resolve_device(args.device)
    image_hw = tuple(args.size)
    sources = load_source_views(args.images, args.cameras, image_hw)
    spec = target_spec_from_args(args)
    mask = None if args.mask_file is None else _read_mask(Path(args.mask_file), image_hw)
    model = load_model_or_default(args.checkpoint, device)
    require_diffusion(model, f"checkpoint {args.checkpoint or '(the embedded default)'}")
    if image_hw[0] % model.patch_size or image_hw[1] % model.patch_size:
        raise ValueError(
            f"--size {image_hw[0]} {image_hw[1]} must be multiples of the model's patch size "
            f"{model.patch_size}"
        )

    images, c2w, fxfycxcy = sources.batch(device)
    with torch.no_grad():
        scene = model.encode(images, c2w, fxfycxcy)
    if spec.focus is None and spec.kind != "cameras":
        spec = dataclasses.replace(
            spec, focus=scene_focus(model, scene, image_hw, sources.fxfycxcy)
        )
    source_c2w = None if scene.source_c2w is None else scene.source_c2w[0]
    targets = target_cameras(spec, image_hw, source_c2w, sources.fxfycxcy)
    target_c2w, target_fxfycxcy = targets.batch(device)
    if mask is not None:
        mask = mask.expand(1, targets.num_views, *image_hw).to(device)

    with tqdm(desc="sampling", unit="step") as bar:

        def progress(info: samplers.StepInfo) -> None:
            bar.total = info.num_steps
            bar.update(1)

        views = sample_views(
            model, scene, target_c2w, target_fxfycxcy, image_hw,
            normalized=targets.normalized, seed=args.seed, eta=args.eta, mask=mask,
            callback=progress, source_fxfycxcy=fxfycxcy, conf_threshold=args.conf_threshold,
            **options,
        )  # fmt: skip
    files = _write_outputs(out, scene, views, target_fxfycxcy[0])
    settings = {k: v for k, v in vars(args).items() if k not in ("_module", "command")}
    summary = {
        "settings": settings,
        "sources": sources.names,
        "posed": scene.posed,
        "frame": "input world frame" if scene.posed else "first source camera, normalised scale",
        "focus": spec.focus,
        "num_targets": targets.num_views,
        **files,
    }
    (out / "sample.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"wrote {args.samples} sample(s) of {targets.num_views} target view(s) to {out} "
        f"(see {out / 'sample.json'})"
    )
    return 0


def _sampling_options(args: argparse.Namespace) -> dict:
    """The `sample_views` options `check_sampling_options` checks, from the command line."""
    return dict(
        scheduler=args.sampler,
        steps=args.steps,
        num_samples=args.samples,
        guidance_scale=args.guidance,
        guidance_rescale=args.guidance_rescale,
        guidance_interval=None if args.guidance_interval is None else tuple(args.guidance_interval),
        mask_mode=args.mask,
        resample_jumps=args.resample_jumps,
        max_batch=args.max_batch,
        memory_budget=None if args.memory_budget is None else int(args.memory_budget * 2**30),
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
    num_samples, num_targets = views.rgb.shape[0], views.rgb.shape[2]
    depth = regression_depth = None
    if views.depth is not None:
        depth = views.depth[:, 0] * scale  # (n, t, h, w)
    if views.regression.points is not None:
        regression_depth = rgbd.points_to_depth(views.regression.points, views.target_c2w)[0]
        regression_depth = regression_depth * scale  # (t, h, w)
    known = [d.flatten() for d in (depth, regression_depth) if d is not None]
    depth_scale = _depth_scale(torch.cat(known)) if known else None
    mask = views.mask[0] if views.mask is not None else torch.ones_like(views.rgb[0, 0, :, 0])
    for j in range(num_targets):
        folder = out / f"target_{j:03d}"
        folder.mkdir(exist_ok=True)
        _write_rgb(folder / "regression_rgb.png", views.regression.rgb[0, j])
        if regression_depth is not None:
            _write_depth(folder / "regression_depth.png", regression_depth[j], depth_scale)
        _write_gray(folder / "mask.png", mask[j])
        for k in range(num_samples):
            _write_rgb(folder / f"sample_{k:02d}_rgb.png", views.rgb[k, 0, j])
            if depth is not None:
                _write_depth(folder / f"sample_{k:02d}_depth.png", depth[k, j], depth_scale)
    plys = []
    if views.points is not None:
        points = scene_to_world(scene, views.points.transpose(0, 1))[0]  # (n, t, h, w, 3)
        for k in range(num_samples):
            colors = views.rgb[k, 0].permute(0, 2, 3, 1)  # (t, h, w, 3)
            xyz, rgb = rgbd.fuse_point_clouds(
                points[k], colors, valid=rgbd.valid_depth(depth[k]), max_points=MAX_PLY_POINTS
            )
            plys.append(rgbd.write_ply(out / f"sample_{k:02d}.ply", xyz, rgb).name)
    _write_cameras(out / "cameras.json", scene, views.target_c2w[0], target_fxfycxcy)
    return {
        "depth_scale": depth_scale,
        "depth": "uint16 PNG, depth = value / depth_scale (0: no depth), z in the target camera",
        "mask": "white where the view was generated (unseen by the sources), black where kept",
        "point_clouds": plys,
        "cameras": "cameras.json",
    }


def _depth_scale(depth: Tensor) -> float:
    """Stored value per depth unit: the largest power of two that keeps every finite
    positive depth within uint16 (1 when there is none)."""
    valid = depth[rgbd.valid_depth(depth)]
    if valid.numel() == 0:
        return 1.0
    return 2.0 ** math.floor(math.log2(UINT16_MAX / valid.max().item()))


def _write_rgb(path: Path, rgb: Tensor) -> None:
    """rgb [3, h, w] in [0, 1] -> 8-bit PNG."""
    array = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)


def _write_gray(path: Path, values: Tensor) -> None:
    """values [h, w] in [0, 1] -> 8-bit grayscale PNG."""
    Image.fromarray((values.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()).save(path)


def _write_depth(path: Path, depth: Tensor, depth_scale: float) -> None:
    """depth [h, w] -> 16-bit PNG of depth * depth_scale; 0 where there is no depth."""
    valid = rgbd.valid_depth(depth)
    values = torch.where(valid, (depth * depth_scale).round().clamp(1, UINT16_MAX), 0)
    Image.fromarray(values.cpu().numpy().astype(np.uint16)).save(path)


def _write_cameras(
    path: Path, scene: EncodedScene, target_c2w: Tensor, target_fxfycxcy: Tensor
) -> None:
    """Target cameras [t, 4, 4] (normalised frame) -> RealEstate10K metadata, in the input
    world frame, naming the regression renders as the frames' images."""
    c2w = target_c2w.double().clone()
    c2w[:, :3, 3] *= scene.scale[0].item()
    c2w = invert_rigid(scene.reference_w2c[0].double()) @ c2w
    frames = [
        {
            "image_path": f"target_{j:03d}/regression_rgb.png",
            "fxfycxcy": [float(x) for x in target_fxfycxcy[j]],
            "w2c": [[float(x) for x in row] for row in invert_rigid(c2w[j])],
        }
        for j in range(c2w.shape[0])
    ]
    path.write_text(json.dumps({"scene_name": "targets", "frames": frames}, indent=1) + "\n")
