"""The training loop: exact resume, the geometry and diffusion stages, exports, bad input,
two processes.

Tiny model (encoder resized to 28 px: 2x2 patches), 16x16 procedural scenes, CPU float32.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from PIL import Image
from safetensors.torch import load_file

from gen_nvs.data import collate_scenes, write_re10k_scene
from gen_nvs.data.procedural import generate_scene
from gen_nvs.models.nvs import load_model
from gen_nvs.train import checkpoints, objectives
from gen_nvs.train.config import load_config
from gen_nvs.train.data import MixtureDataset, StepBatchSampler, TrainingData
from gen_nvs.train.loop import (
    TrainState,
    apply_update,
    build_model,
    build_objective,
    set_trainable,
    train,
)

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.preset=tiny",
    "model.encoder={image_size: 28}",
    "data.image_size=[16, 16]",
    "data.num_sources=[1, 2]",
    "data.num_targets=1",
    "data.datasets.scenes.type=procedural",
    "data.datasets.scenes.num_scenes=64",
    "train.batch_size=2",
    "train.warmup_steps=2",
    "loss.perceptual=0",
    "loss.camera=0.1",
    "log.every=1",
    "log.eval_every=0",
    "log.probe_every=0",
    "log.tracker=none",
    "train.cpu=true",
]


def tiny_config(tmp_path: Path, name: str, *overrides: str) -> dict:
    return load_config(None, [*TINY, f"run.output_dir={tmp_path}", f"run.name={name}", *overrides])


def disk_only(root: Path) -> list[str]:
    """Overrides that train on the RE10K-layout scenes under `root` alone."""
    return [
        "data.datasets.scenes.weight=0",
        "data.datasets.disk.type=re10k",
        f"data.datasets.disk.root={root}",
        "data.datasets.disk.list_file=null",
    ]


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").open()]


def export_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def saved_objects(state: Path) -> tuple[dict, dict]:
    """A training state's EMA (counters and weights) and TrainState."""
    record = json.loads((state / checkpoints.TRAINING_STATE).read_text())
    ema = {**record["ema"], "shadow": load_file(str(state / "ema.safetensors"))}
    return ema, record["train_state"]


def launch_two_processes(*overrides: str) -> None:
    """`python -m gen_nvs.train` in two CPU processes joined by gloo."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / "cpu-2proc.yaml"),
        "-m", "gen_nvs.train", *TINY, *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    """4 steps straight, a state every 2 steps."""
    tmp = tmp_path_factory.mktemp("regression")
    return train(tiny_config(tmp, "straight", "train.steps=4", "checkpoint.every=2"))


def test_resume_continues_exactly(regression_run, tmp_path):
    config = tiny_config(tmp_path, "halves", "train.steps=4", "checkpoint.every=2")
    first = train({**config, "train": {**config["train"], "steps": 2}})
    resumed = tiny_config(tmp_path, "halves", "train.steps=4", "checkpoint.resume=latest")
    train(resumed)
    straight = losses(regression_run)
    assert len(straight) == 4
    assert losses(first) == straight  # bitwise: same data, draws, optimizer and EMA state
    for name, tensor in export_weights(regression_run / "export").items():
        assert torch.equal(tensor, export_weights(first / "export")[name]), name


def test_state_layout_and_pruning(regression_run):
    states = checkpoints.list_states(regression_run / "checkpoints")
    assert [p.name for p in states] == ["step_0000002", "step_0000004"]
    newest = states[-1]
    for name in ("config.yaml", "model_config.json", "export/config.json", "model.safetensors"):
        assert (newest / name).is_file(), name
    info = json.loads((regression_run / "run_info.json").read_text())
    assert "git_revision" in info
    config = json.loads((regression_run / "export" / "config.json").read_text())
    assert config["training"]["step"] == 4 and config["training"]["stage"] == "regression"


def test_interrupted_save_is_ignored(tmp_path):
    directory = tmp_path / "checkpoints"
    for step in (2, 4):
        (directory / checkpoints.state_name(step)).mkdir(parents=True)
        (directory / checkpoints.state_name(step) / checkpoints.MODEL_CONFIG).write_text("{}")
    (directory / f".tmp_{checkpoints.state_name(6)}").mkdir()  # killed while saving step 6
    assert checkpoints.resolve_resume("latest", directory).name == "step_0000004"
    assert checkpoints.resolve_resume(None, directory) is None
    with pytest.raises(FileNotFoundError, match="not a training state"):
        checkpoints.resolve_resume(str(tmp_path), directory)


def test_export_loads_and_renders(regression_run):
    model = load_model(regression_run / "export")
    assert not model.can_sample
    sample = generate_scene(3, 3, (16, 16))
    with torch.no_grad():
        out = model(sample.images[None], sample.c2w[None], sample.fxfycxcy[None], 2)
    assert out.rgb.shape == (1, 1, 3, 16, 16)
    assert torch.isfinite(out.rgb).all()


def test_diffusion_stage_from_regression_export(regression_run, tmp_path):
    export = regression_run / "export"
    run_dir = train(
        tiny_config(
            tmp_path,
            "diffusion",
            "stage=diffusion",
            f"model.init_from={export}",
            "train.steps=2",
            "log.eval_every=2",
            "log.sample_steps=2",
        )
    )
    assert len(losses(run_dir)) == 2
    model = load_model(run_dir / "export")
    assert model.can_sample
    assert model.diffusion.prediction_type == "sample"
    # Only the diffusion decoder trained: the regression model is the one it started from.
    before, after = export_weights(export), export_weights(run_dir / "export")
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    # ...and the diffusion decoder, converted from it, has moved away from it.
    renderer = [k for k in after if k.startswith("diffusion.decoder.")]
    assert renderer
    assert any(not torch.equal(after[k], before[k.removeprefix("diffusion.")]) for k in renderer)
    grid = Image.open(run_dir / "samples" / "step_0000002.png")
    # 4 scenes x (3 views + regression + sample), 16 px tiles with a 1 px border
    assert grid.size == (5 * 18, 4 * 18)
    schedule = json.loads((run_dir / "export" / "config.json").read_text())["noise_schedule"]
    assert schedule["num_train_timesteps"] == 1000


def test_resume_from_another_model_size_fails_before_training(regression_run, tmp_path):
    state = checkpoints.list_states(regression_run / "checkpoints")[-1]
    config = tiny_config(
        tmp_path, "other", "model.decoder={depth: 2}", f"checkpoint.resume={state}"
    )
    with pytest.raises(ValueError, match=r"another model \(decoder.depth: saved 3, now 2\)"):
        train(config)
    assert not (tmp_path / "other").exists()


class _WritesAFile:
    """Unpickling this creates `path`: the stand-in for code a crafted pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _resume_cli(tmp_path: Path, state: Path, capsys) -> tuple[int, str]:
    from gen_nvs.train.loop import main

    overrides = [*TINY, f"run.output_dir={tmp_path}", "run.name=resumed", "train.steps=6"]
    code = main([*overrides, f"checkpoint.resume={state}"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "file", ["optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"]
)
def test_resume_never_runs_a_crafted_pickle(regression_run, tmp_path, capsys, file):
    """A shared state folder whose pickled file was replaced runs nothing: one line on
    stderr, exit code 2, no run folder. custom_checkpoint_*.pkl is an earlier version's
    layout (EMA, counters, LR schedule), read only when training_state.json is absent."""
    import shutil

    state = tmp_path / "shared" / "step_0000004"
    shutil.copytree(checkpoints.list_states(regression_run / "checkpoints")[-1], state)
    if file.startswith("custom_checkpoint"):
        (state / checkpoints.TRAINING_STATE).unlink()
        for name in checkpoints.LEGACY_CUSTOM:
            torch.save({}, state / name)
    marker = tmp_path / "code-ran"
    torch.save({"state": _WritesAFile(marker)}, state / file)
    code, err = _resume_cli(tmp_path, state, capsys)
    assert not marker.exists()
    assert code == 2 and err.count("\n") == 1, err
    assert f"cannot resume from {state / file}: refused to unpickle it" in err
    assert not (tmp_path / "resumed").exists()


def test_resume_reads_an_earlier_versions_pickled_state_safely(regression_run, tmp_path):
    """States written before training_state.json (EMA, TrainState and LR schedule pickled
    by Accelerate) still resume, through weights_only unpickling."""
    import shutil

    source = checkpoints.list_states(regression_run / "checkpoints")[0]  # step 2
    state = tmp_path / "old" / source.name
    shutil.copytree(source, state)
    ema, counters = saved_objects(state)
    record = json.loads((state / checkpoints.TRAINING_STATE).read_text())
    pickled = (ema, counters, record["lr_schedule"])
    for name, value in zip(checkpoints.LEGACY_CUSTOM, pickled, strict=True):
        torch.save(value, state / name)
    (state / checkpoints.TRAINING_STATE).unlink()
    (state / "ema.safetensors").unlink()
    config = tiny_config(tmp_path, "continued", "train.steps=4", f"checkpoint.resume={state}")
    run = train(config)
    for name, tensor in export_weights(regression_run / "export").items():
        assert torch.equal(tensor, export_weights(run / "export")[name]), name


def test_existing_states_need_resume(regression_run):
    config = tiny_config(regression_run.parent, regression_run.name, "train.steps=4")
    with pytest.raises(ValueError, match="checkpoint.resume=latest"):
        train(config)


def test_time_limit_ends_the_run_at_a_saved_probed_step(tmp_path):
    """Past `train.max_minutes` the step is the last: logged, probed and saved (state and
    export) as at `train.steps`; run_info.json says where and why it stopped, and the
    run resumes from there."""
    config = tiny_config(
        tmp_path, "limited", "train.steps=50", "train.max_minutes=1e-9",
        "log.every=10", "log.probe_every=40", "log.probe_scenes=2", "checkpoint.every=40",
    )  # fmt: skip
    run_dir = train(config)
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").open()] == [1]
    assert [json.loads(line)["step"] for line in (run_dir / "probe.jsonl").open()] == [1]
    assert [s.name for s in checkpoints.list_states(run_dir / "checkpoints")] == [
        checkpoints.state_name(1)
    ]
    exported = json.loads((run_dir / "export" / "config.json").read_text())
    assert exported["training"]["step"] == 1
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["stopped_early"] == {"step": 1, "reason": "train.max_minutes"}

    config["train"]["max_minutes"] = 0
    config["checkpoint"]["resume"] = "latest"
    config["train"]["steps"] = 3
    train(config)
    assert json.loads((run_dir / "export" / "config.json").read_text())["training"]["step"] == 3
    assert "stopped_early" not in json.loads((run_dir / "run_info.json").read_text())


def test_negative_time_limit_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"train.max_minutes must be >= 0, got -1"):
        train(tiny_config(tmp_path, "bad", "train.max_minutes=-1"))
    assert not (tmp_path / "bad").exists()


def test_empty_data_path_fails_before_training(tmp_path):
    (tmp_path / "data" / "metadata").mkdir(parents=True)
    config = tiny_config(
        tmp_path,
        "empty",
        *disk_only(tmp_path / "data"),
    )
    with pytest.raises(ValueError, match=r"data.datasets.disk: no scenes found under"):
        train(config)
    assert not (tmp_path / "empty").exists()


def test_negative_target_margin_fails_before_training(tmp_path):
    views = generate_scene(0, 4, (16, 16))
    write_re10k_scene(tmp_path / "data", "s", views.images, views.c2w, views.fxfycxcy)
    config = tiny_config(
        tmp_path,
        "margin",
        *disk_only(tmp_path / "data"),
        "data.datasets.disk.target_margin=-1",
    )
    with pytest.raises(ValueError, match=r"data.datasets.disk.target_margin must be >= 0, got -1"):
        train(config)
    assert not (tmp_path / "margin").exists()


def test_images_smaller_than_requested_fail_before_training(tmp_path):
    views = generate_scene(0, 4, (16, 16))
    write_re10k_scene(tmp_path / "data", "small", views.images, views.c2w, views.fxfycxcy)
    config = tiny_config(
        tmp_path,
        "small",
        "data.image_size=[32, 32]",
        *disk_only(tmp_path / "data"),
    )
    with pytest.raises(ValueError, match=r"are 16x16 .* smaller than data.image_size 32x32"):
        train(config)


def test_missing_lpips_weights_fail_before_training(tmp_path):
    config = tiny_config(
        tmp_path, "lpips", "loss.perceptual=0.5", f"loss.perceptual_weights={tmp_path}/vgg.pth"
    )
    with pytest.raises(FileNotFoundError, match="VGG16 weights"):
        train(config)
    assert not (tmp_path / "lpips").exists()


def test_batch_order_is_seeded_per_step_and_process():
    mixture = MixtureDataset([range(10), range(1000)], [1.0, 3.0])
    a = StepBatchSampler(mixture, 64, seed=0, rank=0, start=0, stop=3)
    again = StepBatchSampler(mixture, 64, seed=0, rank=0, start=2, stop=3)
    other_rank = StepBatchSampler(mixture, 64, seed=0, rank=1, start=0, stop=3)
    batches = list(a)
    assert list(again) == batches[2:]  # resuming at step 2 gives step 2's batch
    assert list(other_rank) != batches
    share = sum(d == 1 for batch in batches for d, _, _ in batch) / (3 * 64)
    assert 0.6 < share < 0.9  # weight 3 of 4
    assert all(i < mixture.sizes[d] for batch in batches for d, i, _ in batch)


def test_gradient_accumulation_steps_per_update(regression_run, tmp_path):
    """Two micro-batches per update (with gradient checkpointing): the LR schedule and the
    step count follow updates, not micro-batches. The export is stored in bfloat16."""
    run_dir = train(
        tiny_config(
            tmp_path,
            "accumulate",
            "train.steps=2",
            "train.batch_size=1",
            "train.gradient_accumulation=2",
            "model.gradient_checkpointing=true",
            "checkpoint.export_dtype=bfloat16",
        )
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    straight = [json.loads(line) for line in (regression_run / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2]
    assert [r["lr"] for r in records] == [r["lr"] for r in straight[:2]]
    weights = export_weights(run_dir / "export")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.bfloat16}
    assert next(load_model(run_dir / "export").parameters()).dtype == torch.float32


def test_mixture_of_procedural_and_disk_scenes(tmp_path):
    for seed in range(3):
        views = generate_scene(seed, 4, (24, 24))
        write_re10k_scene(
            tmp_path / "disk", f"scene{seed}", views.images, views.c2w, views.fxfycxcy,
            views.depth, views.depth_valid,
        )  # fmt: skip
    config = tiny_config(
        tmp_path,
        "mixture",
        "data.num_sources=[1, 2]",
        "data.datasets.disk.type=re10k",
        f"data.datasets.disk.root={tmp_path / 'disk'}",
        "data.datasets.disk.list_file=null",
        "data.datasets.disk.frame_gap=[1, 3]",
        "data.datasets.disk.weight=3",
        "data.datasets.disk.target_margin=1",
    )
    data = TrainingData(config["data"], batch_size=4, seed=0, rank=0)
    assert data.names == ["scenes", "disk"]
    assert data.mixture.datasets[1].target_margin == 1
    batches = list(data.batches(0, 3))
    assert len(batches) == 3
    for batch in batches:
        assert batch.images.shape == (4, 3, 3, 16, 16)  # 2 sources + 1 target, resized
        assert batch.num_sources == 2 and batch.depth is not None
    names = {name for batch in batches for name in batch.scenes}
    assert any(n.startswith("scene") for n in names)
    assert any(n.startswith("procedural_") for n in names)
    again = next(iter(data.batches(1, 2)))
    assert torch.equal(again.images, batches[1].images)  # seeded by the step alone


def test_spike_steps_are_skipped():
    state = TrainState()
    for _ in range(5):
        assert not state.is_spike(1.0, factor=10.0, warmup=5)
        state.accept(1.0)
    assert state.grad_norm_mean == pytest.approx(1.0)
    assert state.is_spike(11.0, factor=10.0, warmup=5)
    assert not state.is_spike(9.0, factor=10.0, warmup=5)
    assert state.is_spike(float("nan"), factor=0.0, warmup=5)
    assert not state.is_spike(1e9, factor=0.0, warmup=5)


def test_skipped_updates_keep_weights_and_ema_but_advance_the_schedule(regression_run, tmp_path):
    """Every update after the first is a spike (spike_factor tiny): the weights and the EMA
    stay those of step 1, while the step count and the LR schedule go on."""
    spikes = "train.spike_factor=1e-9", "train.spike_warmup=1"
    skipping = train(tiny_config(tmp_path, "spikes", "train.steps=4", *spikes))
    one_step = train(tiny_config(tmp_path, "one", "train.steps=1"))
    records = [json.loads(line) for line in (skipping / "metrics.jsonl").open()]
    straight = [json.loads(line) for line in (regression_run / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["skipped"] for r in records] == [0, 1, 2, 3]
    assert [r["lr"] for r in records] == [r["lr"] for r in straight]
    for name, tensor in export_weights(one_step / "export").items():
        assert torch.equal(tensor, export_weights(skipping / "export")[name]), name
    ema, counters = saved_objects(checkpoints.list_states(skipping / "checkpoints")[-1])
    assert ema["num_updates"] == 1
    assert (counters["step"], counters["skipped"], counters["accepted"]) == (4, 3, 1)


def test_fp16_overflow_goes_to_the_grad_scaler():
    """A non-finite norm (fp16 overflow) is the GradScaler's to skip: it lowers its scale.
    A skipped spike updates the scaler too, so the next step can unscale again."""
    Accelerator(cpu=True)
    layer = torch.nn.Linear(2, 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    optimizer = AcceleratedOptimizer(torch.optim.SGD(layer.parameters(), lr=0.1), scaler=scaler)
    state = TrainState(accepted=5, grad_norm_mean=1.0)
    options = {"spike_factor": 10.0, "spike_warmup": 5}

    def update(gradient: float) -> bool:
        optimizer.zero_grad()
        scaler.scale(layer(torch.ones(1, 2)).sum() * gradient).backward()
        scaler.unscale_(optimizer.optimizer)  # as Accelerator.clip_grad_norm_ does
        norm = float(torch.nn.utils.clip_grad_norm_(layer.parameters(), math.inf))
        return apply_update(optimizer, scaler, state, norm, options)

    start = [p.detach().clone() for p in layer.parameters()]
    assert not update(math.inf)
    assert scaler.get_scale() == 2.0
    assert not update(100.0)  # norm 100 * sqrt(3) > 10 x the mean 1
    assert all(torch.equal(p, q) for p, q in zip(layer.parameters(), start, strict=True))
    assert update(1.0)
    assert not torch.equal(layer.weight, start[0])
    assert (state.skipped, state.accepted) == (2, 6)


def scenes_without_depth(root: Path) -> list[str]:
    """Four RealEstate10K-layout scenes without depth under `root`; the overrides that
    add them to the data as `disk`."""
    for seed in range(4):
        views = generate_scene(seed, 3, (16, 16))
        write_re10k_scene(root, f"scene{seed}", views.images, views.c2w, views.fxfycxcy)
    return [
        "data.datasets.disk.type=re10k",
        f"data.datasets.disk.root={root}",
        "data.datasets.disk.list_file=null",
    ]


def test_two_cpu_processes(tmp_path):
    """Two CPU processes joined by gloo train a few steps (configs/accelerate/cpu-2proc.yaml;
    Accelerate's `--cpu` flag alone starts one process unless MPI is set up). The data mix
    scenes with and without depth, one scene per batch: on some steps only one process has
    depth, and DDP still needs a gradient for every trained parameter (the point head) and
    both processes reduce the same logged terms."""
    overrides = [
        f"run.output_dir={tmp_path}", "run.name=ddp", "train.steps=3", "checkpoint.every=3",
        "train.batch_size=1", "data.datasets.scenes.num_scenes=8",
        *scenes_without_depth(tmp_path / "disk"),
    ]  # fmt: skip
    config = tiny_config(tmp_path, "ddp", *overrides)
    has_depth = []  # [process][step]
    for rank in (0, 1):
        stream = TrainingData(config["data"], batch_size=1, seed=0, rank=rank).batches(0, 3)
        has_depth.append([batch.depth is not None for batch in stream])
    assert has_depth[0] != has_depth[1]
    launch_two_processes(*overrides)
    run_dir = tmp_path / "ddp"
    assert len(losses(run_dir)) == 3
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [("points" in r) for r in records] == [any(d) for d in zip(*has_depth, strict=True)]
    assert all({"loss", "l2", "camera"} <= set(r) for r in records)
    assert json.loads((run_dir / "run_info.json").read_text())["num_processes"] == 2
    state = checkpoints.list_states(run_dir / "checkpoints")[-1]
    assert {p.name for p in state.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    # The export holds the EMA of the trained weights and the live frozen ones.
    export, live = export_weights(run_dir / "export"), load_file(str(state / "model.safetensors"))
    shadow = saved_objects(state)[0]["shadow"]
    assert shadow and set(export) == {k.removeprefix("model.") for k in live}
    for name, tensor in export.items():
        assert torch.equal(tensor, shadow.get(name, live[f"model.{name}"])), name
    assert any(not torch.equal(shadow[k], live[f"model.{k}"]) for k in shadow)


def test_two_cpu_processes_rgb_diffusion_without_depth(regression_run, tmp_path):
    """RGB-only diffusion (noise_channels 3) on data without depth in two processes: the
    diffusion decoder's point head and its modulation, never run, are frozen, so that
    DDP gets a gradient for every trained parameter."""
    export = regression_run / "export"
    launch_two_processes(
        f"run.output_dir={tmp_path}", "run.name=rgb", "train.steps=2", "checkpoint.every=2",
        "stage=diffusion", f"model.init_from={export}", "diffusion.noise_channels=3",
        "data.datasets.scenes.weight=0", *scenes_without_depth(tmp_path / "disk"),
    )  # fmt: skip
    assert len(losses(tmp_path / "rgb")) == 2
    before, after = export_weights(export), export_weights(tmp_path / "rgb" / "export")
    points = [k for k in after if k.startswith("diffusion.decoder.point_head.")]
    assert points
    for name in points:
        assert torch.equal(after[name], before[name.removeprefix("diffusion.")]), name
    modulation = [k for k in after if k.startswith("diffusion.head_modulation.points.")]
    assert modulation and all(not after[k].any() for k in modulation)  # zero-initialised


def test_regression_runs_log_the_copy_probe_and_held_out_psnr(tmp_path):
    """Every `log.probe_every` steps and at the end: the sources re-rendered at their own
    cameras and held-out novel views, as PSNR, in probe.jsonl."""
    config = tiny_config(
        tmp_path, "probe", "train.steps=3", "log.probe_every=2", "log.probe_scenes=2"
    )
    run_dir = train(config)
    records = [json.loads(line) for line in (run_dir / "probe.jsonl").open()]
    assert [r["step"] for r in records] == [2, 3]
    for record in records:
        for name in ("copy", "novel", "interp", "extrap", "mirror_novel"):
            assert 0 < record[f"probe/{name}_psnr"] < 60
    assert all("loss" in json.loads(line) for line in (run_dir / "metrics.jsonl").open())

    from gen_nvs.train.curves import curve_table

    table = curve_table(run_dir).splitlines()
    assert table[0].startswith("| step | minutes | copy PSNR | novel PSNR |")
    assert [row.split(" | ")[0] for row in table[2:]] == ["| 2", "| 3"]
    copy_psnr = float(table[2].split(" | ")[2])
    assert copy_psnr == pytest.approx(records[0]["probe/copy_psnr"], abs=0.01)


def test_probe_psnr_is_perfect_for_a_model_that_returns_the_truth():
    from gen_nvs.train.probe import Probe, psnr

    probe = Probe(num_scenes=1, image_hw=(16, 16), sources=(0, 2), targets=(1, 3))
    assert set(probe(_Oracle(probe))) == {
        "probe/copy_psnr", "probe/novel_psnr", "probe/interp_psnr", "probe/extrap_psnr",
        "probe/mirror_novel_psnr",
    }  # fmt: skip
    assert min(probe(_Oracle(probe)).values()) > 90
    half = torch.full((3, 4, 4), 0.5)
    assert torch.allclose(psnr(half, torch.zeros(3, 4, 4)), torch.tensor(6.0206), atol=1e-3)
    with pytest.raises(ValueError, match="the probe needs scenes"):
        Probe(num_scenes=0, image_hw=(16, 16))


class _Oracle:
    """A stand-in model that renders the probe's ground truth for any of its cameras."""

    def __init__(self, probe) -> None:
        self.probe = probe

    def encode(self, images, c2w, fxfycxcy):
        return None

    def render(self, scene, c2w, fxfycxcy, image_hw):
        """The probe's images at these cameras, or flipped at their mirror images."""
        from gen_nvs.geometry.cameras import mirror_cameras
        from gen_nvs.models.decoder import DecoderOutput

        mirrored, _ = mirror_cameras(self.probe.c2w, self.probe.fxfycxcy, image_hw[1])
        for known, flip in ((self.probe.c2w, False), (mirrored, True)):
            match = (c2w[:, :, None] == known[:, None]).flatten(-2).all(-1)  # (b, t, v)
            if match.any(-1).all():
                views = self.probe.images[:, match[0].float().argmax(-1)]
                return DecoderOutput(rgb=views.flip(-1) if flip else views)
        raise AssertionError("the probe asked for a camera it does not have")


# --------------------------------------------------------------------------------------
# The geometry stage (3D pretraining of the encoder) and regression from its export
# --------------------------------------------------------------------------------------

GEOMETRY = ["stage=geometry", "model.depth_head={}", "loss.camera=1.0", "loss.depth=1.0"]


@pytest.fixture(scope="module")
def geometry_run(tmp_path_factory) -> Path:
    """3 geometry steps, with a depth grid at the last (the tiny encoder runs at 28 px:
    the depth head's 28x28 output is resized to the 16x16 images)."""
    tmp = tmp_path_factory.mktemp("geometry")
    overrides = ["train.steps=3", "checkpoint.every=3", "log.eval_every=3", "log.eval_scenes=2"]
    return train(tiny_config(tmp, "geometry", *GEOMETRY, *overrides))


def test_geometry_stage_trains_the_encoder_and_heads_only(geometry_run):
    records = [json.loads(line) for line in (geometry_run / "metrics.jsonl").open()]
    assert len(records) == 3 and all({"camera", "depth"} <= set(r) for r in records)
    config = json.loads((geometry_run / "export" / "config.json").read_text())
    assert config["training"]["stage"] == "geometry"
    model = load_model(geometry_run / "export")
    assert model.depth_head is not None and model.camera_head is not None
    # What the pose-free aggregator and the heads do not use keeps its initial weights.
    torch.manual_seed(0)
    start = build_model(tiny_config(geometry_run.parent, "x", *GEOMETRY)).state_dict()
    after = export_weights(geometry_run / "export")
    moved = {k for k in after if not torch.equal(after[k], start[k])}
    assert moved and all(
        k.startswith(("encoder.aggregator.", "camera_head.", "depth_head.")) for k in moved
    )
    assert any(k.startswith("depth_head.") for k in moved)
    assert any(k.startswith("encoder.aggregator.") for k in moved)
    sample = generate_scene(5, 3, (16, 16))
    with torch.no_grad():
        depth, conf = model.estimate_depth(sample.images[None])
    assert depth.shape == conf.shape == (1, 3, 16, 16)
    assert (depth > 0).all() and (conf > 1).all()
    grid = Image.open(geometry_run / "samples" / "step_0000003.png")
    # 2 scenes x 3 views x (images, estimated depth, true depth), 16 px tiles + 1 px border
    assert grid.size == (9 * 18, 2 * 18)


def test_regression_from_geometry_export(geometry_run, tmp_path):
    """The regression stage starts from the geometry export's weights (the model options
    come from the export) and keeps its depth head, frozen."""
    export = geometry_run / "export"
    overrides = [f"model.init_from={export}", "model.decoder={depth: 2}", "log.probe_every=0"]
    config = tiny_config(tmp_path, "regression", "train.steps=2", *overrides)
    before = export_weights(export)
    start = build_model(config).state_dict()
    name = "encoder.aggregator.frame_blocks.0.attn.qkv.weight"
    assert name in before and torch.equal(start[name], before[name])
    assert set(start) == set(before)
    run_dir = train(config)
    after = export_weights(run_dir / "export")
    assert not torch.equal(after[name], before[name])  # the encoder trains on
    depth_head = [k for k in after if k.startswith("depth_head.")]
    assert depth_head and all(torch.equal(after[k], before[k]) for k in depth_head)
    assert load_model(run_dir / "export").depth_head is not None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.camera=0"], "needs loss.camera > 0"),
        (["model.depth_head=null"], r"needs a model with a depth head: set model.depth_head"),
        (["model.depth_head={dim: 7}"], "must be the encoder's token width 128"),
    ],
)
def test_geometry_stage_misconfigurations_fail_before_training(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_config(tmp_path, "bad", *GEOMETRY, *overrides))
    assert not (tmp_path / "bad").exists()


def test_geometry_stage_needs_a_camera_head(tmp_path):
    model = build_model(tiny_config(tmp_path, "x", *GEOMETRY))
    model.camera_head = None
    with pytest.raises(ValueError, match="trains the camera head, and this model has none"):
        objectives.GeometryForward(model, depth_head=True)


def test_geometry_loss_decreases_on_one_batch():
    """30 Adam steps on one batch of two scenes: the camera and depth losses fall."""
    config = tiny_config(Path("unused"), "x", *GEOMETRY)
    torch.manual_seed(0)
    model = build_model(config)
    set_trainable(model, config)
    forward = objectives.GeometryForward(model, depth_head=True)
    loss_fn = objectives.GeometryLoss(camera=1.0, depth=1.0, alpha=0.2)
    batch = collate_scenes([generate_scene(seed, 3, (16, 16)).to_sample(3) for seed in (1, 2)])
    views = objectives.all_sources(batch)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(30):
        loss, terms = loss_fn(*forward(views), views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    assert history[-1]["depth"] < 0.5 * history[0]["depth"]
    assert history[-1]["camera"] < history[0]["camera"]


@pytest.mark.parametrize("with_depth", [True, False])
def test_geometry_step_reaches_every_trained_parameter(with_depth):
    """What DDP needs: one geometry step gives every trained parameter a gradient, on a
    batch without depth too (the depth head through a zero); the camera MLP, the ray
    projections, the connector and the decoder, which no geometry loss reaches, are frozen."""
    config = tiny_config(
        Path("unused"), "x", *GEOMETRY, "model.encoder={image_size: 28, source_rays: true}"
    )
    model = build_model(config)
    set_trainable(model, config)
    forward, step_loss, names = build_objective(config, model, torch.device("cpu"))
    batch = collate_scenes([generate_scene(seed, 3, (16, 16)).to_sample(3) for seed in (1, 2)])
    if not with_depth:
        batch = dataclasses.replace(batch, depth=None, depth_valid=None)
    loss, terms = step_loss(forward, objectives.all_sources(batch), True, None)
    loss.backward()
    assert names == ["camera", "depth"] and ("depth" in terms) == with_depth
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, p in model.named_parameters() if p.grad is not None} == trained
    assert not any(
        n.startswith(("decoder.", "encoder.camera_mlp.", "encoder.ray_embed")) for n in trained
    )


def test_mirrored_training_runs_and_its_share_is_checked(tmp_path):
    """data.mirror reflects that share of the training scenes (tested for the geometry in
    tests/test_data.py); a share outside [0, 1] is refused before training."""
    run_dir = train(tiny_config(tmp_path, "mirror", "train.steps=2", "data.mirror=1.0"))
    assert len(losses(run_dir)) == 2
    with pytest.raises(ValueError, match=r"data.mirror must be in \[0, 1\], got 1.5"):
        train(tiny_config(tmp_path, "bad", "data.mirror=1.5"))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("stage", ["regression", "geometry"])
def test_point_gradient_joins_the_point_and_depth_losses(stage):
    """`loss.point_gradient` adds VGGT's gradient term to the regression stage's point loss
    and to the geometry stage's depth loss: the same model and batch score higher with it,
    and the step still reaches every trained parameter."""
    overrides = GEOMETRY if stage == "geometry" else []
    term = "depth" if stage == "geometry" else "points"
    batch = collate_scenes([generate_scene(seed, 3, (16, 16)).to_sample(2) for seed in (1, 2)])
    values = []
    for weight in (0.0, 1.0):
        config = tiny_config(Path("unused"), "x", *overrides, f"loss.point_gradient={weight}")
        torch.manual_seed(0)
        model = build_model(config)
        set_trainable(model, config)
        forward, step_loss, _ = build_objective(config, model, torch.device("cpu"))
        if stage == "geometry":
            views = objectives.all_sources(batch)
        else:
            views = objectives.select_views(batch, 2, torch.Generator().manual_seed(0))
        loss, terms = step_loss(forward, views, True, torch.Generator().manual_seed(0))
        loss.backward()
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert {n for n, p in model.named_parameters() if p.grad is not None} == trained
        values.append(float(terms[term].detach()))
    assert values[1] > values[0]
