"""The GPU plan (`gen_nvs.train.device`): steps fitted to the clock, a real calibration
run, the stages chained and packed within the tool's limits, and the parts joined and
checked back here."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

import gen_nvs.train.device as device
from gen_nvs.train.config import load_config
from gen_nvs.train.recipe import STAGES
from tests.test_train import tiny_config


def test_fit_to_clock_sets_steps_probes_states_and_the_limit():
    config = load_config(None, ["train.warmup_steps=100", "log.probe_every=250"])
    device.fit_to_clock(config, seconds=120.0, per_step=0.25)
    assert config["train"]["steps"] == 432  # 0.9 * 120 / 0.25
    assert config["train"]["warmup_steps"] == 43
    assert config["train"]["max_minutes"] == pytest.approx(2.0)
    assert config["checkpoint"]["every"] == config["log"]["probe_every"] == 108
    assert config["log"]["every"] == 10

    config = load_config(None, ["log.probe_every=0"])  # no probe stays no probe
    device.fit_to_clock(config, seconds=0.1, per_step=5.0)  # less than a step: one step
    assert config["train"]["steps"] == 1
    assert config["log"]["probe_every"] == 0
    assert config["checkpoint"]["every"] == 1


def test_seconds_per_step_from_a_real_run_leaves_nothing(tmp_path):
    config = tiny_config(tmp_path, "stage", "train.steps=1000")
    per_step = device.seconds_per_step(config, steps=4)
    assert 0 < per_step < 30
    assert list(tmp_path.iterdir()) == []
    assert config["train"]["steps"] == 1000  # the stage's own config is not touched
    with pytest.raises(ValueError, match="at least 3 steps, got 2"):
        device.seconds_per_step(config, steps=2)


# --------------------------------------------------------------------------------------
# The run, with training and the CLI commands stood in for
# --------------------------------------------------------------------------------------


class FakeTraining:
    """Stands in for `train` (a stage: its export at the step it reached, its probes) and
    for the gen-nvs commands (make-scenes writes a list, eval its results)."""

    def __init__(self, fail_stage: str | None = None) -> None:
        self.runs: list[dict] = []
        self.commands: list[list[str]] = []
        self.fail_stage = fail_stage

    def train(self, config: dict) -> Path:
        run_dir = Path(config["run"]["output_dir"]) / config["run"]["name"]
        self.runs.append(config)
        if config["run"]["name"].startswith(self.fail_stage or "\0"):
            raise RuntimeError(f"{config['run']['name']} broke")
        (run_dir / "export").mkdir(parents=True)
        steps = config["train"]["steps"]
        info = {"training": {"step": steps}, "stage": config["stage"]}
        (run_dir / "export" / "config.json").write_text(json.dumps(info))
        (run_dir / "export" / "model.safetensors").write_bytes(bytes(range(256)) * 300)
        times = "".join(json.dumps({"step": s, "time": 0.5 * s}) + "\n" for s in range(1, 5))
        (run_dir / "metrics.jsonl").write_text(times)
        if config["log"]["probe_every"] > 0:
            probe = {"step": steps, "probe/copy_psnr": 29.0, "probe/novel_psnr": 21.0}
            (run_dir / "probe.jsonl").write_text(json.dumps(probe) + "\n")
        return run_dir

    def gen_nvs(self, args: list[str], timeout: float | None = None) -> None:
        self.commands.append(args)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if args[0] == "make-scenes":
            (out / "full_list.txt").write_text("metadata/x.json\n")
        else:  # the model the run began from: 21.5 dB; what it trained: 0.1 dB better
            start = args[args.index("--checkpoint") + 1].endswith("default")
            (out / "results.json").write_text(json.dumps(_results(21.5 if start else 21.6)))


def _results(psnr: float) -> dict:
    """A results.json of `gen-nvs eval` as far as the device run reads it."""
    scenes = []
    for i in range(5):
        region = {"psnr": psnr + 0.1 * i}
        split = {**region, "seen": region, "unseen": region}
        scenes.append(
            {"scene": f"s{i}", "means": {"regression": split, "diffusion": {"mean": split}}}
        )
    return {"means": {"regression": {"psnr": psnr}}, "scenes": scenes}


@pytest.fixture
def fake(monkeypatch):
    def make(fail_stage: str | None = None) -> FakeTraining:
        stand_in = FakeTraining(fail_stage)
        monkeypatch.setattr(device, "train", stand_in.train)
        monkeypatch.setattr(device, "_gen_nvs", stand_in.gen_nvs)
        monkeypatch.setattr(device, "load_model", lambda path: type("M", (), {"can_sample": True}))
        monkeypatch.setattr(device, "PART_BYTES", 20_000)  # several parts from a small export
        return stand_in

    return make


def _run(tmp_path: Path, *extra: str) -> int:
    argv = ["run", "--minutes", "5", "--runs", str(tmp_path / "runs"), "--cpu", "--workers", "3"]
    return device.main(
        [*argv, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *extra]
    )


def test_continuation_chains_its_stages_within_the_clock_and_packs_them(tmp_path, fake):
    stand_in = fake()
    assert _run(tmp_path, "--scale", "4", "--set", "camera:train.ema_decay=0.9") == 0

    made = [c for c in stand_in.commands if c[0] == "make-scenes"]
    assert [Path(c[2]).name for c in made] == ["proc64-train12", "proc64-train", "proc64-test"]
    assert all(c[c.index("--workers") + 1] == "3" for c in made)
    evals = [c for c in stand_in.commands if c[0] == "eval"]
    assert [c[c.index("--samples") + 1] for c in evals] == ["0", "4", "4"]  # copy probe first
    assert [Path(c[c.index("--out") + 1]).name for c in evals] == [
        "eval-copy",
        "eval",
        "eval-start",
    ]
    assert evals[2][evals[2].index("--checkpoint") + 1].endswith("assets/default")

    stages = [c for c in stand_in.runs if not c["run"]["name"].endswith("-calibration")]
    assert [c["stage"] for c in stages] == ["regression", "geometry", "diffusion"]
    regression, camera, diffusion = stages
    assert regression["model"]["init_from"].endswith("assets/default")
    assert regression["data"]["num_targets"] == 8  # the continuation's settings
    assert regression["data"]["datasets"]["procedural"]["root"].endswith("proc64-train12")
    assert regression["train"]["batch_size"] == 32  # 8 x 4
    assert regression["train"]["lr"] == pytest.approx(2e-4 * 2)  # x sqrt(4)
    assert camera["model"]["init_from"] == str(
        tmp_path / "runs" / regression["run"]["name"] / "export"
    )
    assert camera["train"]["ema_decay"] == 0.9
    assert diffusion["model"]["init_from"] == str(
        tmp_path / "runs" / camera["run"]["name"] / "export"
    )
    for config in stages:  # fitted to the 0.5 s a step the calibration logged
        limit = config["train"]["max_minutes"]
        assert config["train"]["steps"] == int(0.9 * 60 * limit / 0.5)
        assert config["log"]["tracker"] == "none"
    # Each stage's share of the training time left; these took none, so it passes on.
    training = 5 * (1 - device.RESERVE)
    limits = [c["train"]["max_minutes"] for c in stages]
    assert limits == pytest.approx([0.6 * training, 0.25 * training, training], rel=0.01)

    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) <= 8 and "summary.json" in files
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["plan"] == "continue" and "error" not in summary
    assert summary["stages"]["regression"]["steps_done"] == regression["train"]["steps"]
    assert summary["stages"]["regression"]["probe"][0]["probe/novel_psnr"] == 21.0
    assert summary["evaluation"]["eval"] == {"regression": {"psnr": 21.6}}
    for output in ("regression", "samples"):  # paired, per scene: +0.1 dB in all 5
        rows = summary["comparison"][output]
        assert [r["region"] for r in rows] == ["whole", "seen", "unseen"]
        assert all(r["mean"] == pytest.approx(0.1) and r["better"] == 5 for r in rows)

    back = device.unpack(tmp_path / "out", tmp_path / "back")
    assert back == summary
    export = tmp_path / "back" / summary["bundle"]["export"]
    assert export == tmp_path / "back" / diffusion["run"]["name"] / "export"
    sent = tmp_path / "runs" / diffusion["run"]["name"] / "export" / "model.safetensors"
    assert (export / "model.safetensors").read_bytes() == sent.read_bytes()
    assert (tmp_path / "back" / "eval" / "results.json").is_file()
    assert (tmp_path / "back" / regression["run"]["name"] / "probe.jsonl").is_file()
    assert not (tmp_path / "back" / device.BUNDLE).exists()


def test_scratch_runs_every_recipe_stage(tmp_path, fake):
    stand_in = fake()
    assert _run(tmp_path, "--from", "scratch", "--reserve", "0.5") == 0
    stages = [c for c in stand_in.runs if not c["run"]["name"].endswith("-calibration")]
    assert [c["run"]["name"] for c in stages] == [
        load_config(Path("configs") / STAGES[s][0])["run"]["name"] for s in STAGES
    ]
    assert stages[0]["model"]["init_from"] is None
    assert stages[0]["train"]["max_minutes"] == pytest.approx(0.55 * 2.5, rel=0.01)
    made = [Path(c[2]).name for c in stand_in.commands if c[0] == "make-scenes"]
    assert made == ["proc64-train", "proc64-test"]


def test_a_failing_stage_still_packs_what_was_made(tmp_path, fake, capsys):
    fake(fail_stage="embedded-diffusion")
    assert _run(tmp_path) == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "embedded-diffusion" in summary["error"] and "broke" in summary["error"]
    assert summary["bundle"]["export"] == "embedded-camera/export"  # the furthest export
    assert summary["evaluation"] == {}
    device.unpack(tmp_path / "out", tmp_path / "back")
    assert (tmp_path / "back" / "embedded-camera" / "export" / "config.json").is_file()
    assert "broke" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Unpacking: what is missing, short, corrupt or unsafe is named
# --------------------------------------------------------------------------------------


@pytest.fixture
def packed(tmp_path, fake) -> Path:
    fake()
    assert _run(tmp_path) == 0
    return tmp_path / "out"


def _parts(out: Path) -> list[Path]:
    return sorted(out.glob(f"{device.BUNDLE}.*"))


def test_unpack_names_a_missing_part(packed, tmp_path):
    _parts(packed)[-1].unlink()
    with pytest.raises(ValueError, match=r"bundle.tar.\d\d: missing"):
        device.unpack(packed, tmp_path / "back")


def test_unpack_names_a_short_part(packed, tmp_path):
    part = _parts(packed)[0]
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"bundle.tar.00: 19999 bytes, expected 20000"):
        device.unpack(packed, tmp_path / "back")


def test_unpack_refuses_corrupt_parts(packed, tmp_path):
    part = _parts(packed)[0]
    data = bytearray(part.read_bytes())
    data[5000] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        device.unpack(packed, tmp_path / "back")
    assert not (tmp_path / "back" / device.BUNDLE).exists()


def test_unpack_refuses_members_outside_its_folder(tmp_path):
    import hashlib

    evil = tmp_path / "source" / "evil.txt"
    evil.parent.mkdir()
    evil.write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(out / f"{device.BUNDLE}.00", "w") as tar:
        tar.add(evil, arcname="../evil.txt")
    data = (out / f"{device.BUNDLE}.00").read_bytes()
    parts = [{"name": f"{device.BUNDLE}.00", "bytes": len(data)}]
    bundle = {"parts": parts, "sha256": hashlib.sha256(data).hexdigest()}
    (out / "summary.json").write_text(json.dumps({"bundle": bundle}))
    with pytest.raises(ValueError, match="refusing member '../evil.txt'"):
        device.unpack(out, tmp_path / "back")
    assert not (tmp_path / "evil.txt").exists()


def test_unpack_cli_names_a_folder_without_a_summary(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        device.main(["unpack", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no summary.json (expected the files of a device run)" in capsys.readouterr().err


def test_unpack_cli_describes_the_run(packed, tmp_path, capsys):
    assert device.main(["unpack", str(packed), "--to", str(tmp_path / "back")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("device run: continue from default on cpu")
    assert "regression:" in text and "export:" in text
    assert "eval: regression PSNR 21.60 dB" in text
    assert "regression PSNR, this run - the model it began from, per scene:" in text
    assert "whole   +0.100 dB" in text and "better in 5 of 5 scenes" in text


# --------------------------------------------------------------------------------------
# The command for the device tool
# --------------------------------------------------------------------------------------


def test_device_command_fits_the_tool(tmp_path):
    command = device.device_command(8, "default", 16)
    assert len(command) <= 2000  # the tool's limit on a command
    assert ".whl/*.whl" in command and "--target /tmp/site" in command
    assert "PYTHONPATH=/tmp/site:$PWD" in command
    assert command.endswith("run --minutes 8 --from default --scale 16 --out $OUT")
    bench = device.bench_command()
    assert len(bench) <= 2000 and bench.startswith(command.split(" && python3 -m gen_nvs")[0])
    assert bench.endswith("bench gpu --json > $OUT/bench-gpu.json")

    (tmp_path / ".git" / "info").mkdir(parents=True)
    device.exclude_from_git(tmp_path, "/.whl/")
    device.exclude_from_git(tmp_path, "/.whl/")
    assert (tmp_path / ".git" / "info" / "exclude").read_text() == "/.whl/\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["wheels", "--minutes", "11"], "--minutes must be at most 10 (one device command)"),
        (["run", "--minutes", "0", "--out", "x"], "--minutes must be > 0, got 0.0"),
        (["run", "--scale", "0", "--out", "x"], "--scale must be >= 1, got 0"),
        (["run", "--from", "nowhere", "--out", "x"], "--from nowhere: no export there"),
        (["run", "--workers", "0", "--out", "x"], "--workers must be >= 1, got 0"),
        (["run", "--reserve", "1", "--out", "x"], "--reserve must be in [0, 1), got 1.0"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    with pytest.raises(SystemExit):
        device.main(argv)
    assert message in capsys.readouterr().err
