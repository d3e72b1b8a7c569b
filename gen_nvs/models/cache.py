"""Encode a scene once, render any number of target views against it.

What can be cached is the renderer variant's (`DecoderVariant.cacheable_sources`):
- `cross_attention`: the sources are the fixed encoder tokens, so every block's source
  keys/values are computed once.
- `causal`: the source stream never sees a target, so every block's source keys/values
  (of the sources updated up to that block) are computed once.
- `full_attention`, `bidirectional_cross_attention`: the sources are updated by each
  target, so only the encoder tokens are kept and every target redoes the blocks.

Rendering from the cache equals rendering all targets at once with the decoder: targets
are independent views, and chunking only changes how many are rendered per call.

Dimension legend:
    b   scenes (batch)      t   target views per scene
    s   source views        p   tokens per source view
    c   channels            h, w    target image height / width
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

import torch
from torch import Tensor

from gen_nvs.models.decoder import DecoderOutput, HighwayDecoder, SourceContext


class SceneCache:
    """A scene's sources prepared once for a HighwayDecoder.

    Build it with `SceneCache.build(decoder, source_tokens)`; the grad mode is the
    caller's (wrap build and render in `torch.inference_mode()` for plain rendering),
    and a cache built under autocast holds keys/values in the autocast dtype.
    """

    def __init__(self, decoder: HighwayDecoder, context: SourceContext) -> None:
        self.decoder = decoder
        self.context = context

    @classmethod
    def build(
        cls, decoder: HighwayDecoder, source_tokens: Tensor, source_rays: Tensor | None = None
    ) -> SceneCache:
        """Encoder tokens [b, s, p, c] of the source views (and their rays [b, s, p, 6] for
        a decoder with the `ray_bias` option) -> cache for b scenes."""
        return cls(decoder, decoder.prepare_sources(source_tokens, source_rays))

    @property
    def num_scenes(self) -> int:
        return self.context.tokens.shape[0]

    @property
    def num_source_tokens(self) -> int:
        return self.context.tokens.shape[1]

    def render(
        self,
        target_rays: Tensor,
        *,
        chunk_size: int | None = None,
        progress: Callable[[float], object] | None = None,
        out_device: torch.device | str | None = None,
        postprocess: Callable[[DecoderOutput, slice], DecoderOutput] | None = None,
    ) -> DecoderOutput:
        """Targets [b, t, 6, h, w] -> DecoderOutput (rgb [b, t, 3, h, w], ...).

        `chunk_size` target views per scene are rendered per decoder call (all at once
        when None), which bounds the memory of the per-target source copies; the one
        chunked-render loop of the project. `progress(fraction)` is called before each
        chunk; `postprocess(output, targets)` maps each chunk's output (of the targets
        in the slice `targets`) before it goes to `out_device` (the latent mode decodes
        the latents to rgb there, the warp refiner refines: `NVSModel.render`);
        `out_device` receives each chunk's output as it is done (e.g. "cpu", so that a
        long trajectory never holds all its views on the GPU).
        """
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if target_rays.ndim != 5:
            raise ValueError(f"target rays must be [b, t, 6, h, w], got {list(target_rays.shape)}")
        num_targets = target_rays.shape[1]
        step = num_targets if chunk_size is None else chunk_size
        chunks = []
        for start in range(0, num_targets, step):
            if progress is not None:
                progress(start / num_targets)
            targets = slice(start, start + step)
            chunk = self.decoder.render(self.context, target_rays[:, targets])
            if postprocess is not None:
                chunk = postprocess(chunk, targets)
            chunks.append(chunk if out_device is None else chunk.to(out_device))
        return DecoderOutput(
            **{
                f.name: _cat_optional([getattr(chunk, f.name) for chunk in chunks])
                for f in fields(DecoderOutput)
            }
        )

    def memory_bytes(self) -> int:
        """Bytes held by the cache: encoder tokens plus per-block source keys/values."""
        return self._token_bytes() + self._kv_bytes()

    def memory_report(self) -> str:
        """One readable line on what the cache holds and its size."""
        tokens = self.context.tokens
        parts = [f"encoder tokens {_format_bytes(self._token_bytes())}"]
        if self.context.kv:
            parts.append(
                f"source k/v of {len(self.context.kv)} blocks {_format_bytes(self._kv_bytes())}"
            )
        return (
            f"SceneCache({self.decoder.variant}, {self.num_scenes} scene(s) x "
            f"{self.num_source_tokens} source tokens, {str(tokens.dtype).removeprefix('torch.')}"
            f"): {' + '.join(parts)} = {_format_bytes(self.memory_bytes())}"
        )

    def __repr__(self) -> str:
        return self.memory_report()

    def _token_bytes(self) -> int:
        return _nbytes(self.context.tokens)

    def _kv_bytes(self) -> int:
        return sum(_nbytes(k) + _nbytes(v) for k, v in self.context.kv)


def _nbytes(x: Tensor) -> int:
    return x.numel() * x.element_size()


def _cat_optional(chunks: list[Tensor | None]) -> Tensor | None:
    return None if chunks[0] is None else torch.cat(chunks, dim=1)


def _format_bytes(num: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if num < 1024:
            return f"{num:.1f} {unit}" if unit != "B" else f"{num} B"
        num /= 1024
    return f"{num:.2f} GiB"
