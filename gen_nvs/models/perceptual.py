"""LPIPS with the VGG16 trunk, loaded without network access: metric and training loss.

The `lpips` package ships only its small linear heads; `lpips.LPIPS(net="vgg")` would
download torchvision's ImageNet VGG16 for the trunk. Here the trunk is built untrained
and its weights are read from a local file instead (`find_vgg16_weights`): torchvision's
`vgg16` state dict, as `.pth` or `.safetensors`, found in this order:

1. the `vgg_weights` argument (a path, or `hf://org/repo/file`);
2. the environment variable `GEN_NVS_VGG16_WEIGHTS`;
3. torch hub's cache, `<torch hub dir>/checkpoints/vgg16-397923af.pth`, where torchvision
   keeps the file once it has downloaded it.

Dimension legend: `b` images, `h`/`w` image height/width, `...` any leading dimensions.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lpips as lpips_package
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from gen_nvs.models.checkpoint import HF_PREFIX, check_layout, resolve_path

VGG16_WEIGHTS_ENV = "GEN_NVS_VGG16_WEIGHTS"
VGG16_HUB_FILE = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/" + VGG16_HUB_FILE

# torchvision vgg16 `features` convolutions: index -> (out channels, in channels).
_VGG16_CONVS = {
    0: (64, 3),
    2: (64, 64),
    5: (128, 64),
    7: (128, 128),
    10: (256, 128),
    12: (256, 256),
    14: (256, 256),
    17: (512, 256),
    19: (512, 512),
    21: (512, 512),
    24: (512, 512),
    26: (512, 512),
    28: (512, 512),
}
# lpips' vgg16 splits `features` into slices at these layer indices (relu1_2 ... relu5_3).
_SLICE_STARTS = (0, 4, 9, 16, 23)


def vgg16_trunk_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the `features.*` part of torchvision's vgg16 state dict."""
    layout: dict[str, tuple[int, ...]] = {}
    for index, (out_ch, in_ch) in _VGG16_CONVS.items():
        layout[f"features.{index}.weight"] = (out_ch, in_ch, 3, 3)
        layout[f"features.{index}.bias"] = (out_ch,)
    return layout


def _hub_file() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_HUB_FILE


def find_vgg16_weights(vgg_weights: str | Path | None = None) -> Path:
    """The local file holding the VGG16 trunk weights (see the module docstring).

    A path given as argument or through the environment variable must exist; only when
    neither is given is the torch hub cache consulted. Raises FileNotFoundError saying
    what is needed when no file is found.
    """
    if vgg_weights is not None:
        return _existing(vgg_weights, "vgg_weights")
    from_env = os.environ.get(VGG16_WEIGHTS_ENV)
    if from_env:
        return _existing(from_env, f"${VGG16_WEIGHTS_ENV}")
    cached = _hub_file()
    if cached.is_file():
        return cached
    raise FileNotFoundError(
        "LPIPS needs the ImageNet VGG16 weights of torchvision "
        f"({VGG16_HUB_FILE}, {VGG16_URL}), and none were found. Provide them by (1) passing "
        f"the file (--lpips-weights / vgg_weights=, a local .pth or .safetensors or "
        f"hf://org/repo/file), (2) setting ${VGG16_WEIGHTS_ENV} to it, or (3) placing it "
        f"at {cached}"
    )


def _existing(path: str | Path, what: str) -> Path:
    try:
        file = resolve_path(path)
    except FileNotFoundError as err:
        if str(path).startswith(HF_PREFIX):
            raise
        raise FileNotFoundError(f"VGG16 weights given by {what} not found: {path}") from err
    if not file.is_file():
        raise FileNotFoundError(f"VGG16 weights given by {what} are not a file: {file}")
    return file


def load_vgg16_trunk(path: str | Path) -> dict[str, Tensor]:
    """The checked `features.*` tensors (float32) of a torchvision vgg16 state dict file.

    `classifier.*` entries are allowed and dropped; anything else (another network, a
    batch-norm VGG) raises ValueError listing the differences.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: cannot read VGG16 weights ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (torchvision vgg16)")
    trunk = {key: value for key, value in state.items() if not key.startswith("classifier.")}
    check_layout(
        {key: tuple(value.shape) for key, value in trunk.items()},
        vgg16_trunk_layout(),
        f"{path}: VGG16 trunk (torchvision vgg16 state dict expected)",
    )
    return {key: value.float() for key, value in trunk.items()}


def _lpips_trunk_key(key: str) -> str:
    """`features.{i}.weight` -> lpips' `net.slice{j}.{i}.weight`."""
    _, index, name = key.split(".")
    slice_number = sum(int(index) >= start for start in _SLICE_STARTS)
    return f"net.slice{slice_number}.{index}.{name}"


def load_lpips(
    vgg_weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> lpips_package.LPIPS:
    """LPIPS (VGG, v0.1), frozen and in eval mode, without any download.

    The linear heads come with the `lpips` package; the trunk from
    `find_vgg16_weights(vgg_weights)` (FileNotFoundError when there is none).
    """
    trunk = load_vgg16_trunk(find_vgg16_weights(vgg_weights))
    with warnings.catch_warnings():
        # torchvision deprecates the `pretrained=` argument lpips passes to it.
        warnings.simplefilter("ignore", UserWarning)
        net = lpips_package.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    net.load_state_dict(
        {_lpips_trunk_key(key): value for key, value in trunk.items()}, strict=False
    )
    net.requires_grad_(False)
    return net.to(device).eval()


def lpips_distance(
    net: lpips_package.LPIPS, pred: Tensor, target: Tensor, *, spatial: bool = False
) -> Tensor:
    """LPIPS between images in [0, 1], as `net(pred, target, normalize=True)` computes it.

    pred, target [b, 3, h, w] -> [b], or with `spatial` the per-pixel map [b, h, w] (each
    layer's distance map upsampled bilinearly to h x w and summed, lpips' `spatial=True`).
    """
    scaled = [net.scaling_layer(2 * x - 1) for x in (pred, target)]
    features_pred, features_target = net.net(scaled[0]), net.net(scaled[1])
    total = 0
    for layer, pair in enumerate(zip(features_pred, features_target, strict=True)):
        normed_pred, normed_target = (lpips_package.normalize_tensor(f) for f in pair)
        distance = net.lins[layer]((normed_pred - normed_target) ** 2)  # (b, 1, h_l, w_l)
        if spatial:
            distance = F.interpolate(distance, size=pred.shape[-2:], mode="bilinear")
        else:
            distance = distance.mean((2, 3), keepdim=True)
        total = total + distance
    return total[:, 0] if spatial else total[:, 0, 0, 0]


class PerceptualLoss(nn.Module):
    """LPIPS (VGG) as a training loss on images in [0, 1]; the network stays frozen and
    in eval mode (dropout off) whatever mode its parent module is in.

    `loss(pred, target)` with pred, target [..., 3, h, w] is the mean LPIPS over images.
    With `mask` [..., h, w] (bool) only the masked pixels count: the prediction outside
    the mask is replaced by the target (so differences there cannot reach the masked
    pixels through the trunk's receptive fields) and the LPIPS map is averaged over the
    masked pixels of all images (0 when the mask is empty).

    The trunk runs in float32 with autocast disabled; the loss keeps pred's graph.
    """

    def __init__(
        self, vgg_weights: str | Path | None = None, *, net: lpips_package.LPIPS | None = None
    ) -> None:
        super().__init__()
        self.net = net if net is not None else load_lpips(vgg_weights)
        self.net.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        if pred.shape != target.shape or pred.ndim < 3 or pred.shape[-3] != 3:
            raise ValueError(
                f"pred and target must both be [..., 3, h, w], got {list(pred.shape)} and "
                f"{list(target.shape)}"
            )
        leading, hw = pred.shape[:-3], pred.shape[-2:]
        pred = pred.reshape(-1, 3, *hw).float()
        target = target.reshape(-1, 3, *hw).float().detach()
        with torch.autocast(pred.device.type, enabled=False):
            if mask is None:
                return lpips_distance(self.net, pred, target).mean()
            if mask.shape[-2:] != hw:
                raise ValueError(f"mask must be [..., {hw[0]}, {hw[1]}], got {list(mask.shape)}")
            mask = mask.bool().expand(*leading, *hw).reshape(-1, *hw)
            composite = torch.where(mask[:, None], pred, target)
            distance = lpips_distance(self.net, composite, target, spatial=True)  # (b, h, w)
            return (distance * mask).sum() / mask.sum().clamp(min=1)
