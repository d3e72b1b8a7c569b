"""VGGT encoder and camera head: parity with the official golden fixtures, checkpoint key
layouts, input validation, batching, freezing and gradient checkpointing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from gen_nvs.fixtures import fixture_model_config
from gen_nvs.models.camera_head import CameraHead
from gen_nvs.models.config import model_config
from gen_nvs.models.convert import convert_official, official_to_ours
from gen_nvs.models.encoder import VGGTEncoder

REFERENCE = Path(__file__).parent / "data" / "reference"
FIXTURES = sorted(p.stem for p in REFERENCE.glob("*.safetensors"))
TOLERANCE = 1e-4


def load_fixture(name: str) -> tuple[dict, dict[str, torch.Tensor], VGGTEncoder, CameraHead]:
    """Fixture meta, io tensors, and the tiny encoder / camera head loaded strictly from it."""
    path = REFERENCE / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["meta"])
    tensors = load_file(str(path))
    io = {k.removeprefix("io."): v for k, v in tensors.items() if k.startswith("io.")}
    official = {k.removeprefix("model."): v for k, v in tensors.items() if not k.startswith("io.")}
    converted = convert_official(official)  # NVSModel keys: encoder.*, camera_head.*, ...
    config = fixture_model_config(meta)
    encoder = VGGTEncoder(**config.encoder.kwargs()).eval()
    head = CameraHead(**config.camera_head.kwargs()).eval()
    encoder.load_state_dict(_part(converted, "encoder."), strict=True)
    head.load_state_dict(_part(converted, "camera_head."), strict=True)
    return meta, io, encoder, head


def _part(entries: dict, prefix: str) -> dict:
    """The entries of an NVSModel-keyed dict whose keys start with `prefix`, without it."""
    return {k.removeprefix(prefix): v for k, v in entries.items() if k.startswith(prefix)}


def test_fixtures_present() -> None:
    assert len(FIXTURES) == 4
    assert any(
        json.loads((REFERENCE / "index.json").read_text())[n]["posed"] is False for n in FIXTURES
    )


@pytest.mark.parametrize("name", FIXTURES)
def test_aggregator_matches_fixture(name: str) -> None:
    meta, io, encoder, _ = load_fixture(name)
    sources = meta["num_source_views"]
    with torch.no_grad():
        tokens = encoder.aggregate(
            io["images"][:sources], io["camera_tokens"][:sources], resize="square"
        )
    expected = io["aggregator_last_tokens"]
    assert tokens.shape == expected.shape
    assert (tokens - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("name", FIXTURES)
def test_encoder_matches_fixture(name: str) -> None:
    meta, io, encoder, _ = load_fixture(name)
    sources = meta["num_source_views"]
    with torch.no_grad():
        out = encoder(io["images"][:sources], io["camera_tokens"][:sources])
    expected = io["encoder_tokens"]
    height, width = meta["image_hw"]
    grid = encoder.target_size(height, width)
    assert out.grid_hw == (grid[0] // 14, grid[1] // 14)
    assert out.grid_hw[0] * out.grid_hw[1] == expected.shape[1]
    assert out.tokens.shape == expected.shape
    assert (out.tokens - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("name", FIXTURES)
def test_camera_head_matches_fixture(name: str) -> None:
    _, io, _, head = load_fixture(name)
    with torch.no_grad():
        pose_enc = head(io["aggregator_last_tokens"])
        all_iterations = head(io["aggregator_last_tokens"], return_all=True)
    expected = io["camera_head_pose_enc"]
    assert pose_enc.shape == expected.shape
    assert (pose_enc - expected).abs().max().item() < TOLERANCE
    assert all_iterations.shape == (4, *expected.shape)
    torch.testing.assert_close(all_iterations[-1], pose_enc)


def test_target_size_keeps_aspect() -> None:
    encoder = VGGTEncoder(**model_config("tiny").encoder.kwargs())
    assert encoder.target_size(48, 80) == (308, 518)
    assert encoder.target_size(80, 48) == (518, 308)
    assert encoder.target_size(256, 256) == (518, 518)
    with pytest.raises(ValueError, match="elongated"):
        encoder.target_size(1, 100)


def _full_size_layout(file: str) -> dict[str, tuple[int, ...]]:
    tensors = json.loads((REFERENCE / file).read_text())["tensors"]
    return {entry["key"]: tuple(entry["shape"]) for entry in tensors}


def _mapped(layout: dict[str, tuple[int, ...]], component: str) -> dict[str, tuple[int, ...]]:
    """The official layout's entries that land in `component`, under its own keys."""
    ours = {official_to_ours(key): shape for key, shape in layout.items()}
    return _part({k: v for k, v in ours.items() if k is not None}, f"{component}.")


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "file",
    [
        "lagernvs_full_attention.keys.json",
        "lagernvs_cross_attention.keys.json",
        "lagernvs_bidirectional_cross_attention.keys.json",
    ],
)
def test_full_size_encoder_matches_lagernvs_layout(file: str) -> None:
    with torch.device("meta"):
        encoder = VGGTEncoder(**model_config("lagernvs").encoder.kwargs())
    assert _mapped(_full_size_layout(file), "encoder") == _shapes(encoder)


def test_full_size_matches_vggt_1b_layout() -> None:
    layout = _full_size_layout("vggt_1b_aggregator_camera_head.keys.json")
    with torch.device("meta"):
        config = model_config("lagernvs")
        encoder = VGGTEncoder(**config.encoder.kwargs())
        head = CameraHead(**config.camera_head.kwargs())
    aggregator = {k: v for k, v in _shapes(encoder).items() if k.startswith("aggregator.")}
    assert _mapped(layout, "encoder") == aggregator
    assert _mapped(layout, "camera_head") == _shapes(head)
    assert official_to_ours("reconstructor.renderer.anything") is None
    assert official_to_ours("depth_head.norm.weight") is None


@pytest.fixture
def tiny_encoder() -> VGGTEncoder:
    torch.manual_seed(0)
    return VGGTEncoder(**model_config("tiny").encoder.kwargs()).eval()


@pytest.mark.parametrize(
    ("images", "camera_tokens", "match"),
    [
        (torch.rand(2, 4, 28, 28), torch.zeros(2, 11), "3, h, w"),
        (torch.rand(3, 28, 28), torch.zeros(1, 11), "3, h, w"),
        (torch.rand(2, 3, 10, 28), torch.zeros(2, 11), "at least one patch"),
        (torch.rand(2, 3, 28, 28), torch.zeros(3, 11), r"\(2, 11\)"),
        (torch.rand(2, 3, 28, 28), torch.zeros(2, 9), r"\(2, 11\)"),
        (torch.full((2, 3, 28, 28), float("nan")), torch.zeros(2, 11), "images contain"),
        (torch.rand(2, 3, 28, 28), torch.full((2, 11), float("inf")), "camera tokens contain"),
    ],
)
def test_encoder_rejects_bad_input(
    tiny_encoder: VGGTEncoder, images: torch.Tensor, camera_tokens: torch.Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_encoder(images, camera_tokens, resize="none")


def test_resize_none_requires_patch_multiple(tiny_encoder: VGGTEncoder) -> None:
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        tiny_encoder(torch.rand(2, 3, 28, 30), torch.zeros(2, 11), resize="none")


def test_camera_head_rejects_bad_input() -> None:
    head = CameraHead(**model_config("tiny").camera_head.kwargs())
    with pytest.raises(ValueError, match="aggregator tokens"):
        head(torch.zeros(5, 128))
    with pytest.raises(ValueError, match="num_iterations"):
        head(torch.zeros(2, 10, 128), num_iterations=0)


def test_batched_matches_per_scene(tiny_encoder: VGGTEncoder) -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 3, 28, 42, generator=generator)
    camera_tokens = torch.randn(2, 3, 11, generator=generator)
    head = CameraHead(**model_config("tiny").camera_head.kwargs()).eval()
    with torch.no_grad():
        batched = tiny_encoder(images, camera_tokens, resize="none")
        tokens = tiny_encoder.aggregate(images, camera_tokens, resize="none")
        poses = head(tokens)
        for scene in range(2):
            single = tiny_encoder(images[scene], camera_tokens[scene], resize="none")
            torch.testing.assert_close(batched.tokens[scene], single.tokens, atol=1e-5, rtol=0)
            torch.testing.assert_close(poses[scene], head(tokens[scene]), atol=1e-5, rtol=0)
    assert batched.tokens.shape == (2, 3, 2 * 3, 64)
    assert batched.grid_hw == (2, 3)
    assert tokens.shape == (2, 3, 5 + 6, 128)
    assert poses.shape == (2, 3, 9)


def test_first_view_uses_its_own_token_slot(tiny_encoder: VGGTEncoder) -> None:
    """Swapping two views does not just swap their outputs: view 0 takes slot 0."""
    images = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    camera_tokens = torch.zeros(2, 11)
    with torch.no_grad():
        tiny_encoder.aggregator.camera_token[:, 1].add_(1.0)
        forward = tiny_encoder.aggregate(images, camera_tokens, resize="none")
        swapped = tiny_encoder.aggregate(images.flip(0), camera_tokens, resize="none")
    assert (forward - swapped.flip(0)).abs().max() > 0.1


def test_freeze_stops_aggregator_gradients(tiny_encoder: VGGTEncoder) -> None:
    tiny_encoder.freeze()
    images = torch.rand(2, 3, 28, 28)
    tiny_encoder(images, torch.randn(2, 11), resize="none").tokens.square().mean().backward()
    for name, param in tiny_encoder.named_parameters():
        trainable = not name.startswith("aggregator.")
        assert param.requires_grad is trainable, name
        assert (param.grad is not None) is trainable, name
    tiny_encoder.freeze(False)
    assert all(p.requires_grad for p in tiny_encoder.parameters())
    assert not any(
        p.requires_grad
        for p in VGGTEncoder(
            **replace(model_config("tiny").encoder, frozen=True).kwargs()
        ).aggregator.parameters()
    )


def test_gradient_checkpointing_matches(tiny_encoder: VGGTEncoder) -> None:
    tiny_encoder.train()
    images = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    camera_tokens = torch.randn(2, 11, generator=torch.Generator().manual_seed(4))
    grads = []
    for enabled in (False, True):
        tiny_encoder.zero_grad()
        tiny_encoder.set_gradient_checkpointing(enabled)
        tiny_encoder(images, camera_tokens, resize="none").tokens.square().mean().backward()
        grads.append(tiny_encoder.aggregator.frame_blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_rope_tables_are_reused_per_positions_tensor_and_never_stale():
    from gen_nvs.models.layers import RotaryEmbedding2D

    rope = RotaryEmbedding2D()
    x = torch.randn(1, 2, 6, 8)
    positions = torch.tensor([[[0, 0], [1, 1], [1, 2], [2, 1], [2, 2], [3, 0]]])
    first = rope(x, positions)
    tables = rope._cos_sin(positions, 8, x.dtype)
    assert torch.equal(rope(x, positions), first)
    assert all(a is b for a, b in zip(rope._cos_sin(positions, 8, x.dtype), tables, strict=True))
    moved = positions.flip(1)  # another tensor: new tables, the right rotation
    expected = RotaryEmbedding2D()(x, moved.clone())
    assert torch.equal(rope(x, moved), expected) and not torch.equal(expected, first)
    positions[0, 0, 0] = 5  # edited in place: its version changes, so do the tables
    assert torch.equal(rope(x, positions), RotaryEmbedding2D()(x, positions.clone()))
