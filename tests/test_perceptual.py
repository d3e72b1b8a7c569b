"""LPIPS without downloads: finding and checking the VGG16 weights, the loss.

The "weights" are a randomly initialised VGG16 trunk written to disk, so every code path
(file lookup, key mapping, loading) is the real one.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from gen_nvs.models import perceptual
from gen_nvs.models.perceptual import (
    VGG16_HUB_FILE,
    VGG16_WEIGHTS_ENV,
    PerceptualLoss,
    find_vgg16_weights,
    load_lpips,
    load_vgg16_trunk,
    lpips_distance,
)


def _random_trunk(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-layout VGG16 trunk, He-initialised (features keep their scale)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in perceptual.vgg16_trunk_layout().items():
        if key.endswith("weight"):
            fan_in = shape[1] * 9
            state[key] = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
        else:
            state[key] = torch.zeros(shape)
    return {k: v.half() for k, v in state.items()}  # half the bytes on disk


@pytest.fixture(autouse=True)
def no_weights_anywhere(monkeypatch, tmp_path):
    """No environment variable and an empty torch hub: only explicit weights exist."""
    monkeypatch.delenv(VGG16_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def trunk_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    save_file(_random_trunk(), str(path))
    return path


@pytest.fixture(scope="module")
def loss(trunk_file):
    return PerceptualLoss(trunk_file)


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------
# Finding and checking the weights
# --------------------------------------------------------------------------------------


def test_missing_weights_say_what_is_needed_and_how_to_provide_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        find_vgg16_weights()
    message = str(err.value)
    hub_file = tmp_path / "torch_home" / "hub" / "checkpoints" / VGG16_HUB_FILE
    for needed in (VGG16_HUB_FILE, VGG16_WEIGHTS_ENV, "--lpips-weights", str(hub_file)):
        assert needed in message
    with pytest.raises(FileNotFoundError, match=VGG16_HUB_FILE):
        load_lpips()


def test_weights_are_looked_up_in_order(tmp_path, monkeypatch):
    hub_file = tmp_path / "torch_home" / "hub" / "checkpoints" / VGG16_HUB_FILE
    hub_file.parent.mkdir(parents=True)
    hub_file.touch()
    assert find_vgg16_weights() == hub_file
    from_env = tmp_path / "env.pth"
    from_env.touch()
    monkeypatch.setenv(VGG16_WEIGHTS_ENV, str(from_env))
    assert find_vgg16_weights() == from_env
    given = tmp_path / "given.safetensors"
    given.touch()
    assert find_vgg16_weights(given) == given


def test_a_named_file_that_does_not_exist_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    hub_file = tmp_path / "torch_home" / "hub" / "checkpoints" / VGG16_HUB_FILE
    hub_file.parent.mkdir(parents=True)
    hub_file.touch()
    with pytest.raises(FileNotFoundError, match="vgg_weights not found"):
        find_vgg16_weights(tmp_path / "nope.pth")
    monkeypatch.setenv(VGG16_WEIGHTS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match=VGG16_WEIGHTS_ENV):
        find_vgg16_weights()


def test_torchvision_pth_with_classifier_loads_and_wrong_layouts_are_named(tmp_path):
    trunk = _random_trunk(seed=1)
    good = tmp_path / "vgg16.pth"
    torch.save({**trunk, "classifier.6.bias": torch.zeros(1000)}, good)
    loaded = load_vgg16_trunk(good)
    assert set(loaded) == set(trunk) and all(v.dtype == torch.float32 for v in loaded.values())
    torch.testing.assert_close(loaded["features.28.weight"], trunk["features.28.weight"].float())

    missing = {k: v for k, v in trunk.items() if k != "features.5.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing \(1\): features\.5\.weight"):
        load_vgg16_trunk(tmp_path / "missing.pth")
    batch_norm = {**trunk, "features.1.running_mean": torch.zeros(64)}
    torch.save(batch_norm, tmp_path / "bn.pth")
    with pytest.raises(ValueError, match="unexpected.*features.1.running_mean"):
        load_vgg16_trunk(tmp_path / "bn.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read VGG16 weights"):
        load_vgg16_trunk(tmp_path / "junk.pth")


def test_load_lpips_puts_the_trunk_in_place_and_freezes_everything(loss, trunk_file):
    net = loss.net
    expected = _random_trunk()
    torch.testing.assert_close(
        getattr(net.net.slice1, "0").weight, expected["features.0.weight"].float()
    )
    torch.testing.assert_close(
        getattr(net.net.slice5, "28").weight, expected["features.28.weight"].float()
    )
    assert not any(p.requires_grad for p in net.parameters())
    assert not net.training


# --------------------------------------------------------------------------------------
# The distance and the loss
# --------------------------------------------------------------------------------------


def test_distance_matches_the_package_forward(loss):
    pred, target = _images(2, 3, 32, 32), _images(2, 3, 32, 32, seed=1)
    with torch.no_grad():
        expected = loss.net(pred, target, normalize=True).flatten()
        torch.testing.assert_close(lpips_distance(loss.net, pred, target), expected)
        spatial = lpips_distance(loss.net, pred, target, spatial=True)
    assert spatial.shape == (2, 32, 32) and (spatial >= 0).all()


def test_loss_is_zero_for_identical_and_positive_for_different_images(loss):
    target = _images(2, 2, 3, 32, 32)
    assert loss(target, target).item() == 0.0
    pred = _images(2, 2, 3, 32, 32, seed=1).requires_grad_()
    value = loss(pred, target)
    assert value.item() > 0
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_masked_loss_only_looks_inside_the_mask(loss):
    target, pred = _images(2, 3, 32, 32), _images(2, 3, 32, 32, seed=1)
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 8:24, 8:20] = True
    elsewhere = torch.where(mask[:, None], pred, _images(2, 3, 32, 32, seed=2))
    with torch.no_grad():
        assert loss(pred, target, mask).item() > 0
        torch.testing.assert_close(loss(pred, target, mask), loss(elsewhere, target, mask))
        inside_right = torch.where(mask[:, None], target, pred)
        assert loss(inside_right, target, mask).item() == 0.0
        assert loss(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_loss_stays_in_eval_mode(loss):
    loss.train()
    assert loss.training and not loss.net.training
    assert not any(m.training for m in loss.net.modules())
    loss.eval()
