"""Output heads of the renderer: per target patch token -> pixels of that patch.

Dimension legend:
    n   target views (any batch, flattened)     c   channels (width)
    gh, gw  patch grid                           q   patch size (q1, q2: rows, columns)
    h, w    image height / width (gh * q, gw * q)    k   channels of a pixel (rgb, xyz)
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from gen_nvs.geometry.cameras import world_to_camera


class RGBHead(nn.Module):
    """As published: bias-free LayerNorm, Linear(c -> q*q*3) without bias, sigmoid.

    Module names (`norm_final`, `linear`) are those of the official `final_layer`.
    """

    def __init__(self, *, dim: int, patch_size: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm_final = nn.LayerNorm(dim, eps=norm_eps, bias=False)
        self.linear = nn.Linear(dim, patch_size * patch_size * 3, bias=False)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """tokens [n, gh * gw, c], grid (gh, gw) -> rgb [n, 3, h, w] in [0, 1]."""
        x = torch.sigmoid(self.linear(self.norm_final(tokens)))  # [n, gh * gw, q * q * 3]
        q = self.patch_size
        return rearrange(
            x, "n (gh gw) (q1 q2 k) -> n k (gh q1) (gw q2)", gh=grid[0], gw=grid[1], q1=q, q2=q
        )


class PointHead(nn.Module):
    """Per pixel a 3D point in the scene frame (first source camera) and a confidence.

    Bias-free LayerNorm, Linear(c -> q*q*4) with bias, then VGGT's activations:
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
        bias = torch.zeros(patch_size * patch_size, 4)  # (q1 q2) k
        bias[:, 2] = math.log(2.0)  # expm1(log 2) = 1
        with torch.no_grad():
            self.linear.bias.copy_(bias.flatten())

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """tokens [n, gh * gw, c], grid (gh, gw) -> (points [n, h, w, 3], conf [n, h, w])."""
        x = self.linear(self.norm(tokens)).float()  # activations in float32
        q = self.patch_size
        x = rearrange(
            x, "n (gh gw) (q1 q2 k) -> n (gh q1) (gw q2) k", gh=grid[0], gw=grid[1], q1=q, q2=q
        )
        xyz, raw_conf = x[..., :3], x[..., 3]
        return torch.sign(xyz) * torch.expm1(xyz.abs()), 1 + torch.exp(raw_conf)


def points_to_depth(points: Tensor, c2w: Tensor) -> Tensor:
    """Scene-frame points [..., h, w, 3] seen from cameras c2w [..., 4, 4] -> depth [..., h, w].

    Depth is z in the camera frame (along the optical axis); <= 0 means behind the camera.
    """
    if points.shape[-1] != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(
            f"points must be [..., h, w, 3] and c2w [..., 4, 4], got {list(points.shape)} "
            f"and {list(c2w.shape)}"
        )
    if points.shape[:-3] != c2w.shape[:-2]:
        raise ValueError(
            f"points are for views {list(points.shape[:-3])} but c2w for {list(c2w.shape[:-2])}"
        )
    h, w = points.shape[-3:-1]
    flat = rearrange(points, "... h w k -> ... (h w) k")
    depth = world_to_camera(flat, c2w.to(points.dtype))[..., 2]
    return rearrange(depth, "... (h w) -> ... h w", h=h, w=w)
