"""Shared test helpers: the reference fixtures copied from the official implementation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

REFERENCE_DIR = Path(__file__).parent / "data" / "reference"
FIXTURES = sorted(REFERENCE_DIR.glob("*.safetensors"))


def load_fixture(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, tensors) of one golden fixture."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return meta, load_file(str(path))


@pytest.fixture(params=FIXTURES, ids=[p.stem for p in FIXTURES])
def fixture(request):
    return load_fixture(request.param)
