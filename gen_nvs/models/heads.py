"""Output heads of the renderer: per target patch token -> pixels of that patch.

Each head splits into `raw` (norm, linear: the pre-activation pixels) and its activation.
`raw` takes an optional `modulate` applied to the normed tokens: the diffusion decoder's
adaLN hook (`gen_nvs.models.diffusion`), which also reads the pre-activation pixels.

Dimension legend:
    bt  target views of all scenes, (b t) as one axis      c   channels (width)
    gh, gw  patch grid       ph, pw  pixel rows / columns of a patch (the patch size each)
    h, w    image height / width (gh * ph, gw * pw)
    ch  channels of a pixel (rgb, xyz, or an image VAE's latent channels)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
from einops import rearrange
from torch import Tensor, nn

OutputActivation = Literal["sigmoid", "none"]
OUTPUT_ACTIVATIONS: tuple[str, ...] = get_args(OutputActivation)


class RGBHead(nn.Module):
    """As published: bias-free LayerNorm, Linear(c -> ph*pw*3) without bias, sigmoid.

    Module names (`norm_final`, `linear`) are those of the official `final_layer`.
    `channels` and `activation` are the latent mode's options: an image VAE's latents
    (e.g. 16 channels) with no activation, as they are roughly zero-mean Gaussian; the
    defaults are the published RGB output.
    """

    def __init__(
        self,
        *,
        dim: int,
        patch_size: int,
        norm_eps: float = 1e-5,
        channels: int = 3,
        activation: OutputActivation = "sigmoid",
    ) -> None:
        super().__init__()
        if activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output activation must be one of {OUTPUT_ACTIVATIONS}, got {activation!r}"
            )
        self.patch_size = patch_size
        self.channels = channels
        self.activation = activation
        self.norm_final = nn.LayerNorm(dim, eps=norm_eps, bias=False)
        self.linear = nn.Linear(dim, patch_size * patch_size * channels, bias=False)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """tokens [bt, gh * gw, c], grid (gh, gw) -> [bt, ch, h, w]: rgb in [0, 1], or
        latents as the linear layer gives them (activation "none")."""
        return self.activate(self.raw(tokens, grid))

    def activate(self, raw: Tensor) -> Tensor:
        """Pre-activation output -> the head's output (sigmoid, or as it is)."""
        return torch.sigmoid(raw) if self.activation == "sigmoid" else raw

    def raw(
        self,
        tokens: Tensor,
        grid: tuple[int, int],
        modulate: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """tokens [bt, gh * gw, c], grid (gh, gw) -> pre-activation output [bt, ch, h, w]."""
        normed = self.norm_final(tokens)
        if modulate is not None:
            normed = modulate(normed)
        x = self.linear(normed)  # [bt, gh * gw, ph * pw * ch]
        return _unpatchify(x, grid, self.patch_size, "bt ch (gh ph) (gw pw)")


class PointHead(nn.Module):
    """Per pixel a 3D point in the scene frame (first source camera) and a confidence.

    Bias-free LayerNorm, Linear(c -> ph*pw*4) with bias, then VGGT's activations:
    points = sign(x) * expm1(|x|) (linear near 0, exponential far away, so near and far
    scene points get comparable relative precision) and conf = 1 + exp(x) (> 1, as the
    aleatoric loss needs).

    Init: a small weight std (1e-3) makes the initial output nearly constant, equal to the
    bias. The bias puts every point at (0, 0, 1), one unit in front of the first source
    camera, where normalised scenes (camera translations <= 1 / 1.35) lie, so that initial
    depths are positive for targets looking the way the sources do; conf starts at 2.
    """

    def __init__(self, *, dim: int, patch_size: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm = nn.LayerNorm(dim, eps=norm_eps, bias=False)
        self.linear = nn.Linear(dim, patch_size * patch_size * 4)
        nn.init.normal_(self.linear.weight, std=1e-3)
        bias = torch.zeros(patch_size * patch_size, 4)  # (ph pw) ch
        bias[:, 2] = math.log(2.0)  # expm1(log 2) = 1
        with torch.no_grad():
            self.linear.bias.copy_(bias.flatten())

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """tokens [bt, gh * gw, c], grid (gh, gw) -> (points [bt, h, w, 3], conf [bt, h, w])."""
        raw = self.raw(tokens, grid)
        return expand_points(raw[..., :3]), 1 + torch.exp(raw[..., 3])

    def raw(
        self,
        tokens: Tensor,
        grid: tuple[int, int],
        modulate: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """tokens [bt, gh * gw, c], grid (gh, gw) -> pre-activation [bt, h, w, 4] in float32
        (xyz, then confidence)."""
        normed = self.norm(tokens)
        if modulate is not None:
            normed = modulate(normed)
        x = self.linear(normed).float()  # activations in float32
        return _unpatchify(x, grid, self.patch_size, "bt (gh ph) (gw pw) ch")


def _unpatchify(x: Tensor, grid: tuple[int, int], patch_size: int, layout: str) -> Tensor:
    """Per-patch pixels x [bt, gh * gw, ph * pw * ch] -> the image in `layout` (an einops
    pattern over bt, gh, gw, ph, pw, ch)."""
    gh, gw = grid
    return rearrange(
        x, f"bt (gh gw) (ph pw ch) -> {layout}", gh=gh, gw=gw, ph=patch_size, pw=patch_size
    )


def expand_points(x: Tensor) -> Tensor:
    """The point activation sign(x) * expm1(|x|), any shape."""
    return torch.sign(x) * torch.expm1(x.abs())


def compress_points(points: Tensor) -> Tensor:
    """Inverse of `expand_points`: sign(p) * log1p(|p|), any shape."""
    return torch.sign(points) * torch.log1p(points.abs())
