"""Diffusion decoder: the LagerNVS highway decoder turned into a denoiser, in pixel space
or in the latent space of an image VAE.

The recipe (LagerNVS): start from a trained regression `HighwayDecoder` and let it see
the noisy target and the timestep, so that fine-tuning begins at the regression renderer.

- Noisy target. The diffusion sample of a target view is `to_diffusion_space(rgb, points)`:
  RGB scaled to [-1, 1] (`rgb * 2 - 1`) and, with `noise_channels=6`, the point map in
  the point head's pre-activation space, `sign(p) * log1p(|p|)` (scene frame, the inverse
  of the head's `sign(x) * expm1(|x|)`), so RGB-D is generated jointly and far points do
  not dwarf near ones. In the latent mode (a decoder that outputs an image VAE's k
  latent channels, `out_activation` "none") the sample is the normalised latents as
  they are, with the points in the same log space on the latent grid: k or k + 3
  channels. The noisy sample x_t enters through a bias-free patch conv
  (noise channels -> c, zero-initialised) added to the ray patch embedding before its
  norm: the same as giving the published ray embedding extra input channels.
- Timestep. A sinusoidal embedding and an MLP give, per target view, adaLN modulation
  (shift, scale, gate; DiT) of every target-stream sub-layer of every block and of each
  head's norm. The modulation layers are zero-initialised and the gate is centred on 1
  (`Modulation`), so a freshly converted decoder computes exactly the regression
  decoder's tokens whatever the noise and timestep.
- Sources. The source stream (encoder tokens and, for `cross_attention` and `causal`,
  every block's source keys/values) is never modulated and never sees x_t, so one
  SceneCache (`SceneCache.build(diffusion.decoder, tokens)`) serves every denoising step
  of every sample. For `full_attention` and `bidirectional_cross_attention` the sources
  are updated by each target, so only the target tokens' norms are modulated, the cache
  holds the encoder tokens only, and the source blocks rerun at every network call.
- Prediction. The network does not know the noise schedule; `samplers.Denoiser` wraps
  it with its `prediction_type` and training schedule, and builds the schedulers for it:
  "sample" (the default) predicts x0 as `[sigmoid(rgb_raw) * 2 - 1, xyz_raw]`, the
  regression heads' outputs in diffusion space, so at conversion the x0 prediction is
  exactly the regression render (`denoise_views` gives it as rgb, points and
  confidence); in the latent mode it is `[latents_raw, xyz_raw]`, no sigmoid.
  "epsilon" and "v_prediction" read the same heads' pre-activations linearly as the
  prediction; they start from the pretrained trunk and heads but not from a meaningful
  prediction, so only "sample" keeps the exact-at-init property.
- Classifier-free guidance. In training (`forward`) each scene's encoder tokens are
  replaced, with probability `cond_dropout`, by one learned null token repeated in
  place of every source token; the target rays are kept. At sampling `conditional=False`
  uses `null_context(b, m)`, the same null sources with their keys/values computed once.

Dimension legend:
    b   scenes (batch)              t   target views per scene
    s   source views                p   tokens per source view
    m   source tokens per scene (s * p)
    bt  (b t) as one axis, where b and t are not known apart
    ns  samples per target (the sampler's rows are (ns b t))
    c   channels (width)            k   latent channels of an image VAE (latent mode)
    ch  diffusion channels (3 rgb + 3 xyz, or 3 rgb; k + 3 or k in the latent mode)
    h, w    image height / width (the latent grid in the latent mode)
    gh, gw  patch grid (h / patch, w / patch)
    l   modulated sub-layers of a block     j   modulation parts (shift, scale, gate)
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from gen_nvs.models.cache import SceneCache
from gen_nvs.models.config import DecoderConfig
from gen_nvs.models.decoder import (
    BlockModulation,
    DecoderOutput,
    HighwayDecoder,
    Modulation,
    SourceContext,
    modulate,
)
from gen_nvs.models.heads import compress_points, expand_points
from samplers.denoiser import ModelFn, PredictionType, check_prediction_type

NOISE_CHANNELS = (3, 6)  # rgb, or rgb + xyz (pixel mode)


# --------------------------------------------------------------------------------------
# Data space
# --------------------------------------------------------------------------------------


def to_diffusion_space(
    image: Tensor, points: Tensor | None = None, *, latent: bool = False
) -> Tensor:
    """Target views -> the diffusion sample x0 [b, t, ch, h, w].

    image: rgb [b, t, 3, h, w] in [0, 1], which becomes `rgb * 2 - 1`, or with `latent`
    an image VAE's normalised latents [b, t, k, h, w], kept as they are. points
    [b, t, h, w, 3] (scene frame, on the same grid), if given, become
    `sign(p) * log1p(|p|)` in the last 3 channels.
    """
    if image.ndim != 5 or (not latent and image.shape[2] != 3):
        expected = "latents [b, t, k, h, w]" if latent else "rgb [b, t, 3, h, w]"
        raise ValueError(f"expected {expected}, got {list(image.shape)}")
    x_image = image if latent else image * 2 - 1
    if points is None:
        return x_image
    b, t, _, h, w = image.shape
    if tuple(points.shape) != (b, t, h, w, 3):
        raise ValueError(
            f"points must be {[b, t, h, w, 3]} to match the image, got {list(points.shape)}"
        )
    x_xyz = rearrange(compress_points(points), "b t h w ch -> b t ch h w")
    return torch.cat([x_image, x_xyz.to(x_image.dtype)], dim=2)


def from_diffusion_space(
    x: Tensor, *, latent_channels: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """A diffusion sample x [b, t, ch, h, w] -> (rgb [b, t, 3, h, w] in [0, 1], points
    [b, t, h, w, 3] in the scene frame, or None for ch = 3).

    With `latent_channels` k (the latent mode): (latents [b, t, k, h, w] as they are,
    points or None for ch = k).
    """
    channels = 3 if latent_channels is None else latent_channels
    if x.ndim != 5 or x.shape[2] not in (channels, channels + 3):
        raise ValueError(
            f"diffusion sample must be [b, t, ch, h, w] with ch in {(channels, channels + 3)}, "
            f"got {list(x.shape)}"
        )
    image = x[:, :, :channels]
    if latent_channels is None:
        image = ((image + 1) / 2).clamp(0, 1)
    if x.shape[2] == channels:
        return image, None
    return image, expand_points(rearrange(x[:, :, channels:], "b t ch h w -> b t h w ch"))


# --------------------------------------------------------------------------------------
# Timestep conditioning
# --------------------------------------------------------------------------------------


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of timesteps [bt] (any real values) -> [bt, dim] float32:
    cosines then sines of geometrically spaced frequencies from 1 to 1 / max_period."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps.float()[:, None] * torch.exp(-math.log(max_period) * exponents)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Timesteps [bt] -> conditioning vectors [bt, c]: sinusoids, then a two-layer MLP."""

    def __init__(self, *, dim: int, frequency_dim: int) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, timesteps: Tensor) -> Tensor:
        emb = timestep_embedding(timesteps, self.frequency_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def _zero_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


# --------------------------------------------------------------------------------------
# The diffusion decoder
# --------------------------------------------------------------------------------------


class DiffusionDecoder(nn.Module):
    """A HighwayDecoder as a denoiser: `denoise(sources, x_t, timesteps, target_rays)`.

    Build it from a trained regression decoder with `from_regression`; exports rebuild
    it with their model (`gen_nvs.models.nvs.build_model`). `decoder` is the renderer's
    config; the renderer itself is `self.decoder`.
    """

    def __init__(
        self,
        *,
        decoder: DecoderConfig,
        prediction_type: PredictionType = "sample",
        noise_channels: int = 6,
        cond_dropout: float = 0.1,
        frequency_dim: int = 256,
    ) -> None:
        super().__init__()
        _check_config(decoder, prediction_type, noise_channels, cond_dropout, frequency_dim)
        self.prediction_type = prediction_type
        self.noise_channels = noise_channels
        self.cond_dropout = cond_dropout
        self.decoder = HighwayDecoder(**decoder.kwargs())
        self._config = {
            "decoder": self.decoder.config,
            "prediction_type": prediction_type,
            "noise_channels": noise_channels,
            "cond_dropout": cond_dropout,
            "frequency_dim": frequency_dim,
        }
        width, patch = self.decoder.width, self.decoder.patch_size
        self.noise_embedder = nn.Conv2d(noise_channels, width, patch, stride=patch, bias=False)
        nn.init.zeros_(self.noise_embedder.weight)
        self.time_embedder = TimestepEmbedder(dim=width, frequency_dim=frequency_dim)
        self.block_modulation = nn.ModuleList(
            _zero_linear(width, 3 * block.MODULATED_SUBLAYERS * width)
            for block in self.decoder.blocks
        )
        heads = ["rgb", "points"] if self.decoder.point_head is not None else ["rgb"]
        self.head_modulation = nn.ModuleDict(
            {head: _zero_linear(width, 2 * width) for head in heads}
        )
        self.null_tokens = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.null_tokens, std=0.02)

    @classmethod
    def from_regression(
        cls,
        decoder: HighwayDecoder,
        *,
        prediction_type: PredictionType = "sample",
        noise_channels: int = 6,
        cond_dropout: float = 0.1,
        frequency_dim: int = 256,
    ) -> DiffusionDecoder:
        """A diffusion decoder whose renderer is a copy of the regression `decoder`
        (same device and dtype); with "sample" prediction it initially renders exactly
        as `decoder` does."""
        if not isinstance(decoder, HighwayDecoder):
            raise ValueError(
                f"from_regression needs a regression HighwayDecoder, got {type(decoder).__name__}"
            )
        model = cls(
            decoder=DecoderConfig(**decoder.config),
            prediction_type=prediction_type,
            noise_channels=noise_channels,
            cond_dropout=cond_dropout,
            frequency_dim=frequency_dim,
        )
        model.decoder.load_state_dict(decoder.state_dict())
        weight = decoder.final_layer.linear.weight
        return model.to(device=weight.device, dtype=weight.dtype)

    @property
    def config(self) -> dict[str, Any]:
        """The keyword arguments as JSON (`decoder`: the HighwayDecoder's `config`)."""
        return copy.deepcopy(self._config)

    @property
    def latent(self) -> bool:
        """Whether it denoises an image VAE's latents (its decoder outputs latents)."""
        return self.decoder.outputs_latents

    @property
    def image_channels(self) -> int:
        """The sample's image channels: 3 (rgb) or the VAE's latent channels k."""
        return self.decoder.final_layer.channels

    @property
    def with_points(self) -> bool:
        """Whether the sample holds the point map too (3 channels after the image's)."""
        return self.noise_channels == self.image_channels + 3

    def to_sample(self, image: Tensor, points: Tensor | None = None) -> Tensor:
        """`to_diffusion_space` in this decoder's space: image [b, t, 3 or k, h, w] (rgb or
        latents) and points [b, t, h, w, 3], needed when it denoises points too (else
        ignored) -> x0 [b, t, ch, h, w]."""
        if self.with_points and points is None:
            raise ValueError("this diffusion decoder denoises points too: give them")
        return to_diffusion_space(image, points if self.with_points else None, latent=self.latent)

    def from_sample(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """`from_diffusion_space` in this decoder's space: x [b, t, ch, h, w] -> (rgb in
        [0, 1] or latents, points or None)."""
        return from_diffusion_space(x, latent_channels=self.image_channels if self.latent else None)

    # ----------------------------------------------------------------------------------
    # Conditioning
    # ----------------------------------------------------------------------------------

    def null_context(
        self, batch: int, num_tokens: int, rays: Tensor | None = None
    ) -> SourceContext:
        """The unconditional sources of `batch` scenes: the null token in place of each of
        `num_tokens` source tokens, as in training, so use the conditional context's count
        (`full_attention` and `causal` targets attend to the sources alongside their own
        tokens, where the count matters). `rays` [batch, num_tokens, 6]: the conditional
        context's source rays, for a decoder with the `ray_bias` option (training drops
        the tokens, never the rays). Prepare it once per sampling run."""
        if batch < 1 or num_tokens < 1:
            raise ValueError(
                f"null context needs batch and num_tokens >= 1, got {batch} and {num_tokens}"
            )
        tokens = self.null_tokens.expand(batch, num_tokens, -1)
        rays = None if rays is None else rays[:, None]
        return self.decoder.prepare_sources(rearrange(tokens, "b m c -> b 1 m c"), rays)

    def drop_sources(self, source_tokens: Tensor, drop: Tensor) -> Tensor:
        """Encoder tokens [b, s, p, c] with the scenes where `drop` [b] (bool) is set
        replaced by the null token at every position."""
        if drop.shape != source_tokens.shape[:1] or drop.dtype != torch.bool:
            raise ValueError(
                f"drop must be a bool mask [{source_tokens.shape[0]}], got "
                f"{drop.dtype} {list(drop.shape)}"
            )
        null = self.null_tokens.to(source_tokens.dtype)[None]  # [1, 1, 1, c]
        return torch.where(drop[:, None, None, None], null, source_tokens)

    # ----------------------------------------------------------------------------------
    # Denoising
    # ----------------------------------------------------------------------------------

    def forward(
        self,
        source_tokens: Tensor,
        x_t: Tensor,
        timesteps: Tensor,
        target_rays: Tensor,
        source_rays: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Training: encoder tokens [b, s, p, c] -> prediction [b, t, ch, h, w] (see
        `denoise`). In training mode each scene's sources are dropped (null tokens) with
        probability `cond_dropout`, drawn on the CPU from `generator`."""
        if self.training and self.cond_dropout > 0:
            drop = torch.rand(source_tokens.shape[0], generator=generator) < self.cond_dropout
            source_tokens = self.drop_sources(source_tokens, drop.to(source_tokens.device))
        context = self.decoder.prepare_sources(source_tokens, source_rays)
        return self.denoise(context, x_t, timesteps, target_rays)

    def denoise(
        self,
        sources: SceneCache | SourceContext,
        x_t: Tensor,
        timesteps: Tensor,
        target_rays: Tensor,
        *,
        conditional: bool = True,
        null_context: SourceContext | None = None,
    ) -> Tensor:
        """The network's prediction for noisy targets.

        sources: a scene cache (`SceneCache.build(self.decoder, tokens)`) or SourceContext
            of b scenes; unchanged by the call, so build it once per sampling run.
        x_t: [b, t, ch, h, w] noisy targets in diffusion space (`to_diffusion_space`),
            ch = `noise_channels`.
        timesteps: [b * t] (flattened as (b t)) or [b, t], one per target view.
        target_rays: [b, t, 6, h, w] Pluecker rays of the targets.
        conditional: False uses `null_context` (`self.null_context(b, m)`, built here when
            None, which reruns the source stream) instead of `sources`.
        Returns the prediction [b, t, ch, h, w] of type `prediction_type`.
        """
        with_points = self.with_points
        rgb_raw, point_raw = self._raw(
            sources, x_t, timesteps, target_rays, conditional, null_context, with_points
        )
        if self.prediction_type == "sample" and not self.latent:
            rgb_raw = torch.sigmoid(rgb_raw) * 2 - 1
        parts = [rgb_raw]
        if with_points:
            parts.append(rearrange(point_raw[..., :3], "bt h w ch -> bt ch h w").to(rgb_raw.dtype))
        prediction = torch.cat(parts, dim=1).to(x_t.dtype)  # [(b t), ch, h, w]
        return rearrange(prediction, "(b t) ch h w -> b t ch h w", b=x_t.shape[0])

    def denoise_views(
        self,
        sources: SceneCache | SourceContext,
        x_t: Tensor,
        timesteps: Tensor,
        target_rays: Tensor,
        *,
        conditional: bool = True,
        null_context: SourceContext | None = None,
    ) -> DecoderOutput:
        """The x0 prediction as views (sample prediction only; arguments as `denoise`):
        rgb [b, t, 3, h, w] in [0, 1] (latents [b, t, k, h, w] in the latent mode, for
        `NVSModel.to_views`) and, with a point head, points [b, t, h, w, 3] and their
        confidence [b, t, h, w], through the regression heads' activations."""
        if self.prediction_type != "sample":
            raise ValueError(
                f"denoise_views needs prediction_type 'sample', got {self.prediction_type!r}"
            )
        with_points = self.decoder.point_head is not None
        rgb_raw, point_raw = self._raw(
            sources, x_t, timesteps, target_rays, conditional, null_context, with_points
        )
        b = x_t.shape[0]
        image = self.decoder.final_layer.activate(rgb_raw)
        image = rearrange(image, "(b t) ch h w -> b t ch h w", b=b)
        output = DecoderOutput(latents=image) if self.latent else DecoderOutput(rgb=image)
        if not with_points:
            return output
        return replace(
            output,
            points=rearrange(expand_points(point_raw[..., :3]), "(b t) h w ch -> b t h w ch", b=b),
            conf=rearrange(1 + torch.exp(point_raw[..., 3]), "(b t) h w -> b t h w", b=b),
        )

    # ----------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------

    def _raw(
        self,
        sources: SceneCache | SourceContext,
        x_t: Tensor,
        timesteps: Tensor,
        target_rays: Tensor,
        conditional: bool,
        null_context: SourceContext | None,
        with_points: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Pre-activation heads: (rgb [(b t), 3, h, w] or latents [(b t), k, h, w], xyz +
        conf [(b t), h, w, 4] or None without `with_points`)."""
        context = self._context(sources, conditional, null_context)
        self.decoder.check_rays(target_rays, context.tokens.shape[0])
        steps = self._check_inputs(x_t, timesteps, target_rays)  # [(b t)]
        h, w = x_t.shape[-2:]
        noisy = self.noise_embedder(rearrange(x_t, "b t ch h w -> (b t) ch h w"))
        cond = F.silu(self.time_embedder(steps))  # [(b t), c]
        tokens = self.decoder.target_tokens(
            context,
            target_rays,
            added_patches=rearrange(noisy, "bt c gh gw -> bt (gh gw) c"),
            modulations=self._block_modulations(cond),
        )  # [(b t), gh * gw, c]
        grid = (h // self.decoder.patch_size, w // self.decoder.patch_size)
        rgb_raw = self.decoder.final_layer.raw(tokens, grid, self._head_modulation("rgb", cond))
        if not with_points:
            return rgb_raw, None
        point_mod = self._head_modulation("points", cond)
        return rgb_raw, self.decoder.point_head.raw(tokens, grid, point_mod)

    def _context(
        self,
        sources: SceneCache | SourceContext,
        conditional: bool,
        null_context: SourceContext | None,
    ) -> SourceContext:
        if isinstance(sources, SceneCache):
            if sources.decoder is not self.decoder:
                raise ValueError(
                    "the SceneCache was built for another decoder; build it with "
                    "SceneCache.build(diffusion.decoder, source_tokens)"
                )
            sources = sources.context
        if conditional:
            return sources
        b, m = sources.tokens.shape[:2]
        if null_context is None:
            return self.null_context(b, m, sources.rays)
        if tuple(null_context.tokens.shape[:2]) != (b, m):
            raise ValueError(
                f"null context must hold {b} scenes x {m} source tokens like the sources, got "
                f"{list(null_context.tokens.shape[:2])}"
            )
        return null_context

    def _check_inputs(self, x_t: Tensor, timesteps: Tensor, target_rays: Tensor) -> Tensor:
        """Check x_t and timesteps against the rays; -> timesteps flattened to [(b t)]."""
        b, t, _, h, w = target_rays.shape
        expected = [b, t, self.noise_channels, h, w]
        if list(x_t.shape) != expected:
            raise ValueError(
                f"x_t must be {expected} (targets of the rays, {self.noise_channels} diffusion "
                f"channels), got {list(x_t.shape)}"
            )
        if tuple(timesteps.shape) not in ((b * t,), (b, t)):
            raise ValueError(
                f"timesteps must be [{b * t}] or [{b}, {t}] (one per target view), got "
                f"{list(timesteps.shape)}"
            )
        return timesteps.reshape(b * t)

    def _block_modulations(self, cond: Tensor) -> list[BlockModulation]:
        """cond [bt, c] -> per block, one Modulation (each part [bt, 1, c]) per sub-layer."""
        modulations = []
        for layer in self.block_modulation:
            parts = rearrange(layer(cond), "bt (l j c) -> l j bt 1 c", j=3, c=self.decoder.width)
            modulations.append(tuple(Modulation(*sub) for sub in parts))
        return modulations

    def _head_modulation(self, head: str, cond: Tensor) -> Callable[[Tensor], Tensor]:
        shift, scale = rearrange(self.head_modulation[head](cond), "bt (j c) -> j bt 1 c", j=2)
        return functools.partial(modulate, shift=shift, scale=scale)


def _check_config(
    decoder: DecoderConfig,
    prediction_type: str,
    noise_channels: int,
    cond_dropout: float,
    frequency_dim: int,
) -> None:
    check_prediction_type(prediction_type)
    image = decoder.out_channels  # 3 (rgb), or the latent channels
    allowed = (image, image + 3)
    if noise_channels not in allowed:
        raise ValueError(
            f"noise_channels must be one of {allowed} (the decoder's {image} output channels, "
            f"+ 3 with points), got {noise_channels}"
        )
    if noise_channels == image + 3 and not decoder.point_head:
        raise ValueError(
            f"noise_channels {noise_channels} (image + points) needs a decoder with "
            f"point_head=True, got point_head={decoder.point_head}"
        )
    if not 0 <= cond_dropout <= 1:
        raise ValueError(f"cond_dropout must be in [0, 1], got {cond_dropout}")
    if frequency_dim < 2 or frequency_dim % 2:
        raise ValueError(f"frequency_dim must be even and >= 2, got {frequency_dim}")


# --------------------------------------------------------------------------------------
# Sampling glue
# --------------------------------------------------------------------------------------


def make_model_fn(
    decoder: DiffusionDecoder,
    context: SceneCache | SourceContext,
    null_context: SourceContext | None,
    target_rays: Tensor,
) -> ModelFn:
    """The network `model_fn(x_t, t, conditional)` that a `samplers.Denoiser` wraps, for b
    scenes' t targets.

    context: the scenes' sources (built once); null_context: `decoder.null_context(b, m)`
        (built once), needed for guidance (conditional=False calls), else may be None.
    target_rays: [b, t, 6, h, w].
    The sampler's rows (ns b t) are ordered (samples, scenes, targets): row
    (sample * b + scene) * t + target holds that sample of that target, so a sample
    keeps its seeds when more samples are drawn. Every sample of a scene shares its
    cached sources.
    """
    if not isinstance(decoder, DiffusionDecoder):
        raise ValueError(f"make_model_fn needs a DiffusionDecoder, got {type(decoder).__name__}")
    if target_rays.ndim != 5:
        raise ValueError(f"target rays must be [b, t, 6, h, w], got {list(target_rays.shape)}")
    b, t = target_rays.shape[:2]

    def model_fn(x_t: Tensor, timesteps: Tensor, conditional: bool) -> Tensor:
        if x_t.ndim != 4 or x_t.shape[0] % (b * t):
            raise ValueError(
                f"x_t must be [samples * {b * t}, ch, h, w] (samples x {b} scenes x {t} "
                f"targets), got {list(x_t.shape)}"
            )
        if not conditional and null_context is None:
            raise ValueError("guidance needs a null context, got null_context=None")
        samples = x_t.shape[0] // (b * t)
        prediction = decoder.denoise(
            context,
            rearrange(x_t, "(ns b t) ch h w -> b (ns t) ch h w", b=b, t=t),
            rearrange(timesteps, "(ns b t) -> b (ns t)", b=b, t=t),
            repeat(target_rays, "b t ch h w -> b (ns t) ch h w", ns=samples),
            conditional=conditional,
            null_context=null_context,
        )
        return rearrange(prediction, "b (ns t) ch h w -> (ns b t) ch h w", ns=samples)

    return model_fn
