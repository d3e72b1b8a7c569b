"""RGB-D geometry: depth <-> points, cross-view visibility, fusion and PLY files."""

from __future__ import annotations

import math

import pytest
import torch

from gen_nvs.geometry.cameras import look_at
from gen_nvs.geometry.rgbd import (
    depth_to_points,
    fuse_point_clouds,
    points_to_depth,
    read_ply,
    unseen_mask,
    visibility_mask,
    write_ply,
)

H = W = 48
FOCAL = 40.0
K = torch.tensor([FOCAL, FOCAL, W / 2, H / 2])


def _pose(x: float = 0.0) -> torch.Tensor:
    """A camera at (x, 0, 0) looking along +z (identity rotation)."""
    c2w = torch.eye(4)
    c2w[0, 3] = x
    return c2w


def _wall_and_card_depth(camera_x: float, card_half: float = 0.5) -> torch.Tensor:
    """Depth [H, W] of an identity-rotation camera at (camera_x, 0, 0) seeing a wall
    z = 5 and, in front of it, a square card |x|, |y| <= card_half at z = 2."""
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    x_at_card = camera_x + 2.0 * (u - W / 2) / FOCAL
    y_at_card = 2.0 * (v - H / 2) / FOCAL
    on_card = (x_at_card.abs() <= card_half) & (y_at_card.abs() <= card_half)
    return torch.where(on_card, 2.0, 5.0)


# --------------------------------------------------------------------------------------
# Depth <-> points
# --------------------------------------------------------------------------------------


def test_depth_points_round_trip_world_and_camera():
    gen = torch.Generator().manual_seed(0)
    depth = 1 + 4 * torch.rand(2, H, W, generator=gen)
    eye = torch.tensor([[1.0, 2.0, -3.0], [0.5, -1.0, 2.0]])
    c2w = look_at(eye, torch.zeros(2, 3))
    fxfycxcy = K.expand(2, 4)

    world = depth_to_points(depth, fxfycxcy, c2w)
    camera = depth_to_points(depth, fxfycxcy)
    assert world.shape == (2, H, W, 3)
    torch.testing.assert_close(points_to_depth(world, c2w), depth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(points_to_depth(camera), depth)
    # The world points are the camera points moved by the pose.
    moved = camera @ c2w[:, None, :3, :3].transpose(-1, -2) + c2w[:, None, None, :3, 3]
    torch.testing.assert_close(world, moved, rtol=1e-5, atol=1e-5)


def test_depth_to_points_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="fxfycxcy"):
        depth_to_points(torch.ones(2, H, W), K)
    with pytest.raises(ValueError, match="points"):
        points_to_depth(torch.ones(H, W, 2))


# --------------------------------------------------------------------------------------
# Visibility
# --------------------------------------------------------------------------------------


def test_target_equal_to_source_is_fully_visible():
    depth = _wall_and_card_depth(0.0)
    seen = visibility_mask(_pose(), K, depth, _pose()[None], K[None], depth[None])
    assert seen.dtype == torch.bool and seen.shape == (H, W)
    assert seen.all()
    assert not unseen_mask(_pose(), K, depth, _pose()[None], K[None], depth[None]).any()


def test_wall_hidden_behind_card_is_unseen():
    source_depth = _wall_and_card_depth(0.0)
    target_x = 1.0
    target_depth = _wall_and_card_depth(target_x)
    unseen = unseen_mask(
        _pose(target_x), K, target_depth, _pose()[None], K[None], source_depth[None]
    )

    # Expected: wall points whose line of sight to the source crosses the card
    # (|X|, |Y| <= 0.5 * 5 / 2 on the wall), and wall points outside the source image.
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    wall_x = target_x + 5.0 * (u - W / 2) / FOCAL
    wall_y = 5.0 * (v - H / 2) / FOCAL
    on_wall = target_depth == 5.0
    behind_card = on_wall & (wall_x.abs() <= 1.25) & (wall_y.abs() <= 1.25)
    outside_source = on_wall & (wall_x.abs() > 5.0 * (W / 2) / FOCAL)
    expected = behind_card | outside_source

    assert behind_card.sum() > 30  # the test sees a real occluded region
    assert unseen[behind_card].float().mean() > 0.85  # all but a one-pixel band
    assert not unseen[~expected].any()  # nothing the source saw is reported unseen
    assert not unseen[~on_wall].any()  # the card itself was seen


def test_second_source_reveals_the_occluded_wall():
    target_depth = _wall_and_card_depth(1.0)
    sources = torch.stack([_pose(0.0), _pose(1.0)])
    source_depth = torch.stack([_wall_and_card_depth(0.0), _wall_and_card_depth(1.0)])
    seen = visibility_mask(_pose(1.0), K, target_depth, sources, K.expand(2, 4), source_depth)
    assert seen.all()


def test_depth_tolerance_and_invalid_target_pixels():
    wall = torch.full((H, W), 5.0)
    too_far = torch.full((H, W), 5.0 * 1.05)
    assert not visibility_mask(_pose(), K, too_far, _pose()[None], K[None], wall[None]).any()
    assert visibility_mask(
        _pose(), K, too_far, _pose()[None], K[None], wall[None], rel_tol=0.06
    ).all()
    holes = wall.clone()
    holes[:4] = float("nan")
    holes[-4:] = 0.0
    seen = visibility_mask(_pose(), K, holes, _pose()[None], K[None], wall[None])
    assert not seen[:4].any() and not seen[-4:].any() and seen[4:-4].all()


def test_visibility_mask_validates_inputs():
    depth = torch.ones(H, W)
    with pytest.raises(ValueError, match="source_c2w"):
        visibility_mask(_pose(), K, depth, _pose(), K[None], depth[None])
    with pytest.raises(ValueError, match="non-finite"):
        bad = _pose()
        bad[0, 3] = math.inf
        visibility_mask(bad, K, depth, _pose()[None], K[None], depth[None])
    with pytest.raises(ValueError, match="rel_tol"):
        visibility_mask(_pose(), K, depth, _pose()[None], K[None], depth[None], rel_tol=-1)


# --------------------------------------------------------------------------------------
# Fusion
# --------------------------------------------------------------------------------------


def _cloud(v: int = 2, h: int = 4, w: int = 5):
    gen = torch.Generator().manual_seed(1)
    points = torch.randn(v, h, w, 3, generator=gen)
    colors = torch.rand(v, h, w, 3, generator=gen)
    confidence = torch.arange(v * h * w, dtype=torch.float32).reshape(v, h, w)
    return points, colors, confidence


def test_fusion_confidence_threshold_and_quantile():
    points, colors, confidence = _cloud()
    xyz, rgb = fuse_point_clouds(points, colors)
    assert xyz.shape == rgb.shape == (40, 3)

    xyz, rgb = fuse_point_clouds(points, colors, confidence, conf_threshold=30)
    keep = confidence >= 30
    torch.testing.assert_close(xyz, points[keep])
    torch.testing.assert_close(rgb, colors[keep])

    xyz, _ = fuse_point_clouds(points, colors, confidence, conf_quantile=0.75)
    assert xyz.shape[0] == 10  # the top quarter of 40 distinct confidences
    torch.testing.assert_close(xyz, points[confidence >= 29.25])


def test_fusion_drops_invalid_and_non_finite_points():
    points, colors, confidence = _cloud()
    points[0, 0, 0, 1] = float("nan")
    valid = torch.ones(points.shape[:3], dtype=torch.bool)
    valid[1] = False
    xyz, _ = fuse_point_clouds(points, colors, confidence, valid=valid)
    assert xyz.shape[0] == 19
    assert torch.isfinite(xyz).all()


def test_fusion_voxels_and_max_points():
    points = torch.tensor([[0.01, 0.01, 0.01], [0.03, 0.02, 0.04], [1.5, 1.5, 1.5]])
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    xyz, rgb = fuse_point_clouds(points.view(1, 1, 3, 3), colors.view(1, 1, 3, 3), voxel_size=0.1)
    assert xyz.shape == (2, 3)
    first = xyz[:, 0].argmin()
    torch.testing.assert_close(xyz[first], points[:2].mean(0))
    torch.testing.assert_close(rgb[first], torch.tensor([0.5, 0.0, 0.5]))

    many, many_colors, _ = _cloud(v=3, h=10, w=10)
    a, _ = fuse_point_clouds(many, many_colors, max_points=50)
    b, _ = fuse_point_clouds(many, many_colors, max_points=50)
    assert a.shape == (50, 3)
    torch.testing.assert_close(a, b)  # reproducible without a generator


def test_fusion_validates_inputs():
    points, colors, confidence = _cloud()
    with pytest.raises(ValueError, match="colors"):
        fuse_point_clouds(points, colors[..., :2])
    with pytest.raises(ValueError, match="confidence map"):
        fuse_point_clouds(points, colors, conf_threshold=1.0)
    with pytest.raises(ValueError, match="conf_quantile"):
        fuse_point_clouds(points, colors, confidence, conf_quantile=1.5)


# --------------------------------------------------------------------------------------
# PLY
# --------------------------------------------------------------------------------------


def test_ply_round_trip_and_header(tmp_path):
    gen = torch.Generator().manual_seed(2)
    xyz = torch.randn(100, 3, generator=gen)
    rgb = torch.rand(100, 3, generator=gen)
    path = write_ply(tmp_path / "cloud.ply", xyz, rgb)

    raw = path.read_bytes()
    header, _, body = raw.partition(b"end_header\n")
    lines = header.decode("ascii").splitlines()
    assert lines[0] == "ply"
    assert lines[1] == "format binary_little_endian 1.0"
    assert "element vertex 100" in lines
    properties = [line for line in lines if line.startswith("property")]
    assert properties == [
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
    ]
    assert len(body) == 100 * (3 * 4 + 3)

    xyz_back, rgb_back, normals = read_ply(path)
    torch.testing.assert_close(xyz_back, xyz)
    assert rgb_back.dtype == torch.uint8
    torch.testing.assert_close(rgb_back, (rgb * 255).round().to(torch.uint8))
    assert normals is None


def test_ply_with_normals_and_uint8_colors(tmp_path):
    xyz = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    rgb = torch.tensor([[0, 128, 255], [1, 2, 3]], dtype=torch.uint8)
    normals = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    path = write_ply(tmp_path / "sub" / "n.ply", xyz, rgb, normals)
    xyz_back, rgb_back, normals_back = read_ply(path)
    torch.testing.assert_close(xyz_back, xyz)
    assert torch.equal(rgb_back, rgb)
    torch.testing.assert_close(normals_back, normals)


def test_ply_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="rgb"):
        write_ply(tmp_path / "a.ply", torch.zeros(3, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="non-finite"):
        write_ply(tmp_path / "a.ply", torch.full((1, 3), math.nan), torch.zeros(1, 3))
    (tmp_path / "text.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    with pytest.raises(ValueError, match="binary_little_endian"):
        read_ply(tmp_path / "text.ply")
