"""Evaluate a model on a dataset of scenes: regression metrics, diffusion samples, and
both split by what the source views saw.

For every scene (a `SceneSample`, sources first) the pipeline (`gen_nvs.pipeline.
NVSPipeline`) encodes the sources once and renders the targets once (a few per decoder
call), and the sources once where their predicted geometry is needed. Targets are split
into the region some source saw and the unseen region: from the dataset's depth when it
has depth (`rgbd.unseen_mask` with the ground truth), else from the model's own
predicted points (`NVSPipeline.unseen`, as the sampler's "auto" mask). A target may be
its own source (the copy probe, `configs/eval/procedural64-copy.json`): its unseen
region is then empty, and so has no metrics. When the split comes from depth and the
model has a point head, the model's own unseen estimate (the sampler's "auto" mask) is
also scored against it: IoU and the share of pixels each marks unseen. A model that can
sample also draws N samples per target from the same renders; they are scored one by
one, then summarised as the mean over samples, the best of N (per metric: highest PSNR /
SSIM, lowest LPIPS), and the samples' diversity (mean pairwise LPIPS and RMS pixel
distance). `generated_fraction` records how much of each target the sampler generated:
with mask mode "auto" it keeps the regression render where the model itself finds the
target seen, so the samples differ only in the rest.

Results: one JSON (`results.json`) with the per-target values, per-scene means (over
targets), overall means (over scenes, as LVSM averages its per-scene summaries) and
overall medians (over all targets: ratios such as sharpness are heavy-tailed, a target
whose region is nearly flat in the truth can score 15x), together with the model,
dataset and settings; and one PNG grid per scene, a row per target: sources | target |
regression | samples | unseen mask (white = unseen).

Each target also records its `view_change` from the nearest source (`view_change`:
baseline, rotation and, with depth, parallax), by which `python -m gen_nvs.eval.breakdown`
groups the results.

Per-image PSNR is capped at `PSNR_MAX_DB` so that means stay finite (a perfect
prediction scores exactly that). Values that do not exist (a region with no pixels,
LPIPS without VGG weights, diversity of one sample) are `null` and left out of means; a
region with no pixels in a target is `null` as a whole, listed in the target's
`empty_regions` and counted, with the reason, in the results' `empty_regions`.

Dimension legend: `v` views, `s` sources, `t` targets, `n` samples, `h`/`w` image size.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from gen_nvs.data.scene import SceneReader, SceneSample
from gen_nvs.eval import metrics
from gen_nvs.geometry.rgbd import unseen_mask
from gen_nvs.inputs import SourceViews, TargetCameras
from gen_nvs.models.nvs import NVSModel
from gen_nvs.pipeline import NVSPipeline, Scene, Views
from gen_nvs.sampling import SamplingConfig, check_sampling_options
from gen_nvs.unseen import PREDICTED_REL_TOL, check_mask_tolerance
from samplers.sampling import check_seeds

PSNR_MAX_DB = 100.0
RESULTS_FILE = "results.json"
GRID_DIR = "grids"
REGIONS = ("seen", "unseen")
EMPTY_REGION_REASON = (
    "a region with no pixels in a target (e.g. the unseen region when the targets are the "
    "sources) has no metrics: null there and left out of the means"
)
MASK_ESTIMATE = (
    "the model's unseen region as the sampler's 'auto' mask finds it (gen_nvs.unseen."
    "unseen_region, before its soft edge) against the one the dataset's depth gives"
)
# Best of N: the direction in which each metric improves.
BEST_OF = {"psnr": torch.amax, "ssim": torch.amax, "lpips": torch.amin}

Tree = dict[str, Any]  # nested dicts whose leaves are tensors, floats or None


@dataclass
class SamplingSettings:
    """How the diffusion samples are drawn (`NVSPipeline.sample`'s config and max_batch).

    Scene i's samples use seed `seed + i * num_samples`, so a scene's samples do not
    depend on which other scenes are evaluated after it.
    """

    num_samples: int = SamplingConfig.samples
    steps: int = SamplingConfig.steps
    scheduler: str = SamplingConfig.sampler
    guidance_scale: float = SamplingConfig.guidance
    mask_mode: str = SamplingConfig.mask
    seed: int = SamplingConfig.seed
    max_batch: int | None = None
    patch_shift: bool = SamplingConfig.patch_shift

    def config(self, seed: int) -> SamplingConfig:
        """The pipeline's sampling options, with sample k at seed `seed + k`."""
        return SamplingConfig(
            sampler=self.scheduler,
            steps=self.steps,
            guidance=self.guidance_scale,
            samples=self.num_samples,
            seed=seed,
            mask=self.mask_mode,
            patch_shift=self.patch_shift,
        )

    def __post_init__(self) -> None:
        check_sampling_options(
            scheduler=self.scheduler,
            steps=self.steps,
            num_samples=self.num_samples,
            seed=self.seed,
            guidance_scale=self.guidance_scale,
            mask_mode=self.mask_mode,
            max_batch=self.max_batch,
            patch_shift=self.patch_shift,
        )


class FirstViewsDataset(Dataset):
    """Every scene of a reader with its frames in order: the first `num_sources` are the
    sources, the following ones the targets; at most `max_targets` of them, evenly spaced
    (the first and the last included), when given.

    For datasets without an evaluation index. Raises ValueError up front when a scene
    has no frame left for a target.
    """

    def __init__(
        self, reader: SceneReader, num_sources: int, max_targets: int | None = None
    ) -> None:
        if num_sources < 1:
            raise ValueError(f"num_sources must be >= 1, got {num_sources}")
        if max_targets is not None and max_targets < 1:
            raise ValueError(f"max_targets must be >= 1, got {max_targets}")
        self.reader = reader
        self.num_sources = num_sources
        self.max_targets = max_targets
        self.num_frames = {name: reader.num_frames(name) for name in reader.scene_names}
        short = [name for name, n in self.num_frames.items() if n <= num_sources]
        if short:
            shown = ", ".join(short[:5]) + (" ..." if len(short) > 5 else "")
            raise ValueError(
                f"{len(short)} scene(s) have no frame left for a target after "
                f"{num_sources} source(s): {shown}"
            )

    def __len__(self) -> int:
        return len(self.num_frames)

    def __getitem__(self, i: int) -> SceneSample:
        scene = self.reader.scene_names[i]
        rest = self.num_frames[scene] - self.num_sources
        count = rest if self.max_targets is None else min(rest, self.max_targets)
        targets = [self.num_sources + j for j in evenly_spaced(count, rest)]
        frames = [*range(self.num_sources), *targets]
        return self.reader.load(scene, frames, num_sources=self.num_sources)


def evenly_spaced(count: int, total: int) -> list[int]:
    """`count` (1..total) increasing indices into range(total), evenly spaced, the first
    and (for count > 1) the last included."""
    if count == 1:
        return [0]
    return [j * (total - 1) // (count - 1) for j in range(count)]


# --------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------


def unseen_masks(
    pipe: NVSPipeline,
    scene: Scene,
    sample: SceneSample,
    rel_tol: float = 0.02,
    *,
    views: Views | None = None,
    mask_tolerance: float = PREDICTED_REL_TOL,
) -> tuple[Tensor | None, str | None]:
    """Which target pixels no source saw -> (bool [t, h, w] or None, how it was found).

    "depth": the sample's depth (invalid pixels count as unseen in the target and as
    seeing nothing in the sources), tested with `rel_tol`. "predicted_points": the
    model's point maps of the targets tested against the sources'
    (`NVSPipeline.unseen`, the sampler's "auto" mask, with its own tolerance for
    predicted depth, `mask_tolerance`).
    (None, None) without depth and without a point head.

    scene: `pipe.encode` of the sample's sources. views: `pipe.render` of the targets
    when the caller has it; None: rendered here when needed.
    """
    s = sample.num_sources
    c2w, fxfycxcy = sample.c2w, sample.fxfycxcy
    if sample.has_depth:
        depth = torch.where(sample.depth_valid, sample.depth, torch.zeros_like(sample.depth))
        masks = [
            unseen_mask(c2w[k], fxfycxcy[k], depth[k], c2w[:s], fxfycxcy[:s], depth[:s], rel_tol)
            for k in range(s, sample.num_views)
        ]
        return torch.stack(masks), "depth"
    unseen = predicted_unseen_masks(pipe, scene, sample, mask_tolerance, views=views)
    return (None, None) if unseen is None else (unseen, "predicted_points")


def predicted_unseen_masks(
    pipe: NVSPipeline,
    scene: Scene,
    sample: SceneSample,
    mask_tolerance: float = PREDICTED_REL_TOL,
    *,
    views: Views | None = None,
) -> Tensor | None:
    """The target pixels the model finds no source saw -> bool [t, h, w], or None without
    a point head: the sampler's "auto" mask (`NVSPipeline.unseen`; sampling then softens
    its edge), from the model's point maps of the targets tested against the sources'.
    Arguments as for `unseen_masks`; the sample's depth is not used.
    """
    targets = _targets(sample)
    if views is None:
        views = pipe.render(scene, targets, out_device=pipe.device)
    return pipe.unseen(scene, targets, views, mask_tolerance)


# --------------------------------------------------------------------------------------
# View change
# --------------------------------------------------------------------------------------

NEAR_DEPTH_QUANTILE = 0.1  # "how near the scene is": this quantile of a source's depth


def view_change(sample: SceneSample) -> list[Tree]:
    """How far each target's camera is from the nearest source's (by camera centre).

    Per target: `baseline`, the distance between the two centres (scene units);
    `rotation_deg`, the angle of the relative rotation; `parallax`, the baseline over
    the near depth of that source (the `NEAR_DEPTH_QUANTILE` of its valid true depth:
    the apparent motion of the nearest content, which sets how hard a view is), None
    without depth. A target that is its own source has all three at 0.
    """
    s = sample.num_sources
    centres = sample.c2w[:, :3, 3].double()  # (v, 3)
    rotations = sample.c2w[:, :3, :3].double()  # (v, 3, 3)
    entries = []
    for k in range(s, sample.num_views):
        distances = (centres[:s] - centres[k]).norm(dim=-1)  # (s,)
        j = int(distances.argmin())
        relative = rotations[j].transpose(0, 1) @ rotations[k]
        cosine = ((torch.trace(relative) - 1) / 2).clamp(-1, 1)
        parallax = None
        if sample.has_depth and bool(sample.depth_valid[j].any()):
            valid = sample.depth[j][sample.depth_valid[j]].double()
            # kthvalue, not quantile: no limit on the image size
            rank = max(1, math.ceil(NEAR_DEPTH_QUANTILE * valid.numel()))
            near = valid.kthvalue(rank).values
            parallax = float(distances[j] / near) if near > 0 else None
        entries.append(
            {
                "baseline": float(distances[j]),
                "rotation_deg": math.degrees(math.acos(float(cosine))),
                "parallax": parallax,
            }
        )
    return entries


def _sources(sample: SceneSample) -> SourceViews:
    """The sample's sources as the pipeline encodes them (named by frame index)."""
    s = sample.num_sources
    names = [str(int(i)) for i in sample.frame_indices[:s]]
    return SourceViews(sample.images[:s], sample.c2w[:s], sample.fxfycxcy[:s], names)


def _targets(sample: SceneSample) -> TargetCameras:
    """The sample's target cameras (in its world frame)."""
    s = sample.num_sources
    return TargetCameras(sample.c2w[s:], sample.fxfycxcy[s:], normalized=False)


def mask_quality(estimate: Tensor, truth: Tensor) -> Tree:
    """How well an estimated unseen mask matches the true one (bool [h, w] each): their
    IoU (1 when both are empty) and the share of pixels each marks unseen."""
    return {
        "iou": _leaf(metrics.mask_iou(estimate, truth)),
        "model_unseen_fraction": _leaf(estimate.float().mean()),
        "true_unseen_fraction": _leaf(truth.float().mean()),
    }


def empty_regions(unseen: Tensor) -> list[list[str]]:
    """Per target, the regions (of REGIONS) without a pixel, from unseen [t, h, w]."""
    seen_empty, unseen_empty = unseen.flatten(1).all(1), ~unseen.flatten(1).any(1)
    return [
        [name for name, empty in zip(REGIONS, flags, strict=True) if empty]
        for flags in zip(seen_empty.tolist(), unseen_empty.tolist(), strict=True)
    ]


# --------------------------------------------------------------------------------------
# Metric trees
# --------------------------------------------------------------------------------------


def _by_region(measure: Callable[[Tensor | None], Tree], unseen: Tensor | None) -> Tree:
    """measure(None) for the whole image, plus "seen" / "unseen" entries when split."""
    tree = measure(None)
    if unseen is not None:
        tree["seen"] = measure(~unseen)
        tree["unseen"] = measure(unseen)
    return tree


def _target_values(
    tree: Tree, fn: Callable[[str, Tensor], Any], empty: Sequence[str], keep=lambda name: True
) -> Tree:
    """map_tree(tree, fn, keep) with the subtree of every region in `empty` set to None."""
    out = map_tree(tree, fn, keep)
    return {**out, **{region: None for region in empty if region in out}}


def quality(pred: Tensor, target: Tensor, unseen: Tensor | None, net) -> Tree:
    """PSNR, SSIM, LPIPS (None without `net`) and sharpness of pred [..., t, 3, h, w]
    against target [t, 3, h, w], whole and by region -> tree of [..., t] tensors."""
    target = target.expand_as(pred)

    def measure(mask: Tensor | None) -> Tree:
        return {
            "psnr": metrics.psnr(pred, target, mask, max_db=PSNR_MAX_DB),
            "ssim": metrics.ssim(pred, target, mask),
            "lpips": None if net is None else metrics.lpips(pred, target, net, mask),
            "sharpness": metrics.sharpness(pred, target, mask),
        }

    return _by_region(measure, unseen)


def diversity(samples: Tensor, unseen: Tensor | None, net) -> Tree:
    """Mean pairwise RMS distance and LPIPS (None without `net`) between samples
    [n, t, 3, h, w] (n >= 2), whole and by region -> tree of [t] tensors."""

    def measure(mask: Tensor | None) -> Tree:
        def lpips_pair(a: Tensor, b: Tensor) -> Tensor:
            return metrics.lpips(a, b, net, mask)

        return {
            "rms": metrics.pairwise_mean(samples, lambda a, b: metrics.rms_distance(a, b, mask)),
            "lpips": None if net is None else metrics.pairwise_mean(samples, lpips_pair),
        }

    return _by_region(measure, unseen)


def _leaf(value: Tensor | float | None) -> float | None:
    """A JSON number: None for missing, NaN or infinite values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def map_tree(tree: Tree, fn: Callable[[str, Tensor], Any], keep=lambda name: True) -> Tree:
    """Apply fn(name, leaf) to every non-None tensor leaf whose name passes `keep`."""
    out: Tree = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            out[name] = map_tree(value, fn, keep)
        elif keep(name):
            out[name] = None if value is None else _leaf(fn(name, value))
    return out


def mean_trees(trees: Sequence[Tree | None]) -> Tree | None:
    """Leaf-wise mean of trees of one layout, skipping None (a missing value or a
    missing subtree); None where no tree has a value."""
    return reduce_trees(trees, np.mean)


def median_trees(trees: Sequence[Tree | None]) -> Tree | None:
    """Leaf-wise median, as `mean_trees`."""
    return reduce_trees(trees, np.median)


def reduce_trees(
    trees: Sequence[Tree | None], reduce: Callable[[list[float]], float]
) -> Tree | None:
    """Leaf-wise reduce(values) of trees of one layout, skipping None (a missing value or
    a missing subtree); None where no tree has a value."""
    present = [t for t in trees if t is not None]
    if not present:
        return None
    out: Tree = {}
    for name in present[0]:
        column = [t.get(name) for t in present]
        if any(isinstance(value, dict) for value in column):
            out[name] = reduce_trees(column, reduce)
        else:
            values = [v for v in column if v is not None]
            out[name] = float(reduce(values)) if values else None
    return out


# --------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------


def scene_grid(
    sources: Tensor,
    targets: Tensor,
    regression: Tensor,
    samples: Tensor | None,
    unseen: Tensor | None,
    gap: int = 2,
) -> np.ndarray:
    """One row per target: sources | target | regression | samples | unseen mask.

    sources [s, 3, h, w], targets and regression [t, 3, h, w], samples [n, t, 3, h, w]
    or None, unseen [t, h, w] or None (shown grey) -> uint8 [H, W, 3], white gaps.
    """
    h, w = targets.shape[-2:]
    rows = []
    for k in range(targets.shape[0]):
        if unseen is None:
            mask = torch.full((3, h, w), 0.5)
        else:
            mask = unseen[k].float().expand(3, h, w)
        tiles = [*sources, targets[k], regression[k]]
        tiles += [] if samples is None else list(samples[:, k])
        tiles.append(mask)
        row = []
        for tile in tiles:
            row += [tile.detach().float().cpu().clamp(0, 1), torch.ones(3, h, gap)]
        rows += [torch.cat(row[:-1], -1), torch.ones(3, gap, len(tiles) * (w + gap) - gap)]
    grid = torch.cat(rows[:-1], -2)
    return (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _grid_name(index: int, scene: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in scene)
    return f"{index:05d}_{safe}.png"


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def _sample(
    pipe: NVSPipeline,
    scene: Scene,
    targets: TargetCameras,
    settings: SamplingSettings,
    seed: int,
    views: Views,
    mask_tolerance: float,
) -> tuple[Tensor, Tensor]:
    """settings.num_samples samples of every target (sample k uses seed `seed + k`), from
    the targets' regression render `views` -> (rgb [n, t, 3, h, w], share of each target
    the sampler generated [t])."""
    config = settings.config(seed)
    sampled = pipe.sample(
        scene, targets, config, regression=views, max_batch=settings.max_batch,
        mask_tolerance=mask_tolerance,
    )  # fmt: skip
    t = targets.num_views
    generated = torch.ones(t) if sampled.mask is None else sampled.mask[0].mean((-2, -1))
    return sampled.rgb[:, 0].clamp(0, 1), generated


def evaluate_scene(
    pipe: NVSPipeline,
    sample: SceneSample,
    index: int,
    *,
    lpips_net=None,
    sampling: SamplingSettings | None = None,
    rel_tol: float = 0.02,
    mask_tolerance: float = PREDICTED_REL_TOL,
) -> tuple[Tree, np.ndarray]:
    """Metrics of one scene (on the pipeline's device) -> (scene result, grid image).
    rel_tol: the depth test of the dataset's true depth; mask_tolerance: of the model's
    predicted depth (its unseen mask, which the samples also use)."""
    sample = sample.to(pipe.device)
    sources, targets = sample.split()
    scene = pipe.encode(_sources(sample))
    cameras = _targets(sample)
    views = pipe.render(scene, cameras, out_device=pipe.device)
    regression = views.rgb.clamp(0, 1)  # (t, 3, h, w)
    unseen, region_source = unseen_masks(
        pipe, scene, sample, rel_tol, views=views, mask_tolerance=mask_tolerance
    )
    estimate = None
    if region_source == "depth":
        estimate = predicted_unseen_masks(pipe, scene, sample, mask_tolerance, views=views)
    empty = [[]] * sample.num_targets if unseen is None else empty_regions(unseen)
    reg_tree = quality(regression, targets.images, unseen, lpips_net)

    samples = None
    if sampling is not None:
        seed = sampling.seed + index * sampling.num_samples
        samples, generated = _sample(pipe, scene, cameras, sampling, seed, views, mask_tolerance)
        sample_tree = quality(samples, targets.images, unseen, lpips_net)  # leaves (n, t)
        div_tree = None
        if sampling.num_samples >= 2:
            div_tree = diversity(samples, unseen, lpips_net)

    change = view_change(sample)
    per_target = []
    for k in range(sample.num_targets):
        entry: Tree = {
            "frame": int(targets.frame_indices[k]),
            "view_change": change[k],
            "unseen_fraction": None if unseen is None else _leaf(unseen[k].float().mean()),
            "empty_regions": empty[k],
            "mask": None if estimate is None else mask_quality(estimate[k], unseen[k]),
            "regression": _target_values(reg_tree, lambda _, v, k=k: v[k], empty[k]),
        }
        if samples is not None:
            entry["diffusion"] = _diffusion_entry(sample_tree, div_tree, generated[k], k, empty[k])
        per_target.append(entry)

    result: Tree = {
        "scene": sample.scene,
        "source_frames": [int(i) for i in sources.frame_indices],
        "target_frames": [int(i) for i in targets.frame_indices],
        "region_source": region_source,
        "means": _means(per_target),
        "targets": per_target,
    }
    grid = scene_grid(sources.images, targets.images, regression, samples, unseen)
    return result, grid


def _diffusion_entry(
    samples: Tree, spread: Tree | None, generated: Tensor, k: int, empty: Sequence[str]
) -> Tree:
    """Target k's diffusion results from the trees of per-sample metrics (leaves [n, t])
    and of diversity (leaves [t], None for one sample); `empty` regions are None."""
    return {
        "generated_fraction": _leaf(generated),
        "mean": _target_values(samples, lambda _, v: v[:, k].mean(), empty),
        "best_of_n": _target_values(
            samples,
            lambda name, v: BEST_OF[name](v[:, k]),
            empty,
            keep=lambda name: name in BEST_OF,
        ),
        "diversity": None if spread is None else _target_values(spread, lambda _, v: v[k], empty),
    }


def _means(entries: list[Tree]) -> Tree:
    """Means over targets (per-target entries) or over scenes (their means), by field."""
    return mean_trees([_values(e) for e in entries])


def _medians(scenes: list[Tree]) -> Tree:
    """Medians over every target of every scene, by field."""
    return median_trees([_values(t) for scene in scenes for t in scene["targets"]])


def _values(entry: Tree) -> Tree:
    return {k: v for k, v in entry.items() if k not in ("frame", "empty_regions")}


def _empty_region_counts(scenes: list[Tree]) -> Tree:
    """How many targets of all scenes have each region empty, and why that means null."""
    targets = [t for scene in scenes for t in scene["targets"]]
    counts = {region: sum(region in t["empty_regions"] for t in targets) for region in REGIONS}
    return {"targets": counts, "reason": EMPTY_REGION_REASON}


def _mask_info(model: NVSModel, scenes: list[Tree]) -> Tree:
    """What the per-target "mask" entries compare, or why there are none."""
    reason = None
    if model.decoder.point_head is None:
        reason = "the model has no point head, so no unseen estimate of its own"
    elif not any(scene["region_source"] == "depth" for scene in scenes):
        reason = "the dataset has no depth: the regions are the model's own estimate"
    return {"available": reason is None, "estimate": MASK_ESTIMATE, "reason": reason}


def evaluate(
    pipe: NVSPipeline,
    dataset: Dataset,
    *,
    out_dir: str | Path | None = None,
    lpips_net=None,
    lpips_unavailable: str | None = None,
    sampling: SamplingSettings | None = None,
    max_scenes: int | None = None,
    rel_tol: float = 0.02,
    mask_tolerance: float = PREDICTED_REL_TOL,
    progress: bool = True,
    model_info: dict[str, Any] | None = None,
    dataset_info: dict[str, Any] | None = None,
) -> Tree:
    """Evaluate the pipeline's model (on its device) on the SceneSamples of `dataset`.

    Args:
        lpips_net: from `gen_nvs.models.perceptual.load_lpips`, or None to leave LPIPS
            out (`lpips_unavailable` says why, recorded in the results).
        sampling: draw and score diffusion samples (the model must be able to sample);
            None evaluates the regression renderer only.
        max_scenes: evaluate only the first scenes.
        rel_tol: the depth test's tolerance with the dataset's true depth (the regions).
        mask_tolerance: with the model's predicted depth (its own unseen mask, scored
            against the regions, and the samples' "auto" mask).
        out_dir: where `results.json` and `grids/*.png` are written (nothing when None).
        model_info, dataset_info: recorded under "model" / "dataset" (e.g. paths).
    Returns:
        the results (as written to results.json).
    """
    model = pipe.model
    if sampling is not None and not model.can_sample:
        raise ValueError("this model has no diffusion decoder and cannot draw samples")
    check_mask_tolerance(mask_tolerance)
    num_scenes = len(dataset) if max_scenes is None else min(len(dataset), max_scenes)
    if num_scenes < 1:
        raise ValueError("the dataset has no scenes to evaluate")
    if sampling is not None:  # before the first scene, not at the one whose seeds overflow
        check_seeds(sampling.seed, num_scenes * sampling.num_samples)
    grid_dir = None
    if out_dir is not None:
        grid_dir = Path(out_dir) / GRID_DIR
        grid_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    scenes = []
    with torch.inference_mode():
        for i in tqdm(range(num_scenes), desc="eval", unit="scene", disable=not progress):
            result, grid = evaluate_scene(
                pipe, dataset[i], i, lpips_net=lpips_net, sampling=sampling, rel_tol=rel_tol,
                mask_tolerance=mask_tolerance,
            )  # fmt: skip
            if grid_dir is not None:
                name = _grid_name(i, result["scene"])
                Image.fromarray(grid).save(grid_dir / name)
                result["grid"] = f"{GRID_DIR}/{name}"
            scenes.append(result)

    results: Tree = {
        "model": {
            **(model_info or {}),
            "can_sample": model.can_sample,
            "config": model.config.to_dict(),
        },
        "dataset": {**(dataset_info or {}), "num_scenes": num_scenes},
        "settings": {
            "psnr_max_db": PSNR_MAX_DB,
            "ssim": {
                "window": metrics.SSIM_WINDOW,
                "sigma": metrics.SSIM_SIGMA,
                "k1": metrics.SSIM_K1,
                "k2": metrics.SSIM_K2,
            },
            "visibility_rel_tol": rel_tol,
            "mask_tolerance": mask_tolerance,
            "sampling": None if sampling is None else asdict(sampling),
        },
        "lpips": {
            "available": lpips_net is not None,
            "net": "vgg",
            "version": "0.1",
            "reason": None if lpips_net is not None else lpips_unavailable,
        },
        "mask": _mask_info(model, scenes),
        "empty_regions": _empty_region_counts(scenes),
        "num_targets": sum(len(s["targets"]) for s in scenes),
        "seconds": round(time.perf_counter() - start, 3),
        "means": _means([s["means"] for s in scenes]),
        "medians": _medians(scenes),
        "scenes": scenes,
    }
    if out_dir is not None:
        path = Path(out_dir) / RESULTS_FILE
        path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    return results
