"""Scene data: sample format, view sampling, image ops, and every dataset format.

All files are written by the tests into tmp_path; images are a few pixels wide.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from gen_nvs.data import (
    EvalDataset,
    EvalIndex,
    NerfstudioReader,
    PixelSplatReader,
    RE10KDataset,
    RE10KReader,
    SceneSample,
    center_crop_resize,
    center_crop_resize_depth,
    collate_scenes,
    decode_image,
    load_image,
    load_scene,
    mirror_scenes,
    sample_views,
    write_full_list,
    write_re10k_scene,
)
from gen_nvs.geometry.cameras import (
    center_crop_box,
    crop_resize_intrinsics,
    invert_rigid,
    project_points,
)
from gen_nvs.geometry.warp import backward_warp
from gen_nvs.outputs import fit_depth_scale, write_depth


def random_c2w(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 4, 4] random rigid poses (rotations from QR, det +1)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[torch.linalg.det(q) < 0, :, 0] *= -1
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, :3, :3] = q
    c2w[:, :3, 3] = torch.randn(n, 3, generator=generator, dtype=torch.float64) * 3
    return c2w.float()


def make_scene(v: int = 4, h: int = 12, w: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(v, 3, h, w, generator=g)
    c2w = random_c2w(v, g)
    fxfycxcy = torch.tensor([[20.0 + i, 21.0, w / 2 + 0.25, h / 2 - 0.5] for i in range(v)])
    depth = 0.5 + 19.5 * torch.rand(v, h, w, generator=g)
    valid = torch.rand(v, h, w, generator=g) > 0.2
    return images, c2w, fxfycxcy, depth, valid


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------------------
# SceneSample
# --------------------------------------------------------------------------------------


def test_scene_sample_split_select_and_collate():
    images, c2w, fxfycxcy, depth, valid = make_scene(v=5)
    sample = SceneSample(images, c2w, fxfycxcy, 2, "s", [7, 3, 9, 1, 2], depth, valid)
    sources, targets = sample.split()
    assert (sources.num_views, sources.num_sources) == (2, 2)
    assert (targets.num_views, targets.num_sources) == (3, 0)
    assert targets.frame_indices.tolist() == [9, 1, 2]
    assert torch.equal(targets.images, images[2:]) and torch.equal(targets.depth, depth[2:])
    batch = collate_scenes([sample, sample])
    assert batch.images.shape == (2, 5, 3, 12, 16) and batch.depth_valid.shape == (2, 5, 12, 16)
    assert batch.scenes == ["s", "s"] and batch.num_sources == 2
    with pytest.raises(ValueError, match="share view count"):
        collate_scenes([sample, sources])


def test_scene_sample_rejects_inconsistent_shapes():
    images, c2w, fxfycxcy, depth, _ = make_scene(v=3)
    with pytest.raises(ValueError, match="c2w must have shape"):
        SceneSample(images, c2w[:2], fxfycxcy, 1, "s", [0, 1, 2])
    with pytest.raises(ValueError, match="num_sources"):
        SceneSample(images, c2w, fxfycxcy, 4, "s", [0, 1, 2])
    with pytest.raises(ValueError, match="together"):
        SceneSample(images, c2w, fxfycxcy, 1, "s", [0, 1, 2], depth=depth)


# --------------------------------------------------------------------------------------
# View sampling
# --------------------------------------------------------------------------------------


def test_sample_views_deterministic_and_within_bounds():
    for seed in range(200):
        a = sample_views(40, (2, 4), 3, (5, 12), torch.Generator().manual_seed(seed))
        b = sample_views(40, (2, 4), 3, (5, 12), torch.Generator().manual_seed(seed))
        assert a == b
        sources, targets = a
        left, right = sources[0], sources[-1]
        assert 2 <= len(sources) <= 4 and len(targets) == 3
        assert 5 <= right - left <= 12 and 0 <= left and right < 40
        assert sources == sorted(set(sources))
        assert len(set(targets)) == 3 and all(left <= t <= right for t in targets)
    drawn = {
        len(sample_views(40, (2, 4), 3, (5, 12), torch.Generator().manual_seed(s))[0])
        for s in range(50)
    }
    assert drawn == {2, 3, 4}


def test_sample_views_single_source_and_clipped_gap():
    for seed in range(50):
        sources, targets = sample_views(6, 1, 2, (3, 100), torch.Generator().manual_seed(seed))
        assert len(sources) == 1 and all(0 <= t < 6 for t in targets)
        assert max(targets + sources) - min(targets + sources) <= 5


def test_sample_views_target_margin_reaches_past_the_sources_within_the_scene():
    args = (12, 2, 3, (2, 4))
    outside = 0
    for seed in range(300):
        plain = sample_views(*args, torch.Generator().manual_seed(seed))
        zero = sample_views(*args, torch.Generator().manual_seed(seed), target_margin=0)
        assert zero == plain  # margin 0: the published draw, unchanged
        sources, targets = sample_views(*args, torch.Generator().manual_seed(seed),
                                        target_margin=2)  # fmt: skip
        assert sources == plain[0]  # the margin moves targets only
        left, right = sources[0], sources[-1]
        assert len(set(targets)) == 3 and targets == sorted(targets)
        assert all(max(0, left - 2) <= t <= min(11, right + 2) for t in targets)
        outside += sum(t < left or t > right for t in targets)
        # At the scene's end the widened window is clipped, not shifted.
        edge = sample_views(6, 2, 3, (5, 5), torch.Generator().manual_seed(seed),
                            target_margin=3)  # fmt: skip
        assert edge[0] == [0, 5] and all(0 <= t <= 5 for t in edge[1])
    assert outside > 100  # both sides are reached
    with pytest.raises(ValueError, match="target_margin must be >= 0, got -1"):
        sample_views(*args, torch.Generator(), target_margin=-1)


def test_sample_views_rejects_impossible_requests():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="from a scene of 4 frames \\(needs 6\\)"):
        sample_views(4, 2, 1, (5, 10), g)
    with pytest.raises(ValueError, match="cannot hold 2 sources or 6 distinct targets"):
        sample_views(10, 2, 6, (1, 3), g)
    with pytest.raises(ValueError, match="num_sources >= 1"):
        sample_views(10, 0, 1, (1, 3), g)


# --------------------------------------------------------------------------------------
# Images, crop and resize
# --------------------------------------------------------------------------------------


def normalised_coordinate_image(fxfycxcy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[3, h, w]: channel 0/1 = camera-frame x/z and y/z of each pixel centre's ray."""
    fx, fy, cx, cy = fxfycxcy.tolist()
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return torch.stack([(u - cx) / fx, (v - cy) / fy, torch.zeros_like(u)])


@pytest.mark.parametrize(
    ("in_hw", "out_hw", "tolerance_px"),
    [
        ((64, 64), (16, 16), 1e-4),
        ((24, 18), (16, 20), 1e-4),
        ((30, 50), (8, 8), 0.03),
        ((9, 12), (6, 8), 0.03),
    ],
)
def test_center_crop_resize_matches_intrinsics(in_hw, out_hw, tolerance_px):
    k = torch.tensor([17.0, 19.0, in_hw[1] * 0.45, in_hw[0] * 0.55], dtype=torch.float64)
    image = normalised_coordinate_image(k, *in_hw)
    resized = center_crop_resize(image, out_hw)
    k_out = crop_resize_intrinsics(k, in_hw, out_hw)
    expected = normalised_coordinate_image(k_out, *out_hw)
    # The images are linear in the pixel position, which bilinear resizing keeps away
    # from the borders; antialiasing at a non-integer scale samples its tent filter
    # off-centre, which shifts by a few hundredths of a pixel at most.
    error_px = (resized - expected)[:2, 1:-1, 1:-1] * k_out[:2, None, None]
    assert error_px.abs().max() < tolerance_px

    # A 3D point lands on the pixel whose ray passes through it, before and after.
    c2w = torch.eye(4, dtype=torch.float64)[None]
    point = torch.tensor([[[0.3, -0.2, 4.0]]], dtype=torch.float64)
    uv, _ = project_points(point, c2w, k[None])
    uv_out, _ = project_points(point, c2w, k_out[None])
    # Map the projection through the image operation: shift by the crop, scale by the resize.
    top, left, crop_h, crop_w = center_crop_box(in_hw, out_hw)
    scale = torch.tensor([out_hw[1] / crop_w, out_hw[0] / crop_h], dtype=torch.float64)
    mapped = (uv[0, 0] - torch.tensor([left, top], dtype=torch.float64)) * scale
    torch.testing.assert_close(uv_out[0, 0], mapped)


def test_center_crop_resize_depth_picks_the_right_source_pixel():
    in_hw, out_hw = (20, 30), (7, 9)
    h, w = in_hw
    index = torch.arange(h * w, dtype=torch.float32).reshape(h, w) + 1  # depth = pixel id + 1
    valid = torch.ones(h, w, dtype=torch.bool)
    valid[::3, ::2] = False
    depth_out, valid_out = center_crop_resize_depth(index, valid, out_hw)
    k = torch.tensor([25.0, 25.0, 14.0, 9.0], dtype=torch.float64)
    k_out = crop_resize_intrinsics(k, in_hw, out_hw)
    for v_out in range(out_hw[0]):
        for u_out in range(out_hw[1]):
            # The source pixel whose ray this output pixel centre samples.
            x = (u_out + 0.5 - k_out[2]) / k_out[0] * k[0] + k[2]
            y = (v_out + 0.5 - k_out[3]) / k_out[1] * k[1] + k[3]
            src = (int(y), int(x))
            assert bool(valid_out[v_out, u_out]) == bool(valid[src])
            expected = index[src] if valid[src] else 0.0
            assert depth_out[v_out, u_out].item() == expected


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(tmp_path / "broken.png")
    write_png(tmp_path / "ok.png", np.full((3, 5, 3), 255, np.uint8))
    image = load_image(tmp_path / "ok.png")
    assert image.shape == (3, 3, 5) and image.dtype == torch.float32 and image.max() == 1.0


def test_load_image_reads_16_bit_greyscale_at_full_range(tmp_path):
    ramp = np.linspace(0, 65535, 20).astype(np.uint16).reshape(4, 5)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    expected = torch.from_numpy(ramp.astype(np.float32) / 65535).expand(3, 4, 5)
    torch.testing.assert_close(load_image(tmp_path / "g16.png"), expected)  # not clipped white
    # 32-bit integer and float greyscale (TIFF): 16-bit values and [0, 1] are read as such.
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "i32.tif")
    torch.testing.assert_close(load_image(tmp_path / "i32.tif"), expected)
    Image.fromarray(ramp.astype(np.float32) / 65535).save(tmp_path / "f32.tif")
    torch.testing.assert_close(load_image(tmp_path / "f32.tif"), expected)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([[0.0, 2.5]], np.float32), r"f.tif: a floating-point image .* \[0, 2.5\]"),
        (np.array([[0.0, np.nan]], np.float32), r"f.tif: a floating-point image"),
        (np.array([[-1, 70000]], np.int32), r"f.tif: a 32-bit integer image .* -1..70000"),
    ],
)
def test_load_image_refuses_values_it_cannot_scale(tmp_path, values, message):
    Image.fromarray(values).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=message):
        load_image(tmp_path / "f.tif")


def test_load_image_other_modes(tmp_path):
    Image.new("LA", (3, 2), (100, 0)).save(tmp_path / "la.png")  # alpha dropped
    torch.testing.assert_close(load_image(tmp_path / "la.png"), torch.full((3, 2, 3), 100 / 255))
    palette = Image.new("P", (3, 2), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=1)
    assert Image.open(tmp_path / "p.png").info["transparency"] == 1
    colour = torch.tensor([10, 20, 30]) / 255
    torch.testing.assert_close(
        load_image(tmp_path / "p.png"), colour[:, None, None].expand(3, 2, 3)
    )
    Image.new("CMYK", (3, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg").min() > 0.98  # no ink: white


def _turned_jpeg(orientation: int) -> bytes:
    """A JPEG stored 8 wide and 4 high, white in its top-left 2x2 corner, with this EXIF
    orientation."""
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:2, :2] = 255
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=100, exif=exif)
    return buffer.getvalue()


def test_images_are_turned_upright_by_their_exif_orientation(tmp_path):
    (tmp_path / "turned.jpg").write_bytes(_turned_jpeg(6))  # 6: shown turned 90 degrees CW
    for image in (load_image(tmp_path / "turned.jpg"), decode_image(_turned_jpeg(6), "x")):
        assert image.shape == (3, 8, 4)  # shown 4 wide and 8 high
        assert image[:, :2, 2:].min() > 0.9 and image[:, 2:, :].max() < 0.1  # corner top right
    upright = decode_image(_turned_jpeg(1), "x")
    assert upright.shape == (3, 4, 8) and upright[:, :2, :2].min() > 0.9


# --------------------------------------------------------------------------------------
# RealEstate10K layout: writer and reader
# --------------------------------------------------------------------------------------


def test_re10k_round_trip(tmp_path):
    images, c2w, fxfycxcy, depth, valid = make_scene()
    meta_path = write_re10k_scene(tmp_path, "scene_a", images, c2w, fxfycxcy, depth, valid)
    write_full_list(tmp_path)
    assert (tmp_path / "full_list.txt").read_text() == "metadata/scene_a.json\n"
    meta = json.loads(meta_path.read_text())
    scale = meta["depth_scale"]
    assert meta["frames"][2]["depth_path"] == "depths/scene_a/00002.png"

    reader = RE10KReader(tmp_path, image_hw=None)
    assert reader.scene_names == ["scene_a"] and reader.num_frames("scene_a") == 4
    sample = reader.load("scene_a", [3, 0, 1, 2], num_sources=1)
    order = [3, 0, 1, 2]
    assert sample.frame_indices.tolist() == order and sample.num_sources == 1
    assert (sample.images - images[order]).abs().max() <= 0.5 / 255 + 1e-6
    torch.testing.assert_close(sample.c2w, c2w[order], atol=1e-6, rtol=0)
    assert torch.equal(sample.fxfycxcy, fxfycxcy[order])
    assert torch.equal(sample.depth_valid, valid[order])
    assert (sample.depth - depth[order])[valid[order]].abs().max() <= 1 / scale
    assert (sample.depth[~valid[order]] == 0).all()


def test_command_depth_files_are_the_re10k_depth_format(tmp_path):
    images, c2w, fxfycxcy, depth, valid = make_scene(v=2)
    meta_path = write_re10k_scene(tmp_path, "s", images, c2w, fxfycxcy, depth, valid)
    scale = json.loads(meta_path.read_text())["depth_scale"]
    # What `gen-nvs render` / `sample` write: no depth (here NaN) is stored as 0.
    missing = torch.where(valid, depth, torch.full_like(depth, math.nan))
    assert fit_depth_scale(missing) == scale
    for i in range(2):
        write_depth(tmp_path / f"{i}.png", missing[i], scale)
        stored = tmp_path / "depths" / "s" / f"{i:05d}.png"
        assert (tmp_path / f"{i}.png").read_bytes() == stored.read_bytes()
    with pytest.raises(ValueError, match="exceeds 65535"):
        write_depth(tmp_path / "far.png", depth[0], 4 * scale)


def test_re10k_writer_is_byte_deterministic(tmp_path):
    scene = make_scene(seed=3)
    for name in ("a", "b"):
        write_re10k_scene(tmp_path / name, "s0", *scene)
        write_re10k_scene(tmp_path / name, "s1", *make_scene(v=2, seed=4)[:3])
        write_full_list(tmp_path / name)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert not (tmp_path / "a" / "depths" / "s1").exists()


def test_re10k_writer_rejects_bad_input(tmp_path):
    images, c2w, fxfycxcy, depth, _ = make_scene(v=2)
    with pytest.raises(ValueError, match="file name"):
        write_re10k_scene(tmp_path, "a/b", images, c2w, fxfycxcy)
    bad = c2w.clone()
    bad[1, :3, :3] = 0
    with pytest.raises(ValueError, match="not a proper rotation"):
        write_re10k_scene(tmp_path, "s", images, bad, fxfycxcy)
    with pytest.raises(ValueError, match="exceeds 65535"):
        write_re10k_scene(tmp_path, "s", images, c2w, fxfycxcy, depth, depth_scale=1e5)


def test_re10k_dataset_resizes_and_samples_deterministically(tmp_path):
    for i in range(3):
        images, c2w, fxfycxcy, depth, valid = make_scene(v=10, seed=i)
        write_re10k_scene(tmp_path, f"s{i}", images, c2w, fxfycxcy, depth, valid)
    write_full_list(tmp_path)
    kwargs = dict(image_hw=(8, 8), num_sources=2, num_targets=2, frame_gap=(3, 6))
    dataset = RE10KDataset(tmp_path, seed=1, **kwargs)
    again = RE10KDataset(tmp_path, seed=1, **kwargs)
    assert len(dataset) == 3
    sample = dataset[1]
    assert sample.scene == "s1" and sample.images.shape == (4, 3, 8, 8)
    assert sample.depth.shape == (4, 8, 8) and sample.num_sources == 2
    frames = sample.frame_indices.tolist()
    assert 3 <= frames[1] - frames[0] <= 6 and all(frames[0] <= f <= frames[1] for f in frames)
    assert torch.equal(again[1].images, sample.images)
    k = crop_resize_intrinsics(make_scene(v=10, seed=1)[2][frames], (12, 16), (8, 8))
    torch.testing.assert_close(sample.fxfycxcy, k)
    draws = set()
    for epoch in range(5):
        dataset.set_epoch(epoch)
        draws.add(tuple(dataset[1].frame_indices.tolist()))
    assert len(draws) > 1
    wide = RE10KDataset(tmp_path, seed=1, target_margin=3, **kwargs)
    frames = []
    for epoch in range(20):
        wide.set_epoch(epoch)
        frames += [wide[i].frame_indices.tolist() for i in range(3)]
    assert all(max(0, f[0] - 3) <= t <= min(9, f[1] + 3) for f in frames for t in f[2:])
    assert any(t < f[0] or t > f[1] for f in frames for t in f[2:])
    with pytest.raises(ValueError, match="target_margin must be >= 0, got -2"):
        RE10KDataset(tmp_path, seed=1, target_margin=-2, **kwargs)


def test_re10k_short_scenes_are_skipped_or_raise(tmp_path):
    write_re10k_scene(tmp_path, "short", *make_scene(v=2)[:3])
    write_re10k_scene(tmp_path, "long", *make_scene(v=8)[:3])
    write_full_list(tmp_path)
    dataset = RE10KDataset(tmp_path, None, 2, 1, (4, 6))
    assert dataset[dataset.reader.scene_names.index("short")].scene == "long"
    strict = RE10KDataset(tmp_path, None, 2, 1, (4, 6), skip_short_scenes=False)
    with pytest.raises(ValueError, match="scene short has 2 frames; 5 are needed"):
        strict[strict.reader.scene_names.index("short")]
    (tmp_path / "metadata" / "short.json").write_text("[]")  # broken files are never skipped
    with pytest.raises(ValueError, match="short.json: expected a JSON object"):
        dataset[dataset.reader.scene_names.index("short")]


def write_hand_made_re10k(root: Path, frames: list[dict], h: int = 6, w: int = 8) -> Path:
    for k in range(len(frames)):
        write_png(root / "images" / "seq" / f"{k:05d}.png", np.full((h, w, 3), 40 * k, np.uint8))
    meta = root / "metadata" / "seq.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"scene_name": "seq", "frames": frames}))
    (root / "full_list.txt").write_text(f"{meta}\n")  # absolute, as LVSM writes it
    return meta


def good_frame(k: int) -> dict:
    w2c = np.eye(4)
    w2c[:3, 3] = [0.1 * k, 0.0, 1.0]
    return {
        "image_path": f"images/seq/{k:05d}.png",
        "fxfycxcy": [5.0, 5.0, 4.0, 3.0],
        "w2c": w2c.tolist(),
    }


def test_re10k_absolute_and_moved_paths(tmp_path):
    frames = [good_frame(k) for k in range(3)]
    frames[1]["image_path"] = str(tmp_path / "images" / "seq" / "00001.png")
    frames[2]["image_path"] = "/data/elsewhere/re10k/images/seq/00002.png"  # moved since
    write_hand_made_re10k(tmp_path, frames)
    sample = RE10KReader(tmp_path, None).load("seq", [0, 1, 2], num_sources=2)
    assert sample.images[:, 0, 0, 0].mul(255).round().tolist() == [0, 40, 80]
    assert sample.depth is None
    expected = invert_rigid(torch.tensor(frames[2]["w2c"], dtype=torch.float64)).float()
    torch.testing.assert_close(sample.c2w[2], expected)


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (
            lambda f: f.update(image_path="images/seq/nope.png"),
            FileNotFoundError,
            r"frames\[1\]\.image_path.*nope",
        ),
        (
            lambda f: f["w2c"][0].__setitem__(3, float("nan")),
            ValueError,
            r"frames\[1\]\.w2c: contains non-finite",
        ),
        (
            lambda f: f.update(w2c=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
            ValueError,
            r"frames\[1\]\.w2c: expected shape",
        ),
        (
            lambda f: f.update(w2c=[[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
            ValueError,
            r"frames\[1\].*not a proper rotation",
        ),
        (
            lambda f: f.update(fxfycxcy=[5.0, 5.0, 40.0, 3.0]),
            ValueError,
            r"frames\[1\].*outside the 8x6 image",
        ),
        (
            lambda f: f.update(fxfycxcy=[-5.0, 5.0, 4.0, 3.0]),
            ValueError,
            r"frames\[1\].*focal lengths must be positive",
        ),
        (
            lambda f: f.update(fxfycxcy=[0.06, 0.08, 0.5, 0.5]),  # normalised, as raw RE10K
            ValueError,
            r"frames\[1\].*fx=0\.06, fy=0\.08 give a 178\.3 degree field of view on the 8x6",
        ),
        (lambda f: f.update(fxfycxcy="5 5 4 3"), ValueError, r"frames\[1\]\.fxfycxcy: expected"),
        (lambda f: f.pop("w2c"), ValueError, r"frames\[1\]: missing field 'w2c'"),
    ],
)
def test_re10k_bad_frames_raise_naming_file_and_field(tmp_path, edit, error, message):
    frames = [good_frame(k) for k in range(3)]
    edit(frames[1])
    write_hand_made_re10k(tmp_path, frames)
    reader = RE10KReader(tmp_path, (4, 4))
    with pytest.raises(error, match=message) as info:
        reader.load("seq", [0, 1], num_sources=1)
    assert "seq.json" in str(info.value)


def test_re10k_missing_files_and_frames(tmp_path):
    with pytest.raises(FileNotFoundError, match="full_list.txt"):
        RE10KReader(tmp_path, None)
    with pytest.raises(FileNotFoundError, match="seq.json"):
        load_scene(tmp_path, "seq", [0], None)
    write_hand_made_re10k(tmp_path, [good_frame(k) for k in range(3)])
    with pytest.raises(ValueError, match="frame 3 does not exist"):
        load_scene(tmp_path, "seq", [0, 3], None)
    (tmp_path / "metadata" / "seq.json").write_text("{not json")
    with pytest.raises(ValueError, match="seq.json: not valid JSON"):
        load_scene(tmp_path, "seq", [0], None)


def test_re10k_depth_size_mismatch(tmp_path):
    images, c2w, fxfycxcy, depth, valid = make_scene(v=2)
    write_re10k_scene(tmp_path, "s", images, c2w, fxfycxcy, depth, valid)
    write_png(tmp_path / "depths" / "s" / "00001.png", np.ones((3, 3), np.uint16))
    with pytest.raises(ValueError, match=r"frames\[1\]\.depth_path.*3x3"):
        load_scene(tmp_path, "s", [0, 1], None)


# --------------------------------------------------------------------------------------
# pixelSplat chunks
# --------------------------------------------------------------------------------------


def jpeg_bytes(array: np.ndarray) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def pixelsplat_example(key: str, n: int, h: int = 16, w: int = 24, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    w2c = invert_rigid(random_c2w(n, g).double())
    k = torch.tensor([20.0 / w, 22.0 / h, 0.5, 0.45], dtype=torch.float64)
    cameras = torch.cat(
        [k.repeat(n, 1), torch.zeros(n, 2, dtype=torch.float64), w2c[:, :3].reshape(n, 12)], 1
    )
    colours = [np.full((h, w, 3), (30 * i, 100, 200 - 20 * i), np.uint8) for i in range(n)]
    return {
        "key": key,
        "url": "https://example.invalid/video",
        "timestamps": torch.arange(n) * 33_000,
        "cameras": cameras.float(),
        "images": [jpeg_bytes(c) for c in colours],
    }


@pytest.mark.parametrize("with_index", [True, False])
def test_pixelsplat_chunks(tmp_path, with_index):
    chunks = {
        "000000.torch": [pixelsplat_example("aaa", 4), pixelsplat_example("bbb", 3, seed=1)],
        "000001.torch": [pixelsplat_example("ccc", 5, seed=2)],
    }
    for name, examples in chunks.items():
        torch.save(examples, tmp_path / name)
    if with_index:
        index = {e["key"]: name for name, examples in chunks.items() for e in examples}
        (tmp_path / "index.json").write_text(json.dumps(index))
    reader = PixelSplatReader(tmp_path, image_hw=None)
    assert sorted(reader.scene_names) == ["aaa", "bbb", "ccc"]
    assert reader.num_frames("ccc") == 5
    sample = reader.load("bbb", [2, 0], num_sources=1)
    example = chunks["000000.torch"][1]
    assert sample.images.shape == (2, 3, 16, 24)
    torch.testing.assert_close(sample.fxfycxcy[0], torch.tensor([20.0, 22.0, 12.0, 7.2]))
    w2c = torch.eye(4).repeat(2, 1, 1)
    w2c[:, :3] = example["cameras"][[2, 0], 6:].reshape(2, 3, 4)
    torch.testing.assert_close(sample.c2w @ w2c, torch.eye(4).expand(2, 4, 4), atol=1e-5, rtol=0)
    colour = sample.images[0, :, 8, 12] * 255  # JPEG keeps flat colours within a few levels
    assert (colour - torch.tensor([60.0, 100.0, 160.0])).abs().max() < 4
    resized = PixelSplatReader(tmp_path, (8, 8)).load("ccc", [0, 1, 4], num_sources=2)
    assert resized.images.shape == (3, 3, 8, 8) and resized.frame_indices.tolist() == [0, 1, 4]


def test_pixelsplat_bad_cameras_and_images(tmp_path):
    example = pixelsplat_example("aaa", 3)
    example["cameras"][1, 8] = float("inf")
    broken = pixelsplat_example("bbb", 3)
    broken["images"][2] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    short = pixelsplat_example("ccc", 3)
    short["cameras"] = short["cameras"][:, :17]
    wide = pixelsplat_example("ddd", 3)
    wide["cameras"][2, :2] = 0.01  # fx, fy of 0.24 and 0.16 pixels
    torch.save([example, broken, short, wide], tmp_path / "chunk.torch")
    reader = PixelSplatReader(tmp_path, None)
    with pytest.raises(ValueError, match=r"scene ddd\.cameras\[2\]: .* 177\.7 degree field of"):
        reader.load("ddd", [0, 2], 1)
    with pytest.raises(ValueError, match=r"chunk.torch: scene aaa\.cameras: contains non-finite"):
        reader.load("aaa", [0], 1)
    with pytest.raises(ValueError, match=r"scene bbb\.images\[2\]: cannot decode"):
        reader.load("bbb", [0, 2], 1)
    with pytest.raises(ValueError, match=r"scene ccc\.cameras: expected a \[N,18\] tensor"):
        reader.load("ccc", [0], 1)
    with pytest.raises(ValueError, match="frame 7 does not exist"):
        reader.load("bbb", [7], 1)
    (tmp_path / "index.json").write_text(json.dumps({"zzz": "gone.torch"}))
    with pytest.raises(FileNotFoundError, match="gone.torch"):
        PixelSplatReader(tmp_path, None).load("zzz", [0], 1)


# --------------------------------------------------------------------------------------
# nerfstudio transforms.json
# --------------------------------------------------------------------------------------


def test_nerfstudio_opengl_pose_projects_known_point(tmp_path):
    # OpenGL camera at (1, 2, 6), turned 30 degrees about the world y axis.
    a = math.radians(30)
    rotation = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    eye = [1.0, 2.0, 6.0]
    pose = [rotation[i] + [eye[i]] for i in range(3)] + [[0, 0, 0, 1]]
    scene = tmp_path / "1K" / "abc"
    transforms = {
        "fl_x": 80.0,
        "fl_y": 84.0,
        "cx": 31.0,
        "cy": 25.0,
        "w": 64,
        "h": 48,
        "applied_transform": [[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]],
        "frames": [
            {"file_path": "images/frame_00001.png", "transform_matrix": pose},
            {"file_path": "images/frame_00002.png", "transform_matrix": pose, "fl_x": 90.0},
        ],
    }
    (scene).mkdir(parents=True)
    (scene / "transforms.json").write_text(json.dumps(transforms))
    for name in ("frame_00001.png", "frame_00002.png"):
        write_png(scene / "images" / name, np.zeros((48, 64, 3), np.uint8))
        write_png(scene / "images_4" / name, np.zeros((12, 16, 3), np.uint8))

    # A point 5 units in front of the camera (OpenGL looks along -z), up and to the right.
    r = np.array(rotation)
    point = np.array(eye) + r @ np.array([0.5, 0.25, -5.0])
    # OpenGL camera (x, y, z) = (0.5, 0.25, -5) is OpenCV (0.5, -0.25, 5): right and up.
    expected_uv = [80.0 * 0.5 / 5 + 31.0, 84.0 * -0.25 / 5 + 25.0]

    reader = NerfstudioReader(tmp_path, image_hw=None)
    assert reader.scene_names == ["1K/abc"]
    sample = reader.load("1K/abc", [0, 1], num_sources=1)
    uv, z = project_points(
        torch.tensor(point, dtype=torch.float32)[None, None], sample.c2w[:1], sample.fxfycxcy[:1]
    )
    torch.testing.assert_close(uv[0, 0], torch.tensor(expected_uv), atol=1e-4, rtol=0)
    assert z.item() == pytest.approx(5.0, abs=1e-5)
    assert sample.fxfycxcy[1, 0].item() == 90.0  # per-frame value wins

    small = NerfstudioReader(tmp_path, None, image_folder="images_4").load("1K/abc", [0], 1)
    assert small.images.shape == (1, 3, 12, 16)
    torch.testing.assert_close(small.fxfycxcy[0], torch.tensor([20.0, 21.0, 7.75, 6.25]))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("fl_x"), r"frames\[0\]: no focal length 'fl_x'"),
        (lambda t: t.update(cx=float("nan")), r"transforms.json: cx: contains non-finite"),
        (
            lambda t: t["frames"][0].update(transform_matrix=[[1, 0], [0, 1]]),
            r"frames\[0\]\.transform_matrix",
        ),
        (
            lambda t: t["frames"][0]["transform_matrix"][1].__setitem__(1, 0.0),
            r"frames\[0\].*not a proper rotation",
        ),
        (
            lambda t: t.update(fl_x=0.6, fl_y=0.6),  # normalised by the image size
            r"frames\[0\].*fx=0\.6, fy=0\.6 give a 171\.4 degree field of view on the 16x12",
        ),
        (lambda t: t.update(w=100), r"frames\[0\]: the image read is 16x12"),
        (lambda t: t["frames"][0].update(file_path="images/nope.png"), r"nope.png"),
    ],
)
def test_nerfstudio_bad_input(tmp_path, edit, message):
    transforms = {
        "fl_x": 10.0,
        "fl_y": 10.0,
        "cx": 8.0,
        "cy": 6.0,
        "w": 16,
        "h": 12,
        "frames": [{"file_path": "images/0.png", "transform_matrix": np.eye(4).tolist()}],
    }
    edit(transforms)
    (tmp_path / "transforms.json").write_text(json.dumps(transforms))
    write_png(tmp_path / "images" / "0.png", np.zeros((12, 16, 3), np.uint8))
    reader = NerfstudioReader(tmp_path, None)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        reader.load(tmp_path.name, [0], 1)


# --------------------------------------------------------------------------------------
# Evaluation indices
# --------------------------------------------------------------------------------------


def test_eval_index_with_nulls_and_dataset(tmp_path):
    for name, v in (("s0", 6), ("s1", 4)):
        write_re10k_scene(tmp_path / "data", name, *make_scene(v=v)[:3])
    write_full_list(tmp_path / "data")
    index_path = tmp_path / "index.json"
    index_path.write_text(
        json.dumps(
            {
                "s1": {"context": [0, 3], "target": [1, 2, 3]},
                "gone": None,
                "s0": {"context": [5], "target": [0]},
            }
        )
    )
    index = EvalIndex.load(index_path)
    assert [(e.scene, e.context, e.target) for e in index] == [
        ("s1", (0, 3), (1, 2, 3)),
        ("s0", (5,), (0,)),
    ]
    assert index.skipped == ["gone"]
    dataset = EvalDataset(RE10KDataset(tmp_path / "data", (8, 8), 2, 1, (1, 2)), index)
    sample = dataset[0]
    assert sample.scene == "s1" and sample.num_sources == 2 and sample.num_targets == 3
    assert sample.frame_indices.tolist() == [0, 3, 1, 2, 3]
    assert [s.scene for s in dataset] == ["s1", "s0"]
    assert [s.scene for s in EvalDataset(dataset, index, reader_order=True)] == ["s0", "s1"]


def test_eval_index_errors(tmp_path):
    write_re10k_scene(tmp_path / "data", "s0", *make_scene(v=4)[:3])
    write_full_list(tmp_path / "data")
    reader = RE10KReader(tmp_path / "data", None)
    index_path = tmp_path / "re10k_2v.json"
    index_path.write_text(json.dumps({"s0": {"context": [0, 9], "target": [1]}}))
    with pytest.raises(
        ValueError, match=r"re10k_2v.json: scene s0: context frame 9 does not exist"
    ):
        EvalDataset(reader, index_path)[0]
    index_path.write_text(
        json.dumps(
            {"s0": {"context": [0], "target": [1]}, "other": {"context": [0], "target": [1]}}
        )
    )
    with pytest.raises(ValueError, match=r"re10k_2v.json: 1 scene\(s\) not in the dataset: other"):
        EvalDataset(reader, index_path)
    assert EvalDataset(reader, index_path, skip_missing_scenes=True).missing == ["other"]
    index_path.write_text(json.dumps({"s0": {"context": [0, -1], "target": [1]}}))
    with pytest.raises(ValueError, match=r"scene s0: context: frame indices must be non-negative"):
        EvalIndex.load(index_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        EvalIndex.load(tmp_path / "nope.json")


def test_split_with_fewer_targets_than_sources():
    sample = SceneSample(
        images=torch.rand(3, 3, 8, 8),
        c2w=torch.eye(4).repeat(3, 1, 1),
        fxfycxcy=torch.tensor([8.0, 8.0, 4.0, 4.0]).repeat(3, 1),
        num_sources=2,
        scene="s",
        frame_indices=torch.arange(3),
    )
    sources, targets = sample.split()
    assert sources.num_views == 2 and targets.num_views == 1 and targets.num_sources == 0


def test_frames_of_different_sizes_are_named():
    from gen_nvs.data.scene import check_same_size

    check_same_size([torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)], [0, 1], "scene.json")
    with pytest.raises(ValueError, match=r"scene.json: frames \[0, 1\] differ in size"):
        check_same_size([torch.zeros(3, 8, 8), torch.zeros(3, 8, 6)], [0, 1], "scene.json")


def test_mirrored_scenes_are_the_same_geometry_reflected():
    """A mirrored scene is as consistent as the original: its sources warped by its true
    depth into its targets give the mirrored targets, exactly as the original's do."""
    from gen_nvs.data.procedural import generate_scene

    samples = [generate_scene(seed, 4, (32, 32)) for seed in (1, 2)]
    batch = collate_scenes(
        [
            SceneSample(
                images=s.images, c2w=s.c2w, fxfycxcy=s.fxfycxcy, num_sources=2,
                scene=f"scene{i}", frame_indices=torch.arange(4), depth=s.depth,
                depth_valid=torch.ones_like(s.depth, dtype=torch.bool),
            )
            for i, s in enumerate(samples)
        ]
    )  # fmt: skip
    mirrored = mirror_scenes(batch, torch.tensor([True, False]))
    # Only the flagged scene changes; its images and depth are flipped along the width.
    for name in ("images", "c2w", "fxfycxcy", "depth"):
        torch.testing.assert_close(getattr(mirrored, name)[1], getattr(batch, name)[1])
    torch.testing.assert_close(mirrored.images[0], batch.images[0].flip(-1))
    torch.testing.assert_close(mirrored.depth[0], batch.depth[0].flip(-1))

    def warped(b):
        out = backward_warp(
            b.images[:, :2], b.depth[:, :2], b.c2w[:, :2], b.fxfycxcy[:, :2],
            b.depth[:, 2:], b.c2w[:, 2:], b.fxfycxcy[:, 2:], rel_tol=0.02,
        )  # fmt: skip
        return out.colors, out.visible

    colors, visible = warped(batch)
    m_colors, m_visible = warped(mirrored)
    assert visible[0].float().mean() > 0.5
    torch.testing.assert_close(m_visible[0], visible[0].flip(-1))
    torch.testing.assert_close(m_colors[0], colors[0].flip(-1), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="one flag per scene"):
        mirror_scenes(batch, torch.tensor([True]))
