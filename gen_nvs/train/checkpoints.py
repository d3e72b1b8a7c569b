"""Resumable training states: `run_dir/checkpoints/step_XXXXXXX`.

Each state is Accelerate's `save_state` (model, optimizer, RNG states and the registered
objects: EMA, LR schedule, step counters) plus `config.yaml` (the resolved run config),
`model_config.json` (the model's config, checked before resuming) and `export/` (the
inference export with EMA weights). A state is written into `.tmp_step_XXXXXXX` and
renamed when complete, so a kill during saving leaves the newest good state intact;
only the newest `keep` states are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

STATE_NAME = re.compile(r"^step_(\d+)$")
MODEL_CONFIG = "model_config.json"


def state_name(step: int) -> str:
    return f"step_{step:07d}"


def list_states(directory: Path) -> list[Path]:
    """Complete states in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m[1]), p) for p in directory.iterdir() if (m := STATE_NAME.match(p.name))]
    return [p for _, p in sorted(found) if p.is_dir()]


def resolve_resume(resume: str | None, directory: Path) -> Path | None:
    """The state to resume: None (start fresh), "latest" (the newest state in
    `directory`, or none yet: start fresh) or a state directory."""
    if resume in (None, ""):
        return None
    if resume == "latest":
        states = list_states(directory)
        return states[-1] if states else None
    path = Path(resume).expanduser()
    if not (path / MODEL_CONFIG).is_file():
        raise FileNotFoundError(
            f"checkpoint.resume: {path} is not a training state (no {MODEL_CONFIG}); expected "
            f"'latest' or a directory like {directory / state_name(1000)}"
        )
    return path


def check_compatible(path: Path, stage: str, model_config: dict) -> None:
    """ValueError unless the state at `path` was saved for this stage and model."""
    saved = json.loads((path / MODEL_CONFIG).read_text())
    if saved["stage"] != stage:
        raise ValueError(
            f"cannot resume {path}: it is a {saved['stage']!r} state, this run's stage is "
            f"{stage!r} (start the diffusion stage with model.init_from=<regression export>)"
        )
    differences = _differences(saved["model"], model_config)
    if differences:
        shown = "; ".join(differences[:8])
        raise ValueError(
            f"cannot resume {path}: it was saved for another model ({shown}). Resume with the "
            "model config it was trained with, or start a new run."
        )


def _differences(saved, current, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            out += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    if saved != current:
        return [f"{prefix.rstrip('.')}: saved {saved!r}, now {current!r}"]
    return []


def save_state(
    accelerator,
    directory: Path,
    step: int,
    *,
    keep: int,
    write_extras: Callable[[Path], None],
) -> Path:
    """Write the state of `step` atomically (all processes call this); returns its path.

    `write_extras(tmp_dir)` runs on the main process before the rename."""
    final = directory / state_name(step)
    tmp = directory / f".tmp_{state_name(step)}"
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_extras(tmp)
        if final.exists():  # saved again after resuming at this step
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_states(directory)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def write_model_config(directory: Path, stage: str, model_config: dict) -> None:
    text = json.dumps({"stage": stage, "model": model_config}, indent=2, sort_keys=True)
    (directory / MODEL_CONFIG).write_text(text + "\n")
