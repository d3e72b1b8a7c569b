"""Checkpoint files: official releases in, our own exports in and out.

- Official checkpoints (`facebook/VGGT-1B` `model.pt`, `facebook/lagernvs_*` `model.pt`)
  are PyTorch pickles of a state dict (LagerNVS wraps it as `{"model": state_dict}`).
  They are read with `weights_only=True` and converted to our key names by
  `gen_nvs.models.convert`.
- Our exports are a directory with `model.safetensors` (inference weights, EMA
  where there is one) and `config.json` (everything needed to rebuild the model).

Paths are local files/directories or `hf://org/repo/path/in/repo[@revision]`, resolved
through huggingface_hub's cache (offline use works once the file is cached).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

HF_PREFIX = "hf://"
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"


# The accepted forms, in the words of `--checkpoint --help`.
HF_FILE_FORM = "hf://org/repo/file[@revision]"
HF_EXPORT_FORM = "hf://org/repo[/subdir][@revision]"
HF_HOST = "huggingface.co/"


def split_hf_path(text: str, form: str = HF_FILE_FORM) -> tuple[str, str, str | None]:
    """`hf://org/repo[/path][@revision]` -> (repo id "org/repo", path in the repo ("" for
    none), revision or None). ValueError naming what was given and `form`, the accepted
    form (`HF_FILE_FORM` needs a path in the repo, `HF_EXPORT_FORM` does not)."""
    spec, revision = text.removeprefix(HF_PREFIX), None
    if "@" in spec:
        spec, revision = spec.rsplit("@", 1)
    parts = spec.rstrip("/").split("/")
    fewest = 3 if form == HF_FILE_FORM else 2
    if not text.startswith(HF_PREFIX) or len(parts) < fewest or not all(parts) or revision == "":
        raise ValueError(f"{text!r} is not a Hugging Face path: expected {form}")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def refuse_url(text: str, form: str) -> None:
    """ValueError for a URL other than hf://, which as a local path would end in an odd
    "not found" (`https:/...`); a huggingface.co URL is given its hf:// spelling."""
    scheme, sep, rest = text.partition("://")
    if not sep or "/" in scheme or text.startswith(HF_PREFIX):
        return
    hint = ""
    host, _, location = rest.removeprefix("www.").partition("/")
    parts = location.strip("/").split("/")
    if host + "/" == HF_HOST and len(parts) >= 2 and all(parts[:2]):
        revision = ""
        if len(parts) > 3 and parts[2] in ("tree", "blob", "resolve"):
            revision = "" if parts[3] == "main" else "@" + parts[3]
            parts = parts[:2] + parts[4:]
        hint = f" (here: hf://{'/'.join(parts)}{revision})"
    raise ValueError(
        f"checkpoint {text!r} is a URL; give a local path or a Hugging Face path, {form}{hint}"
    )


def resolve_path(path: str | Path) -> Path:
    """A local path, or the cached local copy of an `hf://org/repo/file[@rev]` path."""
    text = str(path)
    refuse_url(text, HF_FILE_FORM)
    if not text.startswith(HF_PREFIX):
        local = Path(text).expanduser()
        if not local.exists():
            raise FileNotFoundError(f"checkpoint not found: {local}")
        return local
    repo_id, filename, revision = split_hf_path(text, HF_FILE_FORM)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as err:  # network, auth (gated repo) or missing file: say which
        raise FileNotFoundError(
            f"could not fetch {text} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Gated models need `huggingface-cli login`; offline machines need the file "
            "in the local cache or a local path."
        ) from err


def load_official_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read an official `model.pt` (a state dict, or a dict whose "model" entry is one)."""
    file = resolve_path(path)
    if file.is_dir():
        raise ValueError(f"{file} is a directory; expected an official model.pt file")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(f"{file}: not a readable PyTorch checkpoint ({err})") from err
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{file}: expected a state dict of tensors (or {{'model': state_dict}})")
    return dict(obj)


def check_layout(
    actual: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
) -> None:
    """Raise ValueError listing every missing key, extra key and shape mismatch."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    mismatched = [
        f"{k}: expected {tuple(expected[k])}, got {tuple(actual[k])}"
        for k in sorted(set(expected) & set(actual))
        if tuple(expected[k]) != tuple(actual[k])
    ]
    if not (missing or extra or mismatched):
        return
    parts = []  # one line: the CLI prints errors as one line
    for title, items in (("missing", missing), ("unexpected", extra), ("shape", mismatched)):
        if items:
            shown = items[:8] + ([f"... and {len(items) - 8} more"] if len(items) > 8 else [])
            parts.append(f"{title} ({len(items)}): " + "; ".join(shown))
    raise ValueError(f"{what}: state dict does not match the expected layout: {' | '.join(parts)}")


def read_key_manifest(path: str | Path) -> dict[str, tuple[int, ...]]:
    """A `*.keys.json` manifest (`{"tensors": [{"key", "shape", "dtype"}]}`) as key -> shape."""
    data = json.loads(Path(path).read_text())
    entries = data["tensors"] if isinstance(data, dict) else data
    return {e["key"]: tuple(e["shape"]) for e in entries}


def save_export(directory: str | Path, state_dict: Mapping[str, Tensor], config: dict) -> Path:
    """Write `model.safetensors` + `config.json` into `directory` (created if needed)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tmp = out / (EXPORT_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / EXPORT_WEIGHTS)  # never leave a half-written export behind
    (out / EXPORT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def load_export(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """Read an export -> (config, state_dict).

    `path` is an export directory, its `model.safetensors`, or `hf://org/repo[/subdir]`
    (the repo folder holding `config.json` and `model.safetensors`, `HF_EXPORT_FORM`);
    ValueError naming what was given and the accepted forms for anything else.
    """
    text = str(path)
    refuse_url(text, HF_EXPORT_FORM)
    if text.startswith(HF_PREFIX):
        repo_id, folder, revision = split_hf_path(text, HF_EXPORT_FORM)
        if folder.split("/")[-1] == EXPORT_WEIGHTS:
            folder = folder.rpartition("/")[0]
        base = "/".join(filter(None, (HF_PREFIX + repo_id, folder)))
        at = f"@{revision}" if revision else ""
        weights = resolve_path(f"{base}/{EXPORT_WEIGHTS}{at}")
        config_file = resolve_path(f"{base}/{EXPORT_CONFIG}{at}")
    else:
        location = resolve_path(path)
        if not location.is_dir() and location.name not in (EXPORT_WEIGHTS, EXPORT_CONFIG):
            raise ValueError(
                f"{location}: a gen-nvs export is a folder holding {EXPORT_WEIGHTS} and "
                f"{EXPORT_CONFIG} (give the folder or its {EXPORT_WEIGHTS}), not "
                f"{location.name!r}; an official LagerNVS or VGGT checkpoint is converted "
                "first (gen_nvs.models.convert)"
            )
        directory = location if location.is_dir() else location.parent
        weights, config_file = directory / EXPORT_WEIGHTS, directory / EXPORT_CONFIG
        for needed in (weights, config_file):
            if not needed.exists():
                raise FileNotFoundError(
                    f"{directory} is not a gen-nvs export: {needed.name} is missing "
                    f"(expected {EXPORT_WEIGHTS} and {EXPORT_CONFIG})"
                )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file}: invalid JSON ({err})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    return config, read_safetensors(weights)


def read_safetensors(file: str | Path) -> dict[str, Tensor]:
    """`safetensors.torch.load_file` with a one-line ValueError for a damaged file (a
    truncated download, or another format under the name) and for non-finite weights."""
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{file}: not a readable safetensors file ({err}); truncated, or another format "
            "(a pickle?) saved under this name"
        ) from None
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{file}: weight {key} has {bad} non-finite value(s) (NaN or inf); the file "
                "is damaged or came from a diverged run"
            )
    return tensors
