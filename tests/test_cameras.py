"""Camera geometry against the official fixtures, and its own invariants."""

from __future__ import annotations

import math

import pytest
import torch

from gen_nvs.geometry import cameras as C
from gen_nvs.geometry import trajectories as T

TOL = 1e-5


def random_c2w(n: int, generator: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, :3, :3] = C.quaternion_to_matrix(q)
    c2w[:, :3, 3] = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return c2w


def test_fixture_scene_normalisation(fixture):
    meta, t = fixture
    c2w, scale = C.normalize_scene(t["io.c2w_raw"], meta["num_source_views"])
    assert (c2w - t["io.c2w_normalized"]).abs().max() < TOL
    assert (scale - t["io.camera_scale"]).abs() < TOL


def test_fixture_camera_tokens_from_raw_cameras(fixture):
    meta, t = fixture
    s, hw = meta["num_source_views"], tuple(meta["image_hw"])
    c2w, scale = C.normalize_scene(t["io.c2w_raw"], s)
    tokens = C.camera_tokens(c2w, t["io.fxfycxcy"], hw, s, scale, posed=meta["posed"])
    assert tokens.shape == (c2w.shape[0], C.CAMERA_TOKEN_DIM)
    assert (tokens - t["io.camera_tokens"]).abs().max() < TOL


def test_fixture_plucker_rays(fixture):
    meta, t = fixture
    s, (h, w) = meta["num_source_views"], meta["image_hw"]
    c2w, _ = C.normalize_scene(t["io.c2w_raw"], s)
    rays = C.plucker_rays(c2w, t["io.fxfycxcy"], h, w)
    if not meta["posed"]:
        rays[:s] = 0.0  # pose-free: source ray maps carry no information
    assert rays.shape == t["io.plucker_rays"].shape
    assert (rays - t["io.plucker_rays"]).abs().max() < TOL


def test_single_source_token_pair_and_scale():
    g = torch.Generator().manual_seed(0)
    c2w = random_c2w(3, g).float()
    k = torch.tensor([[50.0, 50.0, 32.0, 32.0]]).repeat(3, 1)
    norm, scale = C.normalize_scene(c2w, 1)
    assert scale == pytest.approx(0.0, abs=1e-6)  # the only source is the origin
    assert torch.allclose(norm[0], torch.eye(4), atol=1e-5)
    test_tokens = C.camera_tokens(norm, k, (64, 64), 1, scale)
    assert torch.equal(test_tokens[:, 9:], torch.tensor([[0.0, 1.0]]).repeat(3, 1))
    train_tokens = C.camera_tokens(norm, k, (64, 64), 1, scale, training=True)
    assert torch.allclose(train_tokens[:, 9:], torch.zeros(3, 2), atol=1e-6)


def test_normalisation_max_source_distance():
    g = torch.Generator().manual_seed(1)
    c2w = random_c2w(5, g)
    norm, scale = C.normalize_scene(c2w, 3)
    dists = norm[:3, :3, 3].norm(dim=-1)
    assert dists.max().item() == pytest.approx(1 / 1.35, rel=1e-9)
    assert scale.item() == pytest.approx(1 / 1.35, rel=1e-9)


def test_pose_encoding_round_trip():
    g = torch.Generator().manual_seed(2)
    c2w = random_c2w(16, g)
    k = torch.tensor([60.0, 70.0, 40.0, 24.0], dtype=torch.float64).repeat(16, 1)
    enc = C.pose_encoding(c2w, k, (48, 80))
    assert (enc[:, 6] >= 0).all()  # real part made non-negative
    back, k_back = C.pose_encoding_to_camera(enc, (48, 80))
    assert torch.allclose(back, c2w, atol=1e-9)
    assert torch.allclose(k_back[:, :2], k[:, :2], atol=1e-9)
    assert torch.allclose(k_back[:, 2:], torch.tensor([40.0, 24.0], dtype=torch.float64))


def test_quaternion_handles_large_rotations():
    angles = torch.tensor([0.0, math.pi / 2, math.pi - 1e-7, math.pi], dtype=torch.float64)
    for axis in torch.eye(3, dtype=torch.float64):
        q = torch.cat([axis * torch.sin(angles / 2)[:, None], torch.cos(angles / 2)[:, None]], -1)
        R = C.quaternion_to_matrix(q)
        R_back = C.quaternion_to_matrix(C.matrix_to_quaternion(R))
        assert torch.allclose(R_back, R, atol=1e-7)


def test_invert_rigid_is_inverse():
    c2w = random_c2w(8, torch.Generator().manual_seed(3))
    assert torch.allclose(C.invert_rigid(c2w) @ c2w, torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_intrinsics_K_round_trip():
    k = torch.tensor([[10.0, 20.0, 3.0, 4.0]])
    K = C.fxfycxcy_to_K(k)
    assert torch.equal(K[0], torch.tensor([[10.0, 0, 3], [0, 20.0, 4], [0, 0, 1]]))
    assert torch.equal(C.K_to_fxfycxcy(K), k)


def test_crop_resize_intrinsics_keeps_projection():
    # A 3D point projects to pixel p in the original; after crop + resize it must
    # land at (p - crop offset) * scale.
    k = torch.tensor([[100.0, 110.0, 81.0, 47.0]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64)[None]
    point = torch.tensor([[[0.3, -0.2, 2.0]]], dtype=torch.float64)
    uv, _ = C.project_points(point, c2w, k)
    in_hw, out_hw = (90, 160), (64, 64)
    top, left, ch, cw = C.center_crop_box(in_hw, out_hw)
    assert (top, left, ch, cw) == (0, 35, 90, 90)
    k2 = C.crop_resize_intrinsics(k, in_hw, out_hw)
    uv2, _ = C.project_points(point, c2w, k2)
    expected = (uv - torch.tensor([left, top], dtype=torch.float64)) * (64 / 90)
    assert torch.allclose(uv2, expected, atol=1e-9)


def test_unproject_project_round_trip():
    g = torch.Generator().manual_seed(4)
    c2w = random_c2w(2, g)
    k = torch.tensor([[30.0, 30.0, 16.0, 12.0]], dtype=torch.float64).repeat(2, 1)
    depth = 1 + torch.rand(2, 24, 32, generator=g, dtype=torch.float64)
    pts = C.unproject_depth(depth, k, c2w)  # (2, 24, 32, 3)
    uv, z = C.project_points(pts.flatten(1, 2), c2w, k)
    assert torch.allclose(z, depth.flatten(1), atol=1e-9)
    centers = C.pixel_centers(24, 32, dtype=torch.float64).flatten(0, 1)
    assert torch.allclose(uv, centers.expand_as(uv), atol=1e-9)


def test_plucker_moment_orthogonal_to_direction():
    c2w = random_c2w(2, torch.Generator().manual_seed(5))
    k = torch.tensor([[20.0, 20.0, 8.0, 8.0]], dtype=torch.float64).repeat(2, 1)
    rays = C.plucker_rays(c2w, k, 16, 16)
    m, d = rays[:, :3], rays[:, 3:]
    assert torch.allclose(d.norm(dim=1), torch.ones(2, 16, 16, dtype=torch.float64))
    assert (m * d).sum(1).abs().max() < 1e-12


def test_look_at_points_camera_at_target():
    eye = torch.tensor([[1.0, -0.5, -2.0]], dtype=torch.float64)
    target = torch.zeros(1, 3, dtype=torch.float64)
    c2w = C.look_at(eye, target)
    uv, z = C.project_points(target[None], c2w, torch.tensor([[10.0, 10.0, 5.0, 5.0]]).double())
    assert torch.allclose(uv, torch.tensor([[[5.0, 5.0]]], dtype=torch.float64), atol=1e-9)
    assert z.item() > 0
    assert torch.allclose(torch.linalg.det(c2w[0, :3, :3]), torch.tensor(1.0).double())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c, k: c.__setitem__((1, 0, 3), float("nan")), "non-finite"),
        (lambda c, k: c.__setitem__((0, slice(0, 3), 0), torch.zeros(3)), "not a proper rotation"),
        (lambda c, k: k.__setitem__((0, 0), -5.0), "focal lengths must be positive"),
        (lambda c, k: k.__setitem__((1, 2), 500.0), "outside the"),
        (lambda c, k: c.__setitem__((1, 0, 3), 1e30), r"view 1: pose translation \(1e\+30, 0, 0\)"),
    ],
)
def test_validate_cameras_errors(mutate, message):
    c2w = torch.eye(4).repeat(2, 1, 1)
    k = torch.tensor([[50.0, 50.0, 32.0, 32.0]]).repeat(2, 1)
    C.validate_cameras(c2w, k, (64, 64), "scene.json")
    mutate(c2w, k)
    with pytest.raises(ValueError, match=message) as err:
        C.validate_cameras(c2w, k, (64, 64), "scene.json")
    assert "scene.json" in str(err.value)


def test_translations_that_float32_normalisation_overflows_are_refused():
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = 2e19  # finite in float32, but its distance to camera 0 squared is not
    assert not torch.isfinite(C.scene_normalization(c2w, 2)[1])
    with pytest.raises(ValueError, match=r"cams.json: view 1: pose translation .* more than 4.6"):
        C.validate_cameras(
            c2w, torch.tensor([[50.0, 50.0, 32.0, 32.0]]).repeat(2, 1), (64, 64), "cams.json"
        )
    c2w[1, 0, 3] = C.MAX_TRANSLATION
    c2w[0, 0, 3] = -C.MAX_TRANSLATION  # as far apart as the bound allows: still finite
    assert torch.isfinite(C.scene_normalization(c2w, 2)[1])


def test_an_implausible_field_of_view_is_refused_when_asked():
    c2w, hw = torch.eye(4)[None], (64, 64)
    normalised = torch.tensor([[0.98, 0.98, 0.5, 0.5]])  # raw RealEstate10K intrinsics
    C.validate_cameras(c2w, normalised, hw)  # only when asked: estimates are not users' files
    message = r"cams.json: view 0: fx=0.98, fy=0.98 give a 176.5 degree field of view on the 64x64"
    with pytest.raises(ValueError, match=message):
        C.validate_cameras(c2w, normalised, hw, "cams.json", max_fov_deg=C.MAX_FOV_DEG)
    wide = C.fov_to_focal(math.radians(C.MAX_FOV_DEG - 1), 64)
    C.validate_cameras(c2w, torch.tensor([[wide, wide, 32.0, 32.0]]), hw, max_fov_deg=C.MAX_FOV_DEG)


@pytest.mark.parametrize(
    ("name", "distance", "message"),
    [
        ("zoom-out", 0.0, r"of zoom-out is a focal factor in \[0.1, 10\], got 0$"),
        ("zoom-in", -2.0, r"of zoom-in is a focal factor in \[0.1, 10\], got -2$"),
        (
            "dolly-zoom",
            1e300,
            r"of dolly-zoom is a travel in scene units in \[-100, 100\], got 1e\+300",
        ),
        ("move-forward", 1e300, r"of move-forward is a travel .* got 1e\+300"),
        ("orbit", 720.0, r"of orbit is degrees in \[-360, 360\], got 720"),
        ("spiral", float("nan"), r"of spiral is a radius in scene units in \[0, 100\], got nan"),
        ("orbit-360", 90.0, "does not apply to orbit-360"),
        ("interpolate", 1.0, "does not apply to interpolate"),
    ],
)
def test_trajectory_distance_out_of_range_names_the_option(name, distance, message):
    with pytest.raises(ValueError, match=message) as err:
        T.make_trajectory(name, torch.eye(4)[None], 4, distance=distance)
    assert "--trajectory-distance" in str(err.value)


@pytest.mark.parametrize("name", list(T.DISTANCE_RANGES))
def test_trajectory_distance_limits_give_finite_cameras(name):
    _, low, high = T.DISTANCE_RANGES[name]
    for distance in (low, high):
        path = T.make_trajectory(name, torch.eye(4)[None], 4, focus=2.0, distance=distance)
        assert torch.isfinite(path.c2w).all() and torch.isfinite(path.focal_scale).all()
        assert (path.focal_scale > 0).all()


@pytest.mark.parametrize("name", [*T.TRAJECTORY_PRESETS, "interpolate"])
def test_trajectory_presets_are_valid_cameras(name):
    src = random_c2w(3, torch.Generator().manual_seed(6)).float()
    path = T.make_trajectory(name, src, num_frames=12, focus=2.0)
    poses, k = path.c2w, path.intrinsics(torch.tensor([50.0, 50.0, 32.0, 32.0]))
    assert poses.shape == (12, 4, 4) and k.shape == (12, 4)
    C.validate_cameras(poses, k, (64, 64))
    moves = (poses[1:, :3, :] - poses[:-1, :3, :]).abs().max() > 0
    zooms = (k[1:, :2] - k[:-1, :2]).abs().max() > 0
    assert moves or zooms  # something changes from frame to frame
    assert torch.equal(k[:, 2:], torch.tensor([[32.0, 32.0]]).expand(12, 2))


def test_orbit_starts_at_reference_and_keeps_focus_in_centre():
    ref = random_c2w(1, torch.Generator().manual_seed(7))[0]
    poses = T.orbit(ref, 8, focus=2.0, degrees=90.0, elevation_deg=10.0)
    k = torch.tensor([[50.0, 50.0, 32.0, 32.0]], dtype=torch.float64).repeat(8, 1)
    focus = (ref[:3, 3] + 2.0 * ref[:3, 2]).expand(8, 1, 3)
    uv, z = C.project_points(focus, poses, k)
    assert torch.allclose(uv, torch.full_like(uv, 32.0), atol=1e-6)
    assert torch.allclose(z, torch.full_like(z, 2.0), atol=1e-6)
    flat = T.orbit(ref, 3, focus=2.0, degrees=90.0)
    assert torch.allclose(flat[0], ref, atol=1e-9)


def test_interpolate_passes_through_keys():
    keys = random_c2w(3, torch.Generator().manual_seed(8))
    path = T.interpolate(keys, 9)  # keys land on frames 0, 4, 8
    for frame, key in zip([0, 4, 8], keys, strict=True):
        assert torch.allclose(path[frame], key, atol=1e-9)


def test_dolly_and_pan():
    ref = torch.eye(4)
    assert torch.allclose(T.dolly_in(ref, 5, 1.0)[-1, :3, 3], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(T.dolly_out(ref, 5, 1.0)[-1, :3, 3], torch.tensor([0.0, 0.0, -1.0]))
    poses = T.pan(ref, 3, degrees=60.0)
    assert torch.allclose(poses[:, :3, 3], torch.zeros(3, 3))
    yaw = torch.atan2(poses[:, 0, 2], poses[:, 2, 2])
    assert torch.allclose(yaw, torch.tensor([-math.pi / 6, 0.0, math.pi / 6]), atol=1e-6)


def test_unknown_trajectory_lists_valid_names():
    with pytest.raises(ValueError, match="orbit"):
        T.make_trajectory("zoom", torch.eye(4)[None], 4)


def test_pose_free_tokens_equal_unposed_tokens_of_any_scene(fixture):
    meta, t = fixture
    s, hw = meta["num_source_views"], tuple(meta["image_hw"])
    c2w, scale = C.normalize_scene(t["io.c2w_raw"], s)
    unposed = C.camera_tokens(c2w, t["io.fxfycxcy"], hw, s, scale, posed=False)[:s]
    assert torch.allclose(C.pose_free_camera_tokens(s), unposed, atol=1e-6)


def test_apply_normalization_matches_normalize_scene():
    c2w = random_c2w(6, torch.Generator().manual_seed(9))
    normalized, _ = C.normalize_scene(c2w, 3)
    ref, scale = C.scene_normalization(c2w[:3], 3)
    assert torch.allclose(C.apply_normalization(c2w[3:], ref, scale), normalized[3:], atol=1e-12)


def _focus(ref, focus):
    return ref[:3, 3] + focus * ref[:3, 2]


def test_new_presets_geometrically():
    ref = random_c2w(1, torch.Generator().manual_seed(9))[0]
    k = torch.tensor([50.0, 50.0, 32.0, 32.0], dtype=torch.float64)
    x, y, z = ref[:3, 0], ref[:3, 1], ref[:3, 2]
    # Lemniscate: a figure eight in the image plane, through the start, facing the focus.
    path = T.make_trajectory("lemniscate", ref[None], 16, focus=2.0, distance=0.2)
    offsets = path.c2w[:, :3, 3] - ref[:3, 3]
    assert torch.allclose(path.c2w[0], ref, atol=1e-9)
    assert (offsets @ z).abs().max() < 1e-9  # stays in the image plane
    u, v = offsets @ x, offsets @ y
    assert u.max() > 0.1 and u.min() < -0.1 and (v.abs().max() > 0.02)
    assert (u[1:4] > 0).all() and (u[9:12] < 0).all()  # one lobe each side
    uv, _ = C.project_points(_focus(ref, 2.0).expand(16, 1, 3), path.c2w, k.expand(16, 4))
    assert torch.allclose(uv, torch.full_like(uv, 32.0), atol=1e-6)
    # Moves: straight along a camera axis, no turning, the set distance.
    for name, axis, sign in (("forward", z, 1), ("left", x, -1), ("up", y, -1)):
        path = T.make_trajectory(f"move-{name}", ref[None], 5, focus=2.0, distance=0.6)
        travel = path.c2w[-1, :3, 3] - ref[:3, 3]
        assert torch.allclose(travel, sign * 0.6 * axis, atol=1e-9)
        assert torch.allclose(path.c2w[:, :3, :3], ref[:3, :3].expand(5, 3, 3))
    # Zooms: the camera stays, the focal length changes steadily (geometric steps).
    path = T.make_trajectory("zoom-in", ref[None], 5, focus=2.0, distance=2.0)
    assert torch.allclose(path.c2w, ref.expand(5, 4, 4))
    assert torch.allclose(path.focal_scale[[0, -1]], torch.tensor([1.0, 2.0], dtype=torch.float64))
    ratios = path.focal_scale[1:] / path.focal_scale[:-1]
    assert torch.allclose(ratios, ratios[0].expand(4))
    assert T.make_trajectory("zoom-out", ref[None], 3, focus=2.0).focal_scale[-1] < 1
    # Dolly zoom: the focus plane keeps its image size while the camera backs away.
    path = T.make_trajectory("dolly-zoom", ref[None], 6, focus=2.0, distance=1.0)
    corner = _focus(ref, 2.0) + 0.3 * x - 0.2 * y  # a point on the focus plane
    frames = path.intrinsics(k)
    uv, depth = C.project_points(corner.expand(6, 1, 3), path.c2w, frames)
    assert torch.allclose(uv, uv[:1].expand_as(uv), atol=1e-6)
    assert torch.allclose(depth[-1], torch.tensor([3.0], dtype=torch.float64))
    far = _focus(ref, 6.0) + 0.3 * x  # behind the focus plane: grows in the image
    uv_far, _ = C.project_points(far.expand(6, 1, 3), path.c2w, frames)
    assert (uv_far[-1, 0, 0] - 32) > (uv_far[0, 0, 0] - 32) * 1.2


def test_mirrored_cameras_see_each_point_at_the_mirrored_pixel_and_depth():
    gen = torch.Generator().manual_seed(3)
    c2w = random_c2w(4, gen)
    fxfycxcy = torch.tensor([[50.0, 52.0, 30.5, 33.0]], dtype=torch.float64).repeat(4, 1)
    points = torch.randn(4, 20, 3, generator=gen, dtype=torch.float64)
    points = points + c2w[:, None, :3, 3] + 4 * c2w[:, None, :3, 2]  # in front of each camera
    uv, depth = C.project_points(points, c2w, fxfycxcy)
    m_c2w, m_k = C.mirror_cameras(c2w, fxfycxcy, width=64)
    m_points = points * points.new_tensor([-1.0, 1.0, 1.0])  # the world reflected in x
    m_uv, m_depth = C.project_points(m_points, m_c2w, m_k)
    torch.testing.assert_close(m_depth, depth)
    torch.testing.assert_close(m_uv[..., 0], 64 - uv[..., 0])  # continuous u -> width - u
    torch.testing.assert_close(m_uv[..., 1], uv[..., 1])
    rotation = m_c2w[:, :3, :3]
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(4, dtype=torch.float64))
    # Mirroring twice gives the cameras back.
    back_c2w, back_k = C.mirror_cameras(m_c2w, m_k, width=64)
    torch.testing.assert_close(back_c2w, c2w)
    torch.testing.assert_close(back_k, fxfycxcy)
