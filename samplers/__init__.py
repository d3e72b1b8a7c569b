"""Sampling for the diffusion decoder: the denoiser wrapper (prediction types), diffusers
schedulers by name, classifier-free guidance and the seeded sampling loop with
RePaint-style completion."""

from samplers.denoiser import PREDICTION_TYPES, Denoiser, PredictionType
from samplers.guidance import cfg, guided_prediction, in_guidance_interval, rescale_guidance
from samplers.sampling import STOP, SamplingCancelled, Signal, StepInfo, sample
from samplers.schedulers import (
    DEFAULT_SCHEDULER,
    SCHEDULER_NAMES,
    add_noise,
    build_scheduler,
    noise_levels,
    scheduler_for,
    set_steps,
)

__all__ = [
    "DEFAULT_SCHEDULER",
    "PREDICTION_TYPES",
    "SCHEDULER_NAMES",
    "STOP",
    "Denoiser",
    "PredictionType",
    "SamplingCancelled",
    "Signal",
    "StepInfo",
    "add_noise",
    "build_scheduler",
    "cfg",
    "guided_prediction",
    "in_guidance_interval",
    "noise_levels",
    "rescale_guidance",
    "sample",
    "scheduler_for",
    "set_steps",
]
