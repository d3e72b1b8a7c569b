"""`gen-nvs render`: regression renders of novel views from source images.

Sources come with cameras (a RealEstate10K metadata JSON) or pose-free; the targets are a
trajectory preset, explicit cameras or one view (see `gen_nvs.inputs`; the options, in
`gen_nvs.options`, are shared with `gen-nvs sample`). Written under --out, in the layout of
`gen-nvs sample` (whose regression half this is):

    render.json                      settings, depth scale, source names, what each file is
    cameras.json                     the target cameras (RealEstate10K metadata format)
    target_000/regression_rgb.png    the rendered view
    target_000/regression_depth.png  16-bit depth: units = value / depth_scale
    target_000/depth_color.png       the depth coloured for viewing (near red, far blue)
    points.ply                       the target views' points fused into one point cloud
    video.mp4 (and/or video.gif)     the views as a video (more than one target; --video)

Points, depth and cameras are in the input world frame when source cameras are given,
else in the first source camera's frame at the normalised scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from gen_nvs.inputs import TargetCameras, load_source_views
from gen_nvs.options import (
    add_input_arguments,
    add_target_arguments,
    add_video_arguments,
    resolve_device,
    source_render_size,
    target_spec_from_args,
    video_formats,
)
from gen_nvs.outputs import (
    DEPTH_FORMAT,
    check_output_dir,
    colorize_depth,
    fit_depth_scale,
    output_dir,
    to_pil,
    write_cameras,
    write_point_cloud,
    write_regression,
    write_summary,
    write_video,
)
from gen_nvs.pipeline import NVSPipeline, Scene, Views
from gen_nvs.sampling import scene_to_world


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser)
    add_target_arguments(parser)
    add_video_arguments(parser)


def run(args: argparse.Namespace) -> int:
    videos = video_formats(args)
    spec = target_spec_from_args(args)
    check_output_dir(args.out, args.overwrite)  # before any loading
    pipe = NVSPipeline.from_pretrained(args.checkpoint, resolve_device(args.device))
    sources = load_source_views(
        args.images, args.cameras, source_render_size(args, pipe.model.patch_size)
    )
    with output_dir(args.out, args.overwrite) as out:  # removed again if anything fails
        scene = pipe.encode(sources)
        spec = scene.focused(spec)
        targets = pipe.targets(scene, spec)
        with tqdm(total=targets.num_views, desc="rendering", unit="view") as bar:

            def progress(fraction: float, desc: str) -> None:
                bar.update(round(fraction * targets.num_views) - bar.n)

            views = pipe.render(scene, targets, progress)
        files = _write_outputs(out, scene, targets, views, videos, args)
        summary = out / "render.json"
        write_summary(summary, args, sources, scene.encoded, spec.focus, targets.num_views, files)
    print(f"wrote {targets.num_views} view(s) to {out} (see {summary})")
    return 0


def _write_outputs(
    out: Path,
    scene: Scene,
    targets: TargetCameras,
    views: Views,
    videos: list[str],
    args: argparse.Namespace,
) -> dict:
    """Write the PNGs, PLY, video and cameras; -> what render.json lists. Without a point
    head there is no depth and no point cloud."""
    encoded = scene.encoded
    depth = views.depth
    depth_scale = None if depth is None else fit_depth_scale(depth.flatten())
    folders = write_regression(out, views.rgb, depth, depth_scale)
    if depth is not None:
        for folder, view_depth in zip(folders, depth, strict=True):
            colorize_depth(view_depth).save(folder / "depth_color.png")
    files = {"depth_scale": depth_scale, "depth": DEPTH_FORMAT, "cameras": "cameras.json"}
    if views.points is not None:
        points = scene_to_world(encoded, views.points[None].to(encoded.scale))[0].cpu()
        files["point_cloud"] = write_point_cloud(out / "points.ply", points, views.rgb, depth).name
    if targets.num_views > 1 and videos:
        frames = [to_pil(frame) for frame in views.rgb]
        written = write_video(frames, out, videos, args.fps, args.video_quality)
        files["video"] = written[0] if len(written) == 1 else written
    write_cameras(out / "cameras.json", encoded, targets.scene_c2w(encoded), targets.fxfycxcy)
    return files
