"""Typed model configs: JSON round trips, the one presets table, strict parsing at the
builder, and the exports written before the configs were typed."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from dataclasses import replace

import pytest
import torch

from gen_nvs.bench import render as bench_render
from gen_nvs.bench import sample as bench_sample
from gen_nvs.models import camera_head, decoder, depth_head, diffusion, encoder, nvs
from gen_nvs.models.camera_head import CameraHead
from gen_nvs.models.config import (
    MODEL_PRESETS,
    CameraHeadConfig,
    DecoderConfig,
    DepthHeadConfig,
    DiffusionConfig,
    EncoderConfig,
    ModelConfig,
    model_config,
)
from gen_nvs.models.decoder import HighwayDecoder
from gen_nvs.models.depth_head import DepthHead
from gen_nvs.models.diffusion import DiffusionDecoder
from gen_nvs.models.encoder import VGGTEncoder
from gen_nvs.models.nvs import DEFAULT_MODEL_DIR, NVSModel, build_model, load_model, save_model
from gen_nvs.train import checkpoints
from gen_nvs.train.config import load_config
from gen_nvs.train.loop import build_model as build_training_model

MODULES = [
    (EncoderConfig, VGGTEncoder, ()),
    (DecoderConfig, HighwayDecoder, ()),
    (CameraHeadConfig, CameraHead, ()),
    (DepthHeadConfig, DepthHead, ()),
    (DiffusionConfig, DiffusionDecoder, ("decoder",)),  # always the model's decoder
]
DIFFUSION = DiffusionConfig(
    prediction_type="v_prediction", noise_channels=3, cond_dropout=0.2, frequency_dim=64
)


def every_part(preset: str) -> ModelConfig:
    """A preset with every optional part and some options off their defaults."""
    config = model_config(preset).override(
        {"encoder": {"source_rays": True, "ray_frequencies": 2}, "decoder": {"ray_bias": True}}
    )
    depth = DepthHeadConfig(dim=2 * config.encoder.embed_dim, patch_size=14, norm_eps=1e-6)
    return replace(config, depth_head=depth, diffusion=DIFFUSION)


def json_round_trip(tree):
    return json.loads(json.dumps(tree))


@pytest.mark.parametrize("config_class, module, extra", MODULES)
def test_each_config_is_its_modules_keyword_arguments(config_class, module, extra):
    parameters = inspect.signature(module.__init__).parameters
    arguments = {name: p for name, p in parameters.items() if name != "self"}
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    assert set(fields) == set(arguments) - set(extra)
    for name, field in fields.items():
        module_default = arguments[name].default
        if (
            field.default is not dataclasses.MISSING
            and module_default is not inspect.Parameter.empty
        ):
            assert field.default == module_default, name


@pytest.mark.parametrize("preset", list(MODEL_PRESETS))
def test_every_config_round_trips_through_json(preset):
    for config in (model_config(preset), every_part(preset)):
        assert ModelConfig.from_dict(json_round_trip(config.to_dict())) == config
        parts = [config.encoder, config.decoder, config.camera_head]
        for part in [*parts, config.depth_head, config.diffusion]:
            if part is not None:
                tree = json_round_trip(part.to_dict())
                assert type(part).from_dict(tree, "part") == part


def test_json_holds_the_size_and_the_options_off_their_default():
    tree = every_part("tiny").to_dict()
    assert tree["encoder"] == {
        "embed_dim": 64, "depth": 2, "num_heads": 2, "patch_embed_depth": 2,
        "patch_embed_heads": 2, "out_dim": 64, "source_rays": True, "ray_frequencies": 2,
    }  # fmt: skip
    assert tree["decoder"] == {
        "variant": "causal", "width": 64, "depth": 3, "num_heads": 2, "patch_size": 8,
        "point_head": True, "ray_bias": True,
    }  # fmt: skip
    assert tree["depth_head"] == {"dim": 128, "patch_size": 14, "norm_eps": 1e-6}
    assert tree["diffusion"] == dataclasses.asdict(DIFFUSION)  # every key, always
    plain = model_config("tiny").to_dict()
    assert plain["camera_head"] == {"dim": 128, "num_heads": 2, "trunk_depth": 4}
    assert "depth_head" not in plain and "diffusion" not in plain


def test_options_written_at_their_default_read_as_the_same_config():
    """Configs that spell out every option (as modules' `config` dicts do) are the same
    config as the sparse JSON, and `to_dict` gives that JSON back."""
    config = model_config("tiny")
    full = {
        "encoder": config.encoder.kwargs(),
        "decoder": HighwayDecoder(**config.decoder.kwargs()).config,
        "camera_head": config.camera_head.kwargs(),
    }
    parsed = ModelConfig.from_dict(json_round_trip(full))
    assert parsed == config and parsed.to_dict() == config.to_dict()


@pytest.mark.parametrize("preset", list(MODEL_PRESETS))
def test_every_preset_builds_and_the_table_is_the_one_source(preset):
    config = model_config(preset)
    assert config == MODEL_PRESETS[preset]  # model_config's defaults are the table's
    with torch.device("meta"):
        model = build_model(preset)
    assert model.config == config
    assert model.encoder.patch_size == config.encoder.patch_size
    assert len(model.decoder.blocks) == config.decoder.depth
    assert model.camera_head is not None


def test_no_other_size_table():
    for module in (encoder, decoder, camera_head, depth_head, diffusion, nvs):
        assert not [name for name in vars(module) if name.endswith("PRESETS")], module
    parser = argparse.ArgumentParser()
    bench_render.add_render_arguments(parser)
    choices = {a.dest: a.choices for a in parser._actions}
    assert choices["encoder_preset"] == choices["decoder_preset"] == list(MODEL_PRESETS)
    for defaults in bench_render.DEFAULTS.values():
        assert {defaults["encoder_preset"], defaults["decoder_preset"]} <= set(MODEL_PRESETS)
    assert bench_sample.MODEL_PRESETS is MODEL_PRESETS


def test_variant_and_point_head_of_a_preset():
    config = model_config("lagernvs", variant="bidirectional_cross_attention", point_head=False)
    assert config.decoder.variant == "bidirectional_cross_attention"
    assert not config.decoder.point_head
    assert replace(config.decoder, variant="causal", point_head=True) == (
        MODEL_PRESETS["lagernvs"].decoder
    )
    with pytest.raises(ValueError, match=r"unknown model preset 'huge', expected one of"):
        model_config("huge")


BAD_TREES = {
    "unknown key": (
        {"decoder": {"bogus": 1}},
        r"^model\.decoder: unknown HighwayDecoder option 'bogus'; its options are variant, ",
    ),
    "misspelt key": (
        {"encoder": {"image_sise": 56}},
        r"^model\.encoder: unknown VGGTEncoder option 'image_sise'; did you mean 'image_size'\?$",
    ),
    "integer": (
        {"decoder": {"depth": "two"}},
        r"^model\.decoder\.depth: HighwayDecoder expects an integer, got 'two'$",
    ),
    "boolean for an integer": (
        {"camera_head": {"trunk_depth": True}},
        r"^model\.camera_head\.trunk_depth: CameraHead expects an integer, got True$",
    ),
    "number": (
        {"encoder": {"mlp_ratio": "wide"}},
        r"^model\.encoder\.mlp_ratio: VGGTEncoder expects a number, got 'wide'$",
    ),
    "boolean": (
        {"encoder": {"source_rays": "yes"}},
        r"^model\.encoder\.source_rays: VGGTEncoder expects a boolean, got 'yes'$",
    ),
    "variant": (
        {"decoder": {"variant": "decoder_only"}},
        r"^model\.decoder\.variant: HighwayDecoder expects one of 'full_attention', ",
    ),
    "optional integer": (
        {"depth_head": {"dim": 1.5}},
        r"^model\.depth_head\.dim: DepthHead expects an integer, got 1\.5$",
    ),
    "unknown part": (
        {"decodr": {}},
        r"^model: unknown model part 'decodr'; did you mean 'decoder'\?$",
    ),
    "not a mapping": (
        {"decoder": [1, 2]},
        r"^model\.decoder: expected a mapping of HighwayDecoder options, got \[1, 2\]$",
    ),
    "no size": (
        {"diffusion": {"noise_channels": 6}},
        r"^model\.diffusion: DiffusionDecoder needs the option\(s\) \['prediction_type', ",
    ),
    "no encoder": ({"encoder": None}, r"^model: the model config needs 'encoder'$"),
    "widths": (
        {"encoder": {"out_dim": 32}},
        r"^encoder out_dim 32 must equal the decoder width 64$",
    ),
}


@pytest.mark.parametrize("name", list(BAD_TREES))
def test_a_bad_key_or_type_names_the_key_the_module_and_the_type(name):
    tree, message = BAD_TREES[name]
    with pytest.raises(ValueError, match=message) as err:
        model_config("tiny").override(tree)
    assert "\n" not in str(err.value)


def test_yaml_numbers_and_integral_floats_are_read_as_numbers():
    config = model_config("tiny").override(
        {"encoder": {"layer_scale_init": "1e-2", "image_size": 56.0}}
    )
    assert config.encoder.layer_scale_init == 0.01 and config.encoder.image_size == 56
    assert isinstance(config.encoder.image_size, int)


def test_modules_take_typed_configs_only():
    tree = model_config("tiny").to_dict()
    with pytest.raises(ValueError, match="part 'encoder' must be EncoderConfig .* got dict"):
        NVSModel(encoder=tree["encoder"], decoder=model_config("tiny").decoder)


def test_override_removes_a_part_set_to_null_and_adds_a_new_one():
    config = model_config("tiny")
    assert config.override({"camera_head": None}).camera_head is None
    added = config.override({"diffusion": dataclasses.asdict(DIFFUSION)})
    assert added.diffusion == DIFFUSION and added.encoder == config.encoder


def test_shipped_default_export_loads_through_the_builder_with_strict_keys():
    tree = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["model"]
    config = ModelConfig.from_dict(tree)
    assert config.to_dict() == tree  # the same keys and values: unchanged on export
    assert config.diffusion is not None and config.camera_head is not None
    model = load_model(DEFAULT_MODEL_DIR)
    assert model.config == config and model.can_sample


def test_export_config_keeps_its_keys_and_a_bad_one_is_a_one_line_error(tmp_path):
    torch.manual_seed(0)
    model = build_model(model_config("tiny").override({"encoder": {"image_size": 28}}))
    model.add_diffusion()
    save_model(model, tmp_path / "export")
    written = json.loads((tmp_path / "export" / "config.json").read_text())
    assert written["model"] == model.config.to_dict()
    assert set(written["model"]) == {"encoder", "decoder", "camera_head", "diffusion"}
    assert load_model(tmp_path / "export").config == model.config
    written["model"]["camera_head"]["depth"] = 2
    (tmp_path / "export" / "config.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match=r"model\.camera_head: unknown CameraHead option 'depth'"):
        load_model(tmp_path / "export")


def test_training_config_options_are_parsed_by_the_builder():
    base = ["model.preset=tiny", "model.encoder={image_size: 28}"]
    model = build_training_model(load_config(None, [*base, "model.depth_head={}"]))
    assert model.config.encoder.image_size == 28
    assert model.config.depth_head == DepthHeadConfig(dim=128, patch_size=14)
    bad = load_config(None, [*base, "model.decoder={depht: 2}"])
    with pytest.raises(ValueError, match=r"^model\.decoder: .* 'depht'; did you mean 'depth'\?$"):
        build_training_model(bad)
    bad = load_config(None, [*base, "model.depth_head={dim: x}"])
    with pytest.raises(ValueError, match=r"^model\.depth_head\.dim: DepthHead expects an integer"):
        build_training_model(bad)


def test_resuming_compares_parsed_configs(tmp_path):
    config = model_config("tiny")
    spelled_out = {**config.to_dict(), "decoder": HighwayDecoder(**config.decoder.kwargs()).config}
    checkpoints.write_model_config(tmp_path, "regression", spelled_out)
    checkpoints.check_compatible(tmp_path, "regression", config)  # the same model
    deeper = config.override({"decoder": {"depth": 2}})
    with pytest.raises(ValueError, match=r"another model \(decoder.depth: saved 3, now 2\)"):
        checkpoints.check_compatible(tmp_path, "regression", deeper)
