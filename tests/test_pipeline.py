"""NVSPipeline: load, encode (posed and pose-free), render, sample, save and reload."""

from __future__ import annotations

import pytest
import torch

from gen_nvs.data.procedural import generate_scene
from gen_nvs.data.re10k import write_re10k_scene
from gen_nvs.pipeline import NVSPipeline, SamplingConfig


@pytest.fixture(scope="module")
def pipe():
    return NVSPipeline.from_pretrained()  # the embedded default model


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    views = generate_scene(1_000_001, 3, (64, 64))
    cameras = write_re10k_scene(root, "s", views.images, views.c2w, views.fxfycxcy)
    return sorted((root / "images" / "s").glob("*.png")), cameras, views


def test_render_equals_the_model_and_knows_its_geometry(pipe, scene_files):
    images, cameras, _ = scene_files
    scene = pipe.encode(images[:2], cameras)
    assert scene.posed and scene.image_hw == (64, 64) and scene.focus > 0
    assert scene.source_c2w.shape == (2, 4, 4) and scene.source_fxfycxcy.shape == (2, 4)
    # A target at source 1's own camera, given in the world frame through a view.
    same = pipe.view(scene, azimuth=0, source=1)
    out = pipe.render(scene, same)
    with torch.no_grad():
        direct = pipe.model.render(
            scene.encoded, same.c2w[None], same.fxfycxcy[None], (64, 64), normalized=True
        )
    assert torch.equal(out.rgb, direct.rgb[0])
    assert out.depth.shape == (1, 64, 64) and (out.depth > 0).all()
    orbit = pipe.render(scene, pipe.trajectory(scene, "orbit", frames=3))
    assert orbit.rgb.shape == (3, 3, 64, 64)


def test_pose_free_scene_uses_the_camera_heads_intrinsics(pipe, scene_files):
    images, _, _ = scene_files
    scene = pipe.encode(images[:2])
    assert not scene.posed and scene.source_c2w is not None
    _, estimated = pipe.model.estimate_cameras(scene.views.images[None])
    assert torch.allclose(scene.source_fxfycxcy, estimated[0])
    target = pipe.view(scene, azimuth=10)
    assert torch.allclose(target.fxfycxcy[0], estimated[0, 0])  # not a default 60 degrees


def test_sample_with_one_config_and_its_defaults(pipe, scene_files):
    images, cameras, _ = scene_files
    scene = pipe.encode(images[:2], cameras)
    config = SamplingConfig(samples=2, steps=2, seed=5)
    out = pipe.sample(scene, pipe.view(scene, azimuth=20), config)
    assert out.rgb.shape == (2, 1, 1, 3, 64, 64) and torch.isfinite(out.rgb).all()
    again = pipe.sample(scene, pipe.view(scene, azimuth=20), config)
    assert torch.equal(out.rgb, again.rgb)  # seeded
    assert SamplingConfig().sampler == "dpmpp-2m" and SamplingConfig().guidance == 1.0
    with pytest.raises(ValueError, match="steps must be >= 1"):
        SamplingConfig(steps=0)


def test_save_pretrained_reloads_the_same_model(pipe, tmp_path):
    out = pipe.save_pretrained(tmp_path / "export")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    again = NVSPipeline.from_pretrained(out)
    for (name, a), (_, b) in zip(
        pipe.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_default_by_name_is_the_embedded_model(pipe):
    """`from_pretrained("default")` (as the recipe's `--from default`) is the embedded model."""
    named = NVSPipeline.from_pretrained("default")
    assert named.model.config == pipe.model.config
    for key, value in pipe.model.state_dict().items():
        assert torch.equal(named.model.state_dict()[key], value), key
