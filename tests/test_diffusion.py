"""Diffusion decoder: exact conversion, timestep modulation, cache reuse, CFG, loss."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest
import torch
from einops import rearrange

import samplers
from gen_nvs.geometry import cameras as cam
from gen_nvs.models.cache import SceneCache
from gen_nvs.models.config import DecoderConfig, model_config
from gen_nvs.models.decoder import VARIANTS, HighwayDecoder
from gen_nvs.models.diffusion import (
    DiffusionDecoder,
    from_diffusion_space,
    make_model_fn,
    to_diffusion_space,
)
from gen_nvs.models.encoder import VGGTEncoder
from gen_nvs.models.losses import DenoisingLoss
from samplers.denoiser import prediction_to_x0

WIDTH, HW = 32, (8, 8)


def regression_decoder(variant: str, point_head: bool = True) -> HighwayDecoder:
    torch.manual_seed(0)
    return HighwayDecoder(
        variant=variant, width=WIDTH, depth=2, num_heads=2, patch_size=4, point_head=point_head
    ).eval()


def diffusion_decoder(variant: str, **kwargs) -> DiffusionDecoder:
    torch.manual_seed(1)
    return DiffusionDecoder.from_regression(regression_decoder(variant), **kwargs).eval()


def inputs(b: int = 2, t: int = 2, k: int = 6, seed: int = 2):
    """(source tokens [b, 2, 3, c], x_t [b, t, ch, h, w], timesteps [b, t], rays)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, 2, 3, WIDTH, generator=g)
    x_t = torch.randn(b, t, k, *HW, generator=g)
    timesteps = torch.randint(0, 1000, (b, t), generator=g).float()
    rays = torch.randn(b, t, 6, *HW, generator=g)
    return tokens, x_t, timesteps, rays


def denoiser(model_fn, prediction_type: str) -> samplers.Denoiser:
    """`model_fn` as a denoiser trained on the default noise schedule."""
    alphas_cumprod = samplers.build_scheduler("ddpm").alphas_cumprod
    return samplers.Denoiser(model_fn, prediction_type, alphas_cumprod)


def perturb(model: DiffusionDecoder, *names: str, std: float = 0.1) -> None:
    """Training-like change of the zero-initialised (or null) parameters under `names`."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(names):
                param.add_(torch.randn(param.shape, generator=g) * std)


# --------------------------------------------------------------------------------------
# Conversion from the regression decoder
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_fresh_conversion_renders_exactly_as_the_regression_decoder(variant):
    regression = regression_decoder(variant)
    model = DiffusionDecoder.from_regression(regression).eval()
    tokens, x_t, timesteps, rays = inputs()
    with torch.no_grad():
        expected = regression(tokens, rays)
        cache = SceneCache.build(model.decoder, tokens)
        views = model.denoise_views(cache, x_t, timesteps, rays)
        prediction = model.denoise(cache, 5 * x_t, timesteps.flatten() + 7, rays)
    assert torch.equal(views.rgb, expected.rgb)
    assert torch.equal(views.points, expected.points)
    assert torch.equal(views.conf, expected.conf)
    # Any noise, any timestep: the x0 prediction is the regression render in diffusion space.
    assert torch.equal(prediction[:, :, :3], expected.rgb * 2 - 1)
    assert torch.equal(from_diffusion_space(prediction)[1], expected.points)


def test_conversion_copies_the_regression_decoder_and_rebuilds_from_its_config():
    regression = regression_decoder("causal")
    model = diffusion_decoder("causal", prediction_type="v_prediction", noise_channels=3)
    assert model.decoder is not regression
    perturb(model, "decoder.tgt_embedder", "block_modulation", "noise_embedder")
    assert not torch.equal(
        model.decoder.tgt_embedder.proj.weight, regression.tgt_embedder.proj.weight
    )

    options = model.config  # JSON, as an export holds it; typed again to rebuild
    decoder = DecoderConfig.from_dict(options.pop("decoder"), "decoder")
    rebuilt = DiffusionDecoder(decoder=decoder, **options).eval()
    rebuilt.load_state_dict(model.state_dict())
    tokens, x_t, timesteps, rays = inputs(k=3)
    with torch.no_grad():
        a = model.denoise(model.decoder.prepare_sources(tokens), x_t, timesteps, rays)
        b = rebuilt.denoise(rebuilt.decoder.prepare_sources(tokens), x_t, timesteps, rays)
    assert rebuilt.config["prediction_type"] == "v_prediction" and a.shape == x_t.shape
    assert torch.equal(a, b)


@pytest.mark.parametrize("variant", ["causal", "full_attention"])
def test_modulation_and_noise_embedding_take_effect_once_trained(variant):
    model = diffusion_decoder(variant)
    tokens, x_t, timesteps, rays = inputs()
    context = model.decoder.prepare_sources(tokens)

    def run(x, t):
        with torch.no_grad():
            return model.denoise(context, x, t, rays)

    fresh = run(x_t, timesteps)
    assert torch.equal(fresh, run(x_t, timesteps + 100))  # zero-init: t has no effect yet
    perturb(model, "block_modulation", "head_modulation")
    timed = run(x_t, timesteps)
    assert not torch.allclose(timed, fresh, atol=1e-4)
    assert not torch.allclose(timed, run(x_t, timesteps + 100), atol=1e-4)
    assert torch.equal(timed, run(2 * x_t, timesteps))  # the noisy input is still unseen
    perturb(model, "noise_embedder")
    assert not torch.allclose(run(x_t, timesteps), run(2 * x_t, timesteps), atol=1e-4)


def test_zero_initialised_layers_receive_gradients():
    model = diffusion_decoder("cross_attention").train()
    tokens, x_t, timesteps, rays = inputs()
    model(
        tokens, x_t, timesteps, rays, generator=torch.Generator().manual_seed(0)
    ).square().sum().backward()
    for name in (
        "noise_embedder.weight",
        "block_modulation.0.weight",
        "head_modulation.rgb.weight",
    ):
        assert model.get_parameter(name).grad.abs().max() > 0, name


# --------------------------------------------------------------------------------------
# Sampling: one source pass per run, guidance
# --------------------------------------------------------------------------------------


def count_calls(obj, name: str, counter: Counter, key: str) -> None:
    method = getattr(obj, name)

    def counted(*args, **kwargs):
        counter[key] += 1
        return method(*args, **kwargs)

    setattr(obj, name, counted)


@pytest.mark.parametrize("variant", ["causal", "cross_attention"])
def test_encoder_and_source_stream_run_once_for_all_samples_and_steps(variant):
    model = diffusion_decoder(variant, prediction_type="v_prediction")
    perturb(model, "block_modulation", "noise_embedder")
    torch.manual_seed(4)
    tiny = model_config("tiny").encoder
    encoder = VGGTEncoder(**replace(tiny, out_dim=WIDTH, image_size=28).kwargs()).eval()
    calls = Counter()
    encoder.register_forward_hook(lambda *_: calls.update(["encoder"]))
    count_calls(model.decoder, "prepare_sources", calls, "prepare_sources")
    count_calls(model, "denoise", calls, "denoise")
    *updating, last = model.decoder.blocks
    for block in updating:
        count_calls(
            block,
            "source_kv" if variant == "cross_attention" else "forward_with_kv",
            calls,
            "source block",
        )
    count_calls(
        last, "source_kv" if variant == "cross_attention" else "keys_values", calls, "source block"
    )

    b, t, samples, steps = 1, 2, 2, 3
    images = torch.rand(b, 2, 3, 28, 28)
    with torch.no_grad():
        tokens = encoder(images, cam.pose_free_camera_tokens(2).expand(b, 2, -1)).tokens
        cache = SceneCache.build(model.decoder, tokens)
        null = model.null_context(b, cache.num_source_tokens)
        rays = torch.randn(b, t, 6, *HW, generator=torch.Generator().manual_seed(5))
        out = samplers.sample(
            denoiser(make_model_fn(model, cache, null, rays), "v_prediction"),
            shape=(6, *HW),
            num_samples=samples * b * t,
            scheduler=samplers.build_scheduler("ddim", prediction_type="v_prediction"),
            steps=steps,
            guidance_scale=2.0,
        )
    assert out.shape == (samples * b * t, 6, *HW) and torch.isfinite(out).all()
    # One conditional and one null source pass; every step calls both branches.
    depth = len(model.decoder.blocks)
    assert calls == {
        "encoder": 1,
        "prepare_sources": 2,
        "source block": 2 * depth,
        "denoise": 2 * steps,
    }


def test_null_context_is_the_training_time_dropout_and_is_used_unconditionally():
    model = diffusion_decoder("causal", cond_dropout=1.0)
    perturb(model, "block_modulation", "null_tokens", std=0.5)
    tokens, x_t, timesteps, rays = inputs()
    b, s, p = tokens.shape[:3]
    with torch.no_grad():
        context = model.decoder.prepare_sources(tokens)
        null = model.null_context(b, s * p)
        dropped = model.decoder.prepare_sources(
            model.drop_sources(tokens, torch.ones(b, dtype=torch.bool))
        )
        for (k0, v0), (k1, v1) in zip(null.kv, dropped.kv, strict=True):
            assert torch.equal(k0, k1) and torch.equal(v0, v1)

        cond = model.denoise(context, x_t, timesteps, rays)
        uncond = model.denoise(context, x_t, timesteps, rays, conditional=False, null_context=null)
        assert torch.equal(uncond, model.denoise(null, x_t, timesteps, rays))
        assert torch.equal(uncond, model.denoise(context, x_t, timesteps, rays, conditional=False))
        assert not torch.allclose(cond, uncond, atol=1e-4)
        # Training with dropout probability 1 (0): always the null (the given) sources.
        assert torch.equal(model.train()(tokens, x_t, timesteps, rays), uncond)
        model.cond_dropout = 0.0
        assert torch.equal(model(tokens, x_t, timesteps, rays), cond)
        half = model.drop_sources(tokens, torch.tensor([True, False]))
        assert torch.equal(half[1], tokens[1]) and torch.equal(
            half[0, 1, 2], model.null_tokens[0, 0]
        )


def test_model_fn_layout_and_guidance_through_the_sampler():
    model = diffusion_decoder("cross_attention", prediction_type="epsilon")
    perturb(model, "block_modulation", "noise_embedder", "null_tokens", std=0.5)
    tokens, _, _, rays = inputs(b=2, t=3)
    b, t, samples = 2, 3, 2
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        context = model.decoder.prepare_sources(tokens)
        null = model.null_context(b, context.tokens.shape[1])
        model_fn = make_model_fn(model, context, null, rays)
        # Rows are (samples, scenes, targets): each sample's rows match a direct call.
        x = torch.randn(samples * b * t, 6, *HW, generator=g)
        steps = torch.arange(samples * b * t).float() * 50
        out = model_fn(x, steps, False)
        per_sample = rearrange(x, "(s b t) k h w -> s b t k h w", b=b, t=t)
        per_steps = rearrange(steps, "(s b t) -> s b t", b=b, t=t)
        direct = model.denoise(null, per_sample[1], per_steps[1], rays)
        out = rearrange(out, "(s b t) k h w -> s b t k h w", b=b, t=t)
        # Batched with the other sample, so equal up to rounding.
        assert torch.allclose(out[1], direct, atol=1e-5)
        assert not torch.allclose(out[0], direct, atol=1e-2)

        unguided = [lambda x, t, c: model_fn(x, t, True), model_fn]
        runs = [
            samplers.sample(
                denoiser(fn, "epsilon"),
                shape=(6, *HW),
                num_samples=samples * b * t,
                steps=2,
                guidance_scale=scale,
            )
            for fn, scale in [(unguided[0], 1.0), (model_fn, 1.0), (model_fn, 3.0)]
        ]
    assert torch.equal(runs[0], runs[1])  # scale 1 is the conditional prediction
    assert not torch.allclose(runs[1], runs[2], atol=1e-4)


def test_tiny_end_to_end_sampling_gives_finite_rgbd():
    model = diffusion_decoder("bidirectional_cross_attention", prediction_type="sample")
    perturb(model, "block_modulation", "noise_embedder")
    tokens, _, _, rays = inputs(b=1, t=1)
    with torch.no_grad():
        cache = SceneCache.build(model.decoder, tokens)
        out = samplers.sample(
            denoiser(make_model_fn(model, cache, None, rays), "sample"),
            shape=(6, *HW),
            num_samples=2,
            seeds=[10, 11],
            scheduler=samplers.build_scheduler("dpmpp-2m", prediction_type="sample"),
            steps=3,
        )
    assert out.shape == (2, 6, *HW) and torch.isfinite(out).all()
    rgb, points = from_diffusion_space(rearrange(out, "(s b t) k h w -> b (s t) k h w", b=1, t=1))
    assert rgb.shape == (1, 2, 3, *HW) and points.shape == (1, 2, *HW, 3)


def test_diffusion_space_round_trip():
    g = torch.Generator().manual_seed(7)
    rgb = torch.rand(1, 2, 3, *HW, generator=g)
    points = torch.randn(1, 2, *HW, 3, generator=g) * 20
    x0 = to_diffusion_space(rgb, points)
    assert x0.shape == (1, 2, 6, *HW) and x0[:, :, :3].abs().max() <= 1
    back_rgb, back_points = from_diffusion_space(x0)
    assert torch.allclose(back_rgb, rgb, atol=1e-6)
    assert torch.allclose(back_points, points, rtol=1e-5, atol=1e-5)
    assert from_diffusion_space(to_diffusion_space(rgb))[1] is None


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_invalid_inputs_raise_value_errors():
    model = diffusion_decoder("cross_attention")
    tokens, x_t, timesteps, rays = inputs()
    context = model.decoder.prepare_sources(tokens)
    with pytest.raises(ValueError, match=r"x_t must be \[2, 2, 6, 8, 8\].*got \[2, 2, 3, 8, 8\]"):
        model.denoise(context, x_t[:, :, :3], timesteps, rays)
    with pytest.raises(ValueError, match=r"timesteps must be \[4\] or \[2, 2\].*got \[2\]"):
        model.denoise(context, x_t, timesteps[:, 0], rays)
    with pytest.raises(ValueError, match="needs a DiffusionDecoder, got HighwayDecoder"):
        make_model_fn(regression_decoder("cross_attention"), context, None, rays)
    with pytest.raises(ValueError, match="another decoder"):
        model.denoise(
            SceneCache.build(regression_decoder("cross_attention"), tokens), x_t, timesteps, rays
        )
    with pytest.raises(ValueError, match="null context must hold 2 scenes x 6"):
        model.denoise(
            context, x_t, timesteps, rays, conditional=False, null_context=model.null_context(2, 1)
        )
    with pytest.raises(ValueError, match="guidance needs a null context"):
        make_model_fn(model, context, None, rays)(
            rearrange(x_t, "b t k h w -> (b t) k h w"), timesteps.flatten(), False
        )
    with pytest.raises(ValueError, match="regression HighwayDecoder, got DiffusionDecoder"):
        DiffusionDecoder.from_regression(model)
    with pytest.raises(ValueError, match="needs a decoder with point_head=True"):
        DiffusionDecoder.from_regression(regression_decoder("causal", point_head=False))
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        DiffusionDecoder(decoder=DecoderConfig(**model.decoder.config), prediction_type="x0")
    with pytest.raises(ValueError, match="needs prediction_type 'sample'"):
        diffusion_decoder("causal", prediction_type="epsilon").denoise_views(
            context, x_t, timesteps, rays
        )


# --------------------------------------------------------------------------------------
# Denoising loss
# --------------------------------------------------------------------------------------


def noisy_batch(seed: int = 8):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, 3, 6, 4, 4, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    alpha_bar = torch.rand(2, 3, generator=g) * 0.98 + 0.01
    return x0, noise, alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_perfect_prediction_has_zero_loss(prediction_type, weighting):
    loss = DenoisingLoss(prediction_type=prediction_type, weighting=weighting)
    x0, noise, alpha, sigma = noisy_batch()
    perfect = loss.target(x0, noise, alpha, sigma)
    # The target is the prediction the sampler turns back into x0.
    x_t = alpha[..., None, None, None] * x0 + sigma[..., None, None, None] * noise
    for i in range(2):
        a, s = alpha[i, 0].item(), sigma[i, 0].item()
        recovered = prediction_to_x0(prediction_type, perfect[i, 0], x_t[i, 0], a, s)
        assert torch.allclose(recovered, x0[i, 0], atol=1e-4)
    assert loss(perfect, x0, noise, alpha, sigma).item() == 0
    assert loss(perfect + 0.1, x0, noise, alpha, sigma).item() > 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_target_is_the_one_training_used(prediction_type):
    """The denoising loss's target, now taken from `samplers.denoiser`, equals what the
    training objective computed before, at the DDPM levels `noise_targets` draws."""
    g = torch.Generator().manual_seed(9)
    x0 = torch.randn(2, 3, 6, 4, 4, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    alphas_cumprod = samplers.build_scheduler("ddpm").alphas_cumprod.float()
    alpha_bar = alphas_cumprod[torch.tensor([[0, 250, 999], [10, 500, 998]])]
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    a, s = alpha[..., None, None, None], sigma[..., None, None, None]
    before = {"epsilon": noise, "v_prediction": a * noise - s * x0, "sample": x0}
    target = DenoisingLoss(prediction_type=prediction_type).target(x0, noise, alpha, sigma)
    assert torch.equal(target, before[prediction_type])


def test_min_snr_weights_on_known_values():
    # SNR 1, 10, 0 (pure noise) and inf (clean); gamma 5.
    alpha = torch.tensor([math.sqrt(0.5), math.sqrt(10 / 11), 0.0, 1.0])
    sigma = torch.tensor([math.sqrt(0.5), math.sqrt(1 / 11), 1.0, 0.0])
    expected = {
        "sample": [1.0, 5.0, 0.0, 5.0],
        "epsilon": [1.0, 0.5, 1.0, 0.0],
        "v_prediction": [0.5, 5 / 11, 0.0, 0.0],
    }
    for prediction_type, weights in expected.items():
        loss = DenoisingLoss(
            prediction_type=prediction_type, weighting="min_snr", min_snr_gamma=5.0
        )
        assert torch.allclose(loss.weights(alpha, sigma), torch.tensor(weights), atol=1e-5)
    assert torch.equal(
        DenoisingLoss(prediction_type="epsilon").weights(alpha, sigma), torch.ones(4)
    )


def test_loss_weighting_and_masking():
    x0, noise, alpha, sigma = noisy_batch()
    loss = DenoisingLoss(prediction_type="v_prediction", weighting="min_snr")
    prediction = torch.zeros_like(x0)
    target = loss.target(x0, noise, alpha, sigma)
    manual = (loss.weights(alpha, sigma) * target.square().mean(dim=(2, 3, 4))).mean()
    assert torch.allclose(loss(prediction, x0, noise, alpha, sigma), manual)

    # Points without ground truth (NaN) are left out, and no NaN gradient comes back.
    valid = torch.ones(2, 3, 6, 1, 1, dtype=torch.bool)
    valid[:, :, 3:] = False
    x0_holes = x0.clone()
    x0_holes[:, :, 3:] = float("nan")
    prediction.requires_grad_(True)
    masked = DenoisingLoss(prediction_type="sample")(
        prediction, x0_holes, noise, alpha, sigma, valid
    )
    masked.backward()
    assert torch.allclose(masked, x0[:, :, :3].square().mean())
    assert torch.isfinite(prediction.grad).all() and (prediction.grad[:, :, 3:] == 0).all()

    with pytest.raises(ValueError, match=r"sample dimensions \[2\], got \[3\] and \[3\]"):
        loss(prediction, x0, noise, alpha[0], sigma[0])
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        DenoisingLoss(prediction_type="x0")
