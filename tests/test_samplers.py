"""Sampling loop, schedulers and guidance, checked with closed-form optimal denoisers.

Data distributions whose optimal denoiser E[x0 | x_t] is known exactly:
- a point mass at x*: every scheduler must end at x*, and every step's x0 preview is x*;
- independent Gaussian pixels N(mean, std^2): samples must have that spread;
- "offset" data mean + z * ones with one scalar z ~ N(0, std^2) per image: completing an
  image from part of it must recover z in the unknown part (RePaint harmonisation).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, LMSDiscreteScheduler

from samplers import (
    PREDICTION_TYPES,
    SCHEDULER_NAMES,
    STOP,
    Denoiser,
    SamplingCancelled,
    add_noise,
    build_scheduler,
    cfg,
    guided_prediction,
    in_guidance_interval,
    noise_levels,
    rescale_guidance,
    sample,
    scheduler_for,
    set_steps,
)
from samplers.denoiser import prediction_target, prediction_to_x0
from samplers.guidance import check_guidance
from samplers.sampling import MAX_SEED, check_seeds

# diffusers' set_timesteps calls np.array on torch tensors, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPE = (3, 8, 8)
ZERO_SNR_NAMES = [name for name in SCHEDULER_NAMES if name != "heun"]
STOCHASTIC = [("ddpm", 0.0), ("ddim", 1.0), ("dpmpp-2m-sde", 0.0), ("euler-ancestral", 0.0)]
NAME_AND_TYPE = [
    (name, prediction_type)
    for name in SCHEDULER_NAMES
    for prediction_type in PREDICTION_TYPES
    if (name, prediction_type) != ("euler-ancestral", "sample")
]


def _image(seed: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


X_STAR = _image(100)


def _network_levels(scheduler, t: float) -> tuple[float, float]:
    """(alpha, sigma) of the variance-preserving input at timestep t for a network trained on
    `scheduler`'s alphas_cumprod; fractional t interpolates sigma/alpha linearly, as
    diffusers' sigma schedulers do."""
    alpha_bar = scheduler.alphas_cumprod.double()
    low = math.floor(t)
    if t == low:
        return alpha_bar[low].sqrt().item(), (1 - alpha_bar[low]).sqrt().item()
    ve = ((1 - alpha_bar[low : low + 2]) / alpha_bar[low : low + 2]).sqrt()
    s = (ve[0] + (t - low) * (ve[1] - ve[0])).item()
    return 1 / math.sqrt(1 + s**2), s / math.sqrt(1 + s**2)


def _prediction(x0: torch.Tensor, x: torch.Tensor, alpha: float, sigma: float, kind: str):
    """The network output of type `kind` that implies clean sample `x0` for input `x`."""
    if kind == "sample":
        return x0
    if kind == "epsilon":
        return (x - alpha * x0) / sigma
    return alpha * (x - alpha * x0) / sigma - sigma * x0  # v = alpha * eps - sigma * x0


def optimal_model(scheduler, mean=X_STAR, std=0.0, offset=False, uncond_mean=None):
    """The optimal Denoiser, trained on `scheduler`'s schedule and prediction type, for
    Gaussian pixels N(mean, std^2) (point mass at std 0) or, with `offset`, for
    mean + z * ones with z ~ N(0, std^2). The unconditional branch uses `uncond_mean`
    (default: the same data). Records every call in `.calls`."""
    kind = scheduler.config.prediction_type

    def model_fn(x, t, conditional):
        model_fn.calls.append((t[0].item(), conditional))
        alpha, sigma = _network_levels(scheduler, t[0].item())
        m = mean if conditional or uncond_mean is None else uncond_mean
        residual = x - alpha * m  # [n, c, h, w]
        if offset:
            gain = alpha * std**2 / (alpha**2 * std**2 * m.numel() + sigma**2)
            x0 = m + gain * residual.sum(dim=(1, 2, 3), keepdim=True)
        else:
            x0 = m + alpha * std**2 / (alpha**2 * std**2 + sigma**2) * residual
        return _prediction(x0, x, alpha, sigma, kind)

    denoiser = Denoiser(model_fn, kind, scheduler.alphas_cumprod)
    denoiser.calls = model_fn.calls = []
    return denoiser


# ------------------------------------------------------------------------------------
# Schedulers
# ------------------------------------------------------------------------------------


def test_build_scheduler_names_and_options():
    sde = build_scheduler(
        "dpmpp-2m-sde", prediction_type="v_prediction", beta_schedule="scaled_linear"
    )
    assert isinstance(sde, DPMSolverMultistepScheduler)
    assert sde.config.algorithm_type == "sde-dpmsolver++"
    assert sde.config.prediction_type == "v_prediction"
    assert sde.config.beta_schedule == "scaled_linear"
    assert build_scheduler("dpmpp-2m-karras").config.use_karras_sigmas
    ddim = build_scheduler("ddim", num_train_timesteps=500, timestep_spacing="leading")
    assert ddim.config.num_train_timesteps == 500 and ddim.config.timestep_spacing == "leading"
    assert not ddim.config.clip_sample  # point maps are not bounded to [-1, 1]
    with pytest.raises(ValueError, match="unknown scheduler 'lms'.*'ddpm'.*'unipc'"):
        build_scheduler("lms")


def test_scheduler_errors():
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        set_steps("ddim", 0)
    with pytest.raises(ValueError, match="'heun' does not implement rescale_betas_zero_snr"):
        build_scheduler("heun", prediction_type="v_prediction", rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="zero_snr needs prediction_type 'v_prediction'"):
        build_scheduler("ddim", rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="does not implement prediction_type 'sample'"):
        build_scheduler("euler-ancestral", prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        build_scheduler("ddim", prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="unsupported scheduler class LMSDiscreteScheduler"):
        set_steps(LMSDiscreteScheduler(), 10)


def test_set_steps_copies():
    scheduler = build_scheduler("euler")
    stepped = set_steps(scheduler, 5)
    assert scheduler.num_inference_steps is None and len(stepped.timesteps) == 5


@pytest.mark.parametrize(
    ("name", "zero_snr"),
    [(name, False) for name in SCHEDULER_NAMES] + [(name, True) for name in ZERO_SNR_NAMES],
)
def test_add_noise_matches_diffusers(name, zero_snr):
    scheduler = set_steps(
        build_scheduler(name, prediction_type="v_prediction", rescale_betas_zero_snr=zero_snr), 7
    )
    x0, noise = _image(1).expand(2, *SHAPE), _image(2).expand(2, *SHAPE)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        if (timesteps == t).sum() == 1:  # diffusers looks the level up by timestep value
            expected = scheduler.add_noise(x0, noise, t.reshape(1))
            torch.testing.assert_close(add_noise(scheduler, x0, noise, i), expected)
    torch.testing.assert_close(add_noise(scheduler, x0, noise, len(timesteps)), x0)


def test_noise_levels_follow_calls_where_timesteps_repeat():
    # Karras sigmas round to repeated timesteps at many steps; the levels must not repeat.
    scheduler = set_steps(build_scheduler("dpmpp-2m-karras"), 200)
    assert len(torch.unique(scheduler.timesteps)) < len(scheduler.timesteps)
    alpha, sigma = noise_levels(scheduler)
    assert (torch.diff(sigma / alpha) < 0).all()


# ------------------------------------------------------------------------------------
# Denoiser: prediction types and the schedulers built for it
# ------------------------------------------------------------------------------------


def _levels():
    """x0, eps [4, 3, 8, 8] and per-sample (alpha, sigma) [4, 1, 1, 1], from nearly clean
    to nearly pure noise."""
    alpha_bar = torch.tensor([0.999, 0.7, 0.2, 0.001]).view(4, 1, 1, 1)
    x0 = torch.stack([_image(k) for k in range(4)])
    eps = torch.stack([_image(10 + k) for k in range(4)])
    return x0, eps, alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_denoiser_conversions_round_trip(prediction_type):
    x0, eps, alpha, sigma = _levels()
    x_t = alpha * x0 + sigma * eps
    target = prediction_target(prediction_type, x0, eps, alpha, sigma)
    denoiser = Denoiser(lambda x, t, c: target, prediction_type, torch.ones(10))
    prediction = denoiser(x_t, torch.zeros(4))
    torch.testing.assert_close(denoiser.to_x0(prediction, x_t, alpha, sigma), x0)
    # Through every other type: x0 -> that type's prediction -> x0.
    recovered = denoiser.to_x0(prediction, x_t, alpha, sigma)
    for other in PREDICTION_TYPES:
        implied_eps = (x_t - alpha * recovered) / sigma
        as_other = prediction_target(other, recovered, implied_eps, alpha, sigma)
        torch.testing.assert_close(
            prediction_to_x0(other, as_other, x_t, alpha, sigma), x0, atol=1e-4, rtol=0
        )


def test_denoiser_conversions_are_the_closed_forms():
    x0, eps, alpha, sigma = _levels()
    x_t = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    assert torch.equal(prediction_target("epsilon", x0, eps, alpha, sigma), eps)
    assert torch.equal(prediction_target("v_prediction", x0, eps, alpha, sigma), v)
    assert torch.equal(prediction_target("sample", x0, eps, alpha, sigma), x0)
    expected = {"epsilon": (x_t - sigma * eps) / alpha, "v_prediction": alpha * x_t - sigma * v}
    for kind, prediction in (("epsilon", eps), ("v_prediction", v)):
        assert torch.equal(prediction_to_x0(kind, prediction, x_t, alpha, sigma), expected[kind])
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        prediction_to_x0("x0", x0, x_t, alpha, sigma)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        Denoiser(lambda x, t, c: x, "flow_prediction", torch.ones(10))
    with pytest.raises(ValueError, match=r"alphas_cumprod must be \[num_train_timesteps\]"):
        Denoiser(lambda x, t, c: x, "sample", torch.ones(2, 5))


def test_scheduler_is_built_for_the_denoisers_prediction_type():
    x0_network = optimal_model(build_scheduler("ddim", prediction_type="sample"))
    assert scheduler_for(x0_network, "ddim").config.prediction_type == "sample"
    assert scheduler_for(x0_network, "unipc").config.prediction_type == "sample"
    run = dict(shape=SHAPE, steps=5)
    by_name = sample(x0_network, scheduler="dpmpp-2m", **run)
    given = build_scheduler("dpmpp-2m", prediction_type="sample")
    assert torch.equal(by_name, sample(x0_network, scheduler=given, **run))
    # An epsilon scheduler cannot drive an x0 network, by name or instance.
    with pytest.raises(ValueError, match="needs a scheduler instance, got the name 'ddim'"):
        set_steps("ddim", 5)
    with pytest.raises(ValueError, match="expects prediction_type 'epsilon'.* predicts 'sample'"):
        sample(x0_network, scheduler=build_scheduler("ddim"), **run)
    with pytest.raises(ValueError, match="does not implement prediction_type 'sample'"):
        scheduler_for(x0_network, "euler-ancestral")


def test_scheduler_must_run_the_denoisers_schedule():
    scaled = build_scheduler("ddim", prediction_type="sample", beta_schedule="scaled_linear")
    network = optimal_model(scaled)
    assert scheduler_for(network, scaled) is scaled
    with pytest.raises(ValueError, match="DDIMScheduler runs another noise schedule"):
        scheduler_for(network, "ddim")  # by name: the default schedule
    # Zero terminal SNR: diffusers' sigma schedulers clamp the last alpha_bar to 2**-24.
    zero_snr = dict(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    network = optimal_model(build_scheduler("ddpm", **zero_snr))
    for name in ("euler", "dpmpp-2m", "unipc"):
        scheduler_for(network, build_scheduler(name, **zero_snr))


# ------------------------------------------------------------------------------------
# Sampling loop
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "prediction_type"), NAME_AND_TYPE)
def test_converges_to_point_mass(name, prediction_type):
    scheduler = build_scheduler(name, prediction_type=prediction_type)
    infos = []
    out = sample(
        optimal_model(scheduler),
        shape=SHAPE,
        num_samples=2,
        scheduler=scheduler,
        steps=10,
        callback=infos.append,
    )
    torch.testing.assert_close(out, X_STAR.expand(2, *SHAPE), atol=1e-5, rtol=0)
    assert [info.step for info in infos] == list(range(10))
    assert all(info.num_steps == 10 for info in infos)
    assert [info.sigma for info in infos] == sorted((info.sigma for info in infos), reverse=True)
    # Karras sigmas round to integer timesteps, so the network's level is slightly off there.
    atol = 1e-2 if name == "dpmpp-2m-karras" and prediction_type != "sample" else 1e-4
    for info in infos:
        torch.testing.assert_close(info.x0_pred, X_STAR.expand(2, *SHAPE), atol=atol, rtol=0)


@pytest.mark.parametrize("name", ZERO_SNR_NAMES)
def test_zero_terminal_snr_converges(name):
    scheduler = build_scheduler(name, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    infos = []
    out = sample(
        optimal_model(scheduler), shape=SHAPE, scheduler=scheduler, steps=8, callback=infos.append
    )
    torch.testing.assert_close(out, X_STAR[None], atol=1e-4, rtol=0)
    if name != "dpmpp-2m-karras":  # the others start at the last training timestep
        assert infos[0].timestep == 999


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_timestep_spacing_passes_through(spacing):
    scheduler = build_scheduler("euler", timestep_spacing=spacing)
    stepped = set_steps(scheduler, 7)
    # leading: 6 * (1000 // 7); linspace continues with fractional timesteps (832.5, ...)
    assert stepped.timesteps[0].item() == {"linspace": 999.0, "leading": 852.0}[spacing]
    out = sample(optimal_model(scheduler), shape=SHAPE, scheduler=scheduler, steps=7)
    torch.testing.assert_close(out, X_STAR[None], atol=1e-4, rtol=0)


@pytest.mark.parametrize(("name", "eta"), [(n, 0.0) for n in SCHEDULER_NAMES] + [("ddim", 1.0)])
def test_matches_plain_diffusers_loop(name, eta):
    """With one sample and no guidance the loop drives the scheduler exactly as a diffusers
    pipeline does with one generator."""
    scheduler = build_scheduler(name, prediction_type="v_prediction")
    model_fn = optimal_model(scheduler, std=0.5)
    ours = sample(model_fn, shape=SHAPE, seeds=7, scheduler=scheduler, steps=6, eta=eta)

    reference = set_steps(scheduler, 6)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn((1, *SHAPE), generator=generator) * reference.init_noise_sigma
    extra = {"eta": eta} if name == "ddim" else {}
    if name not in ("heun", "unipc"):
        extra["generator"] = generator
    for t in reference.timesteps:
        prediction = model_fn(reference.scale_model_input(x, t), t.repeat(1), True)
        x = reference.step(prediction, t, x, **extra).prev_sample
    assert torch.equal(ours, x)


@pytest.mark.parametrize(
    ("name", "prediction_type"),
    [(n, p) for n, p in NAME_AND_TYPE if p in ("sample", "epsilon")],
)
def test_x0_and_epsilon_networks_match_plain_diffusers_loop(name, prediction_type):
    """The denoiser hands the network's prediction to the scheduler unchanged: x0 and
    epsilon networks sample as in a diffusers pipeline."""
    scheduler = build_scheduler(name, prediction_type=prediction_type)
    denoiser = optimal_model(scheduler, std=0.5)
    ours = sample(denoiser, shape=SHAPE, seeds=3, scheduler=name, steps=6)

    reference = set_steps(scheduler, 6)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn((1, *SHAPE), generator=generator) * reference.init_noise_sigma
    extra = {} if name in ("heun", "unipc") else {"generator": generator}
    for t in reference.timesteps:
        prediction = denoiser.model_fn(reference.scale_model_input(x, t), t.repeat(1), True)
        x = reference.step(prediction, t, x, **extra).prev_sample
    assert torch.equal(ours, x)


@pytest.mark.parametrize("name", ["dpmpp-2m", "dpmpp-2m-sde", "heun", "unipc"])
def test_gaussian_data_spread(name):
    scheduler = build_scheduler(name, prediction_type="epsilon")
    out = sample(
        optimal_model(scheduler, std=0.5), shape=SHAPE, num_samples=8, scheduler=scheduler, steps=25
    )
    residual = out - X_STAR
    assert abs(residual.mean().item()) < 0.05
    assert abs(residual.std().item() - 0.5) < 0.05


@pytest.mark.parametrize(("name", "eta"), STOCHASTIC)
def test_seeds_are_per_sample(name, eta):
    scheduler = build_scheduler(name, prediction_type="v_prediction")
    model_fn = optimal_model(scheduler, std=0.5)
    run = dict(shape=SHAPE, scheduler=scheduler, steps=6, eta=eta)
    batch = sample(model_fn, num_samples=3, seeds=10, **run)
    assert torch.equal(batch, sample(model_fn, num_samples=3, seeds=10, **run))
    assert torch.equal(batch[1:2], sample(model_fn, num_samples=1, seeds=11, **run))
    assert torch.equal(batch[[2, 0]], sample(model_fn, num_samples=2, seeds=[12, 10], **run))
    assert not torch.allclose(batch[0], batch[1])


def test_seeds_are_per_sample_with_completion():
    scheduler = build_scheduler("dpmpp-2m-sde", prediction_type="v_prediction")
    model_fn = optimal_model(scheduler, std=0.5)
    mask = torch.zeros(SHAPE[1:])
    mask[:, :4] = 1
    run = dict(
        shape=SHAPE, scheduler=scheduler, steps=5, known=_image(3), mask=mask, resample_jumps=2
    )
    batch = sample(model_fn, num_samples=3, seeds=4, **run)
    assert torch.equal(batch[2:], sample(model_fn, num_samples=1, seeds=6, **run))


def test_scheduler_instance_is_not_modified():
    scheduler = build_scheduler("dpmpp-2m")
    sample(optimal_model(scheduler), shape=SHAPE, scheduler=scheduler, steps=4)
    assert scheduler.num_inference_steps is None


def test_scheduler_by_name_uses_defaults():
    default = build_scheduler("unipc")
    by_name = sample(optimal_model(default, std=0.5), shape=SHAPE, scheduler="unipc", steps=5)
    by_instance = sample(optimal_model(default, std=0.5), shape=SHAPE, scheduler=default, steps=5)
    assert torch.equal(by_name, by_instance)


# ------------------------------------------------------------------------------------
# Guidance
# ------------------------------------------------------------------------------------


def test_cfg_and_rescale():
    cond, uncond = _image(1)[None], _image(2)[None]
    torch.testing.assert_close(cfg(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(cfg(cond, uncond, 3.0), 3 * cond - 2 * uncond)
    guided = cfg(cond, uncond, 5.0)
    assert torch.equal(rescale_guidance(guided, cond, 0.0), guided)
    rescaled = rescale_guidance(guided, cond, 1.0)
    torch.testing.assert_close(rescaled.std(), cond.std())
    torch.testing.assert_close(
        rescaled / guided, torch.full_like(guided, (cond.std() / guided.std()).item())
    )
    with pytest.raises(ValueError, match="guidance scale must be a finite number >= 0, got -1"):
        cfg(cond, uncond, -1.0)
    with pytest.raises(ValueError, match=r"guidance rescale must be in \[0, 1\], got 1.5"):
        rescale_guidance(guided, cond, 1.5)


def test_guidance_scale_one_skips_unconditional():
    calls = []

    def predict(conditional):
        calls.append(conditional)
        return _image(int(conditional))[None]

    assert torch.equal(guided_prediction(predict, 1.0, rescale=0.7), _image(1)[None])
    assert calls == [True]

    scheduler = build_scheduler("ddim", prediction_type="v_prediction")
    model_fn = optimal_model(scheduler, std=0.5, uncond_mean=_image(5))
    run = dict(shape=SHAPE, scheduler=scheduler, steps=5)
    plain = sample(model_fn, **run)
    assert all(conditional for _, conditional in model_fn.calls)
    assert torch.equal(sample(model_fn, guidance_scale=1.0, guidance_rescale=0.7, **run), plain)
    assert all(conditional for _, conditional in model_fn.calls)


def test_guidance_is_applied():
    # Sample prediction on point masses: the result is the guided x0, uncond + s (cond - uncond).
    scheduler = build_scheduler("dpmpp-2m", prediction_type="sample")
    model_fn = optimal_model(scheduler, uncond_mean=_image(5))
    out = sample(model_fn, shape=SHAPE, scheduler=scheduler, steps=5, guidance_scale=3.0)
    torch.testing.assert_close(out[0], _image(5) + 3 * (X_STAR - _image(5)), atol=1e-4, rtol=0)
    rescaled = sample(
        model_fn,
        shape=SHAPE,
        scheduler=scheduler,
        steps=5,
        guidance_scale=3.0,
        guidance_rescale=0.5,
    )
    assert not torch.allclose(rescaled, out, atol=1e-2)


def test_guidance_interval():
    assert in_guidance_interval(2.0, (1.0, 2.0)) and not in_guidance_interval(1.0, (1.0, 2.0))
    assert in_guidance_interval(math.inf, None)
    scheduler = build_scheduler("euler", prediction_type="v_prediction")
    infos = []
    run = dict(shape=SHAPE, scheduler=scheduler, steps=8, guidance_scale=2.0)
    sample(optimal_model(scheduler, uncond_mean=_image(5)), callback=infos.append, **run)
    sigmas = [info.sigma for info in infos]
    model_fn = optimal_model(scheduler, uncond_mean=_image(5))
    sample(model_fn, guidance_interval=(sigmas[6], sigmas[2]), **run)  # guide steps 2..5
    unconditional = [t for t, conditional in model_fn.calls if not conditional]
    assert unconditional == [info.timestep for info in infos[2:6]]
    with pytest.raises(ValueError, match=r"0 <= low < high, got \(2.0, 1.0\)"):
        sample(model_fn, guidance_interval=(2.0, 1.0), **run)


# ------------------------------------------------------------------------------------
# Completion (RePaint)
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m-sde", "euler-ancestral", "heun", "unipc"])
def test_completion_keeps_known_region(name):
    scheduler = build_scheduler(name, prediction_type="epsilon")
    known = _image(3)
    mask = torch.zeros(SHAPE[1:])
    mask[:, :3] = 1
    mask[:, 3] = 0.25  # soft edge
    out = sample(
        optimal_model(scheduler),
        shape=SHAPE,
        num_samples=2,
        scheduler=scheduler,
        steps=8,
        known=known,
        mask=mask,
        resample_jumps=1,
    )
    # The network only knows x*, so the unknown region is x*; the known one is kept exactly.
    torch.testing.assert_close(
        out, torch.lerp(X_STAR, known, mask).expand(2, *SHAPE), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "dpmpp-2m-sde", "euler-ancestral", "heun"])
def test_completion_harmonises_unknown_region(name):
    """Offset data: the known columns reveal z, so the unknown ones must take the same z."""
    scheduler = build_scheduler(name, prediction_type="v_prediction")
    model_fn = optimal_model(scheduler, std=1.0, offset=True)
    z = torch.tensor([1.5, -1.0, 2.0]).view(3, 1, 1, 1)
    mask = torch.zeros(3, 1, *SHAPE[1:])
    mask[..., :3] = 1
    run = dict(shape=SHAPE, num_samples=3, scheduler=scheduler, steps=20)
    completed = sample(model_fn, known=X_STAR + z, mask=mask, resample_jumps=2, **run)
    free = sample(model_fn, **run)
    z_completed = (completed - X_STAR)[..., 3:].mean(dim=(1, 2, 3))
    z_free = (free - X_STAR)[..., 3:].mean(dim=(1, 2, 3))
    assert (z_completed - z.flatten()).abs().max() < 0.1
    assert (z_free - z.flatten()).abs().max() > 0.5


def test_completion_broadcasts_known_and_mask():
    scheduler = build_scheduler("dpmpp-2m-sde", prediction_type="v_prediction")
    model_fn = optimal_model(scheduler, std=0.5)
    mask = (torch.arange(8) < 5).float().expand(8, 8)
    run = dict(shape=SHAPE, num_samples=2, scheduler=scheduler, steps=4)
    single = sample(model_fn, known=_image(3), mask=mask, **run)
    batched = sample(
        model_fn, known=_image(3).expand(2, *SHAPE), mask=mask.expand(2, 1, 8, 8), **run
    )
    assert torch.equal(single, batched)


def test_completion_errors():
    model_fn = optimal_model(build_scheduler("ddim"))
    run = dict(shape=SHAPE, num_samples=2, scheduler="ddim", steps=3)
    known, mask = _image(3), torch.ones(8, 8)
    with pytest.raises(ValueError, match=r"mask must be \(8, 8\) or \(2, 1, 8, 8\), got \(4, 4\)"):
        sample(model_fn, known=known, mask=torch.ones(4, 4), **run)
    with pytest.raises(
        ValueError, match=r"known must be \(3, 8, 8\) or \(2, 3, 8, 8\), got \(6, 8, 8\)"
    ):
        sample(model_fn, known=torch.zeros(6, 8, 8), mask=mask, **run)
    with pytest.raises(ValueError, match="needs both known and mask, got mask only"):
        sample(model_fn, mask=mask, **run)
    with pytest.raises(ValueError, match=r"mask values must be in \[0, 1\]"):
        sample(model_fn, known=known, mask=2 * mask, **run)
    with pytest.raises(ValueError, match="resample_jumps=2 needs a mask"):
        sample(model_fn, resample_jumps=2, **run)


# ------------------------------------------------------------------------------------
# Callback and errors
# ------------------------------------------------------------------------------------


def test_callback_every_step_and_stop():
    scheduler = build_scheduler("heun", prediction_type="v_prediction")
    model_fn = optimal_model(scheduler)
    infos = []
    sample(model_fn, shape=SHAPE, scheduler=scheduler, steps=5, callback=infos.append)
    assert [info.step for info in infos] == [0, 1, 2, 3, 4]  # 9 network calls, 5 steps
    assert len(model_fn.calls) == 9
    assert infos[0].x_t.shape == infos[0].x0_pred.shape == (1, *SHAPE)

    model_fn.calls.clear()
    with pytest.raises(SamplingCancelled) as cancelled:
        sample(
            model_fn,
            shape=SHAPE,
            scheduler=scheduler,
            steps=5,
            callback=lambda info: STOP if info.step == 1 else None,
        )
    assert cancelled.value.step == 1 and len(model_fn.calls) == 4

    def abort(info):
        raise SamplingCancelled()

    with pytest.raises(SamplingCancelled):
        sample(model_fn, shape=SHAPE, scheduler=scheduler, steps=5, callback=abort)


def test_sample_errors():
    model_fn = optimal_model(build_scheduler("ddim"))
    run = dict(shape=SHAPE, scheduler="ddim", steps=3)
    with pytest.raises(ValueError, match="unknown scheduler 'nope', expected one of .*'ddim'"):
        sample(model_fn, **{**run, "scheduler": "nope"})
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        sample(model_fn, **{**run, "steps": 0})
    with pytest.raises(ValueError, match="guidance scale must be a finite number >= 0, got -0.5"):
        sample(model_fn, guidance_scale=-0.5, **run)
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        sample(model_fn, num_samples=0, **run)
    with pytest.raises(ValueError, match="expected 2 seeds"):
        sample(model_fn, num_samples=2, seeds=[1, 2, 3], **run)
    with pytest.raises(ValueError, match=r"shape must be \(channels, height, width\)"):
        sample(model_fn, **{**run, "shape": (8, 8)})
    with pytest.raises(ValueError, match="eta applies to DDIM only"):
        sample(model_fn, eta=0.5, **{**run, "scheduler": "euler"})
    with pytest.raises(
        ValueError, match=r"model_fn returned shape \(1, 3, 4, 4\), expected \(1, 3, 8, 8\)"
    ):
        sample(Denoiser(lambda x, t, c: x[..., :4, :4], "epsilon", model_fn.alphas_cumprod), **run)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_guidance_and_eta_are_refused_before_sampling(value):
    # NaN passed the old `< 0` checks and gave black samples; inf made the guided
    # prediction NaN. Neither reaches the network now.
    model_fn = optimal_model(build_scheduler("ddim"))
    run = dict(shape=SHAPE, scheduler="ddim", steps=3)
    with pytest.raises(
        ValueError, match=f"guidance scale must be a finite number >= 0, got {value}"
    ):
        sample(model_fn, guidance_scale=value, **run)
    with pytest.raises(ValueError, match=rf"guidance rescale must be in \[0, 1\], got {value}"):
        sample(model_fn, guidance_scale=2.0, guidance_rescale=value, **run)
    with pytest.raises(ValueError, match=f"eta must be a finite number >= 0, got {value}"):
        sample(model_fn, eta=value, **run)
    with pytest.raises(ValueError, match=f"eta must be a finite number >= 0, got {value}"):
        sample(model_fn, eta=value, **{**run, "scheduler": "euler"})
    assert model_fn.calls == []


def test_guidance_interval_refuses_nan_and_takes_an_open_end():
    for interval in [(math.nan, 1.0), (0.5, math.nan), (math.inf, math.inf)]:
        with pytest.raises(ValueError, match=r"0 <= low < high, got \("):
            check_guidance(2.0, 0.0, interval)
    check_guidance(2.0, 0.0, (0.5, math.inf))  # a zero terminal SNR schedule's first level


def test_seeds_outside_a_generators_range_name_the_option():
    model_fn = optimal_model(build_scheduler("ddim"))
    run = dict(shape=SHAPE, scheduler="ddim", steps=1)
    # torch folds -1 onto 2**64 - 1 and overflows past it, with a message that names nothing.
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64 - 1\].*got -1"):
        sample(model_fn, seeds=[3, -1], num_samples=2, **run)
    with pytest.raises(ValueError, match=f"seed must be in .*got {MAX_SEED + 1}"):
        sample(model_fn, seeds=MAX_SEED + 1, **run)
    with pytest.raises(
        ValueError,
        match=r"seed must be in \[0, 2\*\*64 - 2\]: the 2 samples use seeds seed to seed \+ 1"
        f".*got {MAX_SEED}",
    ):
        sample(model_fn, seeds=MAX_SEED, num_samples=2, **run)
    assert model_fn.calls == []
    assert sample(model_fn, seeds=MAX_SEED - 1, num_samples=2, **run).shape == (2, *SHAPE)
    with pytest.raises(ValueError, match=rf"--seed must be in \[0, 2\*\*64 - 4\].*got {10**23}"):
        check_seeds(10**23, 4, "--seed")
