"""Depth head: per-pixel depth and confidence of every view from the aggregator's patch
tokens (the geometry stage's 3D pretraining of the encoder, as VGGT's depth head).

VGGT decodes depth with a DPT head over several aggregator layers; this one is the
miniature of it: a per-patch linear unpatchify of the last aggregator tokens, with
VGGT's activations (depth = exp, conf = 1 + exp).

Dimension legend:
    b   scenes (batch)       s   views          p   patches per view (gh * gw)
    c   token width (2 x aggregator width: frame and global features concatenated)
    gh, gw  patch grid       ph, pw  pixel rows / columns of a patch (the patch size each)
    h, w    image height / width (the aggregator's resized size: gh * ph, gw * pw)
    ch  channels of a pixel (depth, confidence)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class DepthHead(nn.Module):
    """LayerNorm, Linear(c -> ph*pw*2) per patch token, pixel shuffle, then
    depth = exp(x) (> 0) and conf = 1 + exp(x) (> 1, as the aleatoric loss needs).

    Init: a small weight std (1e-3) and a zero bias start every pixel at depth 1 (one
    unit in front of its camera, where normalised scenes lie) with conf 2.
    """

    def __init__(self, *, dim: int, patch_size: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.linear = nn.Linear(dim, patch_size * patch_size * 2)
        nn.init.normal_(self.linear.weight, std=1e-3)
        nn.init.zeros_(self.linear.bias)

    def forward(
        self, tokens: Tensor, grid: tuple[int, int], image_hw: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """tokens [b, s, p, c] (the aggregator's patch tokens), grid (gh, gw) ->
        (depth [b, s, h, w], conf [b, s, h, w]) in float32 at `image_hw`.

        The head predicts at the aggregator's resolution (gh * ph, gw * pw); other image
        sizes get its outputs resized bilinearly (both stay positive).
        """
        gh, gw = grid
        if tokens.ndim != 4 or tokens.shape[2] != gh * gw:
            raise ValueError(
                f"expected patch tokens [b, s, {gh * gw}, c] for a {gh}x{gw} grid, "
                f"got {list(tokens.shape)}"
            )
        x = self.linear(self.norm(tokens)).float()  # (b, s, p, ph * pw * 2), activations in fp32
        patch = self.patch_size
        x = rearrange(
            x, "b s (gh gw) (ph pw ch) -> b s ch (gh ph) (gw pw)", gh=gh, ph=patch, pw=patch
        )
        out = torch.stack([torch.exp(x[:, :, 0]), 1 + torch.exp(x[:, :, 1])], dim=2)
        if tuple(out.shape[-2:]) != tuple(image_hw):
            b = out.shape[0]
            flat = rearrange(out, "b s ch h w -> (b s) ch h w")
            flat = F.interpolate(
                flat, size=tuple(image_hw), mode="bilinear", align_corners=False, antialias=True
            )
            out = rearrange(flat, "(b s) ch h w -> b s ch h w", b=b)
        return out[:, :, 0], out[:, :, 1]  # (b, s, h, w) each
