"""VGGT encoder: DINOv2 patch embedding, alternating frame/global attention aggregator, the
LagerNVS camera-token MLP and the output connector to the decoder width.

Dimension legend:
    b  batch (scenes)
    s  source views per scene
    n  tokens per view (1 camera + r registers + p patches)
    p  patch tokens per view (= gh * gw)
    gh, gw  patch-grid rows and columns
    r  register tokens
    c  aggregator width;  co  output width (the decoder's, out_dim)
    h, w  image height and width in pixels
    ch  channels of a pixel (3 rgb; 6 rays, or their Fourier features)
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gen_nvs.models.layers import (
    RAY_CHANNELS,
    Block,
    RotaryEmbedding2D,
    fourier_channels,
    fourier_features,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ResizeMode = Literal["keep_aspect", "square", "none"]


class PatchProjection(nn.Module):
    """Non-overlapping patch projection: Conv2d(3 -> c, kernel = stride = patch)."""

    def __init__(self, *, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        """images [b 3 h w] -> [b p c]."""
        return rearrange(self.proj(images), "b c gh gw -> b (gh gw) c")


class DinoPatchEmbed(nn.Module):
    """DINOv2-style ViT with register tokens, used as VGGT's patch embedding.

    Sequence: `[cls, registers, patches]`; the learned positional embedding (defined on the
    `image_size / patch_size` square grid) is added to `[cls, patches]` before the registers
    are inserted, and is resized bicubically (antialiased) for other grids. The output is
    the final-LayerNorm'd patch tokens.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 14,
        image_size: int = 518,
        num_register_tokens: int = 4,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch_size}")
        self.patch_size = patch_size
        self.base_grid = image_size // patch_size
        self.patch_embed = PatchProjection(patch_size=patch_size, embed_dim=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.base_grid**2, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        # Masked-image-modelling token of DINOv2 pre-training; kept so checkpoints load strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                layer_scale_init=layer_scale_init,
                norm_eps=1e-6,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """Positional embedding for a grid_h x grid_w patch grid -> [1 1+p c] (cls first)."""
        if (grid_h, grid_w) == (self.base_grid, self.base_grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = rearrange(
            patch_pos.float(), "1 (gh gw) c -> 1 c gh gw", gh=self.base_grid, gw=self.base_grid
        )
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patch_pos = rearrange(patch_pos, "1 c gh gw -> 1 (gh gw) c").to(self.pos_embed.dtype)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """images [b 3 h w] (normalised, h and w multiples of the patch) -> [b p c]."""
        grid_h, grid_w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        patches = self.patch_embed(images)  # (b, p, c)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat((cls, patches), dim=1) + self.interpolate_pos_embed(grid_h, grid_w)
        registers = self.register_tokens.expand(patches.shape[0], -1, -1)
        x = torch.cat((x[:, :1], registers, x[:, 1:]), dim=1)  # (b, 1+r+p, c)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + registers.shape[1] :]  # (b, p, c)


class Aggregator(nn.Module):
    """VGGT aggregator: per-view tokens `[camera, registers, patches]` through alternating
    frame attention (within a view) and global attention (across the views of a scene).

    Camera and register tokens have two learned slots: slot 0 for the first view, slot 1 for
    the others. Patch tokens carry 2D RoPE on (row + 1, column + 1); the special tokens sit at
    position (0, 0).
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_embed_depth: int,
        patch_embed_heads: int,
        patch_size: int = 14,
        image_size: int = 518,
        num_register_tokens: int = 4,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 0.01,
        patch_embed_layer_scale_init: float = 1.0,
        rope_frequency: float = 100.0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"the aggregator needs at least one block pair, got depth {depth}")
        self.patch_size = patch_size
        self.num_special_tokens = 1 + num_register_tokens
        self.patch_embed = DinoPatchEmbed(
            embed_dim=embed_dim,
            depth=patch_embed_depth,
            num_heads=patch_embed_heads,
            patch_size=patch_size,
            image_size=image_size,
            num_register_tokens=num_register_tokens,
            mlp_ratio=mlp_ratio,
            layer_scale_init=patch_embed_layer_scale_init,
        )
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim) * 1e-6)
        rope = RotaryEmbedding2D(frequency=rope_frequency)
        self._position_tensors: dict[tuple, Tensor] = {}  # see `_positions`

        def make_block() -> Block:
            return Block(
                embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qk_norm=True,
                layer_scale_init=layer_scale_init,
                rope=rope,
            )

        self.frame_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.global_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)
        self.gradient_checkpointing = False

    @staticmethod
    def _expand_slots(token: Tensor, batch: int, views: int) -> Tensor:
        """token [1 2 n c] -> [(b s) n c]: slot 0 for the first view, slot 1 for the rest."""
        first = token[:, :1].expand(batch, 1, -1, -1)
        rest = token[:, 1:].expand(batch, views - 1, -1, -1)
        return rearrange(torch.cat((first, rest), dim=1), "b s n c -> (b s) n c")

    def _positions(self, grid_h: int, grid_w: int, device: torch.device) -> Tensor:
        """RoPE positions of one view's tokens -> [1 n 2] as (row, column); one tensor per
        grid and device, so that the RoPE tables computed for it are reused."""
        key = (grid_h, grid_w, str(device))
        if key not in self._position_tensors:
            self._position_tensors[key] = self._make_positions(grid_h, grid_w, device)
        return self._position_tensors[key]

    def _make_positions(self, grid_h: int, grid_w: int, device: torch.device) -> Tensor:
        rows, cols = torch.meshgrid(
            torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij"
        )
        patch_pos = torch.stack((rows, cols), dim=-1).flatten(0, 1) + 1  # (p, 2)
        special_pos = patch_pos.new_zeros(self.num_special_tokens, 2)
        return torch.cat((special_pos, patch_pos), dim=0)[None]  # (1, n, 2)

    def _run_block(self, block: Block, x: Tensor, positions: Tensor) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, positions, use_reentrant=False)
        return block(x, positions)

    def forward(
        self,
        images: Tensor,
        camera_embedding: Tensor | None = None,
        patch_embedding: Tensor | None = None,
    ) -> Tensor:
        """Last frame-block output concatenated with the last global-block output.

        images [b s 3 h w] in [0, 1] with h and w multiples of the patch size;
        camera_embedding [b s c] added to each view's camera token, or None;
        patch_embedding [b s p c] added to the patch tokens (the source rays), or None.
        Returns [b s n 2c].
        """
        batch, views, _, height, width = images.shape
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        x = rearrange((images - self.mean) / self.std, "b s ch h w -> (b s) ch h w")
        patches = self.patch_embed(x)  # ((b s), p, c)
        if patch_embedding is not None:
            patches = patches + rearrange(patch_embedding, "b s p c -> (b s) p c")
        camera = self._expand_slots(self.camera_token, batch, views)  # ((b s), 1, c)
        if camera_embedding is not None:
            camera = camera + rearrange(camera_embedding, "b s c -> (b s) 1 c")
        registers = self._expand_slots(self.register_token, batch, views)  # ((b s), r, c)
        tokens = torch.cat((camera, registers, patches), dim=1)  # ((b s), n, c)
        frame_pos = self._positions(grid_h, grid_w, images.device)  # (1, n, 2)
        global_pos = repeat(frame_pos, "1 n two -> 1 (s n) two", s=views)
        for frame_block, global_block in zip(self.frame_blocks, self.global_blocks, strict=True):
            tokens = self._run_block(frame_block, tokens, frame_pos)
            frame_out = tokens
            tokens = rearrange(tokens, "(b s) n c -> b (s n) c", b=batch)
            tokens = self._run_block(global_block, tokens, global_pos)
            global_out = tokens
            tokens = rearrange(tokens, "b (s n) c -> (b s) n c", s=views)
        frame_out = rearrange(frame_out, "(b s) n c -> b s n c", b=batch)
        global_out = rearrange(global_out, "b (s n) c -> b s n c", s=views)
        return torch.cat((frame_out, global_out), dim=-1)  # (b, s, n, 2c)


class EncoderOutput(NamedTuple):
    """Encoder tokens [(b) s p co] and the (rows, columns) of their patch grid."""

    tokens: Tensor
    grid_hw: tuple[int, int]


class VGGTEncoder(nn.Module):
    """LagerNVS source-view encoder around the VGGT aggregator.

    Images are resized for the patch-14 ViT, the 11-number camera tokens go through
    `camera_mlp` (Linear, SiLU, Linear) and are added to the views' camera tokens, and the
    aggregator's patch tokens (last frame + global block, 2c channels) are projected to the
    decoder width by `geo_feature_connector` followed by a bias-free LayerNorm.

    Submodule names follow the official checkpoints (`aggregator`, `camera_mlp`,
    `geo_feature_connector`, `geo_feature_norm`); see `gen_nvs.models.convert`.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        patch_embed_depth: int = 24,
        patch_embed_heads: int = 16,
        out_dim: int = 768,
        patch_size: int = 14,
        image_size: int = 518,
        num_register_tokens: int = 4,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 0.01,
        patch_embed_layer_scale_init: float = 1.0,
        rope_frequency: float = 100.0,
        camera_token_dim: int = 11,
        source_rays: bool = False,
        ray_frequencies: int = 0,
        source_skip: bool = False,
        frozen: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0 or (embed_dim // num_heads) % 4 != 0:
            raise ValueError(
                f"embed_dim / num_heads must be a multiple of 4 for 2D RoPE, "
                f"got {embed_dim} / {num_heads}"
            )
        if ray_frequencies < 0:
            raise ValueError(f"encoder ray_frequencies must be >= 0, got {ray_frequencies}")
        self.patch_size = patch_size
        self.image_size = image_size
        self.camera_token_dim = camera_token_dim
        self.aggregator = Aggregator(
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            patch_embed_depth=patch_embed_depth,
            patch_embed_heads=patch_embed_heads,
            patch_size=patch_size,
            image_size=image_size,
            num_register_tokens=num_register_tokens,
            mlp_ratio=mlp_ratio,
            layer_scale_init=layer_scale_init,
            patch_embed_layer_scale_init=patch_embed_layer_scale_init,
            rope_frequency=rope_frequency,
        )
        self.camera_mlp = nn.Sequential(
            nn.Linear(camera_token_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.geo_feature_connector = nn.Linear(2 * embed_dim, out_dim)
        self.geo_feature_norm = nn.LayerNorm(out_dim, bias=False)
        # Options for small encoders trained from scratch (not in LagerNVS; off in the
        # official presets, whose checkpoints hold none of these weights):
        # - source_rays: each patch token also gets its own Pluecker rays, projected per
        #   patch (zero-initialised and bias-free: it starts as the published encoder,
        #   and missing rays, pose-free, add nothing);
        # - ray_frequencies: those projections see the rays' Fourier features;
        # - source_skip: each output token also gets its own patch's pixels (and rays,
        #   when posed) through one linear projection, past the aggregator, so the
        #   decoder can copy and match source patches before the aggregator has learned
        #   to carry them.
        self.ray_frequencies = ray_frequencies
        ray_channels = fourier_channels(RAY_CHANNELS, ray_frequencies)
        self.ray_embed = None
        if source_rays:
            self.ray_embed = nn.Conv2d(
                ray_channels, embed_dim, patch_size, stride=patch_size, bias=False
            )
            nn.init.zeros_(self.ray_embed.weight)
        self.pixel_skip = self.ray_skip = None
        if source_skip:
            self.pixel_skip = nn.Conv2d(3, out_dim, patch_size, stride=patch_size)
            self.ray_skip = nn.Conv2d(
                ray_channels, out_dim, patch_size, stride=patch_size, bias=False
            )
        self.freeze(frozen)
        self.set_gradient_checkpointing(gradient_checkpointing)

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart) gradients into the pretrained VGGT aggregator; the camera MLP,
        the source-ray projection and skip (if any) and the output connector stay
        trainable."""
        self.aggregator.requires_grad_(not frozen)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute aggregator block activations in the backward pass (training only)."""
        self.aggregator.gradient_checkpointing = enabled

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Aspect-preserving size: long side `image_size`, short side
        `floor(int(image_size * short / long) / patch) * patch`."""
        long_side, short_side = max(height, width), min(height, width)
        new_short = int(self.image_size * short_side / long_side) // self.patch_size
        new_short *= self.patch_size
        if new_short == 0:
            raise ValueError(
                f"image {height}x{width} is too elongated: its short side would resize "
                f"below one patch of {self.patch_size} pixels"
            )
        if height >= width:
            return self.image_size, new_short
        return new_short, self.image_size

    def resized_size(self, height: int, width: int, mode: ResizeMode) -> tuple[int, int]:
        """Size the images are resized to: `keep_aspect` -> `target_size`; `square` ->
        image_size x image_size; `none` -> unchanged (must be multiples of the patch size)."""
        if mode == "keep_aspect":
            return self.target_size(height, width)
        if mode == "square":
            return self.image_size, self.image_size
        if mode != "none":
            raise ValueError(f"resize mode must be keep_aspect, square or none, got {mode!r}")
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"with resize='none' the image size must be a multiple of the patch size "
                f"{self.patch_size}, got {height}x{width}"
            )
        return height, width

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid (gh, gw) of one view of height x width pixels as the encoder runs
        it (`keep_aspect`, as `aggregate` and `forward` resize by default)."""
        h, w = self.resized_size(height, width, "keep_aspect")
        return h // self.patch_size, w // self.patch_size

    def resize(self, images: Tensor, mode: ResizeMode) -> Tensor:
        """images [... 3 h w] -> [... 3 h' w'] (bilinear, antialiased), see `resized_size`."""
        size = self.resized_size(*images.shape[-2:], mode)
        if size == tuple(images.shape[-2:]):
            return images
        flat = images.reshape(-1, *images.shape[-3:])
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True)
        return flat.reshape(*images.shape[:-2], *size)

    @property
    def uses_source_rays(self) -> bool:
        return self.ray_embed is not None or self.ray_skip is not None

    def _check_inputs(self, images: Tensor, camera_tokens: Tensor | None) -> None:
        if images.ndim not in (4, 5) or images.shape[-3] != 3:
            raise ValueError(
                f"expected images [s, 3, h, w] or [b, s, 3, h, w], got {tuple(images.shape)}"
            )
        if min(images.shape[-2:]) < self.patch_size:
            raise ValueError(
                f"images must be at least one patch ({self.patch_size} pixels) on each side, "
                f"got {images.shape[-2]}x{images.shape[-1]}"
            )
        if not torch.isfinite(images).all():
            raise ValueError("images contain non-finite values")
        if camera_tokens is None:
            return
        expected = (*images.shape[:-3], self.camera_token_dim)
        if tuple(camera_tokens.shape) != expected:
            raise ValueError(
                f"expected camera tokens of shape {expected} (one per image), "
                f"got {tuple(camera_tokens.shape)}"
            )
        if not torch.isfinite(camera_tokens).all():
            raise ValueError("camera tokens contain non-finite values")

    def aggregate(
        self,
        images: Tensor,
        camera_tokens: Tensor | None = None,
        *,
        source_rays: Tensor | None = None,
        resize: ResizeMode = "keep_aspect",
    ) -> Tensor:
        """Raw aggregator tokens (all tokens, last frame + global block), e.g. for `CameraHead`.

        images [s 3 h w] or [b s 3 h w] in [0, 1]; camera_tokens [(b) s 11] or None (plain
        VGGT); source_rays [(b) s 6 h w] (Pluecker rays of the images' pixels, used by an
        encoder built with `source_rays=True`) or None (unknown cameras).
        Returns [(b) s n 2c], n = 1 + registers + patches; the camera token is first.
        """
        prepared = self._prepare(images, camera_tokens, source_rays, resize)
        images, camera_tokens, rays, unbatched = prepared
        tokens = self._aggregate(images, camera_tokens, rays)  # (b, s, n, 2c)
        return tokens[0] if unbatched else tokens

    def _prepare(
        self,
        images: Tensor,
        camera_tokens: Tensor | None,
        source_rays: Tensor | None,
        resize: ResizeMode,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, bool]:
        """Checked inputs -> (images [b s 3 h' w'] resized, camera tokens [b s 11] or None,
        rays [(b s) ch h' w'] (Fourier features at the resized size; None unless given
        and used), whether the inputs came without the batch dimension)."""
        self._check_inputs(images, camera_tokens)
        unbatched = images.ndim == 4
        if unbatched:
            images = images[None]
            camera_tokens = None if camera_tokens is None else camera_tokens[None]
            source_rays = None if source_rays is None else source_rays[None]
        images = self.resize(images, resize)  # (b, s, 3, h', w')
        return images, camera_tokens, self._resized_rays(source_rays, images.shape), unbatched

    def _aggregate(self, images: Tensor, camera_tokens: Tensor | None, rays: Tensor | None):
        """Resized images [b s 3 h w] -> aggregator tokens [b s n 2c]."""
        camera_embedding = None if camera_tokens is None else self.camera_mlp(camera_tokens)
        ray_embedding = None
        if rays is not None and self.ray_embed is not None:
            patches = self.ray_embed(rays)  # ((b s), c, gh, gw)
            ray_embedding = rearrange(patches, "(b s) c gh gw -> b s (gh gw) c", b=len(images))
        return self.aggregator(images, camera_embedding, ray_embedding)

    def _resized_rays(self, rays: Tensor | None, image_shape: torch.Size) -> Tensor | None:
        """rays [b s 6 h w] -> their Fourier features [(b s) ch h' w'] at the resized
        images' size, or None (no rays, or an encoder that does not use them)."""
        if rays is None or not self.uses_source_rays:
            return None
        b, s = image_shape[:2]
        if tuple(rays.shape[:3]) != (b, s, RAY_CHANNELS):
            raise ValueError(
                f"expected source rays [{b}, {s}, 6, h, w] (one ray map per image), "
                f"got {list(rays.shape)}"
            )
        flat = rearrange(rays, "b s ch h w -> (b s) ch h w")
        if flat.shape[-2:] != image_shape[-2:]:
            flat = F.interpolate(flat, size=image_shape[-2:], mode="bilinear", align_corners=False)
        dtype = (self.ray_embed if self.ray_embed is not None else self.ray_skip).weight.dtype
        return fourier_features(flat.to(dtype), self.ray_frequencies, dim=1)

    def _skip(self, images: Tensor, rays: Tensor | None) -> Tensor:
        """The `source_skip` tokens: resized images [b s 3 h w] and rays [(b s) ch h w] or
        None -> [b s p co]."""
        b = images.shape[0]
        pixels = (images - self.aggregator.mean) / self.aggregator.std
        skip = self.pixel_skip(rearrange(pixels, "b s ch h w -> (b s) ch h w"))
        if rays is not None:
            skip = skip + self.ray_skip(rays)  # ((b s), co, gh, gw)
        return rearrange(skip, "(b s) co gh gw -> b s (gh gw) co", b=b)

    def forward(
        self,
        images: Tensor,
        camera_tokens: Tensor,
        *,
        source_rays: Tensor | None = None,
        resize: ResizeMode = "keep_aspect",
    ) -> EncoderOutput:
        """Encode the source views of each scene (views attend to each other).

        images [s 3 h w] or [b s 3 h w] in [0, 1]; camera_tokens [(b) s 11] (pose numbers
        zeroed when the source cameras are unknown); source_rays as in `aggregate`.
        Returns tokens [(b) s p co] and the patch grid (gh, gw), p = gh * gw.
        """
        prepared = self._prepare(images, camera_tokens, source_rays, resize)
        resized, camera_tokens, rays, unbatched = prepared
        tokens = self._aggregate(resized, camera_tokens, rays)  # (b, s, n, 2c)
        patches = tokens[..., self.aggregator.num_special_tokens :, :]  # (b, s, p, 2c)
        features = self.geo_feature_connector(patches)  # (b, s, p, co)
        if self.pixel_skip is not None:
            features = features + self._skip(resized, rays)
        features = self.geo_feature_norm(features)
        grid_hw = (resized.shape[-2] // self.patch_size, resized.shape[-1] // self.patch_size)
        return EncoderOutput(features[0] if unbatched else features, grid_hw)
