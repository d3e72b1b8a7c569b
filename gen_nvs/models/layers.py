"""Shared transformer building blocks: MLP, LayerScale, 2D RoPE, attention and a pre-norm block.

Dimension legend:
    b  batch (for per-view attention: batch * views)
    n  tokens
    h  attention heads
    d  channels per head
    c  channels (= h * d)
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class Mlp(nn.Module):
    """Two-layer perceptron with GELU (exact erf form): `fc2(gelu(fc1(x)))`."""

    def __init__(
        self, in_dim: int, *, hidden_dim: int, out_dim: int | None = None, bias: bool = True
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, in_dim if out_dim is None else out_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_dim] -> [..., out_dim]."""
        return self.fc2(self.act(self.fc1(x)))


RAY_CHANNELS = 6  # Pluecker rays: direction, moment


def fourier_features(x: Tensor, num_frequencies: int, dim: int = 1) -> Tensor:
    """x with its sines and cosines at frequencies pi * 2^0 .. pi * 2^(F-1), along `dim`.

    [..., k, ...] -> [..., k * (1 + 2F), ...] (x first, then all sines, then all
    cosines); F = 0 returns x. Used for Pluecker rays: a linear layer on raw rays can
    only compare them smoothly, while a dot product of these features is a sharp kernel,
    so a target ray finds the source patches along it in far fewer steps.
    """
    if num_frequencies < 0:
        raise ValueError(f"num_frequencies must be >= 0, got {num_frequencies}")
    if num_frequencies == 0:
        return x
    freqs = torch.pi * 2.0 ** torch.arange(num_frequencies, device=x.device, dtype=x.dtype)
    dim = dim % x.ndim
    shape = [1] * (x.ndim + 1)
    shape[dim] = num_frequencies
    angles = x.unsqueeze(dim) * freqs.view(shape)  # (..., F, k, ...)
    angles = angles.flatten(dim, dim + 1)  # (..., F * k, ...)
    return torch.cat([x, angles.sin(), angles.cos()], dim=dim)


def fourier_channels(channels: int, num_frequencies: int) -> int:
    """Channels of `fourier_features` of `channels` inputs."""
    return channels * (1 + 2 * num_frequencies)


class LayerScale(nn.Module):
    """Learned per-channel residual scale `x * gamma`, with gamma initialised to `init_value`."""

    def __init__(self, dim: int, *, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        """x [..., dim] -> [..., dim]."""
        return x * self.gamma


class RotaryEmbedding2D(nn.Module):
    """2D rotary position embedding over (row, column) token positions.

    The first half of each head's channels rotates with the row, the second half with the
    column. Within a half of `m` channels, channel pairs are `(i, i + m/2)` (rotate-half
    layout) with angles `position * frequency ** (-2i / m)`.
    """

    # Tables kept per positions tensor (the encoder reuses one per patch grid).
    MAX_TABLES = 16

    def __init__(self, *, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = float(frequency)
        self._tables: dict[tuple, tuple[weakref.ref, tuple[Tensor, ...]]] = {}

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x [b h n d] (d divisible by 4), positions [b n 2] as (row, column) -> [b h n d].

        `b` of positions may be 1 to broadcast over the batch.
        """
        if x.shape[-1] % 4 != 0:
            raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {x.shape[-1]}")
        cos_rows, sin_rows, cos_cols, sin_cols = self._cos_sin(positions, x.shape[-1], x.dtype)
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat(
            (_rotate(rows, cos_rows, sin_rows), _rotate(cols, cos_cols, sin_cols)), dim=-1
        )

    def _cos_sin(self, positions: Tensor, dim: int, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """cos and sin [b 1 n d/2] of the rows, then of the columns, of positions [b n 2],
        computed once per positions tensor (held by a weak reference, so that a new tensor
        at a reused address is never taken for it); at most MAX_TABLES are kept."""
        # Inference tensors keep no version counter (nor are the encoder's edited).
        version = -1 if positions.is_inference() else positions._version
        key = (id(positions), version, dim, dtype)
        cached = self._tables.get(key)
        if cached is not None and cached[0]() is positions:
            return cached[1]
        half = dim // 2  # channels per axis
        exponents = torch.arange(0, half, 2, device=positions.device, dtype=torch.float32) / half
        inv_freq = self.frequency**-exponents  # (half/2,)
        tables = []
        for axis in (0, 1):
            angles = positions[..., axis].to(torch.float32)[..., None] * inv_freq  # (b, n, h/2)
            angles = rearrange(torch.cat((angles, angles), dim=-1), "b n m -> b 1 n m")
            tables += [angles.cos().to(dtype), angles.sin().to(dtype)]
        if len(self._tables) >= self.MAX_TABLES:
            self._tables.clear()
        self._tables[key] = (weakref.ref(positions), tuple(tables))
        return tuple(tables)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE: x [b h n m] with its tables [b 1 n m] -> [b h n m]."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, optional per-head LayerNorm
    QK-norm and optional 2D RoPE, computed with `F.scaled_dot_product_attention`."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        rope: RotaryEmbedding2D | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x [b n c], positions [b n 2] (needed iff the layer has RoPE) -> [b n c]."""
        q, k, v = rearrange(
            self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads
        )
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            if positions is None:
                raise ValueError("this attention layer uses RoPE: expected positions, got None")
            q, k = self.rope(q, positions), self.rope(k, positions)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, h, n, d)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches:
    `x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        layer_scale_init: float = 1.0,
        norm_eps: float = 1e-5,
        rope: RotaryEmbedding2D | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim, num_heads=num_heads, qk_norm=qk_norm, norm_eps=norm_eps, rope=rope
        )
        self.ls1 = LayerScale(dim, init_value=layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_dim=int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_value=layer_scale_init)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x [b n c], positions [b n 2] or None -> [b n c]."""
        x = x + self.ls1(self.attn(self.norm1(x), positions))
        return x + self.ls2(self.mlp(self.norm2(x)))
