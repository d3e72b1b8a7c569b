"""Thread settings of the commands (gen_nvs.threads) and the thread benchmark."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gen_nvs import threads
from gen_nvs.cli import main


def test_threads_given_win_then_omp_num_threads_then_idle_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.4, 0.0, 0.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.idle_cores() == 3  # 8 cores, 5 busy
    assert threads.choose_threads(None) == 3
    assert threads.choose_threads(2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert threads.choose_threads(None) == 6
    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 0.0, 0.0))
    assert threads.idle_cores() == 1  # never fewer than one
    with pytest.raises(ValueError, match="--threads must be >= 1, got 0"):
        threads.choose_threads(0)


def test_the_command_line_sleeps_idle_threads_and_takes_threads():
    """Importing the CLI sets the passive wait policy before torch loads (unless the user
    chose one), and --threads reaches torch."""
    code = (
        "import os, gen_nvs.cli, torch; print(os.environ['OMP_WAIT_POLICY']); "
        "gen_nvs.cli.configure_threads(None); print(torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["PASSIVE", "1"], out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split()[0] == "ACTIVE"


def test_threads_option_of_a_command(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["make-scenes", "--threads", "1", "--out", str(tmp_path / "s"),
                     "--scenes", "1", "--views", "2", "--size", "16", "16"]) == 0  # fmt: skip
        assert torch.get_num_threads() == 1
        assert main(["make-scenes", "--threads", "0", "--out", str(tmp_path / "t")]) == 2
        assert capsys.readouterr().err.strip().endswith("--threads must be >= 1, got 0")
    finally:
        torch.set_num_threads(before)


def test_thread_benchmark_measures_one_setting():
    from gen_nvs.bench.threads import _measure

    figures = _measure(1, "PASSIVE", steps=1, timeout=120)
    assert figures["threads"] == 1 and figures["steps_per_second"] > 0
