"""Pixel vs latent rendering (`gen-nvs bench render --latent`): time and peak memory per
target view as the number of source views grows, as the LVSM-VAE report's figures.

Two decoders of the same transformer size (`--decoder-preset`, causal variant by
default, no point head, random weights) render one synthetic scene:

- pixel: target rays at the image resolution, patches of the preset's size, RGB out.
- latent: target rays on the latent grid of an image VAE (h/f x w/f, intrinsics scaled by
  `latent_intrinsics`), patches of `--latent-patch` (2), the VAE's k latent channels
  out, decoded to RGB by the VAE (`NVSModel.render`'s path). The default VAE has the
  FLUX.1 VAE's architecture (16 channels, 8x downsampling) with random weights.

The decoders render against encoder tokens of the right count (as many per view as
`--encoder-preset`'s encoder gives for the images) drawn at random: the encoder sees the
source pixels in both modes, so its cost is the same and is left out. Each decoder's
SceneCache is built once per scene (`ms_cache_build`), then targets are rendered one per
call (`ms_decoder_per_view`, the two decoders in turns). The VAE decode of a view does
not depend on the number of sources: it is timed once (`ms_vae_decode_per_view`) and
added to the latent decoder's time (`ms_per_view`). `peak_mib_per_view` is the peak of
the memory allocated while rendering one target above what was allocated before (the
CUDA allocator's peak; on the CPU the tensors the ops create and keep alive,
`TensorMemory`, which leaves out kernels' internal scratch); the latent figure is the
larger of the decoder's and the VAE decode's peaks, the two steps of a view.

Dimension legend:
    s   source views        t   target views        p   source tokens per view
    h, w    image height / width        f   the VAE's downsampling    k   latent channels
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from gen_nvs.bench.common import check_settings, device_name, synthetic_scene, time_calls
from gen_nvs.geometry.cameras import latent_intrinsics, normalize_scene, plucker_rays
from gen_nvs.models.cache import SceneCache
from gen_nvs.models.config import model_config
from gen_nvs.models.decoder import VARIANTS, DecoderOutput, HighwayDecoder
from gen_nvs.models.encoder import VGGTEncoder
from gen_nvs.models.vae import LatentCodec, tiny_vae_config

# The FLUX.1 VAE's architecture (black-forest-labs/FLUX.1-dev, vae/config.json): 16 latent
# channels, 8x downsampling, about 84M parameters.
FLUX_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
# The smoke test's VAE: also 16 channels and 8x, a few thousand parameters.
TINY_VAE_CONFIG: dict[str, Any] = tiny_vae_config(latent_channels=16, downsample=8, width=8)
VAES = {"flux": FLUX_VAE_CONFIG, "tiny": TINY_VAE_CONFIG}
MAX_SOURCES = 64
NOTES = [
    "source tokens are random, as many per view as the encoder preset's encoder gives for "
    "the images: the encoder sees the source pixels in both modes (same cost, left out)",
    "ms_per_view: targets rendered one per call from a SceneCache built once per scene; "
    "latent = ms_decoder_per_view + ms_vae_decode_per_view (the decode does not depend on "
    "the number of sources: timed once)",
    "peak_mib_per_view: peak memory allocated while rendering one target, above what was "
    "allocated before (CUDA: the allocator's peak; CPU: live tensors the ops create, "
    "kernels' scratch not counted); latent: the larger of the decoder's and the decode's",
    "same transformer (width, depth, heads) in both modes; the latent decoder's patches "
    "are on the VAE's latent grid",
]


# --------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------


class TensorMemory(TorchDispatchMode):
    """Bytes of the tensor storages that the ops run under it allocate and that are still
    alive (`current`), and their peak (`peak`): a peak-memory figure on the CPU, whose
    allocator keeps no statistics.

    An op's output counts when its storage is none of its inputs' (views and in-place
    results share their input's); a storage stops counting when it is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._drop_freed()
        inputs = {_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, Tensor):
                continue
            key = _storage_key(tensor)
            storage = tensor.untyped_storage()
            if key in inputs or key in self.live or storage.nbytes() == 0:
                continue
            self.live[key] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out

    def _drop_freed(self) -> None:
        for key in [key for key, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]


def _storage_key(tensor: Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated while `fn()` runs, above what was allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with TensorMemory() as memory:
        fn()
    return memory.peak


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


def vae_config(vae: str) -> dict[str, Any] | str:
    """`--vae`: "flux" or "tiny" (a config, random weights), else a VAE folder or hf://."""
    return VAES.get(vae, vae)


def bench_latent(
    *,
    source_counts: Sequence[int],
    image_hw: tuple[int, int],
    num_targets: int,
    encoder_preset: str,
    decoder_preset: str,
    vae: str,
    latent_patch: int,
    device: str | torch.device,
    dtype: str,
    repeats: int,
    warmup: int,
    variant: str = "causal",
    seed: int = 0,
) -> dict[str, Any]:
    """Time and peak memory per target view, pixel vs latent (see the module docstring).

    Returns a JSON-ready dict: `settings`, `notes`, `results` (one entry per mode and
    number of sources) and `table`, the figures as a Markdown table.
    """
    device = torch.device(device)
    check_settings(image_hw, device, repeats, warmup, targets=num_targets)
    if not source_counts or any(not 1 <= s <= MAX_SOURCES for s in source_counts):
        raise ValueError(
            f"source counts must be between 1 and {MAX_SOURCES}, got {list(source_counts)}"
        )
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    pixel, latent, codec = _build_models(decoder_preset, variant, vae, latent_patch, seed)
    f = codec.downsample
    for size, patch, what in ((1, pixel.patch_size, "pixel"), (f, latent_patch, "latent")):
        if image_hw[0] % (size * patch) or image_hw[1] % (size * patch):
            raise ValueError(
                f"image size {list(image_hw)} must be divisible by {size * patch} for the "
                f"{what} decoder (patch {patch} on a grid {size}x smaller than the image)"
            )
    for module in (pixel, latent, codec):
        module.eval().to(device)
    tokens_per_view = _source_tokens_per_view(encoder_preset, image_hw)
    autocast = _autocast(device, dtype)
    generator = torch.Generator().manual_seed(seed)
    results = []
    with torch.inference_mode():
        decode = _bench_decode(codec, image_hw, autocast, device, repeats, warmup, generator)
        for num_sources in source_counts:
            rays, latent_rays = _target_rays(num_sources, num_targets, image_hw, f, generator)
            shape = (1, num_sources, tokens_per_view, pixel.width)
            tokens = torch.randn(shape, generator=generator).to(device)
            entries = _bench_scene(
                pixel, latent, tokens, rays.to(device), latent_rays.to(device), autocast,
                device, repeats, warmup,
            )  # fmt: skip
            entries[1] = _with_decode(entries[1], decode)
            results += [dict(num_sources=num_sources) | entry for entry in entries]
    settings = dict(
        device=str(device),
        device_name=device_name(device),
        torch_version=torch.__version__,
        num_threads=torch.get_num_threads(),
        dtype=dtype,
        image_hw=list(image_hw),
        latent_hw=[image_hw[0] // f, image_hw[1] // f],
        num_targets=num_targets,
        source_counts=list(source_counts),
        source_tokens_per_view=tokens_per_view,
        encoder_preset=encoder_preset,
        decoder_preset=decoder_preset,
        variant=variant,
        vae=vae if isinstance(vae_config(vae), str) else f"{vae} (random weights)",
        vae_channels=codec.channels,
        vae_downsample=f,
        vae_parameters=_num_parameters(codec),
        pixel_patch=pixel.patch_size,
        latent_patch=latent_patch,
        decoder_parameters=dict(pixel=_num_parameters(pixel), latent=_num_parameters(latent)),
        repeats=repeats,
        warmup=warmup,
        seed=seed,
    )
    return dict(
        benchmark="render-latent",
        settings=settings,
        notes=NOTES,
        results=results,
        table=latent_table(results),
    )


def _bench_decode(
    codec: LatentCodec,
    image_hw: tuple[int, int],
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    repeats: int,
    warmup: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """The VAE decode of one view's latents [1, k, h/f, w/f]: time and peak memory."""
    f = codec.downsample
    shape = (1, codec.channels, image_hw[0] // f, image_hw[1] // f)
    latents = torch.randn(shape, generator=generator).to(device)

    def decode() -> Tensor:
        with autocast():
            return codec.decode(latents)

    (timed,) = time_calls([decode], device, repeats, warmup)
    return dict(seconds=timed.seconds, peak=peak_bytes(decode, device))


def _bench_scene(
    pixel: HighwayDecoder,
    latent: HighwayDecoder,
    tokens: Tensor,
    rays: Tensor,
    latent_rays: Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    repeats: int,
    warmup: int,
) -> list[dict[str, Any]]:
    """Source tokens [1, s, p, c], pixel rays [1, t, 6, h, w] and latent rays
    [1, t, 6, h/f, w/f] -> the pixel and the latent decoder's entry (no source count)."""
    num_targets = rays.shape[1]

    def build(decoder: HighwayDecoder) -> Callable[[], SceneCache]:
        def run() -> SceneCache:
            with autocast():
                return SceneCache.build(decoder, tokens)

        return run

    def per_target(cache: SceneCache, rays: Tensor) -> Callable[[], list[DecoderOutput]]:
        """A call rendering the targets of `rays` one at a time."""

        def run() -> list[DecoderOutput]:
            with autocast():
                return [cache.render(rays[:, i : i + 1]) for i in range(rays.shape[1])]

        return run

    entries = []
    for decoder, decoder_rays, mode in ((pixel, rays, "pixel"), (latent, latent_rays, "latent")):
        (built,) = time_calls([build(decoder)], device, repeats, warmup)
        h, w = decoder_rays.shape[-2:]
        entries.append(
            dict(
                mode=mode,
                target_tokens_per_view=(h // decoder.patch_size) * (w // decoder.patch_size),
                ms_cache_build=_ms(built.seconds),
                cache_mib=_mib(built.result.memory_bytes()),
                cache=built.result,
                rays=decoder_rays,
            )
        )
    timings = time_calls(
        [per_target(entry["cache"], entry["rays"]) for entry in entries], device, repeats, warmup
    )
    for entry, timed in zip(entries, timings, strict=True):
        cache, rays = entry.pop("cache"), entry.pop("rays")
        entry["ms_decoder_per_view"] = _ms(timed.seconds / num_targets)
        entry["peak_mib_per_view"] = _mib(peak_bytes(per_target(cache, rays[:, :1]), device))
    entries[0]["ms_per_view"] = entries[0]["ms_decoder_per_view"]
    return entries


def _with_decode(entry: dict[str, Any], decode: dict[str, float]) -> dict[str, Any]:
    """The latent decoder's entry with the VAE decode of a view added."""
    return entry | dict(
        ms_vae_decode_per_view=_ms(decode["seconds"]),
        ms_per_view=round(entry["ms_decoder_per_view"] + _ms(decode["seconds"]), 3),
        peak_mib_decoder_per_view=entry["peak_mib_per_view"],
        peak_mib_vae_decode_per_view=_mib(decode["peak"]),
        peak_mib_per_view=max(entry["peak_mib_per_view"], _mib(decode["peak"])),
    )


def latent_table(results: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table, one row per number of source views: per target
    view, the pixel decoder; the latent decoder, the VAE decode and their sum; the
    latent/pixel ratios without and with the decode; peak memory (latent: decoder /
    decode)."""
    rows = [
        "| sources | pixel ms | latent decoder ms | VAE decode ms | latent ms "
        "| latent/pixel, decoders | latent/pixel | pixel peak MiB "
        "| latent peak MiB (decoder / decode) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_count: dict[int, dict[str, dict[str, Any]]] = {}
    for entry in results:
        by_count.setdefault(entry["num_sources"], {})[entry["mode"]] = entry
    for count, modes in by_count.items():
        pixel, latent = modes["pixel"], modes["latent"]
        rows.append(
            f"| {count} | {pixel['ms_per_view']:.1f} | {latent['ms_decoder_per_view']:.1f} "
            f"| {latent['ms_vae_decode_per_view']:.1f} | {latent['ms_per_view']:.1f} "
            f"| {latent['ms_decoder_per_view'] / pixel['ms_per_view']:.2f} "
            f"| {latent['ms_per_view'] / pixel['ms_per_view']:.2f} "
            f"| {pixel['peak_mib_per_view']:.1f} "
            f"| {latent['peak_mib_decoder_per_view']:.1f} / "
            f"{latent['peak_mib_vae_decode_per_view']:.1f} |"
        )
    return "\n".join(rows)


# --------------------------------------------------------------------------------------
# Models, scene and settings
# --------------------------------------------------------------------------------------


def _build_models(
    decoder_preset: str, variant: str, vae: str, latent_patch: int, seed: int
) -> tuple[HighwayDecoder, HighwayDecoder, LatentCodec]:
    """The pixel and the latent decoder (same transformer) and the VAE, randomly
    initialised from `seed` (a VAE folder keeps its weights)."""
    if latent_patch < 1:
        raise ValueError(f"the latent patch size must be >= 1, got {latent_patch}")
    config = model_config(decoder_preset, variant=variant, point_head=False).decoder
    # Module initialisers draw from the global RNG: seed it without leaking the state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        codec = LatentCodec(vae_config(vae))
        pixel = HighwayDecoder(**config.kwargs())
        latent_config = replace(
            config, patch_size=latent_patch, out_channels=codec.channels, out_activation="none"
        )
        latent = HighwayDecoder(**latent_config.kwargs())
    return pixel, latent, codec


def _source_tokens_per_view(encoder_preset: str, image_hw: tuple[int, int]) -> int:
    """Tokens per view the preset's encoder gives for images of `image_hw`."""
    with torch.device("meta"):
        encoder = VGGTEncoder(**model_config(encoder_preset).encoder.kwargs())
    return math.prod(encoder.patch_grid(*image_hw))


def _target_rays(
    num_sources: int,
    num_targets: int,
    image_hw: tuple[int, int],
    factor: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """The synthetic scene's target rays at the image resolution [1, t, 6, h, w] and on
    the latent grid [1, t, 6, h/f, w/f] (as `NVSModel.target_rays` computes them)."""
    scene = synthetic_scene(num_sources, num_targets, image_hw, generator)
    normalized, _ = normalize_scene(scene.c2w[0], num_sources)
    c2w, fxfycxcy = normalized[num_sources:], scene.fxfycxcy[0, num_sources:]
    h, w = image_hw[0] // factor, image_hw[1] // factor
    return scene.rays, plucker_rays(c2w, latent_intrinsics(fxfycxcy, factor), h, w)[None]


def _autocast(device: torch.device, dtype: str) -> Callable[[], Any]:
    if dtype == "float32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _num_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _ms(seconds: float) -> float:
    return round(1000.0 * seconds, 3)


def _mib(num_bytes: int) -> float:
    return round(num_bytes / 2**20, 3)
