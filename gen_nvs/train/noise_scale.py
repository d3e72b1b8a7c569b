"""The gradient noise scale of a training setup: what batch size its next steps can use.

    python -m gen_nvs.train.noise_scale --config configs/embedded-regression.yaml \\
        model.init_from=EXPORT [key=value ...] --batches 32 [--out noise.json]

McCandlish et al. (2018, "An Empirical Model of Large-Batch Training"): with G the true
gradient and S = tr(Sigma) the trace of the per-scene gradients' covariance, a batch of
B scenes gives E |g_B|^2 = |G|^2 + S / B, and B_noise = S / |G|^2 is the batch size
below which steps are dominated by noise: there a step of a k times larger batch is
worth about k steps (up to about B_noise), above it little more than one. It is measured
where training stands, on the config's own micro-batches (the same views, reflections
and pose dropout as `python -m gen_nvs.train`): K batch gradients g_1..g_K at the
config's batch size B, |G|^2 from the mean dot product of two different batches'
gradients and S / B from the mean squared norm less that (both unbiased). Per part of
the model too (encoder, decoder, refiner, ...), with a bootstrap interval over the K
batches. Nothing is trained; the model is in training mode, as a step sees it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from gen_nvs.train.config import load_config
from gen_nvs.train.data import TrainingData
from gen_nvs.train.loop import (
    build_model,
    build_objective,
    check_config,
    set_trainable,
    step_inputs,
)


@dataclass(frozen=True)
class NoiseScale:
    """`gradient_sq`: |G|^2; `trace`: S = tr(Sigma), per scene; `b_noise`: S / |G|^2
    (inf where |G|^2 is not above 0: no signal measured), with its bootstrap interval
    `b_noise_interval` (low, high)."""

    gradient_sq: float
    trace: float
    b_noise: float
    b_noise_interval: tuple[float, float]

    def to_dict(self) -> dict:
        return {
            "gradient_sq": self.gradient_sq,
            "trace": self.trace,
            "b_noise": self.b_noise,
            "b_noise_interval": list(self.b_noise_interval),
        }


def _estimate(gram: Tensor, batch_size: int) -> tuple[float, float]:
    """(|G|^2, S) from the Gram matrix [K, K] of K batch gradients of `batch_size` scenes;
    NaN entries off the diagonal (a batch paired with a copy of itself, in a bootstrap
    draw) are left out of the pairs."""
    k = gram.shape[0]
    off = gram[~torch.eye(k, dtype=torch.bool)]
    off_diagonal = off[~off.isnan()].mean()
    return float(off_diagonal), float((gram.diagonal().mean() - off_diagonal) * batch_size)


def _ratio(gradient_sq: float, trace: float) -> float:
    return trace / gradient_sq if gradient_sq > 0 else float("inf")


def noise_scale(
    gram: Tensor, batch_size: int, *, resamples: int = 1000, seed: int = 0
) -> NoiseScale:
    """The noise scale from the Gram matrix [K, K] (K >= 3) of K independent batch
    gradients of `batch_size` scenes each, with a 90 % bootstrap interval over batches
    (`resamples` draws of K batches)."""
    k = gram.shape[0]
    if gram.shape != (k, k) or k < 3:
        raise ValueError(f"need the Gram matrix of at least 3 gradients, got {tuple(gram.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    gram = gram.double()
    gradient_sq, trace = _estimate(gram, batch_size)
    gen = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(resamples):
        pick = torch.randint(0, k, (k,), generator=gen)
        repeats = (pick[:, None] == pick[None, :]) & ~torch.eye(k, dtype=torch.bool)
        draws.append(
            _ratio(*_estimate(gram[pick][:, pick].masked_fill(repeats, torch.nan), batch_size))
        )
    ordered = torch.tensor(draws).sort().values
    low, high = (float(ordered[int(q * (resamples - 1))]) for q in (0.05, 0.95))
    return NoiseScale(gradient_sq, trace, _ratio(gradient_sq, trace), (low, high))


def measure(config: dict, batches: int) -> dict:
    """{part: NoiseScale} for the whole model ("all") and each top-level part with
    trained parameters, from `batches` micro-batches of the config's training data."""
    check_config(config)
    if batches < 3:
        raise ValueError(f"--batches must be >= 3, got {batches}")
    t = config["train"]
    torch.manual_seed(config["run"]["seed"])
    model = build_model(config)
    set_trainable(model, config)
    model.train()
    device = torch.device("cpu") if t["cpu"] or not torch.cuda.is_available() else "cuda"
    model.to(device)
    data = TrainingData(
        config["data"], batch_size=t["batch_size"], seed=config["run"]["seed"], rank=0
    )
    forward, step_loss, _ = build_objective(config, model, device)
    forward.to(device)
    trained = [(n.split(".")[0], p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in trained]
    parts = sorted({part for part, _ in trained})
    vectors: dict[str, list[Tensor]] = {part: [] for part in parts}
    for micro, batch in enumerate(data.batches(0, batches)):
        views, posed, gen = step_inputs(config, batch, micro, 0, device)
        loss, _ = step_loss(forward, views, posed, gen)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        # A part without a loss on this batch (no depth, say) gets zeros.
        flat = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        for part in parts:
            own = [g.flatten() for (name, _), g in zip(trained, flat, strict=True) if name == part]
            vectors[part].append(torch.cat(own).float().cpu())
    grams = {}
    for part, rows in vectors.items():
        stacked = torch.stack(rows).double()  # [K, n]
        grams[part] = stacked @ stacked.T
    grams = {"all": sum(grams.values()), **grams}  # the parts' parameters are disjoint
    seed = config["run"]["seed"]
    return {part: noise_scale(gram, t["batch_size"], seed=seed) for part, gram in grams.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gen_nvs.train.noise_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", help="experiment YAML (applied over configs/defaults.yaml)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (YAML values)")
    parser.add_argument("--batches", type=int, default=32, help="batch gradients (32)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        result = measure(config, args.batches)
    except (ValueError, FileNotFoundError) as err:
        print(f"gen_nvs.train.noise_scale: error: {err}", file=sys.stderr)
        return 2
    batch = config["train"]["batch_size"]
    print(f"{args.batches} batches of {batch} scenes ({config['stage']} stage)")
    print(f"{'part':<12}{'|G|^2':>12}{'tr(Sigma)':>12}{'B_noise':>10}  90 % interval")
    for part, scale in result.items():
        low, high = scale.b_noise_interval
        print(
            f"{part:<12}{scale.gradient_sq:>12.3e}{scale.trace:>12.3e}{scale.b_noise:>10.1f}"
            f"  {low:.1f} .. {high:.1f}"
        )
    if args.out:
        payload = {"batches": args.batches, "batch_size": batch, "stage": config["stage"]}
        payload["parts"] = {part: scale.to_dict() for part, scale in result.items()}
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
