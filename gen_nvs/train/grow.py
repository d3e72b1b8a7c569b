"""Deepen a trained model's encoder without changing what it computes.

    python -m gen_nvs.train.grow --from EXPORT --encoder-depth 7 --out DIR

The VGGT aggregator gets new block pairs (a frame block and a global block each) between
its trained pairs, each residual branch's output projection (`attn.proj`, `mlp.fc2`) at
zero so that each new block starts as the identity (zero LayerScales would too, but a
per-channel gate over random features gets no consistent gradient: in a 900-step run
they stayed at 0.001 and the new blocks never turned on; a zero projection learns which
of them to use from the first step, as a LoRA's or a zero convolution's): the grown
export renders exactly as the one it came from, and training it (`model.init_from=DIR`,
the config's `model.encoder.depth` set to the new depth) adds capacity to a model
that has stopped improving without starting it over. The trained pairs keep their order
and the last one stays last, since the encoder's output is the last frame and global
blocks' outputs. A small-model option (it never touches the official presets).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from gen_nvs.models import checkpoint as ckpt
from gen_nvs.models.nvs import build_model, load_model

BLOCK_LISTS = ("encoder.aggregator.frame_blocks.", "encoder.aggregator.global_blocks.")
ZERO_INIT = ("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias")


def grown_order(old_depth: int, new_depth: int) -> list[int | None]:
    """Where the trained pairs go among new_depth: the old pair index at each new position,
    None for a new pair. New pairs spread over the gaps between trained pairs, first gaps
    first, and all sit before the last trained pair (old_depth 4, new_depth 7:
    [0, None, 1, None, 2, None, 3])."""
    if not 1 <= old_depth <= new_depth:
        raise ValueError(
            f"the encoder can only grow: new depth {new_depth} < current depth {old_depth}"
        )
    added, gaps = new_depth - old_depth, max(old_depth - 1, 1)
    order: list[int | None] = []
    for index in range(old_depth):
        if index == old_depth - 1 and old_depth == 1:
            order += [None] * added  # a single pair: all new pairs before it
        order.append(index)
        if index < old_depth - 1:
            order += [None] * (added // gaps + (index < added % gaps))
    return order


def grow_encoder(export: str | Path, new_depth: int, out: str | Path) -> Path:
    """Write `out`, an export of `export`'s model with `new_depth` aggregator block pairs
    (`grown_order`); new blocks freshly initialised but for their zero output projections
    (`ZERO_INIT`), the weights
    stored in the precision `export` stores them in. Returns `out`."""
    config, stored = ckpt.load_export(export)
    dtype = next(v.dtype for v in stored.values() if v.is_floating_point())  # as on disk
    model = load_model(export)
    old_depth = model.config.encoder.depth
    order = grown_order(old_depth, new_depth)
    grown_config = replace(model.config, encoder=replace(model.config.encoder, depth=new_depth))
    grown = build_model(grown_config)
    old_state, state = model.state_dict(), grown.state_dict()
    for key in state:
        if not key.startswith(BLOCK_LISTS):
            state[key] = old_state[key]
    for prefix in BLOCK_LISTS:
        for new_index, old_index in enumerate(order):
            new_prefix = f"{prefix}{new_index}."
            for key in [k for k in state if k.startswith(new_prefix)]:
                if old_index is not None:
                    state[key] = old_state[f"{prefix}{old_index}.{key[len(new_prefix) :]}"]
                elif key.endswith(ZERO_INIT):
                    state[key] = torch.zeros_like(state[key])
    grown.load_state_dict(state)
    info = {k: v for k, v in config.items() if k != "model"}
    info["grown_from"] = {"export": str(export), "encoder_depth": old_depth}
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return ckpt.save_export(out, weights, {"model": grown_config.to_dict(), **info})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gen_nvs.train.grow", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--from", dest="export", required=True, help="the export to grow")
    parser.add_argument("--encoder-depth", type=int, required=True, help="new block pairs")
    parser.add_argument("--out", required=True, help="the grown export's folder (new)")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        parser.error(f"--out {args.out} exists; give a new folder (nothing is overwritten)")
    try:
        out = grow_encoder(args.export, args.encoder_depth, args.out)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {out} (encoder depth {args.encoder_depth})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
