"""Compare two `gen-nvs eval` results scene by scene: is the new model better, or noise?

    python -m gen_nvs.eval.compare BASE/results.json NEW/results.json [--output regression]

Two models' means over 100 scenes can differ by a few hundredths of a dB by chance (the
embedded model's card, experiment 12). Evaluated on the same scenes, the difference can
be judged per scene: for each region (whole, seen, unseen) this prints the mean of the
per-scene differences NEW - BASE, a 95 % bootstrap interval of that mean (scenes
resampled with replacement, seeded) and in how many scenes NEW is better. A scene whose
region has no value in either file (an empty unseen region) is left out of that region.

`--output` picks what is compared: the regression render, the samples' mean over samples
(`samples`) or their best of N (`best`); `--metric` PSNR (default) or SSIM, both higher
is better.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gen_nvs.eval.evaluate import REGIONS as SPLIT_REGIONS

REGIONS = ("whole", *SPLIT_REGIONS)  # the whole image, then the regions results.json splits
OUTPUTS = ("regression", "samples", "best")
METRICS = ("psnr", "ssim")


@dataclass
class Difference:
    """NEW - BASE for one region over the scenes where both have a value."""

    region: str
    scenes: int
    mean: float
    low: float  # the 95 % bootstrap interval of the mean
    high: float
    better: int  # scenes where NEW > BASE


def check_metric(metric: str) -> None:
    """ValueError unless `metric` is one of `METRICS`."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def read_results(path: str | Path) -> dict:
    """A results.json of `gen-nvs eval`, checked to hold a 'scenes' list; ValueError
    naming the file otherwise."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{path}: no such file (expected a results.json of gen-nvs eval)"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable results.json of gen-nvs eval ({err})") from err
    scenes = results.get("scenes") if isinstance(results, dict) else None
    if not isinstance(scenes, list):
        raise ValueError(f"{path}: no 'scenes' list (expected a results.json of gen-nvs eval)")
    return results


def load_scene_means(path: str | Path) -> dict[str, dict]:
    """A results.json of `gen-nvs eval` -> {scene name: its per-scene means}."""
    means = {}
    for i, scene in enumerate(read_results(path)["scenes"]):
        if not isinstance(scene, dict) or "scene" not in scene or "means" not in scene:
            raise ValueError(f"{path}: scenes[{i}] lacks 'scene' or 'means'")
        means[scene["scene"]] = scene["means"]
    return means


def region_value(means: dict, output: str, metric: str, region: str) -> float | None:
    """One scene's mean `metric` of `output` over `region`, or None where it has none
    (an empty region, or a model that did not sample)."""
    if output == "regression":
        values = means.get("regression")
    else:
        diffusion = means.get("diffusion") or {}
        values = diffusion.get("mean" if output == "samples" else "best_of_n")
    if values is not None and region != "whole":
        values = values.get(region)
    value = None if values is None else values.get(metric)
    return None if value is None else float(value)


def compare(
    base: dict[str, dict],
    new: dict[str, dict],
    *,
    output: str = "regression",
    metric: str = "psnr",
    resamples: int = 2000,
    seed: int = 0,
) -> list[Difference]:
    """Per region, the paired difference of `new` against `base` (scene means as
    `load_scene_means` returns them). ValueError unless both hold the same scenes and
    `output` and `metric` are known."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    check_metric(metric)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    only_base, only_new = sorted(set(base) - set(new)), sorted(set(new) - set(base))
    if only_base or only_new:
        raise ValueError(
            "the two results do not hold the same scenes (evaluate both on one --data and "
            f"--index): only in the first {only_base[:5]}, only in the second {only_new[:5]}"
        )
    rng = np.random.default_rng(seed)
    rows = []
    for region in REGIONS:
        pairs = [
            (region_value(base[name], output, metric, region),
             region_value(new[name], output, metric, region))
            for name in sorted(base)
        ]  # fmt: skip
        diffs = np.array([b - a for a, b in pairs if a is not None and b is not None])
        if diffs.size == 0:
            raise ValueError(
                f"no scene has a {output} {metric} on the {region} region in both results "
                "(was the model evaluated with --samples 0?)"
            )
        boot = diffs[rng.integers(0, diffs.size, (resamples, diffs.size))].mean(axis=1)
        rows.append(
            Difference(
                region=region,
                scenes=int(diffs.size),
                mean=float(diffs.mean()),
                low=float(np.quantile(boot, 0.025)),
                high=float(np.quantile(boot, 0.975)),
                better=int((diffs > 0).sum()),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gen_nvs.eval.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("base", help="results.json of the model to compare against")
    parser.add_argument("new", help="results.json of the new model")
    parser.add_argument("--output", choices=OUTPUTS, default="regression")
    parser.add_argument("--metric", choices=METRICS, default="psnr")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap draws (2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    args = parser.parse_args(argv)
    try:
        base, new = load_scene_means(args.base), load_scene_means(args.new)
        rows = compare(
            base, new, output=args.output, metric=args.metric, resamples=args.resamples,
            seed=args.seed,
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    unit = " dB" if args.metric == "psnr" else ""
    print(f"{args.output} {args.metric}, {args.new} - {args.base}, per scene:")
    for row in rows:
        print(
            f"  {row.region:<7} {row.mean:+.3f}{unit} (95 % bootstrap {row.low:+.3f} to "
            f"{row.high:+.3f}), better in {row.better} of {row.scenes} scenes"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
