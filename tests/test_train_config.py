"""Training config layering (defaults -> experiment file -> overrides) and its errors."""

from __future__ import annotations

import pytest
import yaml

from gen_nvs.train.config import CONFIG_DIR, git_revision, load_config, parse_override
from gen_nvs.train.data import dataset_entries
from gen_nvs.train.loop import STAGES


def test_layers_apply_in_order(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        yaml.safe_dump({"train": {"lr": 1.0e-3, "steps": 50}, "loss": {"perceptual": 0.0}})
    )
    config = load_config(experiment, ["train.steps=7", "data.image_size=[32, 48]"])
    assert config["train"]["lr"] == 1.0e-3  # experiment over defaults
    assert config["train"]["steps"] == 7  # override over experiment
    assert config["data"]["image_size"] == [32, 48]
    assert config["loss"]["perceptual"] == 0.0
    assert config["train"]["batch_size"] == load_config()["train"]["batch_size"]  # default


def test_yaml_scalars_in_overrides():
    config = load_config(None, ["train.lr=1e-4", "model.init_from=null", "train.cpu=true"])
    assert config["train"]["lr"] == pytest.approx(1e-4)  # PyYAML reads 1e-4 as a string
    assert config["model"]["init_from"] is None
    assert config["train"]["cpu"] is True
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


@pytest.mark.parametrize(
    ("override", "named", "nearest"),
    [
        ("train.lrr=1", "train.lrr", "train.lr"),
        ("loss.camra=0.1", "loss.camra", "loss.camera"),
        ("trian.steps=3", "trian", "train"),
        ("checkpoint.keeep=2", "checkpoint.keeep", "checkpoint.keep"),
    ],
)
def test_unknown_key_names_it_and_the_nearest(override, named, nearest):
    with pytest.raises(ValueError, match="unknown config key") as err:
        load_config(None, [override])
    assert repr(named) in str(err.value)
    assert f"did you mean {nearest!r}" in str(err.value)


def test_unknown_key_in_experiment_file(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("model:\n  presett: tiny\n")
    with pytest.raises(ValueError, match=r"'model.presett'.*did you mean 'model.preset'"):
        load_config(experiment)


def test_wrong_kind_of_value():
    with pytest.raises(ValueError, match="train.steps expects an integer"):
        load_config(None, ["train.steps=ten"])
    with pytest.raises(ValueError, match="train.steps expects an integer"):
        load_config(None, ["train.steps=2.5"])
    with pytest.raises(ValueError, match="data.image_size expects a list"):
        load_config(None, ["data.image_size=64"])
    config = load_config(None, ["train.steps=1e3", "loss.perceptual=0", "loss.perceptual=0.5"])
    assert config["train"]["steps"] == 1000 and isinstance(config["train"]["steps"], int)
    assert config["loss"]["perceptual"] == 0.5
    with pytest.raises(ValueError, match="must look like key.sub=value"):
        load_config(None, ["train.steps"])


def test_dataset_entries_are_checked_per_type():
    config = load_config(None, ["data.datasets.a.type=procedural", "data.datasets.b.type=re10k"])
    with pytest.raises(ValueError, match=r"data.datasets.b.root"):
        dataset_entries(config["data"])
    config = load_config(None, ["data.datasets.a.type=procedural", "data.datasets.a.num_scene=3"])
    with pytest.raises(ValueError, match=r"'data.datasets.a.num_scene'.*'num_scenes'"):
        dataset_entries(config["data"])
    config = load_config(None, ["data.datasets.a.type=procedurall"])
    with pytest.raises(ValueError, match="did you mean 'procedural'"):
        dataset_entries(config["data"])
    config = load_config(None, ["data.datasets.a.type=procedural", "data.datasets.a.weight=0"])
    with pytest.raises(ValueError, match="no training data"):
        dataset_entries(config["data"])


EXPERIMENT_FILES = sorted(p.name for p in CONFIG_DIR.glob("*.yaml") if p.name != "defaults.yaml")


def test_every_experiment_file_is_checked():
    assert len(EXPERIMENT_FILES) >= 5 and "embedded-regression.yaml" in EXPERIMENT_FILES


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_shipped_experiment_files_resolve(name):
    config = load_config(CONFIG_DIR / name)
    assert config["stage"] in STAGES
    assert dataset_entries(config["data"])


def test_depth_head_options_are_free_and_off_by_default():
    assert load_config()["model"]["depth_head"] is None
    config = load_config(
        CONFIG_DIR / "embedded-geometry.yaml", ["model.depth_head.norm_eps=1.0e-6"]
    )
    assert config["stage"] == "geometry" and config["loss"]["camera"] > 0
    assert config["model"]["depth_head"] == {"norm_eps": 1e-6}
    assert load_config(None, ["model.depth_head={}"])["model"]["depth_head"] == {}
    assert load_config(None, ["model.depth_head.norm_eps=0.1"])["model"]["depth_head"] == {
        "norm_eps": 0.1
    }


def test_git_revision_is_read_from_dot_git(tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(sha + "\n")
    assert git_revision(tmp_path / "repo" / "pkg" / "file.py") == sha
    (git / "refs" / "heads" / "main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs\n{sha} refs/heads/main\n")
    assert git_revision(tmp_path / "repo") == sha
    (git / "HEAD").write_text(sha + "\n")  # detached
    assert git_revision(tmp_path / "repo") == sha


def test_recipe_chains_the_stages_and_scales_them(tmp_path):
    """Each stage of the embedded recipe starts from the previous stage's export, reads
    the recipe's data folder, and --scale K multiplies steps and batch by K."""
    from gen_nvs.train.recipe import STAGES, stage_config

    runs, data = tmp_path / "runs", tmp_path / "data"
    configs = {s: stage_config(s, runs, data, 1, "cpu") for s in STAGES}
    assert configs["regression"]["model"]["init_from"] is None
    assert configs["camera"]["model"]["init_from"] == str(runs / "embedded-regression/export")
    assert configs["diffusion"]["model"]["init_from"] == str(runs / "embedded-camera/export")
    assert configs["refiner"]["model"]["init_from"] == str(runs / "embedded-diffusion/export")
    assert configs["refiner"]["model"]["refiner_only"]
    stages = [c["stage"] for c in configs.values()]
    assert stages == ["regression", "geometry", "diffusion", "regression"]
    for config in configs.values():
        assert config["data"]["datasets"]["procedural"]["root"] == str(data / "proc64-train")
        assert config["run"]["output_dir"] == str(runs) and config["train"]["cpu"]
    scaled = stage_config("regression", runs, data, 4, "auto")
    base = configs["regression"]["train"]
    assert scaled["train"]["steps"] == 4 * base["steps"]
    assert scaled["train"]["batch_size"] == 4 * base["batch_size"]
    assert scaled["train"]["lr"] == pytest.approx(2 * base["lr"])
    assert not scaled["train"]["cpu"]


def test_recipe_warm_starts_from_an_export_and_sets_stage_options(tmp_path):
    """--from starts the first stage from an export (the later stages still chain), and
    --set STAGE:key=value reaches that stage's config alone; bad items name themselves."""
    from gen_nvs.train.recipe import main, parse_stage_overrides, stage_config

    runs, data = tmp_path / "runs", tmp_path / "data"
    sets = parse_stage_overrides(["regression:train.lr=5e-4", "regression:train.steps=300"])
    first = stage_config("regression", runs, data, 1, "cpu", "prev/export", sets["regression"])
    assert first["model"]["init_from"] == "prev/export"
    assert first["train"]["lr"] == pytest.approx(5e-4) and first["train"]["steps"] == 300
    camera = stage_config("camera", runs, data, 1, "cpu", None, sets["camera"])
    assert camera["model"]["init_from"] == str(runs / "embedded-regression/export")
    assert camera["train"]["steps"] == 400  # configs/embedded-camera.yaml, untouched
    with pytest.raises(ValueError, match="STAGE:key=value"):
        parse_stage_overrides(["train.lr=1"])
    with pytest.raises(ValueError, match="one of regression, camera, diffusion, refiner"):
        parse_stage_overrides(["decoder:train.lr=1"])
    with pytest.raises(SystemExit) as exit_info:
        main(["--from", str(tmp_path / "nothing"), "--runs", str(runs), "--data", str(data)])
    assert exit_info.value.code == 2 and not runs.exists() and not data.exists()


def test_recipe_evaluates_its_last_export_again_on_every_run(tmp_path, monkeypatch):
    """`gen-nvs eval` refuses a non-empty --out without --overwrite: the recipe's own
    evaluation folders are rewritten on a rerun (the stages themselves skipped here)."""
    from types import SimpleNamespace

    import gen_nvs.train.recipe as recipe

    calls = []
    monkeypatch.setattr(recipe, "make_data", lambda data: None)
    monkeypatch.setattr(recipe, "exported_step", lambda export: 10**9)  # every stage done
    monkeypatch.setattr(recipe, "load_model", lambda path: SimpleNamespace(can_sample=True))
    monkeypatch.setattr(recipe, "run_cli", calls.append)
    runs = tmp_path / "runs"
    for _ in range(2):
        assert recipe.main(["--runs", str(runs), "--data", str(tmp_path / "data")]) == 0
    evals = [call for call in calls if call[0] == "eval"]
    assert len(evals) == 4
    outs = [call[call.index("--out") + 1] for call in evals]
    assert outs == [str(runs / "eval"), str(runs / "eval-copy")] * 2
    assert all("--overwrite" in call for call in evals)


def test_recipe_skips_only_finished_stages(tmp_path):
    """Training writes its export at every checkpoint: the recipe treats a stage as done
    only when its export reached the stage's last step (a part-way export resumes)."""
    import json

    from gen_nvs.train.recipe import exported_step

    export = tmp_path / "export"
    assert exported_step(export) == -1
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"model": {}, "training": {"step": 1000}}))
    assert exported_step(export) == 1000
    (export / "config.json").write_text("{not json")
    assert exported_step(export) == -1
