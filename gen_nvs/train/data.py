"""Training data: datasets from the config, a weighted mixture, and a seeded batch order.

`data.datasets` maps a name to one dataset entry: `type` (a key of DATASET_TYPES),
`weight` (its share of the drawn scenes; 0 leaves it out) and the type's options (the
keys of its DATASET_TYPES entry, defaults there). Every dataset yields scenes with the
same view layout: `max(num_sources)` sources first, then `num_targets` targets, at
`image_size`; the training step picks each batch's source count from them.

The batch order is a pure function of (seed, micro-batch index, process rank): batch k
draws its datasets by weight and its scenes uniformly from a generator seeded by those
three numbers, and each scene draws its views with its own seed. Resuming at step n
therefore continues exactly where an uninterrupted run would be, without any loader
state, and two processes never see the same stream.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gen_nvs.data import (
    NerfstudioDataset,
    NerfstudioReader,
    PixelSplatDataset,
    PixelSplatReader,
    RE10KDataset,
    RE10KReader,
    SceneBatch,
    ViewSampledDataset,
    collate_scenes,
)
from gen_nvs.data.procedural import ProceduralDataset, SceneConfig
from gen_nvs.geometry.cameras import center_crop_box

# type -> options and their defaults (`type` and `weight` are common to all).
DATASET_TYPES: dict[str, dict[str, Any]] = {
    # Procedural scenes rendered on the fly: item i is scene `seed + i`.
    "procedural": {"num_scenes": 1_000_000, "seed": 0, "scene": {}},
    # The processed RealEstate10K layout (also what `gen-nvs make-scenes` writes).
    # list_file null lists metadata/*.json instead of reading full_list.txt.
    # target_margin (frames, off in the published setups): targets may also lie up to
    # that far beyond the sources' window (`gen_nvs.data.sample_views`).
    "re10k": {
        "root": None, "list_file": "full_list.txt", "frame_gap": [2, 8], "load_depth": True,
        "target_margin": 0,
    },
    "pixelsplat": {"root": None, "frame_gap": [2, 8], "target_margin": 0},
    "nerfstudio": {"root": None, "frame_gap": [2, 8], "image_folder": None, "target_margin": 0},
}  # fmt: skip


def dataset_entries(data_config: dict) -> dict[str, dict]:
    """Every used entry of `data.datasets` with defaults filled in; ValueError for an
    unknown type or key (naming the nearest valid one), a negative weight or none used."""
    entries = {}
    for name, entry in data_config["datasets"].items():
        where = f"data.datasets.{name}"
        if not isinstance(entry, dict) or "type" not in entry:
            raise ValueError(f"{where} needs a 'type' (one of {list(DATASET_TYPES)})")
        kind = entry["type"]
        if kind not in DATASET_TYPES:
            raise ValueError(
                f"{where}.type: unknown dataset type {kind!r}{_nearest(kind, DATASET_TYPES)}"
            )
        allowed = {"type": kind, "weight": 1.0, **DATASET_TYPES[kind]}
        for key in entry:
            if key not in allowed:
                raise ValueError(
                    f"unknown config key '{where}.{key}' for a {kind} dataset"
                    f"{_nearest(key, allowed, f'{where}.')}"
                )
        full = {**allowed, **entry}
        if full["weight"] < 0:
            raise ValueError(f"{where}.weight must be >= 0, got {full['weight']}")
        if "root" in full and not full["root"]:
            raise ValueError(f"{where}.root: a {kind} dataset needs its data directory")
        if full["weight"] > 0:
            entries[name] = full
    if not entries:
        raise ValueError(
            "no training data: data.datasets has no entry with weight > 0 (e.g. "
            "data.datasets.procedural.type=procedural)"
        )
    return entries


def _nearest(name: str, options, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.0)
    return f"; did you mean {prefix}{close[0]!r}?" if close else ""


def view_counts(data_config: dict) -> tuple[int, int, int]:
    """(fewest sources, most sources, targets) of the config, checked."""
    low, high = _range(data_config["num_sources"], "data.num_sources")
    targets = data_config["num_targets"]
    if low < 1 or targets < 1:
        raise ValueError(
            f"need data.num_sources >= 1 and data.num_targets >= 1, got "
            f"{data_config['num_sources']} and {targets}"
        )
    return low, high, targets


def _range(value, name: str) -> tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else tuple(value)
    if low > high:
        raise ValueError(f"{name}: empty range [{low}, {high}]")
    return int(low), int(high)


def build_dataset(name: str, entry: dict, data_config: dict) -> Dataset:
    """One dataset of the mixture, checked: a data path without scenes and images smaller
    than `data.image_size` are ValueErrors here, before training."""
    _, sources, targets = view_counts(data_config)
    image_hw = tuple(data_config["image_size"])
    where = f"data.datasets.{name}"
    kind = entry["type"]
    if kind == "procedural":
        try:
            scene = SceneConfig(**{k: _tuple(v) for k, v in entry["scene"].items()})
        except TypeError as err:
            raise ValueError(f"{where}.scene: {err}") from err
        return ProceduralDataset(
            entry["num_scenes"], sources, targets, image_hw, scene, seed=entry["seed"]
        )
    root = Path(entry["root"]).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{where}.root: {root} does not exist")
    if entry["target_margin"] < 0:
        raise ValueError(f"{where}.target_margin must be >= 0, got {entry['target_margin']}")
    common = dict(
        num_sources=sources, num_targets=targets, frame_gap=tuple(entry["frame_gap"]),
        target_margin=entry["target_margin"],
    )  # fmt: skip
    if kind == "re10k":
        options = {"list_file": entry["list_file"]}
        probe = RE10KReader(root, None, load_depth=False, **options)
        make = RE10KDataset
        options["load_depth"] = entry["load_depth"]
    elif kind == "pixelsplat":
        options = {}
        probe, make = PixelSplatReader(root, None), PixelSplatDataset
    else:
        options = {"image_folder": entry["image_folder"]}
        probe, make = NerfstudioReader(root, None, **options), NerfstudioDataset
    _check_scenes(probe, root, image_hw, where)
    return make(root, image_hw, **common, **options)


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


def _check_scenes(reader, root: Path, image_hw: tuple[int, int], where: str) -> None:
    """A reader must list scenes, and its first frame must cover `image_hw` after the
    centre crop (training never upsamples)."""
    if not reader.scene_names:
        raise ValueError(f"{where}: no scenes found under {root}")
    first = reader.scene_names[0]
    stored = tuple(reader.load(first, [0], num_sources=1).images.shape[-2:])
    _, _, crop_h, crop_w = center_crop_box(stored, image_hw)
    if crop_h < image_hw[0] or crop_w < image_hw[1]:
        raise ValueError(
            f"{where}: images in {root} are {stored[0]}x{stored[1]} (scene {first}), smaller "
            f"than data.image_size {image_hw[0]}x{image_hw[1]} (after a centre crop to its "
            f"aspect: {crop_h}x{crop_w}); lower data.image_size or use larger images"
        )


class MixtureDataset(Dataset):
    """Several datasets behind one index: item (dataset, index, draw) is item `index` of
    dataset `dataset`, with views drawn for `draw` (see `StepBatchSampler`)."""

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float]) -> None:
        self.datasets = list(datasets)
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.sizes = [len(d) for d in self.datasets]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, key: tuple[int, int, int]):
        dataset, index, draw = key
        ds = self.datasets[dataset]
        if isinstance(ds, ViewSampledDataset):
            ds.set_epoch(draw)  # each visit of a scene draws new views
        return ds[index]


def batch_seed(seed: int, micro_batch: int, rank: int, stream: int = 0) -> int:
    """The seed of one process's micro-batch (NumPy's SeedSequence mixes the numbers);
    `stream` tells apart draws for other purposes (0: the data order)."""
    state = np.random.SeedSequence([seed, micro_batch, rank, stream]).generate_state(1, np.uint64)
    return int(state[0]) % 2**63


class StepBatchSampler(Sampler):
    """Keys of micro-batches `start` .. `stop - 1` of process `rank`: each a list of
    `batch_size` (dataset, index, draw) keys for `MixtureDataset`, drawn from
    `batch_seed(seed, k, rank)` only."""

    def __init__(
        self,
        mixture: MixtureDataset,
        batch_size: int,
        seed: int,
        rank: int,
        start: int,
        stop: int,
    ) -> None:
        self.mixture = mixture
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for k in range(self.start, self.stop):
            yield self.keys(k)

    def keys(self, k: int) -> list[tuple[int, int, int]]:
        gen = torch.Generator().manual_seed(batch_seed(self.seed, k, self.rank))
        which = torch.multinomial(self.mixture.weights, self.batch_size, True, generator=gen)
        keys = []
        for d in which.tolist():
            index = int(torch.randint(self.mixture.sizes[d], (), generator=gen))
            keys.append((d, index, k))
        return keys


class TrainingData:
    """The config's datasets as a seeded stream of `SceneBatch`es for one process."""

    def __init__(self, data_config: dict, *, batch_size: int, seed: int, rank: int) -> None:
        self.config = data_config
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        view_counts(data_config)
        entries = dataset_entries(data_config)
        self.names = list(entries)
        datasets = [build_dataset(name, entry, data_config) for name, entry in entries.items()]
        self.mixture = MixtureDataset(datasets, [e["weight"] for e in entries.values()])

    def batches(self, start: int, stop: int) -> DataLoader:
        """A loader of micro-batches start .. stop - 1 (SceneBatch each)."""
        sampler = StepBatchSampler(self.mixture, self.batch_size, self.seed, self.rank, start, stop)
        workers = self.config["num_workers"]
        return DataLoader(
            self.mixture,
            batch_sampler=sampler,
            collate_fn=collate_scenes,
            num_workers=workers,
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )

    def fixed_batch(self, size: int) -> SceneBatch:
        """A batch for evaluation images: the same scenes every time (its own seed)."""
        sampler = StepBatchSampler(self.mixture, size, self.seed + 1, 0, 0, 1)
        return collate_scenes([self.mixture[key] for key in sampler.keys(0)])
