"""The published renderer's block arithmetic, written out plainly: the yardstick of
`gen-nvs bench render --reference`.

One function per published variant renders targets with a HighwayDecoder's weights the
way the published code computes them: per target, no cache; heads split in the
[b, n, nh, d] layout, the per-head RMS qk-norm applied there, then the heads moved
forward for attention. It shares the decoder's ray embedding and RGB head (the same
conv and linear layers in both) and re-implements every block. `tests/test_bench_render`
checks that it equals the decoder, whose own arithmetic the golden fixtures check, so
timing one against the other compares two implementations of the same numbers.

Dimension legend:
    b   scenes x targets     n   tokens     c   channels     nh  heads     d   head channels
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gen_nvs.models.decoder import CrossAttentionBlock, HighwayDecoder, SelfAttentionBlock

REFERENCE_VARIANTS = ("full_attention", "cross_attention")


def reference_render(decoder: HighwayDecoder, source_tokens: Tensor, target_rays: Tensor) -> Tensor:
    """source_tokens [b, s, p, c], target_rays [b, t, 6, h, w] -> rgb [b, t, 3, h, w]."""
    if decoder.variant not in REFERENCE_VARIANTS:
        raise ValueError(
            f"the reference arithmetic covers {REFERENCE_VARIANTS}, not {decoder.variant!r}"
        )
    b, t, _, h, w = target_rays.shape
    sources = source_tokens.flatten(1, 2).repeat_interleave(t, dim=0)  # [(b t), m, c]
    patches = decoder.tgt_norm(decoder.tgt_embedder(target_rays.flatten(0, 1)))
    registers = decoder.per_view_register_tokens.expand(b * t, -1, -1)
    x = torch.cat([registers, patches], dim=1)
    m = sources.shape[1]
    for block in decoder.blocks:
        if isinstance(block, SelfAttentionBlock):  # full_attention: one joint sequence
            z = _self_attention_block(block, torch.cat([sources, x], dim=1))
            sources, x = z[:, :m], z[:, m:]
        else:
            x = _cross_attention_block(block, x, sources)
    x = x[:, decoder.num_registers :]
    grid = (h // decoder.patch_size, w // decoder.patch_size)
    return decoder.final_layer(x, grid).unflatten(0, (b, t))


def _self_attention_block(block: SelfAttentionBlock, z: Tensor) -> Tensor:
    h = block.norm1(z)
    z = z + _attention(block.attn, h, h)
    return z + _mlp(block.mlp, block.norm2(z))


def _cross_attention_block(block: CrossAttentionBlock, x: Tensor, sources: Tensor) -> Tensor:
    h = block.norm1(x)
    x = x + _attention(block.self_attn, h, h)
    x = x + _attention(block.cross_attn, block.norm2(x), block.norm2_kv(sources))
    return x + _mlp(block.mlp, block.norm_ffn(x))


def _attention(attn, queries: Tensor, context: Tensor) -> Tensor:
    """Published attention: q/k/v projections, heads split as [b, n, nh, d], RMS qk-norm
    over d in that layout, then [b, nh, n, d] for scaled dot-product attention."""
    nh = attn.num_heads
    q = attn.q_proj(queries).unflatten(-1, (nh, -1))
    k = attn.k_proj(context).unflatten(-1, (nh, -1))
    v = attn.v_proj(context).unflatten(-1, (nh, -1))
    q = F.rms_norm(q, q.shape[-1:], attn.q_norm.weight, attn.q_norm.eps)
    k = F.rms_norm(k, k.shape[-1:], attn.k_norm.weight, attn.k_norm.eps)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return attn.proj(out.transpose(1, 2).flatten(2))


def _mlp(mlp, x: Tensor) -> Tensor:
    return mlp.fc2(F.gelu(mlp.fc1(x)))
