"""Train the small image VAE of the latent mode on the images of a processed dataset.

    python -m gen_nvs.train.vae --data data/proc64-train --test data/proc64-test \\
        --out runs/vae --minutes 10

A `tiny_vae_config` AutoencoderKL (4 latent channels, 4x downsampling by default) is
trained with L1 + a small KL term (LDM's weighting: both summed per image, KL weight
1e-6; no adversarial or perceptual loss) by AdamW with a cosine learning rate that
reaches zero at `--steps` or after `--minutes`, whichever comes first. At the end the
EMA weights are kept, `scaling_factor` and `shift_factor` are set to 1/std and the mean
of the training latents (as Stable Diffusion chose its 0.18215), the held-out
reconstruction PSNR is measured, and OUT receives the VAE in diffusers' layout
(`LatentCodec(OUT)` loads it) and `metrics.json`.

Data roots are in the RealEstate10K layout (`gen_nvs.data.re10k`); only the frames
under `images/<scene>/` are read: a VAE needs no cameras.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL
from torch import Tensor

from gen_nvs.data.scene import load_image
from gen_nvs.eval.metrics import psnr
from gen_nvs.models.vae import LatentCodec, tiny_vae_config
from gen_nvs.train.config import git_revision
from gen_nvs.train.ema import EMA

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
WARMUP_STEPS = 50


def list_images(root: str | Path) -> list[Path]:
    """Every frame under ROOT/images/<scene>/, sorted; ValueError when there is none."""
    folder = Path(root) / "images"
    paths = sorted(p for p in folder.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images under {folder}/<scene>/ (expected a processed dataset root)")
    return paths


def load_images(paths: list[Path]) -> Tensor:
    """The images [n, 3, h, w] in [0, 1]; all must share one size."""
    images = [load_image(p) for p in paths]
    sizes = {tuple(x.shape[-2:]) for x in images}
    if len(sizes) > 1:
        raise ValueError(f"images have different sizes {sorted(sizes)}; the VAE trainer needs one")
    return torch.stack(images)


def draw_batch(paths: list[Path], batch_size: int, generator: torch.Generator) -> Tensor:
    """Random frames [b, 3, h, w], each flipped left-right with probability 1/2."""
    picks = torch.randint(len(paths), (batch_size,), generator=generator).tolist()
    images = load_images([paths[i] for i in picks])
    flip = torch.rand(batch_size, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def vae_loss(
    vae: AutoencoderKL, images: Tensor, kl_weight: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, L1, KL) of a batch [b, 3, h, w] in [0, 1]: per-image sums, divided by the
    number of image values so that the loss reads as a mean absolute error."""
    x = images * 2 - 1
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator)  # (b, c, h/f, w/f)
    l1 = (vae.decode(z).sample - x).abs().flatten(1).sum(1)  # (b,)
    kl = posterior.kl()  # (b,)
    loss = (l1 + kl_weight * kl).mean() / x[0].numel()
    return loss, l1.mean() / x[0].numel(), kl.mean()


def learning_rate(base: float, step: int, progress: float) -> float:
    """Linear warmup, then cosine from `base` to 0 as `progress` goes from 0 to 1."""
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    return base * warmup * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, images: Tensor, batch_size: int) -> tuple[float, float]:
    """(mean, std) over every value of the posterior means of `images` [n, 3, h, w]."""
    z = torch.cat([vae.encode(x * 2 - 1).latent_dist.mean for x in images.split(batch_size)])
    return z.mean().item(), z.std().item()


@torch.no_grad()
def reconstruction_psnr(codec: LatentCodec, paths: list[Path], batch_size: int) -> float:
    """Mean per-image PSNR (dB) of encode -> decode over the images at `paths`."""
    values = []
    for start in range(0, len(paths), batch_size):
        images = load_images(paths[start : start + batch_size])
        values.append(psnr(codec.decode(codec.encode(images)), images))
    return torch.cat(values).mean().item()


def fit(args: argparse.Namespace, accelerator: Accelerator, paths: list[Path]):
    """The training loop -> (trained VAE, its EMA, steps done, minutes spent)."""
    codec = LatentCodec(
        tiny_vae_config(args.latent_channels, args.downsample, args.width), trainable=True
    )
    codec.check_image_size(*load_image(paths[0]).shape[-2:])
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.Generator(accelerator.device).manual_seed(args.seed + 1)
    optimizer = torch.optim.AdamW(codec.vae.parameters(), lr=args.lr, weight_decay=0.0)
    vae, optimizer = accelerator.prepare(codec.vae, optimizer)
    ema = EMA(codec.vae, args.ema_decay)

    start, step = time.monotonic(), 0
    limit_s = math.inf if args.minutes is None else args.minutes * 60
    while step < args.steps and time.monotonic() - start < limit_s:
        progress = max(step / args.steps, (time.monotonic() - start) / limit_s)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, step, progress)
        images = draw_batch(paths, args.batch_size, generator).to(accelerator.device)
        loss, l1, kl = vae_loss(vae, images, args.kl_weight, noise)
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
        ema.update(codec.vae)
        step += 1
        if step % args.log_every == 0 or step == 1:
            print(
                f"step {step} loss {loss.item():.4f} l1 {l1.item():.4f} kl {kl.item():.1f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} "
                f"{(time.monotonic() - start) / 60:.1f} min",
                flush=True,
            )
    return accelerator.unwrap_model(vae), ema, step, (time.monotonic() - start) / 60


def train(args: argparse.Namespace) -> dict:
    """Train, calibrate, save and evaluate as the arguments say; returns the metrics."""
    train_paths = list_images(args.data)
    test_paths = list_images(args.test)[: args.test_images] if args.test else []
    torch.manual_seed(args.seed)
    accelerator = Accelerator(cpu=args.cpu)
    vae, ema, steps, minutes = fit(args, accelerator, train_paths)

    picks = torch.randperm(len(train_paths), generator=torch.Generator().manual_seed(args.seed))
    stat_images = load_images([train_paths[i] for i in picks[: args.stat_images]])
    with ema.applied(vae):
        vae.eval()
        mean, std = latent_statistics(vae, stat_images.to(accelerator.device), args.batch_size)
        vae.register_to_config(scaling_factor=1 / std, shift_factor=mean)
        if accelerator.is_main_process:
            saved = copy.deepcopy(vae).cpu()
            (saved.half() if args.dtype == "float16" else saved).save_pretrained(args.out)
    accelerator.wait_for_everyone()

    # Measured on the saved folder, so that the number is the shipped VAE's.
    codec = LatentCodec(args.out)
    metrics = {
        "steps": steps,
        "minutes": round(minutes, 2),
        "images_seen": steps * args.batch_size,
        "psnr": reconstruction_psnr(codec, test_paths, args.batch_size) if test_paths else None,
        "test_images": len(test_paths),
        "scaling_factor": 1 / std,
        "shift_factor": mean,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "git_revision": git_revision(),
    }
    if accelerator.is_main_process:
        (Path(args.out) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gen_nvs.train.vae",
        description="Train the small AutoencoderKL of the latent mode on a dataset's images.",
    )
    parser.add_argument("--data", type=Path, required=True, help="training dataset root")
    parser.add_argument("--test", type=Path, help="held-out dataset root for the final PSNR")
    parser.add_argument("--test-images", type=int, default=600, help="at most this many")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--steps", type=int, default=100_000, help="at most this many steps")
    parser.add_argument("--minutes", type=float, help="stop training after this long")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--latent-channels", type=int, default=4)
    parser.add_argument("--downsample", type=int, default=4)
    parser.add_argument("--width", type=int, default=16, help="channels of the first block")
    parser.add_argument("--stat-images", type=int, default=1024, help="for scaling/shift")
    parser.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="saved weights"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or (args.minutes is not None and args.minutes <= 0):
        parser.error("--steps, --batch-size and --minutes must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        metrics = train(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"gen_nvs.train.vae: error: {err}", file=sys.stderr)
        return 2
    print(f"gen_nvs.train.vae: {metrics['steps']} steps, held-out PSNR {metrics['psnr']} dB")
    print(f"gen_nvs.train.vae: saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
