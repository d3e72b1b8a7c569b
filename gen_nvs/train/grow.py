"""Deepen a trained model's encoder or decoder without changing what it computes.

    python -m gen_nvs.train.grow --from EXPORT --encoder-depth 7 --out DIR
    python -m gen_nvs.train.grow --from EXPORT --decoder-depth 8 --out DIR

The VGGT aggregator gets new block pairs (a frame block and a global block each) between
its trained pairs; the decoder gets new blocks between its trained ones (the diffusion
decoder, which mirrors the regression decoder block for block, the same ones, with
their adaLN-zero modulations at zero). Each new residual branch's output projection
(`proj`, `fc2`) starts at zero so that each new block starts as the identity (zero
LayerScales would too, but a per-channel gate over random features gets no consistent
gradient: in a 900-step run they stayed at 0.001 and the new blocks never turned on; a
zero projection learns which of them to use from the first step, as a LoRA's or a zero
convolution's): the grown export renders exactly as the one it came from, and training
it (`model.init_from=DIR`; the export's config carries the new depths) adds capacity to
a model that has stopped improving without starting it over. The trained blocks keep
their order and the last one stays last, since the encoder's output is its last frame
and global blocks' and the decoder's heads read its last block. A small-model option
(it never touches the official presets).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from gen_nvs.models import checkpoint as ckpt
from gen_nvs.models.nvs import build_model, load_model

ENCODER_BLOCKS = ("encoder.aggregator.frame_blocks.", "encoder.aggregator.global_blocks.")
DECODER_BLOCKS = (
    "decoder.renderer_core.renderer_blocks.",
    "diffusion.decoder.renderer_core.renderer_blocks.",
    "diffusion.block_modulation.",
)
# Per-block rows of one tensor: the ray bias's inverse temperatures [depth, heads].
DECODER_ROWS = ("decoder.ray_bias.log_beta", "diffusion.decoder.ray_bias.log_beta")
ZERO_INIT = (".proj.weight", ".proj.bias", ".fc2.weight", ".fc2.bias")


def grown_order(old_depth: int, new_depth: int) -> list[int | None]:
    """Where the trained blocks go among new_depth: the old block index at each new
    position, None for a new block. New blocks spread over the gaps between trained ones,
    first gaps first, and all sit before the last trained block (old_depth 4, new_depth 7:
    [0, None, 1, None, 2, None, 3])."""
    if not 1 <= old_depth <= new_depth:
        raise ValueError(f"a model can only grow: new depth {new_depth} < current {old_depth}")
    added, gaps = new_depth - old_depth, max(old_depth - 1, 1)
    order: list[int | None] = []
    for index in range(old_depth):
        if index == old_depth - 1 and old_depth == 1:
            order += [None] * added  # a single block: all new blocks before it
        order.append(index)
        if index < old_depth - 1:
            order += [None] * (added // gaps + (index < added % gaps))
    return order


def _place_blocks(
    state: dict, old_state: dict, prefixes: tuple[str, ...], order: list[int | None]
) -> None:
    """Fill `state`'s blocks under `prefixes` from `old_state`'s as `order` says; new
    blocks keep their fresh weights but for zero output projections (`ZERO_INIT`)."""
    for prefix in prefixes:
        for new_index, old_index in enumerate(order):
            new_prefix = f"{prefix}{new_index}."
            for key in [k for k in state if k.startswith(new_prefix)]:
                if old_index is not None:
                    state[key] = old_state[f"{prefix}{old_index}.{key[len(new_prefix) :]}"]
                elif key.endswith(ZERO_INIT):
                    state[key] = torch.zeros_like(state[key])


def grow_model(
    export: str | Path,
    out: str | Path,
    *,
    encoder_depth: int | None = None,
    decoder_depth: int | None = None,
) -> Path:
    """Write `out`, an export of `export`'s model with `encoder_depth` aggregator block
    pairs and `decoder_depth` decoder blocks (None: as it is; `grown_order` places the
    trained ones), the weights stored in the precision `export` stores them in. Returns
    `out`."""
    if encoder_depth is None and decoder_depth is None:
        raise ValueError("nothing to grow: give a new encoder depth, decoder depth or both")
    config, stored = ckpt.load_export(export)
    dtype = next(v.dtype for v in stored.values() if v.is_floating_point())  # as on disk
    model = load_model(export)
    old = model.config
    encoder_depth = old.encoder.depth if encoder_depth is None else encoder_depth
    decoder_depth = old.decoder.depth if decoder_depth is None else decoder_depth
    encoder_order = grown_order(old.encoder.depth, encoder_depth)
    decoder_order = grown_order(old.decoder.depth, decoder_depth)
    grown_config = replace(
        old,
        encoder=replace(old.encoder, depth=encoder_depth),
        decoder=replace(old.decoder, depth=decoder_depth),
    )
    grown = build_model(grown_config)
    old_state, state = model.state_dict(), grown.state_dict()
    for key in state:
        if not key.startswith(ENCODER_BLOCKS + DECODER_BLOCKS + DECODER_ROWS):
            state[key] = old_state[key]
    _place_blocks(state, old_state, ENCODER_BLOCKS, encoder_order)
    _place_blocks(state, old_state, DECODER_BLOCKS, decoder_order)
    for key in (k for k in DECODER_ROWS if k in state):
        for new_index, old_index in enumerate(decoder_order):
            if old_index is not None:
                state[key][new_index] = old_state[key][old_index]
    grown.load_state_dict(state)
    info = {k: v for k, v in config.items() if k != "model"}
    info["grown_from"] = {
        "export": str(export),
        "encoder_depth": old.encoder.depth,
        "decoder_depth": old.decoder.depth,
    }
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return ckpt.save_export(out, weights, {"model": grown_config.to_dict(), **info})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gen_nvs.train.grow", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--from", dest="export", required=True, help="the export to grow")
    parser.add_argument("--encoder-depth", type=int, help="new aggregator block pairs")
    parser.add_argument("--decoder-depth", type=int, help="new decoder blocks")
    parser.add_argument("--out", required=True, help="the grown export's folder (new)")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        parser.error(f"--out {args.out} exists; give a new folder (nothing is overwritten)")
    try:
        out = grow_model(
            args.export,
            args.out,
            encoder_depth=args.encoder_depth,
            decoder_depth=args.decoder_depth,
        )
    except ValueError as err:
        parser.error(str(err))
    grown = load_model(out).config
    print(f"wrote {out} (encoder depth {grown.encoder.depth}, decoder depth {grown.decoder.depth})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
