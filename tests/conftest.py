"""Shared test helpers: the reference fixtures copied from the official implementation, and
a spy on the pipeline's sampler options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

REFERENCE_DIR = Path(__file__).parent / "data" / "reference"


def pytest_runtest_setup(item):
    """Tests marked `gpu` skip without CUDA in a normal run, but fail when they were asked
    for (`-m gpu`): a GPU check that silently skipped everything would look like a pass."""
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        if "gpu" in (item.config.getoption("markexpr") or ""):
            pytest.fail("selected with -m gpu but no CUDA device is available", pytrace=False)
        pytest.skip("needs a CUDA device")


FIXTURES = sorted(REFERENCE_DIR.glob("*.safetensors"))


def load_fixture(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, tensors) of one golden fixture."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return meta, load_file(str(path))


@pytest.fixture(params=FIXTURES, ids=[p.stem for p in FIXTURES])
def fixture(request):
    return load_fixture(request.param)


@pytest.fixture
def patch_shifts(monkeypatch) -> list[bool]:
    """The `patch_shift` of every `sample_views` call the pipeline makes during the test,
    in order (the calls themselves run unchanged)."""
    import gen_nvs.pipeline

    seen = []
    original = gen_nvs.pipeline.sample_views

    def spy(*args, patch_shift, **kwargs):
        seen.append(patch_shift)
        return original(*args, patch_shift=patch_shift, **kwargs)

    monkeypatch.setattr(gen_nvs.pipeline, "sample_views", spy)
    return seen
