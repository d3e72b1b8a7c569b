"""Evaluation indices: which frames of each scene are context and which are targets.

An index file is `{scene: {"context": [frame indices], "target": [frame indices]}}`;
a `null` entry marks a scene the published split leaves out and is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from gen_nvs.data.scene import SceneReader, SceneSample


@dataclass(frozen=True)
class EvalEntry:
    scene: str
    context: tuple[int, ...]
    target: tuple[int, ...]


def _frame_list(value, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of frame indices, got {value!r}")
    for i in value:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"{where}: frame indices must be non-negative integers, got {i!r}")
    return tuple(value)


class EvalIndex:
    """The entries of one index file, in file order, null entries skipped.

    Iterating yields `EvalEntry(scene, context, target)`; `skipped` lists the scenes
    whose entry was null.
    """

    def __init__(self, entries: list[EvalEntry], path: str | Path, skipped: list[str]) -> None:
        self.entries = entries
        self.path = Path(path)
        self.skipped = skipped

    @classmethod
    def load(cls, path: str | Path) -> EvalIndex:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation index not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object mapping scenes to entries")
        entries, skipped = [], []
        for scene, entry in data.items():
            if entry is None:
                skipped.append(scene)
                continue
            where = f"{path}: scene {scene}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected {{'context': [...], 'target': [...]}} or null")
            context = _frame_list(entry.get("context"), f"{where}: context")
            target = _frame_list(entry.get("target"), f"{where}: target")
            entries.append(EvalEntry(scene, context, target))
        return cls(entries, path, skipped)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> EvalEntry:
        return self.entries[i]

    def __iter__(self) -> Iterator[EvalEntry]:
        return iter(self.entries)


class EvalDataset(Dataset):
    """SceneSamples of an evaluation index: sources = context frames, targets = target
    frames, in the index's order.

    Args:
        reader: any scene reader (or a dataset holding one as `.reader`).
        index: an `EvalIndex` or the path of an index file.
        skip_missing_scenes: leave out index scenes the reader does not have (listed
            in `missing`) instead of raising ValueError.
        reader_order: visit the scenes in the reader's order rather than the index's;
            with chunked storage (pixelSplat) each chunk is then read once.
    """

    def __init__(
        self,
        reader: SceneReader,
        index: EvalIndex | str | Path,
        skip_missing_scenes: bool = False,
        reader_order: bool = False,
    ) -> None:
        self.reader = getattr(reader, "reader", reader)
        self.index = index if isinstance(index, EvalIndex) else EvalIndex.load(index)
        available = set(self.reader.scene_names)
        self.missing = [e.scene for e in self.index if e.scene not in available]
        if self.missing and not skip_missing_scenes:
            shown = ", ".join(self.missing[:5]) + (" ..." if len(self.missing) > 5 else "")
            raise ValueError(
                f"{self.index.path}: {len(self.missing)} scene(s) not in the dataset: {shown}"
            )
        self.entries = [e for e in self.index if e.scene in available]
        if reader_order:
            position = {name: i for i, name in enumerate(self.reader.scene_names)}
            self.entries.sort(key=lambda e: position[e.scene])

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> SceneSample:
        entry = self.entries[i]
        num_frames = self.reader.num_frames(entry.scene)
        for role, frames in (("context", entry.context), ("target", entry.target)):
            for frame in frames:
                if frame >= num_frames:
                    raise ValueError(
                        f"{self.index.path}: scene {entry.scene}: {role} frame {frame} does not "
                        f"exist (the scene has {num_frames} frames)"
                    )
        frames = list(entry.context) + list(entry.target)
        return self.reader.load(entry.scene, frames, num_sources=len(entry.context))
