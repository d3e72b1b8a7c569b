"""The unseen region of target views: the pixels no source saw, which sampling generates.

By geometry (the sources' depth, rendered by the point head, tests the targets' regressed
points by reprojection: `gen_nvs.geometry.rgbd.unseen_mask`) or by the point head's
confidence. `sample_views` keeps the regression render outside the region, the app shows
it over the regression view and evaluation splits its metrics by it.

Dimension legend:
    b   scenes (batch)      t   target views per scene      s   source views
    h, w    render height / width
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from gen_nvs.geometry import rgbd
from gen_nvs.inputs import default_intrinsics
from gen_nvs.models.decoder import DecoderOutput
from gen_nvs.models.nvs import EncodedScene, NVSModel

MASK_MODES = ("auto", "off", "confidence")
# "confidence" without a threshold: unseen where the confidence falls below this share of
# the median confidence of the sources' own renders (what the model gives a seen surface).
CONFIDENCE_FRACTION = 0.5
# Relative depth tolerance of the "auto" mask's reprojection test. The test compares the
# model's *predicted* depths (targets against sources), which disagree by far more than
# measured depths do (`gen_nvs.eval` keeps 0.02 for the dataset's true depth); chosen by
# the IoU of the model's mask with the true unseen region on 100 training scenes (the
# default model's card, "Unseen region"). At 2 a point counts as occluded only when it
# lies over 3x as far as the sources' surface: the default model's depth is not yet good
# enough to find occlusions, and a tighter test marks its depth errors unseen.
PREDICTED_REL_TOL = 2.0


def check_mask_tolerance(tolerance: float) -> None:
    """ValueError unless `tolerance` (the "auto" mask's relative depth tolerance) is a
    finite number >= 0."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(
            f"mask tolerance must be a finite number >= 0 (a large one, e.g. 1e9, keeps only "
            f"the test whether a source's view holds the point), got {tolerance}"
        )


def check_conf_threshold(threshold: float | None) -> None:
    """ValueError unless the "confidence" mask's `threshold` is None (the default share of
    the median) or a finite number > 1: the point head's confidence is 1 + exp(x) > 1, so
    below a threshold <= 1 there is no pixel to generate."""
    if threshold is not None and not (math.isfinite(threshold) and threshold > 1):
        raise ValueError(
            f"confidence threshold must be a finite number > 1 (the point head's confidence "
            f"is 1 + exp(x), above 1, so no pixel falls below a lower one), got {threshold}"
        )


def unseen_region(
    model: NVSModel,
    scene: EncodedScene,
    regression: DecoderOutput,
    target_c2w: Tensor,
    target_fxfycxcy: Tensor,
    image_hw: tuple[int, int],
    *,
    mode: str = "auto",
    source_fxfycxcy: Tensor | None = None,
    conf_threshold: float | None = None,
    sources: DecoderOutput | None = None,
    rel_tol: float = PREDICTED_REL_TOL,
) -> Tensor | None:
    """bool [b, t, h, w]: the target pixels no source saw, on the regression render's
    device; None with mode "off", or "auto" for a model without a point head.

    regression: `model.render` of the targets (rgb [b, t, 3, h, w], points, conf).
    target_c2w [b, t, 4, 4] in the scene's normalised frame, target_fxfycxcy [b, t, 4] in
        pixels of the `image_hw` renders.
    mode: one of MASK_MODES, as `sample_views`' mask_mode: "auto" tests the targets'
        regressed points by reprojection into the sources' depth when the source cameras
        are known or estimated, else uses "confidence": the point head's confidence below
        `conf_threshold` (None: a share `CONFIDENCE_FRACTION` of the median confidence of
        the sources' renders, or of the targets' when the source cameras are unknown).
    source_fxfycxcy: [b, s, 4] the sources' intrinsics in pixels of `image_hw` images; None:
        a default field of view (`gen_nvs.inputs.DEFAULT_FOV_DEG`).
    sources: `model.render` of the source cameras ([b, s, ...], normalised frame) when the
        caller has it; None: rendered here when needed.
    rel_tol: the geometry test's depth tolerance (`rgbd.unseen_mask`).

    Raises ValueError for an unknown mode, a threshold `check_conf_threshold` refuses, or
    mode "confidence" without a point head.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {list(MASK_MODES)}, got {mode!r}")
    check_conf_threshold(conf_threshold)
    if mode == "off" or (mode == "auto" and regression.points is None):
        return None
    if regression.points is None:
        raise ValueError("mask mode 'confidence' needs a model with a point head")
    source_c2w = scene.source_c2w
    if source_c2w is None:
        return _confidence_unseen(regression, conf_threshold, sources=None)
    if source_fxfycxcy is None:
        b, s = source_c2w.shape[:2]
        source_fxfycxcy = default_intrinsics(image_hw).to(source_c2w).expand(b, s, 4)
    source_fxfycxcy = source_fxfycxcy.to(source_c2w.device)
    geometry = mode == "auto"
    if sources is None and (geometry or conf_threshold is None):
        sources = model.render(scene, source_c2w, source_fxfycxcy, image_hw, normalized=True)
    if geometry:
        return _geometry_unseen(
            scene, regression, target_c2w, target_fxfycxcy, source_fxfycxcy, sources, rel_tol
        )
    return _confidence_unseen(regression, conf_threshold, sources)


def soft_edge(unseen: Tensor) -> Tensor:
    """[b, t, h, w] in {0, 1} -> grown by a pixel, then a 3x3 box blur: every unseen pixel
    stays 1 and the mask fades to 0 over two pixels of the seen region."""
    x = rearrange(unseen, "b t h w -> (b t) 1 h w")
    x = F.max_pool2d(x, 3, stride=1, padding=1)
    x = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return rearrange(x, "(b t) 1 h w -> b t h w", b=unseen.shape[0])


def _geometry_unseen(
    scene: EncodedScene,
    regression: DecoderOutput,
    target_c2w: Tensor,
    target_fxfycxcy: Tensor,
    source_fxfycxcy: Tensor,
    sources: DecoderOutput,
    rel_tol: float,
) -> Tensor:
    """bool [b, t, h, w]: target pixels whose regressed point no source saw, on the
    device of the regression render."""
    target_depth = rgbd.points_to_depth(regression.points, target_c2w)  # (b, t, h, w)
    device = target_depth.device
    source_c2w = scene.source_c2w.to(device)
    source_fxfycxcy = source_fxfycxcy.to(device)
    source_depth = rgbd.points_to_depth(sources.points.to(device), source_c2w)  # (b, s, h, w)
    b, t = target_c2w.shape[:2]
    return torch.stack(
        [
            torch.stack(
                [
                    rgbd.unseen_mask(
                        target_c2w[i, j],
                        target_fxfycxcy[i, j],
                        target_depth[i, j],
                        source_c2w[i],
                        source_fxfycxcy[i],
                        source_depth[i],
                        rel_tol,
                    )
                    for j in range(t)
                ]
            )
            for i in range(b)
        ]
    )


def _confidence_unseen(
    regression: DecoderOutput, conf_threshold: float | None, sources: DecoderOutput | None
) -> Tensor:
    """bool [b, t, h, w]: target pixels the point head is unsure of."""
    if conf_threshold is not None:
        return regression.conf < conf_threshold
    reference = regression.conf if sources is None else sources.conf.to(regression.conf)
    threshold = CONFIDENCE_FRACTION * reference.flatten(1).median(dim=1).values  # (b,)
    return regression.conf < threshold[:, None, None, None]
