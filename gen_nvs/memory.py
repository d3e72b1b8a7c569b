"""How many diffusion samples fit in memory at once: a rough peak estimate per sample and
the memory sampling may use.

Dimension legend: `n` tokens of a target view, `m` source tokens of a scene, `c` width.
"""

from __future__ import annotations

import torch

from gen_nvs.models.diffusion import DiffusionDecoder
from gen_nvs.models.nvs import EncodedScene

# The memory sampling may use off the GPU when no budget is given.
DEFAULT_CPU_MEMORY_BUDGET = 8 * 2**30
# Rough activation copies per token of a transformer block (residual, norm, q/k/v, out).
_ACTIVATION_COPIES = 6
# Rows of per-pixel state the sampling loop holds (sample, known, mask, noise, history).
_SAMPLER_COPIES = 8


def estimate_sample_bytes(
    diffusion: DiffusionDecoder,
    num_source_tokens: int,
    image_hw: tuple[int, int],
    num_targets: int,
    guided: bool = False,
) -> int:
    """Rough peak memory (bytes, float32) one sample of `num_targets` target views of one
    scene needs during a denoising step: the target stream's activations and attention
    scores (for the variants that update the sources per target, their copies too), twice
    with guidance, plus the sampling loop's per-pixel state. Errs on the high side."""
    decoder = diffusion.decoder
    config = decoder.config
    h, w = image_hw
    n = (h // decoder.patch_size) * (w // decoder.patch_size) + decoder.num_registers
    m = num_source_tokens
    c, heads = decoder.width, config["num_heads"]
    hidden = int(c * config["mlp_ratio"])
    per_view = _ACTIVATION_COPIES * n * (c + hidden) + heads * n * (n + m)
    if not decoder.routing.cacheable_sources:
        per_view += _ACTIVATION_COPIES * m * (c + hidden) + heads * m * (n + m)
    network = per_view * (2 if guided else 1)
    state = _SAMPLER_COPIES * diffusion.noise_channels * h * w
    return 4 * num_targets * (network + state)


def available_memory(device: torch.device, memory_budget: int | None = None) -> int:
    """Bytes sampling may use on `device`: `memory_budget` when given, else the free GPU
    memory, or `DEFAULT_CPU_MEMORY_BUDGET` off the GPU."""
    if memory_budget is not None:
        return memory_budget
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return DEFAULT_CPU_MEMORY_BUDGET


def samples_per_batch(
    diffusion: DiffusionDecoder,
    scene: EncodedScene,
    image_hw: tuple[int, int],
    num_targets: int,
    num_samples: int,
    max_batch: int | None,
    guidance_scale: float,
    memory_budget: int | None,
) -> int:
    """Samples per sampler call for `num_targets` targets of each of the encoded scenes:
    `max_batch`, or (None) as many as fit the memory; ValueError, saying how many fit, when
    not even one does or `max_batch` do not."""
    cache = scene.diffusion_cache
    per_sample = cache.num_scenes * estimate_sample_bytes(
        diffusion, cache.num_source_tokens, image_hw, num_targets, guided=guidance_scale != 1
    )
    device = cache.context.tokens.device
    available = available_memory(device, memory_budget)
    fit = int(available // per_sample)
    if max_batch is None:
        batch = max(1, min(num_samples, fit))
    else:
        batch = min(max_batch, num_samples)
    if batch > fit:
        where = "free on the GPU" if device.type == "cuda" and memory_budget is None else "budget"
        advice = (
            "draw fewer target views or use a smaller size"
            if fit == 0
            else f"set max_batch (--max-batch) to at most {fit}, or leave it unset"
        )
        raise ValueError(
            f"{batch} sample(s) of {num_targets} target view(s) per batch need about "
            f"{_format_bytes(batch * per_sample)}, {_format_bytes(available)} {where}: "
            f"{fit} sample(s) fit; {advice}"
        )
    return batch


def _format_bytes(num: float) -> str:
    """Bytes as GiB, or MiB below one GiB."""
    return f"{num / 2**30:.2f} GiB" if num >= 2**30 else f"{num / 2**20:.1f} MiB"
