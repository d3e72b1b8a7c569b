"""`ProceduralDataset`: procedural scenes as `SceneSample`s, rendered on the fly."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from gen_nvs.data.procedural.config import SceneConfig
from gen_nvs.data.procedural.render import generate_scene
from gen_nvs.data.scene import SceneSample

# Seeds the source/target split of dataset items apart from the scenes' own seeds.
_SPLIT_SEED_OFFSET = 1 << 40


class ProceduralDataset(Dataset):
    """Item i: procedural scene `seed + i` as a `SceneSample`, sources first.

    `num_sources + num_targets` views are rendered along the scene's rig; a random
    subset of them (drawn from the item's own generator) are the sources, the others
    the targets, so targets both interpolate and extrapolate the sources.
    """

    def __init__(
        self,
        num_scenes: int,
        num_sources: int = 2,
        num_targets: int = 2,
        image_hw: tuple[int, int] = (128, 128),
        config: SceneConfig | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_scenes < 1 or num_sources < 1 or num_targets < 0:
            raise ValueError(
                f"need num_scenes >= 1, num_sources >= 1, num_targets >= 0, got "
                f"{num_scenes}, {num_sources}, {num_targets}"
            )
        self.num_scenes = num_scenes
        self.num_sources = num_sources
        self.num_targets = num_targets
        self.image_hw = tuple(image_hw)
        self.config = SceneConfig() if config is None else config
        self.seed = seed
        self.device = device

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> SceneSample:
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"index {index} out of range for {self.num_scenes} scenes")
        seed = self.seed + index
        num_views = self.num_sources + self.num_targets
        views = generate_scene(seed, num_views, self.image_hw, self.config, self.device)
        # A separate stream for the split, so that it does not perturb the scene's draws.
        split = torch.Generator().manual_seed(seed + _SPLIT_SEED_OFFSET)
        order = torch.randperm(num_views, generator=split).tolist()
        sources = sorted(order[: self.num_sources])
        targets = sorted(order[self.num_sources :])
        return views.to_sample(self.num_sources, sources + targets)
