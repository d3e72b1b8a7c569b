"""Exponential moving average of the trained parameters, part of the training state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """Float32 shadows of a model's trainable parameters.

    The decay warms up as `min(decay, (1 + n) / (10 + n))` after n updates, so early
    averages are not dominated by the initial weights. `state_dict`/`load_state_dict`
    make it an Accelerate checkpointing object; `applied` swaps the averages in (for
    evaluation and the export).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {
            name: p.detach().float().clone()
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    def _params(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        params = dict(model.named_parameters())
        for name in self.shadow:
            yield name, params[name]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, p in self._params(model):
            self.shadow[name].lerp_(p.detach().float(), 1 - decay)

    @contextmanager
    def applied(self, model: nn.Module):
        """Use the averaged weights inside the block (evaluation), then restore."""
        saved = {name: p.detach().clone() for name, p in self._params(model)}
        with torch.no_grad():
            for name, p in self._params(model):
                p.copy_(self.shadow[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in self._params(model):
                    p.copy_(saved[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        mine = {k: tuple(v.shape) for k, v in self.shadow.items()}
        theirs = {k: tuple(v.shape) for k, v in shadow.items()}
        if mine != theirs:
            raise ValueError(
                "the checkpoint's EMA does not fit this model's trainable parameters "
                f"({len(theirs)} tensors saved, {len(mine)} expected; another model size or "
                "another set of frozen parts?)"
            )
        self.num_updates = int(state["num_updates"])
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
