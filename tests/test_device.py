"""The GPU plan (`gen_nvs.train.device`): steps fitted to the clock, a real calibration
run, the stages chained, timed and packed within the tool's limits, and the parts joined
and checked back here."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

import gen_nvs.train.device as device
from gen_nvs.train.config import load_config
from gen_nvs.train.recipe import STAGES, run_name
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


def test_calibration_from_a_real_run_leaves_nothing(tmp_path):
    config = tiny_config(tmp_path, "stage", "train.steps=1000")
    per_step, fixed = device.calibrate(config, steps=4)
    assert 0 < per_step < 30 and fixed > 0  # setup, the first step and the save
    assert list(tmp_path.iterdir()) == []
    assert config["train"]["steps"] == 1000  # the stage's own config is not touched
    assert device.calibrate(config, steps=4, seconds=1e-6) is None  # stopped after a step
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="at least 3 steps, got 2"):
        device.calibrate(config, steps=2)


# --------------------------------------------------------------------------------------
# The run, with training, the clock and the CLI commands stood in for
# --------------------------------------------------------------------------------------


class FakeDevice:
    """Stands in for the clock, for `train` (a stage: its export at the step it reached,
    its probes, and `stage_seconds` on the clock; a calibration: 0.5 s a step logged,
    `calibration_seconds` on the clock)
    and for the gen-nvs commands (make-scenes writes a list, eval its results)."""

    def __init__(
        self,
        stage_seconds: float = 0.0,
        fail: str | None = None,
        log_bytes: int = 100,
        calibration_seconds: float = 0.0,
    ) -> None:
        self.time = 1000.0
        self.calibration_seconds = calibration_seconds
        self.log_bytes = log_bytes
        self.stage_seconds = stage_seconds
        self.fail = fail
        self.runs: list[dict] = []
        self.commands: list[list[str]] = []
        self.timeouts: list[float | None] = []

    def now(self) -> float:
        return self.time

    def train(self, config: dict) -> Path:
        run_dir = Path(config["run"]["output_dir"]) / config["run"]["name"]
        self.runs.append(config)
        if config["run"]["name"].startswith(self.fail or "\0"):
            raise RuntimeError(f"{config['run']['name']} broke")
        (run_dir / "export").mkdir(parents=True)
        steps = config["train"]["steps"]
        info = {"training": {"step": steps}, "stage": config["stage"]}
        (run_dir / "export" / "config.json").write_text(json.dumps(info))
        (run_dir / "export" / "model.safetensors").write_bytes(bytes(range(256)) * 300)
        times = "".join(json.dumps({"step": s, "time": 0.5 * s}) + "\n" for s in range(1, 5))
        (run_dir / "metrics.jsonl").write_text(times)
        (run_dir / "config.yaml").write_text("#" * self.log_bytes)
        if config["log"]["probe_every"] > 0:
            probe = {"step": steps, "probe/copy_psnr": 29.0, "probe/novel_psnr": 21.0}
            (run_dir / "probe.jsonl").write_text(json.dumps(probe) + "\n")
        calibration = config["run"]["name"].endswith("-calibration")
        self.time += self.calibration_seconds if calibration else self.stage_seconds
        return run_dir

    def run_cli(self, args: list[str], timeout: float | None = None) -> None:
        self.commands.append(args)
        self.timeouts.append(timeout)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if args[0] == "make-scenes":
            (out / "full_list.txt").write_text("metadata/x.json\n")
        else:  # the model the run began from: 21.5 dB; what it trained: 0.1 dB better
            start = args[args.index("--checkpoint") + 1].endswith("default")
            (out / "results.json").write_text(json.dumps(_results(21.5 if start else 21.6)))

    def stages(self) -> list[dict]:
        return [c for c in self.runs if not c["run"]["name"].endswith("-calibration")]


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
    def make(**options) -> FakeDevice:
        stand_in = FakeDevice(**options)
        monkeypatch.setattr(device, "now", stand_in.now)
        monkeypatch.setattr(device, "train", stand_in.train)
        monkeypatch.setattr(device, "run_cli", stand_in.run_cli)
        monkeypatch.setattr("gen_nvs.train.recipe.run_cli", stand_in.run_cli)  # make_data
        monkeypatch.setattr(device, "load_model", lambda path: type("M", (), {"can_sample": True}))
        monkeypatch.setattr(device, "PART_BYTES", 20_000)  # several parts from a small export
        return stand_in

    return make


def _run(tmp_path: Path, *extra: str) -> int:
    argv = ["run", "--minutes", "5", "--runs", str(tmp_path / "runs"), "--cpu", "--workers", "3"]
    return device.main(
        [*argv, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *extra]
    )


def _summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def test_continuation_chains_its_stages_within_the_clock_and_packs_them(tmp_path, fake):
    stand_in = fake()
    assert _run(tmp_path, "--scale", "4", "--set", "camera:train.ema_decay=0.9") == 0

    made = [c for c in stand_in.commands if c[0] == "make-scenes"]
    assert [Path(c[2]).name for c in made] == ["proc64-train12", "proc64-train", "proc64-test"]
    assert all(c[c.index("--workers") + 1] == "3" for c in made)
    assert stand_in.timeouts[0] == pytest.approx(300 - device.PACK_SECONDS)
    evals = [c for c in stand_in.commands if c[0] == "eval"]
    assert [c[c.index("--samples") + 1] for c in evals] == ["0", "4", "4"]  # copy probe first
    assert [Path(c[c.index("--out") + 1]).name for c in evals] == [
        "eval-copy",
        "eval",
        "eval-start",
    ]
    assert evals[2][evals[2].index("--checkpoint") + 1].endswith("assets/default")

    regression, camera, diffusion = stand_in.stages()
    assert [c["stage"] for c in stand_in.stages()] == ["regression", "geometry", "diffusion"]
    assert regression["model"]["init_from"].endswith("assets/default")
    assert regression["data"]["num_targets"] == 8  # the continuation's settings
    assert regression["data"]["datasets"]["procedural"]["root"].endswith("proc64-train12")
    assert regression["train"]["batch_size"] == 32  # 8 x 4
    assert regression["train"]["lr"] == pytest.approx(2e-4 * 2)  # x sqrt(4)
    runs = tmp_path / "runs"
    assert camera["model"]["init_from"] == str(runs / run_name("regression") / "export")
    assert camera["train"]["ema_decay"] == 0.9
    assert diffusion["model"]["init_from"] == str(runs / run_name("camera") / "export")
    for config in stand_in.stages():  # fitted to the 0.5 s a step the calibration logged
        assert config["train"]["steps"] == int(0.9 * 60 * config["train"]["max_minutes"] / 0.5)
        assert config["log"]["tracker"] == "none"
        assert config["checkpoint"]["export_dtype"] == "float16"
    # Each stage's share of the training time left; these took none, so it passes on.
    training = 5 * (1 - device.RESERVE)
    limits = [c["train"]["max_minutes"] for c in stand_in.stages()]
    assert limits == pytest.approx([0.6 * training, 0.25 * training, training], rel=0.01)

    summary = _summary(tmp_path)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())  # the last pack's alone
    assert summary["bundle"]["number"] == 4  # after the data, each of 3 stages, the end
    assert files == [*(part["name"] for part in summary["bundle"]["parts"]), "summary.json"]
    assert 2 <= len(files) - 1 <= device.MAX_PARTS and summary["bundle"]["logs"] is True
    assert summary["plan"] == "continue" and summary["errors"] == []
    assert summary["stages"]["regression"]["steps_done"] == regression["train"]["steps"]
    assert summary["stages"]["regression"]["probe"][0]["probe/novel_psnr"] == 21.0
    assert summary["evaluation"]["eval"] == {"regression": {"psnr": 21.6}}
    for output in ("regression", "samples"):  # paired, per scene: +0.1 dB in all 5
        rows = summary["comparison"][output]
        assert [r["region"] for r in rows] == ["whole", "seen", "unseen"]
        assert all(r["mean"] == pytest.approx(0.1) and r["better"] == 5 for r in rows)

    assert device.unpack(tmp_path / "out", tmp_path / "back") == summary
    inner = json.loads((tmp_path / "back" / "summary.json").read_text())
    assert inner == {key: value for key, value in summary.items() if key != "bundle"}
    export = tmp_path / "back" / summary["bundle"]["export"]
    assert export == tmp_path / "back" / run_name("diffusion") / "export"
    sent = tmp_path / "runs" / run_name("diffusion") / "export" / "model.safetensors"
    assert (export / "model.safetensors").read_bytes() == sent.read_bytes()
    for name in ("eval-copy", "eval", "eval-start"):
        assert (tmp_path / "back" / name / "results.json").is_file()
    assert (tmp_path / "back" / run_name("regression") / "probe.jsonl").is_file()
    assert not (tmp_path / "back" / device.BUNDLE).exists()


def test_what_a_stage_leaves_passes_on_and_a_late_stage_is_skipped(tmp_path, fake):
    """Stages that take time: each gets its share of what is left; a share under
    MIN_STAGE_SECONDS trains nothing, and the last finished export is evaluated."""
    fake(stage_seconds=100.0)
    assert _run(tmp_path) == 0
    summary = _summary(tmp_path)
    stages = summary["stages"]
    training = 5 * 60 * (1 - device.RESERVE)  # 210 s
    assert stages["regression"]["seconds_share"] == pytest.approx(0.6 * training, abs=0.1)
    assert stages["camera"]["seconds_share"] == pytest.approx((training - 100) * 0.1 / 0.4, abs=0.1)
    assert stages["diffusion"]["skipped"] == "10 s left of the training time"
    assert summary["export"].endswith(f"{run_name('camera')}/export")
    assert summary["evaluation"]["eval-copy"] == {"regression": {"psnr": 21.6}}
    assert summary["comparison"]["regression"][0]["mean"] == pytest.approx(0.1)


def test_calibration_time_and_fixed_cost_come_off_a_stages_steps(tmp_path, fake, monkeypatch):
    fake(calibration_seconds=11.5)  # 3 timed steps of 0.5 s: 10 s fixed
    assert _run(tmp_path) == 0
    regression = _summary(tmp_path)["stages"]["regression"]
    assert regression["fixed_seconds"] == 10.0
    training = 0.6 * 5 * 60 * (1 - device.RESERVE) - 11.5 - 10.0
    assert regression["steps_planned"] == int(0.9 * training / 0.5)

    monkeypatch.setattr(device, "calibrate", lambda config, steps, seconds: None)
    assert _run(tmp_path / "again") == 0
    stages = _summary(tmp_path / "again")["stages"]
    assert stages["regression"]["skipped"] == "its share would not hold its calibration"
    assert list(stages) == ["regression"]


def test_evaluations_are_cut_short_before_the_packing(tmp_path, fake):
    """Each evaluation may run until PACK_SECONDS are left: here the stages end at 120 s
    of 300, an evaluation takes 100 s: the copy probe runs, the held-out one is cut short
    when PACK_SECONDS are left, the third finds no time."""
    import subprocess

    stand_in = fake(stage_seconds=40.0)

    def slow_eval(args, timeout=None):
        if args[0] == "eval":
            stand_in.time += min(100.0, timeout)
            if timeout < 100.0:
                raise subprocess.TimeoutExpired(args, timeout)
        FakeDevice.run_cli(stand_in, args, timeout)

    device.run_cli = slow_eval  # restored by the fixture's monkeypatch
    assert _run(tmp_path, "--reserve", "0.1") == 0
    summary = _summary(tmp_path)
    assert [summary["stages"][s]["seconds"] for s in summary["stages"]] == [40.0] * 3
    assert summary["evaluation"]["eval-copy"] == {"regression": {"psnr": 21.6}}
    cut = 300 - 220 - device.PACK_SECONDS
    assert summary["evaluation"]["eval"] == f"cut short after {cut:.0f} s"
    assert summary["evaluation"]["eval-start"] == "skipped: no time left"
    assert summary["comparison"] == {}
    assert summary["seconds"] == pytest.approx(300 - device.PACK_SECONDS)


def test_scratch_runs_every_recipe_stage(tmp_path, fake):
    stand_in = fake()
    assert _run(tmp_path, "--from", "scratch", "--reserve", "0.5") == 0
    stages = stand_in.stages()
    assert [c["run"]["name"] for c in stages] == [run_name(s) for s in STAGES]
    assert stages[0]["model"]["init_from"] is None
    assert stages[0]["train"]["max_minutes"] == pytest.approx(0.55 * 2.5, rel=0.01)
    made = [Path(c[2]).name for c in stand_in.commands if c[0] == "make-scenes"]
    assert made == ["proc64-train", "proc64-test"]


def test_a_failing_stage_still_packs_and_evaluates_what_was_made(tmp_path, fake, capsys):
    stand_in = fake(fail=run_name("diffusion"))
    assert _run(tmp_path) == 1
    summary = _summary(tmp_path)
    assert len(summary["errors"]) == 1 and "broke" in summary["errors"][0]
    assert summary["bundle"]["export"] == f"{run_name('camera')}/export"
    evaluated = [c[c.index("--checkpoint") + 1] for c in stand_in.commands if c[0] == "eval"]
    assert evaluated[0].endswith(f"{run_name('camera')}/export")
    device.unpack(tmp_path / "out", tmp_path / "back")
    assert (tmp_path / "back" / run_name("camera") / "export" / "config.json").is_file()
    assert "broke" in capsys.readouterr().err


def test_bad_settings_fail_before_any_data_or_training(tmp_path, fake, capsys):
    stand_in = fake()
    with pytest.raises(SystemExit):
        _run(tmp_path, "--set", "diffusion:train.no_such_key=1")
    assert "no_such_key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(tmp_path, "--set", "regression:run.name=mine")
    assert "the device run names its own runs" in capsys.readouterr().err
    assert stand_in.commands == [] and stand_in.runs == []


def test_a_run_starts_from_an_empty_runs_folder(tmp_path, fake, capsys):
    fake()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old.txt").write_text("an earlier run's")
    with pytest.raises(SystemExit):
        _run(tmp_path)
    assert "is not empty: a device run starts from nothing" in capsys.readouterr().err


def test_the_logs_are_left_out_before_the_tool_would_drop_parts(tmp_path, fake):
    fake(log_bytes=60_000)  # with them 14 parts of 20 kB, without 6
    assert _run(tmp_path) == 0
    summary = _summary(tmp_path)
    assert summary["bundle"]["logs"] is False
    assert len(summary["bundle"]["parts"]) <= device.MAX_PARTS
    device.unpack(tmp_path / "out", tmp_path / "back")
    assert (tmp_path / "back" / summary["bundle"]["export"] / "model.safetensors").is_file()
    assert not (tmp_path / "back" / run_name("regression") / "metrics.jsonl").exists()


# --------------------------------------------------------------------------------------
# Unpacking: what is missing, short, corrupt or unsafe is named
# --------------------------------------------------------------------------------------


@pytest.fixture
def packed(tmp_path, fake) -> Path:
    fake()
    assert _run(tmp_path) == 0
    return tmp_path / "out"


def _parts(out: Path) -> list[Path]:
    return sorted(out.glob("bundle-*.tar.*"))


def test_unpack_names_a_missing_part_and_leaves_no_partial_tar(packed, tmp_path):
    _parts(packed)[-1].unlink()
    with pytest.raises(ValueError, match=r"bundle-\d+.tar.\d\d: missing"):
        device.unpack(packed, tmp_path / "back")
    assert list((tmp_path / "back").iterdir()) == []


def test_unpack_names_a_short_part(packed, tmp_path):
    part = _parts(packed)[0]
    part.write_bytes(part.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"bundle-\d+.tar.00: 19999 bytes, expected 20000"):
        device.unpack(packed, tmp_path / "back")


def test_unpack_refuses_corrupt_parts(packed, tmp_path):
    part = _parts(packed)[0]
    data = bytearray(part.read_bytes())
    data[5000] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        device.unpack(packed, tmp_path / "back")
    assert list((tmp_path / "back").iterdir()) == []


def test_unpack_refuses_a_non_empty_folder_unless_told(packed, tmp_path):
    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="back is not empty"):
        device.unpack(packed, tmp_path / "back")
    device.unpack(packed, tmp_path / "back", overwrite=True)
    assert (tmp_path / "back" / "mine.txt").read_text() == "keep"


def _single_part_bundle(out: Path, member: str, source: Path) -> None:
    out.mkdir()
    with tarfile.open(out / f"{device.BUNDLE}.00", "w") as tar:
        tar.add(source, arcname=member)
    data = (out / f"{device.BUNDLE}.00").read_bytes()
    parts = [{"name": f"{device.BUNDLE}.00", "bytes": len(data)}]
    bundle = {"parts": parts, "sha256": hashlib.sha256(data).hexdigest()}
    (out / "summary.json").write_text(json.dumps({"bundle": bundle}))


@pytest.mark.parametrize(
    ("member", "directory", "reason"),
    [("../evil.txt", False, "outside its folder"), ("folder", True, "not a regular file")],
)
def test_unpack_refuses_unsafe_members(tmp_path, member, directory, reason):
    source = tmp_path / "source" / "evil.txt"
    source.parent.mkdir()
    source.write_text("x")
    _single_part_bundle(tmp_path / "out", member, source.parent if directory else source)
    with pytest.raises(ValueError, match=f"refusing '{member}': {reason}"):
        device.unpack(tmp_path / "out", tmp_path / "back")
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not a device run's summary (JSONDecodeError"),
        ('{"plan": "continue"}', "not a device run's summary (KeyError"),
        ('{"bundle": {"parts": [], "sha256": "0"}}', "its bundle has no parts"),
    ],
)
def test_unpack_names_a_bad_summary(tmp_path, text, message):
    (tmp_path / "summary.json").write_text(text)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        device.unpack(tmp_path, tmp_path / "back")


def test_a_run_killed_part_way_returns_its_last_pack(tmp_path, fake, capsys, monkeypatch):
    """The device tool returns $OUT as it is when it kills a command: the pack after the
    last finished stage, which unpack reads and describes as such."""
    stand_in = fake()

    def killed(config):
        if config["run"]["name"] == run_name("diffusion"):
            raise KeyboardInterrupt  # as the tool's kill: nothing after it runs
        return FakeDevice.train(stand_in, config)

    monkeypatch.setattr(device, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    assert device.main(["unpack", str(tmp_path / "out"), "--to", str(tmp_path / "back")]) == 0
    text = capsys.readouterr().out
    assert "stopped part-way, packed last after camera" in text
    assert (tmp_path / "back" / run_name("camera") / "export" / "model.safetensors").is_file()


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
# The commands for the device tool
# --------------------------------------------------------------------------------------


def test_device_commands_fit_the_tool(tmp_path):
    command = device.device_command(8, "default", 16)
    assert len(command) <= 2000  # the tool's limit on a command
    assert command.startswith("T0=$(date +%s.%N) && ")  # the clock counts the install
    assert ".whl/*.whl" in command and "--target /tmp/site" in command
    assert 'PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"' in command
    assert command.endswith(
        "run --started-at $T0 --minutes 8 --from default --scale 16 "
        '--runs "/tmp/gen-nvs-runs-$T0" --out "$OUT"'
    )  # the runs outside the repository: a carried runs-device/ export leaves them empty
    spaced = device.device_command(8, "runs-device/my export", 1)
    assert "--from 'runs-device/my export'" in spaced
    assert "wheels2/*.whl" in device.device_command(8, "default", 16, wheels="wheels2")
    bench = device.bench_command()
    assert len(bench) <= 2000 and bench.startswith(device.with_wheels(".whl"))
    assert bench.endswith('bench gpu --json > "$OUT/bench-gpu.json"')

    (tmp_path / ".git" / "info").mkdir(parents=True)
    device.exclude_from_git(tmp_path, "/.whl/")
    device.exclude_from_git(tmp_path, "/.whl/")
    assert (tmp_path / ".git" / "info" / "exclude").read_text() == "/.whl/\n"


def test_device_commands_are_valid_posix_shell():
    import subprocess

    for command in (device.device_command(8, "runs-device/my export", 16), device.bench_command()):
        assert subprocess.run(["sh", "-n", "-c", command], check=False).returncode == 0


def test_wheels_refuse_folders_that_cannot_travel(tmp_path, capsys):
    with pytest.raises(SystemExit):
        device.main(["wheels", "--dir", str(tmp_path / "wheels")])
    assert "not inside the repository" in capsys.readouterr().err


def test_the_clock_starts_at_the_commands_start(monkeypatch):
    monkeypatch.setattr(device, "now", lambda: 1060.0)
    clock = device.Clock(8, started_at=1000.0)
    assert clock.elapsed() == 60.0 and clock.left() == 420.0
    assert device.Clock(8).elapsed() == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["wheels", "--minutes", "10"], "--minutes must be at most 9.5 (one device command"),
        (["run", "--minutes", "0", "--out", "x"], "--minutes must be > 0, got 0.0"),
        (["run", "--scale", "0", "--out", "x"], "--scale must be >= 1, got 0"),
        (["run", "--from", "nowhere", "--out", "x"], "--from nowhere: no export there"),
        (["run", "--workers", "0", "--out", "x"], "--workers must be >= 1, got 0"),
        (["run", "--reserve", "1", "--out", "x"], "--reserve must be in [0, 1), got 1.0"),
        (["run", "--calibration-steps", "2", "--out", "x"], "--calibration-steps must be >= 3"),
        (["run"], "--out is required where $OUT is not set"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    with pytest.raises(SystemExit):
        device.main(argv)
    assert message in capsys.readouterr().err
