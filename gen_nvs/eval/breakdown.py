"""Where a model's errors lie: `gen-nvs eval` results grouped by how far each target
view is from its nearest source.

    python -m gen_nvs.eval.breakdown RESULTS.json [--by parallax] [--bins 4] [--metric psnr]

A mean over 100 scenes mixes views a few pixels from a source with views that look at
the scene from the other side. `gen-nvs eval` records every target's `view_change`
(`gen_nvs.eval.evaluate.view_change`): the baseline to the nearest source, the angle
between their rotations and, on datasets with depth, the parallax (the baseline over the
near depth of that source, the apparent motion of the nearest content). This sorts the
targets by one of them, splits them into `--bins` groups of equal size and prints each
group's range, its mean unseen fraction and its mean metric per output and region
(means over targets, not over scenes as `results.json`'s means are). A table in
Markdown, or JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gen_nvs.eval.compare import METRICS, check_metric, read_results, region_value

MEASURES = ("parallax", "baseline", "rotation_deg")
# (output, region) pairs shown, as `compare.region_value` names them.
COLUMNS = (
    ("regression", "whole"),
    ("regression", "seen"),
    ("regression", "unseen"),
    ("samples", "whole"),
    ("samples", "unseen"),
    ("best", "unseen"),
)


@dataclass
class Group:
    """Targets whose measure lies in [low, high]: their count and means."""

    low: float
    high: float
    targets: int
    unseen_fraction: float | None
    means: dict[str, float | None]  # "output/region" -> mean over the targets with a value


def target_entries(results: dict, path: str | Path = "results") -> list[dict]:
    """Every target entry of every scene; ValueError naming the entry that lacks its
    `view_change` (results written before evaluation recorded it)."""
    entries = []
    for i, scene in enumerate(results["scenes"]):
        targets = scene.get("targets") if isinstance(scene, dict) else None
        if not isinstance(targets, list):
            raise ValueError(f"{path}: scenes[{i}] has no 'targets' list")
        for k, target in enumerate(targets):
            if not isinstance(target, dict) or not isinstance(target.get("view_change"), dict):
                raise ValueError(
                    f"{path}: scenes[{i}].targets[{k}] has no 'view_change' (written by an "
                    "older gen-nvs eval); evaluate the model again"
                )
            entries.append(target)
    return entries


def breakdown(
    targets: list[dict], *, by: str = "parallax", bins: int = 4, metric: str = "psnr"
) -> tuple[list[Group], int]:
    """Split target entries (as `target_entries` returns them) into `bins` groups of equal
    size by `view_change[by]` -> (groups from the smallest measure up, how many targets
    had no value of the measure and were left out)."""
    if by not in MEASURES:
        raise ValueError(f"by must be one of {', '.join(MEASURES)}, got {by!r}")
    check_metric(metric)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    measured = [t for t in targets if t["view_change"].get(by) is not None]
    if not measured:
        hint = " (the dataset has no depth); group by baseline or rotation_deg" * (by == "parallax")
        raise ValueError(f"no target has a {by}{hint}")
    if bins > len(measured):
        raise ValueError(f"{bins} bins for {len(measured)} targets with a {by}")
    values = np.array([t["view_change"][by] for t in measured], dtype=float)
    order = np.argsort(values, kind="stable")
    groups = []
    for chunk in np.array_split(order, bins):
        members = [measured[i] for i in chunk]
        fractions = [t["unseen_fraction"] for t in members if t.get("unseen_fraction") is not None]
        means = {}
        for output, region in COLUMNS:
            found = [region_value(t, output, metric, region) for t in members]
            found = [v for v in found if v is not None]
            means[f"{output}/{region}"] = float(np.mean(found)) if found else None
        groups.append(
            Group(
                low=float(values[chunk].min()),
                high=float(values[chunk].max()),
                targets=len(members),
                unseen_fraction=float(np.mean(fractions)) if fractions else None,
                means=means,
            )
        )
    return groups, len(targets) - len(measured)


def markdown(groups: list[Group], by: str, metric: str) -> str:
    """The groups as a Markdown table; columns no group has a value in are left out."""
    shown = [name for name in groups[0].means if any(g.means[name] is not None for g in groups)]
    header = [by, "targets", "unseen fraction", *(f"{name} {metric}" for name in shown)]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}" if metric == "ssim" else f"{value:.2f}"

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for g in groups:
        fraction = "-" if g.unseen_fraction is None else f"{g.unseen_fraction:.3f}"
        row = [f"{g.low:.3g} - {g.high:.3g}", str(g.targets), fraction]
        lines.append("| " + " | ".join(row + [cell(g.means[n]) for n in shown]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gen_nvs.eval.breakdown", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("results", help="results.json of gen-nvs eval")
    parser.add_argument("--by", choices=MEASURES, default="parallax")
    parser.add_argument("--bins", type=int, default=4, help="groups of equal size (4)")
    parser.add_argument("--metric", choices=METRICS, default="psnr")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        targets = target_entries(read_results(args.results), args.results)
        groups, missing = breakdown(targets, by=args.by, bins=args.bins, metric=args.metric)
    except ValueError as err:
        parser.error(str(err))
    if args.json:
        print(json.dumps({"by": args.by, "metric": args.metric, "left_out": missing,
                          "groups": [asdict(g) for g in groups]}, indent=2))  # fmt: skip
        return 0
    print(f"{Path(args.results)}: targets by {args.by}, means over targets")
    print(markdown(groups, args.by, args.metric))
    if missing:
        print(f"({missing} targets without a {args.by} left out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
