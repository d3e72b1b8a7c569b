"""`python -m gen_nvs.train.grow`: a deeper encoder that starts as the trained one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gen_nvs.data.procedural import generate_scene
from gen_nvs.models.config import model_config
from gen_nvs.models.nvs import build_model, load_model, save_model
from gen_nvs.train.grow import grow_model, grown_order, main
from gen_nvs.train.loop import train
from tests.test_train import tiny_config

FRAME = "encoder.aggregator.frame_blocks"


def test_new_pairs_spread_between_the_trained_ones_and_the_last_stays_last():
    assert grown_order(4, 7) == [0, None, 1, None, 2, None, 3]
    assert grown_order(4, 8) == [0, None, None, 1, None, 2, None, 3]
    assert grown_order(2, 4) == [0, None, None, 1]
    assert grown_order(1, 3) == [None, None, 0]
    assert grown_order(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="new depth 2 < current 3"):
        grown_order(3, 2)


@pytest.fixture
def trained_export(tmp_path):
    """A tiny model (2 block pairs) whose every LayerScale is far from zero, as trained."""
    torch.manual_seed(0)
    model = build_model(model_config("tiny").override({"encoder": {"image_size": 28}})).eval()
    for name, param in model.named_parameters():
        if name.endswith("gamma"):
            param.data.uniform_(0.5, 1.0)
    save_model(model, tmp_path / "small", training={"stage": "regression", "step": 7})
    return tmp_path / "small"


def _render(model, scene):
    s, t = [0, 1], [2]
    encoded = model.encode(scene.images[None, s], scene.c2w[None, s], scene.fxfycxcy[None, s])
    out = model.render(encoded, scene.c2w[None, t], scene.fxfycxcy[None, t], (16, 16))
    pose_free = model.encode(scene.images[None, s])  # the camera head reads the aggregator
    return out.rgb, out.points, pose_free.source_c2w


@torch.no_grad()
def test_the_grown_model_renders_exactly_as_the_trained_one(trained_export, tmp_path):
    grown_dir = grow_model(trained_export, tmp_path / "grown", encoder_depth=4)
    small, grown = load_model(trained_export), load_model(grown_dir)
    assert grown.config.encoder.depth == 4
    assert grown.config.decoder == small.config.decoder
    scene = generate_scene(3, 3, (16, 16))
    for before, after in zip(_render(small, scene), _render(grown, scene), strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    old, new = small.state_dict(), grown.state_dict()
    # [0, new, new, 1]: the trained pairs at 0 and 3; the new ones start as the identity.
    torch.testing.assert_close(new[f"{FRAME}.3.attn.qkv.weight"], old[f"{FRAME}.1.attn.qkv.weight"])
    for key in ("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
        assert float(new[f"{FRAME}.1.{key}"].abs().max()) == 0.0
        assert float(new[f"encoder.aggregator.global_blocks.2.{key}"].abs().max()) == 0.0
    assert float(new[f"{FRAME}.1.attn.qkv.weight"].std()) > 0  # freshly initialised
    assert float(new[f"{FRAME}.1.ls1.gamma"].abs().min()) > 0
    stored = load_file(str(grown_dir / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in stored.values() if v.is_floating_point())
    info = json.loads((grown_dir / "config.json").read_text())
    assert info["grown_from"]["encoder_depth"] == 2 and info["training"]["step"] == 7


def test_training_from_the_grown_export_moves_the_new_blocks(trained_export, tmp_path):
    grow_model(trained_export, tmp_path / "grown", encoder_depth=3)
    config = tiny_config(
        tmp_path, "grown", f"model.init_from={tmp_path / 'grown'}", "train.steps=2", "loss.camera=0"
    )
    run = train(config)
    trained = load_file(str(run / "export" / "model.safetensors"))
    assert float(trained[f"{FRAME}.1.attn.proj.weight"].abs().max()) > 0  # it learns
    assert float(trained[f"{FRAME}.1.mlp.fc2.weight"].abs().max()) > 0
    assert trained[f"{FRAME}.2.ls1.gamma"].shape == (trained[f"{FRAME}.0.ls1.gamma"].shape)


def test_the_command_never_overwrites_and_never_shrinks(trained_export, tmp_path, capsys):
    out = tmp_path / "grown"
    assert main(["--from", str(trained_export), "--encoder-depth", "3", "--out", str(out)]) == 0
    assert "encoder depth 3" in capsys.readouterr().out
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit):
        main(["--from", str(trained_export), "--encoder-depth", "4", "--out", str(out)])
    assert "exists" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before  # nothing the user made is lost
    with pytest.raises(SystemExit):
        main(["--from", str(trained_export), "--encoder-depth", "1", "--out", str(tmp_path / "x")])
    assert "new depth 1 < current 2" in capsys.readouterr().err


DECODER = "decoder.renderer_core.renderer_blocks"
DIFFUSION = {
    "prediction_type": "sample",
    "noise_channels": 6,
    "cond_dropout": 0.1,
    "frequency_dim": 32,
}


def _trained_with_diffusion(variant: str) -> torch.nn.Module:
    """A tiny model (3 decoder blocks) with a diffusion decoder whose adaLN modulations,
    zero when converted, are as far from zero as a trained one's."""
    torch.manual_seed(0)
    options = {
        "encoder": {"image_size": 28},
        "decoder": {"variant": variant},
        "diffusion": DIFFUSION,
    }
    model = build_model(model_config("tiny").override(options)).eval()
    for name, param in model.named_parameters():
        if "modulation" in name or "noise_embedder" in name:
            param.data.normal_(0, 0.05)
    return model


def _render_and_denoise(model, scene):
    s, t = [0, 1], [2]
    encoded = model.encode(scene.images[None, s], scene.c2w[None, s], scene.fxfycxcy[None, s])
    out = model.render(encoded, scene.c2w[None, t], scene.fxfycxcy[None, t], (16, 16))
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(1, 1, 6, 16, 16, generator=generator)
    rays = torch.randn(1, 1, 6, 16, 16, generator=generator)
    denoised = model.diffusion.denoise(encoded.diffusion_cache, x_t, torch.tensor([500]), rays)
    return out.rgb, out.points, denoised


@pytest.mark.parametrize(
    "variant", ["causal", "cross_attention", "bidirectional_cross_attention", "full_attention"]
)
@torch.no_grad()
def test_a_grown_decoder_renders_and_denoises_exactly_as_the_trained_one(variant, tmp_path):
    small = _trained_with_diffusion(variant)
    save_model(small, tmp_path / "small", training={"stage": "diffusion", "step": 3})
    grown_dir = grow_model(tmp_path / "small", tmp_path / "grown", decoder_depth=5)
    grown = load_model(grown_dir)
    assert grown.config.decoder.depth == 5 and grown.config.encoder == small.config.encoder
    scene = generate_scene(4, 3, (16, 16))
    for before, after in zip(
        _render_and_denoise(small, scene), _render_and_denoise(grown, scene), strict=True
    ):
        torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    old, new = small.state_dict(), grown.state_dict()
    # [0, new, 1, new, 2]: trained blocks at 0, 2, 4; the diffusion decoder's the same.
    for prefix in (DECODER, f"diffusion.{DECODER}"):
        for key in [k for k in new if k.startswith(f"{prefix}.4.")]:
            torch.testing.assert_close(new[key], old[key.replace(f"{prefix}.4.", f"{prefix}.2.")])
        new_keys = [k for k in new if k.startswith(f"{prefix}.3.")]
        zeroed = [k for k in new_keys if k.endswith((".proj.weight", ".fc2.weight"))]
        assert zeroed and all(float(new[k].abs().max()) == 0.0 for k in zeroed)
        assert all(float(new[k].std()) > 0 for k in new_keys if k.endswith("q_proj.weight"))
    torch.testing.assert_close(
        new["diffusion.block_modulation.2.weight"], old["diffusion.block_modulation.1.weight"]
    )
    info = json.loads((grown_dir / "config.json").read_text())
    assert info["grown_from"]["decoder_depth"] == 3 and info["training"]["step"] == 3


def test_training_from_a_grown_decoder_moves_its_new_blocks(trained_export, tmp_path):
    grow_model(trained_export, tmp_path / "grown", decoder_depth=4)
    config = tiny_config(
        tmp_path,
        "grown",
        f"model.init_from={tmp_path / 'grown'}",
        "train.steps=2",
        "loss.camera=0",
    )
    trained = load_file(str(train(config) / "export" / "model.safetensors"))
    assert float(trained[f"{DECODER}.1.attn.proj.weight"].abs().max()) > 0  # it learns
    assert float(trained[f"{DECODER}.1.mlp.fc2.weight"].abs().max()) > 0


def test_growing_nothing_is_refused(trained_export, tmp_path, capsys):
    with pytest.raises(ValueError, match="nothing to grow"):
        grow_model(trained_export, tmp_path / "same")
    with pytest.raises(SystemExit):
        main(["--from", str(trained_export), "--decoder-depth", "1", "--out", str(tmp_path / "x")])
    assert "new depth 1 < current 3" in capsys.readouterr().err
    assert not (tmp_path / "same").exists() and not (tmp_path / "x").exists()
