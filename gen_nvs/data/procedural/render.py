"""Rendering procedural scenes: all views and rays of a scene batched on one device, and
`generate_scene`, which draws scene `seed` and renders its rig.

Depth is z along the optical axis. `depth_valid` is all True unless
`SceneConfig.sky_depth_valid` is False, in which case sky pixels are marked invalid (as in
real data, where the sky has no measured depth).

Dimension legend: `v` views, `h`/`w` image height/width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gen_nvs.data.procedural.cameras import sample_cameras
from gen_nvs.data.procedural.config import SceneConfig
from gen_nvs.data.procedural.layout import sample_scene
from gen_nvs.data.procedural.scene import ProceduralScene
from gen_nvs.data.procedural.shading import shade_rays
from gen_nvs.data.scene import SceneSample
from gen_nvs.geometry.cameras import camera_rays


@dataclass
class RenderedViews:
    """Rendered RGB-D views of one scene.

    Fields:
        images [v, 3, h, w] in [0, 1]; depth [v, h, w] (z in the camera frame);
        depth_valid [v, h, w] bool; points [v, h, w, 3] world-frame surface points;
        c2w [v, 4, 4]; fxfycxcy [v, 4]; seed: the scene's seed.
    """

    images: Tensor
    depth: Tensor
    depth_valid: Tensor
    points: Tensor
    c2w: Tensor
    fxfycxcy: Tensor
    seed: int

    def to_sample(self, num_sources: int, order: list[int] | None = None) -> SceneSample:
        """A `SceneSample` of the views in `order` (default: as rendered), the first
        `num_sources` of them sources."""
        order = list(range(self.images.shape[0])) if order is None else order
        index = torch.tensor(order, dtype=torch.long, device=self.images.device)
        return SceneSample(
            images=self.images[index],
            c2w=self.c2w[index],
            fxfycxcy=self.fxfycxcy[index],
            num_sources=num_sources,
            scene=scene_name(self.seed),
            frame_indices=index.cpu(),
            depth=self.depth[index],
            depth_valid=self.depth_valid[index],
        )


def scene_name(seed: int) -> str:
    """The name of the procedural scene with this seed."""
    return f"procedural_{seed:08d}"


def render_views(
    scene: ProceduralScene,
    c2w: Tensor,
    fxfycxcy: Tensor,
    image_hw: tuple[int, int],
    shadows: bool = True,
    sky_depth_valid: bool = True,
    chunk_rays: int = 1 << 17,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ray-cast views of `scene` on the scene's device.

    Args:
        c2w [v, 4, 4], fxfycxcy [v, 4] (moved to the scene's device, float32).
        chunk_rays: rays traced together (bounds memory; chunks span views).
    Returns:
        images [v, 3, h, w], depth [v, h, w], depth_valid [v, h, w], points [v, h, w, 3].
    """
    device = scene.plane_normal.device
    c2w = c2w.to(device, torch.float32)
    fxfycxcy = fxfycxcy.to(device, torch.float32)
    v, (h, w) = c2w.shape[0], image_hw
    d_cam = camera_rays(fxfycxcy, h, w).reshape(v, h * w, 3)  # z = 1: t is depth
    d = (d_cam @ c2w[:, :3, :3].transpose(1, 2)).reshape(-1, 3)
    o = c2w[:, None, :3, 3].expand(v, h * w, 3).reshape(-1, 3)
    pixel_angle = (1.0 / fxfycxcy[:, :1]).expand(v, h * w).reshape(-1)

    rgb = torch.empty(v * h * w, 3, device=device)
    depth = torch.empty(v * h * w, device=device)
    hit = torch.empty(v * h * w, dtype=torch.bool, device=device)
    for start in range(0, v * h * w, chunk_rays):
        part = slice(start, start + chunk_rays)
        rgb[part], depth[part], hit[part] = shade_rays(
            scene, o[part], d[part], pixel_angle[part], shadows
        )
    points = o + depth[:, None] * d
    valid = torch.ones_like(hit) if sky_depth_valid else hit
    images = rgb.reshape(v, h, w, 3).permute(0, 3, 1, 2).contiguous()
    return images, depth.reshape(v, h, w), valid.reshape(v, h, w), points.reshape(v, h, w, 3)


def generate_scene(
    seed: int,
    num_views: int,
    image_hw: tuple[int, int] = (128, 128),
    config: SceneConfig | None = None,
    device: torch.device | str = "cpu",
) -> RenderedViews:
    """Draw procedural scene `seed` and render `num_views` views of its camera rig.

    Deterministic per seed: the same seed gives the same scene and cameras on every
    device (pixels agree up to float rounding across devices).
    """
    config = SceneConfig() if config is None else config
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    if len(image_hw) != 2 or min(image_hw) < 1:
        raise ValueError(f"image_hw must be two positive sizes, got {image_hw}")
    gen = torch.Generator().manual_seed(seed)
    c2w, fxfycxcy = sample_cameras(gen, config, num_views, image_hw)
    scene = sample_scene(gen, config, c2w).to(device)
    images, depth, valid, points = render_views(
        scene, c2w, fxfycxcy, image_hw, config.shadows, config.sky_depth_valid
    )
    return RenderedViews(
        images=images,
        depth=depth,
        depth_valid=valid,
        points=points,
        c2w=c2w.to(device, torch.float32),
        fxfycxcy=fxfycxcy.to(device, torch.float32),
        seed=seed,
    )
