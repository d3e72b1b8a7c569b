"""`python -m gen_nvs.eval.breakdown`: evaluation results grouped by view change."""

import json

import pytest

from gen_nvs.eval.breakdown import breakdown, main, target_entries


def _target(parallax, psnr, unseen_psnr=None, samples=True):
    """A target entry as `gen-nvs eval` writes it: the seen region 1 dB above the whole,
    the unseen region `unseen_psnr` (None: empty), samples 0.5 dB below the render."""
    regression = {
        "psnr": psnr,
        "ssim": psnr / 100,
        "seen": {"psnr": psnr + 1, "ssim": psnr / 100},
        "unseen": None if unseen_psnr is None else {"psnr": unseen_psnr, "ssim": 0.5},
    }
    entry = {
        "frame": 1,
        "view_change": {
            "baseline": 2 * (parallax or 0),
            "rotation_deg": 10.0,
            "parallax": parallax,
        },
        "unseen_fraction": 0.0 if unseen_psnr is None else 0.2,
        "regression": regression,
    }
    if samples:
        entry["diffusion"] = {
            "mean": {**regression, "psnr": psnr - 0.5},
            "best_of_n": regression,
        }
    return entry


def _results(path, targets, per_scene=2):
    scenes = [
        {"scene": f"scene_{i}", "means": {}, "targets": targets[i : i + per_scene]}
        for i in range(0, len(targets), per_scene)
    ]
    path.write_text(json.dumps({"scenes": scenes, "means": {}}))
    return path


def test_groups_of_equal_size_from_the_smallest_view_change():
    # Parallax and PSNR fall together; the order of the entries does not matter.
    targets = [_target(p, 30 - 10 * p, unseen_psnr=20.0) for p in (0.8, 0.1, 0.4, 0.2, 0.6, 0.3)]
    groups, missing = breakdown(targets, by="parallax", bins=3)
    assert missing == 0
    assert [(g.low, g.high, g.targets) for g in groups] == [
        (0.1, 0.2, 2),
        (0.3, 0.4, 2),
        (0.6, 0.8, 2),
    ]
    assert groups[0].means["regression/whole"] == pytest.approx(28.5)
    assert groups[2].means["regression/seen"] == pytest.approx(24.0)
    assert groups[1].means["samples/whole"] == pytest.approx(26.0)
    assert groups[1].means["best/unseen"] == pytest.approx(20.0)
    assert all(g.unseen_fraction == pytest.approx(0.2) for g in groups)
    # By another measure: baseline is twice the parallax here, the same groups.
    by_baseline, _ = breakdown(targets, by="baseline", bins=3)
    assert [g.targets for g in by_baseline] == [2, 2, 2]
    assert by_baseline[2].means == groups[2].means
    ssim, _ = breakdown(targets, by="parallax", bins=1, metric="ssim")
    assert ssim[0].means["regression/whole"] == pytest.approx(
        sum(30 - 10 * p for p in (0.8, 0.1, 0.4, 0.2, 0.6, 0.3)) / 600
    )


def test_empty_regions_and_targets_without_a_measure_are_left_out():
    targets = [_target(0.1, 25.0), _target(0.2, 24.0, unseen_psnr=18.0), _target(None, 10.0)]
    groups, missing = breakdown(targets, by="parallax", bins=1)
    assert missing == 1 and groups[0].targets == 2
    assert groups[0].means["regression/whole"] == pytest.approx(24.5)
    assert groups[0].means["regression/unseen"] == pytest.approx(18.0)  # one target has one
    no_samples = [_target(0.1, 25.0, samples=False)]
    assert breakdown(no_samples, bins=1)[0][0].means["samples/whole"] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"by": "depth"}, "by must be one of parallax, baseline, rotation_deg"),
        ({"metric": "lpips"}, "metric must be one of psnr, ssim"),
        ({"bins": 0}, "bins must be >= 1"),
        ({"bins": 3}, "3 bins for 2 targets with a parallax"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    targets = [_target(0.1, 25.0), _target(0.2, 24.0)]
    with pytest.raises(ValueError, match=message):
        breakdown(targets, **kwargs)


def test_no_depth_means_no_parallax_and_a_hint():
    targets = [_target(None, 25.0), _target(None, 24.0)]
    with pytest.raises(ValueError, match="no target has a parallax .*no depth.*baseline"):
        breakdown(targets)
    assert breakdown(targets, by="rotation_deg", bins=1)[0][0].targets == 2


def test_results_without_view_change_name_the_entry(tmp_path):
    old = _target(0.1, 25.0)
    del old["view_change"]
    results = json.loads(_results(tmp_path / "r.json", [_target(0.2, 24.0), old]).read_text())
    with pytest.raises(ValueError, match=r"scenes\[0\]\.targets\[1\] has no 'view_change'"):
        target_entries(results, "r.json")


def test_command_prints_a_table_and_json(tmp_path, capsys):
    targets = [_target(p, 30 - 10 * p, unseen_psnr=20.0) for p in (0.1, 0.2, 0.3, 0.4)]
    path = _results(tmp_path / "results.json", [*targets, _target(None, 5.0)], per_scene=3)
    assert main([str(path), "--bins", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| parallax | targets | unseen fraction | regression/whole psnr |" in printed
    assert "| 0.1 - 0.2 | 2 | 0.200 | 28.50 | 29.50 | 20.00 | 28.00 | 20.00 | 20.00 |" in printed
    assert "(1 targets without a parallax left out)" in printed
    assert main([str(path), "--bins", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["left_out"] == 1 and [g["targets"] for g in data["groups"]] == [2, 2]
    assert data["groups"][1]["means"]["regression/whole"] == pytest.approx(26.5)


def test_command_names_bad_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.json")])
    assert "missing.json: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scenes": [{"scene": "a"}]}))
    with pytest.raises(SystemExit):
        main([str(bad)])
    assert "scenes[0] has no 'targets' list" in capsys.readouterr().err
