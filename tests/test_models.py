"""The full NVS model: official checkpoints, the fixtures end to end, exports, caching."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from einops import rearrange
from safetensors.torch import save_file

from gen_nvs.cli import main
from gen_nvs.fixtures import TOLERANCE, check_fixture, fixture_model, read_fixture
from gen_nvs.geometry import cameras as cam
from gen_nvs.models import nvs
from gen_nvs.models.config import MODEL_PRESETS, DepthHeadConfig, DiffusionConfig, model_config
from gen_nvs.models.convert import check_official_layout, load_official_weights
from gen_nvs.models.nvs import NVSModel, build_model, load_model, require_diffusion, save_model
from tests.conftest import FIXTURES, REFERENCE_DIR

MANIFESTS = {
    "full_attention": "lagernvs_full_attention.keys.json",
    "cross_attention": "lagernvs_cross_attention.keys.json",
    "bidirectional_cross_attention": "lagernvs_bidirectional_cross_attention.keys.json",
}


@pytest.mark.parametrize("variant", [*MANIFESTS, "causal"])
def test_full_size_layout_matches_official_manifests(variant):
    manifest = MANIFESTS.get(variant, MANIFESTS["full_attention"])  # causal: same layout
    check_official_layout(variant, REFERENCE_DIR / manifest)
    check_official_layout(variant, REFERENCE_DIR / "vggt_1b_aggregator_camera_head.keys.json")


def test_layout_mismatch_lists_keys():
    with pytest.raises(ValueError, match=r"missing \(\d+\): renderer\.renderer_core"):
        check_official_layout("cross_attention", REFERENCE_DIR / MANIFESTS["full_attention"])


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_check_fixture_reproduces_every_quantity(path):
    errors = check_fixture(path)
    assert set(errors) >= {"io.rendered_targets", "io.encoder_tokens", "io.camera_head_pose_enc"}
    assert max(errors.values()) < TOLERANCE, errors


def test_check_reference_command_fails_on_a_tampered_fixture(tmp_path, capsys):
    meta, tensors = read_fixture(FIXTURES[0])
    tensors["io.rendered_targets"] = tensors["io.rendered_targets"] + 1e-3
    bad = tmp_path / "tampered.safetensors"
    save_file(tensors, str(bad), metadata={"meta": json.dumps(meta)})
    assert main(["check-reference", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "io.rendered_targets" in out and "exceeds" in out
    assert main(["check-reference", str(tmp_path / "missing.safetensors")]) == 2


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("{}", "the 'meta' entry lacks variant, num_source_views, image_hw, posed, config; "),
        ("[1, 2]", "the 'meta' entry must be a JSON object with the keys variant, "),
        (None, "the 'config' of the 'meta' entry lacks vggt_depth; expected a JSON object "),
    ],
)
def test_fixture_meta_without_the_needed_keys_is_named(tmp_path, meta, message):
    good, tensors = read_fixture(FIXTURES[0])
    if meta is None:  # a valid meta whose config lost one key
        good["config"].pop("vggt_depth")
        meta = json.dumps(good)
    bad = tmp_path / "bad_meta.safetensors"
    save_file(tensors, str(bad), metadata={"meta": meta})
    with pytest.raises(ValueError, match=re.escape(f"{bad}: {message}")):
        read_fixture(bad)


def test_official_model_pt_files_load(tmp_path):
    model, _, t = fixture_model(FIXTURES[0])
    lagernvs = {k.removeprefix("model."): v for k, v in t.items() if k.startswith("model.")}
    torch.save({"model": lagernvs}, tmp_path / "lagernvs.pt")
    torch.save({k: v for k, v in t.items() if k.startswith("camera_head.")}, tmp_path / "vggt.pt")
    fresh = build_model(model.config).eval()
    untouched = load_official_weights(
        fresh, lagernvs=tmp_path / "lagernvs.pt", vggt=tmp_path / "vggt.pt"
    )
    assert untouched == []
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_wrong_variant_or_size_checkpoint_is_rejected():
    model, meta, t = fixture_model(FIXTURES[0])  # a bidirectional fixture
    lagernvs = {k.removeprefix("model."): v for k, v in t.items() if k.startswith("model.")}
    other = build_model(model.config.override({"decoder": {"variant": "full_attention"}}))
    with pytest.raises(ValueError, match="does not fit"):
        load_official_weights(other, lagernvs=lagernvs)
    wider = model_config("tiny", variant=meta["variant"], point_head=False)
    wider = wider.override({"decoder": {"width": 32}, "encoder": {"out_dim": 32}})
    with pytest.raises(ValueError, match="expected"):
        load_official_weights(build_model(wider), lagernvs=lagernvs)


def small_scene(num_views: int = 4, hw=(32, 48), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, num_views, 3, *hw, generator=g)
    eyes = torch.randn(num_views, 3, generator=g, dtype=torch.float64) * 0.3 + torch.tensor(
        [0, 0, -3.0], dtype=torch.float64
    )
    c2w = cam.look_at(eyes, torch.zeros_like(eyes)).float()[None]
    k = torch.tensor([40.0, 40.0, hw[1] / 2, hw[0] / 2]).repeat(1, num_views, 1)
    return images, c2w, k


@pytest.mark.parametrize(
    "variant", ["causal", "cross_attention", "full_attention", "bidirectional_cross_attention"]
)
def test_encode_render_equals_forward(variant):
    torch.manual_seed(0)
    model = build_model(model_config("tiny", variant=variant)).eval()
    images, c2w, k = small_scene()
    with torch.no_grad():
        expected = model(images, c2w, k, num_sources=2)
        scene = model.encode(images[:, :2], c2w[:, :2], k[:, :2])
        got = model.render(scene, c2w[:, 2:], k[:, 2:], (32, 48), chunk_size=1)
    assert torch.allclose(got.rgb, expected.rgb, atol=1e-5)
    assert torch.allclose(got.points, expected.points, atol=1e-5)
    assert got.conf.shape == (1, 2, 32, 48) and (got.conf > 1).all()


def test_pose_free_encoding_uses_pose_free_tokens_and_estimates_cameras():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    images, c2w, k = small_scene()
    with torch.no_grad():
        scene = model.encode(images[:, :3])
        posed = model(images, c2w, k, num_sources=3, posed=False)
        normalized = scene.normalize(c2w)  # identity normalisation for pose-free scenes
        assert torch.equal(normalized, c2w)
        ref, scale = cam.scene_normalization(c2w[0], 3)
        target = cam.apply_normalization(c2w[0, 3:], ref, scale)[None]
        got = model.render(scene, target, k[:, 3:], (32, 48))
    assert scene.source_c2w.shape == (1, 3, 4, 4)
    assert torch.allclose(scene.source_c2w[0, 0], torch.eye(4), atol=1e-5)
    assert torch.allclose(got.rgb, posed.rgb, atol=1e-5)


def test_export_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(model_config("tiny", variant="causal")).eval()
    save_model(model, tmp_path / "export", kind="regression")
    loaded = load_model(tmp_path / "export")
    images, c2w, k = small_scene()
    with torch.no_grad():
        assert torch.equal(model(images, c2w, k, 2).rgb, loaded(images, c2w, k, 2).rgb)


def test_export_with_wrong_weights_is_rejected(tmp_path):
    model = build_model(model_config("tiny", variant="causal"))
    save_model(model, tmp_path, kind="regression")
    other = build_model(model_config("tiny", variant="cross_attention"))
    save_model(other, tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tmp_path / "config.json").read_text())
    with pytest.raises(ValueError, match="weights vs config"):
        load_model(tmp_path / "other")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda im, c, k: (im, c[:, :3], k), "one camera per"),
        (
            lambda im, c, k: (
                im,
                c.index_put(
                    (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([3])),
                    torch.tensor(float("nan")),
                ),
                k,
            ),
            "non-finite",
        ),
        (lambda im, c, k: (im[:, :, :2], c, k), r"\[b, s, 3, h, w\]"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, message):
    model = build_model("tiny").eval()
    images, c2w, k = small_scene()
    images, c2w, k = change(images, c2w, k)
    with pytest.raises(ValueError, match=message):
        model.encode(images, c2w, k)


def test_model_config_checks_widths():
    with pytest.raises(ValueError, match="encoder out_dim 32 must equal the decoder width 64"):
        model_config("tiny").override({"encoder": {"out_dim": 32}})


def test_diffusion_model_export_round_trip_in_half_precision(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    assert not model.can_sample
    with pytest.raises(ValueError, match="regression model .* cannot sample"):
        require_diffusion(model, "tiny")
    model.add_diffusion(prediction_type="sample", cond_dropout=0.2)
    assert model.can_sample and model.config.diffusion.cond_dropout == 0.2
    model.noise_schedule = {"prediction_type": "sample", "beta_schedule": "scaled_linear"}
    save_model(model.half(), tmp_path / "export")
    loaded = load_model(tmp_path / "export")
    assert loaded.can_sample and loaded.config == model.config
    assert loaded.noise_schedule == model.noise_schedule
    assert next(loaded.parameters()).dtype == torch.float32
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.float()), key


def test_encode_builds_the_diffusion_cache_lazily_and_once(monkeypatch):
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    images = torch.rand(1, 2, 3, 32, 32)
    assert model.encode(images).diffusion_cache is None
    model.add_diffusion()
    calls = []
    prepare = model.diffusion.decoder.prepare_sources
    monkeypatch.setattr(
        model.diffusion.decoder,
        "prepare_sources",
        lambda tokens, rays=None: calls.append(1) or prepare(tokens, rays),
    )
    scene = model.encode(images)
    assert calls == []  # regression-only use never prepares the diffusion sources
    assert scene.diffusion_cache.decoder is model.diffusion.decoder
    assert scene.diffusion_cache is scene.diffusion_cache and calls == [1]
    assert torch.equal(scene.diffusion_cache.context.tokens, scene.cache.context.tokens)
    # The flattened sources give the same source stream as the per-view tokens.
    per_view = scene.cache.context.tokens.unflatten(1, (2, -1))  # [b, s, p, c]
    direct = model.diffusion.decoder.prepare_sources(per_view)
    for (k1, v1), (k2, v2) in zip(direct.kv, scene.diffusion_cache.context.kv, strict=True):
        assert torch.allclose(k1, k2, atol=1e-6) and torch.allclose(v1, v2, atol=1e-6)


def test_missing_default_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(nvs, "DEFAULT_MODEL_DIR", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="embedded default model is missing"):
        nvs.load_model_or_default(None)


def ray_model(seed: int = 0) -> NVSModel:
    """The tiny model with the `source_rays` encoder option."""
    config = model_config("tiny").override({"encoder": {"source_rays": True}})
    torch.manual_seed(seed)
    return build_model(config).eval()


def test_source_rays_start_as_the_published_encoder():
    with_rays = ray_model()
    plain = build_model("tiny").eval()
    missing, unexpected = plain.load_state_dict(with_rays.state_dict(), strict=False)
    assert missing == [] and unexpected == ["encoder.ray_embed.weight"]
    images, c2w, k = small_scene()
    with torch.no_grad():
        assert torch.equal(with_rays(images, c2w, k, 2).rgb, plain(images, c2w, k, 2).rgb)


def test_source_rays_carry_the_source_cameras_when_posed_only():
    model = ray_model()
    images, c2w, k = small_scene()
    ref, scale = cam.scene_normalization(c2w[0], 2)
    target = cam.apply_normalization(c2w[0, 2:], ref, scale)[None]

    def outputs():
        with torch.no_grad():
            posed = model(images, c2w, k, num_sources=2).rgb
            # Camera-token dropout drops the rays too: pose-free training = pose-free use.
            free = model(images, c2w, k, num_sources=2, posed=False).rgb
            free_encoded = model.render(model.encode(images[:, :2]), target, k[:, 2:], (32, 48))
            scene = model.encode(images[:, :2], c2w[:, :2], k[:, :2])
            posed_encoded = model.render(scene, c2w[:, 2:], k[:, 2:], (32, 48)).rgb
        assert torch.allclose(free, free_encoded.rgb, atol=1e-5)
        assert torch.allclose(posed, posed_encoded, atol=1e-5)
        return posed, free

    posed_zero, free_zero = outputs()
    torch.nn.init.normal_(model.encoder.ray_embed.weight, std=0.5)
    posed_rays, free_rays = outputs()
    assert (posed_rays - posed_zero).abs().max() > 1e-3  # the rays reach the render
    assert torch.equal(free_rays, free_zero)  # and nothing when the cameras are unknown


def test_source_rays_option_survives_the_export(tmp_path):
    model = ray_model()
    torch.nn.init.normal_(model.encoder.ray_embed.weight, std=0.5)
    save_model(model, tmp_path / "export", kind="regression")
    loaded = load_model(tmp_path / "export")
    assert loaded.encoder.uses_source_rays
    images, c2w, k = small_scene()
    with torch.no_grad():
        assert torch.equal(model(images, c2w, k, 2).rgb, loaded(images, c2w, k, 2).rgb)


def test_source_rays_of_the_wrong_shape_are_rejected():
    model = ray_model()
    images = torch.rand(1, 2, 3, 32, 48)
    tokens = cam.pose_free_camera_tokens(2).expand(1, 2, -1)
    with pytest.raises(ValueError, match=r"expected source rays \[1, 2, 6, h, w\]"):
        model.encoder(images, tokens, source_rays=torch.zeros(1, 3, 6, 32, 48))


# --------------------------------------------------------------------------------------
# Options for small models trained from scratch; one encode path for every stage
# --------------------------------------------------------------------------------------

SMALL_MODEL_OPTIONS = {
    "published": ({}, {}),
    "source_rays": ({"source_rays": True}, {}),
    "fourier_rays": ({"source_rays": True, "ray_frequencies": 3}, {"ray_frequencies": 3}),
    "source_skip": ({"source_skip": True, "ray_frequencies": 2}, {"ray_frequencies": 2}),
    "ray_bias": ({"source_skip": True}, {"ray_bias": True}),
}


def option_model(name: str, seed: int = 0, diffusion: bool = False) -> NVSModel:
    """The tiny model with one set of `SMALL_MODEL_OPTIONS`, every weight non-zero (the
    zero-initialised ray projection included, so that a path that drops it shows)."""
    encoder, decoder = SMALL_MODEL_OPTIONS[name]
    config = model_config("tiny").override(
        {"encoder": {"image_size": 48, "patch_size": 8, **encoder}, "decoder": decoder}
    )
    if diffusion:
        diffusion_config = DiffusionConfig(
            prediction_type="sample", noise_channels=6, cond_dropout=0.1, frequency_dim=256
        )
        config = replace(config, diffusion=diffusion_config)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    if model.encoder.ray_embed is not None:
        torch.nn.init.normal_(model.encoder.ray_embed.weight, std=0.5)
    return model


@pytest.mark.parametrize("name", list(SMALL_MODEL_OPTIONS))
@pytest.mark.parametrize("posed", [True, False])
def test_training_stages_encode_exactly_as_inference(name, posed):
    """The regression and diffusion training steps see the tokens `NVSModel.encode` gives
    (the diffusion decoder was once trained on tokens without the source rays)."""
    from gen_nvs.data import SceneBatch
    from gen_nvs.train import objectives

    model = option_model(name, diffusion=True)
    images, c2w, k = small_scene()
    frames = torch.arange(4)[None]
    batch = SceneBatch(images, c2w, k, num_sources=2, scenes=["s"], frame_indices=frames)
    views = objectives.select_views(batch, 2, torch.Generator().manual_seed(0))
    seen = {}

    def record(stage):
        def hook(module, args):
            seen[stage] = args[0]  # the source tokens the stage's decoder gets

        return hook

    hooks = [
        model.decoder.register_forward_pre_hook(record("regression")),
        model.diffusion.register_forward_pre_hook(record("diffusion")),
    ]
    with torch.no_grad():
        objectives.RegressionForward(model, camera_head=False)(views, posed)
        x_t = torch.randn(1, 2, 6, 32, 48)
        objectives.DiffusionForward(model)(
            views, x_t, torch.tensor([[10, 500]]), posed, torch.Generator().manual_seed(0)
        )
        if posed:
            scene = model.encode(images[:, :2], c2w[:, :2], k[:, :2])
        else:  # camera-token dropout = pose-free use, up to the camera tokens' scale pair
            scene = model.encode(images[:, :2])
    for hook in hooks:
        hook.remove()
    expected = rearrange(scene.cache.context.tokens, "b (s p) c -> b s p c", s=2)
    assert torch.equal(seen["diffusion"], seen["regression"])
    # Pose-free: camera-token dropout gives the pose-free tokens up to float rounding of
    # the normalised camera scale.
    assert torch.allclose(seen["regression"], expected, atol=0 if posed else 1e-5)


@pytest.mark.parametrize("name", ["fourier_rays", "source_skip", "ray_bias"])
def test_small_model_options_survive_the_export_and_keep_the_cache_exact(name, tmp_path):
    model = option_model(name)
    save_model(model, tmp_path / "export")
    loaded = load_model(tmp_path / "export")
    images, c2w, k = small_scene()
    with torch.no_grad():
        direct = model(images, c2w, k, 2).rgb
        assert torch.equal(direct, loaded(images, c2w, k, 2).rgb)
        scene = loaded.encode(images[:, :2], c2w[:, :2], k[:, :2])
        cached = loaded.render(scene, c2w[:, 2:], k[:, 2:], (32, 48)).rgb
    assert torch.allclose(direct, cached, atol=1e-5)


@pytest.mark.parametrize("posed", [True, False])
def test_ray_bias_model_samples_with_guidance_posed_and_pose_free(posed):
    """The ray bias reaches every path that prepares sources: the scene cache, the lazily
    built diffusion cache and the null (unconditional) context of guidance."""
    from gen_nvs.sampling import sample_views

    model = option_model("ray_bias", diffusion=True)
    images, c2w, k = small_scene()
    with torch.no_grad():
        if posed:
            scene = model.encode(images[:, :2], c2w[:, :2], k[:, :2])
            targets = dict(target_c2w=c2w[:, 2:], target_fxfycxcy=k[:, 2:])
        else:
            scene = model.encode(images[:, :2])
            targets = dict(target_c2w=scene.source_c2w, target_fxfycxcy=k[:, :2])
        assert scene.cache.context.rays.shape == (1, scene.cache.num_source_tokens, 6)
        assert torch.equal(scene.diffusion_cache.context.rays, scene.cache.context.rays)
        out = sample_views(
            model, scene, **targets, image_hw=(32, 48), normalized=not posed, steps=2,
            guidance_scale=2.0, mask_mode="off",
        )  # fmt: skip
    assert torch.isfinite(out.rgb).all() and out.rgb.shape[-3:] == (3, 32, 48)


def test_ray_bias_model_without_cameras_or_camera_head_is_a_clear_error():
    model = option_model("ray_bias")
    model.camera_head = None
    with pytest.raises(ValueError, match=r"decoder \(ray_bias\) needs source cameras"):
        model.encode(small_scene()[0][:, :2])


def test_source_skip_carries_each_source_patch_to_the_tokens():
    """Changing one source pixel changes only the token of its own patch (the aggregator
    mixes it everywhere, so compare the skip alone) and, posed, the rays reach it too."""
    model = option_model("source_skip")
    images, c2w, k = small_scene()
    ref, scale = cam.scene_normalization(c2w[0], 2)
    normalized = cam.apply_normalization(c2w[0, :2], ref, scale)[None]
    rays = cam.plucker_rays(normalized, k[:, :2], 32, 48)
    encoder = model.encoder
    features = cam_features = None
    with torch.no_grad():
        resized, _, ray_features, _ = encoder._prepare(images[:, :2], None, rays, "none")
        features = encoder._skip(resized, None)
        cam_features = encoder._skip(resized, ray_features)
        changed = resized.clone()
        changed[0, 1, :, 9, 20] = 1 - changed[0, 1, :, 9, 20]  # patch row 1, column 2 (of 6)
        moved = encoder._skip(changed, None)
    assert (cam_features - features).abs().amax() > 1e-3
    differs = (moved - features).abs().amax(dim=-1)[0]  # (s, p)
    assert differs[1, 1 * 6 + 2] > 1e-4
    differs[1, 1 * 6 + 2] = 0
    assert differs.amax() == 0


def test_fourier_features_have_the_documented_layout():
    from gen_nvs.models.layers import fourier_channels, fourier_features

    x = torch.randn(2, 6, 4, 5)
    f = fourier_features(x, 3, dim=1)
    assert f.shape == (2, fourier_channels(6, 3), 4, 5)
    assert torch.equal(f[:, :6], x)
    assert torch.allclose(f[:, 6 + 6 * 2 + 1], torch.sin(4 * torch.pi * x[:, 1]), atol=1e-5)
    assert torch.allclose(f[:, 6 + 18], torch.cos(torch.pi * x[:, 0]), atol=1e-5)
    with pytest.raises(ValueError, match="num_frequencies must be >= 0"):
        fourier_features(x, -1)


def test_small_model_options_are_off_in_every_official_preset():
    for preset in MODEL_PRESETS:
        model = build_model(preset) if preset == "tiny" else None
        config = model_config(preset)
        assert not config.encoder.source_rays
        assert not config.encoder.source_skip
        assert not config.encoder.ray_frequencies
        assert not config.decoder.ray_frequencies
        assert not config.decoder.ray_bias
        if model is not None:
            assert "ray_frequencies" not in model.decoder.config
            assert "ray_bias" not in model.decoder.config and model.decoder.ray_bias is None


# --------------------------------------------------------------------------------------
# Depth head (the geometry stage's)
# --------------------------------------------------------------------------------------


def test_depth_head_unpatchifies_each_token_into_its_own_patch():
    from gen_nvs.models.depth_head import DepthHead

    torch.manual_seed(0)
    head = DepthHead(dim=16, patch_size=4)
    torch.nn.init.normal_(head.linear.weight, std=1.0)  # outputs far from the init's 1 and 2
    tokens = torch.randn(2, 3, 12, 16)  # a 3x4 patch grid
    with torch.no_grad():
        depth, conf = head(tokens, (3, 4), (12, 16))
        changed = tokens.clone()
        changed[1, 2, 1 * 4 + 2] = torch.randn(16)  # patch row 1, column 2
        moved = (head(changed, (3, 4), (12, 16))[0] - depth).abs()
        small, small_conf = head(tokens, (3, 4), (6, 8))  # another image size: resized
    assert depth.shape == conf.shape == (2, 3, 12, 16)
    assert (depth > 0).all() and (conf > 1).all() and depth.std() > 0.1
    assert moved[1, 2, 4:8, 8:12].amin() > 0
    moved[1, 2, 4:8, 8:12] = 0
    assert moved.amax() == 0
    assert small.shape == small_conf.shape == (2, 3, 6, 8)
    assert (small > 0).all() and (small_conf > 1).all()
    with pytest.raises(ValueError, match=r"expected patch tokens \[b, s, 16, c\]"):
        head(tokens, (4, 4), (16, 16))


def depth_model(seed: int = 0) -> NVSModel:
    config = model_config("tiny").override({"encoder": {"image_size": 48, "patch_size": 8}})
    torch.manual_seed(seed)
    return build_model(replace(config, depth_head=DepthHeadConfig())).eval()


def test_depth_head_is_optional_and_survives_the_export(tmp_path):
    model = depth_model()
    assert model.config.to_dict()["depth_head"] == {"dim": 128, "patch_size": 8}  # the encoder's
    images = torch.rand(1, 3, 3, 16, 24)  # the encoder runs on 32x48: outputs resized
    save_model(model, tmp_path / "export")
    loaded = load_model(tmp_path / "export")
    with torch.no_grad():
        depth, conf = model.estimate_depth(images)
        assert depth.shape == conf.shape == (1, 3, 16, 24)
        assert torch.equal(depth, loaded.estimate_depth(images)[0])
    # Without the option (every preset) nothing of it is in the model, config or weights.
    plain = build_model("tiny")
    assert plain.depth_head is None and "depth_head" not in plain.config.to_dict()
    assert not any(k.startswith("depth_head.") for k in plain.state_dict())
    with pytest.raises(ValueError, match="no depth head"):
        plain.estimate_depth(images)
    with pytest.raises(ValueError, match="must be the encoder's token width 128 and patch size 8"):
        build_model(model.config.override({"depth_head": {"patch_size": 4}}))
