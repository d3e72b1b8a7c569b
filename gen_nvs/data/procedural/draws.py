"""Random draws for procedural scenes: one CPU `torch.Generator`, float64 host numbers, so
that a seed gives the same draws on any device."""

from __future__ import annotations

import torch


def uniform(gen: torch.Generator, low: float, high: float, n: int | None = None):
    """A float (n None) or a float64 tensor [n] uniform in [low, high]."""
    x = torch.rand(() if n is None else (n,), generator=gen, dtype=torch.float64)
    x = low + (high - low) * x
    return float(x) if n is None else x


def choice(gen: torch.Generator, options):
    """One of `options` (a sequence), uniformly."""
    return options[int(torch.randint(len(options), (), generator=gen))]
