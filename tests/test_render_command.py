"""`gen-nvs render`: outputs, parity with the model, the shared target options, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gen_nvs.cli import main
from gen_nvs.data.procedural import generate_scene
from gen_nvs.data.re10k import write_re10k_scene
from gen_nvs.geometry.rgbd import read_ply
from gen_nvs.inputs import load_source_views
from gen_nvs.models.config import model_config
from gen_nvs.models.nvs import build_model, load_model, save_model

SIZE = ["--size", "32", "32"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny export (small encoder resolution: the preset would resize inputs to 518)."""
    torch.manual_seed(0)
    config = model_config("tiny").override({"encoder": {"image_size": 56}})
    return save_model(build_model(config), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A procedural scene on disk: (images folder, cameras JSON)."""
    root = tmp_path_factory.mktemp("scene")
    views = generate_scene(3, 3, (32, 32))
    cameras = write_re10k_scene(root, "scene", views.images, views.c2w, views.fxfycxcy)
    return root / "images" / "scene", cameras


def _render(checkpoint, *args: str) -> int:
    return main(["render", "--checkpoint", str(checkpoint), *SIZE, *args])


def read_mp4(path) -> tuple[np.ndarray, float]:
    """Decoded frames [n, h, w, 3] (uint8 RGB) and the frame rate of an MP4."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


def test_trajectory_outputs(checkpoint, scene, tmp_path):
    images, cameras = scene
    out = tmp_path / "out"
    args = ["--images", str(images), "--cameras", str(cameras), "--out", str(out)]
    video = ["--fps", "5", "--video", "mp4", "gif"]
    assert _render(checkpoint, *args, "--trajectory", "spiral", "--frames", "4", *video) == 0
    summary = json.loads((out / "render.json").read_text())
    assert summary["num_targets"] == 4 and summary["posed"]
    assert summary["sources"] == ["00000.png", "00001.png", "00002.png"]
    for j in range(4):
        folder = out / f"target_{j:03d}"
        assert _rgb(folder / "regression_rgb.png").shape == (32, 32, 3)
        depth = np.asarray(Image.open(folder / "regression_depth.png"))
        assert depth.dtype == np.uint16 and depth.shape == (32, 32) and depth.max() > 0
        assert Image.open(folder / "depth_color.png").size == (32, 32)
    with Image.open(out / "video.gif") as gif:
        assert gif.n_frames == 4 and gif.info["duration"] == 200
    assert summary["video"] == ["video.mp4", "video.gif"]
    frames, rate = read_mp4(out / "video.mp4")
    assert frames.shape == (4, 32, 32, 3) and rate == 5
    views = np.stack([_rgb(out / f"target_{j:03d}" / "regression_rgb.png") for j in range(4)])
    assert np.abs(frames.astype(int) - views).mean() < 8  # H.264 at CRF 18 keeps the views
    xyz, rgb, _ = read_ply(out / "points.ply")
    assert xyz.shape[0] > 0 and rgb.shape == xyz.shape
    assert len(json.loads((out / "cameras.json").read_text())["frames"]) == 4


def test_written_cameras_render_the_same_views(checkpoint, scene, tmp_path):
    """cameras.json (input world frame) given back as --target-cameras reproduces the views."""
    images, cameras = scene
    sources = ["--images", str(images), "--cameras", str(cameras)]
    first, second = tmp_path / "first", tmp_path / "second"
    assert _render(checkpoint, *sources, "--out", str(first), "--frames", "3") == 0
    target = ["--target-cameras", str(first / "cameras.json")]
    assert _render(checkpoint, *sources, *target, "--out", str(second)) == 0
    for j in range(3):
        a = _rgb(first / f"target_{j:03d}" / "regression_rgb.png")
        b = _rgb(second / f"target_{j:03d}" / "regression_rgb.png")
        assert np.abs(a - b).max() <= 1  # 8-bit rounding


def test_single_view_matches_the_model(checkpoint, scene, tmp_path):
    """No turn from source 1 renders exactly what the model renders at source camera 1."""
    images, cameras = scene
    args = ["--images", str(images), "--cameras", str(cameras), "--out", str(tmp_path)]
    assert _render(checkpoint, *args, "--azimuth", "0", "--from-source", "1") == 0
    model = load_model(checkpoint)
    views = load_source_views([images], cameras, (32, 32))
    with torch.no_grad():
        encoded = model.encode(*views.batch("cpu"))
        direct = model.render(encoded, views.c2w[None, 1:2], views.fxfycxcy[None, 1:2], (32, 32))
    expected = (direct.rgb[0, 0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    assert np.abs(_rgb(tmp_path / "target_000" / "regression_rgb.png") - expected).max() <= 1


def test_pose_free_with_the_embedded_default_model(scene, tmp_path):
    images, _ = scene
    out = tmp_path / "out"
    assert main(["render", "--images", str(images), "--out", str(out), "--azimuth", "15"]) == 0
    summary = json.loads((out / "render.json").read_text())
    assert not summary["posed"] and summary["frame"].startswith("first source camera")
    assert _rgb(out / "target_000" / "regression_rgb.png").shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trajectory", "orbit", "--azimuth", "10"], "give one kind of target cameras"),
        (["--trajectory", "sideways"], "invalid choice: 'sideways'"),
        (["--size", "30", "30"], "must be multiples of the model's patch size 8"),
        (["--elevation", "95"], "elevation must be strictly between -90 and 90"),
        (["--from-source", "7", "--azimuth", "5"], "source index 7 does not exist"),
        (["--fps", "0"], "--fps must be positive"),
        (["--fps", "inf"], "--fps must be positive and finite, got inf"),
        (["--azimuth", "nan"], "--azimuth must be a finite number, got nan"),
        (["--size", "100000", "100000"], "--size 100000 100000 must be between 1 and 4096"),
        (["--device", "tpu"], "--device: unknown device 'tpu'"),
    ],
)
def test_bad_options_fail_in_one_line(checkpoint, scene, tmp_path, capsys, args, message):
    images, _ = scene
    try:
        code = _render(checkpoint, "--images", str(images), "--out", str(tmp_path / "o"), *args)
    except SystemExit as err:  # argparse's own errors
        code = err.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1]


def test_bad_sources_fail_in_one_line(checkpoint, scene, tmp_path, capsys):
    images, cameras = scene
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("text")
    out = ["--out", str(tmp_path / "o")]
    cases = [
        (["--images", str(not_an_image)], "cannot read image"),
        (["--images", str(tmp_path / "missing.png")], "source image not found"),
        (["--images", str(not_an_image), "--cameras", str(cameras)], "cannot read image"),
    ]
    for args, message in cases:
        assert _render(checkpoint, *args, *out) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gen-nvs render: error: ")
        assert message in lines[0]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert _render(checkpoint, "--images", str(images), "--out", str(tmp_path / "full")) == 2
    assert "not empty" in capsys.readouterr().err
