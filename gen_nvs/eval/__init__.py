"""Evaluation: image metrics (PSNR, SSIM, LPIPS, sharpness) and the evaluation loop
behind `gen-nvs eval` (regression and diffusion, split into seen and unseen regions)."""

from gen_nvs.eval.evaluate import (
    PSNR_MAX_DB,
    FirstViewsDataset,
    SamplingSettings,
    evaluate,
    evaluate_scene,
    predicted_unseen_masks,
    scene_grid,
    unseen_masks,
)
from gen_nvs.eval.metrics import (
    gradient_magnitude,
    lpips,
    mask_iou,
    masked_mean,
    mse,
    pairwise_mean,
    psnr,
    rms_distance,
    sharpness,
    ssim,
    ssim_map,
)

__all__ = [
    "PSNR_MAX_DB",
    "FirstViewsDataset",
    "SamplingSettings",
    "evaluate",
    "evaluate_scene",
    "gradient_magnitude",
    "lpips",
    "mask_iou",
    "masked_mean",
    "mse",
    "pairwise_mean",
    "predicted_unseen_masks",
    "psnr",
    "rms_distance",
    "scene_grid",
    "sharpness",
    "ssim",
    "ssim_map",
    "unseen_masks",
]
