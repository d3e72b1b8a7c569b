"""The latent mode (LVSM-VAE): the decoder renders an image VAE's latents on its latent
grid, the model decodes them. Shapes, rays, cached == uncached, the bundled VAE in
exports, the training objectives, sampling, untouched pixel-mode configs, the benchmark.

Tiny model, tiny randomly initialised VAE (4 channels, 4x), 32x48 images, CPU float32.
"""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from gen_nvs.bench.latent import TensorMemory, bench_latent
from gen_nvs.bench.render import add_render_arguments, run_render_bench
from gen_nvs.data import SceneBatch
from gen_nvs.geometry import cameras as cam
from gen_nvs.models.config import LatentConfig, ModelConfig, model_config
from gen_nvs.models.decoder import HighwayDecoder
from gen_nvs.models.nvs import DEFAULT_MODEL_DIR, build_model, load_model, save_model
from gen_nvs.models.vae import LatentCodec, tiny_vae_config
from gen_nvs.sampling import _grid_mask, sample_views
from gen_nvs.train import objectives
from gen_nvs.train.loop import build_model as build_training_model
from gen_nvs.train.loop import build_objective, train
from tests.test_models import small_scene
from tests.test_train import tiny_config

HW = (32, 48)
VAE = tiny_vae_config(latent_channels=4, downsample=4, width=8)


def latent_model(diffusion: bool = False, seed: int = 0):
    """Tiny causal model with a point head in the latent space of a 4-channel 4x VAE,
    decoder patch 2 on the latent grid (8 image pixels per token side)."""
    torch.manual_seed(seed)
    config = model_config("tiny").override({"decoder": {"patch_size": 2}})
    model = build_model(config.with_latent(LatentConfig(vae=VAE, source="tiny")))
    if diffusion:
        model.add_diffusion(noise_channels=4 + 3)
        # As if trained: a fresh decoder's x0 is the regression render whatever the noise.
        torch.nn.init.normal_(model.diffusion.noise_embedder.weight, std=0.1)
    return model.eval()


def scene_views(model, num_views: int = 4):
    images, c2w, k = small_scene(num_views, HW)
    return images, c2w, k


def training_views(images, c2w, k, *, depth: bool) -> objectives.Views:
    """A training step's views of the 4-view scene (2 sources), with random depth if `depth`."""
    extra = {}
    if depth:
        extra = dict(depth=torch.rand(1, 4, *HW) + 1, depth_valid=torch.ones(1, 4, *HW).bool())
    batch = SceneBatch(
        images, c2w, k, num_sources=2, scenes=["s"], frame_indices=torch.arange(4)[None],
        **extra,
    )  # fmt: skip
    return objectives.select_views(batch, 2, torch.Generator().manual_seed(0))


def test_latent_render_keeps_the_pixel_shapes_and_holds_the_latents():
    model = latent_model()
    assert (model.downsample, model.patch_size, model.codec.channels) == (4, 8, 4)
    images, c2w, k = scene_views(model)
    with torch.no_grad():
        scene = model.encode(images[:, :2], c2w[:, :2], k[:, :2])
        out = model.render(scene, c2w[:, 2:], k[:, 2:], HW)
    assert out.rgb.shape == (1, 2, 3, *HW) and 0 <= out.rgb.min() and out.rgb.max() <= 1
    assert out.latents.shape == (1, 2, 4, 8, 12)
    assert out.points.shape == (1, 2, *HW, 3) and out.conf.shape == (1, 2, *HW)
    # The point head predicts on the latent grid: each 4x4 block holds one value.
    assert torch.equal(out.points[:, :, ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3),
                       out.points)  # fmt: skip
    torch.testing.assert_close(model.codec.decode(out.latents[0]), out.rgb[0])
    with torch.no_grad():
        raw = model(images, c2w, k, num_sources=2, decode=False)
    assert raw.rgb is None and raw.latents.shape == (1, 2, 4, 8, 12)
    assert raw.points.shape == (1, 2, 8, 12, 3)
    with pytest.raises(ValueError, match="not divisible by the model's patch size 8"):
        model.render(scene, c2w[:, 2:], k[:, 2:], (36, 48))


def test_latent_target_rays_are_the_pluecker_rays_of_the_latent_intrinsics():
    model = latent_model()
    images, c2w, k = scene_views(model)
    seen = []
    hook = model.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    with torch.no_grad():
        model(images, c2w, k, num_sources=2)
    hook.remove()
    reference_w2c, scale = cam.scene_normalization(c2w[0], 2)
    normalized = cam.apply_normalization(c2w[0], reference_w2c, scale)
    expected = cam.plucker_rays(
        normalized[2:], cam.latent_intrinsics(k[0, 2:], 4), HW[0] // 4, HW[1] // 4
    )
    torch.testing.assert_close(seen[0][0], expected)
    torch.testing.assert_close(model.target_rays(normalized[None, 2:], k[:, 2:], HW)[0], expected)
    # Geometrically: the latent ray at (u, v) is the image ray through its 4x4 block's
    # centre (4u + 2, 4v + 2): pixel (4u + 1, 4v + 1)'s centre moved by half a pixel.
    shifted = k[0, 2:] - torch.tensor([0.0, 0.0, 0.5, 0.5])
    block_centres = cam.plucker_rays(normalized[2:], shifted, *HW)[..., 1::4, 1::4]
    torch.testing.assert_close(expected, block_centres)


@pytest.mark.parametrize("variant", ["causal", "cross_attention", "full_attention"])
def test_cached_render_equals_the_uncached_forward(variant):
    torch.manual_seed(0)
    config = model_config("tiny", variant=variant).override({"decoder": {"patch_size": 2}})
    model = build_model(config.with_latent(LatentConfig(vae=VAE))).eval()
    images, c2w, k = scene_views(model, num_views=5)
    with torch.no_grad():
        expected = model(images, c2w, k, num_sources=2)
        scene = model.encode(images[:, :2], c2w[:, :2], k[:, :2])
        got = model.render(scene, c2w[:, 2:], k[:, 2:], HW, chunk_size=2, out_device="cpu")
    for name in ("rgb", "latents", "points", "conf"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=1e-4, rtol=0)


def test_export_bundles_the_vae_and_loads_to_identical_outputs(tmp_path):
    model = latent_model(diffusion=True)
    save_model(model, tmp_path / "export")
    weights = load_file(str(tmp_path / "export" / "model.safetensors"))
    codec_keys = {k.removeprefix("codec.") for k in weights if k.startswith("codec.")}
    assert codec_keys == set(model.codec.state_dict())
    tree = json.loads((tmp_path / "export" / "config.json").read_text())["model"]
    assert tree["latent"] == {"vae": VAE, "source": "tiny"}
    assert tree["decoder"]["out_channels"] == 4 and tree["decoder"]["out_activation"] == "none"
    loaded = load_model(tmp_path / "export")
    assert loaded.config == model.config
    images, c2w, k = scene_views(model)
    with torch.no_grad():
        outputs = []
        for m in (model, loaded):
            scene = m.encode(images[:, :2], c2w[:, :2], k[:, :2])
            outputs.append(m.render(scene, c2w[:, 2:], k[:, 2:], HW))
    for name in ("rgb", "latents", "points", "conf"):
        assert torch.equal(getattr(outputs[0], name), getattr(outputs[1], name)), name


def test_training_builder_takes_the_vae_from_a_folder_and_the_export_needs_it_no_more(tmp_path):
    torch.manual_seed(1)
    LatentCodec(VAE).save_pretrained(tmp_path / "vae")
    folder = str(tmp_path / "vae")
    config = tiny_config(
        tmp_path, "latent", f"model.latent.vae={folder}", "model.decoder.patch_size=2"
    )
    model = build_training_model(config)
    assert model.config.latent.source == folder and model.patch_size == 8
    reference = LatentCodec(folder)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.codec.state_dict()[key], value), key
    save_model(model, tmp_path / "export")
    shutil.rmtree(tmp_path / "vae")
    loaded = load_model(tmp_path / "export")
    images = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded.codec.encode(images), reference.encode(images))

    for bad in ("model.latent={path: x}", "model.latent=[1]"):
        with pytest.raises(ValueError, match=r"model.latent must be \{vae: PATH\}"):
            build_training_model(tiny_config(tmp_path, "bad", bad))
    pixel = save_model(build_model(model_config("tiny")), tmp_path / "pixel")
    with pytest.raises(ValueError, match="renders pixels; model.latent needs"):
        build_training_model(
            tiny_config(tmp_path, "x", f"model.latent.vae={folder}", f"model.init_from={pixel}")
        )


def test_regression_loss_is_l2_between_predicted_and_encoded_latents():
    model = latent_model()
    images, c2w, k = scene_views(model)
    views = training_views(images, c2w, k, depth=False)
    config = {
        "stage": "regression",
        "loss": {"l2": 1.0, "perceptual": 0.0, "points": 0.0, "camera": 0.0,
                 "point_alpha": 0.2, "point_space": "log", "decoder_l2": 0.0,
                 "log_depth": 0.0, "point_gradient": 0.0},
    }  # fmt: skip
    forward, step_loss, names = build_objective(config, model, torch.device("cpu"))
    assert names == ["l2"]
    with torch.no_grad():
        loss, terms = step_loss(forward, views, True, torch.Generator().manual_seed(0))
        predicted = model(images, c2w, k, num_sources=2, decode=False).latents
        encoded = model.codec.encode(images[0, 2:])[None]
    torch.testing.assert_close(loss, F.mse_loss(predicted, encoded))
    assert terms["l2"] is loss or torch.equal(terms["l2"], loss)

    # Points are compared on the latent grid: the pixel at each 4x4 block's centre.
    views = training_views(images, c2w, k, depth=True)
    full, _ = views.target_points()
    grid, valid = views.target_points(4)
    assert grid.shape == (1, 2, 8, 12, 3) and valid.all()
    assert torch.equal(grid, full[:, :, 2::4, 2::4])
    config["loss"]["points"] = 0.1
    forward, step_loss, names = build_objective(config, model, torch.device("cpu"))
    with torch.no_grad():
        loss, terms = step_loss(forward, views, True, torch.Generator().manual_seed(0))
    assert set(terms) == {"l2", "points"} and torch.isfinite(terms["points"])


def test_diffusion_targets_are_the_encoded_latents_and_points_on_the_latent_grid():
    model = latent_model(diffusion=True)
    images, c2w, k = scene_views(model)
    views = training_views(images, c2w, k, depth=True)
    latents = model.image_latents(views.target_images)
    alphas = torch.linspace(0.99, 0.01, 1000)
    noised = objectives.noise_targets(
        views, alphas, model.diffusion, torch.Generator().manual_seed(0), latents, 4
    )
    assert noised.x0.shape == (1, 2, 7, 8, 12)
    torch.testing.assert_close(noised.x0[:, :, :4], latents)
    points, _ = views.target_points(4)
    torch.testing.assert_close(model.diffusion.from_sample(noised.x0)[1], points)
    prediction = objectives.DiffusionForward(model)(
        views, noised.x_t, noised.timesteps, True, torch.Generator().manual_seed(0)
    )
    assert prediction.shape == noised.x0.shape


def test_a_fresh_diffusion_decoder_predicts_the_regression_latents_without_a_sigmoid():
    model = latent_model(diffusion=True)
    torch.nn.init.zeros_(model.diffusion.noise_embedder.weight)  # as converted
    images, c2w, k = scene_views(model)
    with torch.no_grad():
        scene = model.encode(images[:, :2], c2w[:, :2], k[:, :2])
        regression = model.render(scene, c2w[:, 2:], k[:, 2:], HW)
        rays = model.target_rays(scene.normalize(c2w[:, 2:]), k[:, 2:], HW)
        x_t = torch.randn(1, 2, 7, 8, 12)
        views = model.diffusion.denoise_views(
            scene.diffusion_cache, x_t, torch.tensor([5, 900]), rays
        )
        x0 = model.diffusion.denoise(scene.diffusion_cache, x_t, torch.tensor([5, 900]), rays)
    torch.testing.assert_close(views.latents, regression.latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(x0[:, :, :4], regression.latents, atol=1e-5, rtol=0)
    assert views.rgb is None


def test_sampling_returns_decoded_images_and_completes_on_the_latent_grid():
    model = latent_model(diffusion=True)
    images, c2w, k = scene_views(model)
    with torch.no_grad():
        scene = model.encode(images[:, :2], c2w[:, :2], k[:, :2])
        options = dict(num_samples=2, steps=3, seed=0)
        free = sample_views(model, scene, c2w[:, 2:], k[:, 2:], HW, mask_mode="off", **options)
        auto = sample_views(model, scene, c2w[:, 2:], k[:, 2:], HW, **options)
        # Nothing to generate: every latent is the regression render's, decoded alike.
        kept = sample_views(model, scene, c2w[:, 2:], k[:, 2:], HW, mask=torch.zeros(1, 2, *HW),
                            **options)  # fmt: skip
        # One generated pixel: its whole latent cell is generated, every other one kept.
        mask = torch.zeros(1, 2, *HW)
        mask[0, 0, 5, 6] = 1
        one = sample_views(model, scene, c2w[:, 2:], k[:, 2:], HW, mask=mask, **options)
    for views in (free, auto, kept, one):
        assert views.rgb.shape == (2, 1, 2, 3, *HW)
        assert views.rgb.min() >= 0 and views.rgb.max() <= 1
        assert views.points.shape == (2, 1, 2, *HW, 3) and views.depth.shape == (2, 1, 2, *HW)
    assert auto.mask is None or auto.mask.shape == (1, 2, *HW)
    regression = kept.regression.rgb.expand(2, -1, -1, -1, -1, -1)
    torch.testing.assert_close(kept.rgb, regression)
    torch.testing.assert_close(kept.points, kept.regression.points.expand(2, -1, -1, -1, -1, -1))
    # The VAE decoder's receptive field spreads the generated cell over its neighbours;
    # the other target view is untouched.
    torch.testing.assert_close(one.rgb[:, 0, 1], regression[:, 0, 1])
    assert not torch.allclose(one.rgb[:, 0, 0], regression[:, 0, 0])
    grid = _grid_mask(mask, 4)
    assert grid.shape == (1, 2, 8, 12) and grid.sum() == 1 and grid[0, 0, 1, 1] == 1


def test_patch_shift_canvas_is_the_renders_latents_and_is_not_decoded(monkeypatch):
    import gen_nvs.sampling

    model = latent_model(diffusion=True)
    images, c2w, k = scene_views(model)
    captured, decoded = {}, []
    original_shift, original_decode = gen_nvs.sampling.shifted_model_fn, model.codec.decode

    def spy_shift(make_fn, canvas, *args, **kwargs):
        captured["canvas"] = canvas
        return original_shift(make_fn, canvas, *args, **kwargs)

    def spy_decode(latents):
        decoded.append(tuple(latents.shape[-2:]))
        return original_decode(latents)

    monkeypatch.setattr(gen_nvs.sampling, "shifted_model_fn", spy_shift)
    monkeypatch.setattr(model.codec, "decode", spy_decode)
    with torch.no_grad():
        scene = model.encode(images[:, :2], c2w[:, :2], k[:, :2])
        sample_views(model, scene, c2w[:, 2:], k[:, 2:], HW, mask_mode="off", steps=1, seed=0)
        # Only the target views' latents were decoded, never the enlarged canvas's.
        assert decoded and set(decoded) == {model.grid_size(HW)}
        # The canvas: the regression render of the cameras enlarged by one patch (2 latent
        # cells = 8 pixels) on each side, its points back on the latent grid.
        pad = model.diffusion.decoder.patch_size * model.downsample
        big_k = k[:, 2:] + torch.tensor([0.0, 0, pad, pad])
        big_hw = (HW[0] + 2 * pad, HW[1] + 2 * pad)
        target_c2w = scene.scene_frame(c2w[:, 2:], False)
        render = model.render(scene, target_c2w, big_k, big_hw, normalized=True)
    expected = model.diffusion.to_sample(render.latents, render.points[:, :, ::4, ::4])
    torch.testing.assert_close(captured["canvas"], expected)


def test_pixel_configs_and_exports_are_unchanged(tmp_path):
    """Without `latent`: no new key in any config, and the shipped export (written before
    the latent mode existed) writes back byte for byte."""
    for preset in ("tiny", "embedded", "small", "lagernvs"):
        tree = model_config(preset).to_dict()
        assert "latent" not in tree
        assert not {"out_channels", "out_activation"} & set(tree["decoder"])
    decoder = HighwayDecoder(**model_config("tiny").decoder.kwargs())
    assert "out_channels" not in decoder.config
    original = (DEFAULT_MODEL_DIR / "config.json").read_text()
    model = load_model(DEFAULT_MODEL_DIR)
    assert model.codec is None and model.patch_size == model.decoder.patch_size
    info = {key: value for key, value in json.loads(original).items() if key != "model"}
    save_model(model, tmp_path / "export", **info)
    assert (tmp_path / "export" / "config.json").read_text() == original


def test_latent_config_checks_the_decoder_output():
    config = model_config("tiny")
    latent = LatentConfig(vae=VAE)
    with pytest.raises(ValueError, match="latent-mode model's decoder needs out_channels 4"):
        ModelConfig(encoder=config.encoder, decoder=config.decoder, latent=latent)
    with pytest.raises(ValueError, match="pixel-mode model's decoder needs out_channels 3"):
        config.with_latent(latent).override({"latent": None})
    with pytest.raises(ValueError, match="lacks latent_channels"):
        LatentConfig(vae={"block_out_channels": [8]})
    with pytest.raises(ValueError, match="out_channels must be 3 with out_activation 'sigmoid'"):
        HighwayDecoder(**{**config.decoder.kwargs(), "out_channels": 4})
    tree = json.loads(json.dumps(config.with_latent(latent).to_dict()))
    assert ModelConfig.from_dict(tree) == config.with_latent(latent)
    assert config.with_latent(latent).with_latent(None) == config


def test_latent_training_runs_end_to_end(tmp_path):
    """Two regression steps (probe and grid on decoded pixels), then a diffusion step with
    its sampled grid, from a VAE folder; the exports render and sample."""
    torch.manual_seed(1)
    LatentCodec(VAE).save_pretrained(tmp_path / "vae")
    latent = [f"model.latent.vae={tmp_path / 'vae'}", "model.decoder.patch_size=2"]
    logs = ["log.probe_every=2", "log.probe_scenes=2", "log.eval_every=2", "log.eval_scenes=1"]
    run = train(tiny_config(tmp_path, "reg", *latent, *logs, "train.steps=2", "checkpoint.every=2"))
    probe = json.loads((run / "probe.jsonl").read_text().splitlines()[-1])
    assert 0 < probe["probe/copy_psnr"] < 100
    assert (run / "samples" / "step_0000002.png").is_file()
    diffusion = train(
        tiny_config(
            tmp_path, "diff", "stage=diffusion", f"model.init_from={run / 'export'}",
            "train.steps=1", "checkpoint.every=1", "log.eval_every=1", "log.eval_scenes=1",
            "log.sample_steps=2", "diffusion.noise_channels=6",
        )
    )  # fmt: skip
    model = load_model(diffusion / "export")
    assert model.diffusion.noise_channels == 4 + 3 and model.codec is not None
    images, c2w, k = small_scene(3, (16, 16))
    with torch.no_grad():
        scene = model.encode(images[:, :2], c2w[:, :2], k[:, :2])
        views = sample_views(model, scene, c2w[:, 2:], k[:, 2:], (16, 16), steps=2)
    assert views.rgb.shape == (1, 1, 1, 3, 16, 16)


def test_tensor_memory_counts_new_live_storages_only():
    with torch.inference_mode():
        base = torch.zeros(1000)
        with TensorMemory() as memory:
            a = base + 1  # 4000 bytes
            view = a[:10].t()  # a view: nothing new
            base.add_(1)  # in place on an input: nothing new
            del a, view
            b = torch.ones(500)  # a is gone: 2000 live
        assert memory.peak == 4000 and memory.current == 2000
        assert b.numel() == 500


def test_latent_bench_prints_a_pixel_and_a_latent_row_per_source_count():
    report = bench_latent(
        source_counts=[1, 2], image_hw=(32, 32), num_targets=1, encoder_preset="tiny",
        decoder_preset="tiny", vae="tiny", latent_patch=2, device="cpu", dtype="float32",
        repeats=1, warmup=0,
    )  # fmt: skip
    assert json.loads(json.dumps(report)) == report
    settings = report["settings"]
    assert (settings["vae_channels"], settings["vae_downsample"]) == (16, 8)
    assert settings["latent_hw"] == [4, 4]
    rows = {(r["mode"], r["num_sources"]): r for r in report["results"]}
    assert set(rows) == {(m, s) for m in ("pixel", "latent") for s in (1, 2)}
    assert rows["pixel", 1]["target_tokens_per_view"] == 16  # 32 / 8 squared
    assert rows["latent", 1]["target_tokens_per_view"] == 4  # 32 / 8 / 2 squared
    for row in report["results"]:
        assert row["ms_per_view"] > 0 and row["peak_mib_per_view"] > 0
        if row["mode"] == "latent":  # the decoder, then the VAE decode of the view
            total = row["ms_decoder_per_view"] + row["ms_vae_decode_per_view"]
            assert row["ms_per_view"] == pytest.approx(total, abs=1e-2)
    # Both caches hold the same source keys/values (same transformer, same sources).
    assert rows["latent", 2]["cache_mib"] == rows["pixel", 2]["cache_mib"]
    lines = report["table"].splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 1 |") and lines[3].startswith("| 2 |")

    parser = argparse.ArgumentParser()
    add_render_arguments(parser)
    args = parser.parse_args(["--latent", "--fast", "--device", "cpu", "--sources", "2"])
    report = run_render_bench(args)
    assert report["benchmark"] == "render-latent" and report["settings"]["source_counts"] == [2]
    with pytest.raises(ValueError, match="one variant"):
        run_render_bench(
            parser.parse_args(["--latent", "--fast", "--variants", "causal", "full_attention"])
        )
    with pytest.raises(ValueError, match="source counts must be between 1 and 64"):
        bench_latent(
            source_counts=[65], image_hw=(32, 32), num_targets=1, encoder_preset="tiny",
            decoder_preset="tiny", vae="tiny", latent_patch=2, device="cpu", dtype="float32",
            repeats=1, warmup=0,
        )  # fmt: skip
