"""Thread benchmark: sampling speed by thread count and OpenMP wait policy, on an idle
machine and on one kept busy by other processes (`gen-nvs bench threads`).

Each setting runs in its own process (the wait policy is read when PyTorch loads): the
embedded default model encodes a procedural scene and draws 1 sample of 1 target view;
the figure is denoising steps per second, timed after a warm-up run. "Busy" starts one
spinning process per core beside it. The row `auto` is what the commands choose
(`gen_nvs.threads`: passive waiting, the idle cores). Ratios come from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from gen_nvs.threads import available_cores

SPIN = "while True: pass"


def add_threads_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=10, help="timed denoising steps (10)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed per setting (120)"
    )


def run_threads_bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    cores = available_cores()
    settings = [(n, policy) for n in sorted({1, cores}) for policy in ("ACTIVE", "PASSIVE")]
    result: dict[str, Any] = {"cores": cores, "steps": args.steps, "idle": {}, "busy": {}}
    for load in ("idle", "busy"):
        spinners = [_spin() for _ in range(cores)] if load == "busy" else []
        try:
            if spinners:
                time.sleep(1.0)  # let the spinners take the cores
            for threads, policy in settings:
                key = f"threads={threads},{policy.lower()}"
                result[load][key] = _measure(threads, policy, args.steps, args.timeout)
            result[load]["auto"] = _measure(None, None, args.steps, args.timeout)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    busy = result["busy"]
    default = busy.get(f"threads={cores},active", {}).get("steps_per_second")
    auto = busy["auto"].get("steps_per_second")
    if default and auto:  # torch's defaults (all cores, spinning) vs the commands' choice
        result["busy_speedup_auto_vs_torch_default"] = round(auto / default, 2)
    return result


def _spin() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SPIN])


def _measure(threads: int | None, policy: str | None, steps: int, timeout: float) -> dict:
    """One setting in a fresh process -> {"steps_per_second", "threads"} (or "error")."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, "-m", "gen_nvs.bench.threads", str(steps)]
    if threads is not None:
        command.append(str(threads))
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker(steps: int, threads: int | None) -> dict:
    """In the child process: set threads as the commands do, time `steps` steps."""
    from gen_nvs.threads import configure_threads, set_passive_wait

    set_passive_wait()  # a no-op when the parent set a policy

    from gen_nvs.data.procedural import generate_scene
    from gen_nvs.inputs import SourceViews, TargetCameras
    from gen_nvs.pipeline import NVSPipeline, SamplingConfig

    count = configure_threads(threads)
    pipe = NVSPipeline.from_pretrained()
    views = generate_scene(0, 3, (64, 64))
    scene = pipe.encode(
        SourceViews(views.images[:2], views.c2w[:2], views.fxfycxcy[:2], ["0", "1"])
    )
    targets = TargetCameras(views.c2w[2:], views.fxfycxcy[2:], normalized=False)
    config = SamplingConfig(steps=steps, samples=1, mask="off")

    def run() -> float:
        start = time.perf_counter()
        pipe.sample(scene, targets, config)
        return time.perf_counter() - start

    run()  # warm-up
    seconds = run()
    return {"threads": count, "steps_per_second": round(steps / seconds, 2)}


if __name__ == "__main__":
    steps_arg, *threads_arg = sys.argv[1:]
    print(json.dumps(_worker(int(steps_arg), int(threads_arg[0]) if threads_arg else None)))
