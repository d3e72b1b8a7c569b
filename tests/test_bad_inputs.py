"""Every class of bad input the README promises to catch: exit code 2, one line on stderr
naming the problem, nothing created and nothing the user made changed.

Each case builds its bad input in a fresh folder, runs the command in-process (an
uncaught exception fails the test with its traceback) and checks the folder afterwards.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from gen_nvs.cli import main
from gen_nvs.data.procedural import generate_scene
from gen_nvs.data.re10k import write_re10k_scene
from gen_nvs.models.config import model_config
from gen_nvs.models.nvs import build_model, save_model
from gen_nvs.train.loop import main as train_main
from tests.conftest import FIXTURES

SIZE = ["--size", "32", "32"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = model_config("tiny").override({"encoder": {"image_size": 56}})
    return save_model(build_model(config), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A one-scene dataset in the RE10K layout (images/scene, metadata/scene.json)."""
    root = tmp_path_factory.mktemp("data")
    views = generate_scene(3, 3, (32, 32))
    write_re10k_scene(root, "scene", views.images, views.c2w, views.fxfycxcy)
    (root / "full_list.txt").write_text("scene\n")
    return root


# --------------------------------------------------------------------------------------
# Bad inputs, each made in `work` (a copy of the dataset and of the export)
# --------------------------------------------------------------------------------------


def _images(work: Path) -> list[str]:
    return ["--images", str(work / "data" / "images" / "scene")]


def _cameras(work: Path) -> list[str]:
    return ["--cameras", str(work / "data" / "metadata" / "scene.json")]


def _render(work: Path, *args: str, checkpoint: Path | None = None) -> list[str]:
    model = ["--checkpoint", str(checkpoint or work / "model")]
    return ["render", *model, *SIZE, *args, "--out", str(work / "out")]


def _replace_image(work: Path, image: Image.Image | bytes) -> None:
    target = work / "data" / "images" / "scene" / "00001.png"
    if isinstance(image, bytes):
        target.write_bytes(image)
    else:
        image.save(target)


def _edit_json(file: Path, edit: Callable[[dict], None]) -> None:
    record = json.loads(file.read_text())
    edit(record)
    file.write_text(json.dumps(record))


def _edit_weights(work: Path, edit: Callable[[dict], None]) -> None:
    weights = load_file(str(work / "model" / "model.safetensors"))
    edit(weights)
    save_file(weights, str(work / "model" / "model.safetensors"))


def _poison(weights: dict) -> None:
    key = next(k for k in weights if k.startswith("decoder."))
    weights[key] = weights[key] * float("nan")


def image_missing(work):
    return _render(work, "--images", str(work / "nowhere.png"))


def image_1x1(work):
    _replace_image(work, Image.new("RGB", (1, 1)))
    return _render(work, *_images(work), *_cameras(work))


def image_not_an_image(work):
    _replace_image(work, b"not a png")
    return _render(work, *_images(work), *_cameras(work))


def image_other_aspect(work):
    _replace_image(work, Image.new("RGB", (64, 32)))
    return _render(work, *_images(work), *_cameras(work))


def cameras_invalid_json(work):
    (work / "data" / "metadata" / "scene.json").write_text("{not json")
    return _render(work, *_images(work), *_cameras(work))


def cameras_missing_frame(work):
    _edit_json(work / "data" / "metadata" / "scene.json", lambda r: r["frames"].pop())
    return _render(work, *_images(work), *_cameras(work))


def cameras_non_finite(work):
    def edit(record):
        record["frames"][0]["w2c"][0][3] = float("nan")

    _edit_json(work / "data" / "metadata" / "scene.json", edit)
    return _render(work, *_images(work), *_cameras(work))


def cameras_translation_overflows(work):
    def edit(record):
        record["frames"][0]["w2c"][0][3] = 1e30  # finite, but float32 normalisation overflows

    _edit_json(work / "data" / "metadata" / "scene.json", edit)
    return _render(work, *_images(work), *_cameras(work))


def cameras_normalised_intrinsics(work):
    def edit(record):
        for frame in record["frames"]:
            frame["fxfycxcy"] = [x / 32 for x in frame["fxfycxcy"]]  # as raw RealEstate10K

    _edit_json(work / "data" / "metadata" / "scene.json", edit)
    return _render(work, *_images(work), *_cameras(work))


def size_too_large(work):
    return _render(work, *_images(work), "--size", "100000", "100000")


def resolution_too_large(work):
    model = ["--checkpoint", str(work / "model"), "--resolution", "50000"]
    return ["render", *model, *_images(work), "--out", str(work / "out")]


def trajectory_distance_zero(work):
    return _render(work, *_images(work), "--trajectory", "zoom-out", "--trajectory-distance", "0")


def trajectory_distance_overflows(work):
    args = ["--trajectory", "dolly-zoom", "--trajectory-distance", "1e300"]
    return _render(work, *_images(work), *args)


def azimuth_infinite(work):
    return _render(work, *_images(work), "--azimuth", "inf")


def frames_too_many(work):
    return _render(work, *_images(work), "--trajectory", "orbit", "--frames", "10000000")


def output_under_a_file(work):
    out = work / "data" / "full_list.txt" / "out"
    return ["render", "--checkpoint", str(work / "model"), *_images(work), "--out", str(out)]


def checkpoint_truncated(work):
    weights = work / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return _render(work, *_images(work), *_cameras(work))


def checkpoint_pickle(work):
    (work / "model" / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2]}))
    return _render(work, *_images(work), *_cameras(work))


def checkpoint_nan_weights(work):
    _edit_weights(work, _poison)
    return _render(work, *_images(work), *_cameras(work))


def checkpoint_missing_tensor(work):
    _edit_weights(work, lambda weights: weights.pop(next(iter(weights))))
    return _render(work, *_images(work), *_cameras(work))


def checkpoint_other_file(work):
    (work / "model" / "model.pt").write_bytes(b"")
    return _render(work, *_images(work), *_cameras(work), checkpoint=work / "model" / "model.pt")


def checkpoint_missing(work):
    return _render(work, *_images(work), *_cameras(work), checkpoint=work / "nowhere")


def checkpoint_hub_without_repo(work):
    return _render(work, *_images(work), checkpoint="hf://")


def checkpoint_web_address(work):
    return _render(work, *_images(work), checkpoint="https://huggingface.co/org/repo")


def config_unknown_key(work):
    _edit_json(work / "model" / "config.json", lambda r: r["model"]["decoder"].update(bogus=1))
    return _render(work, *_images(work), *_cameras(work))


def config_invalid_json(work):
    (work / "model" / "config.json").write_text("[1, 2")
    return _render(work, *_images(work), *_cameras(work))


def config_not_an_object(work):
    (work / "model" / "config.json").write_text("[1, 2]")
    return _render(work, *_images(work), *_cameras(work))


def sample_nan_weights(work):
    _edit_weights(work, _poison)
    args = ["--checkpoint", str(work / "model"), *SIZE, *_images(work), *_cameras(work)]
    return ["sample", *args, "--out", str(work / "out")]


def _eval(work: Path, *args: str) -> list[str]:
    model = ["--checkpoint", str(work / "model"), "--data", str(work / "data")]
    return ["eval", *model, *args, "--out", str(work / "out"), "--samples", "0"]


def eval_index_invalid_json(work):
    (work / "index.json").write_text("{")
    return _eval(work, "--index", str(work / "index.json"))


def eval_index_unknown_frame(work):
    index = {"scene": {"context": [0, 1], "target": [7]}}
    (work / "index.json").write_text(json.dumps(index))
    return _eval(work, "--index", str(work / "index.json"))


def eval_data_missing(work):
    shutil.rmtree(work / "data")
    return _eval(work)


def _make_scenes(work: Path, *args: str) -> list[str]:
    scenes = ["--scenes", "1", "--views", "1", "--size", "16", "16"]
    return ["make-scenes", *scenes, *args, "--out", str(work / "out")]


def make_scenes_unknown_device(work):
    return _make_scenes(work, "--device", "tpu")


def make_scenes_size_too_large(work):
    return _make_scenes(work, "--size", "100000", "100000")


def reference_negative_tolerance(work):
    return ["check-reference", "--tolerance", "-1", str(FIXTURES[0])]


def reference_meta_not_json(work):
    save_file({"io.images": torch.zeros(1)}, str(work / "bad.safetensors"), {"meta": "{nope"})
    return ["check-reference", str(work / "bad.safetensors")]


def reference_meta_not_an_object(work):
    save_file({"io.images": torch.zeros(1)}, str(work / "bad.safetensors"), {"meta": "{}"})
    return ["check-reference", str(work / "bad.safetensors")]


def _train(work: Path, *overrides: str) -> list[str]:
    return [
        "model.preset=tiny", "data.datasets.scenes.type=procedural", "train.cpu=true",
        "loss.perceptual=0", "train.steps=1",
        f"run.output_dir={work}", "run.name=out", *overrides,
    ]  # fmt: skip


def train_unknown_key(work):
    return _train(work, "train.stepz=3")


def train_bad_value(work):
    return _train(work, "train.lr=-1")


def train_not_a_number(work):
    return _train(work, "train.batch_size=two")


def train_config_missing(work):
    return ["--config", str(work / "nowhere.yaml"), *_train(work)]


CASES = {
    # name: (make the bad input and return the command, what the one line must say)
    "image missing": (image_missing, "not found"),
    "image 1x1": (image_1x1, "00001.png is 1x1 pixels; at least 16x16"),
    "image not an image": (image_not_an_image, "00001.png"),
    "image other aspect": (image_other_aspect, "aspect ratio"),
    "cameras invalid JSON": (cameras_invalid_json, "scene.json"),
    "cameras missing frame": (cameras_missing_frame, "scene.json"),
    "cameras non-finite": (cameras_non_finite, "non-finite"),
    "cameras translation overflows": (
        cameras_translation_overflows,
        "scene.json: frames[0] (00000.png, 32x32): view 0: pose translation (1e+30",
    ),
    "cameras normalised intrinsics": (
        cameras_normalised_intrinsics,
        "scene.json: frames[0] (00000.png, 32x32): view 0: fx=",
    ),
    "size too large": (size_too_large, "--size 100000 100000 must be between 1 and 4096"),
    "resolution too large": (resolution_too_large, "--resolution must be at most 4096, got 50000"),
    "trajectory distance zero": (
        trajectory_distance_zero,
        "(--trajectory-distance) of zoom-out is a focal factor in [0.1, 10], got 0",
    ),
    "trajectory distance overflows": (
        trajectory_distance_overflows,
        "of dolly-zoom is a travel in scene units in [-100, 100], got 1e+300",
    ),
    "azimuth infinite": (azimuth_infinite, "--azimuth must be a finite number, got inf"),
    "frames too many": (frames_too_many, "--frames must be between 1 and 10000, got 10000000"),
    "output under a file": (output_under_a_file, "cannot create the output folder"),
    "checkpoint truncated": (checkpoint_truncated, "not a readable safetensors file"),
    "checkpoint pickle": (checkpoint_pickle, "not a readable safetensors file"),
    "checkpoint NaN weights": (checkpoint_nan_weights, "non-finite value(s)"),
    "checkpoint missing tensor": (checkpoint_missing_tensor, "missing (1)"),
    "checkpoint other file": (checkpoint_other_file, "not 'model.pt'"),
    "checkpoint missing": (checkpoint_missing, "not found"),
    "checkpoint hub without repo": (
        checkpoint_hub_without_repo,
        "'hf://' is not a Hugging Face path: expected hf://org/repo[/subdir][@revision]",
    ),
    "checkpoint web address": (checkpoint_web_address, "is a URL; give a local path or"),
    "config unknown key": (config_unknown_key, "'bogus'"),
    "config invalid JSON": (config_invalid_json, "invalid JSON"),
    "config not an object": (config_not_an_object, "expected a JSON object"),
    "sample NaN weights": (sample_nan_weights, "non-finite value(s)"),
    "eval index invalid JSON": (eval_index_invalid_json, "index.json"),
    "eval index unknown frame": (eval_index_unknown_frame, "frame"),
    "eval data missing": (eval_data_missing, "data"),
    "make-scenes unknown device": (make_scenes_unknown_device, "--device: unknown device 'tpu'"),
    "make-scenes size too large": (
        make_scenes_size_too_large,
        "--size must be between 1 and 4096 pixels a side, got [100000, 100000]",
    ),
    "reference negative tolerance": (
        reference_negative_tolerance,
        "--tolerance must be a finite number >= 0, got -1.0",
    ),
    "reference meta not JSON": (
        reference_meta_not_json,
        "bad.safetensors: the 'meta' entry of the safetensors header is not valid JSON",
    ),
    "reference meta not an object": (
        reference_meta_not_an_object,
        "bad.safetensors: the 'meta' entry lacks variant, num_source_views, image_hw, posed, "
        "config; expected a JSON object with the keys",
    ),
    "train unknown key": (train_unknown_key, "stepz"),
    "train bad value": (train_bad_value, "train.lr must be >= 0, got -1"),
    "train not a number": (train_not_a_number, "train.batch_size expects an integer"),
    "train config missing": (train_config_missing, "nowhere.yaml"),
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, export, dataset, tmp_path, capsys):
    make, message = CASES[name]
    work = tmp_path / "work"
    shutil.copytree(dataset, work / "data")
    shutil.copytree(export, work / "model")
    argv = make(work)
    before = _snapshot(work)
    capsys.readouterr()
    code = train_main(argv) if name.startswith("train") else main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert "error" in err and message in err, err
    assert not (work / "out").exists(), "the failed command left its output folder"
    assert _snapshot(work) == before, "the failed command changed the user's files"


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_after_loading_removes_only_what_the_command_wrote(
    existing, export, dataset, tmp_path, capsys, monkeypatch
):
    """The output folder is made before rendering; when rendering then fails, the folder
    goes again, or, written into with --overwrite, only the command's new files go."""
    from gen_nvs.commands import render

    def write_then_fail(out, *args, **kwargs):
        (out / "target_000").mkdir()
        (out / "target_000" / "regression_rgb.png").write_bytes(b"half written")
        raise ValueError("the renderer failed")

    monkeypatch.setattr(render, "_write_outputs", write_then_fail)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("the user's")
    args = ["--images", str(dataset / "images" / "scene"), "--out", str(out), "--overwrite"]
    code = main(["render", "--checkpoint", str(export), *SIZE, *args])
    assert code == 2 and "the renderer failed" in capsys.readouterr().err
    if existing:
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
        assert (out / "notes.txt").read_text() == "the user's"
    else:
        assert not out.exists()
