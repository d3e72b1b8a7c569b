"""What one training step computes, per stage: the forward pass (an `nn.Module`, the
part Accelerate wraps for data parallelism) and the losses beside it.

- Regression: the model renders the targets (sources posed, or pose-free with
  camera-token dropout); loss = l2 * MSE + perceptual * LPIPS + points *
  ConfidencePointLoss (where the data has depth; on `sign(p) log(1 + |p|)` points by
  default, the point head's own space, so far points such as the sky do not swamp
  the rest) + camera * the camera head's
  pose-encoding error on pose-free aggregator tokens + log_depth * the mean
  |log d - log d_gt| of the targets' depth (from their points; every valid pixel alike).
  With a warp refiner the MSE is the refined render's, and decoder_l2 * MSE of the
  decoder's own render joins it.
- Geometry (3D pretraining of the encoder, as VGGT's): every view of the batch is a
  source, the aggregator runs pose-free (no camera tokens) and the camera head and the
  depth head read its tokens; loss = camera * the pose-encoding error + depth *
  VGGT's confidence-weighted depth loss (`ConfidencePointLoss` on depth [..., 1] in the
  normalised scene scale, on `log(1 + d)` with the default `point_space`). The decoder
  does not run.
- Diffusion: the frozen encoder encodes the sources, the targets (RGB + points in the
  normalised scene frame, or RGB only with 3 noise channels) are noised by the DDPM
  schedule and the diffusion decoder is trained with `DenoisingLoss` in its prediction
  type.

In the latent mode (a model with an image VAE, `NVSModel.codec`, frozen) the decoder's
targets are the VAE's latents of the target images (`NVSModel.image_latents`, no
gradient): the regression L2 is taken between predicted and encoded latents (LPIPS, if
weighted, on the decoded prediction), the diffusion stage noises the latents, and the
ground-truth points are taken on the latent grid (`Views.target_points`).

Dimension legend:
    b   scenes (batch)       v   views (sources first)    s   source views
    t   target views         k   diffusion channels       i   camera-head iterations
    h, w    image height / width        f   the VAE's downsampling (latent mode, else 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gen_nvs.data import SceneBatch
from gen_nvs.geometry import cameras as cam
from gen_nvs.geometry.rgbd import depth_to_points, points_to_depth
from gen_nvs.models.decoder import DecoderOutput
from gen_nvs.models.diffusion import DiffusionDecoder
from gen_nvs.models.heads import compress_points
from gen_nvs.models.losses import ConfidencePointLoss, DenoisingLoss
from gen_nvs.models.nvs import (
    NVSModel,
    apply_batch_normalization,
    batch_normalization,
)

# Later camera-head iterations weigh more (VGGT's camera loss).
CAMERA_ITERATION_GAMMA = 0.6


@dataclass
class Views:
    """A batch cut to this step's views: `num_sources` sources, then the targets.

    images [b, v, 3, h, w]; c2w [b, v, 4, 4]; fxfycxcy [b, v, 4]; depth, depth_valid
    [b, v, h, w] or None; normalized: the cameras in the scene frame of the first source
    (the frame the model predicts points in); scale [b] the normalisation's divisor.
    """

    images: Tensor
    c2w: Tensor
    fxfycxcy: Tensor
    num_sources: int
    depth: Tensor | None
    depth_valid: Tensor | None
    normalized: Tensor
    scale: Tensor

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    @property
    def target_images(self) -> Tensor:
        return self.images[:, self.num_sources :]

    def target_points(self, downsample: int = 1) -> tuple[Tensor, Tensor] | None:
        """Ground-truth points [b, t, h/f, w/f, 3] of the targets in the normalised scene
        frame and their validity [b, t, h/f, w/f], or None without depth.

        `downsample` f > 1 (the latent grid) keeps pixel (f i + f/2, f j + f/2) of each
        f x f block: a surface point half a pixel from the latent ray through the
        block's centre, where an average would put points between surfaces at edges.
        """
        if self.depth is None:
            return None
        s = self.num_sources
        depth = self.depth[:, s:] / self.scale[:, None, None, None]
        points = depth_to_points(depth, self.fxfycxcy[:, s:], self.normalized[:, s:])
        valid = self.depth_valid[:, s:] & torch.isfinite(points).all(dim=-1)
        points, valid = _on_grid(points, downsample), _on_grid(valid, downsample)
        return torch.where(valid[..., None], points, torch.zeros_like(points)), valid

    def target_depth(self, downsample: int = 1) -> tuple[Tensor, Tensor] | None:
        """Ground-truth depth [b, t, h/f, w/f] of the targets in the normalised scene scale
        and its validity (finite and > 0), or None without depth; `downsample` as
        `target_points`'."""
        gt = self._depth(slice(self.num_sources, None))
        return None if gt is None else (_on_grid(gt[0], downsample), _on_grid(gt[1], downsample))

    def source_depth(self) -> tuple[Tensor, Tensor] | None:
        """Ground-truth depth [b, s, h, w] of the sources in the normalised scene scale and
        its validity [b, s, h, w] (finite and > 0), or None without depth."""
        return self._depth(slice(None, self.num_sources))

    def _depth(self, views: slice) -> tuple[Tensor, Tensor] | None:
        if self.depth is None:
            return None
        depth = self.depth[:, views] / self.scale[:, None, None, None]
        valid = self.depth_valid[:, views] & torch.isfinite(depth) & (depth > 0)
        return torch.where(valid, depth, torch.zeros_like(depth)), valid


def _on_grid(x: Tensor, downsample: int) -> Tensor:
    """[b, v, h, w, ...] -> pixel (f i + f/2, f j + f/2) of each f x f block (f > 1), as
    `Views.target_points` keeps them; x itself for f = 1."""
    if downsample == 1:
        return x
    keep = slice(downsample // 2, None, downsample)
    return x[:, :, keep, keep]


def select_views(batch: SceneBatch, num_sources: int, generator: torch.Generator) -> Views:
    """Keep the first source and `num_sources - 1` others drawn at random (the loaders
    give `batch.num_sources` sources), then every target."""
    if not 1 <= num_sources <= batch.num_sources:
        raise ValueError(f"num_sources must be in 1..{batch.num_sources}, got {num_sources}")
    others = torch.randperm(batch.num_sources - 1, generator=generator)[: num_sources - 1] + 1
    keep = [0, *sorted(others.tolist()), *range(batch.num_sources, batch.images.shape[1])]
    return _cut(batch, keep, num_sources)


def all_sources(batch: SceneBatch) -> Views:
    """Every view of the batch as a source (the geometry stage), the scene normalised
    over all of them."""
    v = batch.images.shape[1]
    return _cut(batch, list(range(v)), v)


def _cut(batch: SceneBatch, keep: list[int], num_sources: int) -> Views:
    """The views `keep` of the batch (the first `num_sources` of them sources)."""
    index = torch.tensor(keep, device=batch.images.device)
    c2w = batch.c2w[:, index]
    reference_w2c, scale = batch_normalization(c2w, num_sources)
    normalized = apply_batch_normalization(c2w, reference_w2c, scale)
    return Views(
        images=batch.images[:, index],
        c2w=c2w,
        fxfycxcy=batch.fxfycxcy[:, index],
        num_sources=num_sources,
        depth=None if batch.depth is None else batch.depth[:, index],
        depth_valid=None if batch.depth_valid is None else batch.depth_valid[:, index],
        normalized=normalized,
        scale=scale,
    )


# --------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------


class RegressionForward(nn.Module):
    """model(sources) -> (the targets' DecoderOutput, with `camera_head` the camera head's
    pose encodings [i, b, s, 9] from pose-free aggregator tokens (else None), in the
    latent mode the target images' latents [b, t, k, h/f, w/f] (else None)).

    In the latent mode the output is the decoder's own (latents, points and conf on the
    latent grid), with rgb decoded from the latents only when `decode_rgb` (for LPIPS).
    """

    def __init__(self, model: NVSModel, *, camera_head: bool, decode_rgb: bool = False) -> None:
        super().__init__()
        if camera_head and model.camera_head is None:
            raise ValueError("loss.camera > 0 needs a model with a camera head")
        self.model = model
        self.camera_head = camera_head
        self.decode_rgb = decode_rgb

    def forward(
        self, views: Views, posed: bool
    ) -> tuple[DecoderOutput, Tensor | None, Tensor | None]:
        s = views.num_sources
        output = self.model(views.images, views.c2w, views.fxfycxcy, s, posed=posed, decode=False)
        target_latents = None
        if self.model.codec is not None:
            with torch.no_grad():  # the frozen VAE: targets, not a path for gradients
                target_latents = self.model.image_latents(views.target_images)
            if self.decode_rgb:
                output.rgb = self.model.to_views(output, views.image_hw).rgb
        if not self.camera_head:
            return output, None, target_latents
        tokens = self.model.encoder.aggregate(views.images[:, :s], None)  # (b, s, n, 2c)
        return output, self.model.camera_head(tokens, return_all=True), target_latents


class RegressionLoss:
    """Weighted sum of the regression losses -> (total, {name: value}) for logging.

    Every term with a weight > 0 is in the total's graph on every batch, so that each
    trained parameter gets a gradient on every step (DDP without unused-parameter
    detection needs it): a batch without depth adds the point outputs times 0, and its
    logged terms leave out "points". `names` lists every term that can be logged.
    perceptual: a callable (pred, target) on [n, 3, h, w] in [0, 1], or None when its
    weight is 0.
    downsample: the VAE's factor f in the latent mode (1 in pixel mode): the l2 term is
    then taken on latents and the points on the latent grid.
    """

    def __init__(
        self,
        *,
        l2: float,
        perceptual: float,
        points: float,
        camera: float,
        point_alpha: float,
        point_space: str = "log",
        decoder_l2: float = 0.0,
        log_depth: float = 0.0,
        point_gradient: float = 0.0,
        perceptual_fn=None,
        downsample: int = 1,
    ) -> None:
        check_point_space(point_space)
        if perceptual > 0 and perceptual_fn is None:
            raise ValueError("loss.perceptual > 0 needs a perceptual loss function")
        self.weights = {
            "l2": l2,
            "decoder_l2": decoder_l2,
            "perceptual": perceptual,
            "points": points,
            "camera": camera,
            "log_depth": log_depth,
        }
        self.names = [name for name, weight in self.weights.items() if weight > 0]
        self.perceptual_fn = perceptual_fn
        self.point_loss = ConfidencePointLoss(alpha=point_alpha, gradient=point_gradient)
        self.point_space = point_space
        self.downsample = downsample

    def __call__(
        self,
        output: DecoderOutput,
        poses: Tensor | None,
        views: Views,
        target_latents: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """`target_latents` [b, t, k, h/f, w/f]: the latent mode's l2 targets, which a
        latent output (`output.latents`) needs."""
        target = views.target_images
        if output.latents is not None:
            if target_latents is None:
                raise ValueError("a latent-mode output needs the target images' latents")
            terms = {"l2": F.mse_loss(output.latents.float(), target_latents.float())}
        else:
            terms = {"l2": F.mse_loss(output.rgb.float(), target)}
        if self.weights["decoder_l2"] > 0:
            terms["decoder_l2"] = F.mse_loss(output.decoder_rgb.float(), target)
        unused = []  # outputs without a loss on this batch
        if self.weights["perceptual"] > 0:
            flat = "b t c h w -> (b t) c h w"
            terms["perceptual"] = self.perceptual_fn(
                rearrange(output.rgb.float(), flat), rearrange(target, flat)
            ).mean()
        if self.weights["points"] > 0 and output.points is not None:
            gt = views.target_points(self.downsample)
            if gt is None:
                unused += [output.points, output.conf]
            else:
                points, gt_points = output.points.float(), gt[0]
                if self.point_space == "log":
                    points, gt_points = compress_points(points), compress_points(gt_points)
                terms["points"] = self.point_loss(points, output.conf.float(), gt_points, gt[1])
        if self.weights["log_depth"] > 0 and output.points is not None:
            gt = views.target_depth(self.downsample)
            if gt is None:
                unused += [output.points]
            else:
                c2w = views.normalized[:, views.num_sources :]
                terms["log_depth"] = log_depth_error(output.points, gt[0], gt[1], c2w)
        if self.weights["camera"] > 0:
            if poses is None:
                raise ValueError("loss.camera > 0 needs the camera head's pose encodings")
            terms["camera"] = camera_loss(poses.float(), views)
        total = sum(self.weights[name] * value for name, value in terms.items())
        if unused:
            total = total + zero_from(*unused)
        return total, terms


def log_depth_error(points: Tensor, gt_depth: Tensor, valid: Tensor, c2w: Tensor) -> Tensor:
    """Mean |log d - log d_gt| over the valid pixels [b, t, h, w] of points [b, t, h, w, 3]
    (normalised scene frame), d their depth along the axis of their cameras c2w
    [b, t, 4, 4], against gt_depth [b, t, h, w] (> 0 where valid); a predicted depth <= 0
    counts as 1e-3."""
    depth = points_to_depth(points.float(), c2w.float()).clamp_min(1e-3)
    error = (depth.log() - torch.where(valid, gt_depth.float(), 1.0).log()).abs()
    return (error * valid).sum() / valid.sum().clamp_min(1)


def check_point_space(space: str) -> None:
    """`loss.point_space`: "log" (compare `compress_points` of both sides, the point
    head's own space) or "linear"."""
    if space not in ("log", "linear"):
        raise ValueError(f"loss.point_space must be 'log' or 'linear', got {space!r}")


def zero_from(*tensors: Tensor) -> Tensor:
    """0 computed from `tensors`: added to a loss it changes neither the loss nor its
    gradients, but puts the parameters behind the tensors in the backward pass.
    Non-finite values are zeroed first (0 * inf would be NaN)."""
    return sum(t.float().nan_to_num(0.0, 0.0, 0.0).sum() for t in tensors) * 0.0


def camera_loss(poses: Tensor, views: Views) -> Tensor:
    """L1 error of pose encodings [i, b, s, 9] against the normalised source cameras.

    The camera head's encoding decodes to world-to-camera extrinsics
    (`NVSModel.estimate_cameras`), so the target encodes the inverse of each normalised
    c2w: the first source is the identity.
    """
    s = views.num_sources
    w2c = cam.invert_rigid(views.normalized[:, :s])
    target = cam.pose_encoding(w2c, views.fxfycxcy[:, :s], views.image_hw)  # (b, s, 9)
    n = poses.shape[0]
    weights = [CAMERA_ITERATION_GAMMA ** (n - 1 - i) for i in range(n)]
    errors = [(poses[i] - target).abs().mean() for i in range(n)]
    return sum(w * e for w, e in zip(weights, errors, strict=True)) / sum(weights)


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


class GeometryForward(nn.Module):
    """Pose-free aggregator tokens of the sources (as VGGT: no camera tokens, so the
    geometry is learned from the pixels) -> the camera head's pose encodings
    [i, b, s, 9] and, with `depth_head`, the depth head's (depth, conf) [b, s, h, w]."""

    def __init__(self, model: NVSModel, *, depth_head: bool) -> None:
        super().__init__()
        if model.camera_head is None:
            raise ValueError(
                "the geometry stage trains the camera head, and this model has none "
                "(model.init_from an export without one?)"
            )
        if depth_head and model.depth_head is None:
            raise ValueError(
                "loss.depth > 0 needs a model with a depth head: set model.depth_head={} "
                "(DepthHead options)"
            )
        self.model = model
        self.depth_head = depth_head

    def forward(self, views: Views) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        images = views.images[:, : views.num_sources]
        tokens = self.model.encoder.aggregate(images, None)  # (b, s, n, 2c)
        poses = self.model.camera_head(tokens, return_all=True)  # (i, b, s, 9)
        depth = self.model.estimate_depth(images, tokens) if self.depth_head else None
        return poses, depth


class GeometryLoss:
    """camera * `camera_loss` + depth * VGGT's confidence-weighted depth loss
    (`conf * |d - d_gt| - alpha * log(conf)` over valid pixels) -> (total, {name: value}).

    Depth is compared in the normalised scene scale, on `log(1 + d)` with `space` "log"
    (as the point loss: far depth such as the sky does not swamp the rest) or as is
    ("linear"). A batch without depth adds the depth outputs times 0 (every trained
    parameter in the graph, as DDP needs) and its logged terms leave out "depth".
    """

    def __init__(
        self,
        *,
        camera: float,
        depth: float,
        alpha: float,
        space: str = "log",
        gradient: float = 0.0,
    ) -> None:
        check_point_space(space)
        if camera <= 0 or depth < 0:
            raise ValueError(
                f"the geometry stage trains the camera head: it needs loss.camera > 0 (and "
                f"loss.depth >= 0), got loss.camera={camera}, loss.depth={depth}"
            )
        self.weights = {"camera": camera, "depth": depth}
        self.names = [name for name, weight in self.weights.items() if weight > 0]
        self.depth_loss = ConfidencePointLoss(alpha=alpha, gradient=gradient)
        self.space = space

    def __call__(
        self, poses: Tensor, depth: tuple[Tensor, Tensor] | None, views: Views
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms, unused = {"camera": camera_loss(poses.float(), views)}, []
        if self.weights["depth"] > 0:
            if depth is None:
                raise ValueError("loss.depth > 0 needs the depth head's output")
            gt = views.source_depth()
            if gt is None:
                unused += list(depth)
            else:
                (pred, conf), (target, valid) = depth, gt
                if self.space == "log":
                    pred, target = compress_points(pred), compress_points(target)
                terms["depth"] = self.depth_loss(pred[..., None], conf, target[..., None], valid)
        total = sum(self.weights[name] * value for name, value in terms.items())
        if unused:
            total = total + zero_from(*unused)
        return total, terms


# --------------------------------------------------------------------------------------
# Diffusion
# --------------------------------------------------------------------------------------


class DiffusionForward(nn.Module):
    """Frozen encoder + the diffusion decoder: noisy targets -> prediction [b, t, k, h, w]."""

    def __init__(self, model: NVSModel) -> None:
        super().__init__()
        if model.diffusion is None:
            raise ValueError("the diffusion stage needs a model with a diffusion decoder")
        self.model = model

    def forward(
        self,
        views: Views,
        x_t: Tensor,
        timesteps: Tensor,
        posed: bool,
        generator: torch.Generator,
    ) -> Tensor:
        s = views.num_sources
        with torch.no_grad():  # the frozen encoder, exactly as `NVSModel.encode` runs it
            source_tokens = self.model.encode_sources(
                views.images[:, :s], views.normalized[:, :s], views.fxfycxcy[:, :s], posed=posed
            )  # (b, s, p, c)
        rays = self.model.target_rays(
            views.normalized[:, s:], views.fxfycxcy[:, s:], views.image_hw
        )  # (b, t, 6, h/f, w/f)
        source_rays = self.model.source_token_rays(
            views.normalized[:, :s], views.fxfycxcy[:, :s], views.image_hw
        )
        return self.model.diffusion(
            source_tokens, x_t, timesteps, rays, source_rays, generator=generator
        )


@dataclass
class NoisedTargets:
    """x0, noise, x_t [b, t, k, h, w]; timesteps, alpha, sigma [b, t]; valid
    [b, t, k, h, w] (points only where there is depth)."""

    x0: Tensor
    noise: Tensor
    x_t: Tensor
    timesteps: Tensor
    alpha: Tensor
    sigma: Tensor
    valid: Tensor


def noise_targets(
    views: Views,
    alphas_cumprod: Tensor,
    diffusion: DiffusionDecoder,
    generator: torch.Generator,
    target_latents: Tensor | None = None,
    downsample: int = 1,
) -> NoisedTargets:
    """The DDPM forward process on the targets in `diffusion`'s space: a uniform timestep
    per target view, `x_t = sqrt(a) x0 + sqrt(1 - a) eps` with a = alphas_cumprod[t]
    (diffusers' `DDPMScheduler.add_noise`). Draws come from the CPU `generator`.

    In the latent mode `target_latents` [b, t, k, h/f, w/f] are the image part (the VAE's
    factor f: `downsample`, for the points' grid); else the target images are."""
    image = views.target_images
    if diffusion.latent:
        if target_latents is None:
            raise ValueError("a latent-mode diffusion decoder needs the targets' latents")
        image = target_latents
    b, t, _, h, w = image.shape
    valid_image = torch.ones_like(image, dtype=torch.bool)
    if not diffusion.with_points:
        x0, valid = diffusion.to_sample(image), valid_image
    else:
        gt = views.target_points(downsample)
        if gt is None:
            points = image.new_zeros(b, t, h, w, 3)
            point_valid = torch.zeros(b, t, h, w, dtype=torch.bool, device=image.device)
        else:
            points, point_valid = gt
        x0 = diffusion.to_sample(image, points)
        valid = torch.cat([valid_image, point_valid[:, :, None].expand(b, t, 3, h, w)], dim=2)
    timesteps = torch.randint(len(alphas_cumprod), (b, t), generator=generator)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    alpha_bar = alphas_cumprod[timesteps].to(x0)
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x_t = alpha[..., None, None, None] * x0 + sigma[..., None, None, None] * noise
    return NoisedTargets(x0, noise, x_t, timesteps.to(x0.device), alpha, sigma, valid)


def denoising_loss(
    loss: DenoisingLoss, prediction: Tensor, noised: NoisedTargets
) -> tuple[Tensor, dict[str, Tensor]]:
    total = loss(
        prediction.float(), noised.x0, noised.noise, noised.alpha, noised.sigma, noised.valid
    )
    return total, {"denoising": total}
