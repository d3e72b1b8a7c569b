"""Training configuration: defaults -> experiment file -> command-line overrides.

The layers are plain nested dicts read from YAML. `configs/defaults.yaml` lists every
key; an experiment file and `key.sub=value` overrides may only set keys that exist there
(a mistyped key is an error naming the nearest valid one), except the free-named entries
under `data.datasets`, whose keys are checked per dataset type by `gen_nvs.train.data`,
and the module options under `model.encoder`/`decoder`/`camera_head`/`depth_head` (and
`model.latent`, `model.refiner`), checked (names and types) by the model builder
(`gen_nvs.models.config`, `gen_nvs.train.loop.build_model`).
Override values are parsed as YAML scalars (`train.lr=1e-4`, `data.image_size=[32,32]`,
`model.init_from=null`).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULTS = CONFIG_DIR / "defaults.yaml"
# Mappings whose keys are names chosen by the user (validated elsewhere).
FREE_KEYS = (
    "data.datasets",
    "model.encoder",
    "model.decoder",
    "model.camera_head",
    "model.depth_head",
    "model.latent",  # {vae: PATH}, checked by the model builder
    "model.refiner",
)


def load_config(experiment: str | Path | None = None, overrides: Sequence[str] = ()) -> dict:
    """The resolved config: defaults, then the experiment file, then `key=value` overrides."""
    schema = read_yaml(DEFAULTS)
    config = copy.deepcopy(schema)
    if experiment is not None:
        merge(config, read_yaml(experiment), schema, where=str(experiment))
    for item in overrides:
        key, value = parse_override(item)
        merge(config, _nest(key, value), schema, where=f"override {item!r}")
    return config


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as YAML)."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"an override must look like key.sub=value, got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ValueError(f"override {item!r}: the value is not valid YAML ({err})") from err
    return key.strip(), value


def merge(
    base: dict,
    update: dict,
    schema: dict,
    *,
    where: str,
    prefix: str = "",
    root: dict | None = None,
) -> None:
    """Merge `update` into `base` in place. Every key must exist in `schema` (the defaults
    at the same level; anything goes below FREE_KEYS) and its value must be of the kind
    the default is (a number for a number, a list for a list, ...). `root` is the whole
    schema when `schema` is a part of it (for suggestions)."""
    root = schema if root is None else root
    for key, value in update.items():
        path = f"{prefix}{key}"
        if path in FREE_KEYS or any(path.startswith(f + ".") for f in FREE_KEYS):
            if isinstance(base.get(key), dict) and isinstance(value, dict):
                merge(base[key], value, {}, where=where, prefix=f"{path}.", root=root)
            else:
                base[key] = copy.deepcopy(value)
            continue
        if key not in schema:
            raise ValueError(f"{where}: unknown config key {path!r}{suggest(path, schema, root)}")
        default = schema[key]
        if isinstance(default, dict) and isinstance(value, dict):
            merge(base[key], value, default, where=where, prefix=f"{path}.", root=root)
            continue
        value = _coerce(default, value)
        _check_kind(path, default, value, where)
        base[key] = copy.deepcopy(value)


def suggest(path: str, siblings: dict, root: dict) -> str:
    """ "; did you mean 'x.y'?" naming the nearest valid key: a close sibling of `path`'s
    last part, else the closest key path anywhere in `root`."""
    parent, _, name = path.rpartition(".")
    close = difflib.get_close_matches(name, list(siblings), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {'.'.join(filter(None, [parent, close[0]]))!r}?"
    close = difflib.get_close_matches(path, list(flat_keys(root)), n=1, cutoff=0.0)
    return f"; did you mean {close[0]!r}?" if close else ""


def flat_keys(config: dict, prefix: str = "") -> Iterator[str]:
    """Every dotted key path of a nested dict (leaves and mappings)."""
    for key, value in config.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict):
            yield from flat_keys(value, f"{path}.")


def _coerce(default: Any, value: Any) -> Any:
    """PyYAML reads `1e-4` (no dot) as a string: read it as the number it means; an
    integral float for an integer key becomes an int."""
    if not isinstance(default, (int, float)) or isinstance(default, bool):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_kind(path: str, default: Any, value: Any, where: str) -> None:
    """ValueError unless `value` is of the default's kind (None fits any key)."""
    if default is None or value is None:
        return
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        kind = {bool: "a boolean", int: "an integer", float: "a number"}.get(type(default), "")
        kind = kind or f"a {type(default).__name__}"
        raise ValueError(f"{where}: {path} expects {kind} (default {default!r}), got {value!r}")


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def get(config: dict, key: str) -> Any:
    """`get(config, "train.lr")`."""
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def git_revision(start: str | Path | None = None) -> str:
    """The checked-out commit of the repository holding `start` (default: this package),
    read from `.git` without running git; "unknown" outside a repository."""
    here = Path(start or __file__).resolve()
    for folder in [here, *here.parents]:
        git = folder / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            text = git.read_text().strip()
            git = (folder / text.removeprefix("gitdir:").strip()).resolve()
        if git.is_dir():
            return _read_head(git)
    return "unknown"


def _read_head(git: Path) -> str:
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head
    ref = head.removeprefix("ref:").strip()
    common = git
    if (git / "commondir").is_file():
        common = (git / (git / "commondir").read_text().strip()).resolve()
    for base in (git, common):
        if (base / ref).is_file():
            return (base / ref).read_text().strip()
        packed = base / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
    return f"unknown ({ref} has no commit yet)"
