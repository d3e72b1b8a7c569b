"""`gen-nvs eval` end to end on tiny procedural scenes, the region split, the copy probe,
the score of the model's unseen mask, and bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from gen_nvs.cli import main
from gen_nvs.data.re10k import RE10KReader
from gen_nvs.data.scene import SceneSample
from gen_nvs.eval.breakdown import main as breakdown_main
from gen_nvs.eval.evaluate import (
    PSNR_MAX_DB,
    FirstViewsDataset,
    SamplingSettings,
    empty_regions,
    evaluate,
    evaluate_scene,
    evenly_spaced,
    map_tree,
    quality,
    unseen_masks,
    view_change,
)
from gen_nvs.eval.metrics import mask_iou
from gen_nvs.inputs import SourceViews
from gen_nvs.models.config import model_config
from gen_nvs.models.nvs import build_model, save_model
from gen_nvs.models.perceptual import VGG16_WEIGHTS_ENV, vgg16_trunk_layout
from gen_nvs.pipeline import NVSPipeline

SIZE = 32


@pytest.fixture(autouse=True)
def no_vgg_weights(monkeypatch, tmp_path):
    """LPIPS weights only where a test passes them."""
    monkeypatch.delenv(VGG16_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two procedural scenes of 4 views, a tiny regression model, a tiny diffusion model
    whose samples depend on their noise, and random VGG16 weights for LPIPS."""
    root = tmp_path_factory.mktemp("eval")
    argv = ["make-scenes", "--out", str(root / "scenes"), "--scenes", "2", "--views", "4"]
    assert main([*argv, "--size", str(SIZE), str(SIZE)]) == 0
    torch.manual_seed(0)
    model = build_model("tiny")
    save_model(model, root / "regression")
    model.add_diffusion()
    # A freshly converted denoiser ignores its noise input; make samples differ.
    torch.nn.init.normal_(model.diffusion.noise_embedder.weight, std=0.5)
    save_model(model, root / "diffusion")
    generator = torch.Generator().manual_seed(0)
    trunk = {
        k: torch.randn(shape, generator=generator).mul(0.05).half()
        for k, shape in vgg16_trunk_layout().items()
    }
    save_file(trunk, str(root / "vgg16.safetensors"))
    return root


def _eval(workspace, out, *extra: str) -> int:
    argv = ["eval", "--data", str(workspace / "scenes"), "--out", str(out), "--device", "cpu"]
    return main([*argv, *extra])


def _mse(psnr: float) -> float:
    return 10 ** (-psnr / 10)


def _load_strict(path):
    """results.json, failing on NaN or infinities (which JSON does not have)."""

    def reject(constant: str):
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def _check_mask_entry(mask: dict) -> None:
    assert set(mask) == {"iou", "model_unseen_fraction", "true_unseen_fraction"}
    assert all(0 <= value <= 1 for value in mask.values())


# --------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------


def test_regression_eval_without_lpips_weights(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    assert _eval(workspace, out, "--checkpoint", str(workspace / "regression")) == 0
    captured = capsys.readouterr()
    assert "LPIPS skipped" in captured.err and "vgg16-397923af.pth" in captured.err
    assert "regression" in captured.out

    results = json.loads((out / "results.json").read_text())
    assert results["lpips"]["available"] is False
    assert VGG16_WEIGHTS_ENV in results["lpips"]["reason"]
    assert results["model"]["config"] == build_model("tiny").config.to_dict()
    assert results["model"]["can_sample"] is False
    assert results["dataset"]["num_scenes"] == 2 and results["dataset"]["num_sources"] == 2
    assert results["settings"]["sampling"] is None
    assert results["num_targets"] == 4

    means = results["means"]["regression"]
    assert 0 < means["psnr"] < PSNR_MAX_DB and -1 <= means["ssim"] <= 1
    assert means["lpips"] is None and means["unseen"]["lpips"] is None
    assert "diffusion" not in results["means"]
    for scene in results["scenes"]:
        assert scene["source_frames"] == [0, 1] and scene["target_frames"] == [2, 3]
        assert scene["region_source"] == "depth"
        grid = Image.open(out / scene["grid"])
        # Rows: 2 targets. Columns: 2 sources, target, regression, mask (2-pixel gaps).
        assert grid.size == (5 * SIZE + 4 * 2, 2 * SIZE + 2)
        for target in scene["targets"]:
            # The seen and unseen regions partition the pixels: their errors, weighted by
            # their shares, make up the whole image's error.
            metrics, share = target["regression"], target["unseen_fraction"]
            parts = [(share, metrics["unseen"]), (1 - share, metrics["seen"])]
            combined = sum(w * _mse(m["psnr"]) for w, m in parts if m is not None)  # None: empty
            assert combined == pytest.approx(_mse(metrics["psnr"]), rel=1e-4)
            # The model's own unseen estimate, scored against the depth's.
            _check_mask_entry(target["mask"])
            assert target["mask"]["true_unseen_fraction"] == pytest.approx(share)
            # Procedural scenes have depth: every target has its parallax.
            change = target["view_change"]
            assert change["baseline"] > 0 and change["parallax"] > 0
            assert 0 <= change["rotation_deg"] <= 180
    assert results["mask"]["available"] is True and results["mask"]["reason"] is None
    _check_mask_entry(results["means"]["mask"])
    assert "unseen mask, model vs depth: iou" in captured.out
    # Medians over all targets, beside the means over scenes.
    targets = [t for scene in results["scenes"] for t in scene["targets"]]
    medians = results["medians"]["regression"]
    assert medians["psnr"] == pytest.approx(np.median([t["regression"]["psnr"] for t in targets]))
    unseen = [t["regression"]["unseen"] for t in targets if t["regression"]["unseen"] is not None]
    assert medians["unseen"]["sharpness"] == pytest.approx(
        np.median([u["sharpness"] for u in unseen if u["sharpness"] is not None])
    )
    assert "unseen-region sharpness vs the truth's: regression" in captured.out
    # The results group by view change: 4 targets in 2 bins of 2.
    assert breakdown_main([str(out / "results.json"), "--bins", "2"]) == 0
    table = capsys.readouterr().out
    assert "| parallax | targets | unseen fraction | regression/whole psnr |" in table
    assert table.count(" | 2 | ") == 2 and "samples/" not in table


def test_diffusion_eval_with_lpips(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    extra = ["--checkpoint", str(workspace / "diffusion"), "--samples", "2", "--steps", "2"]
    extra += ["--mask-mode", "off", "--max-scenes", "1"]
    extra += ["--lpips-weights", str(workspace / "vgg16.safetensors"), "--require-lpips"]
    assert _eval(workspace, out, *extra) == 0
    assert "LPIPS skipped" not in capsys.readouterr().err

    results = json.loads((out / "results.json").read_text())
    assert results["lpips"]["available"] is True and results["lpips"]["reason"] is None
    sampling = results["settings"]["sampling"]
    assert sampling["num_samples"] == 2 and sampling["steps"] == 2
    assert sampling["mask_mode"] == "off" and sampling["patch_shift"] is True
    assert results["dataset"]["num_scenes"] == 1 and len(results["scenes"]) == 1

    diffusion = results["means"]["diffusion"]
    mean, best = diffusion["mean"], diffusion["best_of_n"]
    assert best["psnr"] >= mean["psnr"] and best["ssim"] >= mean["ssim"]
    assert best["lpips"] <= mean["lpips"]
    assert best["unseen"]["psnr"] >= mean["unseen"]["psnr"]
    assert "sharpness" in mean and "sharpness" not in best
    assert diffusion["diversity"]["rms"] > 0 and diffusion["diversity"]["lpips"] > 0
    assert diffusion["diversity"]["unseen"]["rms"] > 0
    assert results["means"]["regression"]["lpips"] > 0
    assert set(results["medians"]["diffusion"]) == set(diffusion)  # the means' layout
    target = results["scenes"][0]["targets"][0]
    assert target["diffusion"]["generated_fraction"] == 1.0
    grid = Image.open(out / results["scenes"][0]["grid"])
    assert grid.size == (7 * SIZE + 6 * 2, 2 * SIZE + 2)  # + 2 sample columns


def test_copy_probe_targets_are_the_sources(workspace, tmp_path, capsys):
    """The model re-renders its sources: the unseen region is empty, and null (with the
    reason), not NaN; the whole image is scored."""
    scenes = RE10KReader(workspace / "scenes", None).scene_names
    index = tmp_path / "copy.json"
    index.write_text(json.dumps({s: {"context": [0, 2], "target": [0, 2]} for s in scenes}))
    out = tmp_path / "out"
    argv = ["--checkpoint", str(workspace / "diffusion"), "--index", str(index)]
    assert _eval(workspace, out, *argv, "--samples", "2", "--steps", "1") == 0
    printed = capsys.readouterr().out
    assert "unseen                 - (empty in every target)" in printed
    assert "empty regions (no metrics): unseen in 4 of 4 targets" in printed

    results = _load_strict(out / "results.json")
    assert results["empty_regions"]["targets"] == {"seen": 0, "unseen": 4}
    assert "no pixels" in results["empty_regions"]["reason"]
    means = results["means"]
    assert means["regression"]["unseen"] is None
    assert results["medians"]["regression"]["unseen"] is None
    assert "unseen-region sharpness" not in printed
    assert means["diffusion"]["mean"]["unseen"] is None
    assert means["diffusion"]["diversity"]["unseen"] is None
    assert 0 < means["regression"]["psnr"] <= PSNR_MAX_DB
    # Every pixel is in the seen region: its error is the whole image's.
    assert means["regression"]["seen"]["psnr"] == pytest.approx(means["regression"]["psnr"])
    _check_mask_entry(means["mask"])
    assert means["mask"]["true_unseen_fraction"] == 0
    for scene in results["scenes"]:
        assert scene["source_frames"] == scene["target_frames"] == [0, 2]
        for target in scene["targets"]:
            assert math.isfinite(target["regression"]["psnr"])
            assert target["unseen_fraction"] == 0 and target["empty_regions"] == ["unseen"]
            assert target["regression"]["unseen"] is None
            assert target["diffusion"]["best_of_n"]["unseen"] is None
            assert target["regression"]["seen"]["psnr"] == target["regression"]["psnr"]
            _check_mask_entry(target["mask"])
            assert target["view_change"] == pytest.approx(
                {"baseline": 0.0, "rotation_deg": 0.0, "parallax": 0.0}, abs=1e-5
            )


def _rotation_y(degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    return torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def test_view_change_measures_the_nearest_source():
    """Sources at x = 0 and x = 2, targets at x = 0.5 (turned 30 degrees), x = 1.8 and on
    the second source: baseline, rotation and parallax against the nearest source, whose
    near depth is the 10 % quantile of its valid depth."""
    centres = [(0, 0, 0), (2, 0, 0), (0.5, 0, 0), (1.8, 0, 0), (2, 0, 0)]
    turns = [0, 0, 30, 0, 0]
    c2w = torch.eye(4).repeat(5, 1, 1)
    for v, (centre, turn) in enumerate(zip(centres, turns, strict=True)):
        c2w[v, :3, :3] = _rotation_y(turn)
        c2w[v, :3, 3] = torch.tensor(centre, dtype=torch.float32)
    depth = torch.full((5, 10, 10), 5.0)
    depth[0, 0] = 1.0  # the nearest 10 % of source 0's pixels
    depth[1] = 8.0
    valid = torch.ones(5, 10, 10, dtype=torch.bool)
    valid[1, :5] = False  # invalid pixels do not count
    depth[1, :5] = 0.1
    sample = SceneSample(
        images=torch.rand(5, 3, 10, 10),
        c2w=c2w,
        fxfycxcy=torch.tensor([[10.0, 10.0, 5.0, 5.0]]).repeat(5, 1),
        num_sources=2,
        scene="line",
        frame_indices=torch.arange(5),
        depth=depth,
        depth_valid=valid,
    )
    first, second, on_source = view_change(sample)
    assert first == pytest.approx({"baseline": 0.5, "rotation_deg": 30.0, "parallax": 0.5})
    assert second == pytest.approx({"baseline": 0.2, "rotation_deg": 0.0, "parallax": 0.2 / 8})
    assert on_source == pytest.approx({"baseline": 0.0, "rotation_deg": 0.0, "parallax": 0.0})
    no_depth = dataclasses.replace(sample, depth=None, depth_valid=None)
    assert [change["parallax"] for change in view_change(no_depth)] == [None] * 3
    assert view_change(no_depth)[0]["baseline"] == pytest.approx(0.5)


def test_no_mask_score_without_a_point_head(workspace):
    torch.manual_seed(0)
    model = build_model(model_config("tiny", point_head=False))
    reader = RE10KReader(workspace / "scenes", None)
    dataset = FirstViewsDataset(reader, num_sources=2, max_targets=1)
    results = evaluate(NVSPipeline(model), dataset, max_scenes=1, progress=False)
    assert results["mask"]["available"] is False
    assert "point head" in results["mask"]["reason"]
    assert results["means"]["mask"] is None
    assert results["scenes"][0]["targets"][0]["mask"] is None


def test_mask_iou_and_empty_regions():
    a = torch.zeros(3, 4, 4, dtype=torch.bool)
    a[:, :2] = True  # rows 0-1
    b = torch.zeros_like(a)
    b[:, 2:] = True  # rows 2-3: disjoint from a
    c = torch.zeros_like(a)
    c[:, 1:3] = True  # rows 1-2: half of a, half of b
    assert mask_iou(a, a).tolist() == [1.0, 1.0, 1.0]
    assert mask_iou(a, b).tolist() == [0.0, 0.0, 0.0]
    assert mask_iou(a, c)[0].item() == pytest.approx(1 / 3)
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0  # two empty masks agree
    assert mask_iou(empty, a[0]).item() == 0.0
    with pytest.raises(ValueError, match="bool"):
        mask_iou(a.float(), a)
    every = torch.ones(4, 4, dtype=torch.bool)
    assert empty_regions(torch.stack([empty, every, a[0]])) == [["unseen"], ["seen"], []]


def test_max_targets_are_evenly_spaced(workspace, tmp_path):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(workspace / "regression"), "--num-sources", "1"]
    assert _eval(workspace, out, *argv, "--max-targets", "2", "--max-scenes", "1") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["max_targets"] == 2
    (scene,) = results["scenes"]
    assert scene["source_frames"] == [0] and scene["target_frames"] == [1, 3]


def test_eval_with_an_index(workspace, tmp_path):
    index = tmp_path / "index.json"
    scenes = RE10KReader(workspace / "scenes", None).scene_names
    index.write_text(json.dumps({scenes[0]: {"context": [3, 1], "target": [0]}, scenes[1]: None}))
    out = tmp_path / "out"
    argv = ["--checkpoint", str(workspace / "regression"), "--index", str(index)]
    assert _eval(workspace, out, *argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["index"] == str(index)
    (scene,) = results["scenes"]
    assert scene["scene"] == scenes[0]
    assert scene["source_frames"] == [3, 1] and scene["target_frames"] == [0]


# --------------------------------------------------------------------------------------
# Regions and the PSNR cap
# --------------------------------------------------------------------------------------


def test_unseen_masks_from_depth_and_from_predicted_points(workspace):
    reader = RE10KReader(workspace / "scenes", None)
    # The target is source 0 again: every pixel with depth was seen.
    sample = reader.load(reader.scene_names[0], [0, 1, 0], num_sources=2)
    pipe = NVSPipeline(build_model("tiny"))
    sources = SourceViews(sample.images[:2], sample.c2w[:2], sample.fxfycxcy[:2], ["0", "1"])
    with torch.no_grad():
        scene = pipe.encode(sources)
        unseen, source = unseen_masks(pipe, scene, sample)
        assert source == "depth" and unseen.shape == (1, SIZE, SIZE)
        assert torch.equal(unseen[0], ~sample.depth_valid[0])

        no_depth = dataclasses.replace(sample, depth=None, depth_valid=None)
        unseen, source = unseen_masks(pipe, scene, no_depth)
        assert source == "predicted_points" and unseen.shape == (1, SIZE, SIZE)
        assert unseen.dtype == torch.bool
        # The model's points at source 0's camera are what source 0 sees.
        assert unseen.float().mean() < 0.01


def test_targets_and_sources_are_rendered_once(workspace, monkeypatch):
    reader = RE10KReader(workspace / "scenes", None)
    sample = reader.load(reader.scene_names[0], [0, 1, 2, 3], num_sources=1)
    no_depth = dataclasses.replace(sample, depth=None, depth_valid=None)
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    model.add_diffusion()
    calls = []
    render = model.render

    def counted(scene, c2w, fxfycxcy, image_hw, **kwargs):
        calls.append((c2w.shape[1], tuple(image_hw)))
        return render(scene, c2w, fxfycxcy, image_hw, **kwargs)

    monkeypatch.setattr(model, "render", counted)
    hw = tuple(sample.images.shape[-2:])
    pad = 2 * model.diffusion.decoder.patch_size
    canvas = (hw[0] + pad, hw[1] + pad)  # the patch shift's: one patch on every side
    sampling = SamplingSettings(num_samples=2, steps=1, scheduler="ddim", mask_mode="auto")
    with torch.inference_mode():
        result, _ = evaluate_scene(NVSPipeline(model), no_depth, 0, sampling=sampling)
    assert result["region_source"] == "predicted_points"
    assert calls == [(3, hw), (1, hw), (3, canvas)]  # the targets, the source, the canvas
    calls.clear()
    off = dataclasses.replace(sampling, mask_mode="off", patch_shift=False)
    with torch.inference_mode():
        evaluate_scene(NVSPipeline(model), sample, 0, sampling=off)  # depth splits the regions
    assert calls == [(3, hw), (1, hw)]  # the source for the model's unseen estimate, scored


def test_mask_tolerance_sets_the_scored_mask_and_the_samples(workspace, tmp_path, monkeypatch):
    """--mask-tolerance reaches the model's scored unseen mask and the samples' auto mask,
    and is recorded; a looser one marks no more pixels unseen."""
    import gen_nvs.sampling

    scored, sampled = [], []
    unseen, region = NVSPipeline.unseen, gen_nvs.sampling.unseen_region

    def spy_scored(self, scene, targets, views, rel_tol):
        scored.append(rel_tol)
        return unseen(self, scene, targets, views, rel_tol)

    def spy_sampled(*args, rel_tol, **kwargs):
        sampled.append(rel_tol)
        return region(*args, rel_tol=rel_tol, **kwargs)

    monkeypatch.setattr(NVSPipeline, "unseen", spy_scored)
    monkeypatch.setattr(gen_nvs.sampling, "unseen_region", spy_sampled)
    fractions = {}
    for tolerance in ("0", "0.7", "1e9"):
        out = tmp_path / tolerance
        extra = ["--checkpoint", str(workspace / "diffusion"), "--samples", "1", "--steps", "1"]
        assert _eval(workspace, out, *extra, "--mask-tolerance", tolerance) == 0
        results = _load_strict(out / "results.json")
        assert results["settings"]["mask_tolerance"] == float(tolerance)
        fractions[tolerance] = results["means"]["mask"]["model_unseen_fraction"]
    assert scored == sampled == [0.0] * 2 + [0.7] * 2 + [1e9] * 2  # once per scene
    assert fractions["0"] >= fractions["0.7"] >= fractions["1e9"]
    assert fractions["0"] > fractions["1e9"]


def test_first_views_dataset_needs_a_target_frame(workspace):
    reader = RE10KReader(workspace / "scenes", None)
    dataset = FirstViewsDataset(reader, num_sources=3)
    assert dataset[1].num_sources == 3 and dataset[1].num_views == 4
    spaced = FirstViewsDataset(reader, 1, max_targets=2)[0]
    assert spaced.num_views == 3 and spaced.frame_indices.tolist() == [0, 1, 3]
    assert FirstViewsDataset(reader, 1, max_targets=9)[0].frame_indices.tolist() == [0, 1, 2, 3]
    assert evenly_spaced(4, 8) == [0, 2, 4, 7] and evenly_spaced(1, 5) == [0]
    assert evenly_spaced(3, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="no frame left for a target"):
        FirstViewsDataset(reader, num_sources=4)


def test_a_perfect_prediction_scores_the_psnr_cap():
    target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    unseen = torch.zeros(2, 16, 16, dtype=torch.bool)
    unseen[:, :, :6] = True
    tree = quality(target, target, unseen, None)
    values = map_tree(tree, lambda _, v: v[0])
    for group in (values, values["seen"], values["unseen"]):
        assert group["psnr"] == PSNR_MAX_DB and group["ssim"] == pytest.approx(1.0)
        assert group["lpips"] is None
    json.dumps(values, allow_nan=False)  # finite numbers only: valid JSON


def test_an_empty_region_is_null():
    target = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    unseen = torch.zeros(1, 16, 16, dtype=torch.bool)
    values = map_tree(quality(target * 0.9, target, unseen, None), lambda _, v: v[0])
    assert values["unseen"] == {"psnr": None, "ssim": None, "lpips": None, "sharpness": None}
    assert math.isfinite(values["seen"]["psnr"])


# --------------------------------------------------------------------------------------
# Bad input: one-line errors, exit code 2
# --------------------------------------------------------------------------------------


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gen-nvs eval: error:")
    return err[0]


def test_no_scenes(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["eval", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "no scenes found" in _error(capsys)


def test_index_with_missing_frames_or_scenes(workspace, tmp_path, capsys):
    scene = RE10KReader(workspace / "scenes", None).scene_names[0]
    index = tmp_path / "index.json"
    index.write_text(json.dumps({scene: {"context": [0], "target": [9]}}))
    assert _eval(workspace, tmp_path / "out", "--index", str(index)) == 2
    assert "frame(s) [9]" in _error(capsys)
    index.write_text(json.dumps({"no_such_scene": {"context": [0], "target": [1]}}))
    assert _eval(workspace, tmp_path / "out", "--index", str(index)) == 2
    assert "no_such_scene" in _error(capsys)


def test_sampling_a_regression_model_and_missing_lpips(workspace, tmp_path, capsys):
    regression = ["--checkpoint", str(workspace / "regression")]
    assert _eval(workspace, tmp_path / "out", *regression, "--samples", "2") == 2
    assert "cannot sample" in _error(capsys)
    assert _eval(workspace, tmp_path / "out", *regression, "--require-lpips") == 2
    assert "vgg16-397923af.pth" in _error(capsys)
    assert _eval(workspace, tmp_path / "out", *regression, "--sampler", "nope") == 2
    assert "unknown sampler" in _error(capsys)
    assert _eval(workspace, tmp_path / "out", *regression, "--size", "30", "30") == 2
    assert "patch size" in _error(capsys)
    assert _eval(workspace, tmp_path / "out", *regression, "--max-targets", "0") == 2
    assert "--max-targets must be >= 1, got 0" in _error(capsys)
    assert _eval(workspace, tmp_path / "out", *regression, "--mask-tolerance", "-1") == 2
    assert "mask tolerance must be a finite number >= 0" in _error(capsys)


def test_a_device_without_cuda_is_a_one_line_error(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["eval", "--data", str(workspace / "scenes"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--checkpoint", str(workspace / "regression"), "--device", "cuda"]) == 2
    assert "device 'cuda' was asked for but CUDA is not available" in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_no_patch_shift_is_recorded_and_reaches_the_sampler(workspace, tmp_path, patch_shifts):
    out = tmp_path / "out"
    extra = ["--checkpoint", str(workspace / "diffusion"), "--samples", "1", "--steps", "1"]
    assert _eval(workspace, out, *extra, "--max-scenes", "1", "--no-patch-shift") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["sampling"]["patch_shift"] is False
    assert patch_shifts == [False]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--guidance", "nan"], "guidance scale must be a finite number >= 0, got nan"),
        (["--guidance", "inf"], "guidance scale must be a finite number >= 0, got inf"),
        (["--seed", "-1"], "--seed must be in [0, 2**64 - 1] (a torch generator's seeds), got -1"),
        # Scene i's sample k uses seed + i * samples + k: 2 scenes of 2 samples use 4 seeds.
        (
            ["--seed", str(2**64 - 3), "--samples", "2"],
            "--seed must be in [0, 2**64 - 4]: the 4 samples use seeds --seed to --seed + 3",
        ),
    ],
)
def test_bad_sampling_options_fail_before_any_work(
    workspace, tmp_path, capsys, monkeypatch, extra, message
):
    # --guidance nan used to run the whole evaluation, then fail writing results.json.
    def evaluate_nothing(*args, **kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr("gen_nvs.commands.eval.evaluate", evaluate_nothing)
    diffusion = ["--checkpoint", str(workspace / "diffusion")]
    assert _eval(workspace, tmp_path / "out", *diffusion, *extra) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_non_empty_out_needs_overwrite(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("the last evaluation's")
    regression = ["--checkpoint", str(workspace / "regression"), "--max-scenes", "1"]
    assert _eval(workspace, out, *regression) == 2
    assert f"output directory {out} is not empty; pass --overwrite" in _error(capsys)
    assert (out / "results.json").read_text() == "the last evaluation's"
    assert [p.name for p in out.iterdir()] == ["results.json"]
    assert _eval(workspace, out, *regression, "--overwrite") == 0
    assert json.loads((out / "results.json").read_text())["dataset"]["num_scenes"] == 1
    capsys.readouterr()
    (tmp_path / "file").write_text("")
    assert _eval(workspace, tmp_path / "file", *regression) == 2
    assert "exists and is not a directory" in _error(capsys)


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_evaluation_takes_back_what_it_wrote(workspace, tmp_path, capsys, existing):
    # The second scene's image is damaged: the first scene's grid was written by then.
    data = tmp_path / "scenes"
    shutil.copytree(workspace / "scenes", data)
    second = RE10KReader(data, None).scene_names[1]
    image = sorted((data / "images" / second).iterdir())[0]
    image.write_bytes(b"not a png")
    out = tmp_path / "out"
    overwrite = []
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("the user's")
        overwrite = ["--overwrite"]
    argv = ["eval", "--data", str(data), "--out", str(out), "--device", "cpu"]
    regression = ["--checkpoint", str(workspace / "regression")]
    assert main([*argv, *regression, *overwrite]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after "LPIPS skipped: ..."
    assert error.startswith("gen-nvs eval: error: cannot read image") and str(image) in error
    if existing:
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
        assert (out / "notes.txt").read_text() == "the user's"
    else:
        assert not out.exists()
