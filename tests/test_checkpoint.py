"""Checkpoint I/O: official pickles, our safetensors exports, hf:// paths, layout checks."""

from __future__ import annotations

import re

import pytest
import torch

from gen_nvs.models import checkpoint as ck
from tests.conftest import REFERENCE_DIR


def populate_hf_cache(cache, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay files out as huggingface_hub's cache does, so offline downloads find them."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        target = repo / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def test_official_state_dict_unwraps_model_entry(tmp_path):
    sd = {"renderer.tgt_norm.weight": torch.arange(4.0)}
    torch.save({"model": sd, "step": 3}, tmp_path / "model.pt")
    loaded = ck.load_official_state_dict(tmp_path / "model.pt")
    assert list(loaded) == ["renderer.tgt_norm.weight"]
    assert torch.equal(loaded["renderer.tgt_norm.weight"], torch.arange(4.0))
    torch.save(sd, tmp_path / "plain.pt")
    assert torch.equal(
        ck.load_official_state_dict(tmp_path / "plain.pt")["renderer.tgt_norm.weight"],
        sd["renderer.tgt_norm.weight"],
    )


def test_official_state_dict_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ck.load_official_state_dict(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        ck.load_official_state_dict(tmp_path / "junk.pt")
    torch.save({"a": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(ValueError, match="state dict"):
        ck.load_official_state_dict(tmp_path / "list.pt")


def test_hf_path_resolves_through_offline_cache(tmp_path, monkeypatch):
    sd = {"w": torch.ones(2)}
    buffer = tmp_path / "src.pt"
    torch.save({"model": sd}, buffer)
    populate_hf_cache(tmp_path / "hub", "facebook/lagernvs_test", {"model.pt": buffer.read_bytes()})
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    loaded = ck.load_official_state_dict("hf://facebook/lagernvs_test/model.pt")
    assert torch.equal(loaded["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="hf://facebook/lagernvs_test/missing.pt"):
        ck.resolve_path("hf://facebook/lagernvs_test/missing.pt")
    with pytest.raises(ValueError, match="hf://org/repo/file"):
        ck.resolve_path("hf://just-a-name")


def test_export_round_trip_and_hf_export(tmp_path, monkeypatch):
    sd = {"a.weight": torch.randn(3, 2), "b": torch.zeros(1)}
    config = {"preset": "tiny", "decoder": {"width": 8}}
    out = ck.save_export(tmp_path / "export", sd, config)
    loaded_config, loaded = ck.load_export(out)
    assert loaded_config == config
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    files = {name: (out / name).read_bytes() for name in (ck.EXPORT_WEIGHTS, ck.EXPORT_CONFIG)}
    populate_hf_cache(tmp_path / "hub", "gen-nvs/tiny", files)
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    hub_config, hub_sd = ck.load_export("hf://gen-nvs/tiny")
    assert hub_config == config and torch.equal(hub_sd["a.weight"], sd["a.weight"])


@pytest.mark.parametrize("given", ["hf://", "hf://justname", "hf://org//repo", "hf://org/repo@"])
def test_malformed_hub_checkpoints_say_what_was_given_and_the_form(given):
    expected = f"{given!r} is not a Hugging Face path: expected hf://org/repo[/subdir][@revision]"
    with pytest.raises(ValueError, match=re.escape(expected)):
        ck.load_export(given)


def test_hub_paths_split_into_repo_folder_and_revision():
    assert ck.split_hf_path("hf://org/repo/sub/model.safetensors@v1") == (
        "org/repo",
        "sub/model.safetensors",
        "v1",
    )
    assert ck.split_hf_path("hf://org/repo/", ck.HF_EXPORT_FORM) == ("org/repo", "", None)
    with pytest.raises(ValueError, match=re.escape("expected hf://org/repo/file[@revision]")):
        ck.split_hf_path("hf://org/repo")  # a file needs its path in the repo


@pytest.mark.parametrize(
    ("url", "spelling"),
    [
        ("https://huggingface.co/org/repo", "hf://org/repo"),
        ("https://huggingface.co/org/repo/tree/v2/export", "hf://org/repo/export@v2"),
        ("https://example.com/model", None),
    ],
)
def test_urls_are_refused_with_their_hub_spelling(url, spelling):
    message = f"checkpoint {url!r} is a URL; give a local path or a Hugging Face path, "
    message += "hf://org/repo[/subdir][@revision]"
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        ck.load_export(url)
    assert (f"(here: {spelling})" in str(err.value)) == (spelling is not None)


def test_checkpoint_help_gives_the_accepted_form():
    import argparse

    from gen_nvs.options import add_model_arguments

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert ck.HF_EXPORT_FORM in " ".join(parser.format_help().split())


def test_export_missing_config_is_named(tmp_path):
    ck.save_export(tmp_path, {"a": torch.zeros(1)}, {})
    (tmp_path / ck.EXPORT_CONFIG).unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        ck.load_export(tmp_path)


def test_check_layout_lists_every_problem():
    expected = {"a": (2, 3), "b": (4,), "c": (1,)}
    ck.check_layout(dict(expected), expected, "demo")
    actual = {"a": (3, 2), "b": (4,), "d": (5,)}
    with pytest.raises(ValueError) as err:
        ck.check_layout(actual, expected, "demo")
    text = str(err.value)
    assert "missing (1): c" in text
    assert "unexpected (1): d" in text
    assert "a: expected (2, 3), got (3, 2)" in text


def test_key_manifests_are_readable():
    manifest = ck.read_key_manifest(REFERENCE_DIR / "lagernvs_full_attention.keys.json")
    assert manifest["renderer.tgt_embedder.proj.weight"] == (768, 6, 8, 8)
    vggt = ck.read_key_manifest(REFERENCE_DIR / "vggt_1b_aggregator_camera_head.keys.json")
    assert vggt["aggregator.camera_token"] == (1, 2, 1, 1024)
