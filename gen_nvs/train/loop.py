"""The training loop on Hugging Face Accelerate, every stage: `geometry` (optional 3D
pretraining of the encoder with the camera and depth heads), `regression`, `diffusion`.

    python -m gen_nvs.train --config configs/embedded-regression.yaml [key.sub=value ...]
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml \\
        -m gen_nvs.train --config configs/lagernvs-regression.yaml

Everything the run needs is checked before the first step (config keys, data paths and
image sizes, the LPIPS weights, a resumed state's model). The run directory
(`run.output_dir/run.name`) receives `config.yaml` (the resolved config), `run_info.json`
(git revision, command line), `metrics.jsonl` (the logged losses), `probe.jsonl` (the
copy probe and held-out PSNR of regression runs, see `gen_nvs.train.probe`), `samples/`
(evaluation grids: depth maps in the geometry stage; none under FSDP),
`checkpoints/step_XXXXXXX` (resumable states, see `checkpoints`) and `export/` (the
latest inference export: EMA weights, loadable by `gen_nvs.models.nvs.load_model`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration
from einops import rearrange
from tqdm.auto import tqdm

from gen_nvs.data import SceneBatch, mirror_scenes
from gen_nvs.models import checkpoint as ckpt
from gen_nvs.models.config import DepthHeadConfig, LatentConfig, RefinerConfig, model_config
from gen_nvs.models.diffusion import make_model_fn
from gen_nvs.models.losses import DenoisingLoss
from gen_nvs.models.nvs import NVSModel, load_model
from gen_nvs.models.nvs import build_model as build_nvs_model
from gen_nvs.models.vae import LatentCodec
from gen_nvs.outputs import write_rgb
from gen_nvs.train import checkpoints, objectives
from gen_nvs.train.config import dump, git_revision, load_config
from gen_nvs.train.data import TrainingData, batch_seed, view_counts
from gen_nvs.train.ema import EMA
from gen_nvs.train.probe import Probe

STAGES = ("geometry", "regression", "diffusion")
# Storage types of the inference export (load_model reads any of them back as float32).
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Parameters no forward pass uses (DINOv2's masked-modelling token); DDP needs every
# trained parameter to get a gradient.
NEVER_USED = ("encoder.aggregator.patch_embed.mask_token",)
# The seed stream of the per-step draws (source count, pose dropout, noise), apart from
# the data order's (stream 0).
_STEP_STREAM = 1
_MIRROR_STREAM = 2  # its own stream: mirroring leaves the data order as it was


@dataclass
class TrainState:
    """Counters saved with every state: training steps done (skipped updates included:
    the LR schedule and the data follow them), updates skipped (`apply_update`), updates
    applied and the running mean of their gradient norms."""

    step: int = 0
    skipped: int = 0
    accepted: int = 0
    grad_norm_mean: float = 0.0

    def is_spike(self, norm: float, factor: float, warmup: int) -> bool:
        """Non-finite, or above `factor` x the mean of applied norms after `warmup` of them."""
        if not math.isfinite(norm):
            return True
        return factor > 0 and self.accepted >= warmup and norm > factor * self.grad_norm_mean

    def accept(self, norm: float) -> None:
        self.accepted += 1
        beta = min(0.99, 1 - 1 / self.accepted)  # a plain mean over the first 100
        self.grad_norm_mean = beta * self.grad_norm_mean + (1 - beta) * norm

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def apply_update(optimizer, scaler, state: TrainState, norm: float, train: dict) -> bool:
    """Step the optimizer for synced gradients of norm `norm` (before clipping) unless the
    update is skipped; returns whether it was applied.

    A spike (`TrainState.is_spike`) is skipped. With fp16's GradScaler (`scaler`) a
    non-finite norm is an overflow: it goes to the optimizer, whose GradScaler skips the
    update and lowers its scale; a skipped spike still updates the scaler, which closes
    the step (its `unscale_` in `clip_grad_norm_`). Skips count in `state.skipped`.
    """
    if scaler is not None and not math.isfinite(norm):
        optimizer.step()
        applied = False
    elif state.is_spike(norm, train["spike_factor"], train["spike_warmup"]):
        if scaler is not None:
            scaler.update()
        applied = False
    else:
        optimizer.step()
        applied = True
    if applied:
        state.accept(norm)
    else:
        state.skipped += 1
    return applied


class LossMeans:
    """Per-term sums and counts of the logged losses since the last log, on the device (no
    sync per step). Every process holds the same names in the same order, so their
    reduction matches; a term is averaged over the micro-batches that had it."""

    def __init__(self, names: list[str], device: torch.device) -> None:
        self.names = names
        self.totals = torch.zeros(2, len(names), device=device)  # (sums, counts)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for i, name in enumerate(self.names):
            if name in values:
                self.totals[0, i] += values[name].detach().float()
                self.totals[1, i] += 1

    def pop(self, accelerator: Accelerator) -> dict[str, float]:
        """The means over every process (terms no micro-batch had are left out); resets."""
        sums, counts = accelerator.reduce(self.totals, "sum").tolist()
        self.totals.zero_()
        return {n: s / c for n, s, c in zip(self.names, sums, counts, strict=True) if c > 0}


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def build_model(config: dict) -> NVSModel:
    """The model to train: an export (`model.init_from`) or a preset with the config's
    module options over it (optionally from official checkpoints), in the latent mode of
    `model.latent.vae` when set (the VAE's weights become the model's), with a depth head
    when `model.depth_head` asks for one and it has none (a warp refiner likewise, for
    `model.refiner`); the diffusion stage adds its diffusion decoder. Bad module options
    are one-line ValueErrors naming the key."""
    m, stage = config["model"], config["stage"]
    depth_head = None
    if m["depth_head"] is not None:
        depth_head = DepthHeadConfig.from_dict(m["depth_head"], "model.depth_head")
    refiner = None
    if m["refiner"] is not None:
        refiner = RefinerConfig.from_dict(m["refiner"], "model.refiner")
    vae = latent_vae(m["latent"])
    if m["init_from"]:
        model = load_model(m["init_from"]).train()
        if vae is not None:
            check_latent_export(model, vae, m["init_from"])
    elif stage == "diffusion":
        raise ValueError(
            "the diffusion stage starts from a trained regression model: set "
            "model.init_from=<regression export>"
        )
    else:
        preset = model_config(m["preset"], variant=m["variant"], point_head=m["point_head"])
        options = {part: m[part] for part in ("encoder", "decoder", "camera_head")}
        model_cfg = preset.override(options)
        codec = None
        if vae is not None:
            if m["official_lagernvs"]:
                raise ValueError(
                    "model.official_lagernvs is a pixel-space renderer; the latent mode "
                    "(model.latent) trains its decoder from scratch"
                )
            codec = LatentCodec(vae)
            model_cfg = model_cfg.with_latent(LatentConfig(vae=codec.config, source=vae))
        model = build_nvs_model(replace(model_cfg, depth_head=depth_head, refiner=refiner))
        if codec is not None:
            model.codec.load_state_dict(codec.state_dict())
        if m["official_vggt"] or m["official_lagernvs"]:
            from gen_nvs.models.convert import load_official_weights

            load_official_weights(model, lagernvs=m["official_lagernvs"], vggt=m["official_vggt"])
    if depth_head is not None and model.depth_head is None:  # an export without one
        model.add_depth_head(depth_head)
    if refiner is not None and model.refiner is None:
        model.add_refiner(refiner)
    elif refiner is not None and model.config.refiner != refiner:
        raise ValueError(
            f"model.refiner {refiner.to_dict()} differs from the refiner of model.init_from "
            f"{model.config.refiner.to_dict()}: set model.refiner=null to keep the export's"
        )
    if m["refiner_only"] and model.refiner is None:
        raise ValueError("model.refiner_only needs a warp refiner: set model.refiner={}")
    if config["loss"]["decoder_l2"] > 0 and model.refiner is None:
        raise ValueError(
            "loss.decoder_l2 weights the decoder's render beside a warp refiner's: set "
            "model.refiner={} or loss.decoder_l2=0"
        )
    if stage == "diffusion":
        d = config["diffusion"]
        if model.diffusion is None:
            model.add_diffusion(
                prediction_type=d["prediction_type"],
                noise_channels=noise_channels(model, d["noise_channels"]),
                cond_dropout=d["cond_dropout"],
                frequency_dim=d["frequency_dim"],
            )
        elif model.diffusion.prediction_type != d["prediction_type"]:
            raise ValueError(
                f"model.init_from's diffusion decoder predicts {model.diffusion.prediction_type!r}"
                f", diffusion.prediction_type is {d['prediction_type']!r}"
            )
        model.noise_schedule = diffusion_schedule(config)  # what the export records
    return model


def latent_vae(option) -> str | None:
    """The VAE of `model.latent` ({vae: PATH}: a diffusers AutoencoderKL folder or hf://),
    or None (pixel mode) when it is null."""
    if option is None:
        return None
    if not isinstance(option, dict) or set(option) != {"vae"} or not isinstance(option["vae"], str):
        raise ValueError(
            "model.latent must be {vae: PATH} (a diffusers AutoencoderKL folder or "
            f"hf://org/repo[/subfolder]) or null, got {option!r}"
        )
    return option["vae"]


def check_latent_export(model: NVSModel, vae: str, init_from: str) -> None:
    """`model.latent` with `model.init_from`: the export must render in the latent space of
    a VAE of the same config (it keeps its own weights)."""
    if model.codec is None:
        raise ValueError(
            f"model.init_from {init_from} renders pixels; model.latent needs a latent-mode "
            "export or a model built here (model.init_from=null)"
        )
    if LatentCodec(vae).config != model.codec.config:
        raise ValueError(
            f"model.init_from {init_from} renders in the latent space of another VAE than "
            f"model.latent.vae {vae}; set model.latent=null to keep the export's"
        )


def noise_channels(model: NVSModel, channels: int) -> int:
    """`diffusion.noise_channels` for the model: 3 (the image) or 6 (the image and the
    points) in pixel mode; in the latent mode the same choice with the VAE's latent
    channels k in place of rgb: k or k + 3."""
    if model.codec is None:
        return channels
    if channels not in (3, 6):
        raise ValueError(
            f"diffusion.noise_channels must be 3 (the image) or 6 (with points), got {channels}"
        )
    return model.codec.channels + channels - 3


def set_trainable(model: NVSModel, config: dict) -> None:
    """Freeze what this stage does not train (parts without a loss or never run included,
    so that every trained parameter gets a gradient on every step, as DDP needs; the point
    and depth heads on batches without depth get a zero one from their loss).

    geometry: the aggregator (unless `model.freeze_encoder`), the camera head and the
    depth head (with loss.depth > 0); the aggregator runs without camera tokens and rays,
    so the camera MLP, the ray projections, the output connector and the decoders have no
    loss. regression: all but the depth head (no loss: it stays as the geometry stage left
    it) and the diffusion decoder; a warp refiner trains here (alone with
    `model.refiner_only`) and is frozen in the other stages. diffusion: its decoder
    alone. The latent mode's VAE is never trained.
    """
    m, loss, stage = config["model"], config["loss"], config["stage"]
    model.requires_grad_(stage == "regression")
    if model.codec is not None:
        model.codec.requires_grad_(False)
    if stage == "geometry":
        model.encoder.freeze(m["freeze_encoder"])
        if model.camera_head is not None:  # GeometryForward says when there is none
            model.camera_head.requires_grad_(True)
        if model.depth_head is not None:
            model.depth_head.requires_grad_(loss["depth"] > 0)
    elif stage == "diffusion":
        model.diffusion.requires_grad_(True)
        if not model.diffusion.with_points and model.diffusion.decoder.point_head is not None:
            # Image-only denoising never runs the point head.
            model.diffusion.decoder.point_head.requires_grad_(False)
            model.diffusion.head_modulation["points"].requires_grad_(False)
    else:
        model.encoder.freeze(m["freeze_encoder"])
        if model.diffusion is not None:
            model.diffusion.requires_grad_(False)
        if model.camera_head is not None and loss["camera"] <= 0:
            model.camera_head.requires_grad_(False)
        if model.decoder.point_head is not None and loss["points"] <= 0:
            model.decoder.point_head.requires_grad_(False)
        if model.depth_head is not None:
            model.depth_head.requires_grad_(False)
        if m["refiner_only"]:
            model.requires_grad_(False)
            model.refiner.requires_grad_(True)
    for name, param in model.named_parameters():
        if name in NEVER_USED:
            param.requires_grad_(False)
    flag = m["gradient_checkpointing"]
    model.encoder.set_gradient_checkpointing(flag)
    model.decoder.gradient_checkpointing = flag
    if model.diffusion is not None:
        model.diffusion.decoder.gradient_checkpointing = flag


def build_optimizer(model: NVSModel, train: dict) -> torch.optim.AdamW:
    """AdamW; no weight decay on 1-D parameters (norm scales, biases)."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trained:
        raise ValueError("nothing to train: every parameter is frozen")
    groups = [
        {"params": [p for _, p in trained if p.ndim >= 2], "weight_decay": train["weight_decay"]},
        {"params": [p for _, p in trained if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=train["lr"], betas=tuple(train["betas"]))


def build_lr_schedule(optimizer, train: dict) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to `lr`, then a cosine down to `lr * min_lr_ratio` at the last step."""
    warmup, total, floor = train["warmup_steps"], train["steps"], train["min_lr_ratio"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_perceptual(loss: dict, device: torch.device):
    """LPIPS-VGG when its weight is > 0 (FileNotFoundError now if its VGG16 weights are
    missing), else None; imported only then, so runs without it never need it."""
    if loss["perceptual"] <= 0:
        return None
    from gen_nvs.models.perceptual import PerceptualLoss

    return PerceptualLoss(loss["perceptual_weights"]).to(device)


def diffusion_schedule(config: dict) -> dict:
    """The DDPM training schedule's options: `samplers.build_scheduler` keyword arguments,
    kept as `NVSModel.noise_schedule` (the export's `noise_schedule`)."""
    d = config["diffusion"]
    keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")
    return {
        "prediction_type": d["prediction_type"],
        **{k: d[k] for k in keys},
        "rescale_betas_zero_snr": d["rescale_betas_zero_snr"],
    }


def build_objective(config: dict, model: NVSModel, device: torch.device):
    """(forward, step_loss, names): the module to prepare with Accelerate (it holds the
    model), `step_loss(forward, views, posed, generator) -> (loss, {term: value})` and
    the names of every term a step can return."""
    loss = config["loss"]
    if config["stage"] == "geometry":
        forward = objectives.GeometryForward(model, depth_head=loss["depth"] > 0)
        geometry = objectives.GeometryLoss(
            camera=loss["camera"],
            depth=loss["depth"],
            alpha=loss["point_alpha"],
            space=loss["point_space"],
            gradient=loss["point_gradient"],
        )

        def geometry_step(forward, views, posed, generator):
            poses, depth = forward(views)
            return geometry(poses, depth, views)

        return forward, geometry_step, geometry.names

    if config["stage"] == "regression":
        forward = objectives.RegressionForward(
            model,
            camera_head=loss["camera"] > 0,
            decode_rgb=model.codec is not None and loss["perceptual"] > 0,
        )
        regression = objectives.RegressionLoss(
            l2=loss["l2"],
            perceptual=loss["perceptual"],
            points=loss["points"],
            camera=loss["camera"],
            point_alpha=loss["point_alpha"],
            point_space=loss["point_space"],
            decoder_l2=loss["decoder_l2"],
            log_depth=loss["log_depth"],
            point_gradient=loss["point_gradient"],
            perceptual_fn=build_perceptual(loss, device),
            downsample=model.downsample,
        )

        def regression_step(forward, views, posed, generator):
            output, poses, target_latents = forward(views, posed)
            return regression(output, poses, views, target_latents)

        return forward, regression_step, regression.names

    d = config["diffusion"]
    denoising = DenoisingLoss(
        prediction_type=model.diffusion.prediction_type,
        weighting=d["weighting"],
        min_snr_gamma=d["min_snr_gamma"],
    )
    from samplers import build_scheduler  # diffusers: only the diffusion stage needs it

    alphas_cumprod = build_scheduler("ddpm", **model.noise_schedule).alphas_cumprod.float()

    def diffusion_step(forward, views, posed, generator):
        target_latents = None
        if model.codec is not None:
            with torch.no_grad():
                target_latents = model.image_latents(views.target_images)
        noised = objectives.noise_targets(
            views, alphas_cumprod, model.diffusion, generator, target_latents, model.downsample
        )
        prediction = forward(views, noised.x_t, noised.timesteps, posed, generator)
        return objectives.denoising_loss(denoising, prediction, noised)

    return objectives.DiffusionForward(model), diffusion_step, ["denoising"]


def step_inputs(
    config: dict, batch: SceneBatch, micro: int, rank: int, device: torch.device
) -> tuple[objectives.Views, bool, torch.Generator]:
    """What micro-batch `micro` of process `rank` feeds the loss: (views, whether the
    sources are posed, the step's generator for the loss's own draws). Its draws come from
    the run's seed and the micro-batch index alone, so a resumed run repeats them."""
    seed, data = config["run"]["seed"], config["data"]
    gen = torch.Generator().manual_seed(batch_seed(seed, micro, rank, _STEP_STREAM))
    low, high, _ = view_counts(data)
    num_sources = int(torch.randint(low, high + 1, (), generator=gen))
    posed = bool(torch.rand((), generator=gen) >= config["train"]["pose_dropout"])
    if data["mirror"] > 0:
        flips = torch.Generator().manual_seed(batch_seed(seed, micro, rank, _MIRROR_STREAM))
        batch = mirror_scenes(
            batch, torch.rand(len(batch.scenes), generator=flips) < data["mirror"]
        )
    batch = batch.to(device)
    if config["stage"] == "geometry":
        return objectives.all_sources(batch), posed, gen
    return objectives.select_views(batch, num_sources, gen), posed, gen


def mixed_precision(train: dict) -> str:
    if train["mixed_precision"] != "auto":
        return train["mixed_precision"]
    return "bf16" if torch.cuda.is_available() and not train["cpu"] else "no"


def check_config(config: dict) -> None:
    """Invariants of the config that no module checks before training would start."""
    if config["stage"] not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {config['stage']!r}")
    view_counts(config["data"])
    _check_number("data.mirror", config["data"]["mirror"], float, 0, 1)
    train = config["train"]
    for key, (kind, low, high) in TRAIN_NUMBERS.items():
        if key in train:
            _check_number(f"train.{key}", train[key], kind, low, high)
    if train["lr"] == 0:
        raise ValueError("train.lr must be > 0, got 0")
    for key in ("every", "keep"):
        _check_number(f"checkpoint.{key}", config["checkpoint"][key], int, 1, None)
    refiner_options = {
        "model.refiner_only": config["model"]["refiner_only"],
        "loss.decoder_l2": config["loss"]["decoder_l2"] > 0,
    }
    for key, used in refiner_options.items():
        if used and config["stage"] != "regression":
            raise ValueError(
                f"{key} is a regression-stage option, the stage is {config['stage']!r}"
            )
    if config["checkpoint"]["export_dtype"] not in EXPORT_DTYPES:
        raise ValueError(
            f"checkpoint.export_dtype must be one of {list(EXPORT_DTYPES)}, "
            f"got {config['checkpoint']['export_dtype']!r}"
        )


# train.<key>: (type, lowest, highest), None = unbounded; checked before training starts.
TRAIN_NUMBERS: dict[str, tuple[type, float, float | None]] = {
    "steps": (int, 1, None),
    "batch_size": (int, 1, None),
    "gradient_accumulation": (int, 1, None),
    "warmup_steps": (int, 0, None),
    "lr": (float, 0, None),  # and > 0, below
    "min_lr_ratio": (float, 0, 1),
    "weight_decay": (float, 0, None),
    "ema_decay": (float, 0, 1),
    "grad_clip": (float, 0, None),
    "pose_dropout": (float, 0, 1),
    "max_minutes": (float, 0, None),
}


def _check_number(name: str, value, kind: type, low: float, high: float | None) -> None:
    """ValueError naming `name` unless value is a `kind` number in [low, high]."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        is_number = is_number and float(value).is_integer()
    if not is_number or not math.isfinite(value):
        raise ValueError(
            f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        )
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_image_size(model: NVSModel, image_hw: list[int]) -> None:
    patch = model.patch_size
    if len(image_hw) != 2 or image_hw[0] % patch or image_hw[1] % patch:
        raise ValueError(
            f"data.image_size {image_hw} must be [height, width], both divisible by the "
            f"model's patch size {patch} (the decoder's, times the VAE's downsampling in the "
            "latent mode)"
        )


def flat_scalars(config: dict, prefix: str = "") -> dict:
    """The config as flat `a/b: scalar` pairs (TensorBoard's hyper-parameters)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{prefix}{key}/"))
        else:
            ok = isinstance(value, (int, float, str, bool))
            out[f"{prefix}{key}"] = value if ok else str(value)
    return out


def evaluation_interval(config: dict, accelerator: Accelerator) -> int:
    """Steps between evaluation grids (0: none). 0 under FSDP: the grids run the unwrapped
    model outside the FSDP forward, where the root's parameters stay sharded."""
    every = config["log"]["eval_every"]
    if every > 0 and accelerator.distributed_type == DistributedType.FSDP:
        if accelerator.is_main_process:
            print("gen_nvs.train: no evaluation grids under FSDP (log.eval_every)", file=sys.stderr)
        return 0
    return every


def build_probe(config: dict, accelerator: Accelerator) -> tuple[int, Probe | None]:
    """(steps between probes, the copy/held-out probe) on the main process of a
    regression run with `log.probe_every` > 0, else (0, None). Under FSDP there is none
    (it runs the unwrapped model, as the evaluation grids)."""
    log = config["log"]
    every = log["probe_every"]
    if (
        every <= 0
        or config["stage"] != "regression"
        or not accelerator.is_main_process
        or accelerator.distributed_type == DistributedType.FSDP
    ):
        return 0, None
    probe = Probe(
        num_scenes=log["probe_scenes"],
        image_hw=tuple(config["data"]["image_size"]),
        seed=log["probe_seed"],
        device=accelerator.device,
    )
    return every, probe


def out_of_time(accelerator: Accelerator, start: float, max_minutes: float) -> bool:
    """Whether this run's loop has used its `train.max_minutes` of wall-clock time (0: no
    limit; counted from the first step, so setup and the final save come on top), agreed
    by every process (the one that has run longest decides), so that all stop at one step."""
    if max_minutes <= 0:
        return False
    late = time.perf_counter() - start >= 60 * max_minutes
    if accelerator.num_processes == 1:  # nothing to agree on: no tensor, no device sync
        return late
    flag = torch.tensor(float(late), device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="max").item())


def append_record(path: Path, step: int, start: float, logs: dict) -> None:
    """One line of a run's JSON-lines log: the step, the seconds since `start` (a
    `time.perf_counter` value) and the logged values."""
    record = {"step": step, "time": time.perf_counter() - start, **logs}
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def tracker(config: dict) -> str | None:
    if config["log"]["tracker"] != "tensorboard":
        return None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print(
            "gen_nvs.train: tensorboard is not installed (pip install tensorboard, or the "
            "'train' extra); losses are logged to metrics.jsonl only",
            file=sys.stderr,
        )
        return None
    return "tensorboard"


# --------------------------------------------------------------------------------------
# Evaluation images and exports
# --------------------------------------------------------------------------------------


@torch.no_grad()
def evaluation_grid(model: NVSModel, batch: SceneBatch, sample_steps: int) -> torch.Tensor:
    """One row per scene: sources | targets | regression renders [| diffusion samples, DDIM
    with `sample_steps` steps on the model's noise schedule]; returns an image [3, H, W]
    in [0, 1]."""
    s = batch.num_sources
    images, c2w, k = batch.images, batch.c2w, batch.fxfycxcy
    b, v, _, h, w = images.shape
    scene = model.encode(images[:, :s], c2w[:, :s], k[:, :s])
    columns = [images, model.render(scene, c2w[:, s:], k[:, s:], (h, w)).rgb]
    if model.diffusion is not None and model.noise_schedule is not None:
        from gen_nvs.sampling import model_denoiser, model_scheduler, samples_to_views
        from samplers import sample

        rays = model.target_rays(scene.normalize(c2w[:, s:]), k[:, s:], (h, w))
        model_fn = make_model_fn(model.diffusion, scene.diffusion_cache, None, rays)
        x = sample(
            model_denoiser(model, model_fn),
            shape=(model.diffusion.noise_channels, *rays.shape[-2:]),
            num_samples=b * (v - s),
            seeds=0,
            scheduler=model_scheduler(model, "ddim"),
            steps=sample_steps,
            device=images.device,
        )
        x = rearrange(x, "(b t) k h w -> b t k h w", b=b)
        columns.append(samples_to_views(model, x, (h, w))[0])
    return tile(columns)


@torch.no_grad()
def geometry_grid(model: NVSModel, batch: SceneBatch) -> torch.Tensor:
    """One row per scene: every view | its estimated depth [| its true depth], the depths
    as inverse depth scaled to 1 at each scene's nearest pixel (so that the two compare
    whatever their scale); returns an image [3, H, W] in [0, 1]."""
    columns = [batch.images]
    if model.depth_head is not None:
        columns.append(inverse_depth_image(model.estimate_depth(batch.images)[0]))
    if batch.depth is not None:
        columns.append(inverse_depth_image(batch.depth.masked_fill(~batch.depth_valid, torch.inf)))
    return tile(columns)


def inverse_depth_image(depth: torch.Tensor) -> torch.Tensor:
    """depth [b, v, h, w] (inf: unknown) -> grey inverse depth [b, v, 3, h, w] in [0, 1]."""
    inverse = 1 / depth.float().clamp(min=1e-6)
    inverse = inverse / inverse.flatten(1).amax(dim=1).clamp(min=1e-6)[:, None, None, None]
    return inverse[:, :, None].expand(-1, -1, 3, -1, -1)


def tile(columns: list[torch.Tensor]) -> torch.Tensor:
    """Image blocks [b, n_i, 3, h, w] side by side, one row per scene, 1 px white borders
    -> [3, b (h + 2), sum n_i (w + 2)] in [0, 1] on the CPU."""
    grid = torch.cat(columns, dim=1).clamp(0, 1)  # (b, columns, 3, h, w)
    grid = torch.nn.functional.pad(grid, (1, 1, 1, 1), value=1.0)
    return rearrange(grid, "b n c h w -> c (b h) (n w)").float().cpu()


def averaged_weights(accelerator, forward, model: NVSModel, ema: EMA) -> dict | None:
    """The model's full state dict with the EMA weights, on the main process (None on the
    others). Every process calls it: with FSDP the shards are gathered."""
    with ema.applied(model):
        state = accelerator.get_state_dict(forward)
        if not accelerator.is_main_process:
            return None
        # Copies: the live parameters get their trained values back after the block.
        return {k.removeprefix("model."): v.detach().cpu().clone() for k, v in state.items()}


def write_export(
    directory: Path, weights: dict, model: NVSModel, config: dict, state: TrainState
) -> None:
    """The inference export: EMA weights + config.json (what `load_model` reads)."""
    info = {
        "training": {
            "stage": config["stage"],
            "step": state.step,
            "run": config["run"]["name"],
            "git_revision": git_revision(),
        }
    }
    if model.noise_schedule is not None:
        info["noise_schedule"] = model.noise_schedule
    dtype = EXPORT_DTYPES[config["checkpoint"]["export_dtype"]]
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    ckpt.save_export(directory, weights, {"model": model.config.to_dict(), **info})


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def train(config: dict) -> Path:
    """Train as `config` says; returns the run directory."""
    check_config(config)
    t, stage = config["train"], config["stage"]
    run_dir = Path(config["run"]["output_dir"]) / config["run"]["name"]
    state_dir = run_dir / "checkpoints"
    accelerator = Accelerator(
        mixed_precision=mixed_precision(t),
        gradient_accumulation_steps=t["gradient_accumulation"],
        log_with=tracker(config),
        project_config=ProjectConfiguration(
            project_dir=str(run_dir), logging_dir=str(run_dir / "logs")
        ),
        cpu=t["cpu"],
    )
    main_process = accelerator.is_main_process
    seed, rank = config["run"]["seed"], accelerator.process_index

    # Everything that can fail on bad input happens here, before the first step.
    resume = checkpoints.resolve_resume(config["checkpoint"]["resume"], state_dir)
    if resume is None and checkpoints.list_states(state_dir):
        raise ValueError(
            f"{run_dir} already holds training states: continue it with "
            "checkpoint.resume=latest, or choose another run.name"
        )
    torch.manual_seed(seed)
    model = build_model(config)
    check_image_size(model, config["data"]["image_size"])
    if resume is not None:
        checkpoints.check_compatible(resume, stage, model.config)
    set_trainable(model, config)
    data = TrainingData(config["data"], batch_size=t["batch_size"], seed=seed, rank=rank)
    forward, step_loss, term_names = build_objective(config, model, accelerator.device)
    optimizer = build_optimizer(model, t)
    lr_schedule = build_lr_schedule(optimizer, t)
    state = TrainState()
    forward, optimizer = accelerator.prepare(forward, optimizer)
    model = accelerator.unwrap_model(forward).model
    ema = EMA(model, t["ema_decay"])  # of the prepared (with FSDP: local, sharded) parameters
    # The EMA's own file per process under FSDP (its shards), one file otherwise.
    shard = rank if accelerator.distributed_type == DistributedType.FSDP else None
    training_state = dict(ema=ema, state=state, lr_schedule=lr_schedule, shard=shard)
    if resume is not None:
        checkpoints.load_state(accelerator, resume, **training_state)

    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:  # a fresh run: no losses of an earlier, unsaved attempt
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            (run_dir / "probe.jsonl").unlink(missing_ok=True)
        (run_dir / "config.yaml").write_text(dump(config))
        info = {"git_revision": git_revision(), "argv": sys.argv, "resumed_from": str(resume)}
        info["num_processes"] = accelerator.num_processes
        (run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    if accelerator.log_with:
        accelerator.init_trackers(config["run"]["name"], config=flat_scalars(config))

    def save() -> None:
        weights = averaged_weights(accelerator, forward, model, ema)

        def write_extras(directory: Path) -> None:
            (directory / "config.yaml").write_text(dump(config))
            checkpoints.write_model_config(directory, stage, model.config.to_dict())
            write_export(directory / "export", weights, model, config, state)

        def write_training_state(directory: Path) -> None:
            checkpoints.write_training_state(directory, **training_state, main_process=main_process)

        checkpoints.save_state(
            accelerator, state_dir, state.step, keep=config["checkpoint"]["keep"],
            write_training_state=write_training_state, write_extras=write_extras,
        )  # fmt: skip
        if main_process:
            write_export(run_dir / "export", weights, model, config, state)

    accum = t["gradient_accumulation"]
    loader = data.batches(state.step * accum, t["steps"] * accum)
    means = LossMeans(["loss", *term_names], accelerator.device)
    eval_every, eval_batch = evaluation_interval(config, accelerator), None
    probe_every, probe = build_probe(config, accelerator)
    progress = tqdm(
        total=t["steps"],
        initial=state.step,
        disable=not main_process,
        desc=stage,
        dynamic_ncols=True,
    )
    start, timed_out = time.perf_counter(), False
    for micro, batch in enumerate(loader, start=state.step * accum):
        with accelerator.accumulate(forward):
            views, posed, gen = step_inputs(config, batch, micro, rank, accelerator.device)
            loss, terms = step_loss(forward, views, posed, gen)
            accelerator.backward(loss)
            means.add({"loss": loss, **terms})
            if not accelerator.sync_gradients:
                continue
            max_norm = t["grad_clip"] if t["grad_clip"] > 0 else math.inf
            norm = float(accelerator.clip_grad_norm_(forward.parameters(), max_norm))
            applied = apply_update(optimizer, accelerator.scaler, state, norm, t)
            optimizer.zero_grad(set_to_none=True)
        lr_schedule.step()
        if applied:
            ema.update(model)
        state.step += 1
        progress.update(1)
        # The last step: the schedule's, or the first past the time limit; either is
        # logged, probed and saved.
        timed_out = state.step < t["steps"] and out_of_time(accelerator, start, t["max_minutes"])
        last = state.step == t["steps"] or timed_out

        if state.step % config["log"]["every"] == 0 or last:
            logs = means.pop(accelerator)
            logs.update(lr=lr_schedule.get_last_lr()[0], grad_norm=norm, skipped=state.skipped)
            accelerator.log(logs, step=state.step)
            progress.set_postfix(loss=f"{logs['loss']:.4f}", skipped=state.skipped)
            if main_process:
                append_record(run_dir / "metrics.jsonl", state.step, start, logs)

        if probe is not None and (state.step % probe_every == 0 or last):
            model.eval()
            with ema.applied(model):
                logs = probe(model)
            model.train()
            accelerator.log(logs, step=state.step)
            append_record(run_dir / "probe.jsonl", state.step, start, logs)
            progress.write(
                f"step {state.step}: copy probe {logs['probe/copy_psnr']:.2f} dB, "
                f"held-out novel views {logs['probe/novel_psnr']:.2f} dB"
            )

        if main_process and eval_every > 0 and state.step % eval_every == 0:
            if eval_batch is None:
                size = config["log"]["eval_scenes"]
                eval_batch = data.fixed_batch(size).to(accelerator.device)
            model.eval()
            with ema.applied(model):
                if stage == "geometry":
                    grid = geometry_grid(model, eval_batch)
                else:
                    grid = evaluation_grid(model, eval_batch, config["log"]["sample_steps"])
            model.train()
            path = run_dir / "samples" / f"{checkpoints.state_name(state.step)}.png"
            path.parent.mkdir(exist_ok=True)
            write_rgb(path, grid)

        if state.step % config["checkpoint"]["every"] == 0 or last:
            save()
        if last:
            break

    if timed_out and main_process:
        progress.write(f"stopped at step {state.step} of {t['steps']}: train.max_minutes reached")
        info = json.loads((run_dir / "run_info.json").read_text())
        info["stopped_early"] = {"step": state.step, "reason": "train.max_minutes"}
        (run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")

    progress.close()
    accelerator.end_training()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gen_nvs.train",
        description="Train gen-nvs (geometry, regression or diffusion stage) with Accelerate.",
    )
    parser.add_argument("--config", help="experiment YAML (applied over configs/defaults.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (YAML values)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump(config), end="")
            return 0
        run_dir = train(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"gen_nvs.train: error: {err}", file=sys.stderr)
        return 2
    print(f"gen_nvs.train: done, run directory {run_dir}")
    return 0
