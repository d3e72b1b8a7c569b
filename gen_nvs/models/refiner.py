"""Warp refiner: the decoder's render corrected by the source pixels its geometry points at.

An option for small models trained from scratch (the embedded default model), off in
every preset. The highway decoder renders patch tokens, so a small, briefly trained one
paints each 8x8 patch near its mean (on held-out procedural scenes its copy of a source
view scores 21 dB, the truth's own 8x8 patch means 20 dB). The refiner gives the
render back the pixels: every target pixel's surface point (the decoder's point head)
is projected into the sources (`gen_nvs.geometry.warp.backward_warp`, visibility by the
sources' own rendered depth), and a small convolutional network takes

    the render (3) | the mean colour of the sources that see the point (3) | the share of
    sources that see it (1) | the mean colour of the sources it falls inside (3) | the
    share of sources it falls inside (1) | with the `residuals` option also: the
    smallest depth residual over the sources (1) and that source's colour (3)

to a correction of the render (its last layer starts at zero: a new refiner returns the
render unchanged). Where the geometry is right the sources' own pixels come through
sharp; where it is wrong or no source saw the point, the network falls back to the
render. With the true depth, the plain warp alone scores 24 dB on those scenes where
the decoder scores 18 (`python -m gen_nvs.eval.oracles`; the default model's card, "The
warp refiner").

Dimension legend:
    b   scenes    s   source views    t   target views    h, w   target image size
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gen_nvs.geometry.warp import WarpedSources

INPUT_CHANNELS = 11
RESIDUAL_CHANNELS = 4  # the `residuals` option's


class WarpRefiner(nn.Module):
    """Render + warped sources -> refined render (see the module docstring).

    width: channels of the hidden convolutions; depth: 3x3 convolutions in all (>= 2), the
    middle ones alternately dilated 1 and 2; rel_tol: the warp's relative depth tolerance
    between the target's and the sources' predicted depths (which disagree by far more
    than measured depths do); residuals: also read how well each source's depth confirms
    the point (`WarpedSources.residual`): the smallest residual and that source's colour.
    """

    def __init__(
        self, *, width: int = 32, depth: int = 6, rel_tol: float = 0.5, residuals: bool = False
    ) -> None:
        super().__init__()
        if width < 1 or depth < 2:
            raise ValueError(
                f"model.refiner needs width >= 1 and depth >= 2, got {width} and {depth}"
            )
        if not rel_tol >= 0:
            raise ValueError(f"model.refiner rel_tol must be >= 0, got {rel_tol}")
        self.rel_tol = rel_tol
        self.residuals = residuals
        channels = INPUT_CHANNELS + (RESIDUAL_CHANNELS if residuals else 0)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1)]
        for i in range(depth - 2):
            dilation = 1 + i % 2
            layers += [nn.GELU(), nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)]
        layers += [nn.GELU(), nn.Conv2d(width, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, rgb: Tensor, warped: WarpedSources) -> Tensor:
        """rgb [b, t, 3, h, w] (the decoder's render) and the warp of the sources into those
        targets -> refined rgb [b, t, 3, h, w], clamped to [0, 1] (so a pixel whose
        correction overshoots gets no gradient until it comes back into range)."""
        b = rgb.shape[0]
        features = warp_features(rgb, warped, self.residuals)
        features = rearrange(features, "b t ch h w -> (b t) ch h w")
        correction = self.net(features.to(self.net[0].weight.dtype))
        out = rgb + rearrange(correction, "(b t) ch h w -> b t ch h w", b=b).to(rgb.dtype)
        return out.clamp(0, 1)


def warp_features(rgb: Tensor, warped: WarpedSources, residuals: bool = False) -> Tensor:
    """The refiner's input [b, t, 11 (15 with `residuals`), h, w] (see the module
    docstring)."""
    colors = warped.colors.to(rgb.dtype)
    features = [rgb]
    for mask in (warped.visible, warped.inside):
        features += [mean_color(colors, mask), mask.to(rgb.dtype).mean(2, keepdim=True)]
    if residuals:
        best, index = warped.residual.to(rgb.dtype).min(dim=2, keepdim=True)  # (b, t, 1, h, w)
        index = index.unsqueeze(3).expand(-1, -1, -1, 3, -1, -1)  # (b, t, 1, 3, h, w)
        features += [best, colors.gather(2, index).squeeze(2)]
    return torch.cat(features, dim=2)


def mean_color(colors: Tensor, mask: Tensor) -> Tensor:
    """The mean over the sources of colors [b, t, s, 3, h, w] where mask [b, t, s, h, w]
    (0 where no source is in it) -> [b, t, 3, h, w]."""
    weight = mask.to(colors.dtype).unsqueeze(3)
    return (colors * weight).sum(2) / weight.sum(2).clamp_min(1)


def resize_views(images: Tensor, hw: tuple[int, int]) -> Tensor:
    """[b, v, ch, h', w'] -> [b, v, ch, h, w] (bilinear, antialiased when shrinking)."""
    if tuple(images.shape[-2:]) == tuple(hw):
        return images
    b = images.shape[0]
    flat = rearrange(images, "b v ch h w -> (b v) ch h w")
    flat = F.interpolate(flat, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return rearrange(flat, "(b v) ch h w -> b v ch h w", b=b)
