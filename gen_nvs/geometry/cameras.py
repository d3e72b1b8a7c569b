"""Camera geometry shared by every model, loader and renderer in gen-nvs.

Conventions (those of VGGT and LagerNVS):
- OpenCV camera axes: x right, y down, z forward.
- Poses are camera-to-world 4x4 matrices (`c2w`); `w2c` is their inverse.
- Intrinsics are `fxfycxcy` in pixels of the image they belong to; pixel (u, v)
  has its centre at (u + 0.5, v + 0.5).

Dimension legend: `v` views, `h`/`w` image height/width, `...` any leading batch
dimensions. All functions are batched over leading dimensions and differentiable
unless stated otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Scene normalisation divides translations by this factor times the largest source
# camera distance from the first camera (the published LagerNVS recipe).
SCENE_SCALE_FACTOR = 1.35
POSE_ENCODING_DIM = 9
CAMERA_TOKEN_DIM = 11
# Scene normalisation measures camera distances with float32 norms, which square them:
# for two cameras further apart than sqrt(float32 max) (1.8e19) the scene's scale
# overflows to inf, every camera collapses onto the first and comes back as NaN. Cameras
# within this distance of the origin are at most half that apart.
MAX_TRANSLATION = math.sqrt(torch.finfo(torch.float32).max) / 4
# The widest field of view `validate_cameras` accepts when asked (`max_fov_deg`): no
# rectilinear lens comes near it (the widest reach about 130 degrees), while intrinsics
# normalised by the image size (as raw RealEstate10K stores them, fx ~ 1) give nearly
# 180 degrees on any image wider than about 25 pixels.
MAX_FOV_DEG = 170.0


# --------------------------------------------------------------------------------------
# Intrinsics
# --------------------------------------------------------------------------------------


def fxfycxcy_to_K(fxfycxcy: Tensor) -> Tensor:
    """[..., 4] (fx, fy, cx, cy) -> [..., 3, 3] pinhole matrix."""
    fx, fy, cx, cy = fxfycxcy.unbind(-1)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    rows = [
        torch.stack([fx, zero, cx], -1),
        torch.stack([zero, fy, cy], -1),
        torch.stack([zero, zero, one], -1),
    ]
    return torch.stack(rows, -2)


def K_to_fxfycxcy(K: Tensor) -> Tensor:
    """[..., 3, 3] pinhole matrix -> [..., 4] (fx, fy, cx, cy)."""
    return torch.stack([K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]], -1)


def center_crop_box(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred crop of an `in_hw` image with the aspect ratio of `out_hw`.

    Returns (top, left, crop_h, crop_w) in integer pixels.
    """
    in_h, in_w = in_hw
    out_h, out_w = out_hw
    if min(in_h, in_w, out_h, out_w) <= 0:
        raise ValueError(f"image sizes must be positive, got in {in_hw} and out {out_hw}")
    if in_w * out_h > in_h * out_w:  # input is wider than the output aspect
        crop_h, crop_w = in_h, max(1, round(in_h * out_w / out_h))
    else:
        crop_h, crop_w = max(1, round(in_w * out_h / out_w)), in_w
    return (in_h - crop_h) // 2, (in_w - crop_w) // 2, crop_h, crop_w


def crop_intrinsics(fxfycxcy: Tensor, top: float, left: float) -> Tensor:
    """Intrinsics after cropping the image at (top, left)."""
    offset = fxfycxcy.new_tensor([0.0, 0.0, left, top])
    return fxfycxcy - offset


def resize_intrinsics(fxfycxcy: Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """Intrinsics after resizing an `in_hw` image to `out_hw` (pixel-centre aligned)."""
    sy, sx = out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]
    return fxfycxcy * fxfycxcy.new_tensor([sx, sy, sx, sy])


def latent_intrinsics(fxfycxcy: Tensor, factor: int) -> Tensor:
    """Pixel intrinsics [..., 4] -> intrinsics [..., 4] of the `factor`-times downsampled
    latent grid of a VAE.

    A plain division, with no half-pixel shift: latent pixel u covers image pixels
    [f u, f u + f), so a continuous latent coordinate x' is the image coordinate x = f x'
    for every point, the two grids sharing the image corner as origin. In particular
    the latent pixel centre u + 0.5 lands on f u + f / 2, the centre of its f x f block,
    because both grids put centres at +0.5 of their own pixels. Then x = fx X/Z + cx
    becomes x' = (fx / f) X/Z + cx / f.
    """
    if factor < 1:
        raise ValueError(f"the downsampling factor must be >= 1, got {factor}")
    return fxfycxcy / factor


def crop_resize_intrinsics(
    fxfycxcy: Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]
) -> Tensor:
    """Intrinsics after a centre crop to the aspect of `out_hw` and a resize to `out_hw`."""
    top, left, crop_h, crop_w = center_crop_box(in_hw, out_hw)
    cropped = crop_intrinsics(fxfycxcy, top, left)
    return resize_intrinsics(cropped, (crop_h, crop_w), out_hw)


# --------------------------------------------------------------------------------------
# Poses
# --------------------------------------------------------------------------------------


def mirror_cameras(c2w: Tensor, fxfycxcy: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The cameras of a scene reflected left-right: c2w [..., 4, 4], fxfycxcy [..., 4] of
    images `width` pixels wide -> the same for the mirrored scene, whose images are the
    originals flipped along their width and whose depths are the originals' flipped.

    The world's x axis and each camera's x axis are reflected (c2w -> M c2w M, M =
    diag(-1, 1, 1, 1)), so rotations stay proper, every point keeps its depth and a
    pixel's centre u + 0.5 goes to width - (u + 0.5): cx -> width - cx.
    """
    sign = c2w.new_tensor([-1.0, 1.0, 1.0, 1.0])
    mirrored = c2w * sign[:, None] * sign  # M c2w M: rows and columns 0 negated, (0, 0) kept
    k = torch.cat([fxfycxcy[..., :2], width - fxfycxcy[..., 2:3], fxfycxcy[..., 3:]], -1)
    return mirrored, k


def invert_rigid(T: Tensor) -> Tensor:
    """Inverse of rigid 4x4 transforms [..., 4, 4] (c2w <-> w2c), exact for rotations."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    R_inv = R.transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = R_inv
    out[..., :3, 3:] = -R_inv @ t
    out[..., 3, 3] = 1.0
    return out


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """OpenCV c2w [..., 4, 4] for cameras at `eye` looking at `target`.

    `up` is the world's up direction ([..., 3]; default -y, as image rows grow
    downwards in OpenCV). The camera's y axis points away from `up`.
    """
    if up is None:
        up = eye.new_tensor([0.0, -1.0, 0.0]).expand_as(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.linalg.cross(-up.expand_as(z), z, dim=-1)
    degenerate = x.norm(dim=-1, keepdim=True) < 1e-8
    if degenerate.any():
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.linalg.cross(z, x, dim=-1)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2] = x, y, z
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def scene_normalization(c2w: Tensor, num_sources: int) -> tuple[Tensor, Tensor]:
    """The similarity that normalises a scene: (reference_w2c [4, 4], scale []).

    reference_w2c is the inverse of the first camera; scale is 1.35 times the largest
    source distance from the first camera (1 for a single source view).
    Args: c2w [v, 4, 4] poses, source views first; num_sources >= 1 leading sources.
    """
    if c2w.ndim != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must be [V,4,4], got {tuple(c2w.shape)}")
    if not 1 <= num_sources <= c2w.shape[0]:
        raise ValueError(f"num_sources must be in 1..{c2w.shape[0]}, got {num_sources}")
    reference_w2c = invert_rigid(c2w[0])
    if num_sources == 1:
        return reference_w2c, c2w.new_tensor(1.0)
    source_dist = (reference_w2c @ c2w[:num_sources])[:, :3, 3].norm(dim=-1)  # (s,)
    if source_dist.max() <= 0:
        raise ValueError("all source cameras sit at the same position: cannot normalise scale")
    return reference_w2c, SCENE_SCALE_FACTOR * source_dist.max()


def apply_normalization(c2w: Tensor, reference_w2c: Tensor, scale: Tensor) -> Tensor:
    """Cameras [..., 4, 4] -> the normalised frame of `scene_normalization`."""
    rel = reference_w2c @ c2w
    translation = rel[..., :3, 3:] / scale
    return torch.cat([torch.cat([rel[..., :3, :3], translation], -1), rel[..., 3:, :]], -2)


def normalize_scene(c2w: Tensor, num_sources: int) -> tuple[Tensor, Tensor]:
    """Express all cameras relative to the first source camera and rescale.

    Args:
        c2w: [v, 4, 4] poses, source views first.
        num_sources: how many leading views are sources (>= 1).
    Returns:
        c2w_normalized [v, 4, 4] and camera_scale [] (the largest source distance
        from the first camera after rescaling).
    """
    reference_w2c, scale = scene_normalization(c2w, num_sources)
    normalized = apply_normalization(c2w, reference_w2c, scale)
    camera_scale = normalized[:num_sources, :3, 3].norm(dim=-1).max()
    return normalized, camera_scale


# --------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] in (x, y, z, w) order, w >= 0."""
    m = R
    trace_terms = torch.stack(
        [
            1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],  # 4 w^2
            1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],  # 4 x^2
            1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],  # 4 y^2
            1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],  # 4 z^2
        ],
        -1,
    )
    # Each candidate divides by its own largest component: numerically stable.
    half = 0.5 * trace_terms.clamp_min(1e-12).sqrt()  # (..., 4) = |w|,|x|,|y|,|z|
    cands = torch.stack(
        [
            torch.stack(  # from w
                [
                    (m[..., 2, 1] - m[..., 1, 2]),
                    (m[..., 0, 2] - m[..., 2, 0]),
                    (m[..., 1, 0] - m[..., 0, 1]),
                    4 * half[..., 0] ** 2,
                ],
                -1,
            )
            / (4 * half[..., 0:1]),
            torch.stack(  # from x
                [
                    4 * half[..., 1] ** 2,
                    (m[..., 0, 1] + m[..., 1, 0]),
                    (m[..., 0, 2] + m[..., 2, 0]),
                    (m[..., 2, 1] - m[..., 1, 2]),
                ],
                -1,
            )
            / (4 * half[..., 1:2]),
            torch.stack(  # from y
                [
                    (m[..., 0, 1] + m[..., 1, 0]),
                    4 * half[..., 2] ** 2,
                    (m[..., 1, 2] + m[..., 2, 1]),
                    (m[..., 0, 2] - m[..., 2, 0]),
                ],
                -1,
            )
            / (4 * half[..., 2:3]),
            torch.stack(  # from z
                [
                    (m[..., 0, 2] + m[..., 2, 0]),
                    (m[..., 1, 2] + m[..., 2, 1]),
                    4 * half[..., 3] ** 2,
                    (m[..., 1, 0] - m[..., 0, 1]),
                ],
                -1,
            )
            / (4 * half[..., 3:4]),
        ],
        -2,
    )  # (..., 4 candidates, 4)
    best = trace_terms.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., 3:4] < 0, -q, q)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Quaternions [..., 4] (x, y, z, w), not necessarily unit -> rotation matrices [..., 3, 3]."""
    x, y, z, w = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, -2)


# --------------------------------------------------------------------------------------
# Pose encoding and camera tokens
# --------------------------------------------------------------------------------------


def pose_encoding(c2w: Tensor, fxfycxcy: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """VGGT "absT_quaR_FoV" encoding of c2w poses: [..., 9] = [t, quat xyzw, fov_h, fov_w]."""
    h, w = image_hw
    t = c2w[..., :3, 3]
    quat = matrix_to_quaternion(c2w[..., :3, :3])
    fov_h = 2 * torch.atan((h / 2) / fxfycxcy[..., 1])
    fov_w = 2 * torch.atan((w / 2) / fxfycxcy[..., 0])
    return torch.cat([t, quat, fov_h[..., None], fov_w[..., None]], -1)


def pose_encoding_to_camera(encoding: Tensor, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Inverse of `pose_encoding`: [..., 9] -> (c2w [..., 4, 4], fxfycxcy [..., 4]).

    The principal point is placed at the image centre (the encoding does not hold it).
    """
    if encoding.shape[-1] != POSE_ENCODING_DIM:
        raise ValueError(
            f"pose encoding must have {POSE_ENCODING_DIM} numbers, got {encoding.shape[-1]}"
        )
    h, w = image_hw
    t, quat = encoding[..., :3], encoding[..., 3:7]
    fov_h, fov_w = encoding[..., 7], encoding[..., 8]
    c2w = torch.zeros(*encoding.shape[:-1], 4, 4, dtype=encoding.dtype, device=encoding.device)
    c2w[..., :3, :3] = quaternion_to_matrix(quat)
    c2w[..., :3, 3] = t
    c2w[..., 3, 3] = 1.0
    fy = (h / 2) / torch.tan(fov_h / 2)
    fx = (w / 2) / torch.tan(fov_w / 2)
    fxfycxcy = torch.stack([fx, fy, torch.full_like(fx, w / 2), torch.full_like(fy, h / 2)], -1)
    return c2w, fxfycxcy


def camera_tokens(
    c2w_normalized: Tensor,
    fxfycxcy: Tensor,
    image_hw: tuple[int, int],
    num_sources: int,
    camera_scale: Tensor,
    posed: bool = True,
    training: bool = False,
) -> Tensor:
    """The 11-number camera tokens: pose encoding + [camera_scale, world_points_scale].

    Args:
        c2w_normalized: [v, 4, 4] poses from `normalize_scene`, sources first.
        fxfycxcy: [v, 4] intrinsics in pixels of `image_hw`.
        num_sources: number of leading source views.
        camera_scale: [] from `normalize_scene`.
        posed: False for pose-free input (camera-token dropout): the sources' tokens are
            `pose_free_camera_tokens`, their 9 pose numbers zeroed and the pair the
            constant of the normalised scale, so that pose-free training encodes exactly
            as pose-free use.
        training: a single source view gets the pair [0, 1] only at test time.
    Returns:
        [v, 11]
    """
    enc = pose_encoding(c2w_normalized, fxfycxcy, image_hw)  # (v, 9)
    if num_sources == 1 and not training:
        pair = enc.new_tensor([0.0, 1.0])
    else:
        pair = torch.stack([camera_scale.to(enc), enc.new_zeros(())])
    tokens = torch.cat([enc, pair.expand(enc.shape[0], 2)], -1)  # (v, 11)
    if not posed:
        tokens = tokens.clone()
        tokens[:num_sources] = pose_free_camera_tokens(
            num_sources, training, dtype=tokens.dtype, device=tokens.device
        )
    return tokens


def pose_free_camera_tokens(
    num_sources: int, training: bool = False, dtype=torch.float32, device=None
) -> Tensor:
    """Source camera tokens [s, 11] when no camera is known.

    The 9 pose numbers are zero; the pair is what a posed scene would give, which does
    not depend on the cameras: [1 / 1.35, 0] for several sources (the normalised
    camera scale), [0, 1] for a single source at test time ([0, 0] in training).
    """
    tokens = torch.zeros(num_sources, CAMERA_TOKEN_DIM, dtype=dtype, device=device)
    if num_sources > 1:
        tokens[:, POSE_ENCODING_DIM] = 1 / SCENE_SCALE_FACTOR
    elif not training:
        tokens[:, POSE_ENCODING_DIM + 1] = 1.0
    return tokens


# --------------------------------------------------------------------------------------
# Rays, projection and unprojection
# --------------------------------------------------------------------------------------


def pixel_centers(height: int, width: int, device=None, dtype=torch.float32) -> Tensor:
    """[h, w, 2] pixel centres (u + 0.5, v + 0.5) in (x, y) order."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    return torch.stack([u, v], -1)


def camera_rays(fxfycxcy: Tensor, height: int, width: int) -> Tensor:
    """Un-normalised camera-frame ray directions K^-1 [u, v, 1]: [..., h, w, 3]."""
    uv = pixel_centers(height, width, fxfycxcy.device, fxfycxcy.dtype)  # (h, w, 2)
    f = fxfycxcy[..., None, None, :2]
    c = fxfycxcy[..., None, None, 2:]
    xy = (uv - c) / f  # (..., h, w, 2)
    return torch.cat([xy, torch.ones_like(xy[..., :1])], -1)


def plucker_rays(c2w: Tensor, fxfycxcy: Tensor, height: int, width: int) -> Tensor:
    """Pluecker ray maps [..., 6, h, w]: channels [o x d, d] with unit world directions."""
    d_cam = torch.nn.functional.normalize(camera_rays(fxfycxcy, height, width), dim=-1)
    R = c2w[..., None, None, :3, :3]  # (..., 1, 1, 3, 3)
    d = (R @ d_cam[..., None]).squeeze(-1)  # (..., h, w, 3)
    o = c2w[..., None, None, :3, 3].expand_as(d)
    rays = torch.cat([torch.linalg.cross(o, d, dim=-1), d], -1)  # (..., h, w, 6)
    return rays.movedim(-1, -3)


def unproject_depth(depth: Tensor, fxfycxcy: Tensor, c2w: Tensor | None = None) -> Tensor:
    """Depth maps [..., h, w] (z along the optical axis) -> points [..., h, w, 3].

    Points are in the world frame when `c2w` [..., 4, 4] is given, else in the camera frame.
    """
    h, w = depth.shape[-2:]
    points = camera_rays(fxfycxcy, h, w) * depth[..., None]  # (..., h, w, 3)
    if c2w is None:
        return points
    R = c2w[..., None, None, :3, :3]
    t = c2w[..., None, None, :3, 3]
    return (R @ points[..., None]).squeeze(-1) + t


def world_to_camera(points: Tensor, c2w: Tensor) -> Tensor:
    """World points [..., n, 3] -> camera-frame points [..., n, 3] of cameras c2w [..., 4, 4]."""
    R, t = c2w[..., :3, :3], c2w[..., :3, 3]
    return (points - t[..., None, :]) @ R  # row-vector form of R^T (p - t)


def project_points(points: Tensor, c2w: Tensor, fxfycxcy: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points [..., n, 3] into cameras -> (uv [..., n, 2] pixels, z [..., n]).

    uv is in continuous pixel coordinates (pixel u covers [u, u + 1)); z <= 0 means
    behind the camera, where uv is meaningless.
    """
    cam = world_to_camera(points, c2w)
    z = cam[..., 2]
    safe_z = torch.where(z.abs() < 1e-8, torch.full_like(z, 1e-8), z)
    uv = cam[..., :2] / safe_z[..., None] * fxfycxcy[..., None, :2] + fxfycxcy[..., None, 2:]
    return uv, z


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def validate_cameras(
    c2w: Tensor,
    fxfycxcy: Tensor,
    image_hw: tuple[int, int],
    where: str = "cameras",
    rotation_tol: float = 1e-3,
    max_fov_deg: float | None = None,
) -> None:
    """Raise ValueError (naming `where` and the view) unless the cameras are usable.

    Checks shapes, finiteness, that each rotation is orthonormal with determinant +1
    (an invertible rigid pose), a translation within `MAX_TRANSLATION`, positive focal
    lengths and a principal point inside the image; with `max_fov_deg`, also that neither
    field of view is wider (what user-given intrinsics in the wrong units give away).
    The checks hold for w2c and c2w alike.
    """
    if c2w.ndim != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"{where}: c2w must have shape [V,4,4], got {tuple(c2w.shape)}")
    if fxfycxcy.shape != (c2w.shape[0], 4):
        raise ValueError(
            f"{where}: intrinsics must have shape [{c2w.shape[0]},4] (fx, fy, cx, cy), "
            f"got {tuple(fxfycxcy.shape)}"
        )
    c2w64, k64 = c2w.double(), fxfycxcy.double()
    for i in range(c2w.shape[0]):
        _validate_pose(c2w64[i], f"{where}: view {i}", rotation_tol)
        _validate_intrinsics(k64[i], image_hw, f"{where}: view {i}", max_fov_deg)


def _validate_pose(pose: Tensor, where: str, rotation_tol: float) -> None:
    """ValueError unless pose [4, 4] (float64) is a finite rigid transform."""
    if not torch.isfinite(pose).all():
        raise ValueError(f"{where}: pose has non-finite values")
    R = pose[:3, :3]
    err = (R.T @ R - torch.eye(3, dtype=R.dtype)).abs().max().item()
    det = torch.linalg.det(R).item()
    if err > rotation_tol or abs(det - 1) > rotation_tol:
        raise ValueError(
            f"{where}: pose rotation is not a proper rotation "
            f"(|R^T R - I| = {err:.3g}, det = {det:.3g}); "
            "the pose is not an invertible rigid transform"
        )
    bottom = pose[3]
    if (bottom - bottom.new_tensor([0, 0, 0, 1])).abs().max() > 1e-6:
        raise ValueError(f"{where}: last pose row must be [0,0,0,1], got {bottom.tolist()}")
    translation = pose[:3, 3].norm().item()
    if translation > MAX_TRANSLATION:
        shown = ", ".join(f"{x:.4g}" for x in pose[:3, 3].tolist())
        raise ValueError(
            f"{where}: pose translation ({shown}) is {translation:.3g} from the origin, more "
            f"than {MAX_TRANSLATION:.3g}: the scene normalisation (float32) would overflow"
        )


def _validate_intrinsics(
    k: Tensor, image_hw: tuple[int, int], where: str, max_fov_deg: float | None
) -> None:
    """ValueError unless fxfycxcy k [4] (float64) fits an `image_hw` image."""
    h, w = image_hw
    if not torch.isfinite(k).all():
        raise ValueError(f"{where}: intrinsics have non-finite values")
    fx, fy, cx, cy = k.tolist()
    if fx <= 0 or fy <= 0:
        raise ValueError(f"{where}: focal lengths must be positive, got fx={fx}, fy={fy}")
    if not (0 <= cx <= w and 0 <= cy <= h):
        raise ValueError(
            f"{where}: principal point ({cx:.4g}, {cy:.4g}) lies outside the "
            f"{w}x{h} image: intrinsics do not fit the image"
        )
    fov = math.degrees(2 * max(math.atan(w / 2 / fx), math.atan(h / 2 / fy)))
    if max_fov_deg is not None and fov > max_fov_deg:
        raise ValueError(
            f"{where}: fx={fx:.4g}, fy={fy:.4g} give a {fov:.1f} degree field of view on the "
            f"{w}x{h} image (at most {max_fov_deg:g}): fxfycxcy must be in pixels of the "
            "image, not normalised by its size"
        )


def fov_to_focal(fov_rad: float, size: int) -> float:
    """Focal length in pixels for a field of view across `size` pixels."""
    return (size / 2) / math.tan(fov_rad / 2)
