"""The deterministic NVS model: VGGT encoder + highway decoder (+ camera head, depth
head).

`NVSModel` owns the camera pipeline that glues the parts together, as the published
LagerNVS model does: scene normalisation relative to the first source camera, camera
tokens for the encoder, Pluecker ray maps for the decoder's targets. Scenes are encoded
once into an `EncodedScene` (the decoder's `SceneCache` plus the normalisation), then any
number of target cameras are rendered against it.

In the latent mode (LVSM-VAE; a `latent` config) the model also holds an image VAE
(`codec`, a frozen `LatentCodec` whose weights are the model's): the encoder still sees
the source pixels, but the decoder renders the VAE's latents on its latent grid (target
rays at h/f x w/f with `latent_intrinsics`), which `render` decodes to RGB; points and
confidence are upsampled to the image, so every output keeps the pixel mode's shapes.

Dimension legend:
    b   scenes (batch)       s   source views      t   target views
    v   views of a scene (s sources first, then t targets)
    m   source tokens of a scene       n   aggregator tokens per view
    c   aggregator width               h, w    image height / width (sources and
                                               targets may differ)
    f   the VAE's downsampling factor (latent mode; the latent grid is h/f x w/f)
    k   the VAE's latent channels
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from gen_nvs.geometry import cameras as cam
from gen_nvs.geometry.rgbd import points_to_depth
from gen_nvs.geometry.warp import backward_warp
from gen_nvs.models import checkpoint as ckpt
from gen_nvs.models.cache import SceneCache
from gen_nvs.models.camera_head import CameraHead
from gen_nvs.models.config import (
    CameraHeadConfig,
    DecoderConfig,
    DepthHeadConfig,
    DiffusionConfig,
    EncoderConfig,
    LatentConfig,
    ModelConfig,
    RefinerConfig,
    model_config,
)
from gen_nvs.models.decoder import DecoderOutput, HighwayDecoder, patch_rays
from gen_nvs.models.depth_head import DepthHead
from gen_nvs.models.diffusion import DiffusionDecoder
from gen_nvs.models.encoder import VGGTEncoder
from gen_nvs.models.refiner import WarpRefiner, resize_views
from gen_nvs.models.vae import LatentCodec

# The embedded default model's inference export, shipped inside the package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default"


@dataclass
class EncodedScene:
    """A scene's sources, encoded once.

    cache: the decoder's SceneCache (encoder tokens, cached source keys/values).
    diffusion: the model's diffusion decoder (None for a regression-only model).
    `diffusion_cache` prepares the same sources for it on first use (regression-only use
    never pays for it); one cache serves every step of every sample.
    reference_w2c: [b, 4, 4] inverse of the first source camera (input world frame).
    scale: [b] divisor applied to translations after `reference_w2c`.
    source_c2w: [b, s, 4, 4] normalised source cameras (the camera head's estimate
        when pose-free; None when pose-free without a camera head).
    posed: whether the source cameras were given.
    source_fxfycxcy: [b, s, 4] their intrinsics in pixels of the source images (the camera
        head's estimate when pose-free; None with `source_c2w`).
    source_images: [b, s, 3, h, w] the source images, kept for a model with a warp refiner
        (None otherwise); `NVSModel.refiner_sources` caches what the refiner reads of them.
    """

    cache: SceneCache
    reference_w2c: Tensor
    scale: Tensor
    source_c2w: Tensor | None
    posed: bool
    source_fxfycxcy: Tensor | None = None
    diffusion: DiffusionDecoder | None = None
    source_images: Tensor | None = None
    _diffusion_cache: SceneCache | None = field(default=None, init=False, repr=False)
    _refiner_sources: dict[tuple[int, int], RefinerSources] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def diffusion_cache(self) -> SceneCache | None:
        """The sources prepared for the diffusion decoder (built on first access, in the
        caller's grad mode), or None without a diffusion decoder."""
        if self.diffusion is not None and self._diffusion_cache is None:
            context = self.cache.context  # the flattened sources: [b, 1, m, ...]
            rays = None if context.rays is None else context.rays[:, None]
            self._diffusion_cache = SceneCache.build(
                self.diffusion.decoder, context.tokens[:, None], rays
            )
        return self._diffusion_cache

    def refiner_sources(
        self, image_hw: tuple[int, int], build: Callable[[], RefinerSources]
    ) -> RefinerSources:
        """What the warp refiner reads of the sources for targets of `image_hw`: `build()`
        the first time, kept for every later render of that size."""
        if image_hw not in self._refiner_sources:
            self._refiner_sources[image_hw] = build()
        return self._refiner_sources[image_hw]

    def normalize(self, c2w: Tensor) -> Tensor:
        """Cameras [b, t, 4, 4] in the input world frame -> the normalised scene frame."""
        return apply_batch_normalization(c2w, self.reference_w2c, self.scale)

    def scene_frame(self, c2w: Tensor, normalized: bool) -> Tensor:
        """Target cameras [b, t, 4, 4] in the normalised scene frame: as given when
        `normalized` or when the scene is pose-free (its frame is the first camera's),
        else `normalize`d from the input world frame."""
        return c2w if normalized or not self.posed else self.normalize(c2w)


@dataclass
class RefinerSources:
    """What the warp refiner reads of a scene's sources, at the targets' image size.

    images [b, s, 3, h, w]; c2w [b, s, 4, 4] in the scene frame; fxfycxcy [b, s, 4] in
    pixels of these images; depth [b, s, h, w]: the point head's, rendered at the sources'
    own cameras (the scene frame's scale).
    """

    images: Tensor
    c2w: Tensor
    fxfycxcy: Tensor
    depth: Tensor


class NVSModel(nn.Module):
    """Source images (+ cameras) -> novel views (RGB, and points + confidence with a point
    head) for any target camera.

    Built from typed configs (`build_model` turns a preset name or a JSON/YAML tree into
    them): `encoder` and `decoder`, and optionally `camera_head` (pose-free use),
    `depth_head` and `diffusion`.

    With a `diffusion` config the model also holds a DiffusionDecoder (`self.diffusion`,
    its own copy of the renderer, fine-tuned as a denoiser) beside the regression decoder,
    which stays for fast rendering and for the known region of occlusion-aware sampling.

    With a `depth_head` config (`dim` and `patch_size` default to the encoder's) the model
    also estimates per-pixel depth from pose-free aggregator tokens (`estimate_depth`),
    what the geometry training stage learns. Without one (every preset) the model, its
    config and its weights are exactly those of a model before the option existed.

    With a `latent` config the model renders in the latent space of an image VAE (see the
    module docstring), held as `self.codec` (frozen; its weights under `codec.`); the
    decoder's config must output the VAE's latent channels (`ModelConfig.with_latent`).
    Without one (every preset) `self.codec` is None and nothing else changes.

    With a `refiner` config (the embedded model's; no preset has one) every render is
    corrected by a `WarpRefiner` (`self.refiner`) from the source pixels that the point
    head's geometry points at; the decoder's own render stays in `decoder_rgb`. A scene
    without source cameras (pose-free, no camera head) is rendered unrefined.
    """

    def __init__(
        self,
        *,
        encoder: EncoderConfig,
        decoder: DecoderConfig,
        camera_head: CameraHeadConfig | None = None,
        depth_head: DepthHeadConfig | None = None,
        diffusion: DiffusionConfig | None = None,
        latent: LatentConfig | None = None,
        refiner: RefinerConfig | None = None,
    ) -> None:
        super().__init__()
        # Checks the parts' types, that the encoder's output fits the decoder and the
        # decoder's output the latent mode.
        self._config = ModelConfig(
            encoder=encoder,
            decoder=decoder,
            camera_head=camera_head,
            latent=latent,
            refiner=refiner,
        )
        self.encoder = VGGTEncoder(**encoder.kwargs())
        self.decoder = HighwayDecoder(**decoder.kwargs())
        self.camera_head = None if camera_head is None else CameraHead(**camera_head.kwargs())
        self.depth_head: DepthHead | None = None
        if depth_head is not None:
            self.add_depth_head(depth_head)
        self.diffusion: DiffusionDecoder | None = None
        # The training noise schedule (`samplers.build_scheduler` options, prediction type
        # included) that exports carry for the samplers; the network never reads it.
        self.noise_schedule: dict[str, Any] | None = None
        if diffusion is not None:
            self._config = replace(self._config, diffusion=diffusion)
            self.diffusion = DiffusionDecoder(decoder=decoder, **diffusion.kwargs())
        self.codec = None if latent is None else LatentCodec(latent.vae)
        self.refiner = None if refiner is None else WarpRefiner(**refiner.kwargs())

    @property
    def config(self) -> ModelConfig:
        """What `build_model` rebuilds the model from (`to_dict()`: its config.json tree)."""
        return self._config

    @property
    def patch_size(self) -> int:
        """Image pixels per side of a target token: the decoder's patch size, times the
        VAE's downsampling in the latent mode. Render sizes are multiples of it."""
        return self.decoder.patch_size * self.downsample

    @property
    def downsample(self) -> int:
        """The factor f between images and the decoder's ray grid (1 in pixel mode)."""
        return 1 if self.codec is None else self.codec.downsample

    @property
    def can_sample(self) -> bool:
        """Whether the model has a diffusion decoder (can draw samples)."""
        return self.diffusion is not None

    def add_diffusion(self, **options: Any) -> DiffusionDecoder:
        """Start the diffusion stage: a DiffusionDecoder converted from the (trained)
        regression decoder (`DiffusionDecoder.from_regression` options), held as
        `self.diffusion` and recorded in the config. Replaces an existing one."""
        self.diffusion = DiffusionDecoder.from_regression(self.decoder, **options)
        saved = self.diffusion.config
        del saved["decoder"]  # always the model's
        self._config = replace(self._config, diffusion=DiffusionConfig(**saved))
        return self.diffusion

    def add_depth_head(self, config: DepthHeadConfig | None = None) -> DepthHead:
        """A new DepthHead (`config`: its options, default all defaults; `dim` and
        `patch_size` None are the encoder's), held as `self.depth_head` and recorded in
        the config with those filled in, so the export rebuilds it. Replaces an existing
        one."""
        dim = self.encoder.geo_feature_connector.in_features  # 2 x the aggregator width
        patch = self.encoder.patch_size
        if config is None:
            config = DepthHeadConfig()
        config = replace(
            config,
            dim=dim if config.dim is None else config.dim,
            patch_size=patch if config.patch_size is None else config.patch_size,
        )
        if config.dim != dim or config.patch_size != patch:
            raise ValueError(
                f"depth_head dim {config.dim} and patch_size {config.patch_size} must be the "
                f"encoder's token width {dim} and patch size {patch}"
            )
        self.depth_head = DepthHead(**config.kwargs())
        self._config = replace(self._config, depth_head=config)
        return self.depth_head

    def add_refiner(self, config: RefinerConfig | None = None) -> WarpRefiner:
        """A new WarpRefiner (`config`: its options, default all defaults), held as
        `self.refiner` and recorded in the config, so the export rebuilds it (a new one
        returns the render unchanged until trained). Replaces an existing one."""
        config = RefinerConfig() if config is None else config
        self._config = replace(self._config, refiner=config)  # checks the point head
        self.refiner = WarpRefiner(**config.kwargs())
        return self.refiner

    # ----------------------------------------------------------------------------------
    # Cameras
    # ----------------------------------------------------------------------------------

    def estimate_cameras(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Pose-free use: the camera head's estimate of every view's camera.

        images [b, s, 3, h, w] in [0, 1] -> (c2w [b, s, 4, 4] relative to the first view,
        fxfycxcy [b, s, 4] in pixels of the input images). VGGT's pose encoding decodes to
        world-to-camera extrinsics, which are inverted here.
        """
        if self.camera_head is None:
            raise ValueError("this model has no camera head: source cameras must be given")
        tokens = self.encoder.aggregate(images, None)  # (b, s, n, 2c)
        encoding = self.camera_head(tokens)  # (b, s, 9)
        w2c, fxfycxcy = cam.pose_encoding_to_camera(encoding, tuple(images.shape[-2:]))
        return cam.invert_rigid(w2c), fxfycxcy

    def estimate_depth(
        self, images: Tensor, aggregator_tokens: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Pose-free use: the depth head's per-pixel depth of every view.

        images [b, s, 3, h, w] in [0, 1]; aggregator_tokens [b, s, n, 2c]: the pose-free
        `encoder.aggregate(images)` when the caller has it already (the camera head reads
        the same tokens). Returns (depth [b, s, h, w] along each view's optical axis, in
        the normalised scene scale that the camera head's translations have; conf
        [b, s, h, w] > 1), float32.
        """
        if self.depth_head is None:
            raise ValueError("this model has no depth head (model config 'depth_head')")
        if aggregator_tokens is None:
            aggregator_tokens = self.encoder.aggregate(images, None)  # (b, s, n, 2c)
        hw = (images.shape[-2], images.shape[-1])
        grid = self.encoder.patch_grid(*hw)
        patches = aggregator_tokens[..., self.encoder.aggregator.num_special_tokens :, :]
        return self.depth_head(patches, grid, hw)

    # ----------------------------------------------------------------------------------
    # Encoding and rendering
    # ----------------------------------------------------------------------------------

    def encode(
        self,
        images: Tensor,
        c2w: Tensor | None = None,
        fxfycxcy: Tensor | None = None,
    ) -> EncodedScene:
        """Encode the source views of b scenes once.

        images [b, s, 3, h, w] in [0, 1]; c2w [b, s, 4, 4] and fxfycxcy [b, s, 4] (pixels of
        the source images), or both None for pose-free use: the camera tokens then carry
        no pose, target cameras are given in the first source camera's frame at the
        normalised scale, and the camera head (if any) estimates the source cameras.
        """
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [b, s, 3, h, w], got {list(images.shape)}")
        b, s = images.shape[:2]
        hw = (images.shape[-2], images.shape[-1])
        posed = c2w is not None
        if posed != (fxfycxcy is not None):
            raise ValueError("give both c2w and fxfycxcy for posed input, or neither")
        if posed:
            _check_cameras(c2w, fxfycxcy, (b, s), hw, "source cameras")
            reference_w2c, scale = batch_normalization(c2w, s)
            source_c2w = apply_batch_normalization(c2w, reference_w2c, scale)
            source_tokens = self.encode_sources(images, source_c2w, fxfycxcy)  # (b, s, p, c)
            source_fxfycxcy = fxfycxcy
        else:
            eye = torch.eye(4, dtype=images.dtype, device=images.device)
            reference_w2c, scale = eye.repeat(b, 1, 1), images.new_ones(b)
            source_c2w, source_fxfycxcy = self._estimate_normalized_cameras(images)
            source_tokens = self.encode_sources(images)
        source_rays = self.source_token_rays(source_c2w, source_fxfycxcy, hw)
        return EncodedScene(
            cache=SceneCache.build(self.decoder, source_tokens, source_rays),
            reference_w2c=reference_w2c,
            scale=scale,
            source_c2w=source_c2w,
            posed=posed,
            source_fxfycxcy=source_fxfycxcy,
            diffusion=self.diffusion,
            source_images=None if self.refiner is None else images,
        )

    def encode_sources(
        self,
        images: Tensor,
        c2w: Tensor | None = None,
        fxfycxcy: Tensor | None = None,
        *,
        posed: bool = True,
        training: bool = False,
    ) -> Tensor:
        """The one way every path (rendering, sampling, each training stage) turns source
        views into encoder tokens.

        images [b, s, 3, h, w] in [0, 1]; c2w [b, s, 4, 4] normalised source cameras and
        fxfycxcy [b, s, 4], or both None when no camera is known (pose-free camera
        tokens). posed=False with cameras: camera-token dropout (the pose numbers zeroed,
        as the published training does; no source rays). `training` as in
        `cameras.camera_tokens`. Returns [b, s, p, c].
        """
        b, s = images.shape[:2]
        hw = (images.shape[-2], images.shape[-1])
        if c2w is None:
            tokens = cam.pose_free_camera_tokens(s, dtype=images.dtype, device=images.device)
            tokens, rays = tokens.expand(b, s, -1), None
        else:
            tokens = batch_camera_tokens(c2w, fxfycxcy, hw, s, posed, training)
            rays = self._source_rays(c2w, fxfycxcy, hw) if posed else None
        return self.encoder(images, tokens, source_rays=rays).tokens

    def _source_rays(self, c2w: Tensor, fxfycxcy: Tensor, hw: tuple[int, int]) -> Tensor | None:
        """Pluecker rays [b, s, 6, h, w] of normalised source cameras, for an encoder that
        takes them (`source_rays` or `source_skip` option), else None."""
        if not self.encoder.uses_source_rays:
            return None
        return cam.plucker_rays(c2w, fxfycxcy, *hw)

    def source_token_rays(
        self, c2w: Tensor | None, fxfycxcy: Tensor | None, hw: tuple[int, int]
    ) -> Tensor | None:
        """Each source token's ray [b, s, p, 6] (`patch_rays` over the encoder's patch
        grid) of normalised source cameras, for a decoder with the `ray_bias` option;
        None for other decoders. Raises ValueError when such a decoder has no cameras."""
        if self.decoder.ray_bias is None:
            return None
        if c2w is None or fxfycxcy is None:
            raise ValueError(
                "this model's decoder (ray_bias) needs source cameras: give them, or use a "
                "model with a camera head for pose-free input"
            )
        return patch_rays(cam.plucker_rays(c2w, fxfycxcy, *hw), self.encoder.patch_grid(*hw))

    def _estimate_normalized_cameras(
        self, images: Tensor
    ) -> tuple[Tensor, Tensor] | tuple[None, None]:
        """The camera head's source cameras in the normalised scene frame and their
        intrinsics, (None, None) without a camera head."""
        if self.camera_head is None:
            return None, None
        c2w, fxfycxcy = self.estimate_cameras(images)
        reference_w2c, scale = batch_normalization(c2w, c2w.shape[1])
        return apply_batch_normalization(c2w, reference_w2c, scale), fxfycxcy

    def render(
        self,
        scene: EncodedScene,
        target_c2w: Tensor,
        target_fxfycxcy: Tensor,
        image_hw: tuple[int, int],
        *,
        normalized: bool = False,
        chunk_size: int | None = None,
        progress: Callable[[float], object] | None = None,
        out_device: torch.device | str | None = None,
    ) -> DecoderOutput:
        """Render target cameras against an encoded scene.

        target_c2w [b, t, 4, 4] in the input world frame (or, with `normalized`, already in
        the scene frame: always so for pose-free scenes); target_fxfycxcy [b, t, 4] in
        pixels of the `image_hw` target images (h and w multiples of the patch size).
        Returns DecoderOutput: rgb [b, t, 3, h, w]; points [b, t, h, w, 3] in the scene
        frame and conf [b, t, h, w] with a point head; in the latent mode also the
        decoder's latents [b, t, k, h/f, w/f] (see `to_views`). `chunk_size`, `progress`
        and `out_device`: as for `SceneCache.render`.
        """
        b = scene.cache.num_scenes
        if target_c2w.ndim != 4 or target_c2w.shape[0] != b:
            raise ValueError(
                f"target cameras must be [{b}, t, 4, 4] (one set per encoded scene), "
                f"got {list(target_c2w.shape)}"
            )
        t = target_c2w.shape[1]
        _check_cameras(target_c2w, target_fxfycxcy, (b, t), image_hw, "target cameras")
        target_c2w = scene.scene_frame(target_c2w, normalized)
        rays = self.target_rays(target_c2w, target_fxfycxcy, image_hw)  # (b, t, 6, h/f, w/f)
        sources = self.refiner_sources(scene, image_hw, chunk_size)

        def postprocess(chunk: DecoderOutput, targets: slice) -> DecoderOutput:
            chunk = self.to_views(chunk, image_hw)  # decoded on the model's device
            if sources is None:
                return chunk
            return self.refine(chunk, target_c2w[:, targets], target_fxfycxcy[:, targets], sources)

        return scene.cache.render(
            rays,
            chunk_size=chunk_size,
            progress=progress,
            out_device=out_device,
            postprocess=postprocess,
        )

    def refiner_sources(
        self, scene: EncodedScene, image_hw: tuple[int, int], chunk_size: int | None = None
    ) -> RefinerSources | None:
        """The scene's sources as the warp refiner reads them for targets of `image_hw`
        (built once per size, without gradients, `chunk_size` sources per decoder call, and
        kept on the scene), or None when there is nothing to refine with: no refiner, or
        no source cameras (pose-free without a camera head)."""
        if self.refiner is None or scene.source_c2w is None or scene.source_images is None:
            return None

        @torch.no_grad()
        def build() -> RefinerSources:
            in_hw = tuple(scene.source_images.shape[-2:])
            fxfycxcy = cam.resize_intrinsics(scene.source_fxfycxcy, in_hw, image_hw)
            rays = self.target_rays(scene.source_c2w, fxfycxcy, image_hw)  # (b, s, 6, h, w)
            own = scene.cache.render(rays, chunk_size=chunk_size)  # the decoder's, unrefined
            return RefinerSources(
                images=resize_views(scene.source_images, image_hw),
                c2w=scene.source_c2w,
                fxfycxcy=fxfycxcy,
                depth=_depth(own.points, scene.source_c2w),
            )

        return scene.refiner_sources(image_hw, build)

    def refine(
        self,
        output: DecoderOutput,
        target_c2w: Tensor,
        target_fxfycxcy: Tensor,
        sources: RefinerSources,
    ) -> DecoderOutput:
        """The warp refiner on a render: `output` of targets c2w [b, t, 4, 4] (scene frame)
        and fxfycxcy [b, t, 4] (pixels of its images) -> rgb refined from `sources`, the
        decoder's own render kept as decoder_rgb."""
        target_depth = _depth(output.points, target_c2w)
        warped = backward_warp(
            sources.images,
            sources.depth,
            sources.c2w,
            sources.fxfycxcy,
            target_depth,
            target_c2w,
            target_fxfycxcy,
            self.refiner.rel_tol,
        )
        return replace(output, rgb=self.refiner(output.rgb, warped), decoder_rgb=output.rgb)

    def forward(
        self,
        images: Tensor,
        c2w: Tensor,
        fxfycxcy: Tensor,
        num_sources: int,
        *,
        posed: bool = True,
        decode: bool = True,
    ) -> DecoderOutput:
        """Training/evaluation path: render the targets of b scenes.

        images [b, v, 3, h, w] (sources first; the targets' images are not used),
        c2w [b, v, 4, 4], fxfycxcy [b, v, 4]. posed=False zeroes the sources' pose
        numbers in the camera tokens (camera-token dropout, pose-free training).
        Returns the targets' DecoderOutput (rgb [b, v - num_sources, 3, h, w], ...), as
        `render` does. decode=False (latent-mode training) returns the decoder's own
        output instead: latents [b, t, k, h/f, w/f] and points/conf on the latent grid,
        no rgb; in pixel mode it changes nothing. With a warp refiner (pixel mode only)
        rgb is the refined render and decoder_rgb the decoder's own.
        """
        b, v = images.shape[:2]
        if not 1 <= num_sources < v:
            raise ValueError(f"num_sources must be in 1..{v - 1} for {v} views, got {num_sources}")
        hw = (images.shape[-2], images.shape[-1])
        _check_cameras(c2w, fxfycxcy, (b, v), hw, "cameras")
        reference_w2c, scale = batch_normalization(c2w, num_sources)
        normalized = apply_batch_normalization(c2w, reference_w2c, scale)
        s = num_sources
        source_tokens = self.encode_sources(
            images[:, :s], normalized[:, :s], fxfycxcy[:, :s], posed=posed, training=self.training
        )
        rays = self.target_rays(normalized[:, s:], fxfycxcy[:, s:], hw)  # (b, t, 6, h/f, w/f)
        source_rays = self.source_token_rays(normalized[:, :s], fxfycxcy[:, :s], hw)
        output = self.decoder(source_tokens, rays, source_rays)
        if self.refiner is None:
            return self.to_views(output, hw) if decode else output
        # The refiner also needs the sources' own depth, which only its (gradient-free)
        # visibility test reads: rendered without gradients.
        with torch.no_grad():
            own_rays = self.target_rays(normalized[:, :s], fxfycxcy[:, :s], hw)  # (b, s, 6, h, w)
            own = self.decoder(source_tokens, own_rays, source_rays)
        sources = RefinerSources(
            images=images[:, :s],
            c2w=normalized[:, :s],
            fxfycxcy=fxfycxcy[:, :s],
            depth=_depth(own.points, normalized[:, :s]),  # (b, s, h, w)
        )
        return self.refine(output, normalized[:, s:], fxfycxcy[:, s:], sources)

    # ----------------------------------------------------------------------------------
    # The decoder's grid (the latent grid in the latent mode)
    # ----------------------------------------------------------------------------------

    def grid_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The decoder's ray grid for images of `image_hw`: the image size, or in the latent
        mode the VAE's latent grid (h/f, w/f). ValueError unless h and w are multiples of
        `patch_size`."""
        if self.codec is None:
            return image_hw
        h, w = image_hw
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the model's patch size "
                f"{self.patch_size} (decoder patch {self.decoder.patch_size} on the latent grid "
                f"of a VAE that downsamples {self.downsample}x)"
            )
        return h // self.downsample, w // self.downsample

    def target_rays(self, c2w: Tensor, fxfycxcy: Tensor, image_hw: tuple[int, int]) -> Tensor:
        """Pluecker rays [b, t, 6, h/f, w/f] of target cameras c2w [b, t, 4, 4] (scene frame)
        with intrinsics [b, t, 4] in pixels of `image_hw` images, on the decoder's grid
        (`grid_size`; the intrinsics scaled by `cameras.latent_intrinsics` in the latent
        mode, so a latent pixel's ray passes through the centre of its f x f block)."""
        if self.codec is None:
            return cam.plucker_rays(c2w, fxfycxcy, *image_hw)
        grid = self.grid_size(image_hw)
        return cam.plucker_rays(c2w, cam.latent_intrinsics(fxfycxcy, self.downsample), *grid)

    def image_latents(self, images: Tensor) -> Tensor:
        """The latent mode's VAE on views: images [b, v, 3, h, w] in [0, 1] -> normalised
        latents [b, v, k, h/f, w/f] (the decoder's training targets)."""
        if self.codec is None:
            raise ValueError("this model renders pixels: it has no VAE (model config 'latent')")
        b = images.shape[0]
        latents = self.codec.encode(rearrange(images, "b v ch h w -> (b v) ch h w"))
        return rearrange(latents, "(b v) k h w -> b v k h w", b=b)

    def to_views(self, output: DecoderOutput, image_hw: tuple[int, int]) -> DecoderOutput:
        """The decoder's output [b, t, ...] as views of `image_hw`: as it is in pixel mode;
        in the latent mode rgb [b, t, 3, h, w] in [0, 1] decoded by the VAE from the
        latents [b, t, k, h/f, w/f] (kept), and points [b, t, h, w, 3] and conf
        [b, t, h, w] upsampled (nearest) from the latent grid."""
        if self.codec is None:
            return output
        if output.latents is None:
            raise ValueError("a latent-mode output needs its latents, got None")
        expected = self.grid_size(image_hw)
        if tuple(output.latents.shape[-2:]) != expected:
            raise ValueError(
                f"latents {list(output.latents.shape)} are not on the latent grid {list(expected)} "
                f"of {list(image_hw)} images"
            )
        b = output.latents.shape[0]
        flat = rearrange(output.latents, "b t k h w -> (b t) k h w")
        rgb = rearrange(self.codec.decode(flat), "(b t) ch h w -> b t ch h w", b=b)
        f = self.downsample
        return replace(
            output,
            rgb=rgb,
            points=None if output.points is None else _upsample(output.points, f),
            conf=None if output.conf is None else _upsample(output.conf, f),
        )


def _depth(points: Tensor, c2w: Tensor) -> Tensor:
    """`points_to_depth` in float32, also under autocast: points [b, v, h, w, 3] in the
    frame of cameras c2w [b, v, 4, 4] -> depth [b, v, h, w]."""
    with torch.autocast(points.device.type, enabled=False):
        return points_to_depth(points.float(), c2w.float())


def _upsample(x: Tensor, factor: int) -> Tensor:
    """[b, t, h, w, ...] -> [b, t, h * factor, w * factor, ...], each value repeated over
    its factor x factor block (nearest upsampling)."""
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def batch_normalization(c2w: Tensor, num_sources: int) -> tuple[Tensor, Tensor]:
    """Per-scene `scene_normalization` (relative to the first source camera, scaled by the
    sources' extent): c2w [b, v, 4, 4] -> (reference_w2c [b, 4, 4], scale [b])."""
    pairs = [cam.scene_normalization(scene, num_sources) for scene in c2w]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def apply_batch_normalization(c2w: Tensor, reference_w2c: Tensor, scale: Tensor) -> Tensor:
    """`apply_normalization` per scene: c2w [b, v, 4, 4], reference_w2c [b, 4, 4], scale [b]."""
    return cam.apply_normalization(c2w, reference_w2c[:, None], scale[:, None, None, None])


def batch_camera_tokens(
    c2w: Tensor,
    fxfycxcy: Tensor,
    image_hw: tuple[int, int],
    num_sources: int,
    posed: bool,
    training: bool,
) -> Tensor:
    """Camera tokens [b, v, 11] of normalised cameras c2w [b, v, 4, 4] (`training` as in
    `cameras.camera_tokens`; False gives the tokens `NVSModel.encode` uses)."""
    camera_scale = c2w[:, :num_sources, :3, 3].norm(dim=-1).amax(dim=-1)  # (b,)
    return torch.stack(
        [
            cam.camera_tokens(
                c2w[i], fxfycxcy[i], image_hw, num_sources, camera_scale[i], posed, training
            )
            for i in range(c2w.shape[0])
        ]
    )


def _check_cameras(
    c2w: Tensor, fxfycxcy: Tensor, batch: tuple[int, int], image_hw: tuple[int, int], what: str
) -> None:
    if tuple(c2w.shape) != (*batch, 4, 4) or tuple(fxfycxcy.shape) != (*batch, 4):
        raise ValueError(
            f"{what}: expected c2w {[*batch, 4, 4]} and fxfycxcy {[*batch, 4]} (one camera per "
            f"image), got {list(c2w.shape)} and {list(fxfycxcy.shape)}"
        )
    for i in range(batch[0]):
        cam.validate_cameras(c2w[i], fxfycxcy[i], image_hw, where=f"{what} (scene {i})")


def save_model(model: NVSModel, directory: str | Path, **info: Any) -> Path:
    """Inference export: `model.safetensors` + `config.json` ({"model": config, **info}),
    with the model's `noise_schedule` unless `info` gives one. A latent-mode model's VAE
    is in it (weights under `codec.`, config under `latent`): the export needs nothing
    else."""
    if model.noise_schedule is not None:
        info.setdefault("noise_schedule", model.noise_schedule)
    return ckpt.save_export(
        directory, model.state_dict(), {"model": model.config.to_dict(), **info}
    )


def build_model(config: ModelConfig | Mapping[str, Any] | str) -> NVSModel:
    """The one way to a model: from its typed config, a tree of one (an export's
    config.json `model` entry or a training config's, parsed strictly by
    `ModelConfig.from_dict`: ValueError naming an unknown or ill-typed key), or a preset
    name (`model_config`'s defaults). Weights are freshly initialised."""
    if isinstance(config, str):
        config = model_config(config)
    elif not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    return NVSModel(
        encoder=config.encoder,
        decoder=config.decoder,
        camera_head=config.camera_head,
        depth_head=config.depth_head,
        diffusion=config.diffusion,
        latent=config.latent,
        refiner=config.refiner,
    )


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> NVSModel:
    """Rebuild an exported model (local directory or `hf://org/repo[/subdir]`), in eval mode.

    The weights must fit the config exactly; a mismatch lists every differing tensor.
    Weights are cast to float32 (exports may store them in half precision).
    """
    config, state_dict = ckpt.load_export(path)
    if "model" not in config:
        raise ValueError(f"{path}: config.json has no 'model' entry; not a gen-nvs model export")
    try:
        model = build_model(ModelConfig.from_dict(config["model"], "model"))
    except ValueError as err:  # an option this version does not have, a bad value
        raise ValueError(
            f"{path}: config.json does not fit this version of gen-nvs: {err}"
        ) from None
    ckpt.check_layout(
        {key: tuple(value.shape) for key, value in state_dict.items()},
        {key: tuple(value.shape) for key, value in model.state_dict().items()},
        f"{path}: weights vs config",
    )
    model.load_state_dict(
        {
            key: value.float() if value.is_floating_point() else value
            for key, value in state_dict.items()
        }
    )
    model.noise_schedule = config.get("noise_schedule")
    return model.to(map_location).eval()


def load_model_or_default(
    checkpoint: str | Path | None, map_location: str | torch.device = "cpu"
) -> NVSModel:
    """`load_model(checkpoint)`, or the embedded default model when `checkpoint` is None."""
    if checkpoint is None:
        checkpoint = DEFAULT_MODEL_DIR
        if not (checkpoint / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded default model is missing from {checkpoint}; reinstall gen-nvs "
                "or pass a checkpoint"
            )
    return load_model(checkpoint, map_location)


def require_diffusion(model: NVSModel, where: str = "model") -> DiffusionDecoder:
    """The model's diffusion decoder, or a clear error for a regression-only model."""
    if model.diffusion is None:
        raise ValueError(
            f"{where} is a regression model (no diffusion decoder) and cannot sample; use a "
            "diffusion checkpoint (trained with stage 'diffusion') or regression rendering"
        )
    return model.diffusion
