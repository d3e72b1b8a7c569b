"""Where a model's novel views lose: its render against what exact geometry would give.

    python -m gen_nvs.eval.oracles [--checkpoint PATH] [--scenes 16] [--mirror]

On the training probe's held-out procedural scenes (`gen_nvs.train.probe`: sources views 0
and 3, targets 1, 2, 4, 5, with their true depth) it prints the PSNR of the targets, whole
and on the region some source saw (by the true depth), for:

- the decoder's own render, and the model's render (the warp refiner's, if it has one);
- the same refiner fed the *true* depth of the targets and sources instead of the point
  head's (models with a refiner): how much of the gap is geometry; and fed the model's
  own depths with each scene's scale set right (multiplied by the median ratio of the
  true to the model's depth of its sources): how much of it is the scene's scale;
- the sources warped by the true depth, and by the model's own depths (`backward_warp`;
  the decoder's render where no source sees the point): what a plain warp gives;
- the truth's own 8x8 patch means: the floor of a renderer that paints patch means;
- the same refiner fed depths part of the way from the truth to the model's own (each
  pixel's log depth mixed, `DEPTH_MIXES`): how the render falls with the depth's error,
  so what error a target PSNR needs;

and how far the model's depth of the targets is from the truth (median relative error,
share of pixels within 1.25x), split into a scale per view (the spread of each view's
median log ratio to the truth) and the shape (the median relative error left once each
view's scale is divided out).

`--mirror` measures the same scenes reflected left-right (`mirror_cameras`): a model
that has learned geometry scores the same. `--bins K` also splits every row's whole-image
PSNR by the targets' parallax (`gen_nvs.eval.evaluate.view_change`: the baseline to the
nearest source over that source's near depth) into K groups of equal size: whether a
small view change loses as much as a large one.

Dimension legend:
    t   target views    s   source views    h, w   image size
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gen_nvs.data.procedural import generate_scene
from gen_nvs.data.scene import SceneSample
from gen_nvs.eval import metrics
from gen_nvs.eval.evaluate import PSNR_MAX_DB, view_change
from gen_nvs.geometry.cameras import mirror_cameras, unproject_depth
from gen_nvs.geometry.rgbd import points_to_depth
from gen_nvs.geometry.warp import backward_warp
from gen_nvs.models.nvs import NVSModel, RefinerSources, load_model_or_default
from gen_nvs.models.refiner import mean_color
from gen_nvs.unseen import PREDICTED_REL_TOL

SOURCES, TARGETS = (0, 3), (1, 2, 4, 5)
TRUE_REL_TOL = 0.02  # the dataset's exact depth (as `gen-nvs eval`'s truth masks)
PATCH = 8
DEPTH_MIXES = (0.25, 0.5, 0.75)  # shares of the way from the true log depth to the model's


def _psnr_each(pred: Tensor, truth: Tensor, mask: Tensor | None = None) -> Tensor:
    """PSNR in dB [n] of each of [n, 3, h, w] images over its pixels in mask [n, h, w]
    (all: None; NaN for an image without a masked pixel), as the training probe's."""
    return metrics.psnr(pred.clamp(0, 1), truth, mask, max_db=PSNR_MAX_DB)


def _psnr(pred: Tensor, truth: Tensor, mask: Tensor | None = None) -> float:
    """Mean of `_psnr_each` over the images with a masked pixel."""
    return float(_psnr_each(pred, truth, mask).nanmean())


def _patch_means(depth: Tensor) -> Tensor:
    """depth [t, h, w] -> each 8x8 patch's mean depth, bilinearly upsampled [t, h, w]."""
    means = F.avg_pool2d(depth[:, None], PATCH)
    up = F.interpolate(means, size=depth.shape[-2:], mode="bilinear", align_corners=False)
    return up[:, 0]


def _warped(images, depth, c2w, fxfycxcy, target_depth, target_c2w, target_fxfycxcy, tol):
    """The visible sources' mean colour [t, 3, h, w] and where any source sees [t, h, w]."""
    warped = backward_warp(
        images[None], depth[None], c2w[None], fxfycxcy[None],
        target_depth[None], target_c2w[None], target_fxfycxcy[None], tol,
    )  # fmt: skip
    return mean_color(warped.colors, warped.visible)[0], warped.visible[0].any(1)


def scale_and_shape(depth: Tensor, true_depth: Tensor) -> tuple[Tensor, Tensor]:
    """A depth's error against the truth, split per view: depth, true_depth [t, h, w] ->
    (scale [t]: each view's median log(depth / true depth), shape [t, h, w]: the ratio
    to the truth once each view's scale is divided out; NaN where the ratio is not
    finite and positive)."""
    log_ratio = (depth / true_depth).log().flatten(1)  # (t, h*w)
    log_ratio = torch.where(log_ratio.isfinite(), log_ratio, torch.nan)
    scale = log_ratio.nanmedian(1).values
    return scale, (log_ratio - scale[:, None]).exp().view_as(depth)


def mixed_depth(true_depth: Tensor, depth: Tensor, share: float) -> Tensor:
    """Depth `share` of the way from true_depth to depth in log space, per pixel (any
    shape): true_depth * (depth / true_depth) ** share, so that its relative error is
    about `share` times the depth's. A ratio that is not finite and positive counts as
    100x off, as far as the mix goes."""
    ratio = (depth / true_depth).nan_to_num(nan=1e-2, posinf=1e2, neginf=1e-2).clamp(1e-2, 1e2)
    return true_depth * ratio**share


@dataclass
class Oracles:
    """psnr: {name: (whole, seen)} in dB, per-image PSNR averaged over the targets;
    depth_median_rel_error and depth_within_125: the model's depth of the targets against
    the truth, over all their pixels; depth_scale_spread: the standard deviation over the
    targets of each one's median log(model / true depth) (a wrong scale per view);
    depth_shape_rel_error: the median relative error once each target's median ratio is
    divided out (what is wrong besides the scale); mix_rel_error: for each row of the
    refiner fed a mixed depth (`DEPTH_MIXES`), that depth's median relative error over the
    targets' pixels, as depth_median_rel_error is the model's own; parallax [n] and
    target_psnr {name: [n]}: every target's parallax and whole-image PSNR per row (n =
    scenes x targets, scene by scene), for `by_parallax`."""

    psnr: dict[str, tuple[float, float]]
    depth_median_rel_error: float
    depth_within_125: float
    depth_scale_spread: float
    depth_shape_rel_error: float
    mix_rel_error: dict[str, float]
    parallax: Tensor
    target_psnr: dict[str, Tensor]

    def by_parallax(self, bins: int) -> list[tuple[float, float, dict[str, float]]]:
        """The targets sorted by parallax in `bins` groups of equal size -> per group
        (lowest, highest parallax, {row name: mean whole-image PSNR})."""
        if not 1 <= bins <= len(self.parallax):
            raise ValueError(f"bins must be in 1..{len(self.parallax)} (the targets), got {bins}")
        order = self.parallax.argsort(stable=True)
        groups = []
        for chunk in np.array_split(order.numpy(), bins):
            chunk = torch.from_numpy(chunk)
            values = self.parallax[chunk]
            means = {name: float(db[chunk].mean()) for name, db in self.target_psnr.items()}
            groups.append((float(values.min()), float(values.max()), means))
        return groups


@torch.no_grad()
def oracles(
    model: NVSModel, num_scenes: int = 16, seed: int = 1_000_000, mirror: bool = False
) -> Oracles:
    """The oracles of the module docstring over `num_scenes` probe scenes (reflected
    left-right with `mirror`)."""
    s, t = list(SOURCES), list(TARGETS)
    rows: dict[str, list[Tensor]] = {}
    ratios, view_scales, shapes = [], [], []
    mix_ratios: dict[str, list[Tensor]] = {}

    def add(name: str, pred: Tensor) -> None:
        rows.setdefault(name, []).append(pred)

    truths, seens, parallax = [], [], []
    for i in range(num_scenes):
        views = generate_scene(seed + i, max(t) + 1, (64, 64))
        if mirror:
            c2w, fxfycxcy = mirror_cameras(views.c2w, views.fxfycxcy, views.images.shape[-1])
            world_x = views.points.new_tensor([-1.0, 1.0, 1.0])  # the world reflected too
            views = replace(
                views, images=views.images.flip(-1), depth=views.depth.flip(-1),
                depth_valid=views.depth_valid.flip(-1), points=views.points.flip(-2) * world_x,
                c2w=c2w, fxfycxcy=fxfycxcy,
            )  # fmt: skip
        hw = tuple(views.images.shape[-2:])
        probe = SceneSample(
            images=views.images[s + t], c2w=views.c2w[s + t], fxfycxcy=views.fxfycxcy[s + t],
            num_sources=len(s), scene=f"probe_{seed + i}", frame_indices=torch.tensor(s + t),
            depth=views.depth[s + t], depth_valid=views.depth_valid[s + t],
        )  # fmt: skip
        parallax += [change["parallax"] for change in view_change(probe)]
        scene = model.encode(views.images[None, s], views.c2w[None, s], views.fxfycxcy[None, s])
        target_c2w = scene.normalize(views.c2w[None, t])[0]
        source_c2w = scene.source_c2w[0]
        k_t, k_s = views.fxfycxcy[t], views.fxfycxcy[s]
        out = model.render(scene, target_c2w[None], k_t[None], hw, normalized=True)
        own = model.render(scene, source_c2w[None], k_s[None], hw, normalized=True)
        decoder = (out.rgb if out.decoder_rgb is None else out.decoder_rgb)[0]
        scale = scene.scale[0]
        true_t, true_s = views.depth[t] / scale, views.depth[s] / scale  # the scene's scale
        model_t = points_to_depth(out.points[0].float(), target_c2w)
        model_s = points_to_depth(own.points[0].float(), source_c2w)
        ratios.append((model_t / true_t).flatten())
        view_scale, shape = scale_and_shape(model_t, true_t)
        view_scales.append(view_scale)
        shapes.append(shape.flatten())
        sources = (views.images[s], true_s, source_c2w, k_s)
        true_warp, seen = _warped(*sources, true_t, target_c2w, k_t, TRUE_REL_TOL)
        model_sources = (views.images[s], model_s, source_c2w, k_s)
        model_warp, model_seen = _warped(
            *model_sources, model_t, target_c2w, k_t, PREDICTED_REL_TOL
        )
        truths.append(views.images[t])
        seens.append(seen)
        add("decoder render", decoder)
        if out.decoder_rgb is not None:
            add("refined render (the model's)", out.rgb[0])
            true_points = unproject_depth(true_t, k_t, target_c2w)[None]
            refiner_sources = RefinerSources(
                images=views.images[None, s],
                c2w=source_c2w[None],
                fxfycxcy=k_s[None],
                depth=true_s[None],
            )
            fed_truth = model.refine(
                replace(out, rgb=out.decoder_rgb, points=true_points),
                target_c2w[None], k_t[None], refiner_sources,
            )  # fmt: skip
            add("refiner fed the true depth", fed_truth.rgb[0])
            # The same, but the targets' true depth only as 8x8 patch means (as a point
            # head that unpatchifies 8x8 tokens could at best learn it, if flat):
            # whether the warp needs depth at pixel resolution or just better patches.
            patch_depth = _patch_means(true_t)
            patch_points = unproject_depth(patch_depth, k_t, target_c2w)[None]
            fed_patches = model.refine(
                replace(out, rgb=out.decoder_rgb, points=patch_points),
                target_c2w[None], k_t[None], refiner_sources,
            )  # fmt: skip
            add("refiner fed true 8x8 depth means", fed_patches.rgb[0])
            # The model's own depths, the scene's scale set by its sources' true depth.
            k = (true_s / model_s).log().nanmedian().exp()
            scaled_points = unproject_depth(model_t * k, k_t, target_c2w)[None]
            rescaled = model.refine(
                replace(out, rgb=out.decoder_rgb, points=scaled_points),
                target_c2w[None], k_t[None], replace(refiner_sources, depth=model_s[None] * k),
            )  # fmt: skip
            add("refiner fed its depth, scene scale true", rescaled.rgb[0])
            for share in DEPTH_MIXES:
                name = f"refiner fed depth {share:.2f} of the way to its own"
                mix_t, mix_s = (
                    mixed_depth(true_t, model_t, share),
                    mixed_depth(true_s, model_s, share),
                )
                mix_points = unproject_depth(mix_t, k_t, target_c2w)[None]
                mixed = model.refine(
                    replace(out, rgb=out.decoder_rgb, points=mix_points),
                    target_c2w[None], k_t[None], replace(refiner_sources, depth=mix_s[None]),
                )  # fmt: skip
                add(name, mixed.rgb[0])
                mix_ratios.setdefault(name, []).append((mix_t / true_t).flatten())
        add("warp by the true depth", torch.where(seen[:, None], true_warp, decoder))
        add("warp by the model's depths", torch.where(model_seen[:, None], model_warp, decoder))
        means = F.avg_pool2d(views.images[t], PATCH)
        add("the truth's 8x8 patch means", F.interpolate(means, scale_factor=PATCH))
    truth, seen = torch.cat(truths), torch.cat(seens)
    preds = {name: torch.cat(images) for name, images in rows.items()}
    whole = {name: _psnr_each(pred, truth).float() for name, pred in preds.items()}
    ratio = torch.cat(ratios).nan_to_num(0.0)  # a pixel without depth counts as far off
    shape = torch.cat(shapes).nan_to_num(0.0)
    return Oracles(
        psnr={
            name: (float(whole[name].nanmean()), _psnr(pred, truth, seen))
            for name, pred in preds.items()
        },
        depth_median_rel_error=float((ratio - 1).abs().median()),
        depth_within_125=float(((ratio > 1 / 1.25) & (ratio < 1.25)).float().mean()),
        depth_scale_spread=float(torch.cat(view_scales).std()),
        depth_shape_rel_error=float((shape - 1).abs().median()),
        mix_rel_error={
            name: float((torch.cat(r).nan_to_num(0.0) - 1).abs().median())
            for name, r in mix_ratios.items()
        },
        parallax=torch.tensor(parallax, dtype=torch.float64),
        target_psnr=whole,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gen_nvs.eval.oracles", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--checkpoint", default=None, help="model export (default: embedded)")
    parser.add_argument("--scenes", type=int, default=16, help="probe scenes (16)")
    parser.add_argument("--mirror", action="store_true", help="the scenes reflected left-right")
    parser.add_argument(
        "--bins", type=int, default=1, help="also split the PSNRs by parallax into K groups"
    )
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error(f"--scenes must be >= 1, got {args.scenes}")
    if not 1 <= args.bins <= args.scenes * len(TARGETS):
        parser.error(
            f"--bins must be in 1..{args.scenes * len(TARGETS)} (the targets), got {args.bins}"
        )
    model = load_model_or_default(args.checkpoint).eval()
    results = oracles(model, args.scenes, mirror=args.mirror)
    kind = "mirrored probe scenes" if args.mirror else "probe scenes"
    print(f"{args.scenes} {kind} x {len(TARGETS)} novel views: PSNR whole / seen (dB)")
    for name, (whole, seen) in results.psnr.items():
        error = results.mix_rel_error.get(name)
        note = "" if error is None else f"  (its depth's median relative error {error:.3f})"
        print(f"  {name:<48} {whole:6.2f} / {seen:6.2f}{note}")
    print(
        f"the model's depth of the targets: median relative error "
        f"{results.depth_median_rel_error:.3f}, {100 * results.depth_within_125:.1f} % of "
        "pixels within 1.25x of the truth"
    )
    print(
        f"  of which scale: each view's median log ratio to the truth spreads by "
        f"{results.depth_scale_spread:.3f} (std); shape: median relative error "
        f"{results.depth_shape_rel_error:.3f} once each view's scale is divided out"
    )
    if args.bins > 1:
        groups = results.by_parallax(args.bins)
        print("whole-image PSNR (dB) by the targets' parallax, groups of equal size:")
        print(f"  {'parallax':<48} " + " ".join(f"{lo:.2f}-{hi:.2f}" for lo, hi, _ in groups))
        for name in results.psnr:
            cells = " ".join(f"{means[name]:9.2f}" for _, _, means in groups)
            print(f"  {name:<48} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
