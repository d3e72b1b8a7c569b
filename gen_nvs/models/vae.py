"""The image VAE of the latent mode (LVSM-VAE): pixels <-> normalised latents.

`LatentCodec` wraps a `diffusers.AutoencoderKL` (any checkpoint in diffusers'
`save_pretrained` layout: a local folder or `hf://org/repo[/subfolder][@revision]`,
e.g. `hf://black-forest-labs/FLUX.1-dev/vae`, 16 channels and 8x downsampling) and
speaks gen-nvs conventions: images in [0, 1], latents normalised with the VAE's own
`scaling_factor` and `shift_factor` so that they are roughly zero-mean, unit-variance.

Dimension legend: `b` batch, `h`/`w` image height/width, `c` latent channels,
`f` downsampling factor (the latent grid is h/f x w/f).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from gen_nvs.models.checkpoint import (
    HF_EXPORT_FORM,
    HF_PREFIX,
    refuse_url,
    resolve_path,
    split_hf_path,
)

VAE_CONFIG = "config.json"
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
_EXPECTED = (
    f"a diffusers AutoencoderKL folder ({VAE_CONFIG} + {VAE_WEIGHTS}, as `save_pretrained` "
    f"writes it) or {HF_EXPORT_FORM}"
)


def tiny_vae_config(
    latent_channels: int = 4, downsample: int = 4, width: int = 16, layers_per_block: int = 1
) -> dict[str, Any]:
    """A small `AutoencoderKL` config: one block per factor of 2, widths `width * 2**i`.

    Small enough for CPU tests and for the VAE we train on the procedural scenes
    (`gen_nvs.train.vae`); no attention in the middle block.
    """
    if downsample < 1 or downsample & (downsample - 1):
        raise ValueError(f"downsample must be a power of 2, got {downsample}")
    if latent_channels < 1 or width < 8 or width % 8:
        raise ValueError(
            f"need latent_channels >= 1 and width a multiple of 8 (the group-norm groups), "
            f"got {latent_channels} and {width}"
        )
    num_blocks = downsample.bit_length()  # log2(downsample) + 1
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * num_blocks,
        "up_block_types": ["UpDecoderBlock2D"] * num_blocks,
        "block_out_channels": [width * 2**i for i in range(num_blocks)],
        "layers_per_block": layers_per_block,
        "latent_channels": latent_channels,
        "norm_num_groups": 8,
        "mid_block_add_attention": False,
        "scaling_factor": 1.0,
        "shift_factor": 0.0,
    }


def _local_folder(source: str | Path) -> Path:
    """The local folder of a VAE: `source` itself, or the hub cache copy of an hf:// one."""
    text = str(source)
    refuse_url(text, HF_EXPORT_FORM)  # a URL would otherwise be a folder "not found"
    if text.startswith(HF_PREFIX):
        # Split as checkpoints are, so a malformed spec is named as given, not as the
        # config path built from it.
        repo_id, subfolder, revision = split_hf_path(text, HF_EXPORT_FORM)
        base = "/".join(filter(None, (HF_PREFIX + repo_id, subfolder)))
        at = f"@{revision}" if revision else ""
        try:
            config = resolve_path(f"{base}/{VAE_CONFIG}{at}")
            resolve_path(f"{base}/{VAE_WEIGHTS}{at}")  # lands beside the config
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"VAE {text}: expected {_EXPECTED}: {err}") from err
        return config.parent
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise ValueError(f"VAE folder not found: {folder}; expected {_EXPECTED}")
    missing = [name for name in (VAE_CONFIG, VAE_WEIGHTS) if not (folder / name).is_file()]
    if missing:
        hint = ""
        if (folder / "vae" / VAE_CONFIG).is_file():
            hint = f" (this looks like a pipeline folder: pass {folder / 'vae'})"
        raise ValueError(
            f"VAE folder {folder} lacks {', '.join(missing)}; expected {_EXPECTED}{hint}"
        )
    return folder


def _load_vae(source: str | Path | Mapping[str, Any], dtype: torch.dtype) -> AutoencoderKL:
    if isinstance(source, Mapping):
        vae = AutoencoderKL.from_config(dict(source))
        return vae if dtype == torch.float32 else vae.to(dtype=dtype)
    folder = _local_folder(source)
    class_name = json.loads((folder / VAE_CONFIG).read_text()).get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
        raise ValueError(
            f"VAE {source}: {VAE_CONFIG} describes a {class_name}; expected {_EXPECTED}"
        )
    return AutoencoderKL.from_pretrained(folder, torch_dtype=dtype)


class LatentCodec(nn.Module):
    """Images in [0, 1] <-> latents `(posterior mean - shift_factor) * scaling_factor`.

    Args:
        source: a local VAE folder, `hf://org/repo[/subfolder][@revision]`, or an
            `AutoencoderKL` config dict (randomly initialised; see `tiny_vae_config`).
        trainable: False (default) freezes the VAE: no gradients to its weights and
            always in eval mode. Gradients still flow through it to its inputs.
        dtype: the dtype of the VAE's weights; inputs are cast to it and outputs back.
    """

    def __init__(
        self,
        source: str | Path | Mapping[str, Any],
        *,
        trainable: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.vae = _load_vae(source, dtype)
        self.trainable = trainable
        self.vae.requires_grad_(trainable)
        self.train(trainable)

    def train(self, mode: bool = True) -> LatentCodec:
        """A frozen codec stays in eval mode whatever its parent model does."""
        return super().train(mode and self.trainable)

    @property
    def channels(self) -> int:
        """Latent channels c."""
        return self.vae.config.latent_channels

    @property
    def downsample(self) -> int:
        """The factor f between image and latent resolution."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(self.vae.config.shift_factor or 0.0)

    @property
    def config(self) -> dict[str, Any]:
        """The `AutoencoderKL` config (JSON-ready); `LatentCodec(config)` rebuilds the model."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in self.vae.config.items()
            if not k.startswith("_")
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the VAE in diffusers' layout; `LatentCodec(directory)` loads it back."""
        self.vae.save_pretrained(directory)
        return Path(directory)

    def check_image_size(self, height: int, width: int) -> None:
        f = self.downsample
        if height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} (h x w) is not divisible by the VAE's "
                f"downsampling factor {f}"
            )

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Images [b, 3, h, w] in [0, 1] -> normalised latents [b, c, h/f, w/f].

        Deterministic (the posterior mean) unless a `generator` is given, in which case
        the posterior is sampled with it.
        """
        if images.ndim != 4 or images.shape[1] != self.vae.config.in_channels:
            raise ValueError(
                f"images must be [b, {self.vae.config.in_channels}, h, w], "
                f"got {tuple(images.shape)}"
            )
        self.check_image_size(*images.shape[-2:])
        x = images.to(self.vae.dtype) * 2 - 1  # AutoencoderKL works in [-1, 1]
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean if generator is None else posterior.sample(generator)  # (b, c, h/f, w/f)
        return ((z - self.shift_factor) * self.scaling_factor).to(images.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [b, c, h/f, w/f] -> images [b, 3, h, w] in [0, 1] (clamped)."""
        if latents.ndim != 4 or latents.shape[1] != self.channels:
            raise ValueError(
                f"latents must be [b, {self.channels}, h/f, w/f], got {tuple(latents.shape)}"
            )
        z = latents.to(self.vae.dtype) / self.scaling_factor + self.shift_factor
        x = self.vae.decode(z).sample  # (b, 3, h, w) in about [-1, 1]
        return ((x + 1) / 2).clamp(0, 1).to(latents.dtype)
