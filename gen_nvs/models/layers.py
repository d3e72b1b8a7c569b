"""Shared transformer building blocks: MLP, Fourier features, LayerScale, 2D RoPE,
attention (both published layouts) and the encoder's pre-norm block.

Dimension legend:
    b   batch: the sequences attended separately (e.g. scenes x views)
    g   query sequences that share one batch entry's keys/values
    n   tokens of a sequence (the queries)
    m   key/value tokens of a context or prefix
    c   channels (= nh * d)
    nh  attention heads          d   channels per head
    ch  input channels of Fourier features
q, k, v name queries, keys and values (tensors, not dimensions).
"""

from __future__ import annotations

import weakref
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
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

    [..., ch, ...] -> [..., ch * (1 + 2F), ...] (x first, then all sines, then all
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
    angles = x.unsqueeze(dim) * freqs.view(shape)  # (..., F, ch, ...)
    angles = angles.flatten(dim, dim + 1)  # (..., F * ch, ...)
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

    The first half of each head's d channels rotates with the row, the second half with
    the column. Within a half (a = d/2 channels), channel pairs are `(i, i + a/2)`
    (rotate-half layout) with angles `position * frequency ** (-2i / a)`.
    """

    # Tables kept per positions tensor (the encoder reuses one per patch grid).
    MAX_TABLES = 16

    def __init__(self, *, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = float(frequency)
        self._tables: dict[tuple, tuple[weakref.ref, tuple[Tensor, ...]]] = {}

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x [b nh n d] (d divisible by 4), positions [b n 2] as (row, column) -> [b nh n d].

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
            angles = positions[..., axis].to(torch.float32)[..., None] * inv_freq  # (b, n, d/4)
            angles = torch.cat((angles, angles), dim=-1)[:, None]  # (b, 1, n, d/2)
            tables += [angles.cos().to(dtype), angles.sin().to(dtype)]
        if len(self._tables) >= self.MAX_TABLES:
            self._tables.clear()
        self._tables[key] = (weakref.ref(positions), tuple(tables))
        return tuple(tables)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE: x [b nh n d/2] with its tables [b 1 n d/2] -> [b nh n d/2]."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


QKNorm = Literal["layer", "rms"]
KeyValue = tuple[Tensor, Tensor]


class Attention(nn.Module):
    """Multi-head attention through `F.scaled_dot_product_attention`, in either published
    layout, under its checkpoints' parameter names:

    - fused (VGGT, DINOv2): one `qkv` projection with biases, optional per-head LayerNorm
      QK-norm (`qk_norm="layer"`) and 2D RoPE; self-attention only.
    - separate (LagerNVS renderer): bias-free `q_proj`, `k_proj`, `v_proj` and per-head
      RMSNorm QK-norm (`qk_norm="rms"`); also attends to a context, and through
      `queries`, `keys_values` and `attend` to cached or prefixed keys/values.

    Heads are split in the projections' own [b, n, nh, d] layout and normalised there
    (rows of d channels), then moved forward as a view. Queries may come in `g` times as
    many sequences as keys/values ([(b g), nh, n, d] against [b, nh, m, d]): the g query
    groups then share the keys/values without copying them, exact because queries are
    independent of each other.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        fused_qkv: bool = True,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: QKNorm | None = None,
        norm_eps: float = 1e-5,
        rope: RotaryEmbedding2D | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.fused_qkv = fused_qkv
        # Registration order is parameter order, by which saved optimizer states are indexed:
        # each layout keeps the order it had.
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
            self._add_qk_norm(qk_norm, dim // num_heads, norm_eps)
            self.proj = nn.Linear(dim, dim, bias=proj_bias)
        else:
            self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.proj = nn.Linear(dim, dim, bias=proj_bias)
            self._add_qk_norm(qk_norm, dim // num_heads, norm_eps)
        self.rope = rope

    def _add_qk_norm(self, kind: QKNorm | None, head_dim: int, eps: float) -> None:
        norms = {"layer": nn.LayerNorm, "rms": nn.RMSNorm}
        if kind is not None and kind not in norms:
            raise ValueError(f"qk_norm must be one of {sorted(norms)} or None, got {kind!r}")
        self.q_norm = None if kind is None else norms[kind](head_dim, eps=eps)
        self.k_norm = None if kind is None else norms[kind](head_dim, eps=eps)

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, positions: Tensor | None = None
    ) -> Tensor:
        """x [b, n, c] attends to itself, or to `context` [b, m, c] (both already normed)
        -> [b, n, c]. positions [b, n, 2]: x's (row, column), needed iff the layer has
        RoPE (`b` may be 1 to broadcast)."""
        if context is not None and (self.fused_qkv or self.rope is not None):
            raise ValueError("attending to a context needs separate q/k/v projections, no RoPE")
        if self.fused_qkv:
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # one projection for all three
            q, k, v = self._heads(q, self.q_norm), self._heads(k, self.k_norm), self._heads(v)
        else:
            q, (k, v) = self.queries(x), self.keys_values(x if context is None else context)
        if self.rope is not None:
            if positions is None:
                raise ValueError("this attention layer uses RoPE: expected positions, got None")
            q, k = self.rope(q, positions), self.rope(k, positions)
        return self.attend(q, k, v)

    def queries(self, x: Tensor) -> Tensor:
        """[b, n, c] normed tokens -> [b, nh, n, d] queries (separate projections)."""
        return self._heads(self.q_proj(x), self.q_norm)

    def keys_values(self, x: Tensor) -> KeyValue:
        """[b, n, c] normed tokens -> keys and values, each [b, nh, n, d] (separate
        projections)."""
        return self._heads(self.k_proj(x), self.k_norm), self._heads(self.v_proj(x))

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        bias: Tensor | None = None,
        prefix_kv: KeyValue | None = None,
    ) -> Tensor:
        """q [(b g), nh, n, d] against k, v [b, nh, m, d] -> projected output [(b g), n, c].

        With `prefix_kv`, keys/values [b, nh, m, d] of tokens that precede the queries'
        own and are shared by the g sequences of a batch entry, k and v are the queries'
        own [(b g), nh, n, d] and the queries attend to `[prefix, own]`. bias
        [(b g), nh, n, m] is added to the logits of the m context (or prefix) tokens.
        """
        if prefix_kv is not None:
            k, v, bias = _prepend(prefix_kv, k, v, bias)
        groups = q.shape[0] // k.shape[0]
        if k.dtype != q.dtype:  # keys/values cached without autocast
            k, v = k.to(q.dtype), v.to(q.dtype)
        if bias is not None:
            bias = bias.to(q.dtype)
        if groups == 1:  # the common case, without the (cheap but per-call) regrouping
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            return self.proj(out.transpose(1, 2).flatten(2))
        q = rearrange(q, "(b g) nh n d -> b nh (g n) d", g=groups)
        if bias is not None:
            bias = rearrange(bias, "(b g) nh n m -> b nh (g n) m", g=groups)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(rearrange(out, "b nh (g n) d -> (b g) n (nh d)", g=groups))

    def _heads(self, x: Tensor, norm: nn.Module | None = None) -> Tensor:
        """[b, n, (nh d)] -> [b, nh, n, d] as a view: heads are split in the [b, n, nh, d]
        layout, normalised there (rows of d, no copy for a layout change) and only then
        transposed."""
        x = x.unflatten(-1, (self.num_heads, -1))  # [b, n, nh, d], a view
        if isinstance(norm, nn.RMSNorm):
            # In float32 (fused kernel, no bf16 rounding), back to the compute dtype.
            normed = F.rms_norm(x.float(), norm.normalized_shape, norm.weight, norm.eps)
            x = normed if x.dtype == torch.float32 else normed.to(x.dtype)
        elif norm is not None:
            x = norm(x)
        return x.transpose(1, 2)


def _prepend(
    prefix_kv: KeyValue, k: Tensor, v: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Prefix keys/values [b, nh, m, d] before each group's own k, v [(b g), nh, n, d]
    -> [(b g), nh, m + n, d]; a prefix-only bias [(b g), nh, n, m] is zero-padded over
    the own tokens."""
    groups = k.shape[0] // prefix_kv[0].shape[0]
    k_pre, v_pre = (repeat(tensor, "b nh m d -> (b g) nh m d", g=groups) for tensor in prefix_kv)
    k = torch.cat([k_pre.to(k.dtype), k], dim=2)
    v = torch.cat([v_pre.to(v.dtype), v], dim=2)
    if bias is not None:
        bias = F.pad(bias, (0, k.shape[2] - bias.shape[-1]))
    return k, v, bias


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
            dim,
            num_heads=num_heads,
            qk_norm="layer" if qk_norm else None,
            norm_eps=norm_eps,
            rope=rope,
        )
        self.ls1 = LayerScale(dim, init_value=layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_dim=int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_value=layer_scale_init)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x [b n c], positions [b n 2] or None -> [b n c]."""
        x = x + self.ls1(self.attn(self.norm1(x), positions=positions))
        return x + self.ls2(self.mlp(self.norm2(x)))
