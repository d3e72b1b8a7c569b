"""`gen-nvs sample` end to end on a procedural scene with the tiny model, and its errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gen_nvs.cli import main
from gen_nvs.data.procedural import generate_scene
from gen_nvs.data.re10k import write_re10k_scene
from gen_nvs.geometry.rgbd import read_ply
from gen_nvs.inputs import TargetSpec, load_source_views, scene_focus, target_cameras
from gen_nvs.models.config import model_config
from gen_nvs.models.nvs import build_model, load_model, save_model
from gen_nvs.sampling import sample_views

SIZE = ["--size", "32", "32"]
FAST = ["--steps", "2", "--sampler", "ddim", "--samples", "2"]


def tiny_export(directory, diffusion: bool = True):
    config = model_config("tiny").override({"encoder": {"image_size": 28}})
    torch.manual_seed(0)
    model = build_model(config)
    if diffusion:
        model.add_diffusion()
    return save_model(model, directory)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(images [paths], metadata json, diffusion export, regression export)."""
    root = tmp_path_factory.mktemp("sample")
    views = generate_scene(2, 3, (32, 32))
    meta = write_re10k_scene(root / "data", "s", views.images, views.c2w, views.fxfycxcy)
    images = [str(root / "data" / "images" / "s" / f"{i:05d}.png") for i in range(2)]
    return (
        images,
        str(meta),
        str(tiny_export(root / "model")),
        str(tiny_export(root / "reg", False)),
    )


def sample(setup, out, *extra: str) -> int:
    images, meta, model, _ = setup
    argv = ["sample", "--images", *images, "--cameras", meta, "--checkpoint", model]
    return main([*argv, *SIZE, *FAST, "--out", str(out), *extra])


def read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def expected_masks(setup, spec: TargetSpec) -> np.ndarray:
    """The "auto" masks of `spec`'s targets as `sample_views` computes them, as the 8-bit
    values of mask.png: uint8 [t, h, w]."""
    images, meta, checkpoint, _ = setup
    model = load_model(checkpoint)
    sources = load_source_views(images, meta, (32, 32))
    with torch.no_grad():
        scene = model.encode(*sources.batch("cpu"))
    focus = scene_focus(model, scene, (32, 32), sources.fxfycxcy)
    spec = dataclasses.replace(spec, focus=focus)
    targets = target_cameras(spec, (32, 32), scene.source_c2w[0], sources.fxfycxcy)
    views = sample_views(
        model, scene, *targets.batch("cpu"), (32, 32), normalized=targets.normalized,
        source_fxfycxcy=sources.fxfycxcy[None], steps=1, scheduler="ddim",
    )  # fmt: skip
    return (views.mask[0] * 255).round().to(torch.uint8).numpy()


def test_writes_samples_depth_masks_point_clouds_and_cameras(setup, tmp_path):
    out = tmp_path / "out"
    assert sample(setup, out, "--trajectory", "orbit", "--frames", "2") == 0
    summary = json.loads((out / "sample.json").read_text())
    assert summary["posed"] and summary["num_targets"] == 2
    assert summary["point_clouds"] == ["sample_00.ply", "sample_01.ply"]
    assert summary["videos"] == ["sample_00.mp4", "sample_01.mp4"]
    from tests.test_render_command import read_mp4

    frames, rate = read_mp4(out / "sample_01.mp4")
    assert frames.shape == (2, 32, 32, 3) and rate == 8
    for j in range(2):
        folder = out / f"target_{j:03d}"
        names = ["regression_rgb", "regression_depth", "mask"]
        names += [f"sample_{k:02d}_{kind}" for k in range(2) for kind in ("rgb", "depth")]
        assert sorted(p.stem for p in folder.iterdir()) == sorted(names)
        assert read(folder / "sample_01_rgb.png").shape == (32, 32, 3)
        depth = read(folder / "sample_00_depth.png")
        assert depth.dtype == np.uint16 and depth.shape == (32, 32) and depth.max() > 0
        assert depth.max() / summary["depth_scale"] > 0  # depth = value / depth_scale
    # The masks are the sampler's; the orbit starts at source 0, which saw all it sees.
    masks = np.stack([read(out / f"target_{j:03d}" / "mask.png") for j in range(2)])
    assert np.array_equal(masks, expected_masks(setup, TargetSpec(trajectory="orbit", frames=2)))
    assert masks[0].mean() < 0.01 * 255
    xyz, rgb, _ = read_ply(out / "sample_01.ply")
    assert xyz.shape[0] > 0 and rgb.shape == xyz.shape and torch.isfinite(xyz).all()

    # cameras.json renders the same targets again (in the input world frame).
    again = tmp_path / "again"
    assert sample(setup, again, "--target-cameras", str(out / "cameras.json")) == 0
    for j in range(2):
        first = read(out / f"target_{j:03d}" / "regression_rgb.png").astype(int)
        second = read(again / f"target_{j:03d}" / "regression_rgb.png").astype(int)
        assert np.abs(first - second).max() <= 1


def test_pose_free_single_view_and_overwrite(setup, tmp_path):
    images, _, model, _ = setup
    out = tmp_path / "free"
    argv = ["sample", "--images", *images, "--checkpoint", model, *SIZE, *FAST, "--out", str(out)]
    assert main([*argv, "--azimuth", "15", "--elevation", "5", "--mask", "confidence"]) == 0
    assert not json.loads((out / "sample.json").read_text())["posed"]
    assert (out / "target_000" / "sample_01_rgb.png").is_file()
    assert main([*argv, "--azimuth", "15"]) == 2  # --out is not empty
    assert main([*argv, "--azimuth", "15", "--overwrite", "--mask", "off"]) == 0
    assert read(out / "target_000" / "mask.png").min() == 255  # everything generated


@pytest.fixture
def bad_inputs(setup, tmp_path):
    images, _, _, regression = setup
    Image.new("L", (16, 16)).save(tmp_path / "mask.png")
    (tmp_path / "notes.txt").write_text("hello")
    return {
        "sampler": (["--sampler", "plms"], "unknown sampler 'plms', expected one of ["),
        "steps": (["--steps", "0"], "steps must be >= 1, got 0"),
        "guidance": (
            ["--guidance", "-0.5"],
            "guidance scale must be a finite number >= 0, got -0.5",
        ),
        "guidance NaN": (
            ["--guidance", "nan"],
            "guidance scale must be a finite number >= 0, got nan",
        ),
        "guidance inf": (
            ["--guidance", "inf"],
            "guidance scale must be a finite number >= 0, got inf",
        ),
        "guidance rescale NaN": (
            ["--guidance", "2", "--guidance-rescale", "nan"],
            "guidance rescale must be in [0, 1], got nan",
        ),
        "guidance interval NaN": (
            ["--guidance", "2", "--guidance-interval", "0", "nan"],
            "guidance interval must be (low, high) with 0 <= low < high, got (0.0, nan)",
        ),
        "eta NaN": (["--eta", "nan"], "eta must be a finite number >= 0, got nan"),
        "conf threshold NaN": (
            ["--mask", "confidence", "--conf-threshold", "nan"],
            "confidence threshold must be a finite number > 1 (the point head's confidence",
        ),
        "conf threshold 1": (
            ["--mask", "confidence", "--conf-threshold", "1"],
            "confidence threshold must be a finite number > 1",
        ),
        "conf threshold unused": (
            ["--mask", "off", "--conf-threshold", "3"],
            "--conf-threshold sets the confidence mask's threshold, but --mask off has no",
        ),
        "seed too large": (
            ["--seed", "99999999999999999999999"],
            "--seed must be in [0, 2**64 - 2]: the 2 samples use seeds --seed to --seed + 1, "
            "and a torch generator's seeds are in [0, 2**64 - 1]; got 99999999999999999999999",
        ),
        "seed + k too large": (
            ["--seed", str(2**64 - 1)],
            f"--seed must be in [0, 2**64 - 2]: the 2 samples use seeds --seed to --seed + 1, "
            f"and a torch generator's seeds are in [0, 2**64 - 1]; got {2**64 - 1}",
        ),
        "seed negative": (["--seed", "-1"], "--seed must be in [0, 2**64 - 2]"),
        "memory budget NaN": (
            ["--memory-budget", "nan"],
            "--memory-budget must be a positive number of GiB, got nan",
        ),
        "memory budget 0": (
            ["--memory-budget", "0"],
            "--memory-budget must be a positive number of GiB, got 0.0",
        ),
        "side by side without video": (
            ["--trajectory", "orbit", "--frames", "2", "--side-by-side", "--video", "none"],
            "--side-by-side writes a video; it needs --video mp4 or gif, got --video none",
        ),
        "side by side of one view": (
            ["--azimuth", "10", "--side-by-side"],
            "--side-by-side writes a video of the target views; it needs more than one, got 1",
        ),
        "mask size": (
            ["--mask-file", str(tmp_path / "mask.png")],
            "mask.png is 16x16, expected 32x32",
        ),
        "memory": (
            ["--samples", "50", "--memory-budget", "0.001"],
            "0 sample(s) fit; draw fewer target views",
        ),
        "batch memory": (
            ["--samples", "50", "--max-batch", "10", "--memory-budget", "0.01"],
            "10 sample(s) of 8 target view(s) per batch need about",
        ),
        "regression model": (
            ["--checkpoint", regression],
            "is a regression model (no diffusion decoder) and cannot sample",
        ),
        "non-image": (["--images", str(tmp_path / "notes.txt")], "cannot read image"),
        "missing image": (["--images", str(tmp_path / "gone.png")], "source image not found"),
        "cameras": (
            ["--images", images[0], str(tmp_path / "mask.png")],
            "no camera for source image(s) ['mask.png']",
        ),
        "targets": (["--trajectory", "orbit", "--azimuth", "3"], "give one kind of target"),
        "mask tolerance": (
            ["--mask-tolerance", "inf"],
            "mask tolerance must be a finite number >= 0",
        ),
        "mask tolerance NaN": (
            ["--mask-tolerance", "nan"],
            "mask tolerance must be a finite number >= 0 (a large one, e.g. 1e9, keeps only",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "sampler",
        "steps",
        "guidance",
        "guidance NaN",
        "guidance inf",
        "guidance rescale NaN",
        "guidance interval NaN",
        "eta NaN",
        "conf threshold NaN",
        "conf threshold 1",
        "conf threshold unused",
        "seed too large",
        "seed + k too large",
        "seed negative",
        "memory budget NaN",
        "memory budget 0",
        "side by side without video",
        "side by side of one view",
        "mask size",
        "memory",
        "batch memory",
        "regression model",
        "non-image",
        "missing image",
        "cameras",
        "targets",
        "mask tolerance",
        "mask tolerance NaN",
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(setup, bad_inputs, tmp_path, capsys, case):
    extra, message = bad_inputs[case]
    assert sample(setup, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gen-nvs sample: error: ") and message in err[-1]
    assert not (tmp_path / "out").exists()


def test_side_by_side_of_explicit_cameras_needs_two(setup, tmp_path, capsys):
    # How many cameras a file holds is known once it is read: the check runs after the
    # encoding, and the output folder it made goes again.
    out = tmp_path / "out"
    assert sample(setup, out, "--trajectory", "orbit", "--frames", "2") == 0
    cameras = json.loads((out / "cameras.json").read_text())
    cameras["frames"] = cameras["frames"][:1]
    (tmp_path / "one.json").write_text(json.dumps(cameras))
    again = tmp_path / "again"
    assert (
        sample(setup, again, "--target-cameras", str(tmp_path / "one.json"), "--side-by-side") == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "--side-by-side writes a video of the target views; it needs more than one, got 1"
    )
    assert not again.exists()


def test_side_by_side_video_of_regression_sample_and_depth(setup, tmp_path):
    from tests.test_render_command import read_mp4

    out = tmp_path / "out"
    args = ["--trajectory", "orbit", "--frames", "3", "--side-by-side", "--video", "mp4", "gif"]
    assert sample(setup, out, *args) == 0
    frames, _ = read_mp4(out / "side_by_side.mp4")
    assert frames.shape == (3, 32, 3 * 32, 3)  # regression | sample 0 | depth
    regression = read(out / "target_001" / "regression_rgb.png").astype(int)
    assert np.abs(frames[1, :, :32].astype(int) - regression).mean() < 8
    assert (out / "side_by_side.gif").is_file() and (out / "sample_01.gif").is_file()


def test_no_patch_shift_reaches_the_sampler(setup, tmp_path, patch_shifts):
    one = ["--azimuth", "20", "--samples", "1", "--steps", "1"]
    assert sample(setup, tmp_path / "shifted", *one) == 0
    assert sample(setup, tmp_path / "fixed", *one, "--no-patch-shift") == 0
    assert patch_shifts == [True, False]
