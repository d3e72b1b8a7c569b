"""The embedded default model's whole recipe in one command, on a CPU or a lent GPU.

    python -m gen_nvs.train.recipe --runs runs --data data [--scale 4] [--install]

It makes the procedural data when it is missing (`gen-nvs make-scenes`, the training set
and the held-out set), then runs the stages of `STAGES` in order, each from its config
in configs/ and each starting from the previous stage's export, and finally evaluates
the last export on the held-out set (`gen-nvs eval`, novel views and the copy probe).
`--scale K` multiplies every stage's steps and batch size by K (a GPU does in minutes
what the CPU does in an hour: K = 4 to 16 there) and the learning rates by sqrt(K);
`--install` copies the final export over the shipped default model
(gen_nvs/assets/default/). A stage whose export has reached the stage's last step is
skipped unless `--fresh`, and a stage stopped part-way resumes from its latest training
state, so an interrupted recipe continues where it stopped.

Work carries over between sessions and machines: `--from EXPORT` starts the first stage
from an export (the shipped default, `--from default`) instead of from scratch, and
`--set STAGE:key=value` changes one stage's config (a continuation usually wants
`--set regression:train.lr=5e-4`, a shorter `train.steps`, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gen_nvs.models.nvs import DEFAULT_MODEL_DIR, load_model
from gen_nvs.train.checkpoints import list_states
from gen_nvs.train.config import CONFIG_DIR, load_config
from gen_nvs.train.loop import train

# (config file, the stage whose export it starts from: None = from scratch).
STAGES: dict[str, tuple[str, str | None]] = {
    "regression": ("embedded-regression.yaml", None),
    "camera": ("embedded-camera.yaml", "regression"),
    "diffusion": ("embedded-diffusion.yaml", "camera"),
    # The warp refiner alone, on the frozen model (it keeps the camera head and diffusion
    # decoder): trained last, on the geometry the model ends with.
    "refiner": ("embedded-refiner.yaml", "diffusion"),
}
# `gen-nvs make-scenes` arguments of the two data sets.
TRAIN_SET = ("proc64-train", ["--scenes", "6000", "--views", "6", "--size", "64", "64"], 0)
TEST_SET = ("proc64-test", ["--scenes", "100", "--views", "6", "--size", "64", "64"], 1_000_000)


def make_data(
    data: Path,
    sets: Sequence[tuple[str, list[str], int]] = (TRAIN_SET, TEST_SET),
    workers: int = 1,
    timeout: float | None = None,
) -> None:
    """Write the procedural `sets` (name, make-scenes arguments, seed) under `data`, each
    unless it is there, in `workers` processes; `timeout` seconds for all of them."""
    start = time.perf_counter()
    for name, args, seed in sets:
        root = data / name
        if (root / "full_list.txt").is_file():
            continue
        command = ["make-scenes", "--out", str(root), *args, "--seed", str(seed), "--overwrite"]
        left = None if timeout is None else timeout - (time.perf_counter() - start)
        run_cli([*command, "--workers", str(workers)], timeout=left)


def eval_command(checkpoint: str | Path, data: Path, out: Path, index: str, samples: int) -> list:
    """`gen-nvs eval` of `checkpoint` on the held-out set under `data` with the index
    configs/eval/`index`, into `out` (rewritten: the recipe's own folder)."""
    return [
        "eval", "--checkpoint", str(checkpoint), "--data", str(data / TEST_SET[0]),
        "--out", str(out), "--index", str(CONFIG_DIR / "eval" / index),
        "--samples", str(samples), "--overwrite",
    ]  # fmt: skip


def stage_config(
    stage: str,
    runs: Path,
    data: Path,
    scale: int,
    device: str,
    init_from: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> dict:
    """The stage's config with the recipe's run and data folders, scaled by `scale`.

    It starts from `init_from` when given, else from the previous stage's export (from
    scratch for the first stage); `overrides` (`key=value`) apply last, before scaling.
    """
    file, previous = STAGES[stage]
    settings = [f"run.output_dir={runs}", f"data.datasets.procedural.root={data / TRAIN_SET[0]}"]
    if init_from is not None:
        settings.append(f"model.init_from={init_from}")
    elif previous is not None:
        settings.append(f"model.init_from={runs / run_name(previous) / 'export'}")
    if device == "cpu":
        settings.append("train.cpu=true")
    config = load_config(CONFIG_DIR / file, [*settings, *overrides])
    if scale != 1:
        t = config["train"]
        t["steps"] *= scale
        t["batch_size"] *= scale
        t["lr"] *= math.sqrt(scale)
        config["checkpoint"]["every"] *= scale
        config["log"]["eval_every"] *= scale
        config["log"]["probe_every"] *= scale
    return config


def parse_stage_overrides(items: Sequence[str]) -> dict[str, list[str]]:
    """`STAGE:key=value` items -> {stage: [key=value, ...]}."""
    by_stage: dict[str, list[str]] = {stage: [] for stage in STAGES}
    for item in items:
        stage, sep, override = item.partition(":")
        if not sep or stage not in STAGES:
            raise ValueError(
                f"--set {item!r}: expected STAGE:key=value with STAGE one of {', '.join(STAGES)}"
            )
        by_stage[stage].append(override)
    return by_stage


def exported_step(export: Path) -> int:
    """The training step an export was written at (-1 when there is none). Training
    writes its export at every checkpoint, so an export alone does not mean finished."""
    try:
        info = json.loads((export / "config.json").read_text())
        return int(info.get("training", {}).get("step", -1))
    except (OSError, ValueError, TypeError):
        return -1


def run_name(stage: str) -> str:
    """The run folder's name of `stage` (its config's `run.name`)."""
    return load_config(CONFIG_DIR / STAGES[stage][0])["run"]["name"]


def run_cli(args: list[str], timeout: float | None = None) -> None:
    """`gen-nvs ARGS` in a subprocess; CalledProcessError / TimeoutExpired as it ends."""
    subprocess.run([sys.executable, "-m", "gen_nvs.cli", *args], check=True, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gen_nvs.train.recipe", description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="run folders (runs)")
    parser.add_argument("--data", type=Path, default=Path("data"), help="data folders (data)")
    parser.add_argument("--scale", type=int, default=1, help="steps and batch x K (1)")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto")
    parser.add_argument("--fresh", action="store_true", help="rerun stages that have exports")
    parser.add_argument("--install", action="store_true", help="ship the final export")
    parser.add_argument(
        "--from",
        dest="init_from",
        metavar="EXPORT",
        help="start the first stage from this export ('default': the shipped model)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE:KEY=VALUE",
        help="one stage's config setting, e.g. regression:train.steps=3000 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error(f"--scale must be >= 1, got {args.scale}")
    try:
        overrides = parse_stage_overrides(args.overrides)
    except ValueError as err:
        parser.error(str(err))
    init_from = DEFAULT_MODEL_DIR if args.init_from == "default" else args.init_from
    local = init_from is not None and not str(init_from).startswith("hf://")
    if local and not (Path(init_from) / "config.json").is_file():
        parser.error(f"--from {args.init_from}: no export there (expected {init_from}/config.json)")
    make_data(args.data)
    for i, stage in enumerate(args.stages):
        config = stage_config(
            stage,
            args.runs,
            args.data,
            args.scale,
            args.device,
            init_from=init_from if i == 0 else None,
            overrides=overrides[stage],
        )
        run_dir = args.runs / config["run"]["name"]
        steps = config["train"]["steps"]
        if args.fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        elif exported_step(run_dir / "export") >= steps:
            print(f"recipe: {stage}: {run_dir / 'export'} is finished, skipped (--fresh reruns it)")
            continue
        elif list_states(run_dir / "checkpoints"):
            config["checkpoint"]["resume"] = "latest"
            print(f"recipe: {stage}: resuming from the latest state in {run_dir}", flush=True)
        print(f"recipe: {stage}: {steps} steps", flush=True)
        train(config)
    final = args.runs / run_name(args.stages[-1]) / "export"
    samples = 4 if load_model(final).can_sample else 0
    for index, out, count in (
        ("procedural64-test.json", "eval", samples),
        ("procedural64-copy.json", "eval-copy", 0),
    ):
        run_cli(eval_command(final, args.data, args.runs / out, index, count))
    if args.install:
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(final / name, DEFAULT_MODEL_DIR / name)
        print(f"recipe: installed {final} as the default model ({DEFAULT_MODEL_DIR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
