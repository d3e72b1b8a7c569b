"""The app's functions without a browser: `app.logic` (the engine and its session cache),
its pictures (`app.visuals`, `gen_nvs.outputs`), its regression renders
(`gen_nvs.rendering`) and the page handlers of `app.ui`, on the tiny model at 32x32."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import samplers
from app import visuals
from app.logic import (
    COMPLETION,
    MAX_VIEWS,
    CameraControls,
    Engine,
    SamplingControls,
    Session,
)
from gen_nvs.data.procedural import generate_scene
from gen_nvs.geometry.rgbd import read_ply
from gen_nvs.inputs import scene_focus
from gen_nvs.models.config import model_config
from gen_nvs.models.nvs import NVSModel, build_model
from gen_nvs.outputs import colorize_depth, to_pil
from gen_nvs.pipeline import NVSPipeline
from gen_nvs.rendering import render_targets

HW = (32, 32)
VIDEO = CameraControls(kind="Trajectory video", trajectory="orbit", frames=3, fps=5)
# diffusers' set_timesteps calls np.array on torch tensors, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _tiny(diffusion: bool) -> NVSModel:
    """The tiny preset at a small encoder resolution (it would resize inputs to 518)."""
    torch.manual_seed(0)
    config = model_config("tiny").override({"encoder": {"image_size": 56}})
    model = build_model(config)
    if diffusion:
        model.add_diffusion()
    return model.eval()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return Engine(NVSPipeline(_tiny(diffusion=True)), tmp_path_factory.mktemp("app"), image_hw=HW)


@pytest.fixture(scope="module")
def regression_engine(tmp_path_factory):
    return Engine(NVSPipeline(_tiny(diffusion=False)), tmp_path_factory.mktemp("app"), image_hw=HW)


@pytest.fixture
def session(engine):
    session = Session()
    example = engine.examples[0]
    engine.load(session, example.images, example.cameras)
    return session


def _counting_encode(engine, monkeypatch) -> list:
    calls = []
    encode = engine.model.encode

    def counted(*args, **kwargs):
        calls.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(engine.model, "encode", counted)
    return calls


# --------------------------------------------------------------------------------------
# Examples and the session cache
# --------------------------------------------------------------------------------------


def test_examples_are_posed_scenes_on_disk(engine):
    assert len(engine.examples) == 3
    for example in engine.examples:
        frames = json.loads(example.cameras.read_text())["frames"]
        assert [f["image_path"].split("/")[-1] for f in frames] == [p.name for p in example.images]
        assert all(Image.open(p).size == (HW[1], HW[0]) for p in example.images)
        assert example.thumbnail.is_file()
    loaded = engine.load(Session(), engine.examples[1].images, engine.examples[1].cameras)
    assert loaded.views.posed and loaded.scene.posed
    assert loaded.source_c2w.shape == (3, 4, 4)


def test_scene_encoded_once_per_input_set(engine, monkeypatch, tmp_path):
    encodes = _counting_encode(engine, monkeypatch)
    session, example = Session(), engine.examples[0]
    first = engine.load(session, example.images, example.cameras)
    assert engine.load(session, example.images, example.cameras) is first
    # The same bytes uploaded again (new temporary folder): still the cached scene.
    copies = [shutil.copy(p, tmp_path / p.name) for p in example.images]
    assert engine.load(session, copies, shutil.copy(example.cameras, tmp_path)) is first
    # Changing the target, the mode or the options re-renders from the cache.
    engine.run(session, CameraControls(azimuth_deg=-20))
    engine.run(session, VIDEO)
    engine.run(session, CameraControls(), "Sampling", SamplingControls(steps=1, num_samples=1))
    assert len(encodes) == 1
    # A different input set is encoded anew: pose-free, or other images.
    assert not engine.load(session, example.images, example.cameras, pose_free=True).scene.posed
    engine.load(session, example.images[:2], example.cameras)
    assert len(encodes) == 3


def test_loading_renders_the_sources_once(engine, monkeypatch):
    calls = []
    render = engine.model.render

    def counted(scene, c2w, *args, **kwargs):
        calls.append(c2w.shape[1])
        return render(scene, c2w, *args, **kwargs)

    monkeypatch.setattr(engine.model, "render", counted)
    example = engine.examples[1]
    loaded = engine.load(Session(), example.images, example.cameras)
    assert calls == [3]  # all three sources, source 0 included
    monkeypatch.undo()
    # The focus is the one scene_focus measures by rendering source 0 alone.
    with torch.no_grad():
        focus = scene_focus(engine.model, loaded.scene.encoded, HW, loaded.source_fxfycxcy)
    assert loaded.focus == pytest.approx(focus, rel=1e-5)


def test_pose_free_uses_the_camera_head(engine):
    example = engine.examples[2]
    loaded = engine.load(Session(), example.images, None)
    assert not loaded.scene.posed
    assert loaded.scene.encoded.source_c2w.shape == (1, 3, 4, 4)  # the camera head's estimate
    torch.testing.assert_close(loaded.source_c2w[0], torch.eye(4), atol=1e-5, rtol=0)
    assert "pose-free" in engine.describe(loaded)


# --------------------------------------------------------------------------------------
# Regression, video, sampling, cancel
# --------------------------------------------------------------------------------------


def test_regression_view_matches_the_model_render(engine, session):
    controls = CameraControls(azimuth_deg=25, elevation_deg=10, distance=1.2)
    out = engine.run(session, controls)
    loaded = session.loaded
    targets = engine.targets(loaded, controls)
    with torch.no_grad():
        c2w, k = targets.batch("cpu")
        direct = engine.model.render(loaded.scene.encoded, c2w, k, HW, normalized=True)
    assert [caption for _, caption in out.gallery] == ["regression"]
    expected = visuals.enlarge(to_pil(direct.rgb[0, 0]))
    assert np.array_equal(np.asarray(out.gallery[0][0]), np.asarray(expected))
    assert out.depth.size == out.unseen.size == expected.size
    assert out.video is None and out.status.startswith("Run 1: rendered 1 view")
    xyz, rgb, _ = read_ply(out.cloud_ply)
    assert xyz.shape[0] > 0 and torch.isfinite(xyz).all() and rgb.shape == xyz.shape
    viewer_xyz, viewer_rgb, _ = read_ply(out.cloud_view)
    # The viewer adds the cameras' frusta: 3 sources (blue) and the target (orange), 8
    # edges of 24 points each.
    assert viewer_xyz.shape[0] == xyz.shape[0] + 4 * 8 * 24
    colors = [tuple(c) for c in viewer_rgb[xyz.shape[0] :].tolist()]
    assert colors.count((245, 140, 20)) == 8 * 24 and colors.count((40, 90, 230)) == 3 * 8 * 24


def test_turning_by_nothing_gives_the_source_camera(engine, session):
    loaded = session.loaded
    for source in range(3):
        controls = CameraControls(from_source=source, azimuth_deg=0, elevation_deg=0)
        targets = engine.targets(loaded, controls)
        torch.testing.assert_close(targets.c2w[0], loaded.source_c2w[source], atol=1e-4, rtol=0)
        torch.testing.assert_close(targets.fxfycxcy[0], loaded.source_fxfycxcy[source])


def test_video_is_an_mp4_of_the_trajectory_and_a_gif_beside_it(engine, session):
    from tests.test_render_command import read_mp4

    out = engine.run(session, VIDEO)
    frames, rate = read_mp4(out.video)
    assert frames.shape[0] == VIDEO.frames and rate == 5
    with Image.open(out.video.with_suffix(".gif")) as gif:
        assert gif.n_frames == VIDEO.frames
        assert gif.info["duration"] == 200  # 5 frames per second
    assert out.gallery is None and out.depth is None  # a video run makes no single view
    assert "rendered 3 views" in out.status


def test_export_holds_everything_the_run_made(engine, session):
    import zipfile

    video = engine.run(session, VIDEO)
    names = set(zipfile.ZipFile(video.export).namelist())
    for j in range(VIDEO.frames):
        for part in ("regression_rgb.png", "depth.png", "depth_color.png", "unseen.png"):
            assert f"target_{j:03d}/{part}" in names, part
    suffixes = {name.rsplit(".", 1)[-1] for name in names if "/" not in name}
    assert {"cameras.json", "points.ply", "README.txt"} <= names
    assert {"mp4", "gif"} <= suffixes
    sampled = engine.run(
        session,
        CameraControls(azimuth_deg=20),
        "Sampling",
        SamplingControls(steps=2, num_samples=2),
    )
    names = set(zipfile.ZipFile(sampled.export).namelist())
    assert {"target_000/sample_00_rgb.png", "target_000/sample_01_rgb.png"} <= names
    # The cameras reproduce the view through the CLI's --target-cameras reader.
    from gen_nvs.inputs import TargetSpec, target_cameras

    folder = engine.workdir / "unzipped"
    zipfile.ZipFile(sampled.export).extractall(folder)
    targets = target_cameras(TargetSpec(cameras=folder / "cameras.json"), HW)
    assert targets.c2w.shape == (1, 4, 4) and torch.isfinite(targets.c2w).all()


def test_model_note_names_the_model_and_its_resolution(engine, regression_engine):
    note = engine.model_note()
    assert "the embedded default model" in note and "regression and sampling" in note
    assert f"{HW[1]}x{HW[0]}" in note
    assert "regression only" in regression_engine.model_note()


def test_presets_set_known_controls():
    from app.logic import MODES, PRESETS, TARGET_KINDS
    from gen_nvs.inputs import TRAJECTORY_NAMES

    for values in PRESETS.values():
        assert values["kind"] in TARGET_KINDS and values["mode"] in MODES
        assert values.get("trajectory", "orbit") in TRAJECTORY_NAMES
        assert values.get("completion", next(iter(COMPLETION))) in COMPLETION


def test_render_targets_chunks_agree_with_one_call(engine, session):
    loaded = session.loaded
    targets = engine.targets(loaded, CameraControls(kind="Trajectory video", frames=6))
    chunked = render_targets(engine.model, loaded.scene.encoded, targets, HW, "cpu")
    with torch.no_grad():
        whole = engine.model.render(
            loaded.scene.encoded, *targets.batch("cpu"), HW, normalized=True
        )
    torch.testing.assert_close(chunked.rgb, whole.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.points, whole.points, atol=1e-5, rtol=0)


def test_sampling_gallery_lists_samples_then_regression(engine, session):
    sampling = SamplingControls(steps=2, num_samples=2, seed=7, scheduler="ddim")
    out = engine.run(session, CameraControls(azimuth_deg=40), "Sampling", sampling)
    captions = [caption for _, caption in out.gallery]
    assert captions == ["sample 1 (seed 7)", "sample 2 (seed 8)", "regression"]
    assert out.unseen is not None and out.depth is not None
    assert "drew 2 sample(s) x 2 steps" in out.status


def test_cancel_stops_sampling_after_the_current_step(engine, session):
    steps = []

    def progress(fraction, desc):
        if desc.startswith("sampling: step"):
            steps.append(desc)
            session.cancel_requested = True  # what the Cancel button does meanwhile

    session.cancel_requested = True  # a stale click before the run does not cancel it
    with pytest.raises(samplers.SamplingCancelled):
        engine.run(session, CameraControls(), "Sampling", SamplingControls(steps=5), progress)
    assert steps == ["sampling: step 1"]


# --------------------------------------------------------------------------------------
# Bad input: clear messages, the session keeps its scene
# --------------------------------------------------------------------------------------


def test_regression_checkpoint_cannot_sample(regression_engine):
    assert not regression_engine.can_sample
    with pytest.raises(ValueError, match="this checkpoint is a regression model"):
        regression_engine.check_mode("Sampling")
    session, example = Session(), regression_engine.examples[0]
    regression_engine.load(session, example.images, example.cameras)
    with pytest.raises(ValueError, match="cannot sample"):
        regression_engine.run(session, CameraControls(), "Sampling")
    assert regression_engine.run(session, CameraControls()).gallery is not None


def _scene_files(tmp_path, sizes):
    paths = []
    for i, (h, w) in enumerate(sizes):
        image = generate_scene(i, 1, (h, w)).images[0]
        path = tmp_path / f"view{i}.png"
        to_pil(image).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d, e: [d / "notes.png"], "cannot read image notes.png: "),
        (lambda d, e: _scene_files(d, [(32, 32)]) * (MAX_VIEWS + 1), "at most 10 source views"),
        (lambda d, e: _scene_files(d, [(32, 32), (32, 96)]), "differ too much in aspect"),
        (lambda d, e: _scene_files(d, [(16, 16), (96, 96)]), "differ too much in size"),
        (lambda d, e: [], "no source images"),
    ],
)
def test_bad_sources_are_reported_and_the_scene_kept(engine, session, tmp_path, make, message):
    (tmp_path / "notes.png").write_text("not a picture")
    before = session.loaded
    with pytest.raises(ValueError, match=message) as err:
        engine.load(session, make(tmp_path, engine), None)
    assert str(tmp_path) not in str(err.value)  # upload folders mean nothing to a visitor
    assert session.loaded is before


def test_cameras_that_do_not_match_the_images(engine, session, tmp_path):
    example = engine.examples[0]
    renamed = [shutil.copy(p, tmp_path / f"photo{i}.png") for i, p in enumerate(example.images)]
    with pytest.raises(ValueError, match=r"no camera for source image\(s\) \['photo0.png'"):
        engine.load(session, renamed, example.cameras)
    assert engine.load(session, renamed, None).views.names == [
        "photo0.png",
        "photo1.png",
        "photo2.png",
    ]


@pytest.mark.parametrize(
    ("image_hw", "message"),
    [
        ((100000, 100000), "--size 100000 100000 must be between 1 and 4096 pixels a side"),
        ((0, 32), "--size 0 32 must be between 1 and 4096 pixels a side"),
        ((-8, 32), "--size -8 32 must be between 1 and 4096 pixels a side"),
        ((30, 32), "--size 30 32 must be multiples of the model's patch size 8"),
    ],
)
def test_app_size_is_checked_before_the_examples_are_made(tmp_path, image_hw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Engine(NVSPipeline(_tiny(diffusion=False)), tmp_path, image_hw=image_hw)
    assert not (tmp_path / "examples").exists()


def test_too_many_frames_are_refused_before_rendering(engine, session):
    runs = session.runs
    with pytest.raises(ValueError, match="frames must be between 1 and 10000, got 10000000"):
        engine.run(session, replace(VIDEO, frames=10_000_000))
    assert session.runs == runs  # nothing rendered, the session's results kept


def test_bad_sampling_options(engine, session):
    for options, message in [
        (SamplingControls(steps=0), "steps must be >= 1"),
        (SamplingControls(scheduler="nope"), "unknown sampler 'nope'"),
        (SamplingControls(completion="whatever"), "unknown completion"),
    ]:
        with pytest.raises(ValueError, match=message):
            engine.run(session, CameraControls(), "Sampling", options)


# --------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------


def test_colorized_depth_is_red_near_blue_far_black_invalid():
    depth = torch.tensor([[1.0, 2.0, 4.0, 8.0] * 4, [1.0] * 8 + [float("nan")] * 8])
    picture = np.asarray(colorize_depth(depth)).astype(int)
    near, far, invalid = picture[0, 0], picture[0, 3], picture[1, 15]
    assert near[0] > near[2] and far[2] > far[0]
    assert (invalid == 0).all()


def test_overlay_tints_only_the_mask():
    image = torch.full((3, 4, 4), 0.5)
    mask = torch.zeros(4, 4)
    mask[:, :2] = 1.0
    out = np.asarray(visuals.overlay_mask(image, mask)).astype(int)
    assert (out[:, 2:] == 128).all()
    assert (out[:, :2, 0] > 128).all() and (out[:, :2, 1] < 128).all()
    with pytest.raises(ValueError, match="does not match"):
        visuals.overlay_mask(image, torch.zeros(3, 3))


def test_camera_plot_draws_sources_and_targets(engine, session):
    plot = np.asarray(engine.plot(session, VIDEO))
    colours = {tuple(c) for c in plot.reshape(-1, 3)}
    assert visuals.SOURCE_COLOUR in colours and visuals.TARGET_COLOUR in colours
    assert engine.plot(Session(), VIDEO) is None


# --------------------------------------------------------------------------------------
# Page handlers (app.ui) without a browser
# --------------------------------------------------------------------------------------


def _controls(**overrides):
    values = dict(k="Single view", s=0, az=30, el=0, d=1, tr="orbit", n=3, f=8) | overrides
    return list(values.values())


def test_page_handlers(engine, regression_engine, tmp_path):
    import gradio as gr

    from app.ui import Handlers, build

    assert isinstance(build(engine), gr.Blocks)
    handlers, session = Handlers(engine), Session()
    example = engine.examples[0]
    files, cams = [str(p) for p in example.images], str(example.cameras)
    gallery, info, plot, choices = handlers.inputs(
        session, files, cams, False, *_controls(), progress=lambda *a: None
    )
    assert len(gallery) == 3 and info.startswith("3 source views") and plot is not None
    assert [c[0] for c in choices["choices"]] == ["1: 00000.png", "2: 00001.png", "3: 00002.png"]

    sampling = ["dpmpp-2m", 2, 1.0, 2, 0, "generate freely"]
    args = [session, files, cams, False]
    view = handlers.run(*args, "Regression", *_controls(), *sampling, progress=lambda *a: None)
    # (gallery, depth, unseen, video, cloud, ply, export, plot, status): a single view
    # clears the video panel, a video clears the single view's panels (none stale).
    assert len(view) == 9 and view[3] is None and view[0] is not None
    assert view[6].endswith("-all.zip") and view[8].startswith("Run 1: rendered 1 view")
    video = handlers.run(*args, "Regression", *_controls(k="Trajectory video"), *sampling)
    assert video[:3] == (None, None, None) and video[3].endswith(".mp4")
    preset = handlers.preset("Orbit video (regression)")
    assert preset[0]["value"] == "Trajectory video" and preset[2]["value"] == "orbit"
    assert preset[4] == gr.skip()  # steps: left as they are

    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(gr.Error, match="cannot read image notes.png"):
        handlers.inputs(session, [str(tmp_path / "notes.png")], None, False, *_controls())
    assert session.loaded is not None  # the earlier scene stays

    with pytest.warns(UserWarning, match="Sampling is not available"):
        samples_group, note = Handlers(regression_engine).mode("Sampling")
    assert samples_group["visible"] is False and note["visible"] is True


def test_a_landscape_upload_stays_landscape(engine, tmp_path):
    """Photos keep their aspect ratio at about the engine's pixel count (the page once
    cropped them to its square without a word)."""
    wide = tmp_path / "wide.png"
    Image.new("RGB", (741, 500), (90, 120, 200)).save(wide)
    session = Session()
    loaded = engine.load(session, [wide, wide])
    h, w = loaded.image_hw
    assert w > h and w % engine.model.patch_size == 0 and h % engine.model.patch_size == 0
    assert abs(w / h - 741 / 500) < 0.2
    assert loaded.views.images.shape[-2:] == (h, w)
    out = engine.run(session, CameraControls(azimuth_deg=10))
    assert out.gallery[0][0].size[0] > out.gallery[0][0].size[1]  # landscape on the page
    assert f"at {w}x{h}" in engine.describe(loaded)
