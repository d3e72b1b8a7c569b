"""The training loop on Hugging Face Accelerate, both stages.

    python -m gen_nvs.train --config configs/embedded-regression.yaml [key.sub=value ...]
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml \\
        -m gen_nvs.train --config configs/lagernvs-regression.yaml

Everything the run needs is checked before the first step (config keys, data paths and
image sizes, the LPIPS weights, a resumed state's model). The run directory
(`run.output_dir/run.name`) receives `config.yaml` (the resolved config), `run_info.json`
(git revision, command line), `metrics.jsonl` (the logged losses), `samples/` (evaluation
grids), `checkpoints/step_XXXXXXX` (resumable states, see `checkpoints`) and `export/`
(the latest inference export: EMA weights, loadable by `gen_nvs.models.nvs.load_model`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from einops import rearrange
from tqdm.auto import tqdm

from gen_nvs.data import SceneBatch
from gen_nvs.geometry import cameras as cam
from gen_nvs.models import checkpoint as ckpt
from gen_nvs.models.diffusion import from_diffusion_space, make_model_fn
from gen_nvs.models.losses import DenoisingLoss
from gen_nvs.models.nvs import NVSModel, load_model, model_config
from gen_nvs.train import checkpoints, objectives
from gen_nvs.train.config import dump, git_revision, load_config
from gen_nvs.train.data import TrainingData, batch_seed, view_counts
from gen_nvs.train.ema import EMA

STAGES = ("regression", "diffusion")
# Storage types of the inference export (load_model reads any of them back as float32).
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Parameters no forward pass uses (DINOv2's masked-modelling token); DDP needs every
# trained parameter to get a gradient.
NEVER_USED = ("encoder.aggregator.patch_embed.mask_token",)
# The seed stream of the per-step draws (source count, pose dropout, noise), apart from
# the data order's (stream 0).
_STEP_STREAM = 1


@dataclass
class TrainState:
    """Counters saved with every state: optimizer steps done, spike steps skipped, and
    the running mean of accepted gradient norms."""

    step: int = 0
    skipped: int = 0
    accepted: int = 0
    grad_norm_mean: float = 0.0

    def is_spike(self, norm: float, factor: float, warmup: int) -> bool:
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


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def build_model(config: dict) -> NVSModel:
    """The model to train: an export (`model.init_from`) or a preset (optionally from
    official checkpoints); the diffusion stage adds its diffusion decoder."""
    m, stage = config["model"], config["stage"]
    if m["init_from"]:
        model = load_model(m["init_from"]).train()
    elif stage == "diffusion":
        raise ValueError(
            "the diffusion stage starts from a trained regression model: set "
            "model.init_from=<regression export>"
        )
    else:
        model_cfg = model_config(m["preset"], variant=m["variant"], point_head=m["point_head"])
        for part in ("encoder", "decoder", "camera_head"):
            model_cfg[part].update(m[part])
        try:
            model = NVSModel.from_config(model_cfg)
        except TypeError as err:  # an unknown module option in model.encoder/decoder/...
            raise ValueError(f"model options: {err}") from err
        if m["official_vggt"] or m["official_lagernvs"]:
            from gen_nvs.models.convert import load_official_weights

            load_official_weights(model, lagernvs=m["official_lagernvs"], vggt=m["official_vggt"])
    if stage == "diffusion" and model.diffusion is None:
        d = config["diffusion"]
        model.add_diffusion(
            prediction_type=d["prediction_type"],
            noise_channels=d["noise_channels"],
            cond_dropout=d["cond_dropout"],
            frequency_dim=d["frequency_dim"],
        )
    return model


def set_trainable(model: NVSModel, config: dict) -> None:
    """Freeze what this stage does not train (parts without a loss included, so that
    every trained parameter gets a gradient, as DDP needs)."""
    m, loss = config["model"], config["loss"]
    model.requires_grad_(config["stage"] == "regression")
    if config["stage"] == "diffusion":
        model.diffusion.requires_grad_(True)
    else:
        model.encoder.freeze(m["freeze_encoder"])
        if model.diffusion is not None:
            model.diffusion.requires_grad_(False)
        if model.camera_head is not None and loss["camera"] <= 0:
            model.camera_head.requires_grad_(False)
        if model.decoder.point_head is not None and loss["points"] <= 0:
            model.decoder.point_head.requires_grad_(False)
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
    """The DDPM training schedule's options (stored in the export for the samplers)."""
    d = config["diffusion"]
    keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")
    return {
        "prediction_type": d["prediction_type"],
        **{k: d[k] for k in keys},
        "rescale_betas_zero_snr": d["rescale_betas_zero_snr"],
    }


def build_scheduler(config: dict, name: str = "ddpm"):
    from samplers.schedulers import build_scheduler as build

    return build(name, **diffusion_schedule(config))


def build_objective(config: dict, model: NVSModel, device: torch.device):
    """(forward, step_loss): the module to prepare with Accelerate (it holds the model)
    and `step_loss(forward, views, posed, generator) -> (loss, {term: value})`."""
    loss = config["loss"]
    if config["stage"] == "regression":
        forward = objectives.RegressionForward(model, camera_head=loss["camera"] > 0)
        regression = objectives.RegressionLoss(
            l2=loss["l2"],
            perceptual=loss["perceptual"],
            points=loss["points"],
            camera=loss["camera"],
            point_alpha=loss["point_alpha"],
            point_space=loss["point_space"],
            perceptual_fn=build_perceptual(loss, device),
        )

        def regression_step(forward, views, posed, generator):
            output, poses = forward(views, posed)
            return regression(output, poses, views)

        return forward, regression_step

    d = config["diffusion"]
    denoising = DenoisingLoss(
        prediction_type=model.diffusion.prediction_type,
        weighting=d["weighting"],
        min_snr_gamma=d["min_snr_gamma"],
    )
    alphas_cumprod = build_scheduler(config).alphas_cumprod.float()
    channels = model.diffusion.noise_channels

    def diffusion_step(forward, views, posed, generator):
        noised = objectives.noise_targets(views, alphas_cumprod, channels, generator)
        prediction = forward(views, noised.x_t, noised.timesteps, posed, generator)
        return objectives.denoising_loss(denoising, prediction, noised)

    return objectives.DiffusionForward(model), diffusion_step


def mixed_precision(train: dict) -> str:
    if train["mixed_precision"] != "auto":
        return train["mixed_precision"]
    return "bf16" if torch.cuda.is_available() and not train["cpu"] else "no"


def check_config(config: dict) -> None:
    """Invariants of the config that no module checks before training would start."""
    if config["stage"] not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {config['stage']!r}")
    view_counts(config["data"])
    train = config["train"]
    for key in ("steps", "batch_size", "gradient_accumulation"):
        if train[key] < 1:
            raise ValueError(f"train.{key} must be >= 1, got {train[key]}")
    if not 0 <= train["pose_dropout"] <= 1:
        raise ValueError(f"train.pose_dropout must be in [0, 1], got {train['pose_dropout']}")
    if config["checkpoint"]["keep"] < 1 or config["checkpoint"]["every"] < 1:
        raise ValueError("checkpoint.every and checkpoint.keep must be >= 1")
    if config["checkpoint"]["export_dtype"] not in EXPORT_DTYPES:
        raise ValueError(
            f"checkpoint.export_dtype must be one of {list(EXPORT_DTYPES)}, "
            f"got {config['checkpoint']['export_dtype']!r}"
        )


def check_image_size(model: NVSModel, image_hw: list[int]) -> None:
    patch = model.patch_size
    if len(image_hw) != 2 or image_hw[0] % patch or image_hw[1] % patch:
        raise ValueError(
            f"data.image_size {image_hw} must be [height, width], both divisible by the "
            f"decoder patch size {patch}"
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
def evaluation_grid(model: NVSModel, batch: SceneBatch, config: dict) -> torch.Tensor:
    """One row per scene: sources | targets | regression renders [| diffusion samples];
    returns an image [3, H, W] in [0, 1]."""
    s = batch.num_sources
    images, c2w, k = batch.images, batch.c2w, batch.fxfycxcy
    b, v, _, h, w = images.shape
    scene = model.encode(images[:, :s], c2w[:, :s], k[:, :s])
    target_c2w = scene.normalize(c2w[:, s:])
    rays = cam.plucker_rays(target_c2w, k[:, s:], h, w)
    columns = [images, scene.cache.render(rays).rgb]
    if model.diffusion is not None:
        from samplers.sampling import sample

        null = model.diffusion.null_context(b, scene.diffusion_cache.num_source_tokens)
        fn = make_model_fn(model.diffusion, scene.diffusion_cache, null, rays)
        channels = model.diffusion.noise_channels
        x = sample(
            fn,
            shape=(channels, h, w),
            num_samples=b * (v - s),
            seeds=0,
            scheduler=build_scheduler(config, "ddim"),
            steps=config["log"]["sample_steps"],
            device=images.device,
        )
        columns.append(from_diffusion_space(rearrange(x, "(b t) k h w -> b t k h w", b=b))[0])
    grid = torch.cat(columns, dim=1).clamp(0, 1)  # (b, columns, 3, h, w)
    grid = torch.nn.functional.pad(grid, (1, 1, 1, 1), value=1.0)
    return rearrange(grid, "b n c h w -> c (b h) (n w)").float().cpu()


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path)


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
    if model.diffusion is not None:
        info["noise_schedule"] = diffusion_schedule(config)
    dtype = EXPORT_DTYPES[config["checkpoint"]["export_dtype"]]
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    ckpt.save_export(directory, weights, {"model": model.config, **info})


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
    low, high, _ = view_counts(config["data"])
    forward, step_loss = build_objective(config, model, accelerator.device)
    optimizer = build_optimizer(model, t)
    lr_schedule = build_lr_schedule(optimizer, t)
    state = TrainState()
    forward, optimizer = accelerator.prepare(forward, optimizer)
    model = accelerator.unwrap_model(forward).model
    ema = EMA(model, t["ema_decay"])  # of the prepared (with FSDP: local, sharded) parameters
    accelerator.register_for_checkpointing(ema, state, lr_schedule)
    if resume is not None:
        accelerator.load_state(str(resume))

    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:  # a fresh run: no losses of an earlier, unsaved attempt
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
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
            checkpoints.write_model_config(directory, stage, model.config)
            write_export(directory / "export", weights, model, config, state)

        checkpoints.save_state(
            accelerator, state_dir, state.step, keep=config["checkpoint"]["keep"],
            write_extras=write_extras,
        )  # fmt: skip
        if main_process:
            write_export(run_dir / "export", weights, model, config, state)

    accum = t["gradient_accumulation"]
    loader = data.batches(state.step * accum, t["steps"] * accum)
    eval_batch = None
    sums: dict[str, torch.Tensor] = {}  # summed on the device: no sync per step
    count = 0
    progress = tqdm(
        total=t["steps"],
        initial=state.step,
        disable=not main_process,
        desc=stage,
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    for micro, batch in enumerate(loader, start=state.step * accum):
        gen = torch.Generator().manual_seed(batch_seed(seed, micro, rank, _STEP_STREAM))
        num_sources = int(torch.randint(low, high + 1, (), generator=gen))
        posed = bool(torch.rand((), generator=gen) >= t["pose_dropout"])
        with accelerator.accumulate(forward):
            views = objectives.select_views(batch.to(accelerator.device), num_sources, gen)
            loss, terms = step_loss(forward, views, posed, gen)
            accelerator.backward(loss)
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
            count += 1
            if not accelerator.sync_gradients:
                continue
            max_norm = t["grad_clip"] if t["grad_clip"] > 0 else math.inf
            norm = float(accelerator.clip_grad_norm_(forward.parameters(), max_norm))
            skip = state.is_spike(norm, t["spike_factor"], t["spike_warmup"])
            if skip:
                state.skipped += 1
            else:
                optimizer.step()
                state.accept(norm)
            optimizer.zero_grad(set_to_none=True)
        lr_schedule.step()
        if not skip:
            ema.update(model)
        state.step += 1
        progress.update(1)

        if state.step % config["log"]["every"] == 0 or state.step == t["steps"]:
            means = accelerator.reduce(torch.stack(list(sums.values())) / count, "mean")
            logs = dict(zip(sums, means.tolist(), strict=True))
            logs.update(lr=lr_schedule.get_last_lr()[0], grad_norm=norm, skipped=state.skipped)
            accelerator.log(logs, step=state.step)
            progress.set_postfix(loss=f"{logs['loss']:.4f}", skipped=state.skipped)
            if main_process:
                record = {"step": state.step, "time": time.perf_counter() - start, **logs}
                with (run_dir / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
            sums, count = {}, 0

        every = config["log"]["eval_every"]
        if every > 0 and state.step % every == 0:
            # On every process (FSDP's sharded layers gather across them); the main one saves.
            if eval_batch is None:
                size = config["log"]["eval_scenes"]
                eval_batch = data.fixed_batch(size).to(accelerator.device)
            model.eval()
            with ema.applied(model):
                grid = evaluation_grid(model, eval_batch, config)
            model.train()
            if main_process:
                save_png(grid, run_dir / "samples" / f"{checkpoints.state_name(state.step)}.png")

        if state.step % config["checkpoint"]["every"] == 0 or state.step == t["steps"]:
            save()

    progress.close()
    accelerator.end_training()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gen_nvs.train",
        description="Train gen-nvs (regression or diffusion stage) with Accelerate.",
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
