"""The latent mode's VAE: `LatentCodec`, `latent_intrinsics`, the shipped VAE and its trainer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import gen_nvs
from gen_nvs.cli import main as cli_main
from gen_nvs.data.procedural import generate_scene
from gen_nvs.eval.metrics import psnr
from gen_nvs.geometry import cameras as C
from gen_nvs.models.checkpoint import HF_EXPORT_FORM
from gen_nvs.models.vae import LatentCodec, tiny_vae_config
from gen_nvs.train import vae as train_vae
from tests.test_checkpoint import populate_hf_cache

SHIPPED_VAE = Path(gen_nvs.__file__).parent / "assets" / "vae"
# The shipped VAE's mean PSNR on the probe views below (the first held-out scenes of
# data/proc64-test) is 21.8 dB; its metrics.json holds 22.3 dB over all 600 views.
SHIPPED_VAE_MIN_PSNR = 20.5


def make_codec(latent_channels: int = 4, downsample: int = 4, **config) -> LatentCodec:
    torch.manual_seed(0)
    return LatentCodec({**tiny_vae_config(latent_channels, downsample, width=8), **config})


def random_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("channels", "factor"), [(4, 4), (16, 8)])
def test_encode_decode_shapes_and_range(channels, factor):
    codec = make_codec(channels, factor)
    assert (codec.channels, codec.downsample) == (channels, factor)
    latents = codec.encode(random_images(2, 32, 48))
    assert latents.shape == (2, channels, 32 // factor, 48 // factor)
    images = codec.decode(3 * torch.randn_like(latents))  # far outside the VAE's range
    assert images.shape == (2, 3, 32, 48)
    assert images.min() >= 0 and images.max() <= 1


def test_codec_is_frozen_by_default_but_passes_gradients_to_its_input():
    codec = make_codec()
    codec.train()  # as a parent model's .train() would
    assert not codec.training and not codec.vae.training
    assert not any(p.requires_grad for p in codec.parameters())
    images = random_images(1, 16, 16).requires_grad_()
    codec.encode(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0

    trainable = LatentCodec(tiny_vae_config(width=8), trainable=True)
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())


def test_encode_applies_shift_then_scale_to_the_posterior_mean():
    codec = make_codec(scaling_factor=0.5, shift_factor=0.3)
    images = random_images(2, 16, 16)
    mean = codec.vae.encode(images * 2 - 1).latent_dist.mean
    latents = codec.encode(images)
    torch.testing.assert_close(latents, (mean - 0.3) * 0.5)

    decoded = (codec.vae.decode(latents / 0.5 + 0.3).sample + 1) / 2
    torch.testing.assert_close(codec.decode(latents), decoded.clamp(0, 1))

    sampled = codec.encode(images, generator=torch.Generator().manual_seed(1))
    again = codec.encode(images, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampled, again) and not torch.equal(sampled, latents)


def test_save_pretrained_round_trip_gives_identical_outputs(tmp_path):
    codec = make_codec(scaling_factor=2.0, shift_factor=-0.1)
    codec.save_pretrained(tmp_path / "vae")
    loaded = LatentCodec(tmp_path / "vae")
    assert loaded.config == codec.config
    images = random_images(2, 16, 16)
    latents = codec.encode(images)
    assert torch.equal(loaded.encode(images), latents)
    assert torch.equal(loaded.decode(latents), codec.decode(latents))
    assert LatentCodec(codec.config).config == codec.config  # the config rebuilds the model


def test_clear_errors(tmp_path):
    codec = make_codec()
    with pytest.raises(ValueError, match=r"30x32 .* not divisible .* factor 4"):
        codec.encode(random_images(1, 30, 32))
    with pytest.raises(ValueError, match=r"latents must be \[b, 4, h/f, w/f\]"):
        codec.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"power of 2"):
        tiny_vae_config(downsample=3)

    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=rf"not found: {missing}.*config\.json"):
        LatentCodec(missing)
    pipeline = tmp_path / "pipeline"
    codec.save_pretrained(pipeline / "vae")
    with pytest.raises(ValueError, match=r"lacks config\.json, .*pass .*pipeline/vae"):
        LatentCodec(pipeline)


@pytest.mark.parametrize(
    "given", ["hf://", "hf://justname", "hf://org//repo", "hf://org/repo@", "hf://org/repo/vae@"]
)
def test_malformed_hub_vaes_are_named_as_given_with_the_form(given):
    expected = f"{given!r} is not a Hugging Face path: expected {HF_EXPORT_FORM}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        LatentCodec(given)


def test_hub_vae_in_a_subfolder_loads_and_a_url_gets_its_hub_spelling(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    codec = make_codec()
    codec.save_pretrained(tmp_path / "vae")
    files = {f"vae/{f.name}": f.read_bytes() for f in (tmp_path / "vae").iterdir()}
    populate_hf_cache(tmp_path / "hub", "org/pipeline", files)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    images = random_images(1, 16, 16)
    loaded = LatentCodec("hf://org/pipeline/vae/")
    assert torch.equal(loaded.encode(images), codec.encode(images))
    with pytest.raises(ValueError, match=re.escape("(here: hf://org/pipeline/vae)")):
        LatentCodec("https://huggingface.co/org/pipeline/tree/main/vae")


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_latent_rays_go_through_the_centres_of_pixel_blocks(factor):
    generator = torch.Generator().manual_seed(factor)
    q = torch.randn(4, generator=generator, dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = C.quaternion_to_matrix(q)
    c2w[:3, 3] = torch.randn(3, generator=generator, dtype=torch.float64)
    K = torch.tensor([70.0, 60.0, 30.0, 21.0], dtype=torch.float64)  # pixels of a 48x64 image
    h, w = 48 // factor, 64 // factor
    rays = C.plucker_rays(c2w, C.latent_intrinsics(K, factor), h, w)  # (6, h, w)

    # The pixel-resolution ray through the continuous point (f u + f/2, f v + f/2).
    v, u = torch.meshgrid(
        torch.arange(h, dtype=K.dtype), torch.arange(w, dtype=K.dtype), indexing="ij"
    )
    x = (factor * u + factor / 2 - K[2]) / K[0]
    y = (factor * v + factor / 2 - K[3]) / K[1]
    d_cam = torch.nn.functional.normalize(torch.stack([x, y, torch.ones_like(x)], -1), dim=-1)
    d = d_cam @ c2w[:3, :3].T  # (h, w, 3)
    m = torch.linalg.cross(c2w[:3, 3].expand_as(d), d, dim=-1)
    torch.testing.assert_close(rays, torch.cat([m, d], -1).permute(2, 0, 1))

    assert torch.equal(C.latent_intrinsics(K, 1), K)
    with pytest.raises(ValueError, match="factor must be >= 1"):
        C.latent_intrinsics(K, 0)


def test_shipped_vae_reconstructs_held_out_procedural_views():
    codec = LatentCodec(SHIPPED_VAE)
    assert (codec.channels, codec.downsample) == (4, 4)
    assert codec.vae.dtype == torch.float32  # stored as float16
    seeds = range(1_000_000, 1_000_004)
    images = torch.cat([generate_scene(seed, 2, (64, 64)).images for seed in seeds])
    with torch.no_grad():
        latents = codec.encode(images)
        value = psnr(codec.decode(latents), images).mean().item()
    assert value > SHIPPED_VAE_MIN_PSNR
    # The scaling and shift factors normalise the latents.
    assert latents.mean().abs() < 0.5 and 0.5 < latents.std() < 2
    metrics = json.loads((SHIPPED_VAE / "metrics.json").read_text())
    assert metrics["scaling_factor"] == pytest.approx(codec.scaling_factor)


def test_trainer_runs_and_writes_a_loadable_calibrated_vae(tmp_path):
    data, out = tmp_path / "data", tmp_path / "vae"
    scenes = ["make-scenes", "--out", str(data), "--scenes", "2", "--views", "2"]
    assert cli_main([*scenes, "--size", "32", "32"]) == 0
    argv = ["--data", str(data), "--test", str(data), "--out", str(out), "--steps", "2"]
    assert train_vae.main([*argv, "--batch-size", "2", "--width", "8", "--log-every", "1"]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["test_images"] == 4
    codec = LatentCodec(out)
    assert metrics["scaling_factor"] == pytest.approx(codec.scaling_factor)
    # The statistics came from these very 4 images: normalised latents are standardised.
    images = train_vae.load_images(train_vae.list_images(data))
    with torch.no_grad():
        latents = codec.encode(images)
        reconstruction = psnr(codec.decode(latents), images).mean().item()
    assert latents.mean().abs() < 1e-4 and latents.std().item() == pytest.approx(1, abs=1e-4)
    assert reconstruction == pytest.approx(metrics["psnr"], abs=1e-4)
