"""The warp refiner: backward warping by depth, the refiner module, the model option
(render, training forward, export) and its training options."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gen_nvs.data.procedural import generate_scene
from gen_nvs.geometry.warp import backward_warp
from gen_nvs.models.config import LatentConfig, RefinerConfig, model_config
from gen_nvs.models.nvs import build_model, load_model, save_model
from gen_nvs.models.refiner import WarpRefiner, warp_features
from gen_nvs.train.loop import train
from gen_nvs.train.probe import Probe, psnr
from tests.test_train import export_weights, tiny_config


def _scene(seed: int = 3, views: int = 4, hw: tuple[int, int] = (32, 32)):
    return generate_scene(seed, views, hw)


def _warp_args(scene, sources: list[int], targets: list[int]) -> dict:
    """`backward_warp`'s tensors for views of a procedural scene, with their true depth."""
    return {
        "source_images": scene.images[None, sources],
        "source_depth": scene.depth[None, sources],
        "source_c2w": scene.c2w[None, sources],
        "source_fxfycxcy": scene.fxfycxcy[None, sources],
        "target_depth": scene.depth[None, targets],
        "target_c2w": scene.c2w[None, targets],
        "target_fxfycxcy": scene.fxfycxcy[None, targets],
    }


def _warp(scene, sources: list[int], targets: list[int], rel_tol: float = 0.02, **changed):
    """`backward_warp` of the scene's views, the tensors named in `changed` replaced."""
    return backward_warp(**{**_warp_args(scene, sources, targets), **changed}, rel_tol=rel_tol)


# --------------------------------------------------------------------------------------
# backward_warp
# --------------------------------------------------------------------------------------


def test_warp_at_a_sources_own_camera_is_the_identity_whatever_the_depth():
    scene = _scene()
    wrong_depth = scene.depth[None, [1]] * torch.linspace(0.5, 3.0, 32)[:, None]
    warped = _warp(scene, [0, 1], [1], target_depth=wrong_depth)
    assert warped.colors.shape == (1, 1, 2, 3, 32, 32)
    assert warped.inside[0, 0, 1].all()
    torch.testing.assert_close(warped.colors[0, 0, 1], scene.images[1], atol=1e-4, rtol=0)
    # The wrong depth disagrees with the source's own depth map away from the truth.
    assert not warped.visible[0, 0, 1].all()
    truth = _warp(scene, [1], [1])
    assert truth.visible.float().mean() > 0.99


def test_warp_with_the_true_depth_reproduces_the_target_where_a_source_saw_it():
    scene = _scene(seed=11, views=3)
    warped = _warp(scene, [0, 2], [1])
    visible = warped.visible[0, 0]  # (s, h, w)
    assert visible.any(0).float().mean() > 0.5
    # Where a source sees the point, its colour is the target's (bilinear at 32 px: a few
    # texels of error at edges and in textures).
    errors = (warped.colors[0, 0] - scene.images[1]).abs().amax(1)  # (s, h, w)
    assert errors[visible].median() < 0.05
    mse = (errors[visible] ** 2).mean()
    assert -10 * math.log10(mse.item()) > 20
    # Colours are zero where a point falls outside a source.
    outside = ~warped.inside[0, 0]
    assert (warped.colors[0, 0].abs().amax(1)[outside] == 0).all()


def test_warp_marks_occluded_points_and_points_without_depth_unseen():
    scene = _scene()
    # A source whose depth map puts a wall right in front of its camera hides everything.
    near_wall = torch.full_like(scene.depth[None, [0]], 0.05)
    warped = _warp(scene, [0], [1], source_depth=near_wall)
    assert warped.inside.any() and not warped.visible.any()
    no_depth = scene.depth[None, [1]].clone()
    no_depth[..., :8, :] = float("nan")
    no_depth[..., 8:16, :] = -1.0
    warped = _warp(scene, [0], [1], target_depth=no_depth)
    assert not warped.inside[0, 0, 0, :16].any() and not warped.visible[0, 0, 0, :16].any()


def test_warp_reads_sources_of_another_size():
    """Source intrinsics are in pixels of the source images: a source given at half size
    warps to (almost) the same colours."""
    scene = _scene(seed=5, views=3, hw=(32, 32))
    small = generate_scene(5, 3, (16, 16))
    full = _warp(scene, [0], [1])
    sources = {key: value for key, value in _warp_args(small, [0], [1]).items() if "source" in key}
    half = _warp(scene, [0], [1], rel_tol=0.05, **sources)
    both = full.visible & half.visible
    assert both.float().mean() > 0.3
    difference = (full.colors - half.colors).abs().amax(3)[both]
    assert difference.median() < 0.1


def test_warp_checks_its_shapes():
    scene = _scene()
    bad = [
        ("source_images", scene.images[None, [0], :1], "source images must be"),
        ("source_depth", scene.depth[None, [0, 1]], "source depth must be"),
        ("source_c2w", scene.c2w[None, [0, 1]], "source c2w must be"),
        ("source_fxfycxcy", scene.fxfycxcy[[0]], "source fxfycxcy must be"),
        ("target_depth", scene.depth[[1]], "target depth must be"),
        ("target_c2w", scene.c2w[None, [1, 2]], "target c2w must be"),
        ("target_fxfycxcy", scene.fxfycxcy[None], "target fxfycxcy must be"),
    ]
    for name, value, message in bad:
        with pytest.raises(ValueError, match=message):
            _warp(scene, [0], [1], **{name: value})
    with pytest.raises(ValueError, match="rel_tol"):
        _warp(scene, [0], [1], rel_tol=-1)


def test_warp_is_float32_geometry_under_autocast_and_finite_with_broken_cameras():
    scene = _scene(seed=11, views=3)
    exact = _warp(scene, [0, 2], [1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = _warp(scene, [0, 2], [1])
    assert torch.equal(mixed.visible, exact.visible)
    torch.testing.assert_close(mixed.colors, exact.colors)
    broken = scene.fxfycxcy[None, [0]].clone()
    broken[..., 1] = float("inf")
    warped = _warp(scene, [0], [1], source_fxfycxcy=broken)
    assert torch.isfinite(warped.colors).all() and torch.isfinite(warped.residual).all()


def test_warp_reads_edge_pixels_without_darkening():
    """A point inside the image but within half a pixel of its edge reads the edge pixel."""
    scene = _scene()
    white = torch.ones_like(scene.images[None, [1]])
    warped = _warp(scene, [1], [1], source_images=white)
    assert warped.inside.all()
    torch.testing.assert_close(warped.colors, torch.ones_like(warped.colors))


def test_warp_passes_gradients_to_the_colours_and_the_target_depth():
    scene = _scene()
    images = scene.images[None, [0]].clone().requires_grad_(True)
    depth = scene.depth[None, [1]].clone().requires_grad_(True)
    warped = _warp(scene, [0], [1], source_images=images, target_depth=depth)
    warped.colors.square().sum().backward()
    assert images.grad.abs().sum() > 0 and depth.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------
# WarpRefiner
# --------------------------------------------------------------------------------------


def test_a_new_refiner_returns_the_render_and_its_features_are_the_documented_ones():
    scene = _scene(seed=11, views=3)
    warped = _warp(scene, [0, 2], [1])
    rgb = torch.rand(1, 1, 3, 32, 32) * 1.2 - 0.1
    refiner = WarpRefiner(width=8, depth=3)
    torch.testing.assert_close(refiner(rgb, warped), rgb.clamp(0, 1))
    features = warp_features(rgb, warped)
    assert features.shape == (1, 1, 11, 32, 32)
    visible = warped.visible[0, 0].float()  # (s, h, w)
    torch.testing.assert_close(features[0, 0, 6], visible.mean(0))
    both = (visible.sum(0) == 2)[None].expand(3, -1, -1)
    mean = warped.colors[0, 0].mean(0)
    torch.testing.assert_close(features[0, 0, 3:6][both], mean[both])


def test_refiner_options_are_checked():
    with pytest.raises(ValueError, match="depth >= 2"):
        WarpRefiner(depth=1)
    with pytest.raises(ValueError, match="rel_tol"):
        WarpRefiner(rel_tol=-0.1)


# --------------------------------------------------------------------------------------
# The model option
# --------------------------------------------------------------------------------------


def _model_with_refiner(**options):
    config = model_config("tiny").override({"encoder": {"image_size": 28}})
    model = build_model(config).eval()
    model.add_refiner(RefinerConfig(width=8, depth=3, **options))
    # A trained refiner: its correction is not zero.
    torch.manual_seed(0)
    for param in model.refiner.parameters():
        param.data.normal_(0, 0.05)
    return model


def test_no_preset_has_a_refiner_and_a_new_one_changes_nothing():
    config = model_config("tiny").override({"encoder": {"image_size": 28}})
    plain = build_model(config).eval()
    assert plain.refiner is None and "refiner" not in plain.config.to_dict()
    scene = _scene(views=3, hw=(16, 16))
    args = (scene.images[None, :2], scene.c2w[None, :2], scene.fxfycxcy[None, :2])
    target = (scene.c2w[None, 2:], scene.fxfycxcy[None, 2:], (16, 16))
    with torch.no_grad():
        before = plain.render(plain.encode(*args), *target)
        plain.add_refiner()
        after = plain.render(plain.encode(*args), *target)
    assert before.decoder_rgb is None
    torch.testing.assert_close(after.rgb, before.rgb)
    torch.testing.assert_close(after.decoder_rgb, before.rgb)


def test_render_refines_in_chunks_as_at_once_and_forward_matches_render():
    model = _model_with_refiner()
    scene = _scene(views=5, hw=(16, 16))
    sources = (scene.images[None, :2], scene.c2w[None, :2], scene.fxfycxcy[None, :2])
    with torch.no_grad():
        encoded = model.encode(*sources)
        whole = model.render(encoded, scene.c2w[None, 2:], scene.fxfycxcy[None, 2:], (16, 16))
        chunks = model.render(
            encoded, scene.c2w[None, 2:], scene.fxfycxcy[None, 2:], (16, 16), chunk_size=1
        )
        trained = model(scene.images[None], scene.c2w[None], scene.fxfycxcy[None], 2)
    assert not torch.allclose(whole.rgb, whole.decoder_rgb.clamp(0, 1))
    torch.testing.assert_close(chunks.rgb, whole.rgb)
    torch.testing.assert_close(trained.rgb, whole.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(trained.decoder_rgb, whole.decoder_rgb, atol=1e-5, rtol=0)


def test_pose_free_scene_without_a_camera_head_renders_unrefined():
    model = _model_with_refiner()
    model.camera_head = None
    scene = _scene(views=3, hw=(16, 16))
    with torch.no_grad():
        encoded = model.encode(scene.images[None, :2])
        out = model.render(
            encoded, torch.eye(4)[None, None], scene.fxfycxcy[None, :1], (16, 16), normalized=True
        )
    assert out.decoder_rgb is None and out.rgb.shape == (1, 1, 3, 16, 16)


def test_export_keeps_the_refiner(tmp_path):
    model = _model_with_refiner(rel_tol=0.3)
    save_model(model, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["model"]["refiner"] == {"width": 8, "depth": 3, "rel_tol": 0.3}
    loaded = load_model(tmp_path / "export")
    assert loaded.refiner.rel_tol == 0.3
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_refiner_needs_the_point_head_and_pixels():
    with pytest.raises(ValueError, match="point_head"):
        build_model(model_config("tiny", point_head=False)).add_refiner()
    vae = {"latent_channels": 4, "block_out_channels": [8, 8]}
    with pytest.raises(ValueError, match="latent"):
        model_config("tiny").with_latent(LatentConfig(vae=vae)).override({"refiner": {}})


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def test_refiner_only_training_moves_the_refiner_alone(tmp_path):
    base = train(tiny_config(tmp_path, "base", "train.steps=2", "checkpoint.every=2"))
    before = export_weights(base / "export")
    overrides = [
        f"model.init_from={base / 'export'}",
        "model.refiner={width: 8, depth: 3}",
        "model.refiner_only=true",
        "loss.points=0",
        "loss.camera=0",
        "train.steps=3",
        "train.lr=1e-2",
    ]
    run = train(tiny_config(tmp_path, "refiner", *overrides))
    after = export_weights(run / "export")
    added = set(after) - set(before)
    assert added and all(k.startswith("refiner.") for k in added)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    last = "refiner.net.4.weight"  # depth 3: conv, GELU, conv, GELU, conv (zero at the start)
    assert after[last].abs().sum() > 0
    assert load_model(run / "export").refiner is not None


def test_joint_training_logs_the_decoders_own_l2(tmp_path):
    overrides = ["model.refiner={width: 8, depth: 3}", "loss.decoder_l2=1.0", "train.steps=2"]
    run = train(tiny_config(tmp_path, "joint", *overrides))
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert all({"l2", "decoder_l2"} <= set(r) for r in records)
    assert all(math.isfinite(r["loss"]) for r in records)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.decoder_l2=1.0"], "loss.decoder_l2 weights"),
        (["model.refiner_only=true"], "model.refiner_only needs a warp refiner"),
        (["stage=geometry", "loss.camera=1", "model.refiner_only=true"], "regression-stage"),
        (["model.refiner={depth: 1}"], "depth >= 2"),
        (["model.refiner={widht: 8}"], "did you mean 'width'"),
    ],
)
def test_refiner_misconfigurations_fail_before_training(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_config(tmp_path, "bad", "train.steps=1", *overrides))
    assert not (tmp_path / "bad").exists()


def test_a_refiner_option_unlike_the_exports_fails(tmp_path):
    model = _model_with_refiner()
    save_model(model, tmp_path / "export")
    overrides = [f"model.init_from={tmp_path / 'export'}", "model.refiner={width: 16}"]
    with pytest.raises(ValueError, match="differs from the refiner of model.init_from"):
        train(tiny_config(tmp_path, "bad", "train.steps=1", *overrides))


def test_the_probe_logs_the_decoders_own_psnr_beside_the_refined():
    model = _model_with_refiner()
    probe = Probe(num_scenes=2, image_hw=(16, 16), seed=7)
    with torch.no_grad():
        result = probe(model)
    assert {"probe/decoder_copy_psnr", "probe/decoder_novel_psnr"} <= set(result)
    assert result["probe/copy_psnr"] != result["probe/decoder_copy_psnr"]
    plain = Probe(num_scenes=2, image_hw=(16, 16), seed=7)(build_model("tiny").eval())
    assert "probe/decoder_copy_psnr" not in plain


def test_a_refiner_that_copies_the_warp_reproduces_the_sources():
    """A refiner that copies the warped sources where they are visible scores the copy
    probe far above the decoder's render (a source warps onto itself at its own
    camera)."""
    model = _model_with_refiner()
    scene = _scene(views=3, hw=(16, 16))
    with torch.no_grad():
        sources = (scene.images[None, :2], scene.c2w[None, :2], scene.fxfycxcy[None, :2])
        encoded = model.encode(*sources)
        plain = model.render(encoded, scene.c2w[None, :2], scene.fxfycxcy[None, :2], (16, 16))
        # Replace the network by the warp itself: the visible sources' mean colour.
        model.refiner.forward = lambda rgb, warped: warp_features(rgb, warped)[:, :, 3:6]
        copied = model.render(encoded, scene.c2w[None, :2], scene.fxfycxcy[None, :2], (16, 16))
    truth = scene.images[None, :2]
    assert psnr(copied.rgb, truth).mean() > psnr(plain.decoder_rgb, truth).mean() + 5


def test_residual_features_name_the_most_consistent_source():
    scene = _scene(seed=11, views=3)
    warped = _warp(scene, [0, 2], [1])
    residual = warped.residual[0, 0]  # (s, h, w)
    assert ((residual >= 0) & (residual <= 1)).all()
    assert (residual[~warped.inside[0, 0]] == 1).all()
    # With the true depth a visible point's residual is within the depth test's tolerance.
    assert residual[warped.visible[0, 0]].max() <= 0.02 + 1e-6
    rgb = torch.rand(1, 1, 3, 32, 32)
    features = warp_features(rgb, warped, residuals=True)
    assert features.shape == (1, 1, 15, 32, 32)
    torch.testing.assert_close(features[0, 0, 11], residual.min(0).values)
    first = (residual[0] < residual[1])[None].expand(3, -1, -1)
    torch.testing.assert_close(features[0, 0, 12:][first], warped.colors[0, 0, 0][first])
    refiner = WarpRefiner(width=8, depth=3, residuals=True)
    assert refiner.net[0].in_channels == 15
    torch.testing.assert_close(refiner(rgb, warped), rgb)


def test_sources_of_another_size_are_resized_for_the_refiner_once_per_render_size():
    model = _model_with_refiner(residuals=True)
    big = _scene(views=3, hw=(32, 32))
    small = generate_scene(3, 3, (16, 16))
    with torch.no_grad():
        encoded = model.encode(big.images[None, :2], big.c2w[None, :2], big.fxfycxcy[None, :2])
        out = model.render(encoded, small.c2w[None, 2:], small.fxfycxcy[None, 2:], (16, 16))
        sources = model.refiner_sources(encoded, (16, 16))
        again = model.refiner_sources(encoded, (16, 16))
        larger = model.refiner_sources(encoded, (32, 32))
    assert torch.isfinite(out.rgb).all() and out.rgb.shape == (1, 1, 3, 16, 16)
    assert again is sources and larger is not sources
    assert sources.images.shape == (1, 2, 3, 16, 16) and larger.images.shape == (1, 2, 3, 32, 32)
    torch.testing.assert_close(sources.fxfycxcy, small.fxfycxcy[None, :2])
    assert not sources.depth.requires_grad


def test_the_refined_loss_reaches_the_refiner_the_decoder_and_its_point_head():
    """Through the warp's sampling positions the refined render's error also trains the
    geometry (the point head), as a photometric loss does."""
    model = _model_with_refiner().train()
    scene = _scene(views=4, hw=(16, 16))
    out = model(scene.images[None], scene.c2w[None], scene.fxfycxcy[None], 2)
    (out.rgb - scene.images[None, 2:]).square().mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for prefix in ("refiner.", "decoder.point_head.", "decoder.renderer_core.", "encoder."):
        assert any(
            g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)
        ), prefix


def test_pose_free_scene_with_a_camera_head_is_refined():
    model = _model_with_refiner()
    scene = _scene(views=3, hw=(16, 16))
    with torch.no_grad():
        encoded = model.encode(scene.images[None, :2])
        out = model.render(
            encoded, torch.eye(4)[None, None], encoded.source_fxfycxcy[:, :1], (16, 16),
            normalized=True,
        )  # fmt: skip
    assert out.decoder_rgb is not None and torch.isfinite(out.rgb).all()


def test_oracles_report_the_warp_by_the_true_depth_above_the_render(capsys):
    """`python -m gen_nvs.eval.oracles` on a random tiny model with a refiner: every row is
    there, and the warp by the true depth beats the (untrained) render by far."""
    from gen_nvs.eval.oracles import DEPTH_MIXES, main, oracles

    model = _model_with_refiner()
    result = oracles(model, num_scenes=2)
    results = result.psnr
    assert 0 <= result.depth_within_125 <= 1 and result.depth_median_rel_error >= 0
    assert result.depth_scale_spread >= 0 and result.depth_shape_rel_error >= 0
    assert set(results) == {
        "decoder render",
        "refined render (the model's)",
        "refiner fed the true depth",
        "refiner fed true 8x8 depth means",
        "refiner fed its depth, scene scale true",
        *(f"refiner fed depth {share:.2f} of the way to its own" for share in DEPTH_MIXES),
        "warp by the true depth",
        "warp by the model's depths",
        "the truth's 8x8 patch means",
    }
    # The mixed depths' errors grow with the share of the model's depth in them.
    errors = list(result.mix_rel_error.values())
    assert len(errors) == len(DEPTH_MIXES) and errors == sorted(errors)
    assert errors[-1] < result.depth_median_rel_error
    whole, seen = results["warp by the true depth"]
    assert seen > results["decoder render"][1] + 5 and math.isfinite(whole)
    # Mirrored scenes are the same geometry: what the truth alone gives does not change
    # (the warp where a source sees; elsewhere it shows the model's render).
    mirrored = oracles(model, num_scenes=2, mirror=True).psnr
    truth_only = mirrored["the truth's 8x8 patch means"]
    assert truth_only == pytest.approx(results["the truth's 8x8 patch means"], abs=1e-3)
    seen_warp = mirrored["warp by the true depth"][1]
    assert seen_warp == pytest.approx(results["warp by the true depth"][1], abs=1e-3)
    # Per target: its parallax and PSNR, whose means make up the rows' whole PSNR.
    assert result.parallax.shape == (8,) and bool((result.parallax > 0).all())
    warp = result.target_psnr["warp by the true depth"]
    assert float(warp.mean()) == pytest.approx(whole, abs=1e-4)
    groups = result.by_parallax(2)
    assert [len(g) for g in groups] == [3, 3] and groups[0][1] <= groups[1][0]
    low_half = result.parallax <= groups[0][1]
    assert groups[0][2]["warp by the true depth"] == pytest.approx(float(warp[low_half].mean()))
    with pytest.raises(ValueError, match="bins must be in 1..8"):
        result.by_parallax(9)
    assert main(["--scenes", "1", "--mirror", "--bins", "2"]) == 0
    printed = capsys.readouterr().out
    assert "1 mirrored probe scenes" in printed and "by the targets' parallax" in printed
    with pytest.raises(SystemExit):
        main(["--scenes", "1", "--bins", "5"])
    assert "--bins must be in 1..4" in capsys.readouterr().err
    assert main(["--scenes", "1"]) == 0  # the embedded default model
    printed = capsys.readouterr().out
    assert "warp by the true depth" in printed and "once each view's scale" in printed
    assert "0.50 of the way to its own" in printed and "its depth's median relative" in printed
    with pytest.raises(SystemExit):
        main(["--scenes", "0"])


def test_the_log_depth_loss_is_the_mean_log_ratio_over_valid_pixels(tmp_path):
    from gen_nvs.train.objectives import Views, log_depth_error

    scene = _scene(views=3, hw=(8, 8))
    views = Views(
        images=scene.images[None], c2w=scene.c2w[None], fxfycxcy=scene.fxfycxcy[None],
        num_sources=1, depth=scene.depth[None], depth_valid=torch.ones(1, 3, 8, 8, dtype=bool),
        normalized=scene.c2w[None], scale=torch.ones(1),
    )  # fmt: skip
    gt, _ = views.target_points()  # the true surface points, as a prediction
    gt_depth, valid = views.target_depth()
    c2w = views.normalized[:, 1:]
    assert float(log_depth_error(gt, gt_depth, valid, c2w)) < 1e-5
    centre = scene.c2w[None, 1:, None, None, :3, 3]
    doubled = centre + 2 * (gt - centre)  # every depth twice the truth
    valid[0, 0, :4] = False
    far = torch.where(valid[..., None], doubled, 1e6)  # invalid pixels are not read
    assert abs(float(log_depth_error(far, gt_depth, valid, c2w)) - math.log(2)) < 1e-4
    grid_depth, grid_valid = views.target_depth(4)  # the latent grid's pixels, as the points'
    grid_points, _ = views.target_points(4)
    assert grid_depth.shape == grid_valid.shape == grid_points.shape[:-1] == (1, 2, 2, 2)
    torch.testing.assert_close(grid_depth, gt_depth[:, :, 2::4, 2::4])
    run = train(tiny_config(tmp_path, "logdepth", "loss.log_depth=1.0", "train.steps=2"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert all(math.isfinite(r["log_depth"]) for r in records)


def test_a_mixed_depth_goes_from_the_truth_to_the_model_s_in_log_space():
    from gen_nvs.eval.oracles import mixed_depth

    true = torch.rand(2, 8, 8) * 4 + 1
    model = true * torch.rand(2, 8, 8).add(0.5)
    torch.testing.assert_close(mixed_depth(true, model, 0.0), true)
    torch.testing.assert_close(mixed_depth(true, model, 1.0), model)
    torch.testing.assert_close(mixed_depth(true, model, 0.5), (true * model).sqrt())
    # A depth that is not a depth (behind the camera, NaN) counts as 100x too near.
    model[0, 0, :3] = torch.tensor([-1.0, float("nan"), 0.0])
    torch.testing.assert_close(mixed_depth(true, model, 0.5)[0, 0, :3], true[0, 0, :3] * 0.1)


def test_the_depth_error_splits_into_a_scale_per_view_and_a_shape():
    from gen_nvs.eval.oracles import scale_and_shape

    true = torch.rand(2, 8, 8) * 4 + 1
    scaled = true * torch.tensor([1.5, 0.8])[:, None, None]
    scale, shape = scale_and_shape(scaled, true)
    torch.testing.assert_close(scale, torch.tensor([1.5, 0.8]).log())
    torch.testing.assert_close(shape, torch.ones(2, 8, 8))
    # A wrong shape stays in the shape; a pixel without depth is NaN there, not a scale.
    bumped = scaled.clone()
    bumped[0, :2] *= 2.0  # a quarter of view 0 twice as far: the median keeps the scale
    bumped[1, 0, 0] = 0.0
    scale, shape = scale_and_shape(bumped, true)
    torch.testing.assert_close(scale, torch.tensor([1.5, 0.8]).log())
    assert torch.allclose(shape[0, :2], torch.full((2, 8), 2.0))
    assert torch.isnan(shape[1, 0, 0]) and torch.allclose(shape[1, 1:], torch.ones(7, 8))
