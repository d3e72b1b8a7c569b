"""User inputs: source images and cameras, target cameras, command-line options."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from PIL import Image

from gen_nvs.data.procedural import generate_scene
from gen_nvs.data.re10k import write_re10k_scene
from gen_nvs.geometry.cameras import crop_resize_intrinsics, invert_rigid
from gen_nvs.inputs import (
    MAX_FRAMES,
    TargetSpec,
    default_intrinsics,
    load_source_views,
    orbit_view,
    target_cameras,
)
from gen_nvs.options import (
    add_input_arguments,
    add_model_arguments,
    add_target_arguments,
    resolve_device,
    target_spec_from_args,
)
from gen_nvs.outputs import prepare_output_dir

STORED_HW, HW = (32, 48), (32, 32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A procedural scene of 3 views written as RealEstate10K: (views, root, metadata)."""
    root = tmp_path_factory.mktemp("re10k")
    views = generate_scene(3, 3, STORED_HW)
    meta = write_re10k_scene(root, "s", views.images, views.c2w, views.fxfycxcy)
    return views, root, meta


def image_paths(root, *indices):
    return [root / "images" / "s" / f"{i:05d}.png" for i in indices]


def write_image(path, width, height):
    Image.new("RGB", (width, height), (10, 200, 30)).save(path)
    return path


# --------------------------------------------------------------------------------------
# Source views
# --------------------------------------------------------------------------------------


def test_files_or_one_directory_give_the_same_views(scene):
    _, root, _ = scene
    from_dir = load_source_views([root / "images" / "s"], image_hw=HW)
    from_files = load_source_views(image_paths(root, 0, 1, 2), image_hw=HW)
    assert from_dir.names == ["00000.png", "00001.png", "00002.png"] == from_files.names
    assert torch.equal(from_dir.images, from_files.images)
    assert from_dir.images.shape == (3, 3, *HW) and not from_dir.posed
    assert 0 <= from_dir.images.min() and from_dir.images.max() <= 1
    images, c2w, fxfycxcy = from_dir.batch("cpu")
    assert images.shape == (1, 3, 3, *HW) and c2w is None and fxfycxcy is None


def test_cameras_are_matched_by_name_and_follow_the_crop(scene):
    views, root, meta = scene
    sources = load_source_views(image_paths(root, 2, 0), cameras=meta, image_hw=HW)
    assert sources.names == ["00002.png", "00000.png"] and sources.posed
    assert torch.allclose(sources.c2w, views.c2w[[2, 0]], atol=1e-5)
    expected = crop_resize_intrinsics(views.fxfycxcy[[2, 0]], STORED_HW, HW)
    assert torch.allclose(sources.fxfycxcy, expected, atol=1e-4)
    assert sources.fxfycxcy[0, 2] == pytest.approx(HW[1] / 2, abs=1e-4)  # cropped centre


def test_source_errors_name_the_problem(scene, tmp_path):
    _, root, meta = scene
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_source_views([tmp_path / "missing.png"])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read image .*notes.png"):
        load_source_views([text])
    with pytest.raises(ValueError, match="3 source images given, at most 2"):
        load_source_views(image_paths(root, 0, 1, 2), max_views=2)
    wide = write_image(tmp_path / "wide.png", 96, 32)
    square = write_image(tmp_path / "square.png", 32, 32)
    with pytest.raises(ValueError, match="aspect ratio: wide.png is 96x32 and square.png is 32x32"):
        load_source_views([square, wide])
    big = write_image(tmp_path / "big.png", 320, 320)
    with pytest.raises(ValueError, match="size: big.png is 320x320 and square.png"):
        load_source_views([square, big])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        load_source_views([tmp_path / "empty"])
    with pytest.raises(ValueError, match="one directory"):
        load_source_views([root / "images" / "s", square])
    other = write_image(tmp_path / "other.png", 48, 32)
    with pytest.raises(ValueError, match=r"no camera for source image\(s\) \['other.png'\]"):
        load_source_views([image_paths(root, 0)[0], other], cameras=meta)


def test_camera_file_errors(scene, tmp_path):
    _, root, meta = scene
    bad = json.loads(meta.read_text())
    bad["frames"][1]["w2c"][0][0] = 3.0  # not a rotation
    bad_path = tmp_path / "bad.json"
    bad_path.write_text(json.dumps(bad))
    with pytest.raises(
        ValueError, match=r"frames\[1\] \(00001.png, 48x32\).*not a proper rotation"
    ):
        load_source_views(image_paths(root, 1), cameras=bad_path)
    with pytest.raises(FileNotFoundError, match="metadata file not found"):
        load_source_views(image_paths(root, 1), cameras=tmp_path / "none.json")


def _edited_cameras(meta, tmp_path, edit) -> object:
    record = json.loads(meta.read_text())
    for frame in record["frames"]:
        edit(frame)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(record))
    return path


def test_camera_files_with_normalised_intrinsics_are_refused(scene, tmp_path):
    """Raw RealEstate10K stores fxfycxcy divided by the image size: a 170+ degree view."""
    _, root, meta = scene

    def normalise(frame):
        fx, fy, cx, cy = frame["fxfycxcy"]
        frame["fxfycxcy"] = [fx / 48, fy / 32, cx / 48, cy / 32]

    cameras = _edited_cameras(meta, tmp_path, normalise)
    message = r"edited.json: frames\[1\] \(00001.png, 48x32\).*fx=.* degree field of view"
    with pytest.raises(ValueError, match=message):
        load_source_views(image_paths(root, 1), cameras=cameras)
    with pytest.raises(ValueError, match=r"edited.json: frames\[0\] .*degree field of view"):
        target_cameras(TargetSpec(cameras=cameras), HW)


def test_camera_files_float32_cannot_place_are_refused(scene, tmp_path):
    _, root, meta = scene

    def far(frame, offset):
        w2c = torch.tensor(frame["w2c"], dtype=torch.float64)
        w2c[:3, 3] -= w2c[:3, :3] @ torch.tensor(offset, dtype=torch.float64)  # moves the world
        frame["w2c"] = w2c.tolist()

    cameras = _edited_cameras(meta, tmp_path, lambda f: far(f, [1e30, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"edited.json: frames\[0\] .*pose translation .*1e\+30"):
        load_source_views(image_paths(root, 0, 1), cameras=cameras)
    # Geo-referenced: millions of units out, fine in float64, a coarse grid in float32.
    cameras = _edited_cameras(meta, tmp_path, lambda f: far(f, [5e6, 5e6, 0.0]))
    with pytest.raises(
        ValueError,
        match=r"edited.json: the source cameras are 7.071e\+06 units from the world origin",
    ):
        load_source_views(image_paths(root, 0, 1), cameras=cameras)
    cameras = _edited_cameras(meta, tmp_path, lambda f: far(f, [1e3, 1e3, 0.0]))
    moved = load_source_views(image_paths(root, 0, 1), cameras=cameras)
    assert torch.allclose(
        moved.c2w[:, 0, 3],
        load_source_views(image_paths(root, 0, 1), cameras=meta).c2w[:, 0, 3] + 1e3,
    )


def test_exif_orientation_sets_the_size_and_the_pixels(tmp_path):
    from PIL import ExifTags

    from gen_nvs.inputs import first_image_size

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored 96 x 64, shown 64 wide and 96 high
    Image.new("RGB", (96, 64), (200, 30, 30)).save(tmp_path / "turned.jpg", exif=exif)
    assert first_image_size([tmp_path / "turned.jpg"]) == (96, 64)
    views = load_source_views([tmp_path / "turned.jpg"], None, (48, 32))
    assert views.images.shape == (1, 3, 48, 32)


# --------------------------------------------------------------------------------------
# Target cameras
# --------------------------------------------------------------------------------------


def test_trajectories_start_at_the_reference_and_reuse_its_intrinsics(scene):
    views, _, _ = scene
    source_c2w = invert_rigid(views.c2w[0]) @ views.c2w  # the normalised frame's rotation
    targets = target_cameras(
        TargetSpec(trajectory="orbit", frames=5, focus=2.0),
        HW,
        source_c2w,
        views.fxfycxcy,
        STORED_HW,
    )
    assert targets.c2w.shape == (5, 4, 4) and targets.normalized
    assert torch.allclose(targets.c2w[0], source_c2w[0], atol=1e-5)
    expected = crop_resize_intrinsics(views.fxfycxcy[0], STORED_HW, HW)
    assert torch.allclose(targets.fxfycxcy, expected.expand(5, 4), atol=1e-4)
    through = target_cameras(TargetSpec(trajectory="interpolate", frames=4), HW, source_c2w)
    assert torch.allclose(through.c2w[[0, -1]], source_c2w[[0, -1]], atol=1e-5)
    assert torch.allclose(through.fxfycxcy[0], default_intrinsics(HW))  # no intrinsics given


def test_single_view_turns_about_the_focus_point():
    reference = torch.eye(4)
    reference[:3, 3] = torch.tensor([0.5, 0.0, 0.0])
    sources = torch.stack([torch.eye(4), reference])
    same = target_cameras(TargetSpec(azimuth_deg=0.0, from_source=1), HW, sources)
    assert torch.allclose(same.c2w[0], reference, atol=1e-6)
    right = orbit_view(reference, 90.0, 0.0, 1.0, 1.0)
    assert torch.allclose(right[:3, 3], torch.tensor([1.5, 0.0, 1.0]), atol=1e-6)
    up = orbit_view(reference, 0.0, 30.0, 2.0, 1.0)
    assert up[1, 3] < 0  # up is -y in OpenCV cameras
    centre = reference[:3, 3] + torch.tensor([0.0, 0.0, 1.0])
    assert (up[:3, 3] - centre).norm() == pytest.approx(2.0, abs=1e-5)
    assert torch.allclose(up[:3, 2], (centre - up[:3, 3]) / 2.0, atol=1e-6)  # looks at it


def test_camera_file_targets_are_in_the_world_frame(scene, tmp_path):
    views, _, meta = scene
    targets = target_cameras(TargetSpec(cameras=meta), HW)
    assert not targets.normalized
    assert torch.allclose(targets.c2w, views.c2w, atol=1e-5)
    # Images present: intrinsics follow the crop of the stored 48x32 images to 32x32.
    expected = crop_resize_intrinsics(views.fxfycxcy, STORED_HW, HW)
    assert torch.allclose(targets.fxfycxcy, expected, atol=1e-4)
    # Without the images, the intrinsics are taken as pixels of the renders.
    moved = tmp_path / "targets.json"
    moved.write_text(meta.read_text())
    frames = json.loads(moved.read_text())["frames"]
    loose = target_cameras(TargetSpec(cameras=moved), HW)
    assert torch.allclose(loose.fxfycxcy[1], torch.tensor(frames[1]["fxfycxcy"]).float())


def test_keyframes_give_a_smooth_path_through_the_file_cameras(scene):
    _, _, meta = scene  # 3 keyframes
    targets = target_cameras(TargetSpec(keyframes=meta, frames=5), HW)
    keys = target_cameras(TargetSpec(cameras=meta), HW)
    assert not targets.normalized and targets.c2w.shape == (5, 4, 4)
    for frame, key in ((0, 0), (2, 1), (4, 2)):  # keys land on frames 0, 2, 4
        assert torch.allclose(targets.c2w[frame], keys.c2w[key], atol=1e-5)
        assert torch.allclose(targets.fxfycxcy[frame], keys.fxfycxcy[key], atol=1e-4)
    middle = (keys.fxfycxcy[0] + keys.fxfycxcy[1]) / 2
    assert torch.allclose(targets.fxfycxcy[1], middle, atol=1e-4)
    spec = target_spec_from_args(parse("--keyframes", str(meta), "--frames", "5"))
    assert spec.kind == "keyframes" and spec.frames == 5


def test_trajectory_distance_and_zoom_reach_the_targets():
    sources = torch.eye(4)[None]
    k = torch.tensor([[40.0, 40.0, 16.0, 16.0]])
    spec = target_spec_from_args(
        parse("--trajectory", "zoom-in", "--trajectory-distance", "2", "--frames", "3")
    )
    targets = target_cameras(spec, HW, sources, k)
    assert torch.allclose(targets.fxfycxcy[:, 0], torch.tensor([40.0, 40 * 2**0.5, 80.0]))
    moved = target_cameras(
        TargetSpec(trajectory="move-right", trajectory_distance=0.5), HW, sources
    )
    assert torch.allclose(moved.c2w[-1, :3, 3], torch.tensor([0.5, 0.0, 0.0]))
    with pytest.raises(ValueError, match="--trajectory-distance needs --trajectory"):
        target_spec_from_args(parse("--trajectory-distance", "2"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--azimuth", "inf"], "--azimuth must be a finite number, got inf"),
        (["--azimuth", "nan"], "--azimuth must be a finite number, got nan"),
        (["--elevation", "nan"], "--elevation must be a finite number, got nan"),
        (["--distance", "1e300"], r"--distance must be in \(0, 100\] .* got 1e\+300"),
        (["--focus", "inf"], "--focus must be a finite number, got inf"),
        (["--focus", "0"], r"--focus must be in \(0, 100\]"),
        (["--trajectory", "orbit", "--trajectory-distance", "nan"], "--trajectory-distance must"),
        (
            ["--trajectory", "zoom-out", "--trajectory-distance", "0"],
            r"--trajectory-distance\) of zoom-out is a focal factor in \[0.1, 10\], got 0",
        ),
        (
            ["--trajectory", "dolly-zoom", "--trajectory-distance", "1e300"],
            r"--trajectory-distance\) of dolly-zoom is a travel .* got 1e\+300",
        ),
    ],
)
def test_camera_options_out_of_range_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        target_spec_from_args(parse(*argv))


def test_target_spec_checks_its_numbers():
    with pytest.raises(ValueError, match="azimuth must be a finite number of degrees, got inf"):
        TargetSpec(azimuth_deg=math.inf)
    with pytest.raises(ValueError, match="distance must be positive and finite, got inf"):
        TargetSpec(azimuth_deg=0.0, distance=math.inf)
    with pytest.raises(ValueError, match="focus must be positive and finite, got nan"):
        TargetSpec(focus=math.nan)
    with pytest.raises(ValueError, match="--trajectory-distance.* of pan is degrees"):
        TargetSpec(trajectory="pan", trajectory_distance=1000.0)
    with pytest.raises(ValueError, match="--trajectory-distance.* of orbit is degrees"):
        TargetSpec(trajectory_distance=1000.0)  # the default trajectory, orbit


def test_target_errors():
    with pytest.raises(ValueError, match="one kind of target cameras, got a trajectory and an az"):
        TargetSpec(trajectory="orbit", azimuth_deg=10.0)
    with pytest.raises(ValueError, match="unknown trajectory 'loop'.*interpolate"):
        TargetSpec(trajectory="loop")
    with pytest.raises(ValueError, match="frames must be between 1 and 10000, got 0"):
        TargetSpec(frames=0)
    with pytest.raises(ValueError, match="frames must be between 1 and 10000, got 10001"):
        TargetSpec(frames=MAX_FRAMES + 1)
    with pytest.raises(ValueError, match="elevation .* got 90"):
        TargetSpec(azimuth_deg=0.0, elevation_deg=90.0)
    sources = torch.eye(4).expand(2, 4, 4)
    with pytest.raises(ValueError, match=r"source index 2 does not exist: there are 2"):
        target_cameras(TargetSpec(azimuth_deg=5.0, from_source=2), HW, sources)
    with pytest.raises(ValueError, match="'interpolate' is unavailable"):
        target_cameras(TargetSpec(trajectory="interpolate"), HW, None)
    pose_free = target_cameras(TargetSpec(frames=3), HW, None)
    assert torch.allclose(pose_free.c2w[0], torch.eye(4), atol=1e-6)


# --------------------------------------------------------------------------------------
# Command-line options
# --------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_input_arguments(parser)
    add_target_arguments(parser)
    return parser.parse_args(["--images", "a.png", "--out", "o", *argv])


def test_options_build_the_target_spec():
    args = parse()
    assert args.size is None and args.resolution == 64
    assert args.checkpoint is None and args.device == "auto"
    assert target_spec_from_args(args) == TargetSpec(frames=8)
    assert target_spec_from_args(parse("--trajectory", "spiral", "--frames", "3")).frames == 3
    view = target_spec_from_args(parse("--elevation", "10", "--from-source", "1"))
    assert view.kind == "view" and view.azimuth_deg == 0 and view.from_source == 1
    assert target_spec_from_args(parse("--target-cameras", "t.json")).kind == "cameras"
    with pytest.raises(ValueError, match="got --trajectory and --azimuth"):
        target_spec_from_args(parse("--trajectory", "orbit", "--azimuth", "3"))


@pytest.mark.parametrize("frames", ["0", "10001", "10000000"])
def test_frames_out_of_range_are_refused_naming_the_option(frames):
    args = parse("--trajectory", "orbit", "--frames", frames)
    with pytest.raises(ValueError, match=f"--frames must be between 1 and 10000, got {frames}$"):
        target_spec_from_args(args)
    assert target_spec_from_args(parse("--frames", str(MAX_FRAMES))).frames == MAX_FRAMES


def test_frames_help_gives_the_limit():
    parser = argparse.ArgumentParser()
    add_target_arguments(parser)
    assert "1-10000 (default 8)" in " ".join(parser.format_help().split())


def test_model_options_without_a_default_size():
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_model_arguments(parser, default_size=None)
    assert parser.parse_args([]).size is None
    assert parser.parse_args(["--size", "16", "24"]).size == [16, 24]
    assert "default: as stored" in parser.format_help()


def test_output_directory_and_device(tmp_path):
    out = prepare_output_dir(tmp_path / "out", overwrite=False)
    (out / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="is not empty; pass --overwrite"):
        prepare_output_dir(out, overwrite=False)
    assert prepare_output_dir(out, overwrite=True) == out
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.parametrize("cuda", [False, True])
def test_auto_device_is_cuda_only_when_available(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("auto") == torch.device("cuda" if cuda else "cpu")
    if not cuda:
        with pytest.raises(ValueError, match="device 'cuda:1' was asked for but CUDA is not"):
            resolve_device("cuda:1")


def test_output_folder_that_cannot_be_made_is_named(tmp_path, monkeypatch):
    from pathlib import Path

    from gen_nvs.outputs import check_output_dir

    (tmp_path / "file.txt").write_text("mine")
    message = r"cannot create the output folder .*file.txt/out: .*file.txt is not a directory"
    with pytest.raises(ValueError, match=message):
        prepare_output_dir(tmp_path / "file.txt" / "out", overwrite=False)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "mkdir", refuse)
    message = (
        rf"cannot create the output folder {tmp_path}/new/out in {tmp_path}: Permission denied"
    )
    with pytest.raises(ValueError, match=message):
        prepare_output_dir(tmp_path / "new" / "out", overwrite=False)
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(ValueError, match=rf"new/out: its parent {tmp_path} is not writable"):
        check_output_dir(tmp_path / "new" / "out", overwrite=False)


def test_unusable_devices_are_named(monkeypatch):
    with pytest.raises(ValueError, match="--device: device 'meta' is not supported"):
        resolve_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="--device: device 'cuda:3' was asked for but there are 1"):
        resolve_device("cuda:3")


def test_sizes_beyond_the_limit_are_refused(tmp_path):
    from gen_nvs.inputs import render_size
    from gen_nvs.options import check_render_size, source_render_size

    with pytest.raises(ValueError, match="--size 100000 100000 must be between 1 and 4096"):
        check_render_size((100000, 100000), 8)
    with pytest.raises(ValueError, match="--size 0 64 must be between 1 and 4096"):
        check_render_size((0, 64), 8)
    with pytest.raises(ValueError, match="--resolution must be at most 4096, got 50000"):
        render_size((64, 64), 50000, 8)
    Image.new("RGB", (4000, 40)).save(tmp_path / "strip.png")
    args = parse("--resolution", "4096")
    args.images = [str(tmp_path / "strip.png")]
    with pytest.raises(ValueError, match=r"--resolution 4096 at the aspect .*4000x40.* renders"):
        source_render_size(args, 8)
    with pytest.raises(ValueError, match="image size \\[8192, 64\\] is too large"):
        target_cameras(TargetSpec(), (8192, 64))


def test_render_size_keeps_the_aspect_ratio_patch_aligned():
    from gen_nvs.inputs import render_size

    assert render_size((500, 741), 64, 8) == (48, 72)  # the motorcycle pair: 1.48 -> 1.5
    assert render_size((480, 640), 64, 8) == (56, 72)  # 4:3 at ~64^2
    assert render_size((64, 64), 64, 8) == (64, 64)
    assert render_size((1080, 1920), 64, 8) == (48, 88)  # 16:9 -> 1.83
    assert render_size((1000, 100), 64, 8) == (208, 24)  # a tall strip stays tall
    assert render_size((100, 5000), 64, 8) == (8, 448)  # never under one patch
    with pytest.raises(ValueError, match="--resolution must be >= the patch size 8"):
        render_size((64, 64), 4, 8)


def test_cropping_is_said_once_it_matters(tmp_path, capsys):
    from gen_nvs.inputs import crop_note

    assert crop_note(["a.png"], [(500, 741)], (48, 72)) is None  # 1.48 vs 1.5: 1 % of height
    note = crop_note(["a.png", "b.png"], [(64, 64), (500, 741)], (64, 64))
    assert note is not None and "b.png loses 33% of its width" in note
    Image.new("RGB", (741, 500)).save(tmp_path / "wide.png")
    load_source_views([tmp_path / "wide.png"], None, (64, 64))
    assert "wide.png loses 33% of its width" in capsys.readouterr().err


def test_render_keeps_a_landscape_photo_landscape(tmp_path):
    from gen_nvs.cli import main

    Image.new("RGB", (741, 500), (90, 120, 200)).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    assert main(["render", "--images", str(tmp_path / "wide.png"), "--out", str(out)]) == 0
    assert Image.open(out / "target_000" / "regression_rgb.png").size == (72, 48)
