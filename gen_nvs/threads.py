"""CPU threads for the commands and the app: use the idle cores, never spin-wait.

PyTorch's OpenMP threads spin while they wait for work (OpenMP's default wait policy),
and its default thread count is every core. On a machine that something else keeps
busy, the spinning threads and the other process take turns on the same cores: a
measured `gen-nvs sample` ran 90x slower than with one thread (`gen-nvs bench threads`
measures it). So the commands

- set `OMP_WAIT_POLICY=PASSIVE` (idle threads sleep) before PyTorch is imported, unless
  the user set a policy, and
- use as many threads as there are idle cores (the cores this process may run on, less
  the 1-minute load average, at least 1), unless `--threads` or `OMP_NUM_THREADS` says.
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"


def set_passive_wait() -> None:
    """Idle OpenMP threads sleep instead of spinning; call before `import torch` (the
    OpenMP runtime reads the policy when it loads). A policy the user set stays."""
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")


def available_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def idle_cores() -> int:
    """Cores not kept busy by other processes: available cores less the 1-minute load
    average (rounded), at least 1."""
    cores = available_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return cores
    return max(1, min(cores, cores - round(load)))


def choose_threads(threads: int | None) -> int:
    """The thread count to use: `threads` when given (>= 1), else OMP_NUM_THREADS when
    set, else `idle_cores()`."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        return threads
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) >= 1:
        return int(configured)
    return idle_cores()


def configure_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads to `choose_threads(threads)`; returns the count."""
    import torch

    count = choose_threads(threads)
    torch.set_num_threads(count)
    return count
