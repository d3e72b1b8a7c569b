"""`python -m gen_nvs.eval.compare`: the paired per-scene comparison of two evaluations."""

import json

import pytest

from gen_nvs.eval.compare import compare, load_scene_means, main


def _results(path, psnrs, unseen=None):
    """A results.json as `gen-nvs eval --samples 0` writes it, one scene per PSNR (the seen
    region 1 dB above the whole; the unseen region `unseen[i]`, None: empty)."""
    unseen = unseen or [p - 2 for p in psnrs]
    scenes = [
        {
            "scene": f"scene_{i:02d}",
            "means": {
                "regression": {
                    "psnr": p,
                    "ssim": p / 100,
                    "seen": {"psnr": p + 1, "ssim": p / 100},
                    "unseen": None if u is None else {"psnr": u, "ssim": u / 100},
                },
                "diffusion": None,
            },
        }
        for i, (p, u) in enumerate(zip(psnrs, unseen, strict=True))
    ]
    path.write_text(json.dumps({"scenes": scenes, "means": {}}))
    return path


def test_compare_pairs_the_scenes_and_brackets_the_mean(tmp_path):
    base = [20.0, 21.0, 22.0, 23.0, 24.0, 25.0]
    gains = [0.3, -0.1, 0.2, 0.4, 0.1, 0.3]
    a = load_scene_means(_results(tmp_path / "a.json", base))
    b = load_scene_means(
        _results(tmp_path / "b.json", [x + g for x, g in zip(base, gains, strict=True)])
    )
    rows = {row.region: row for row in compare(a, b, resamples=500, seed=1)}
    mean = sum(gains) / len(gains)
    for region in ("whole", "seen", "unseen"):
        row = rows[region]
        assert row.scenes == 6 and row.better == 5
        assert row.mean == pytest.approx(mean)
        assert min(gains) <= row.low < row.mean < row.high <= max(gains)
    ssim = {row.region: row for row in compare(a, b, metric="ssim", resamples=10)}
    assert ssim["whole"].mean == pytest.approx(mean / 100)
    # Seeded: the same interval again; reversed: the negated difference.
    assert compare(a, b, resamples=500, seed=1)[0] == rows["whole"]
    assert compare(b, a, resamples=10)[0].mean == pytest.approx(-mean)


def test_compare_leaves_out_empty_regions(tmp_path):
    a = load_scene_means(_results(tmp_path / "a.json", [20.0, 21.0, 22.0], [18.0, None, 19.0]))
    b = load_scene_means(_results(tmp_path / "b.json", [20.5, 21.5, 22.5], [18.2, 17.0, None]))
    unseen = compare(a, b, resamples=10)[2]
    assert unseen.region == "unseen" and unseen.scenes == 1
    assert unseen.mean == pytest.approx(0.2) and unseen.better == 1


def test_compare_names_bad_inputs(tmp_path, capsys):
    a = load_scene_means(_results(tmp_path / "a.json", [20.0, 21.0]))
    other = load_scene_means(_results(tmp_path / "c.json", [20.0, 21.0, 22.0]))
    with pytest.raises(ValueError, match="same scenes.*only in the second \\['scene_02'\\]"):
        compare(a, other)
    with pytest.raises(ValueError, match="no scene has a samples psnr.*--samples 0"):
        compare(a, a, output="samples")
    with pytest.raises(ValueError, match="output must be one of"):
        compare(a, a, output="decoder")
    with pytest.raises(ValueError, match="no such file"):
        load_scene_means(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a readable results.json"):
        load_scene_means(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps({"means": {}}))
    with pytest.raises(ValueError, match="no 'scenes' list"):
        load_scene_means(tmp_path / "list.json")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a.json"), str(tmp_path / "missing.json")])
    assert exit_info.value.code == 2
    assert "missing.json: no such file" in capsys.readouterr().err


def test_compare_command_prints_every_region(tmp_path, capsys):
    a = _results(tmp_path / "a.json", [20.0, 21.0, 22.0])
    b = _results(tmp_path / "b.json", [20.5, 21.5, 21.0])
    assert main([str(a), str(b), "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert "regression psnr" in out
    for region in ("whole", "seen", "unseen"):
        assert f"  {region}" in out
    assert "better in 2 of 3 scenes" in out
