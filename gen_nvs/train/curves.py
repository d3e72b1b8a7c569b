"""A run's learning curve as a Markdown table: the copy probe and held-out PSNR
(`probe.jsonl`) beside the mean training losses since the previous probe
(`metrics.jsonl`).

    python -m gen_nvs.train.curves runs/embedded-regression [--every 500]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROBE_COLUMNS = {
    "probe/copy_psnr": "copy",
    "probe/novel_psnr": "novel",
    "probe/interp_psnr": "interp",
    "probe/extrap_psnr": "extrap",
}
# Runs since the probe measures mirrored scenes (older probe.jsonl files lack it).
MIRROR_COLUMNS = {"probe/mirror_novel_psnr": "mirror novel"}
# A model with a warp refiner's: its decoder's own render.
DECODER_COLUMNS = {
    "probe/decoder_copy_psnr": "decoder copy",
    "probe/decoder_novel_psnr": "decoder novel",
}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is it a training run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curve_table(run_dir: Path, every: int = 0) -> str:
    """The Markdown table of `run_dir`'s probes (every `every` steps, 0: all of them)."""
    probes = read_jsonl(run_dir / "probe.jsonl")
    losses = read_jsonl(run_dir / "metrics.jsonl")
    terms = [k for k in losses[0] if k not in ("step", "time", "lr", "grad_norm", "skipped")]
    columns = dict(PROBE_COLUMNS)
    for optional in (MIRROR_COLUMNS, DECODER_COLUMNS):
        if any(key in probe for probe in probes for key in optional):
            columns.update(optional)
    rows, previous = [], 0
    for probe in probes:
        step = probe["step"]
        if every and step % every and probe is not probes[-1]:
            continue
        window = [r for r in losses if previous < r["step"] <= step]
        previous = step
        means = [sum(r[t] for r in window) / len(window) if window else float("nan") for t in terms]
        psnr = [probe.get(key, float("nan")) for key in columns]
        cells = [str(step), f"{probe['time'] / 60:.0f}", *(f"{v:.2f}" for v in psnr)]
        rows.append(cells + [f"{v:.4f}" for v in means])
    header = ["step", "minutes", *(f"{c} PSNR" for c in columns.values()), *terms]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gen_nvs.train.curves", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--every", type=int, default=0, help="keep probes every N steps")
    args = parser.parse_args(argv)
    try:
        print(curve_table(args.run_dir, args.every))
    except (FileNotFoundError, KeyError, IndexError, ValueError) as err:
        print(f"gen_nvs.train.curves: error: {args.run_dir}: {err!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
