"""The embedded default model's recipe on a lent GPU, in one call of the device tool:
budgeted by the clock, and packed so that what it made comes back.

The device tool runs one command of at most 10 minutes on a machine that starts bare,
holds PyTorch, accelerate, einops and safetensors but not diffusers or lpips, keeps
nothing once it is given back, and returns at most 8 files of at most 16 MiB from $OUT
(the export alone is 18 MB). Three steps:

    here:   python -m gen_nvs.train.device wheels   # the missing packages into .whl/
    there:  the command `wheels` prints (carry [".whl"], timeout_s 600)
    here:   python -m gen_nvs.train.device unpack FILES_AT --to runs-device

`run` (there) writes the procedural data with every core, then trains the stages of its
plan, each within its share of the training time left (what an earlier stage did not use
passes on): a short calibration run of the stage's own config measures its seconds per
step, the stage gets the steps its share allows (its cosine schedule ends with them),
four probes and four saved states, and `train.max_minutes` as the backstop. It then
evaluates the last export (the copy probe, then the held-out set's novel views with 4
samples) and packs that export, both evaluations, every stage's logs and `summary.json`
into one tar, cut into parts under $OUT. Whatever fails, what was made is packed before
the command returns; `summary.json` (also beside the parts) says what ran, for how long,
at which step each stage stopped, the held-out figures and any error. `unpack` (here)
checks the parts against the tar's SHA-256 and extracts it; `gen-nvs eval` and `python -m
gen_nvs.eval.compare` then decide whether the export beats the shipped model (`cp
EXPORT/* gen_nvs/assets/default/`).

Plans (`--from`): `default` continues the shipped model as its last CPU runs did (the
regression stage end to end with `CONTINUE`, then the camera head and the diffusion
decoder); another export continues that export the same way; `scratch` runs the recipe's
stages from nothing. `--scale K` multiplies the batch by K and the learning rate by
sqrt(K) (`recipe.stage_config`), the steps being the clock's.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from gen_nvs.eval.compare import compare, load_scene_means, read_results
from gen_nvs.eval.evaluate import RESULTS_FILE
from gen_nvs.models.nvs import DEFAULT_MODEL_DIR, load_model
from gen_nvs.train.config import CONFIG_DIR
from gen_nvs.train.loop import train
from gen_nvs.train.recipe import (
    STAGES,
    TEST_SET,
    TRAIN_SET,
    parse_stage_overrides,
    stage_config,
)

# The 12-view training set of the continuations (model card, runs 10 to 13).
TRAIN12_SET = ("proc64-train12", ["--scenes", "4000", "--views", "12", "--size", "64", "64"], 20000)
# The regression stage of a continuation, as the card's runs 10 to 13 ran it (lr, steps
# and schedule aside): the refiner's and the decoder's own L2, the point loss at 0.1, 8
# targets per encoded scene on the 12-view scenes, frame gap and margin rescaled to them.
CONTINUE = [
    "loss.decoder_l2=1.0",
    "loss.points=0.1",
    "data.num_targets=8",
    f"data.datasets.procedural.root={{data}}/{TRAIN12_SET[0]}",
    "data.datasets.procedural.frame_gap=[6,11]",
    "data.datasets.procedural.target_margin=4",
    "train.lr=2e-4",
    "train.warmup_steps=20",
]
# Each stage's share of the training time (what is left after the data and the reserve).
SHARES = {
    "continue": {"regression": 0.6, "camera": 0.1, "diffusion": 0.3},
    "scratch": {"regression": 0.55, "camera": 0.08, "diffusion": 0.25, "refiner": 0.12},
}
RESERVE = 0.15  # of --minutes, kept for the evaluations and the packing (--reserve)
PACK_SECONDS = 30.0  # the least left for packing: the evaluation is cut short before it
PART_BYTES = 15 * 2**20  # under the tool's 16 MiB a file
BUNDLE = "bundle.tar"
SUMMARY = "summary.json"
# Packages the device's Python lacks (diffusers' own needs beyond what it has, lpips), at
# the versions installed here; pure-Python wheels.
DEVICE_WHEELS = ("diffusers", "lpips", "importlib_metadata", "lazy-importer", "zipp")


# --------------------------------------------------------------------------------------
# Here: the wheels and the command
# --------------------------------------------------------------------------------------


def download_wheels(dest: Path) -> list[Path]:
    """pip-download `DEVICE_WHEELS` at this environment's versions into `dest`, for the
    device's Python 3.12 on x86-64; returns the wheel files."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in DEVICE_WHEELS]
    platforms = ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "any"]
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.12", "--implementation", "cp",
        *[arg for platform in platforms for arg in ("--platform", platform)],
        "-d", str(dest), *pins,
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return sorted(dest.glob("*.whl"))


def device_command(minutes: float, init_from: str, scale: int) -> str:
    """The shell command for the device tool's `run` (its repository root is this one)."""
    train_command = (
        f"python3 -m gen_nvs.train.device run --minutes {minutes:g} --from {init_from} "
        f"--scale {scale} --out $OUT"
    )
    return f"{_WITH_WHEELS} && {train_command}"


def bench_command() -> str:
    """The device command of the GPU benchmark (`gen-nvs bench gpu`), with the same wheels."""
    return f"{_WITH_WHEELS} && python3 -m gen_nvs.cli bench gpu --json > $OUT/bench-gpu.json"


# The wheels installed apart and put first on the path, with the repository itself.
_WITH_WHEELS = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
    "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1"
)


def exclude_from_git(repo: Path, pattern: str) -> None:
    """Add `pattern` to the repository's .git/info/exclude (the wheels travel, untracked)."""
    exclude = repo / ".git" / "info" / "exclude"
    if not exclude.parent.is_dir():
        return
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    if pattern not in lines:
        exclude.write_text("\n".join([*lines, pattern]) + "\n")


# --------------------------------------------------------------------------------------
# There: data, stages within the clock, evaluation, packing
# --------------------------------------------------------------------------------------


class Clock:
    """Seconds since the run started, against its budget."""

    def __init__(self, minutes: float) -> None:
        self.start = time.perf_counter()
        self.budget = 60.0 * minutes

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def plan_name(init_from: str) -> str:
    return "scratch" if init_from == "scratch" else "continue"


def datasets(plan: str) -> list[tuple[str, list[str], int]]:
    return [TRAIN12_SET, TRAIN_SET, TEST_SET] if plan == "continue" else [TRAIN_SET, TEST_SET]


def make_data(data: Path, plan: str, workers: int) -> None:
    """The plan's procedural sets under `data`, each unless already there."""
    for name, args, seed in datasets(plan):
        root = data / name
        if (root / "full_list.txt").is_file():
            continue
        _gen_nvs(
            ["make-scenes", "--out", str(root), *args, "--seed", str(seed), "--overwrite",
             "--workers", str(workers)]
        )  # fmt: skip


def stage_settings(
    stage: str, plan: str, data: Path, device: str, user: Sequence[str]
) -> list[str]:
    """Overrides of one stage: the continuation's (its regression stage), the device's
    (logging, loader), then the user's `--set` for it."""
    settings = []
    if plan == "continue" and stage == "regression":
        settings += [item.format(data=data) for item in CONTINUE]
    # float16 exports: 18 MB for the shipped model's size, two parts to bring back
    settings += ["log.tracker=none", "log.eval_every=0", "checkpoint.export_dtype=float16"]
    if device != "cpu":
        settings.append(f"data.num_workers={min(8, max(1, (os.cpu_count() or 2) - 2))}")
    return [*settings, *user]


def seconds_per_step(config: dict, steps: int) -> float:
    """Seconds per optimizer step of `config`, from a run of `steps` steps of it (the
    first step, with its warm-up and compilation, left out); the run is removed."""
    if steps < 3:
        raise ValueError(f"calibration needs at least 3 steps, got {steps}")
    trial = copy.deepcopy(config)
    trial["run"]["name"] = f"{config['run']['name']}-calibration"
    trial["train"].update(steps=steps, max_minutes=0.0)
    trial["train"]["warmup_steps"] = min(trial["train"]["warmup_steps"], steps)
    trial["log"].update(every=1, probe_every=0, eval_every=0, tracker="none")
    trial["checkpoint"].update(every=steps, resume=None)
    run_dir = Path(trial["run"]["output_dir"]) / trial["run"]["name"]
    shutil.rmtree(run_dir, ignore_errors=True)
    train(trial)
    times = [json.loads(line)["time"] for line in (run_dir / "metrics.jsonl").open()]
    shutil.rmtree(run_dir)
    return (times[-1] - times[0]) / (len(times) - 1)


def fit_to_clock(config: dict, seconds: float, per_step: float) -> None:
    """Set `config`'s steps to what `seconds` allow at `per_step` (nine tenths of it, for
    the probes and the saves), with four probes and saved states and the time limit."""
    t = config["train"]
    steps = max(1, int(0.9 * seconds / per_step))
    t["steps"] = steps
    t["warmup_steps"] = min(t["warmup_steps"], max(1, steps // 10))
    t["max_minutes"] = max(seconds, 1.0) / 60.0
    every = max(1, math.ceil(steps / 4))
    config["checkpoint"]["every"] = every
    config["log"]["probe_every"] = every if config["log"]["probe_every"] > 0 else 0
    config["log"]["every"] = min(config["log"]["every"], every)


def run_stages(
    args: argparse.Namespace, clock: Clock, summary: dict, overrides: dict[str, list[str]]
) -> Path | None:
    """Train the plan's stages within the clock; returns the last export written."""
    plan = summary["plan"]
    shares = SHARES[plan]
    training_end = (1 - args.reserve) * clock.budget  # on the clock
    if training_end <= clock.elapsed():
        raise RuntimeError(f"no time left to train after the data ({clock.elapsed():.0f} s)")
    init_from = None if plan == "scratch" else _export_path(args.init_from)
    device = "cpu" if args.cpu else "auto"
    last_export = None
    stages = list(shares)
    for i, stage in enumerate(stages):
        stage_start = clock.elapsed()
        # Its share of the time left: what an earlier stage did not use passes on.
        later = sum(shares[s] for s in stages[i:])
        seconds = max(0.0, training_end - stage_start) * shares[stage] / later
        settings = stage_settings(stage, plan, args.data, device, overrides[stage])
        config = stage_config(
            stage, args.runs, args.data, args.scale, device,
            init_from=init_from if i == 0 else None, overrides=settings,
        )  # fmt: skip
        record = {"seconds_share": round(seconds, 1), "batch_size": config["train"]["batch_size"]}
        record["lr"] = config["train"]["lr"]
        summary["stages"][stage] = record
        per_step = seconds_per_step(config, args.calibration_steps)
        record["seconds_per_step"] = round(per_step, 4)
        fit_to_clock(config, seconds - (clock.elapsed() - stage_start), per_step)
        record["steps_planned"] = config["train"]["steps"]
        run_dir = Path(config["run"]["output_dir"]) / config["run"]["name"]
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh machine: no earlier run
        print(f"device: {stage}: {config['train']['steps']} steps of {per_step:.3f} s", flush=True)
        train(config)
        last_export = run_dir / "export"
        exported = json.loads((last_export / "config.json").read_text())
        record["steps_done"] = exported["training"]["step"]
        record["seconds"] = round(clock.elapsed() - stage_start, 1)
        probes = run_dir / "probe.jsonl"
        if probes.is_file():
            record["probe"] = [json.loads(line) for line in probes.open()]
    return last_export


def evaluate(
    export: Path, start: Path, data: Path, runs: Path, clock: Clock, summary: dict
) -> None:
    """`gen-nvs eval` of `export`: the copy probe, then held-out novel views (4 samples
    when it can sample); then the held-out views of `start`, the model the run began from
    (the shipped one for a plan from scratch), and the paired comparison of the two. Each
    evaluation is cut short when packing would get too little time."""
    runs_of = [
        ("eval-copy", export, "procedural64-copy.json"),  # the quick one first
        ("eval", export, "procedural64-test.json"),
        ("eval-start", start, "procedural64-test.json"),
    ]
    for name, checkpoint, index in runs_of:
        timeout = clock.left() - PACK_SECONDS
        if timeout <= 0:
            summary["evaluation"][name] = "skipped: no time left"
            continue
        samples = "0" if "copy" in index or not load_model(checkpoint).can_sample else "4"
        out = runs / name
        command = [
            "eval", "--checkpoint", str(checkpoint), "--data", str(data / TEST_SET[0]),
            "--out", str(out), "--index", str(CONFIG_DIR / "eval" / index),
            "--samples", samples, "--overwrite",
        ]  # fmt: skip
        try:
            _gen_nvs(command, timeout=timeout)
        except subprocess.TimeoutExpired:
            summary["evaluation"][name] = f"cut short after {timeout:.0f} s"
            continue
        summary["evaluation"][name] = read_results(out / RESULTS_FILE)["means"]
    summary["comparison"] = paired_comparison(runs / "eval-start", runs / "eval")


def paired_comparison(base: Path, new: Path) -> dict[str, list[dict]]:
    """`gen_nvs.eval.compare` of the two evaluations' results (new - base per scene, per
    region), for the regression render and the samples where both have them."""
    if not (base / RESULTS_FILE).is_file() or not (new / RESULTS_FILE).is_file():
        return {}
    base_means = load_scene_means(base / RESULTS_FILE)
    new_means = load_scene_means(new / RESULTS_FILE)
    rows = {}
    for output in ("regression", "samples"):
        try:
            rows[output] = [asdict(row) for row in compare(base_means, new_means, output=output)]
        except ValueError:  # a model that does not sample
            continue
    return rows


def bundle_files(runs: Path, export: Path | None) -> list[Path]:
    """What comes back: the export, the evaluations' results and every run's logs."""
    files = sorted(export.glob("*")) if export is not None else []
    files += sorted(runs.glob("eval*/results.json"))
    for name in ("probe.jsonl", "metrics.jsonl", "config.yaml", "run_info.json"):
        files += sorted(runs.glob(f"*/{name}"))
    return [f for f in files if f.is_file()]


def pack(runs: Path, export: Path | None, summary: dict, out: Path) -> None:
    """Tar the bundle (paths relative to `runs`, summary.json in it) into `runs`, cut it
    into `out`/bundle.tar.NN parts, and write summary.json (with the parts and the tar's
    SHA-256) beside them."""
    out.mkdir(parents=True, exist_ok=True)
    (runs / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    tar_path = runs / BUNDLE
    with tarfile.open(tar_path, "w") as tar:
        for path in [runs / SUMMARY, *bundle_files(runs, export)]:
            tar.add(path, arcname=str(path.relative_to(runs)))
    digest, parts = hashlib.sha256(), []
    with tar_path.open("rb") as source:
        while chunk := source.read(PART_BYTES):
            digest.update(chunk)
            name = f"{BUNDLE}.{len(parts):02d}"
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "bytes": len(chunk)})
    summary["bundle"] = {"parts": parts, "sha256": digest.hexdigest()}
    summary["bundle"]["export"] = None if export is None else str(export.relative_to(runs))
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    tar_path.unlink()


def run(args: argparse.Namespace) -> int:
    clock = Clock(args.minutes)
    plan = plan_name(args.init_from)
    summary: dict = {
        "plan": plan,
        "from": args.init_from,
        "minutes": args.minutes,
        "scale": args.scale,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "stages": {},
        "evaluation": {},
        "comparison": {},
    }
    args.runs.mkdir(parents=True, exist_ok=True)
    export = None
    try:
        overrides = parse_stage_overrides(args.overrides)
        make_data(args.data, plan, args.workers)
        summary["data_seconds"] = round(clock.elapsed(), 1)
        export = run_stages(args, clock, summary, overrides)
        if export is not None:
            start = DEFAULT_MODEL_DIR if plan == "scratch" else _export_path(args.init_from)
            evaluate(export, Path(start), args.data, args.runs, clock, summary)
    except Exception as err:  # packed and reported, never lost: the machine goes back
        summary["error"] = "".join(traceback.format_exception(err))
        print(summary["error"], file=sys.stderr)
        export = _latest_export(args.runs, plan) or export
    summary["seconds"] = round(clock.elapsed(), 1)
    pack(args.runs, export, summary, args.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "stages"}, indent=2))
    return 1 if "error" in summary else 0


def _latest_export(runs: Path, plan: str) -> Path | None:
    """The export of the furthest stage that wrote one (after a failure)."""
    for stage in reversed(list(SHARES[plan])):
        export = runs / _run_name(stage) / "export"
        if (export / "config.json").is_file():
            return export
    return None


def _run_name(stage: str) -> str:
    from gen_nvs.train.config import load_config

    return load_config(CONFIG_DIR / STAGES[stage][0])["run"]["name"]


def _export_path(init_from: str) -> str:
    return str(DEFAULT_MODEL_DIR) if init_from == "default" else init_from


def _gen_nvs(args: list[str], timeout: float | None = None) -> None:
    subprocess.run([sys.executable, "-m", "gen_nvs.cli", *args], check=True, timeout=timeout)


# --------------------------------------------------------------------------------------
# Here again: the parts back into files
# --------------------------------------------------------------------------------------


def unpack(files: Path, to: Path) -> dict:
    """Join the parts under `files` (summary.json names them), check the tar's SHA-256,
    and extract it into `to`; returns the summary. ValueError naming what is missing,
    short, corrupt or unsafe."""
    summary_path = files / SUMMARY
    if not summary_path.is_file():
        raise ValueError(f"{files}: no {SUMMARY} (expected the files of a device run)")
    summary = json.loads(summary_path.read_text())
    bundle = summary.get("bundle")
    if not isinstance(bundle, dict) or not bundle.get("parts"):
        raise ValueError(f"{summary_path}: no 'bundle' with parts (the run packed nothing)")
    to.mkdir(parents=True, exist_ok=True)
    tar_path = to / BUNDLE
    digest = hashlib.sha256()
    with tar_path.open("wb") as joined:
        for part in bundle["parts"]:
            path = files / part["name"]
            if not path.is_file():
                raise ValueError(f"{path}: missing (part of {BUNDLE}, {part['bytes']} bytes)")
            data = path.read_bytes()
            if len(data) != part["bytes"]:
                raise ValueError(f"{path}: {len(data)} bytes, expected {part['bytes']}")
            digest.update(data)
            joined.write(data)
    if digest.hexdigest() != bundle["sha256"]:
        tar_path.unlink()
        raise ValueError(f"{files}: the joined parts' SHA-256 differs from {SUMMARY}'s")
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
        for member in members:
            unsafe = Path(member.name).is_absolute() or ".." in Path(member.name).parts
            if unsafe or not member.isfile():
                raise ValueError(f"{tar_path}: refusing member {member.name!r}")
        for member in members:
            target = to / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    tar_path.unlink()
    return summary


def describe(summary: dict, to: Path) -> str:
    """A few lines on what a device run did, for the terminal."""
    lines = [f"device run: {summary['plan']} from {summary['from']} on {summary['device']}, "
             f"{summary['seconds']} s of {60 * summary['minutes']:.0f}"]  # fmt: skip
    for stage, record in summary["stages"].items():
        done = record.get("steps_done", "?")
        lines.append(
            f"  {stage}: {done} of {record.get('steps_planned', '?')} steps, batch "
            f"{record['batch_size']}, {record.get('seconds_per_step', '?')} s a step"
        )
    for name, means in summary["evaluation"].items():
        if isinstance(means, dict):
            regression = means.get("regression") or {}
            means = f"regression PSNR {regression.get('psnr', float('nan')):.2f} dB"
        lines.append(f"  {name}: {means}")
    for output, rows in summary.get("comparison", {}).items():
        lines.append(f"  {output} PSNR, this run - the model it began from, per scene:")
        for row in rows:
            lines.append(
                f"    {row['region']:<7} {row['mean']:+.3f} dB (95 % bootstrap "
                f"{row['low']:+.3f} to {row['high']:+.3f}), better in {row['better']} of "
                f"{row['scenes']} scenes"
            )
    if summary.get("bundle", {}).get("export"):
        lines.append(f"  export: {to / summary['bundle']['export']}")
    if "error" in summary:
        lines.append(f"  error: {summary['error'].strip().splitlines()[-1]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gen_nvs.train.device", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    wheels = sub.add_parser("wheels", help="here: the packages the device lacks, into .whl/")
    wheels.add_argument("--dir", type=Path, default=Path(".whl"))
    for p in (wheels, run_parser := sub.add_parser("run", help="there: the budgeted recipe")):
        p.add_argument("--minutes", type=float, default=8.0, help="the whole run's budget (8)")
        p.add_argument(
            "--from", dest="init_from", default="default",
            help="default (the shipped model) | scratch | an export folder",
        )  # fmt: skip
        p.add_argument("--scale", type=int, default=16, help="batch x K, lr x sqrt(K) (16)")
    run_parser.add_argument("--out", type=Path, default=os.environ.get("OUT"))
    run_parser.add_argument("--runs", type=Path, default=Path("runs-device"))
    run_parser.add_argument("--data", type=Path, default=Path("data"))
    run_parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    run_parser.add_argument("--calibration-steps", type=int, default=12)
    run_parser.add_argument("--cpu", action="store_true", help="train on the CPU (a rehearsal)")
    run_parser.add_argument(
        "--reserve", type=float, default=RESERVE,
        help=f"share of --minutes kept for evaluating and packing ({RESERVE}; a CPU "
        "rehearsal's evaluations need about 11 minutes)",
    )  # fmt: skip
    run_parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="STAGE:KEY=VALUE",
        help="one stage's config setting (repeatable), as the recipe's",
    )  # fmt: skip
    unpack_parser = sub.add_parser("unpack", help="here: the files that came back")
    unpack_parser.add_argument("files", type=Path, help="the folder the parts landed in")
    unpack_parser.add_argument("--to", type=Path, default=Path("runs-device"))
    args = parser.parse_args(argv)

    if args.command in ("wheels", "run"):
        if not args.minutes > 0:
            parser.error(f"--minutes must be > 0, got {args.minutes}")
        if args.command == "wheels" and args.minutes > 10:
            parser.error(f"--minutes must be at most 10 (one device command), got {args.minutes}")
        if args.scale < 1:
            parser.error(f"--scale must be >= 1, got {args.scale}")
        local = args.init_from not in ("default", "scratch")
        if local and not (Path(args.init_from) / "config.json").is_file():
            parser.error(f"--from {args.init_from}: no export there (expected config.json)")
    if args.command == "wheels":
        found = download_wheels(args.dir)
        exclude_from_git(Path.cwd(), f"/{args.dir.as_posix().strip('/')}/")
        print(f"{len(found)} wheels in {args.dir}: {', '.join(f.name for f in found)}")
        print('device tool run, carry [".whl"], timeout_s 600; the recipe:')
        print(device_command(args.minutes, args.init_from, args.scale))
        print("or the GPU benchmark (README, Benchmarks; one of the two fits a session):")
        print(bench_command())
        return 0
    if args.command == "run":
        if args.out is None:
            parser.error("--out is required where $OUT is not set")
        if args.workers < 1:
            parser.error(f"--workers must be >= 1, got {args.workers}")
        if not 0 <= args.reserve < 1:
            parser.error(f"--reserve must be in [0, 1), got {args.reserve}")
        return run(args)
    try:
        summary = unpack(args.files, args.to)
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(describe(summary, args.to))
    return 1 if "error" in summary else 0


if __name__ == "__main__":
    sys.exit(main())
