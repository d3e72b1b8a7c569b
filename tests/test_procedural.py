"""Procedural RGB-D scenes, `gen-nvs make-scenes` and `gen-nvs bench scenes`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

from gen_nvs.cli import main
from gen_nvs.data.procedural import (
    ProceduralDataset,
    SceneConfig,
    generate_scene,
    render_views,
    sample_cameras,
    sample_scene,
    scene_name,
)
from gen_nvs.data.re10k import load_scene
from gen_nvs.data.scene import SceneSample
from gen_nvs.geometry.cameras import look_at, project_points, unproject_depth
from gen_nvs.geometry.rgbd import visibility_mask

HW = (32, 40)


@pytest.fixture(scope="module")
def views():
    return generate_scene(3, 4, HW)


def test_same_seed_same_scene_different_seed_different():
    a = generate_scene(7, 3, HW)
    b = generate_scene(7, 3, HW)
    c = generate_scene(8, 3, HW)
    for field in ("images", "depth", "depth_valid", "points", "c2w", "fxfycxcy"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.c2w, c.c2w)


def test_shapes_ranges_and_finite(views):
    v, (h, w) = 4, HW
    assert views.images.shape == (v, 3, h, w)
    assert views.depth.shape == views.depth_valid.shape == (v, h, w)
    assert views.points.shape == (v, h, w, 3)
    assert views.c2w.shape == (v, 4, 4) and views.fxfycxcy.shape == (v, 4)
    assert views.images.min() >= 0 and views.images.max() <= 1
    assert views.images.std() > 0.02  # not a blank image
    assert torch.isfinite(views.depth).all() and (views.depth > 0).all()
    assert views.depth_valid.all()  # the sky is a far backdrop with a depth
    assert torch.isfinite(views.points).all()
    rotation = views.c2w[:, :3, :3]
    torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(v, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(v))


def test_cameras_are_upright_and_intrinsics_centred(views):
    # OpenCV image rows grow downwards: the camera y axis points down in the z-up world.
    assert (views.c2w[:, 2, 1] < 0).all()
    h, w = HW
    torch.testing.assert_close(views.fxfycxcy[:, 2:], torch.tensor([w / 2, h / 2]).expand(4, 2))
    assert (views.fxfycxcy[:, 0] == views.fxfycxcy[:, 1]).all()
    assert (views.depth.reshape(4, -1).max(-1).values > 5).all()  # sees into the distance


def test_point_map_matches_unprojected_depth(views):
    points = unproject_depth(views.depth, views.fxfycxcy, views.c2w)
    scale = views.depth[..., None]
    assert ((points - views.points).abs() / scale).max() < 1e-4


@pytest.mark.parametrize("rig", ["orbit", "walk"])
def test_depth_is_consistent_across_views(rig):
    """View A's surface points, seen from view B, lie on B's surface or behind it."""
    views = generate_scene(11, 2, (48, 48), SceneConfig(rig=rig))
    points = views.points[0].reshape(1, -1, 3)
    uv, z = project_points(points, views.c2w[1:], views.fxfycxcy[1:])
    uv, z = uv[0], z[0]
    inside = (z > 0) & (uv >= 0).all(-1) & (uv[:, 0] < 48) & (uv[:, 1] < 48)
    assert inside.float().mean() > 0.3
    ij = uv[inside].long()
    depth_b = views.depth[1, ij[:, 1], ij[:, 0]]
    on_surface = ((z[inside] - depth_b).abs() / depth_b) < 0.02
    assert on_surface.float().mean() > 0.5
    # Nothing lies in front of B's surface: B would have seen it. The 3x3 minimum
    # allows for the pixel that a point next to an occluding edge lands in.
    nearest_b = -F.max_pool2d(-views.depth[1][None, None], 3, stride=1, padding=1)[0, 0]
    assert (z[inside] >= 0.98 * nearest_b[ij[:, 1], ij[:, 0]]).all()


def _one_object_scene(kind: int, rotation: torch.Tensor, size: list[float]):
    """A sampled scene stripped down to the ground and one object at (0, 0, 1)."""
    config = SceneConfig(walls="none", num_objects=(1, 1))
    gen = torch.Generator().manual_seed(0)
    c2w, _ = sample_cameras(gen, config, 1, HW)
    scene = sample_scene(gen, config, c2w).to("cpu")
    size_t = torch.tensor([size])
    bound = size_t.norm(dim=-1)
    materials = {
        f: getattr(scene, f)[:2]
        for f in ("color_a", "color_b", "texture", "frequency", "texture_dir", "noise_seed")
    }
    return dataclasses.replace(
        scene,
        object_kind=torch.tensor([kind]),
        object_center=torch.tensor([[0.0, 0.0, 1.0]]),
        object_rotation=rotation[None],
        object_size=size_t,
        object_bound=bound,
        texture_origin=scene.texture_origin[:2],
        texture_rotation=scene.texture_rotation[:2],
        **materials,
    )


_QUARTER_TURN_Z = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
_EIGHTH_TURN_Z = torch.tensor(
    [[0.5**0.5, -(0.5**0.5), 0.0], [0.5**0.5, 0.5**0.5, 0.0], [0.0, 0.0, 1.0]]
)
_AXIS_TO_Y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # local z -> +y


@pytest.mark.parametrize(
    ("kind", "rotation", "size", "depth"),
    [
        (0, torch.eye(3), [0.7, 0.7, 0.7], 4.0 - 0.7),  # sphere
        (1, _QUARTER_TURN_Z, [0.3, 0.6, 0.2], 4.0 - 0.3),  # box: local x faces the camera
        (1, _EIGHTH_TURN_Z, [0.5, 0.5, 0.5], 4.0 - 0.5 * 2**0.5),  # box edge first
        (2, torch.eye(3), [0.4, 0.4, 0.8], 4.0 - 0.4),  # upright cylinder: side
        (2, _AXIS_TO_Y, [0.4, 0.4, 0.3], 4.0 - 0.3),  # cylinder facing us: cap
    ],
)
def test_primitives_are_hit_at_the_right_depth(kind, rotation, size, depth):
    scene = _one_object_scene(kind, rotation, size)
    c2w = look_at(
        torch.tensor([0.0, -4.0, 1.0]), torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0])
    )
    fxfycxcy = torch.tensor([[30.0, 30.0, 16.5, 16.5]])  # pixel (16, 16) looks dead ahead
    _, rendered_depth, _, points = render_views(scene, c2w[None], fxfycxcy, (33, 33))
    assert rendered_depth[0, 16, 16].item() == pytest.approx(depth, abs=1e-4)
    assert points[0, 16, 16].tolist() == pytest.approx([0.0, depth - 4.0, 1.0], abs=1e-4)
    assert rendered_depth[0, 0, 16] > 6  # the top row sees past the object


def test_shadows_only_darken():
    config = SceneConfig(walls="none", num_objects=(4, 4))
    gen = torch.Generator().manual_seed(5)
    c2w, fxfycxcy = sample_cameras(gen, config, 2, HW)
    scene = sample_scene(gen, config, c2w).to("cpu")
    # A sun straight above: objects shade the ground under them.
    scene = dataclasses.replace(scene, light_dir=torch.tensor([0.0, 0.0, 1.0]))
    lit, *_ = render_views(scene, c2w, fxfycxcy, HW, shadows=False)
    shaded, *_ = render_views(scene, c2w, fxfycxcy, HW, shadows=True)
    assert (shaded <= lit + 1e-6).all()
    assert (shaded < lit - 0.05).any()


def test_sky_depth_can_be_marked_invalid():
    config = SceneConfig(sky_depth_valid=False, walls="none")
    views = generate_scene(2, 2, HW, config)
    radius = views.points.norm(dim=-1) / config.sky_radius  # 1 on the sky sphere
    invalid = ~views.depth_valid
    assert invalid.any()
    assert ((radius[invalid] - 1).abs() < 1e-3).all()
    assert views.depth_valid[radius < 0.99].all()


def test_config_validation():
    with pytest.raises(ValueError, match="rig"):
        SceneConfig(rig="helicopter")
    with pytest.raises(ValueError, match="num_objects"):
        SceneConfig(num_objects=(5, 2))
    with pytest.raises(ValueError, match="textures"):
        SceneConfig(textures=())
    with pytest.raises(ValueError, match="num_views"):
        generate_scene(0, 0, HW)


def test_dataset_items_are_samples_with_sources_first():
    dataset = ProceduralDataset(3, num_sources=2, num_targets=3, image_hw=HW, seed=40)
    sample = dataset[1]
    assert isinstance(sample, SceneSample)
    assert sample.num_views == 5 and sample.num_sources == 2
    assert sample.scene == scene_name(41)
    assert sample.depth is not None and sample.depth_valid.all()
    order = sample.frame_indices.tolist()
    assert sorted(order) == list(range(5))
    rendered = generate_scene(41, 5, HW)
    assert torch.equal(sample.images, rendered.images[order])
    assert torch.equal(dataset[1].c2w, sample.c2w)
    with pytest.raises(IndexError):
        dataset[3]


def test_default_rig_leaves_part_of_the_targets_unseen():
    dataset = ProceduralDataset(6, num_sources=2, num_targets=2, image_hw=(24, 24), seed=100)
    fractions = []
    for sample in dataset:
        for t in range(2, 4):
            seen = visibility_mask(
                sample.c2w[t],
                sample.fxfycxcy[t],
                sample.depth[t],
                sample.c2w[:2],
                sample.fxfycxcy[:2],
                sample.depth[:2],
            )
            fractions.append(1 - seen.float().mean().item())
    median = torch.tensor(fractions).median().item()
    assert 0.02 < median < 0.6


@pytest.mark.gpu
def test_cuda_matches_cpu():
    cpu = generate_scene(4, 2, HW)
    cuda = generate_scene(4, 2, HW, device="cuda")
    torch.testing.assert_close(cuda.c2w.cpu(), cpu.c2w)
    torch.testing.assert_close(cuda.depth.cpu(), cpu.depth, rtol=1e-3, atol=1e-3)
    # Rounding may flip a few pixels at edges and texture cell boundaries.
    assert ((cuda.images.cpu() - cpu.images).abs() > 0.05).float().mean() < 0.01


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


def _folder_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _make_scenes(out, *extra) -> int:
    argv = ["make-scenes", "--out", str(out), "--scenes", "2", "--views", "3"]
    return main([*argv, "--size", "32", "32", "--seed", "5", *extra])


def test_make_scenes_writes_a_readable_dataset(tmp_path):
    assert _make_scenes(tmp_path / "a") == 0
    root = tmp_path / "a"
    assert (root / "full_list.txt").read_text().splitlines() == [
        f"metadata/{scene_name(5)}.json",
        f"metadata/{scene_name(6)}.json",
    ]
    assert len(list((root / "images" / scene_name(6)).glob("*.png"))) == 3
    assert len(list((root / "depths" / scene_name(6)).glob("*.png"))) == 3

    sample = load_scene(root, scene_name(6), [0, 1, 2], image_hw=None)
    rendered = generate_scene(6, 3, (32, 32))
    assert (sample.images - rendered.images).abs().max() <= 0.5 / 255 + 1e-6
    torch.testing.assert_close(sample.c2w, rendered.c2w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sample.fxfycxcy, rendered.fxfycxcy)
    relative = (sample.depth - rendered.depth).abs() / rendered.depth
    assert relative.max() < 0.01


def test_make_scenes_is_byte_deterministic(tmp_path):
    assert _make_scenes(tmp_path / "a") == 0
    assert _make_scenes(tmp_path / "b") == 0
    assert _folder_digest(tmp_path / "a") == _folder_digest(tmp_path / "b")


def test_make_scenes_workers_write_the_same_bytes_as_one_thread(tmp_path):
    """`--workers N` renders each scene in its own process on one thread: the same files
    as one process on one thread, full_list.txt included."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _make_scenes(tmp_path / "one", "--scenes", "5") == 0
    finally:
        torch.set_num_threads(threads)
    assert _make_scenes(tmp_path / "two", "--scenes", "5", "--workers", "2") == 0
    assert len(list((tmp_path / "two" / "metadata").glob("*.json"))) == 5
    assert _folder_digest(tmp_path / "one") == _folder_digest(tmp_path / "two")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--workers", "2", "--device", "cuda"], "--workers 2 renders on CPU processes"),
    ],
)
def test_make_scenes_bad_workers(tmp_path, capsys, monkeypatch, extra, message):
    import gen_nvs.commands.make_scenes as make_scenes

    monkeypatch.setattr(make_scenes, "resolve_device", torch.device)  # cuda without a GPU
    assert _make_scenes(tmp_path / "out", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_make_scenes_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert _make_scenes(tmp_path) == 2
    assert "not empty" in capsys.readouterr().err
    assert _make_scenes(tmp_path, "--overwrite") == 0


def test_bench_scenes_prints_json(capsys):
    argv = ["bench", "scenes", "--size", "16", "16", "--views", "2", "--seconds", "0"]
    assert main([*argv, "--target-views", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bench"] == "scenes"
    assert result["render"]["views_per_second"] > 0
    unseen = result["unseen_fraction"]
    assert unseen["count"] == 3
    assert (
        0
        <= unseen["min"]
        <= unseen["q25"]
        <= unseen["median"]
        <= unseen["q75"]
        <= unseen["max"]
        <= 1
    )


def _turns(c2w: torch.Tensor) -> float:
    """The signed angle an orbit's viewing directions sweep around the vertical axis from
    the first camera to the last (positive: counter-clockwise seen from above; cameras
    looking at the centre turn as they go round it)."""
    forward = c2w[:, :2, 2]
    angle = torch.atan2(forward[:, 1], forward[:, 0])
    step = torch.remainder(angle.diff() + math.pi, 2 * math.pi) - math.pi
    return float(step.sum())


def test_orbits_turn_one_way_by_default_and_both_ways_when_asked():
    from gen_nvs.data.procedural.cameras import orbit_rig

    def sweeps(config):
        return [
            _turns(orbit_rig(torch.Generator().manual_seed(seed), config, 6)) for seed in range(40)
        ]

    one_way = sweeps(SceneConfig())
    assert all(turn > 0 for turn in one_way)
    both = sweeps(SceneConfig(orbit_direction="both"))
    assert 8 < sum(turn < 0 for turn in both) < 32
    with pytest.raises(ValueError, match="orbit_direction"):
        SceneConfig(orbit_direction="cw")


def test_make_scenes_draws_orbits_both_ways_when_asked(tmp_path):
    out = tmp_path / "both"
    assert _make_scenes(out, "--rig", "orbit", "--orbit-direction", "both") == 0
    config = SceneConfig(rig="orbit", orbit_direction="both")
    for seed in (5, 6):
        stored = load_scene(out, scene_name(seed), [0, 1, 2], image_hw=None)
        drawn = generate_scene(seed, 3, (32, 32), config)
        torch.testing.assert_close(stored.c2w, drawn.c2w, rtol=1e-5, atol=1e-5)
