"""`gen-nvs render`: regression renders of novel views from source images.

Sources come with cameras (a RealEstate10K metadata JSON) or pose-free; the targets are a
trajectory preset, explicit cameras or one view (see `gen_nvs.inputs`, whose options this
command shares with `gen-nvs sample`). Written under --out, in the layout of `gen-nvs
sample` (whose regression half this is):

    render.json                      settings, depth scale, source names, what each file is
    cameras.json                     the target cameras (RealEstate10K metadata format)
    target_000/regression_rgb.png    the rendered view
    target_000/regression_depth.png  16-bit depth: units = value / depth_scale
    target_000/depth_color.png       the depth coloured for viewing (near red, far blue)
    points.ply                       the target views' points fused into one point cloud
    video.gif                        the views as an animation (more than one target)

Points, depth and cameras are in the input world frame when source cameras are given,
else in the first source camera's frame at the normalised scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from tqdm import tqdm

from app import visuals
from app.logic import render_targets
from gen_nvs.commands.sample import _depth_scale, _write_cameras, _write_depth, _write_rgb
from gen_nvs.geometry import rgbd
from gen_nvs.inputs import (
    TargetCameras,
    add_input_arguments,
    add_target_arguments,
    load_source_views,
    prepare_output_dir,
    resolve_device,
    scene_focus,
    target_cameras,
    target_spec_from_args,
)
from gen_nvs.models.decoder import DecoderOutput
from gen_nvs.models.nvs import EncodedScene, load_model_or_default
from gen_nvs.sampling import scene_to_world

MAX_PLY_POINTS = 500_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    add_target_arguments(parser)
    parser.add_argument(
        "--fps", type=float, default=8.0, help="frame rate of video.gif (default 8)"
    )


def run(args: argparse.Namespace) -> int:
    if not args.fps > 0:
        raise ValueError(f"--fps must be positive, got {args.fps}")
    spec = target_spec_from_args(args)
    image_hw = tuple(args.size)
    sources = load_source_views(args.images, args.cameras, image_hw)
    device = resolve_device(args.device)
    model = load_model_or_default(args.checkpoint, device)
    if image_hw[0] % model.patch_size or image_hw[1] % model.patch_size:
        raise ValueError(
            f"--size {image_hw[0]} {image_hw[1]} must be multiples of the model's patch size "
            f"{model.patch_size}"
        )
    out = prepare_output_dir(args.out, args.overwrite)

    with torch.no_grad():
        scene = model.encode(*sources.batch(device))
    if spec.focus is None and spec.kind != "cameras":
        spec = dataclasses.replace(
            spec, focus=scene_focus(model, scene, image_hw, sources.fxfycxcy)
        )
    source_c2w = None if scene.source_c2w is None else scene.source_c2w[0]
    targets = target_cameras(spec, image_hw, source_c2w, sources.fxfycxcy)
    with tqdm(total=targets.num_views, desc="rendering", unit="view") as bar:

        def progress(fraction: float, desc: str) -> None:
            bar.update(round(fraction * targets.num_views) - bar.n)

        views = render_targets(model, scene, targets, image_hw, device, progress)
    files = _write_outputs(out, scene, targets, views, args.fps)
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
    (out / "render.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {targets.num_views} view(s) to {out} (see {out / 'render.json'})")
    return 0


def _write_outputs(
    out: Path, scene: EncodedScene, targets: TargetCameras, views: DecoderOutput, fps: float
) -> dict:
    """Write the PNGs, PLY, video and cameras; -> what render.json lists. Without a point
    head there is no depth and no point cloud."""
    c2w = targets.c2w.to(scene.scale)  # (t, 4, 4)
    if not targets.normalized and scene.posed:
        c2w = scene.normalize(c2w[None])[0]
    depth = depth_scale = None
    if views.points is not None:
        depth = rgbd.points_to_depth(views.points[0], c2w.cpu()) * scene.scale[0].item()
        depth_scale = _depth_scale(depth.flatten())
    for j in range(targets.num_views):
        folder = out / f"target_{j:03d}"
        folder.mkdir(exist_ok=True)
        _write_rgb(folder / "regression_rgb.png", views.rgb[0, j])
        if depth is not None:
            _write_depth(folder / "regression_depth.png", depth[j], depth_scale)
            visuals.colorize_depth(depth[j]).save(folder / "depth_color.png")
    files = {
        "depth_scale": depth_scale,
        "depth": "uint16 PNG, depth = value / depth_scale (0: no depth), z in the target camera",
        "cameras": "cameras.json",
    }
    if views.points is not None:
        points = scene_to_world(scene, views.points.to(scene.scale))[0].cpu()  # (t, h, w, 3)
        xyz, rgb = rgbd.fuse_point_clouds(
            points,
            views.rgb[0].permute(0, 2, 3, 1),
            valid=rgbd.valid_depth(depth),
            max_points=MAX_PLY_POINTS,
        )
        files["point_cloud"] = rgbd.write_ply(out / "points.ply", xyz, rgb).name
    if targets.num_views > 1:
        frames = [visuals.to_pil(frame) for frame in views.rgb[0]]
        files["video"] = visuals.write_gif(frames, out / "video.gif", fps).name
    _write_cameras(out / "cameras.json", scene, c2w, targets.fxfycxcy)
    return files
