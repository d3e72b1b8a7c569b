"""The embedded default model's recipe on a lent GPU, in one call of the device tool:
budgeted by the clock, and packed so that what it made comes back.

The device tool runs one command of at most 10 minutes on a machine that starts bare,
holds PyTorch, accelerate, einops and safetensors but not diffusers or lpips, keeps
nothing once it is given back, and returns at most 8 files of at most 16 MiB from $OUT
(the export alone is 18 MB). Three steps:

    here:   python -m gen_nvs.train.device wheels   # the missing packages into .whl/
    there:  the command `wheels` prints (with the carry list it prints, timeout_s 600)
    here:   python -m gen_nvs.train.device unpack FILES_AT --to runs-device

`run` (there) checks every stage's config, writes the procedural data with every core,
then trains the stages of its plan, each within its share of the training time left
(what an earlier stage did not use passes on): a short calibration run of the stage's own
config measures its seconds per step and its fixed cost (setup, final save), the stage
gets the steps the rest of its share allows (its cosine schedule ends with them), four
saved states (and, in the regression stage, four probes), and `train.max_minutes` as the
backstop; a stage whose share holds no steps is skipped, with the stages after it. It
then evaluates the last export (the copy probe, then the held-out set's novel views with
4 samples) and the model the run began from on the same views, compares the two scene by
scene (`gen_nvs.eval.compare`), and packs the export, the three evaluations' results,
every stage's logs and `summary.json` into one tar, cut into parts under $OUT. It packs
after the data and after every stage as well (each pack complete, its summary renamed into
place, before the one before it is removed), so a run killed part-way still returns what
its finished stages made; a Python error is caught, recorded in the summary and packed
with the rest. The printed command puts the runs outside the repository (`/tmp`), so an
export carried from an earlier device run, or a second call on a machine still held,
finds them empty. `summary.json` (also beside the parts) says what ran, for how long, at
which step each stage stopped, the held-out figures, the comparison and any error.
`unpack` (here) checks the parts against the tar's SHA-256, extracts it and prints the
comparison: ship the export (`cp EXPORT/* gen_nvs/assets/default/`) only where it is
better beyond the bootstrap interval.

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
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from gen_nvs.eval.compare import compare, load_scene_means, read_results
from gen_nvs.eval.evaluate import RESULTS_FILE
from gen_nvs.models.nvs import DEFAULT_MODEL_DIR, load_model
from gen_nvs.train.loop import train
from gen_nvs.train.recipe import (
    TEST_SET,
    TRAIN_SET,
    eval_command,
    make_data,
    parse_stage_overrides,
    run_cli,
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
# Of --minutes, kept for the three evaluations (each its own process: imports, the model,
# 100 scenes, samples) and the packing (--reserve).
RESERVE = 0.3
PACK_SECONDS = 15.0  # the least left for packing (about 1 s): an evaluation stops before it
MIN_STAGE_SECONDS = 20.0  # a share under this (or under a calibration) trains nothing
MAX_MINUTES = 9.5  # of one device command (600 s), the wheels' install included
PART_BYTES = 15 * 2**20  # under the tool's 16 MiB a file
MAX_PARTS = 7  # and summary.json: the tool's 8 files
BUNDLE = "bundle.tar"  # built under --runs; cut into bundle-N.tar.NN parts in $OUT
SUMMARY = "summary.json"
# Packages the device's Python lacks (diffusers' own needs beyond what it has, lpips), at
# the versions installed here; pure-Python wheels.
DEVICE_WHEELS = ("diffusers", "lpips", "importlib_metadata", "lazy-importer", "zipp")


# --------------------------------------------------------------------------------------
# Here: the wheels and the commands
# --------------------------------------------------------------------------------------


def download_wheels(dest: Path) -> list[Path]:
    """pip-download `DEVICE_WHEELS` at this environment's versions into `dest` (its old
    wheels removed: two versions of a package stop the install there), for the device's
    Python 3.12 on x86-64; returns the wheel files."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
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


def with_wheels(wheels: str) -> str:
    """The start of a device command: the clock's start, then the wheels in `wheels` (a
    folder of the repository) installed apart and put first on the path, with the
    repository itself (not installed there)."""
    return (
        "T0=$(date +%s.%N) && python3 -m pip install -q --no-index --no-deps --no-compile "
        f"--no-cache-dir --upgrade --target /tmp/site {shlex.quote(wheels)}/*.whl && "
        'export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1'
    )


def device_command(minutes: float, init_from: str, scale: int, wheels: str = ".whl") -> str:
    """The shell command for the device tool's `run` (its repository root is this one).
    Its runs go outside the repository, in a folder of their own per call: an export
    carried from an earlier device run (under runs-device/) and a second call on the same
    machine find it empty."""
    return (
        f"{with_wheels(wheels)} && python3 -m gen_nvs.train.device run --started-at $T0 "
        f"--minutes {minutes:g} --from {shlex.quote(init_from)} --scale {scale} "
        '--runs "/tmp/gen-nvs-runs-$T0" --out "$OUT"'
    )


def bench_command(wheels: str = ".whl") -> str:
    """The device command of the GPU benchmark (`gen-nvs bench gpu`), with the same wheels."""
    bench = 'python3 -m gen_nvs.cli bench gpu --json > "$OUT/bench-gpu.json"'
    return f"{with_wheels(wheels)} && {bench}"


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


def now() -> float:
    """Wall-clock seconds since the epoch (the device command's `date +%s.%N`)."""
    return time.time()


class Clock:
    """Seconds since the run started (`started_at`, epoch seconds: the device command's
    start, before the wheels' install and the imports), against its budget."""

    def __init__(self, minutes: float, started_at: float | None = None) -> None:
        self.start = now() if started_at is None else started_at
        self.budget = 60.0 * minutes

    def elapsed(self) -> float:
        return now() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def plan_name(init_from: str) -> str:
    return "scratch" if init_from == "scratch" else "continue"


def datasets(plan: str) -> list[tuple[str, list[str], int]]:
    return [TRAIN12_SET, TRAIN_SET, TEST_SET] if plan == "continue" else [TRAIN_SET, TEST_SET]


def stage_configs(args: argparse.Namespace) -> dict[str, dict]:
    """Every stage's config of the plan, in order: the recipe's, scaled, with the
    continuation's settings (its regression stage), the device's (logging, loader,
    float16 exports: the shipped model's 18 MB in two parts) and the user's `--set`.
    ValueError naming a bad setting, before anything runs."""
    plan = plan_name(args.init_from)
    user = parse_stage_overrides(args.overrides)
    device = "cpu" if args.cpu else "auto"
    configs = {}
    for i, stage in enumerate(SHARES[plan]):
        settings = []
        if plan == "continue" and stage == "regression":
            settings += [item.format(data=args.data) for item in CONTINUE]
        settings += ["log.tracker=none", "log.eval_every=0", "checkpoint.export_dtype=float16"]
        if device != "cpu":
            settings.append(f"data.num_workers={min(8, max(1, (os.cpu_count() or 2) - 2))}")
        for item in user[stage]:
            if item.startswith("run."):
                raise ValueError(f"--set {stage}:{item}: the device run names its own runs")
        init_from = start_model(args.init_from) if i == 0 and plan == "continue" else None
        configs[stage] = stage_config(
            stage, args.runs, args.data, args.scale, device,
            init_from=init_from, overrides=[*settings, *user[stage]],
        )  # fmt: skip
    return configs


def is_export(init_from: str) -> bool:
    """Whether `--from` names an export folder rather than `default` or `scratch`."""
    return init_from not in ("default", "scratch")


def start_model(init_from: str) -> str:
    """The export a run begins from (`default`, `scratch`: the shipped model)."""
    return init_from if is_export(init_from) else str(DEFAULT_MODEL_DIR)


def calibrate(config: dict, steps: int, seconds: float = 0.0) -> tuple[float, float] | None:
    """(seconds per optimizer step, fixed seconds) of `config`, from a run of `steps`
    steps of it: the steps timed after the first (with its warm-up and compilation), the
    fixed cost the rest of the run's wall time (setup, the first step, the final save).
    `seconds` (> 0) limits its training loop; None when that left fewer than 3 steps to
    time. The run is removed."""
    if steps < 3:
        raise ValueError(f"calibration needs at least 3 steps, got {steps}")
    trial = copy.deepcopy(config)
    trial["run"]["name"] = f"{config['run']['name']}-calibration"
    trial["train"].update(steps=steps, max_minutes=seconds / 60.0)
    trial["train"]["warmup_steps"] = min(trial["train"]["warmup_steps"], steps)
    trial["log"].update(every=1, probe_every=0, eval_every=0, tracker="none")
    trial["checkpoint"].update(every=steps, resume=None)
    run_dir = Path(trial["run"]["output_dir"]) / trial["run"]["name"]
    shutil.rmtree(run_dir, ignore_errors=True)
    start = now()
    train(trial)
    wall = now() - start
    times = [json.loads(line)["time"] for line in (run_dir / "metrics.jsonl").open()]
    shutil.rmtree(run_dir)
    if len(times) < 3:
        return None
    per_step = (times[-1] - times[0]) / (len(times) - 1)
    return per_step, max(0.0, wall - (len(times) - 1) * per_step)


def fit_to_clock(config: dict, seconds: float, per_step: float) -> None:
    """Set `config`'s steps to what `seconds` of training allow at `per_step` (nine
    tenths of it, for the probes and the saves), with four saved states (and probes where
    the stage probes) and `seconds` as its time limit."""
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
    args: argparse.Namespace, configs: dict[str, dict], clock: Clock, summary: dict
) -> None:
    """Train the stages of `configs` in order within the clock, packing after each;
    `summary["export"]` is the last export a finished stage wrote."""
    shares = SHARES[summary["plan"]]
    training_end = (1 - args.reserve) * clock.budget  # on the clock
    stages = list(configs)
    for i, stage in enumerate(stages):
        stage_start = clock.elapsed()
        left = training_end - stage_start
        # Its share of the time left: what an earlier stage did not use passes on.
        seconds = left * shares[stage] / sum(shares[s] for s in stages[i:])
        record: dict = {"seconds_share": round(max(seconds, 0.0), 1)}
        summary["stages"][stage] = record
        if seconds < MIN_STAGE_SECONDS:
            record["skipped"] = f"{max(seconds, 0.0):.0f} s left of the training time"
            break
        config = copy.deepcopy(configs[stage])
        record.update(batch_size=config["train"]["batch_size"], lr=config["train"]["lr"])
        timed = calibrate(config, args.calibration_steps, seconds / 2)
        if timed is None:
            record["skipped"] = "its share would not hold its calibration"
            break
        per_step, fixed = timed
        record.update(seconds_per_step=round(per_step, 4), fixed_seconds=round(fixed, 1))
        training = seconds - (clock.elapsed() - stage_start) - fixed
        if training < 2 * per_step:
            record["skipped"] = f"{training:.0f} s left of its share after calibration"
            break
        fit_to_clock(config, training, per_step)
        record["steps_planned"] = config["train"]["steps"]
        print(f"device: {stage}: {config['train']['steps']} steps of {per_step:.3f} s", flush=True)
        run_dir = train(config)
        exported = json.loads((run_dir / "export" / "config.json").read_text())
        record["steps_done"] = exported["training"]["step"]
        record["seconds"] = round(clock.elapsed() - stage_start, 1)
        if (run_dir / "probe.jsonl").is_file():
            record["probe"] = [json.loads(line) for line in (run_dir / "probe.jsonl").open()]
        record["run_dir"] = str(run_dir)
        summary["export"] = str(run_dir / "export")
        pack(args.runs, summary, args.out)


def evaluate(export: Path, start: Path, args: argparse.Namespace, clock: Clock, summary: dict):
    """`gen-nvs eval` of `export`: the copy probe, then held-out novel views (4 samples
    when it can sample); then the held-out views of `start`, the model the run began from
    (the shipped one for a plan from scratch), and the paired comparison of the two. Each
    evaluation is cut short when packing would get too little time; one that fails is
    recorded and the next runs."""
    evaluations = [
        ("eval-copy", export, "procedural64-copy.json"),  # the quick one first
        ("eval", export, "procedural64-test.json"),
        ("eval-start", start, "procedural64-test.json"),
    ]
    for name, checkpoint, index in evaluations:
        out = args.runs / name
        try:
            samples = 0 if "copy" in index or not load_model(checkpoint).can_sample else 4
            timeout = clock.left() - PACK_SECONDS
            if timeout <= 0:
                summary["evaluation"][name] = "skipped: no time left"
                continue
            run_cli(eval_command(checkpoint, args.data, out, index, samples), timeout=timeout)
            summary["evaluation"][name] = read_results(out / RESULTS_FILE)["means"]
            summary["results"].append(str(out / RESULTS_FILE))
        except subprocess.TimeoutExpired as err:
            summary["evaluation"][name] = f"cut short after {err.timeout:.0f} s"
        except Exception as err:
            summary["evaluation"][name] = f"failed: {type(err).__name__}: {err}"
            record_error(summary, err, name)
    if all(isinstance(summary["evaluation"].get(n), dict) for n in ("eval", "eval-start")):
        try:
            summary["comparison"] = paired_comparison(args.runs / "eval-start", args.runs / "eval")
        except ValueError as err:
            summary["errors"].append(f"comparison: {err}")


def paired_comparison(base: Path, new: Path) -> dict[str, list[dict]]:
    """`gen_nvs.eval.compare` of the two evaluations' results (new - base per scene, per
    region), for the regression render and, where both sampled, the samples. ValueError
    for results that do not pair (other scenes)."""
    base_means = load_scene_means(base / RESULTS_FILE)
    new_means = load_scene_means(new / RESULTS_FILE)
    rows = {"regression": [asdict(row) for row in compare(base_means, new_means)]}
    try:
        rows["samples"] = [asdict(row) for row in compare(base_means, new_means, output="samples")]
    except ValueError as err:
        if "--samples 0" not in str(err):  # not a model that does not sample: a mismatch
            raise
    return rows


def bundle_files(runs: Path, summary: dict, logs: bool = True) -> list[Path]:
    """What comes back: the export, the evaluations' results, and (`logs`) every
    stage's logs: the files this run recorded in `summary`, nothing else under `runs`."""
    export = summary.get("export")
    files = sorted(Path(export).glob("*")) if export else []
    files += [Path(path) for path in summary["results"]]
    if logs:
        for record in summary["stages"].values():
            if "run_dir" in record:
                for name in ("probe.jsonl", "metrics.jsonl", "config.yaml", "run_info.json"):
                    files.append(Path(record["run_dir"]) / name)
    return [f for f in files if f.is_file()]


def pack(runs: Path, summary: dict, out: Path) -> None:
    """Tar this run's files (paths relative to `runs`, the summary so far in it), cut the
    tar into `out`/bundle-N.tar.NN parts (N counts the packs), write summary.json (the
    parts and the tar's SHA-256) beside them by an atomic rename, and only then remove
    the parts of earlier packs: a kill at any point leaves one complete pack. Past the
    tool's 7 parts the logs are left out (`summary["bundle"]["logs"]` says so)."""
    out.mkdir(parents=True, exist_ok=True)
    number = summary.get("bundle", {}).get("number", -1) + 1
    tar_path = runs / BUNDLE
    inner = {key: value for key, value in summary.items() if key != "bundle"}
    (runs / SUMMARY).write_text(json.dumps(inner, indent=2) + "\n")
    for logs in (True, False):
        with tarfile.open(tar_path, "w") as tar:
            for path in [runs / SUMMARY, *bundle_files(runs, summary, logs)]:
                tar.add(path, arcname=str(path.relative_to(runs)))
        if tar_path.stat().st_size <= MAX_PARTS * PART_BYTES:
            break
    digest, parts = hashlib.sha256(), []
    with tar_path.open("rb") as source:
        while chunk := source.read(PART_BYTES):
            digest.update(chunk)
            name = f"bundle-{number}.tar.{len(parts):02d}"
            (out / name).write_bytes(chunk)
            parts.append({"name": name, "bytes": len(chunk)})
    tar_path.unlink()
    export = summary.get("export")
    summary["bundle"] = {
        "number": number,
        "parts": parts,
        "sha256": digest.hexdigest(),
        "export": str(Path(export).relative_to(runs)) if export else None,
        "logs": logs,
    }
    staged = out / f"{SUMMARY}.partial"
    staged.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(staged, out / SUMMARY)
    for old in out.glob("bundle-*.tar.*"):
        if not old.name.startswith(f"bundle-{number}."):
            old.unlink()


def record_error(summary: dict, err: BaseException, where: str = "") -> None:
    """Add `err`'s traceback (after `where: `) to the summary's errors."""
    trace = "".join(traceback.format_exception(err))
    summary["errors"].append(f"{where}: {trace}" if where else trace)


def run(args: argparse.Namespace, configs: dict[str, dict]) -> int:
    """The device run of the checked `configs`; 1 when anything failed (recorded)."""
    clock = Clock(args.minutes, args.started_at)
    plan = plan_name(args.init_from)
    summary: dict = {
        "plan": plan,
        "from": args.init_from,
        "minutes": args.minutes,
        "scale": args.scale,
        "device": "cpu",
        "stages": {},
        "evaluation": {},
        "comparison": {},
        "results": [],
        "export": None,
        "errors": [],
    }
    try:
        if torch.cuda.is_available() and not args.cpu:
            summary["device"] = torch.cuda.get_device_name(0)
        args.runs.mkdir(parents=True, exist_ok=True)
        make_data(args.data, datasets(plan), args.workers, timeout=clock.left() - PACK_SECONDS)
        summary["data_seconds"] = round(clock.elapsed(), 1)
        pack(args.runs, summary, args.out)
        run_stages(args, configs, clock, summary)
    except Exception as err:  # recorded and packed, never lost: the machine goes back
        record_error(summary, err)
    if summary["export"] is not None:
        start = Path(start_model(args.init_from))
        try:
            evaluate(Path(summary["export"]), start, args, clock, summary)
        except Exception as err:
            record_error(summary, err)
    for error in summary["errors"]:
        print(error, file=sys.stderr)
    summary["seconds"] = round(clock.elapsed(), 1)
    try:
        pack(args.runs, summary, args.out)
    except Exception as err:  # the last complete pack stays in $OUT
        record_error(summary, err, "final pack")
        print(summary["errors"][-1], file=sys.stderr)
        return 1
    brief = {k: summary[k] for k in ("plan", "seconds", "evaluation", "comparison", "bundle")}
    print(json.dumps(brief, indent=2))
    return 1 if summary["errors"] else 0


# --------------------------------------------------------------------------------------
# Here again: the parts back into files
# --------------------------------------------------------------------------------------


def read_summary(files: Path) -> dict:
    """The summary.json of a device run's files; ValueError naming what is wrong."""
    path = files / SUMMARY
    if not path.is_file():
        raise ValueError(f"{files}: no {SUMMARY} (expected the files of a device run)")
    try:
        summary = json.loads(path.read_text())
        parts, sha256 = summary["bundle"]["parts"], summary["bundle"]["sha256"]
        names = [(part["name"], int(part["bytes"])) for part in parts]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        problem = f"{type(err).__name__}: {err}"
        raise ValueError(f"{path}: not a device run's summary ({problem})") from None
    if not names or not isinstance(sha256, str):
        raise ValueError(f"{path}: its bundle has no parts (the run packed nothing)")
    return summary


def unpack(files: Path, to: Path, overwrite: bool = False) -> dict:
    """Join the parts under `files` (summary.json names them), check the tar's SHA-256,
    and extract it into `to` (new or empty unless `overwrite`); returns the summary.
    ValueError naming what is missing, short, corrupt or unsafe."""
    summary = read_summary(files)
    if to.is_dir() and any(to.iterdir()) and not overwrite:
        raise ValueError(f"{to} is not empty (unpack into a new folder, or --overwrite)")
    to.mkdir(parents=True, exist_ok=True)
    tar_path = to / BUNDLE
    try:
        digest = hashlib.sha256()
        with tar_path.open("wb") as joined:
            for part in summary["bundle"]["parts"]:
                path = files / part["name"]
                if not path.is_file():
                    raise ValueError(f"{path}: missing (part of {BUNDLE}, {part['bytes']} bytes)")
                data = path.read_bytes()
                if len(data) != part["bytes"]:
                    raise ValueError(f"{path}: {len(data)} bytes, expected {part['bytes']}")
                digest.update(data)
                joined.write(data)
        if digest.hexdigest() != summary["bundle"]["sha256"]:
            raise ValueError(f"{files}: the joined parts' SHA-256 differs from {SUMMARY}'s")
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            for member in members:
                if Path(member.name).is_absolute() or ".." in Path(member.name).parts:
                    raise ValueError(f"{files}: refusing {member.name!r}: outside its folder")
                if not member.isfile():
                    raise ValueError(f"{files}: refusing {member.name!r}: not a regular file")
            for member in members:
                target = to / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    finally:
        tar_path.unlink(missing_ok=True)
    return summary


def describe(summary: dict, to: Path) -> str:
    """A few lines on what a device run did, for the terminal."""
    head = f"device run: {summary['plan']} from {summary['from']} on {summary['device']}, "
    if "seconds" in summary:
        head += f"{summary['seconds']} s of {60 * summary['minutes']:.0f}"
    else:  # killed part-way: the pack after the data or a stage is the last there is
        done = [stage for stage, record in summary["stages"].items() if "steps_done" in record]
        head += f"stopped part-way, packed last after {done[-1] if done else 'the data'}"
    lines = [head]
    for stage, record in summary["stages"].items():
        if "skipped" in record:
            lines.append(f"  {stage}: skipped, {record['skipped']}")
            continue
        lines.append(
            f"  {stage}: {record.get('steps_done', '?')} of {record.get('steps_planned', '?')} "
            f"steps, batch {record['batch_size']}, {record.get('seconds_per_step', '?')} s a step"
        )
    for name, means in summary["evaluation"].items():
        if isinstance(means, dict):
            means = f"regression PSNR {means['regression']['psnr']:.2f} dB"
        lines.append(f"  {name}: {means}")
    for output, rows in summary["comparison"].items():
        lines.append(f"  {output} PSNR, this run - the model it began from, per scene:")
        for row in rows:
            lines.append(
                f"    {row['region']:<7} {row['mean']:+.3f} dB (95 % bootstrap "
                f"{row['low']:+.3f} to {row['high']:+.3f}), better in {row['better']} of "
                f"{row['scenes']} scenes"
            )
    if summary["bundle"]["export"]:
        lines.append(f"  export: {to / summary['bundle']['export']}")
    for error in summary["errors"]:
        lines.append(f"  error: {error.strip().splitlines()[-1]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gen_nvs.train.device", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    wheels = sub.add_parser("wheels", help="here: the packages the device lacks, into .whl/")
    wheels.add_argument("--dir", type=Path, default=Path(".whl"), help="wheel folder (.whl)")
    run_parser = sub.add_parser("run", help="there: the budgeted recipe")
    for p in (wheels, run_parser):
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
    run_parser.add_argument("--calibration-steps", type=int, default=20)
    run_parser.add_argument("--started-at", type=float, help="the command's start (epoch s)")
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
    unpack_parser.add_argument("--overwrite", action="store_true", help="into a non-empty --to")
    return parser


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.minutes > 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if args.command == "wheels" and args.minutes > MAX_MINUTES:
        parser.error(
            f"--minutes must be at most {MAX_MINUTES} (one device command of 600 s, the "
            f"install included), got {args.minutes}"
        )
    if args.scale < 1:
        parser.error(f"--scale must be >= 1, got {args.scale}")
    if is_export(args.init_from) and not (Path(args.init_from) / "config.json").is_file():
        parser.error(f"--from {args.init_from}: no export there (expected config.json)")
    if args.command == "wheels":
        return
    if args.out is None:
        parser.error("--out is required where $OUT is not set")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.calibration_steps < 3:
        parser.error(f"--calibration-steps must be >= 3, got {args.calibration_steps}")
    if not 0 <= args.reserve < 1:
        parser.error(f"--reserve must be in [0, 1), got {args.reserve}")
    if args.runs.exists() and any(args.runs.iterdir()):
        parser.error(
            f"--runs {args.runs} is not empty: a device run starts from nothing (remove it, "
            "or choose another folder)"
        )


def in_repository(parser: argparse.ArgumentParser, option: str, path: Path) -> str:
    """`path` relative to the repository root (the working folder), POSIX-style: only the
    repository's folders travel to the device; parser error for one outside it."""
    root = Path.cwd().resolve()
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        parser.error(f"{option} {path}: not inside the repository ({root}), so it cannot travel")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "unpack":
        try:
            summary = unpack(args.files, args.to, args.overwrite)
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
        print(describe(summary, args.to))
        return 1 if summary["errors"] else 0
    check_run_arguments(parser, args)
    if args.command == "wheels":
        wheels = in_repository(parser, "--dir", args.dir)
        init_from = args.init_from
        carry = [wheels]
        if is_export(init_from):  # an export here travels too
            init_from = in_repository(parser, "--from", Path(init_from))
            carry.append(init_from)
        found = download_wheels(args.dir)
        exclude_from_git(Path.cwd(), f"/{wheels}/")
        print(f"{len(found)} wheels in {args.dir}: {', '.join(f.name for f in found)}")
        print(f"device tool run, carry {json.dumps(carry)}, timeout_s 600; the recipe:")
        print(device_command(args.minutes, init_from, args.scale, wheels))
        print("or the GPU benchmark (README, Benchmarks; one of the two fits a session):")
        print(bench_command(wheels))
        return 0
    try:
        configs = stage_configs(args)
    except ValueError as err:
        parser.error(str(err))
    return run(args, configs)


if __name__ == "__main__":
    sys.exit(main())
