"""Resumable training states: `run_dir/checkpoints/step_XXXXXXX`.

Each state is Accelerate's `save_state` (model as safetensors, optimizer, RNG states)
plus our own files: `training_state.json` (step counters, LR schedule, EMA counters),
`ema.safetensors` (the EMA weights; one file per process under FSDP, whose EMA is of
the local shards), `config.yaml` (the resolved run config), `model_config.json` (the
model's config, checked before resuming) and `export/` (the inference export with EMA
weights). A state is written into `.tmp_step_XXXXXXX` and renamed when complete, so a
kill during saving leaves the newest good state intact; only the newest `keep` states
are kept.

Loading a state never runs code: our files are JSON and safetensors, and the pickled
files Accelerate writes (optimizer, RNG and scaler states) are read with
`torch.load(weights_only=True)`, which unpickles tensors and plain values only; a file
holding anything else is refused with one clear line. States of earlier versions (the
EMA and counters pickled as `custom_checkpoint_*.pkl`) are read the same safe way.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gen_nvs.models.config import ModelConfig

STATE_NAME = re.compile(r"^step_(\d+)$")
MODEL_CONFIG = "model_config.json"
TRAINING_STATE = "training_state.json"
# Earlier versions registered (EMA, TrainState, LR schedule) with Accelerate in this order.
LEGACY_CUSTOM = ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "custom_checkpoint_2.pkl")
LEGACY_FILE = re.compile(r"^custom_checkpoint_\d+\.pkl$")


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


def check_compatible(path: Path, stage: str, model_config: ModelConfig) -> None:
    """ValueError unless the state at `path` was saved for this stage and model (the
    configs are compared parsed, so a key written out at its default changes nothing)."""
    saved = json.loads((path / MODEL_CONFIG).read_text())
    if saved["stage"] != stage:
        raise ValueError(
            f"cannot resume {path}: it is a {saved['stage']!r} state, this run's stage is "
            f"{stage!r} (start the diffusion stage with model.init_from=<regression export>)"
        )
    try:
        saved_model = ModelConfig.from_dict(saved["model"], MODEL_CONFIG)
    except ValueError as err:
        raise ValueError(f"cannot resume {path}: {err}") from None
    differences = _differences(saved_model.to_dict(), model_config.to_dict())
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
    write_training_state: Callable[[Path], None],
    write_extras: Callable[[Path], None],
) -> Path:
    """Write the state of `step` atomically (all processes call this); returns its path.

    `write_training_state(tmp_dir)` runs on every process (see `write_training_state`),
    `write_extras(tmp_dir)` on the main process, both before the rename."""
    final = directory / state_name(step)
    tmp = directory / f".tmp_{state_name(step)}"
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    write_training_state(tmp)
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


# --------------------------------------------------------------------------------------
# Our part of a state: counters, LR schedule and EMA, without pickle
# --------------------------------------------------------------------------------------


def ema_file(directory: Path, shard: int | None) -> Path:
    """The EMA weights' file: `ema.safetensors`, or `ema_<rank>.safetensors` for the local
    shards of one process under FSDP (`shard` = its rank)."""
    return directory / ("ema.safetensors" if shard is None else f"ema_{shard}.safetensors")


def write_training_state(
    directory: Path, *, ema, state, lr_schedule, shard: int | None, main_process: bool
) -> None:
    """Write the EMA weights (this process's file, see `ema_file`) and, on the main
    process, `training_state.json`: TrainState, LR schedule and EMA counters."""
    ema_state = ema.state_dict()
    if main_process or shard is not None:
        shadow = {name: t.detach().contiguous().cpu() for name, t in ema_state["shadow"].items()}
        save_file(shadow, str(ema_file(directory, shard)))
    if main_process:
        record = {
            "train_state": state.state_dict(),
            "lr_schedule": lr_schedule.state_dict(),
            "ema": {k: v for k, v in ema_state.items() if k != "shadow"},
        }
        (directory / TRAINING_STATE).write_text(json.dumps(record, indent=2) + "\n")


def read_training_state(path: Path, *, ema, state, lr_schedule, shard: int | None) -> None:
    """Load what `write_training_state` wrote (or an earlier version's pickled custom
    states, unpickled with weights_only=True) into ema, state and lr_schedule."""
    if (path / TRAINING_STATE).is_file():
        record = json.loads((path / TRAINING_STATE).read_text())
        file = ema_file(path, shard)
        try:
            shadow = load_file(str(file))
        except (OSError, SafetensorError) as err:
            raise ValueError(f"cannot resume {path}: {file.name} is unreadable ({err})") from None
        ema_state = {**record["ema"], "shadow": shadow}
        train_state, schedule = record["train_state"], record["lr_schedule"]
    elif all((path / name).is_file() for name in LEGACY_CUSTOM):
        ema_state, train_state, schedule = (safe_torch_load(path / n) for n in LEGACY_CUSTOM)
    else:
        raise ValueError(
            f"cannot resume {path}: it has neither {TRAINING_STATE} nor an earlier version's "
            "custom_checkpoint_*.pkl files"
        )
    ema.load_state_dict(ema_state)
    state.load_state_dict(train_state)
    lr_schedule.load_state_dict(schedule)


def safe_torch_load(file: Path):
    """`torch.load` that cannot run code (weights_only, NumPy's RNG-state arrays allowed,
    as Accelerate's own loader does); anything else is a one-line ValueError."""
    from accelerate.utils import load

    try:
        return load(file, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot resume from {file}: refused to unpickle it, it holds more than tensors "
            f"and plain values or is damaged ({reason[:160]}); resume only states you trust"
        ) from None


def check_pickled_files(path: Path, process_index: int) -> None:
    """Read the pickled files Accelerate's `load_state` would read without a word on
    failure (its RNG states) or with its own weights_only errors (optimizer, scaler),
    so that a crafted or damaged file is a one-line error before any loading."""
    names = ["optimizer.bin", "scaler.pt", f"random_states_{process_index}.pkl"]
    for file in (path / name for name in names):
        if file.is_file():
            safe_torch_load(file)


def load_state(accelerator, path: Path, *, ema, state, lr_schedule, shard: int | None) -> None:
    """Resume from the state at `path` (see the module docstring: no code runs)."""
    read_training_state(path, ema=ema, state=state, lr_schedule=lr_schedule, shard=shard)
    check_pickled_files(path, accelerator.process_index)
    # Accelerate would refuse (or, once objects are registered, unpickle with
    # weights_only=False) an earlier version's custom_checkpoint_*.pkl: it sees a view of
    # the state without them, read above.
    with tempfile.TemporaryDirectory(prefix="gen-nvs-resume-") as view:
        for item in path.iterdir():
            if not LEGACY_FILE.match(item.name):
                (Path(view) / item.name).symlink_to(item.resolve())
        try:
            accelerator.load_state(view, load_kwargs={"weights_only": True})
        except (pickle.UnpicklingError, EOFError) as err:  # checked above; a race at most
            raise ValueError(f"cannot resume {path}: {str(err).splitlines()[0]}") from None
