"""The shared attention layer in its two published layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from gen_nvs.models.layers import Attention, RotaryEmbedding2D


def separate_attention() -> Attention:
    torch.manual_seed(0)
    return Attention(
        16, num_heads=2, fused_qkv=False, qkv_bias=False, proj_bias=False, qk_norm="rms"
    )


def test_layouts_keep_their_checkpoint_names_in_order():
    # Parameter order is what saved optimizer states are indexed by.
    fused = Attention(16, num_heads=2, qk_norm="layer", rope=RotaryEmbedding2D())
    assert list(fused.state_dict()) == [
        "qkv.weight", "qkv.bias", "q_norm.weight", "q_norm.bias",
        "k_norm.weight", "k_norm.bias", "proj.weight", "proj.bias",
    ]  # fmt: skip
    assert list(separate_attention().state_dict()) == [
        "q_proj.weight", "k_proj.weight", "v_proj.weight", "proj.weight",
        "q_norm.weight", "k_norm.weight",
    ]  # fmt: skip
    assert list(Attention(16, num_heads=2).state_dict()) == [
        "qkv.weight",
        "qkv.bias",
        "proj.weight",
        "proj.bias",
    ]


def test_fused_self_attention_equals_its_projection_written_out():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qk_norm="layer")
    x = torch.randn(3, 5, 16)
    q, k, v = rearrange(attn.qkv(x), "b n (three nh d) -> three b nh n d", three=3, nh=2)
    out = F.scaled_dot_product_attention(attn.q_norm(q), attn.k_norm(k), v)
    expected = attn.proj(rearrange(out, "b nh n d -> b n (nh d)"))
    assert (attn(x) - expected).abs().max() < 1e-6


def test_prefix_and_groups_equal_attention_over_copied_tokens():
    attn = separate_attention()
    g = torch.Generator().manual_seed(1)
    prefix, x = torch.randn(2, 4, 16, generator=g), torch.randn(6, 3, 16, generator=g)
    bias = torch.randn(6, 2, 3, 4, generator=g)  # over the prefix only
    with torch.no_grad():
        own_kv = attn.keys_values(x)
        out = attn.attend(attn.queries(x), *own_kv, bias=bias, prefix_kv=attn.keys_values(prefix))
        # Spelled out: each of the 3 sequences per batch entry gets its prefix copied.
        joint = torch.cat([repeat(prefix, "b m c -> (b g) m c", g=3), x], dim=1)
        k, v = attn.keys_values(joint)
        mask = F.pad(bias, (0, 3))
        q = attn.queries(x)
        expected = attn.proj(
            rearrange(
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask), "b nh n d -> b n (nh d)"
            )
        )
        grouped = attn.attend(q, *attn.keys_values(prefix))  # 3 query groups share the prefix
        copied = attn(x, repeat(prefix, "b m c -> (b g) m c", g=3))
    assert (out - expected).abs().max() < 1e-5
    assert (grouped - copied).abs().max() < 1e-5
    assert (out - grouped).abs().max() > 1e-3  # the own tokens and the bias do count


def test_context_needs_the_separate_layout_without_rope():
    fused = Attention(16, num_heads=2)
    x = torch.randn(1, 3, 16)
    with pytest.raises(ValueError, match="context needs separate q/k/v projections"):
        fused(x, x)
    rope = Attention(16, num_heads=2, rope=RotaryEmbedding2D())
    with pytest.raises(ValueError, match="expected positions"):
        rope(x)
    with pytest.raises(ValueError, match="qk_norm must be one of"):
        Attention(16, num_heads=2, qk_norm="batch")
