"""LagerNVS "highway" renderer: source tokens + target Pluecker rays -> target views.

Each target view is rendered on its own (a batch entry of its own): targets never see
each other. A target's token sequence is `[registers, ray patches]`; how it meets the
sources is the variant's, one class each (`DecoderVariant`): `full_attention`,
`cross_attention` and `bidirectional_cross_attention` match the published arithmetic
(the golden fixtures in tests/data/reference match it to below 1e-6); `causal` is RnG's
reconstruction-guided causal attention in the `full_attention` block layout.

The blocks and heads take optional adaLN modulations of their target sub-layers (see
`Modulation`), which the diffusion decoder (`gen_nvs.models.diffusion`) computes from
the timestep; without them every computation is the plain renderer's.

Dimension legend:
    b   scenes (batch)               t   target views per scene
    s   source views                 p   tokens per source view
    m   source tokens of a scene (s * p)
    n   tokens of a target sequence (r registers + gh * gw patches)
    g   target sequences sharing one scene's source keys/values
    c   channels (width)             nh  attention heads     d   channels per head
    h, w    image height / width (of the latent grid in the latent mode)
    gh, gw  patch grid (h / patch, w / patch)                r   register tokens
    ch  pixel channels (6 rays, 3 rgb or an image VAE's latent channels, 3 xyz)
    bt  (b t) as one axis, where b and t are not known apart
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import ClassVar, Literal, TypeVar, get_args

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gen_nvs.models.heads import OUTPUT_ACTIVATIONS, OutputActivation, PointHead, RGBHead
from gen_nvs.models.layers import (
    RAY_CHANNELS,
    Attention,
    KeyValue,
    Mlp,
    fourier_channels,
    fourier_features,
)

Variant = Literal["full_attention", "cross_attention", "bidirectional_cross_attention", "causal"]
VARIANTS: tuple[str, ...] = get_args(Variant)  # the names of `VARIANT_CLASSES`
T = TypeVar("T")

# --------------------------------------------------------------------------------------
# Building blocks (all bias-free, as published)
# --------------------------------------------------------------------------------------


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: normed tokens x [(b t), n, c] -> x * (1 + scale) + shift, with shift and
    scale [(b t), 1, c]."""
    return x * (1 + scale) + shift


@dataclass(frozen=True)
class Modulation:
    """adaLN modulation (DiT) of one pre-norm sub-layer, for the target tokens only.

    shift, scale, gate: [(b t), 1, c], one per target sequence. The sub-layer's normed input
    becomes `modulate(normed, shift, scale)` and its residual branch y becomes `y * (1 + gate)`:
    the gate is centred on 1, not 0 as in DiT, so all-zero modulation leaves a pretrained
    sub-layer exactly as it was instead of switching it off. Tokens before `start` (the
    sources in a joint `[sources, target]` sequence) are never modulated.
    """

    shift: Tensor
    scale: Tensor
    gate: Tensor
    start: int = 0

    def norm(self, normed: Tensor) -> Tensor:
        """The sub-layer's normed input [(b t), n, c] -> modulated [(b t), n, c]."""
        return self._targets(normed, lambda target: modulate(target, self.shift, self.scale))

    def branch(self, y: Tensor) -> Tensor:
        """The sub-layer's residual branch y [(b t), n, c] -> gated [(b t), n, c]."""
        return self._targets(y, lambda target: target * (1 + self.gate))

    def _targets(self, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        if self.start == 0:
            return fn(x)
        return torch.cat([x[:, : self.start], fn(x[:, self.start :])], dim=1)


BlockModulation = tuple[Modulation, ...]
"""One Modulation per target sub-layer of a block, in order (`MODULATED_SUBLAYERS`)."""


def _modulated(normed: Tensor, mod: Modulation | None) -> Tensor:
    return normed if mod is None else mod.norm(normed)


def _gated(y: Tensor, mod: Modulation | None) -> Tensor:
    return y if mod is None else mod.branch(y)


def _layer_norm(dim: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=eps, bias=False)


@dataclass(frozen=True)
class BlockSize:
    """The sizes shared by every block of a decoder; builds their layers."""

    dim: int
    num_heads: int
    mlp_hidden: int
    norm_eps: float
    qk_norm_eps: float

    def attention(self) -> Attention:
        return Attention(
            self.dim,
            num_heads=self.num_heads,
            fused_qkv=False,
            qkv_bias=False,
            proj_bias=False,
            qk_norm="rms",
            norm_eps=self.qk_norm_eps,
        )

    def mlp(self) -> Mlp:
        return Mlp(self.dim, hidden_dim=self.mlp_hidden, bias=False)

    def norm(self) -> nn.LayerNorm:
        return _layer_norm(self.dim, self.norm_eps)


class SelfAttentionBlock(nn.Module):
    """Pre-norm self-attention + MLP (`full_attention` and `causal`)."""

    MODULATED_SUBLAYERS = 2  # attention (norm1), MLP (norm2)

    def __init__(self, size: BlockSize) -> None:
        super().__init__()
        self.norm1 = size.norm()
        self.attn = size.attention()
        self.norm2 = size.norm()
        self.mlp = size.mlp()

    def keys_values(self, x: Tensor) -> KeyValue:
        """This block's keys/values of the tokens x [b, n, c]: each [b, nh, n, d]."""
        return self.attn.keys_values(self.norm1(x))

    def forward(
        self,
        x: Tensor,
        prefix_kv: KeyValue | None = None,
        mods: BlockModulation | None = None,
        bias: Tensor | None = None,
    ) -> Tensor:
        """x [(b g), n, c] -> [(b g), n, c].

        With `prefix_kv` (keys/values [b, nh, m, d] of tokens that precede x and do not
        see it, shared by the g sequences of a scene) x attends to `[prefix, x]`.
        `mods`: adaLN modulation of the attention and MLP sub-layers. `bias`
        [(b g), nh, n, m]: logit bias of x's queries against the prefix (`ray_bias`).
        """
        return self._step(x, prefix_kv, mods, bias)[0]

    def forward_with_kv(self, x: Tensor) -> tuple[Tensor, KeyValue]:
        """x [b, n, c] -> (x after the block, this block's keys/values of x [b, nh, n, d])."""
        return self._step(x, None, None)

    def _step(
        self,
        x: Tensor,
        prefix_kv: KeyValue | None,
        mods: BlockModulation | None,
        bias: Tensor | None = None,
    ) -> tuple[Tensor, KeyValue]:
        attn_mod, mlp_mod = (None, None) if mods is None else mods
        normed = _modulated(self.norm1(x), attn_mod)
        q, own_kv = self.attn.queries(normed), self.attn.keys_values(normed)
        out = self.attn.attend(q, *own_kv, bias=bias, prefix_kv=prefix_kv)
        x = x + _gated(out, attn_mod)
        return x + _gated(self.mlp(_modulated(self.norm2(x), mlp_mod)), mlp_mod), own_kv


class CrossAttentionBlock(nn.Module):
    """Target self-attention, target-to-source cross-attention, MLP (all pre-norm)."""

    MODULATED_SUBLAYERS = 3  # self-attention (norm1), cross-attention (norm2), MLP (norm_ffn)

    def __init__(self, size: BlockSize) -> None:
        super().__init__()
        self.norm1 = size.norm()
        self.self_attn = size.attention()
        self.norm2 = size.norm()
        self.norm2_kv = size.norm()
        self.cross_attn = size.attention()
        self.norm_ffn = size.norm()
        self.mlp = size.mlp()

    def source_kv(self, sources: Tensor) -> KeyValue:
        """Source tokens [b, m, c] -> this block's cross-attention keys/values [b, nh, m, d]."""
        return self.cross_attn.keys_values(self.norm2_kv(sources))

    def forward(
        self,
        x: Tensor,
        source_kv: KeyValue,
        mods: BlockModulation | None = None,
        bias: Tensor | None = None,
    ) -> Tensor:
        """x [(b g), n, c] with keys/values [b, nh, m, d] shared by g targets -> [(b g), n, c].

        `mods`: adaLN modulation of the three target sub-layers (the sources' norm2_kv
        is never modulated, so `source_kv` does not depend on it). `bias`
        [(b g), nh, n, m]: logit bias of the cross-attention (`ray_bias`).
        """
        self_mod, cross_mod, mlp_mod = (None, None, None) if mods is None else mods
        x = x + _gated(self.self_attn(_modulated(self.norm1(x), self_mod)), self_mod)
        q = self.cross_attn.queries(_modulated(self.norm2(x), cross_mod))
        x = x + _gated(self.cross_attn.attend(q, *source_kv, bias=bias), cross_mod)
        return x + _gated(self.mlp(_modulated(self.norm_ffn(x), mlp_mod)), mlp_mod)


class BidirectionalBlock(nn.Module):
    """Target self-attention, then target <-> source cross-attention from the same inputs.

    `_x` modules belong to the target stream, `_rec` modules to the source stream.
    """

    MODULATED_SUBLAYERS = 3  # target self-attention, cross-attention, MLP (norm1/2/3_x)

    def __init__(self, size: BlockSize) -> None:
        super().__init__()
        self.norm1_x = size.norm()
        self.self_attn = size.attention()
        self.norm2_x = size.norm()
        self.cross_attn_x = size.attention()
        self.norm3_x = size.norm()
        self.mlp_x = size.mlp()
        self.norm1_rec = size.norm()
        self.cross_attn_rec = size.attention()
        self.norm2_rec = size.norm()
        self.mlp_rec = size.mlp()

    def forward(
        self, x: Tensor, sources: Tensor, mods: BlockModulation | None = None
    ) -> tuple[Tensor, Tensor]:
        """x [(b t), n, c], sources [(b t), m, c] (one copy per target) -> updated (x,
        sources).

        `mods`: adaLN modulation of the three target sub-layers; the source stream's own
        norms are not modulated, but the sources attend to the modulated target tokens.
        """
        self_mod, cross_mod, mlp_mod = (None, None, None) if mods is None else mods
        x = x + _gated(self.self_attn(_modulated(self.norm1_x(x), self_mod)), self_mod)
        normed_x, normed_s = _modulated(self.norm2_x(x), cross_mod), self.norm1_rec(sources)
        x = x + _gated(self.cross_attn_x(normed_x, normed_s), cross_mod)
        sources = sources + self.cross_attn_rec(normed_s, normed_x)
        x = x + _gated(self.mlp_x(_modulated(self.norm3_x(x), mlp_mod)), mlp_mod)
        sources = sources + self.mlp_rec(self.norm2_rec(sources))
        return x, sources


class RendererCore(nn.Module):
    """Holds the blocks under the published name `renderer_blocks`."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.renderer_blocks = nn.ModuleList(blocks)


class PatchEmbed(nn.Module):
    """Pluecker ray maps [(b t), 6, h, w] -> patch tokens [(b t), gh * gw, c] (bias-free
    conv).

    With `ray_frequencies` F > 0 (an option for small models trained from scratch; 0 as
    published) the conv sees the rays' Fourier features (`fourier_features`), 6 (1 + 2F)
    channels.
    """

    def __init__(self, *, dim: int, patch_size: int, ray_frequencies: int = 0) -> None:
        super().__init__()
        self.ray_frequencies = ray_frequencies
        channels = fourier_channels(RAY_CHANNELS, ray_frequencies)
        self.proj = nn.Conv2d(channels, dim, patch_size, stride=patch_size, bias=False)

    def forward(self, rays: Tensor) -> Tensor:
        rays = fourier_features(rays, self.ray_frequencies, dim=1)
        return rearrange(self.proj(rays), "bt c gh gw -> bt (gh gw) c")


def patch_rays(rays: Tensor, grid: tuple[int, int]) -> Tensor:
    """Pluecker ray maps [..., 6, h, w] (channels [o x d, d]) -> one ray per cell of a grid
    (gh, gw) [..., gh * gw, 6]: the cell's mean ray, scaled to a unit direction (the
    moment with it, so rays from one camera centre o keep moment = o x direction)."""
    lead = rays.shape[:-3]
    pooled = F.adaptive_avg_pool2d(rays.reshape(-1, *rays.shape[-3:]), grid)
    pooled = pooled / pooled[:, 3:].norm(dim=1, keepdim=True).clamp_min(1e-6)
    return rearrange(pooled, "flat ch gh gw -> flat (gh gw) ch").reshape(*lead, -1, RAY_CHANNELS)


class RayBias(nn.Module):
    """Attention-logit bias from ray geometry: the `ray_bias` option, for small models
    trained from scratch (no published model has it).

    A target patch querying a source token gets `-beta * |r_t - r_s|^2` added to its
    logit, r the patches' mean Pluecker rays (`patch_rays`), beta one per block and head,
    learned in log space. Its initial values are log-spaced from BETA_RANGE[0] (sharp:
    the source patch with the same ray, what re-rendering a source view needs, or a
    nearly parallel one) to BETA_RANGE[1] (broad: a neighbourhood) across the heads.
    Register tokens and a target's own tokens get no bias.
    """

    BETA_RANGE = (256.0, 4.0)  # patch-to-neighbour |dr|^2 is about 0.015 at 64 px, patch 8

    def __init__(self, *, depth: int, num_heads: int, num_registers: int) -> None:
        super().__init__()
        sharp, broad = (math.log(beta) for beta in self.BETA_RANGE)
        self.log_beta = nn.Parameter(torch.linspace(sharp, broad, num_heads).repeat(depth, 1))
        self.num_registers = num_registers

    def forward(self, target_rays: Tensor, source_rays: Tensor) -> list[Tensor]:
        """target_rays [(b g), n, 6] and source_rays [b, m, 6] (`patch_rays`) -> one bias
        [(b g), nh, r + n, m] per block (register rows zero)."""
        groups = target_rays.shape[0] // source_rays.shape[0]
        sources = repeat(source_rays, "b m ch -> (b g) 1 m ch", g=groups)
        distance = (target_rays[:, :, None] - sources).square().sum(-1)  # [(b g), n, m]
        distance = F.pad(distance, (0, 0, self.num_registers, 0))[:, None]
        return [-beta.exp()[None, :, None, None] * distance for beta in self.log_beta]


# --------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------


@dataclass
class SourceContext:
    """What the renderer needs of a scene's sources, independent of any target.

    tokens: [b, m, c] encoder tokens of all source views, views flattened into m.
    kv: per block, the sources' keys and values [b, nh, m, d] for the variants with
        `cacheable_sources`; empty for those whose sources depend on the target.
    rays: [b, m, 6] each source token's ray (`patch_rays`), for the `ray_bias` option;
        None without it.
    """

    tokens: Tensor
    kv: tuple[KeyValue, ...]
    rays: Tensor | None = None


@dataclass
class DecoderOutput:
    """rgb [b, t, 3, h, w] in [0, 1]; with a point head, points [b, t, h, w, 3] in the
    scene frame (first source camera) and their confidence conf [b, t, h, w] (> 1).

    A latent decoder (`out_activation` "none") outputs latents [b, t, ch, h, w] of an image
    VAE instead of rgb (None), on the latent grid as its points and conf are;
    `NVSModel.render` decodes them and keeps them here.

    A model with a warp refiner (`gen_nvs.models.refiner`) refines rgb and keeps the
    decoder's own render [b, t, 3, h, w] as decoder_rgb (None otherwise).
    """

    rgb: Tensor | None = None
    points: Tensor | None = None
    conf: Tensor | None = None
    latents: Tensor | None = None
    decoder_rgb: Tensor | None = None

    def to(self, device: torch.device | str) -> DecoderOutput:
        """The same output with its tensors on `device`."""
        return DecoderOutput(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                for f in fields(self)
            }
        )


# --------------------------------------------------------------------------------------
# Variants: how a target meets the sources
# --------------------------------------------------------------------------------------


class DecoderVariant(ABC):
    """One renderer variant: its blocks, what `prepare_sources` computes of the sources
    and how the target tokens pass the blocks. A HighwayDecoder builds one from its
    `variant` name (`VARIANT_CLASSES`), keeps it as `routing` and passes itself in; the
    variant holds no state of its own.
    """

    name: ClassVar[str]
    cacheable_sources: ClassVar[bool] = False
    """Whether the source side never depends on a target: then `prepare_sources` computes
    every block's source keys/values once per scene and a SceneCache keeps them. Else the
    sources are updated per target, so the context holds the encoder tokens only and
    every target reruns the source side on a copy of the sources of its own."""

    @abstractmethod
    def build_blocks(self, depth: int, size: BlockSize) -> list[nn.Module]:
        """The variant's `depth` blocks, in order."""

    def source_kv(self, decoder: HighwayDecoder, sources: Tensor) -> tuple[KeyValue, ...]:
        """sources [b, m, c] -> per block, the source keys/values [b, nh, m, d] the targets
        attend to; none unless `cacheable_sources`."""
        return ()

    @abstractmethod
    def run_targets(
        self,
        decoder: HighwayDecoder,
        context: SourceContext,
        x: Tensor,
        rays: Tensor,
        mods: Sequence[BlockModulation | None],
    ) -> Tensor:
        """Target tokens x [(b t), n, c] with their rays [(b t), 6, h, w] through all
        blocks against `context` (b scenes) -> [(b t), n, c]; `mods` has one entry per
        block."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FullAttentionVariant(DecoderVariant):
    """`full_attention`: per target, one self-attention over `[sources, target]`; the
    sources are updated too, so they depend on the target."""

    name = "full_attention"

    def build_blocks(self, depth: int, size: BlockSize) -> list[nn.Module]:
        return [SelfAttentionBlock(size) for _ in range(depth)]

    def run_targets(
        self,
        decoder: HighwayDecoder,
        context: SourceContext,
        x: Tensor,
        rays: Tensor,
        mods: Sequence[BlockModulation | None],
    ) -> Tensor:
        groups = x.shape[0] // context.tokens.shape[0]
        sources = repeat(context.tokens, "b m c -> (b g) m c", g=groups).to(x.dtype)
        m = sources.shape[1]
        z = torch.cat([sources, x], dim=1)  # [(b t), m + n, c]
        for block, mod in zip(decoder.blocks, mods, strict=True):
            if mod is not None:  # the target tokens follow the m sources
                mod = tuple(replace(sub, start=m) for sub in mod)
            z = decoder._run(functools.partial(block, mods=mod), z)
        return z[:, m:]


class BidirectionalCrossAttentionVariant(DecoderVariant):
    """`bidirectional_cross_attention`: depth - 1 blocks of target self-attention
    (norm1_x), then a two-way exchange computed from the same inputs: the target (norm2_x)
    attends to the sources (norm1_rec) and the sources (norm1_rec) attend to the target
    (norm2_x, registers included); then an MLP per stream (norm3_x, norm2_rec). The last
    block is a `cross_attention` block against the updated sources."""

    name = "bidirectional_cross_attention"

    def build_blocks(self, depth: int, size: BlockSize) -> list[nn.Module]:
        return [*(BidirectionalBlock(size) for _ in range(depth - 1)), CrossAttentionBlock(size)]

    def run_targets(
        self,
        decoder: HighwayDecoder,
        context: SourceContext,
        x: Tensor,
        rays: Tensor,
        mods: Sequence[BlockModulation | None],
    ) -> Tensor:
        groups = x.shape[0] // context.tokens.shape[0]
        sources = repeat(context.tokens, "b m c -> (b g) m c", g=groups)  # one copy per target
        *exchange, final = decoder.blocks
        *exchange_mods, final_mod = mods
        for block, mod in zip(exchange, exchange_mods, strict=True):
            x, sources = decoder._run(functools.partial(block, mods=mod), x, sources)
        return decoder._run(
            lambda x, sources: final(x, final.source_kv(sources), final_mod), x, sources
        )


class _CachedSourcesVariant(DecoderVariant):
    """A variant whose source side never sees a target: in each block the target tokens
    attend to that block's source keys/values, computed once per scene (`source_kv`),
    with the `ray_bias` option's logit bias when the decoder has it."""

    cacheable_sources = True

    def run_targets(
        self,
        decoder: HighwayDecoder,
        context: SourceContext,
        x: Tensor,
        rays: Tensor,
        mods: Sequence[BlockModulation | None],
    ) -> Tensor:
        biases = decoder._ray_biases(context, rays)
        for block, kv, mod, bias in zip(decoder.blocks, context.kv, mods, biases, strict=True):
            x = decoder._run(functools.partial(block, mods=mod, bias=bias), x, kv)
        return x


class CrossAttentionVariant(_CachedSourcesVariant):
    """`cross_attention`: per block, target self-attention (norm1), then the target
    (norm2 as queries) attends to the fixed encoder tokens (norm2_kv as keys/values),
    then an MLP (norm_ffn)."""

    name = "cross_attention"

    def build_blocks(self, depth: int, size: BlockSize) -> list[nn.Module]:
        return [CrossAttentionBlock(size) for _ in range(depth)]

    def source_kv(self, decoder: HighwayDecoder, sources: Tensor) -> tuple[KeyValue, ...]:
        return tuple(block.source_kv(sources) for block in decoder.blocks)


class CausalVariant(_CachedSourcesVariant):
    """`causal` (RnG's reconstruction-guided causal attention; no published checkpoint, the
    `full_attention` block layout): the sources attend only to the sources and are
    updated block by block; a target attends to `[sources at that block, target]`."""

    name = "causal"

    def build_blocks(self, depth: int, size: BlockSize) -> list[nn.Module]:
        return [SelfAttentionBlock(size) for _ in range(depth)]

    def source_kv(self, decoder: HighwayDecoder, sources: Tensor) -> tuple[KeyValue, ...]:
        *updating, last = decoder.blocks
        kv = []
        for block in updating:
            sources, block_kv = decoder._run(block.forward_with_kv, sources)
            kv.append(block_kv)
        kv.append(last.keys_values(sources))  # the last block's source update is never read
        return tuple(kv)


VARIANT_CLASSES: dict[str, type[DecoderVariant]] = {
    variant.name: variant
    for variant in (
        FullAttentionVariant,
        CrossAttentionVariant,
        BidirectionalCrossAttentionVariant,
        CausalVariant,
    )
}
"""Each variant name (`Variant`, the configs' and exports' `"variant"`) -> its class."""


class HighwayDecoder(nn.Module):
    """LagerNVS renderer ("highway" decoder): source tokens + target rays -> target views.

    `out_channels` and `out_activation` are the latent mode's (LVSM-VAE): "none" makes the
    output head give `out_channels` latents of an image VAE per pixel of the (latent) ray
    grid, `DecoderOutput.latents`; the default is the published RGB head with a sigmoid.
    """

    def __init__(
        self,
        *,
        variant: Variant = "bidirectional_cross_attention",
        width: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        patch_size: int = 8,
        mlp_ratio: float = 4.0,
        num_registers: int = 4,
        point_head: bool = False,
        norm_eps: float = 1e-5,
        qk_norm_eps: float = 1e-5,
        ray_frequencies: int = 0,
        ray_bias: bool = False,
        out_channels: int = 3,
        out_activation: OutputActivation = "sigmoid",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _check_config(variant, width, depth, num_heads, patch_size, mlp_ratio, num_registers)
        _check_options(variant, ray_frequencies, ray_bias)
        _check_output(out_channels, out_activation)
        self._config = {
            "variant": variant,
            "width": width,
            "depth": depth,
            "num_heads": num_heads,
            "patch_size": patch_size,
            "mlp_ratio": mlp_ratio,
            "num_registers": num_registers,
            "point_head": point_head,
            "norm_eps": norm_eps,
            "qk_norm_eps": qk_norm_eps,
            "gradient_checkpointing": gradient_checkpointing,
        }
        # Configs (and exports) of the published layout stay as they were.
        if ray_frequencies:
            self._config["ray_frequencies"] = ray_frequencies
        if ray_bias:
            self._config["ray_bias"] = True
        if out_channels != 3 or out_activation != "sigmoid":  # the latent mode's
            self._config.update(out_channels=out_channels, out_activation=out_activation)
        self.variant = variant
        self.routing = VARIANT_CLASSES[variant]()
        self.width = width
        self.patch_size = patch_size
        self.num_registers = num_registers
        self.gradient_checkpointing = gradient_checkpointing
        size = BlockSize(
            dim=width,
            num_heads=num_heads,
            mlp_hidden=int(width * mlp_ratio),
            norm_eps=norm_eps,
            qk_norm_eps=qk_norm_eps,
        )
        self.tgt_embedder = PatchEmbed(
            dim=width, patch_size=patch_size, ray_frequencies=ray_frequencies
        )
        self.tgt_norm = _layer_norm(width, norm_eps)
        self.per_view_register_tokens = nn.Parameter(torch.zeros(1, num_registers, width))
        self.renderer_core = RendererCore(self.routing.build_blocks(depth, size))
        self.ray_bias = (
            RayBias(depth=depth, num_heads=num_heads, num_registers=num_registers)
            if ray_bias
            else None
        )
        self.final_layer = RGBHead(
            dim=width,
            patch_size=patch_size,
            norm_eps=norm_eps,
            channels=out_channels,
            activation=out_activation,
        )
        self.point_head = (
            PointHead(dim=width, patch_size=patch_size, norm_eps=norm_eps) if point_head else None
        )
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.per_view_register_tokens, std=0.02)
        for module in self.renderer_core.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.trunc_normal_(self.final_layer.linear.weight, std=0.02)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.renderer_core.renderer_blocks

    @property
    def outputs_latents(self) -> bool:
        """Whether the output head gives latents (`DecoderOutput.latents`) instead of rgb."""
        return self.final_layer.activation == "none"

    @property
    def config(self) -> dict:
        """The constructor's keyword arguments: `HighwayDecoder(**config)` rebuilds it."""
        return dict(self._config)

    # ----------------------------------------------------------------------------------
    # Public API
    # ----------------------------------------------------------------------------------

    def forward(
        self, source_tokens: Tensor, target_rays: Tensor, source_rays: Tensor | None = None
    ) -> DecoderOutput:
        """Render every target of every scene.

        source_tokens: [b, s, p, c] encoder tokens of the s source views.
        target_rays: [b, t, 6, h, w] Pluecker ray maps of the targets, in the scene frame.
        source_rays: [b, s, p, 6] each source token's ray (`patch_rays`); needed only with
            the `ray_bias` option.
        Returns a DecoderOutput with rgb [b, t, 3, h, w] (latents [b, t, ch, h, w] for a
        latent decoder) and points/conf with a point head.
        """
        return self.render(self.prepare_sources(source_tokens, source_rays), target_rays)

    def prepare_sources(
        self, source_tokens: Tensor, source_rays: Tensor | None = None
    ) -> SourceContext:
        """[b, s, p, c] encoder tokens (and, for the `ray_bias` option, their rays
        [b, s, p, 6]) -> the SourceContext every target is rendered against."""
        if source_tokens.ndim != 4 or source_tokens.shape[-1] != self.width:
            raise ValueError(
                f"source tokens must be [b, s, p, {self.width}], got {list(source_tokens.shape)}"
            )
        rays = self._source_rays(source_tokens, source_rays)
        tokens = rearrange(source_tokens, "b s p c -> b (s p) c")
        return SourceContext(tokens=tokens, kv=self.routing.source_kv(self, tokens), rays=rays)

    def render(self, context: SourceContext, target_rays: Tensor) -> DecoderOutput:
        """Render targets [b, t, 6, h, w] against a prepared SourceContext (batch b)."""
        x = self.target_tokens(context, target_rays)  # [(b t), gh * gw, c]
        b, _, _, h, w = target_rays.shape
        grid = (h // self.patch_size, w // self.patch_size)
        image = rearrange(self.final_layer(x, grid), "(b t) ch h w -> b t ch h w", b=b)
        output = DecoderOutput(latents=image) if self.outputs_latents else DecoderOutput(rgb=image)
        if self.point_head is None:
            return output
        points, conf = self.point_head(x, grid)
        return replace(
            output,
            points=rearrange(points, "(b t) h w ch -> b t h w ch", b=b),
            conf=rearrange(conf, "(b t) h w -> b t h w", b=b),
        )

    def target_tokens(
        self,
        context: SourceContext,
        target_rays: Tensor,
        *,
        added_patches: Tensor | None = None,
        modulations: Sequence[BlockModulation] | None = None,
    ) -> Tensor:
        """The targets' patch tokens after all blocks, ready for the heads.

        target_rays [b, t, 6, h, w] against `context` (batch b) -> [(b t), gh * gw, c].
        The diffusion decoder's hooks: `added_patches` [(b t), gh * gw, c] are added to
        the ray patch embedding (see `_embed_targets`); `modulations` holds one
        BlockModulation per block, for the target sub-layers only. The source stream
        (`prepare_sources`) takes neither.
        """
        self.check_rays(target_rays, context.tokens.shape[0])
        if modulations is not None and len(modulations) != len(self.blocks):
            raise ValueError(
                f"expected one modulation per block ({len(self.blocks)}), got {len(modulations)}"
            )
        mods = [None] * len(self.blocks) if modulations is None else list(modulations)
        rays = rearrange(target_rays, "b t ch h w -> (b t) ch h w")
        x = self._embed_targets(rays, added_patches)  # [(b t), r + gh * gw, c]
        x = self.routing.run_targets(self, context, x, rays, mods)
        return x[:, self.num_registers :]

    def check_rays(self, rays: Tensor, num_scenes: int) -> None:
        """Raise ValueError unless rays are finite [num_scenes, t >= 1, 6, h, w] with h and
        w multiples of the patch size."""
        if rays.ndim != 5 or rays.shape[2] != RAY_CHANNELS:
            raise ValueError(f"target rays must be [b, t, 6, h, w], got {list(rays.shape)}")
        b, t, _, h, w = rays.shape
        if t < 1:
            raise ValueError(f"need at least 1 target view, got target rays {list(rays.shape)}")
        if b != num_scenes:
            raise ValueError(f"target rays are for {b} scenes but the sources for {num_scenes}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"target image size {h}x{w} is not divisible by patch size {self.patch_size}"
            )
        if not torch.isfinite(rays).all():
            raise ValueError("target rays have non-finite values")

    # ----------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------

    def _run(self, fn: Callable[..., T], *args: Tensor | KeyValue) -> T:
        """fn(*args), through activation checkpointing when that is switched on."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _source_rays(self, source_tokens: Tensor, source_rays: Tensor | None) -> Tensor | None:
        """The checked source rays [b, s, p, 6] flattened to [b, m, 6] for the `ray_bias`
        option; None without it."""
        if self.ray_bias is None:
            return None
        expected = [*source_tokens.shape[:3], RAY_CHANNELS]
        if source_rays is None or list(source_rays.shape) != expected:
            got = None if source_rays is None else list(source_rays.shape)
            raise ValueError(
                f"this decoder has the ray_bias option: it needs the source tokens' rays "
                f"{expected}, got {got}"
            )
        return rearrange(source_rays, "b s p ch -> b (s p) ch")

    def _ray_biases(self, context: SourceContext, rays: Tensor) -> list[Tensor | None]:
        """Each block's logit bias for targets [(b t), 6, h, w] (`RayBias`), or None each."""
        if self.ray_bias is None:
            return [None] * len(self.blocks)
        if context.rays is None:
            raise ValueError("this decoder has the ray_bias option: the SourceContext has no rays")
        grid = (rays.shape[-2] // self.patch_size, rays.shape[-1] // self.patch_size)
        return self.ray_bias(patch_rays(rays, grid), context.rays)

    def _embed_targets(self, rays: Tensor, added_patches: Tensor | None = None) -> Tensor:
        """[(b t), 6, h, w] -> [(b t), r + gh * gw, c]: registers, then normed ray patches.

        `added_patches` [(b t), gh * gw, c] join the ray patches before the norm, as extra
        input channels of the patch embedding would.
        """
        patches = self.tgt_embedder(rays)
        if added_patches is not None:
            patches = patches + added_patches
        patches = self.tgt_norm(patches)
        registers = self.per_view_register_tokens.expand(rays.shape[0], -1, -1)
        return torch.cat([registers.to(patches.dtype), patches], dim=1)


def _check_config(
    variant: str,
    width: int,
    depth: int,
    num_heads: int,
    patch_size: int,
    mlp_ratio: float,
    num_registers: int,
) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"decoder variant must be one of {VARIANTS}, got {variant!r}")
    if depth < 1 or num_heads < 1 or patch_size < 1 or num_registers < 0 or mlp_ratio <= 0:
        raise ValueError(
            "decoder needs depth, num_heads, patch_size >= 1, num_registers >= 0 and "
            f"mlp_ratio > 0, got depth {depth}, num_heads {num_heads}, patch_size "
            f"{patch_size}, num_registers {num_registers}, mlp_ratio {mlp_ratio}"
        )
    if width % num_heads:
        raise ValueError(f"decoder width {width} is not divisible by num_heads {num_heads}")


def _check_output(out_channels: int, out_activation: str) -> None:
    if out_activation not in OUTPUT_ACTIVATIONS:
        raise ValueError(
            f"decoder out_activation must be one of {OUTPUT_ACTIVATIONS}, got {out_activation!r}"
        )
    if out_channels < 1 or (out_activation == "sigmoid" and out_channels != 3):
        raise ValueError(
            f"decoder out_channels must be 3 with out_activation 'sigmoid' (rgb) and >= 1 with "
            f"'none' (latents), got {out_channels} with {out_activation!r}"
        )


def _check_options(variant: str, ray_frequencies: int, ray_bias: bool) -> None:
    if ray_frequencies < 0:
        raise ValueError(f"decoder ray_frequencies must be >= 0, got {ray_frequencies}")
    # The bias enters the attention to per-block source keys/values, which only the
    # variants with a cacheable source side have.
    if ray_bias and not VARIANT_CLASSES[variant].cacheable_sources:
        names = sorted(name for name, cls in VARIANT_CLASSES.items() if cls.cacheable_sources)
        raise ValueError(
            f"decoder ray_bias needs the {' or '.join(names)} variant, got {variant!r}"
        )
