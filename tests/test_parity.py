"""Every path encodes as `NVSPipeline.encode` does: the training stages (regression,
geometry, diffusion), `gen-nvs render` and `gen-nvs sample`, the app and `gen-nvs eval`
give the encoder the same inputs, so their source tokens are equal to the pipeline's
(exactly), posed and pose-free; and they render the same views of the same targets.

The spy records the tokens of every `NVSModel.encode_sources` call, of any model (the
commands load their own copy of the export). One tiny seeded model, one procedural scene
on disk in the RealEstate10K layout (what the loaders of training and eval read, and the
commands and the app take as image files and cameras JSON), torch on one thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from app import visuals
from app.logic import CameraControls, Engine, Session
from gen_nvs.cli import main
from gen_nvs.data.procedural import generate_scene
from gen_nvs.data.re10k import RE10KReader, write_re10k_scene
from gen_nvs.data.scene import collate_scenes
from gen_nvs.eval.evaluate import evaluate_scene, scene_grid
from gen_nvs.geometry.cameras import pose_encoding_to_camera
from gen_nvs.inputs import TargetCameras
from gen_nvs.models.config import model_config
from gen_nvs.models.encoder import VGGTEncoder
from gen_nvs.models.nvs import NVSModel, build_model, save_model
from gen_nvs.outputs import to_pil
from gen_nvs.pipeline import NVSPipeline, SamplingConfig
from gen_nvs.train.objectives import (
    DiffusionForward,
    GeometryForward,
    RegressionForward,
    all_sources,
    select_views,
)

HW = (32, 32)
SIZE = ["--size", "32", "32", "--threads", "1"]
AZIMUTH = 20.0  # the single target view every path renders
POSED = [pytest.param(True, id="posed"), pytest.param(False, id="pose-free")]
# diffusers' set_timesteps calls np.array on torch tensors, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Equal means equal bits: every path runs on the same number of threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> NVSModel:
    """Tiny, seeded, with a camera head (pose-free) and a diffusion decoder."""
    torch.manual_seed(0)
    model = build_model(model_config("tiny").override({"encoder": {"image_size": 28}}))
    model.add_diffusion()
    return model.eval()


@pytest.fixture(scope="module")
def export(model, tmp_path_factory):
    return str(save_model(model, tmp_path_factory.mktemp("export")))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(dataset root, the 4 frames' image paths, the cameras JSON) of one scene."""
    root = tmp_path_factory.mktemp("data")
    views = generate_scene(5, 4, HW)
    cameras = write_re10k_scene(root, "s", views.images, views.c2w, views.fxfycxcy)
    return root, sorted((root / "images" / "s").glob("*.png")), cameras


@pytest.fixture
def encodes(monkeypatch) -> list:
    """The source tokens [b, s, p, c] of every `NVSModel.encode_sources` call."""
    calls = []
    original = NVSModel.encode_sources

    def spy(self, *args, **kwargs):
        tokens = original(self, *args, **kwargs)
        calls.append(tokens.detach().clone())
        return tokens

    monkeypatch.setattr(NVSModel, "encode_sources", spy)
    return calls


@pytest.fixture
def pipeline(model, files, encodes):
    """pipeline(posed) -> (the pipeline's scene of the two first frames, its tokens)."""
    pipe = NVSPipeline(model)
    _, images, cameras = files

    def encode(posed: bool):
        encodes.clear()
        scene = pipe.encode(images[:2], cameras if posed else None, size=HW)
        tokens = only(encodes)
        encodes.clear()
        return scene, tokens

    return pipe, encode


def only(calls: list) -> torch.Tensor:
    assert len(calls) == 1, f"{len(calls)} encodes"
    return calls[0]


def pixels(rgb: torch.Tensor) -> np.ndarray:
    """[3, h, w] in [0, 1] -> uint8 [h, w, 3], as the PNGs hold it."""
    return np.asarray(to_pil(rgb))


def read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_posed_and_pose_free_tokens_differ(pipeline):
    """The comparisons below can tell the two encodings apart."""
    _, encode = pipeline
    (_, posed), (_, free) = encode(True), encode(False)
    assert posed.shape == free.shape and not torch.equal(posed, free)


# --------------------------------------------------------------------------------------
# Training stages
# --------------------------------------------------------------------------------------


def _training_views(files, frames: list[int], num_sources: int):
    root, _, _ = files
    sample = RE10KReader(root, HW, None).load("s", frames, num_sources=num_sources)
    return collate_scenes([sample])


@pytest.mark.parametrize("posed", POSED)
def test_regression_stage(model, files, pipeline, encodes, posed):
    pipe, encode = pipeline
    scene, expected = encode(posed)
    views = select_views(_training_views(files, [0, 1, 2, 3], 2), 2, torch.Generator())
    with torch.no_grad():
        output = RegressionForward(model, camera_head=False)(views, posed)[0]
    assert torch.equal(only(encodes), expected)
    # The same targets rendered from the scene's cache: the same views.
    targets = TargetCameras(views.c2w[0, 2:], views.fxfycxcy[0, 2:], normalized=False)
    if not posed:  # a pose-free scene's frame is the first source camera's
        targets = TargetCameras(views.normalized[0, 2:], views.fxfycxcy[0, 2:], normalized=True)
    assert torch.equal(output.rgb[0], pipe.render(scene, targets).rgb)


def test_geometry_stage_reads_the_aggregator_tokens_of_pose_free_encoding(
    model, files, pipeline, monkeypatch
):
    """The geometry stage trains the camera head on the pose-free aggregator tokens the
    pipeline's pose-free encoding gives it; its last estimate is the scene's."""
    calls = []
    original = VGGTEncoder.aggregate

    def spy(self, images, tokens, *args, **kwargs):
        out = original(self, images, tokens, *args, **kwargs)
        calls.append((tokens, out.detach().clone()))
        return out

    monkeypatch.setattr(VGGTEncoder, "aggregate", spy)
    _, encode = pipeline
    scene, _ = encode(False)
    (camera_tokens, expected), *_ = calls
    calls.clear()
    views = all_sources(_training_views(files, [0, 1], 2))
    with torch.no_grad():
        poses, _ = GeometryForward(model, depth_head=False)(views)
    ((tokens, aggregated),) = calls
    assert camera_tokens is None and tokens is None
    assert torch.equal(aggregated, expected)
    _, fxfycxcy = pose_encoding_to_camera(poses[-1], HW)
    assert torch.equal(fxfycxcy, scene.encoded.source_fxfycxcy)


@pytest.mark.parametrize("posed", POSED)
def test_diffusion_stage(model, files, pipeline, encodes, posed):
    _, encode = pipeline
    _, expected = encode(posed)
    views = select_views(_training_views(files, [0, 1, 2, 3], 2), 2, torch.Generator())
    x_t = torch.randn(1, 2, model.diffusion.noise_channels, *HW)
    timesteps = torch.full((1, 2), 500)
    with torch.no_grad():
        DiffusionForward(model)(views, x_t, timesteps, posed, torch.Generator())
    assert torch.equal(only(encodes), expected)


# --------------------------------------------------------------------------------------
# Commands, app, eval
# --------------------------------------------------------------------------------------


def _sources(files, posed: bool) -> list[str]:
    _, images, cameras = files
    return ["--images", *map(str, images[:2]), *(["--cameras", str(cameras)] if posed else [])]


@pytest.mark.parametrize("posed", POSED)
def test_render_command(export, files, pipeline, encodes, tmp_path, posed):
    pipe, encode = pipeline
    scene, expected = encode(posed)
    out = tmp_path / "out"
    argv = ["render", "--checkpoint", export, *_sources(files, posed), *SIZE]
    assert main([*argv, "--azimuth", str(AZIMUTH), "--out", str(out)]) == 0
    assert torch.equal(only(encodes), expected)
    view = pipe.render(scene, pipe.view(scene, azimuth=AZIMUTH)).rgb[0]
    assert np.array_equal(read(out / "target_000" / "regression_rgb.png"), pixels(view))


@pytest.mark.parametrize("posed", POSED)
def test_sample_command(export, files, pipeline, encodes, tmp_path, posed):
    pipe, encode = pipeline
    scene, expected = encode(posed)
    out = tmp_path / "out"
    argv = ["sample", "--checkpoint", export, *_sources(files, posed), *SIZE]
    options = ["--sampler", "ddim", "--steps", "2", "--samples", "1", "--seed", "3"]
    assert main([*argv, *options, "--azimuth", str(AZIMUTH), "--out", str(out)]) == 0
    assert torch.equal(only(encodes), expected)
    target = pipe.view(scene, azimuth=AZIMUTH)
    view = pipe.render(scene, target).rgb[0]
    assert np.array_equal(read(out / "target_000" / "regression_rgb.png"), pixels(view))
    config = SamplingConfig(sampler="ddim", steps=2, samples=1, seed=3)
    sample = pipe.sample(scene, target, config).rgb[0, 0, 0]
    assert np.array_equal(read(out / "target_000" / "sample_00_rgb.png"), pixels(sample))


@pytest.mark.parametrize("posed", POSED)
def test_app(model, files, pipeline, encodes, tmp_path, posed):
    pipe, encode = pipeline
    scene, expected = encode(posed)
    _, images, cameras = files
    engine = Engine(pipe, tmp_path, image_hw=HW)
    session = Session()
    engine.load(session, images[:2], cameras, pose_free=not posed)
    assert torch.equal(only(encodes), expected)
    out = engine.run(session, CameraControls(azimuth_deg=AZIMUTH))
    view = pipe.render(scene, pipe.view(scene, azimuth=AZIMUTH)).rgb[0]
    (picture, caption), *_ = out.gallery
    assert caption == "regression"
    assert np.array_equal(np.asarray(picture), np.asarray(visuals.enlarge(to_pil(view))))


def test_eval(model, files, pipeline, encodes):
    pipe, encode = pipeline
    scene, expected = encode(True)
    root, _, cameras = files
    sample = RE10KReader(root, HW, None).load("s", [0, 1, 2, 3], num_sources=2)
    with torch.no_grad():
        _, grid = evaluate_scene(pipe, sample, 0)
    assert torch.equal(only(encodes), expected)
    # The targets as the cameras JSON gives them (frames 2 and 3).
    frames = pipe.cameras_file(scene, cameras)
    targets = TargetCameras(frames.c2w[2:], frames.fxfycxcy[2:], normalized=False)
    rendered = pipe.render(scene, targets).rgb.clamp(0, 1)
    # The grid's rows: sources | target | regression | unseen mask.
    sources, truth = sample.split()
    expected_grid = scene_grid(sources.images, truth.images, rendered, None, None)
    x = 3 * (HW[1] + 2)  # the regression column
    assert np.array_equal(grid[:, x : x + HW[1]], expected_grid[:, x : x + HW[1]])
