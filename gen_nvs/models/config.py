"""Typed model configs, the named sizes, and the one way in from YAML/JSON trees.

One frozen dataclass per module holds its keyword arguments (`EncoderConfig` ->
`VGGTEncoder`, `DecoderConfig` -> `HighwayDecoder`, `CameraHeadConfig` -> `CameraHead`,
`DepthHeadConfig` -> `DepthHead`, `DiffusionConfig` -> `DiffusionDecoder`, `LatentConfig`
-> `LatentCodec`, the image VAE of the latent mode); `ModelConfig` holds the parts of an
`NVSModel`. `MODEL_PRESETS` is the table of named sizes (as DiT's
`DiT_models`) and `model_config` picks one; `gen_nvs.models.nvs.build_model` builds it.

Trees (an export's config.json `model` entry, a training config's `model:` options) are
parsed here by `from_dict`, strictly: an unknown key or a value of the wrong type is a
one-line ValueError naming the key, the module and the expected type. Modules never see
a tree. `to_dict` writes a config back as the same JSON: the fields without a default
(a config names its size) and every other field that differs from its default, so that
exports keep the keys they have always had and earlier versions of gen-nvs read them.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin, get_type_hints

from gen_nvs.models.decoder import Variant
from gen_nvs.models.heads import OutputActivation

C = TypeVar("C", bound="ModuleConfig")


class ModuleConfig:
    """What the module configs share: strict parsing from a tree and writing back."""

    MODULE: ClassVar[str]  # the module it configures, for error messages

    @classmethod
    def from_dict(cls: type[C], tree: Any, where: str) -> C:
        """The config of a tree (a mapping of the module's options), checked: every key is
        an option, every value of its type (integral floats pass for integers, numeric
        strings for numbers: YAML reads `1e-4` as a string), the fields without a
        default given. `where` names the tree in errors (e.g. "model.decoder")."""
        if not isinstance(tree, Mapping):
            raise ValueError(f"{where}: expected a mapping of {cls.MODULE} options, got {tree!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in tree:
            if key not in fields:
                raise ValueError(
                    f"{where}: unknown {cls.MODULE} option {key!r}{_suggest(key, fields)}"
                )
        missing = [
            name
            for name, f in fields.items()
            if f.default is dataclasses.MISSING and name not in tree
        ]
        if missing:
            raise ValueError(f"{where}: {cls.MODULE} needs the option(s) {missing}")
        hints = get_type_hints(cls)
        values = {
            key: _typed(value, hints[key], f"{where}.{key}", cls.MODULE)
            for key, value in tree.items()
        }
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON tree: the fields without a default, and the others that differ from
        their default (`from_dict` reads it back to an equal config)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.default is dataclasses.MISSING or getattr(self, f.name) != f.default
        }

    def kwargs(self) -> dict[str, Any]:
        """Every field: the module's keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _suggest(key: str, options: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(str(key), list(options), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; its options are {', '.join(options)}"


def _typed(value: Any, kind: Any, where: str, module: str) -> Any:
    """`value` as a `kind` (int, float, bool, str, a Literal, a dict of JSON values, or one
    of them | None)."""
    if get_origin(kind) in (typing.Union, types.UnionType):
        args = get_args(kind)
        if value is None and type(None) in args:
            return None
        (kind,) = [arg for arg in args if arg is not type(None)]
    if kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if get_origin(kind) is Literal:
        ok = value in get_args(kind)
    elif get_origin(kind) is dict:
        ok = isinstance(value, Mapping)
        value = dict(value) if ok else value
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"{where}: {module} expects {_describe(kind)}, got {value!r}")
    return value


def _describe(kind: Any) -> str:
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(arg) for arg in get_args(kind))
    if get_origin(kind) is dict:
        return "a mapping"
    names = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}
    return names.get(kind, kind.__name__)


# --------------------------------------------------------------------------------------
# One config per module (each field is the module's keyword argument of the same name)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig(ModuleConfig):
    """`VGGTEncoder` options. The size has no default; the rest default to the
    published encoder (VGGT-1B's aggregator, see `VGGTEncoder` for each option)."""

    MODULE: ClassVar[str] = "VGGTEncoder"

    embed_dim: int
    depth: int
    num_heads: int
    patch_embed_depth: int
    patch_embed_heads: int
    out_dim: int
    patch_size: int = 14
    image_size: int = 518
    num_register_tokens: int = 4
    mlp_ratio: float = 4.0
    layer_scale_init: float = 0.01
    patch_embed_layer_scale_init: float = 1.0
    rope_frequency: float = 100.0
    camera_token_dim: int = 11
    source_rays: bool = False
    ray_frequencies: int = 0
    source_skip: bool = False
    frozen: bool = False
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class DecoderConfig(ModuleConfig):
    """`HighwayDecoder` options: the variant, the size and whether it has a point head
    have no default; the rest default to the published renderer's."""

    MODULE: ClassVar[str] = "HighwayDecoder"

    variant: Variant
    width: int
    depth: int
    num_heads: int
    patch_size: int
    point_head: bool
    mlp_ratio: float = 4.0
    num_registers: int = 4
    norm_eps: float = 1e-5
    qk_norm_eps: float = 1e-5
    ray_frequencies: int = 0
    ray_bias: bool = False
    out_channels: int = 3
    out_activation: OutputActivation = "sigmoid"
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class CameraHeadConfig(ModuleConfig):
    """`CameraHead` options (`dim`: twice the encoder's `embed_dim`)."""

    MODULE: ClassVar[str] = "CameraHead"

    dim: int
    num_heads: int
    trunk_depth: int
    mlp_ratio: float = 4.0
    layer_scale_init: float = 0.01
    pose_dim: int = 9


@dataclass(frozen=True)
class DepthHeadConfig(ModuleConfig):
    """`DepthHead` options. `dim` and `patch_size` None: the encoder's (twice its
    `embed_dim`, its patch size; the only values that fit), which `NVSModel` fills in."""

    MODULE: ClassVar[str] = "DepthHead"

    dim: int | None = None
    patch_size: int | None = None
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class RefinerConfig(ModuleConfig):
    """`WarpRefiner` options (`gen_nvs.models.refiner`; needs the decoder's point head)."""

    MODULE: ClassVar[str] = "WarpRefiner"

    width: int = 32
    depth: int = 6
    rel_tol: float = 0.5
    residuals: bool = False


@dataclass(frozen=True)
class DiffusionConfig(ModuleConfig):
    """`DiffusionDecoder` options but its `decoder` (always the model's `DecoderConfig`).
    No defaults: an export names all four (`NVSModel.add_diffusion` has the defaults)."""

    MODULE: ClassVar[str] = "DiffusionDecoder"

    prediction_type: str
    noise_channels: int
    cond_dropout: float
    frequency_dim: int


@dataclass(frozen=True)
class LatentConfig(ModuleConfig):
    """The latent mode (LVSM-VAE): the image VAE the decoder renders into.

    vae: the `diffusers.AutoencoderKL` config (`LatentCodec.config`), from which the model
        builds the VAE; its weights are the model's (`codec.*` in an export), so an export
        rebuilds without the VAE it was trained with.
    source: where the VAE came from (a folder or hf:// path), for the record.
    """

    MODULE: ClassVar[str] = "LatentCodec"

    vae: dict[str, Any]
    source: str | None = None

    def __post_init__(self) -> None:
        missing = [k for k in ("latent_channels", "block_out_channels") if k not in self.vae]
        if missing:
            raise ValueError(
                f"latent.vae must be an AutoencoderKL config, it lacks {', '.join(missing)}"
            )

    @property
    def channels(self) -> int:
        """The VAE's latent channels."""
        return int(self.vae["latent_channels"])

    @property
    def downsample(self) -> int:
        """The factor between image and latent resolution (as `LatentCodec.downsample`)."""
        return 2 ** (len(self.vae["block_out_channels"]) - 1)


# --------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """An `NVSModel`'s parts: encoder and decoder; a camera head (pose-free use), a depth
    head (the geometry stage's), a diffusion decoder, the latent mode's VAE and a warp
    refiner (which needs the decoder's point head) when set.
    The encoder's output width must be the decoder's width; with `latent` the decoder
    outputs the VAE's latent channels without an activation (`with_latent` sets both),
    without it RGB through the sigmoid."""

    encoder: EncoderConfig
    decoder: DecoderConfig
    camera_head: CameraHeadConfig | None = None
    depth_head: DepthHeadConfig | None = None
    diffusion: DiffusionConfig | None = None
    latent: LatentConfig | None = None
    refiner: RefinerConfig | None = None

    PARTS: ClassVar[dict[str, type[ModuleConfig]]] = {
        "encoder": EncoderConfig,
        "decoder": DecoderConfig,
        "camera_head": CameraHeadConfig,
        "depth_head": DepthHeadConfig,
        "diffusion": DiffusionConfig,
        "latent": LatentConfig,
        "refiner": RefinerConfig,
    }

    def __post_init__(self) -> None:
        for name, kind in self.PARTS.items():
            part = getattr(self, name)
            if part is not None and not isinstance(part, kind):
                raise ValueError(
                    f"model config part {name!r} must be {kind.__name__} (build_model parses "
                    f"trees), got {type(part).__name__}"
                )
        if self.encoder.out_dim != self.decoder.width:
            raise ValueError(
                f"encoder out_dim {self.encoder.out_dim} must equal the decoder width "
                f"{self.decoder.width}"
            )
        if self.refiner is not None and not self.decoder.point_head:
            raise ValueError(
                "the warp refiner (model config 'refiner') reads the decoder's point head: "
                "set decoder point_head true"
            )
        if self.refiner is not None and self.latent is not None:
            raise ValueError(
                "the warp refiner (model config 'refiner') refines pixels; a latent-mode "
                "model (model config 'latent') trains on latents: use one or the other"
            )
        output = (self.decoder.out_channels, self.decoder.out_activation)
        expected = (3, "sigmoid") if self.latent is None else (self.latent.channels, "none")
        if output != expected:
            mode = "pixel" if self.latent is None else "latent"
            raise ValueError(
                f"a {mode}-mode model's decoder needs out_channels {expected[0]} and "
                f"out_activation {expected[1]!r}, got {output[0]} and {output[1]!r}"
            )

    def with_latent(self, latent: LatentConfig | None) -> ModelConfig:
        """This config in the latent mode of `latent` (the decoder's output fitted to its
        VAE), or in pixel mode for None."""
        channels, activation = (3, "sigmoid") if latent is None else (latent.channels, "none")
        decoder = replace(self.decoder, out_channels=channels, out_activation=activation)
        return replace(self, decoder=decoder, latent=latent)

    @classmethod
    def from_dict(cls, tree: Any, where: str = "model") -> ModelConfig:
        """The config of a tree `{"encoder": {...}, "decoder": {...}, "camera_head": {...}
        or null, ...}` (an export's config.json `model` entry), strictly parsed (see
        `ModuleConfig.from_dict`); a part missing or null is not there."""
        if not isinstance(tree, Mapping):
            raise ValueError(f"{where}: expected a mapping of the model's parts, got {tree!r}")
        for name in tree:
            if name not in cls.PARTS:
                raise ValueError(f"{where}: unknown model part {name!r}{_suggest(name, cls.PARTS)}")
        for name in ("encoder", "decoder"):
            if tree.get(name) is None:
                raise ValueError(f"{where}: the model config needs {name!r}")
        parts = {
            name: cls.PARTS[name].from_dict(value, f"{where}.{name}")
            for name, value in tree.items()
            if value is not None
        }
        return cls(**parts)

    def to_dict(self) -> dict[str, Any]:
        """The JSON tree exports hold: encoder, decoder, camera_head (null without one),
        and depth_head, diffusion, latent and refiner when set."""
        tree: dict[str, Any] = {
            "encoder": self.encoder.to_dict(),
            "decoder": self.decoder.to_dict(),
            "camera_head": None if self.camera_head is None else self.camera_head.to_dict(),
        }
        for name in ("depth_head", "diffusion", "latent", "refiner"):
            part = getattr(self, name)
            if part is not None:
                tree[name] = part.to_dict()
        return tree

    def override(self, tree: Mapping[str, Any], where: str = "model") -> ModelConfig:
        """This config with a partial tree's options set over it, strictly parsed:
        `{"encoder": {"image_size": 56}}` changes one option; a part set to null is
        removed; a part this config lacks is taken from the tree as it is."""
        merged = self.to_dict()
        for name, value in tree.items():
            if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
                merged[name] = {**merged[name], **value}
            else:
                merged[name] = value
        return ModelConfig.from_dict(merged, where)


# --------------------------------------------------------------------------------------
# Named sizes
# --------------------------------------------------------------------------------------


def _preset(
    encoder: dict[str, Any], decoder: dict[str, int], camera_head: dict[str, int]
) -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(**encoder, out_dim=decoder["width"]),
        decoder=DecoderConfig(variant="causal", point_head=True, **decoder),
        camera_head=CameraHeadConfig(**camera_head),
    )


# Each named size of the whole model (with `model_config`'s defaults: the causal variant
# with a point head). Every other size in gen-nvs is one of these.
MODEL_PRESETS: dict[str, ModelConfig] = {
    # The published size: VGGT-1B (DINOv2 ViT-L/14 patch embedding) and LagerNVS's
    # EncDecVitB/8 decoder.
    "lagernvs": _preset(
        dict(embed_dim=1024, depth=24, num_heads=16, patch_embed_depth=24, patch_embed_heads=16),
        dict(width=768, depth=12, num_heads=12, patch_size=8),
        dict(dim=2048, num_heads=16, trunk_depth=4),
    ),
    # ViT-S/14-sized encoder, for experiments from scratch.
    "small": _preset(
        dict(embed_dim=384, depth=12, num_heads=6, patch_embed_depth=12, patch_embed_heads=6),
        dict(width=384, depth=12, num_heads=6, patch_size=8),
        dict(dim=768, num_heads=6, trunk_depth=4),
    ),
    # The golden fixtures' reduced size.
    "tiny": _preset(
        dict(embed_dim=64, depth=2, num_heads=2, patch_embed_depth=2, patch_embed_heads=2),
        dict(width=64, depth=3, num_heads=2, patch_size=8),
        dict(dim=128, num_heads=2, trunk_depth=4),
    ),
    # The embedded default model (CPU-trainable, a few MB): 8x8 patches of 112x112 inputs.
    "embedded": _preset(
        dict(
            embed_dim=128, depth=4, num_heads=4, patch_embed_depth=4, patch_embed_heads=4,
            image_size=112,
        ),
        dict(width=128, depth=4, num_heads=4, patch_size=8),
        dict(dim=256, num_heads=4, trunk_depth=2),
    ),
}  # fmt: skip


def model_config(
    preset: str, *, variant: Variant = "causal", point_head: bool = True
) -> ModelConfig:
    """The config of a named size in `MODEL_PRESETS`, with the decoder's variant and point
    head as given (`ModelConfig.override` or `dataclasses.replace` change the rest)."""
    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r}, expected one of {list(MODEL_PRESETS)}")
    config = MODEL_PRESETS[preset]
    return replace(config, decoder=replace(config.decoder, variant=variant, point_head=point_head))
