"""sample_views: seeds, known-region completion, masks, cache reuse, errors."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter

import pytest
import torch

import samplers
from gen_nvs.data.procedural import generate_scene
from gen_nvs.geometry import rgbd
from gen_nvs.inputs import default_intrinsics
from gen_nvs.memory import estimate_sample_bytes
from gen_nvs.models.config import model_config
from gen_nvs.models.nvs import NVSModel, build_model
from gen_nvs.sampling import (
    FINAL_SHIFTS,
    SampledViews,
    SamplingConfig,
    check_sampling_options,
    model_scheduler,
    network_grid,
    sample_seeds,
    sample_views,
    scene_to_world,
    shifted_model_fn,
)
from gen_nvs.unseen import unseen_region

HW = (32, 32)
FAST = dict(steps=2, scheduler="ddim")


def tiny_model(diffusion: bool = True) -> NVSModel:
    """The tiny preset with 28 px encoder inputs; the diffusion decoder's zero-initialised
    layers perturbed so that samples depend on the noise, as a trained model's do."""
    config = model_config("tiny").override({"encoder": {"image_size": 28}})
    torch.manual_seed(0)
    model = build_model(config)
    if diffusion:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in model.add_diffusion().named_parameters():
                if name.startswith(("noise_embedder", "block_modulation", "head_modulation")):
                    param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def views():
    return generate_scene(1, 4, HW)


@pytest.fixture(scope="module")
def scene(model, views):
    with torch.no_grad():
        return model.encode(views.images[None, :2], views.c2w[None, :2], views.fxfycxcy[None, :2])


def targets(views):
    return views.c2w[None, 2:], views.fxfycxcy[None, 2:]  # two target views


def draw(model, scene, views, **options) -> SampledViews:
    return sample_views(model, scene, *targets(views), HW, **{**FAST, **options})


# --------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------


def test_shapes_and_depth(model, scene, views):
    out = draw(model, scene, views, num_samples=2, mask_mode="off")
    assert out.rgb.shape == (2, 1, 2, 3, *HW) and out.points.shape == (2, 1, 2, *HW, 3)
    assert out.depth.shape == (2, 1, 2, *HW) and out.mask is None
    assert out.regression.rgb.shape == (1, 2, 3, *HW)
    assert torch.allclose(out.target_c2w, scene.normalize(targets(views)[0]))
    expected = rgbd.points_to_depth(out.points[1, 0], out.target_c2w[0])
    assert torch.allclose(out.depth[1, 0], expected)


def test_same_seed_same_samples_other_seed_other_samples(model, scene, views):
    first = draw(model, scene, views, seed=3, mask_mode="off")
    again = draw(model, scene, views, seed=3, mask_mode="off")
    other = draw(model, scene, views, seed=4, mask_mode="off")
    assert torch.equal(first.rgb, again.rgb) and torch.equal(first.points, again.points)
    assert (first.rgb - other.rgb).abs().max() > 1e-3


def test_sample_k_does_not_depend_on_the_number_of_samples_or_batches(model, scene, views):
    three = draw(model, scene, views, seed=5, num_samples=3, mask_mode="off")
    one = draw(model, scene, views, seed=6, num_samples=1, mask_mode="off")
    batched = draw(model, scene, views, seed=5, num_samples=3, mask_mode="off", max_batch=2)
    assert torch.allclose(three.rgb[1], one.rgb[0], atol=1e-5)  # sample 1 of seed 5 = seed 6
    assert torch.allclose(three.rgb, batched.rgb, atol=1e-5)
    assert sample_seeds(5, range(1, 3), 2) == sample_seeds(5, range(3), 2)[2:]


def per_sample_bytes(model, scene) -> int:
    """`sample_views`' memory estimate of one sample of the two targets."""
    grid = network_grid(model, HW, patch_shift=True)
    return estimate_sample_bytes(model.diffusion, scene.diffusion_cache.num_source_tokens, grid, 2)


def test_a_small_memory_budget_batches_the_same_samples(model, scene, views):
    budget = 2 * per_sample_bytes(model, scene) + 1  # two samples fit
    seen = []
    whole = draw(model, scene, views, seed=2, num_samples=3, mask_mode="off")
    batched = draw(
        model, scene, views, seed=2, num_samples=3, mask_mode="off", memory_budget=budget,
        callback=seen.append,
    )  # fmt: skip
    assert torch.allclose(whole.rgb, batched.rgb, atol=1e-5)
    assert torch.allclose(whole.points, batched.points, atol=1e-4)
    assert [info.num_steps for info in seen] == [2 * FAST["steps"]] * 4  # two sampler calls


# --------------------------------------------------------------------------------------
# Completion and masks
# --------------------------------------------------------------------------------------


def test_known_region_is_the_regression_render(model, scene, views):
    mask = torch.zeros(1, 2, *HW)
    mask[..., :, HW[1] // 2 :] = 1  # generate the right half
    out = draw(model, scene, views, num_samples=2, mask=mask, resample_jumps=1)
    keep = mask[0] == 0  # (t, h, w)
    regression = out.regression.rgb[0].permute(0, 2, 3, 1)  # (t, h, w, 3)
    for k in range(2):
        rgb = out.rgb[k, 0].permute(0, 2, 3, 1)
        assert torch.allclose(rgb[keep], regression[keep], atol=1e-5)
        assert torch.allclose(out.points[k, 0][keep], out.regression.points[0][keep], atol=1e-4)
        assert (rgb[~keep] - regression[~keep]).abs().max() > 1e-2
    assert torch.equal(out.mask, mask)


def constant_depth_model(model: NVSModel) -> NVSModel:
    """A copy whose point head puts every point at (0, 0, 1) in the scene frame."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.decoder.point_head.linear.weight.zero_()
    return model


def test_geometry_mask_generates_what_no_source_saw(model, views):
    model = constant_depth_model(model)
    images, c2w, k = views.images[None, :2], views.c2w[None, :2], views.fxfycxcy[None, :2]
    with torch.no_grad():
        scene = model.encode(images, c2w, k)
    # Target 0 is source 0 (sees the point at depth 1); target 1 looks the other way.
    behind = c2w[0, 0].clone()
    behind[:3, :3] = behind[:3, :3] @ torch.diag(torch.tensor([-1.0, 1.0, -1.0]))
    target_c2w = torch.stack([c2w[0, 0], behind])[None]
    out = sample_views(
        model, scene, target_c2w, k[:, :1].expand(1, 2, 4), HW, source_fxfycxcy=k, **FAST
    )
    assert out.mask.shape == (1, 2, *HW)
    assert out.mask[0, 0].max() == 0 and out.mask[0, 1].min() == 1
    assert torch.allclose(out.rgb[0, 0, 0], out.regression.rgb[0, 0], atol=1e-5)


def test_mask_tolerance_decides_what_counts_as_occluded(model, views):
    """Target = source 0's camera; its points lie twice as far as source 0's surface
    (source 1's surface is right at its camera and sees nothing): occluded at a tolerance
    of 0.5 (2 > 1 * 1.5), seen at 2 (2 <= 1 * 3)."""
    images, c2w, k = views.images[None, :2], views.c2w[None, :2], views.fxfycxcy[None, :2]
    with torch.no_grad():
        scene = model.encode(images, c2w, k)
        target_c2w = scene.source_c2w[:, :1]  # the scene frame
        regression = model.render(scene, target_c2w, k[:, :1], HW, normalized=True)
        sources = model.render(scene, scene.source_c2w, k, HW, normalized=True)

    def at_depth(c2w, k, depth):  # points [1, v, h, w, 3] at these depths along the rays
        v = c2w.shape[1]
        return rgbd.unproject_depth(torch.tensor(depth).view(1, v, 1, 1).expand(1, v, *HW), k, c2w)

    regression = dataclasses.replace(regression, points=at_depth(target_c2w, k[:, :1], [2.0]))
    sources = dataclasses.replace(sources, points=at_depth(scene.source_c2w, k, [1.0, 0.01]))
    options = dict(normalized=True, source_fxfycxcy=k, regression=regression, sources=sources)
    masks = {
        tolerance: sample_views(
            model, scene, target_c2w, k[:, :1], HW, mask_tolerance=tolerance, **options, **FAST
        ).mask
        for tolerance in (0.5, 2.0)
    }
    assert torch.all(masks[0.5] == 1) and torch.all(masks[2.0] == 0)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="mask tolerance must be a finite number >= 0"):
            sample_views(model, scene, target_c2w, k[:, :1], HW, mask_tolerance=bad, **options)


def test_confidence_mask_and_soft_edges(model, scene, views):
    conf = draw(model, scene, views, mask_mode="confidence").regression.conf  # (1, t, h, w)
    threshold = conf[0, 0].flatten().median().item()
    out = draw(model, scene, views, mask_mode="confidence", conf_threshold=threshold)
    below = conf < threshold
    assert torch.all(out.mask[below] == 1)  # every unsure pixel is generated
    near = torch.nn.functional.max_pool2d(below[0].float(), 5, stride=1, padding=2) > 0
    assert torch.all(out.mask[0][~near] == 0)  # the edge reaches two pixels into the rest
    soft = out.mask[(out.mask > 0) & (out.mask < 1)]
    assert soft.numel() > 0  # the edge fades into the seen region
    above_all = 2 * conf.max().item()
    everything = draw(model, scene, views, mask_mode="confidence", conf_threshold=above_all)
    assert torch.all(everything.mask == 1)


def test_renders_the_caller_has_give_the_same_samples(model, scene, views):
    c2w, k = targets(views)
    source_k = views.fxfycxcy[None, :2]
    with torch.no_grad():
        regression = model.render(scene, c2w, k, HW)
        sources = model.render(scene, scene.source_c2w, source_k, HW, normalized=True)
    own = draw(model, scene, views, seed=1, source_fxfycxcy=source_k)
    given = draw(
        model, scene, views, seed=1, source_fxfycxcy=source_k, regression=regression,
        sources=sources,
    )  # fmt: skip
    assert given.regression is regression and own.mask is not None
    assert torch.equal(own.rgb, given.rgb) and torch.equal(own.mask, given.mask)
    with torch.no_grad():
        one_view = model.render(scene, c2w[:, :1], k[:, :1], HW)
    with pytest.raises(ValueError, match=r"regression render must be \[1, 2, 3, 32, 32\]"):
        draw(model, scene, views, regression=one_view)


def test_pose_free_auto_mask_uses_the_estimated_cameras(model, views):
    with torch.no_grad():
        scene = model.encode(views.images[None, :2])
    assert scene.source_c2w is not None  # the camera head's estimate
    # A target at source 0's estimated camera, with the default intrinsics pose-free
    # sources are rendered at, sees what source 0 saw.
    k = default_intrinsics(HW)[None, None]  # (1, 1, 4)
    out = sample_views(model, scene, scene.source_c2w[:, :1], k, HW, normalized=True, **FAST)
    assert out.mask.shape == (1, 1, *HW) and 0 <= out.mask.min() <= out.mask.max() <= 1
    unseen = unseen_region(model, scene, out.regression, scene.source_c2w[:, :1], k, HW)
    assert unseen.float().mean() < 0.01 and out.mask.mean() < 0.01


# --------------------------------------------------------------------------------------
# Cache reuse, progress, cancellation
# --------------------------------------------------------------------------------------


def count_calls(obj, name: str, counter: Counter, key: str) -> None:
    method = getattr(obj, name)

    def counted(*args, **kwargs):
        counter[key] += 1
        return method(*args, **kwargs)

    setattr(obj, name, counted)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_encoder_and_source_stream_run_once(views, guidance):
    model = tiny_model()
    calls = Counter()
    model.encoder.register_forward_hook(lambda *_: calls.update(["encoder"]))
    count_calls(model.decoder, "prepare_sources", calls, "regression sources")
    count_calls(model.diffusion.decoder, "prepare_sources", calls, "diffusion sources")
    count_calls(model.diffusion, "denoise", calls, "denoise")
    steps = 3
    with torch.no_grad():
        scene = model.encode(views.images[None, :2], views.c2w[None, :2], views.fxfycxcy[None, :2])
    sample_views(
        model, scene, *targets(views), HW, num_samples=3, steps=steps, scheduler="ddim",
        guidance_scale=guidance, max_batch=2,
    )  # fmt: skip
    guided = guidance != 1
    assert calls == {
        "encoder": 1,
        "regression sources": 1,
        # With guidance the null sources are prepared once too, for every batch.
        "diffusion sources": 1 + guided,
        # DDIM calls the network once a step; the patch shift averages len(FINAL_SHIFTS)
        # grid offsets at the last one.
        "denoise": 2 * (steps - 1 + len(FINAL_SHIFTS)) * (1 + guided),
    }


def test_progress_counts_over_batches_and_stop_cancels(model, scene, views):
    seen = []
    draw(model, scene, views, num_samples=2, max_batch=1, mask_mode="off", callback=seen.append)
    assert [(info.step, info.num_steps) for info in seen] == [(i, 4) for i in range(4)]
    assert seen[0].x0_pred.shape == (2, 6, *HW)  # one sample's two targets

    def stop(info):
        return samplers.STOP if info.step == 0 else None

    with pytest.raises(samplers.SamplingCancelled):
        draw(model, scene, views, callback=stop)


# --------------------------------------------------------------------------------------
# Errors and helpers
# --------------------------------------------------------------------------------------


def test_errors_name_the_problem(model, scene, views):
    with pytest.raises(ValueError, match="unknown sampler 'plms'.*'dpmpp-2m'"):
        draw(model, scene, views, scheduler="plms")
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        draw(model, scene, views, steps=0)
    with pytest.raises(ValueError, match="guidance scale must be a finite number >= 0, got -1"):
        draw(model, scene, views, guidance_scale=-1.0)
    with pytest.raises(ValueError, match=r"mask must be \[1, 2, 32, 32\].*got \[1, 2, 16, 16\]"):
        draw(model, scene, views, mask=torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="mask mode must be one of"):
        draw(model, scene, views, mask_mode="depth")
    with pytest.raises(ValueError, match="give a mask or a mask mode"):
        draw(model, scene, views, mask=torch.zeros(1, 2, *HW), mask_mode="off")
    per_sample = per_sample_bytes(model, scene)
    with pytest.raises(ValueError, match="1 sample.* 0 sample\\(s\\) fit; draw fewer target"):
        draw(model, scene, views, num_samples=10, memory_budget=per_sample - 1)
    with pytest.raises(ValueError, match="5 sample.* 3 sample\\(s\\) fit; set max_batch .* 3"):
        draw(model, scene, views, num_samples=10, max_batch=5, memory_budget=3 * per_sample + 1)
    regression = tiny_model(diffusion=False)
    with torch.no_grad():
        plain = regression.encode(
            views.images[None, :2], views.c2w[None, :2], views.fxfycxcy[None, :2]
        )
    with pytest.raises(ValueError, match="regression model .* cannot sample"):
        sample_views(regression, plain, *targets(views), HW)
    with pytest.raises(ValueError, match="not encoded for this model's diffusion decoder"):
        sample_views(tiny_model(), scene, *targets(views), HW)
    with pytest.raises(ValueError, match="patch_shift must be True or False, got 'yes'"):
        draw(model, scene, views, patch_shift="yes")


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_options_are_refused_before_any_rendering(model, scene, views, value):
    # NaN passed the old `< 0` checks: black samples (guidance, eta) or an empty mask
    # (the confidence threshold), with exit code 0.
    calls = []
    counting = copy.copy(model)
    counting.render = lambda *args, **kwargs: calls.append(args)
    cases = {
        "guidance_scale": "guidance scale must be a finite number >= 0",
        "eta": "eta must be a finite number >= 0",
        "conf_threshold": "confidence threshold must be a finite number > 1",
        "mask_tolerance": "mask tolerance must be a finite number >= 0",
    }
    for option, message in cases.items():
        with pytest.raises(ValueError, match=f"{message}.*got {value}"):
            draw(counting, scene, views, mask_mode="confidence", **{option: value})
    assert calls == []


def test_a_confidence_threshold_at_or_below_one_is_refused(model, scene, views):
    # The point head's confidence is 1 + exp(x) > 1: no pixel falls below 1, and the
    # "confidence" mask would silently generate nothing.
    for bad in (1.0, 0.5, -3.0):
        with pytest.raises(ValueError, match=f"threshold must be a finite number > 1.*got {bad}"):
            check_sampling_options(conf_threshold=bad)
    with pytest.raises(ValueError, match="confidence threshold must be a finite number > 1"):
        unseen_region(model, scene, None, None, None, HW, mode="confidence", conf_threshold=1.0)
    check_sampling_options(conf_threshold=1.5)


def test_sampling_config_checks_seed_and_eta():
    # Sample k uses seed + k: every one must be a seed a torch generator takes.
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64 - 4\].*got 18446"):
        SamplingConfig(seed=2**64 - 2, samples=4)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64 - 1\].*got -1"):
        SamplingConfig(seed=-1, samples=1)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0, got nan"):
        SamplingConfig(sampler="ddim", eta=math.nan)
    with pytest.raises(ValueError, match="guidance scale must be a finite number >= 0, got inf"):
        SamplingConfig(guidance=math.inf)
    assert SamplingConfig(seed=2**64 - 4, samples=4).seed == 2**64 - 4


# --------------------------------------------------------------------------------------
# Patch shift
# --------------------------------------------------------------------------------------

P, GRID = 4, 8  # patch and target grid of the patch-shift tests


def shift_fixture(final_timestep: float = 49.0, value: float = 0.0):
    """A shifted model_fn over a fake network that records its windows and predicts its
    input plus `value` times the window's first row index on the canvas (which says
    where the window sat). Canvas rays hold each cell's canvas row and column."""
    size = GRID + 2 * P
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    rays = torch.zeros(1, 2, 6, size, size)
    rays[:, :, 0], rays[:, :, 1] = rows.float(), cols.float()
    canvas = torch.randn(1, 2, 3, size, size, generator=torch.Generator().manual_seed(0))
    seen = []

    def make_fn(window_rays):
        def fn(x, timesteps, conditional):
            seen.append((window_rays, x))
            return x + value * window_rays[0, 0, 0, 0, 0]

        return fn

    alphas_cumprod = model_scheduler(tiny_model(diffusion=True), "ddpm").alphas_cumprod
    model_fn = shifted_model_fn(make_fn, canvas, rays, alphas_cumprod, P, final_timestep)
    return model_fn, canvas, seen


def test_patch_shift_puts_the_target_where_its_rays_are_and_crops_it_back():
    model_fn, canvas, seen = shift_fixture(final_timestep=-1.0)  # one grid, even at t = 0
    x_t = torch.randn(3 * 2, 3, GRID, GRID)  # 3 samples of 1 scene x 2 targets
    out = model_fn(x_t, torch.full((6,), 0.0), True)
    assert torch.equal(out, x_t)  # the fake predicts its input: the crop is exact
    ((window_rays, x),) = seen
    assert window_rays.shape[-2:] == x.shape[-2:] == (GRID + P, GRID + P)
    oy, ox = P - int(window_rays[0, 0, 0, 0, 0]), P - int(window_rays[0, 0, 1, 0, 0])
    assert 0 <= oy < P and 0 <= ox < P
    assert torch.equal(x[:, :, oy : oy + GRID, ox : ox + GRID], x_t)
    # Around the target the window holds the canvas: at timestep 0 barely noised.
    around = canvas[0, :, :, P - oy : P - oy + GRID + P, P - ox : P - ox + GRID + P]
    inside = torch.zeros(GRID + P, GRID + P, dtype=torch.bool)
    inside[oy : oy + GRID, ox : ox + GRID] = True
    for sample in range(3):
        rows = x[2 * sample : 2 * sample + 2]
        assert torch.allclose(rows[..., ~inside], around[..., ~inside], atol=0.05)


def test_patch_shift_noises_the_canvas_to_the_calls_level_and_moves_the_grid():
    model_fn, canvas, seen = shift_fixture()
    canvas.fill_(3.0)  # a constant canvas: the ring's mean and spread give the level
    alphas_cumprod = model_scheduler(tiny_model(diffusion=True), "ddpm").alphas_cumprod
    x_t = torch.zeros(2, 3, GRID, GRID)
    for t in (999, 500):
        model_fn(x_t, torch.full((2,), float(t)), True)
        window_rays, x = seen[-1]
        oy, ox = P - int(window_rays[0, 0, 0, 0, 0]), P - int(window_rays[0, 0, 1, 0, 0])
        ring = torch.ones(GRID + P, GRID + P, dtype=torch.bool)
        ring[oy : oy + GRID, ox : ox + GRID] = False
        alpha_bar = alphas_cumprod[t].item()
        assert x[..., ring].mean().item() == pytest.approx(3 * alpha_bar**0.5, abs=0.15)
        assert x[..., ring].std().item() == pytest.approx((1 - alpha_bar) ** 0.5, rel=0.15)
        # Guidance's unconditional branch sees the same window and ring.
        model_fn(x_t, torch.full((2,), float(t)), False)
        assert torch.equal(seen[-1][0], window_rays) and torch.equal(seen[-1][1], x)
    offsets = {}
    for t in range(100, 1000, 50):
        model_fn(x_t, torch.full((2,), float(t)), True)
        offsets[t] = tuple(seen[-1][0][0, 0, :2, 0, 0].tolist())
        model_fn(x_t, torch.full((2,), float(t)), True)  # the same timestep: the same grid
        assert tuple(seen[-1][0][0, 0, :2, 0, 0].tolist()) == offsets[t]
    assert len(set(offsets.values())) >= 4


def test_patch_shift_canvas_rays_are_the_targets_rays_around_them(model, scene, views, monkeypatch):
    import gen_nvs.sampling

    captured = {}
    original = gen_nvs.sampling.shifted_model_fn

    def spy(make_fn, canvas, canvas_rays, *args, **kwargs):
        captured.update(canvas=canvas, rays=canvas_rays)
        return original(make_fn, canvas, canvas_rays, *args, **kwargs)

    monkeypatch.setattr(gen_nvs.sampling, "shifted_model_fn", spy)
    draw(model, scene, views, mask_mode="off", steps=1)
    p = model.diffusion.decoder.patch_size
    c2w, fxfycxcy = targets(views)
    own = model.target_rays(scene.scene_frame(c2w, False), fxfycxcy, HW)
    assert captured["rays"].shape[-2:] == (HW[0] + 2 * p, HW[1] + 2 * p)
    assert torch.allclose(captured["rays"][..., p : p + HW[0], p : p + HW[1]], own, atol=1e-5)
    assert captured["canvas"].shape[:3] == (1, 2, model.diffusion.noise_channels)


def test_patch_shift_averages_four_grids_at_the_last_step():
    model_fn, _, seen = shift_fixture(final_timestep=49.0, value=1.0)
    x_t = torch.randn(2, 3, GRID, GRID)
    out = model_fn(x_t, torch.full((2,), 49.0), False)
    starts = sorted(tuple(rays[0, 0, :2, 0, 0].tolist()) for rays, _ in seen)
    assert starts == sorted((P - dy * P, P - dx * P) for dy, dx in FINAL_SHIFTS)
    mean_start = sum(P - dy * P for dy, _ in FINAL_SHIFTS) / len(FINAL_SHIFTS)
    assert torch.allclose(out, x_t + mean_start)  # the mean of the four predictions


def test_patch_shift_checks_its_shapes():
    model_fn, _, _ = shift_fixture()
    with pytest.raises(
        ValueError, match=r"x_t must be \[samples \* 2, 3, 8, 8\], got \[2, 3, 8, 9\]"
    ):
        model_fn(torch.zeros(2, 3, GRID, GRID + 1), torch.zeros(2), True)
    with pytest.raises(ValueError, match=r"canvas rays must be \[1, 1, 6, 16, 16\]"):
        shifted_model_fn(lambda r: None, torch.zeros(1, 1, 3, 16, 16), torch.zeros(1, 1, 6, 16, 15),
                         torch.ones(10), P, 0.0)  # fmt: skip
    with pytest.raises(ValueError, match="at least 1 x 1 cells inside a 4-cell border"):
        shifted_model_fn(lambda r: None, torch.zeros(1, 1, 3, 8, 8), torch.zeros(1, 1, 6, 8, 8),
                         torch.ones(10), P, 0.0)  # fmt: skip


def test_patch_shift_changes_the_generated_region_only(model, scene, views):
    mask = torch.zeros(1, 2, *HW)
    mask[..., :, HW[1] // 2 :] = 1
    shifted = draw(model, scene, views, num_samples=2, mask=mask)
    fixed = draw(model, scene, views, num_samples=2, mask=mask, patch_shift=False)
    kept = slice(None, HW[1] // 2)  # the columns the mask keeps
    for out in (shifted, fixed):
        expected = shifted.regression.rgb[..., kept].expand_as(out.rgb[..., kept])
        assert torch.allclose(out.rgb[..., kept], expected, atol=1e-5)
    assert not torch.allclose(shifted.rgb, fixed.rgb, atol=1e-3)


def test_schedulers_follow_the_models_noise_schedule(model, scene, views, monkeypatch):
    prediction = model.diffusion.prediction_type
    default = draw(model, scene, views, seed=1, mask_mode="off")
    schedule = {"prediction_type": prediction, "beta_schedule": "scaled_linear"}
    monkeypatch.setattr(model, "noise_schedule", schedule)
    assert model_scheduler(model, "ddim").config.beta_schedule == "scaled_linear"
    scaled = draw(model, scene, views, seed=1, mask_mode="off")
    given = draw(
        model, scene, views, seed=1, mask_mode="off",
        scheduler=samplers.build_scheduler("ddim", **schedule),
    )  # fmt: skip
    assert torch.equal(scaled.rgb, given.rgb)
    assert (scaled.rgb - default.rgb).abs().max() > 1e-3
    other = "epsilon" if prediction != "epsilon" else "v_prediction"
    monkeypatch.setattr(model, "noise_schedule", {"prediction_type": other})
    with pytest.raises(ValueError, match=f"noise schedule has prediction_type '{other}'"):
        draw(model, scene, views)


def test_a_scheduler_must_run_the_models_prediction_type_and_schedule(model, scene, views):
    prediction = model.diffusion.prediction_type
    other = "epsilon" if prediction != "epsilon" else "v_prediction"
    with pytest.raises(ValueError, match=f"expects prediction_type '{other}'"):
        draw(model, scene, views, scheduler=samplers.build_scheduler("ddim", prediction_type=other))
    scaled = samplers.build_scheduler(
        "ddim", prediction_type=prediction, beta_schedule="scaled_linear"
    )
    with pytest.raises(ValueError, match="runs another noise schedule"):
        draw(model, scene, views, scheduler=scaled)


def test_scene_to_world_inverts_the_normalisation(scene, views):
    centres = views.c2w[None, :2, :3, 3]  # (1, 2, 3) world
    normalized = scene.normalize(views.c2w[None, :2])[..., :3, 3]
    assert torch.allclose(scene_to_world(scene, normalized), centres, atol=1e-4)


def test_memory_estimate_grows_with_size_and_guidance(model):
    small = estimate_sample_bytes(model.diffusion, 100, (32, 32), 1)
    assert estimate_sample_bytes(model.diffusion, 100, (64, 64), 1) > 3 * small
    assert estimate_sample_bytes(model.diffusion, 100, (32, 32), 2) == 2 * small
    assert estimate_sample_bytes(model.diffusion, 100, (32, 32), 1, guided=True) > small


def test_shared_noise_gives_every_view_of_a_sample_the_same_seed():
    from gen_nvs.sampling import sample_seeds

    independent = sample_seeds(3, range(2), 4)
    shared = sample_seeds(3, range(2), 4, noise="shared")
    assert len(set(independent[:4])) == 4  # each view its own
    assert shared[:4] == [independent[0]] * 4 and shared[4:] == [independent[4]] * 4
    with pytest.raises(ValueError, match="noise must be one of"):
        sample_seeds(3, range(1), 2, noise="same")


def test_flicker_benchmark_reports_ratios_to_the_truth():
    import argparse

    from gen_nvs.bench.flicker import run_flicker_bench

    args = argparse.Namespace(checkpoint=None, scenes=1, frames=3, degrees=20.0, steps=1, size=32)
    report = run_flicker_bench(args)
    change = report["mean_abs_frame_change"]
    assert set(change) == {
        "truth",
        "regression",
        "samples_independent_noise",
        "samples_shared_noise",
    }
    assert all(value > 0 for value in change.values())
    assert report["ratio_to_truth"]["truth"] == 1.0


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(frames=1), r"--frames in 2..10000 .* got 1, 1 and 1"),
        (dict(frames=10**7), r"--frames in 2..10000 .* got 1, 10000000 and 1"),
        (dict(size=100000), r"--size 100000 100000 must be between 1 and 4096"),
    ],
)
def test_flicker_benchmark_refuses_bad_options_before_loading(change, message, monkeypatch):
    import argparse

    from gen_nvs.bench.flicker import run_flicker_bench
    from gen_nvs.pipeline import NVSPipeline

    monkeypatch.setattr(NVSPipeline, "from_pretrained", pytest.fail)  # never reached
    args = dict(checkpoint=None, scenes=1, frames=3, degrees=20.0, steps=1, size=32)
    with pytest.raises(ValueError, match=message):
        run_flicker_bench(argparse.Namespace(**{**args, **change}))
