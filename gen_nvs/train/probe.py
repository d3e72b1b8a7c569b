"""Two numbers every training run logs, on a fixed held-out batch of procedural scenes.

- copy PSNR: the model renders its *source* views at their own cameras. A model that
  uses its sources geometrically reproduces them almost exactly; one that has only
  learned a scene-level prior (layout, colours) scores no better than on novel views.
- novel PSNR: views the sources did not see, between them ("interp") and beyond them
  ("extrap").
- mirror novel PSNR: the same novel views of the same scenes reflected left-right
  (`gen_nvs.geometry.cameras.mirror_cameras`). The world has no handedness; a model that
  scores lower here has learned one from its training rigs (the procedural orbits all run
  counter-clockwise) rather than geometry.

The scenes are drawn on the fly from seeds far from any training seed (by default the
held-out set `gen-nvs make-scenes --seed 1000000` writes, views 0 and 3 as sources and
1, 2, 4, 5 as targets, as in configs/eval/procedural64-test.json), so every run, on any
machine, is measured on the same views. PSNR is per image, then averaged.

Dimension legend:
    b   scenes    s   source views    t   target views    h, w   image size
"""

from __future__ import annotations

import torch
from torch import Tensor

from gen_nvs.data.procedural import generate_scene
from gen_nvs.geometry.cameras import mirror_cameras
from gen_nvs.models.nvs import NVSModel


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of [..., 3, h, w] images in [0, 1] -> [...], capped at 100 dB.

    The same figure as `gen_nvs.eval.metrics.psnr` with `PSNR_MAX_DB`; not imported from
    there because `gen_nvs.eval` loads LPIPS and diffusers, 6 s at every training start.
    """
    mse = (pred.clamp(0, 1) - target).square().flatten(-3).mean(-1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


class Probe:
    """The copy probe and held-out PSNR of a model on `num_scenes` fixed scenes.

    sources, targets: frame indices of each scene's camera rig (targets between the
    first and last source count as "interp", the others as "extrap").
    """

    def __init__(
        self,
        *,
        num_scenes: int,
        image_hw: tuple[int, int],
        seed: int = 1_000_000,
        sources: tuple[int, ...] = (0, 3),
        targets: tuple[int, ...] = (1, 2, 4, 5),
        device: torch.device | str = "cpu",
    ) -> None:
        if num_scenes < 1 or not sources or not targets:
            raise ValueError(
                f"the probe needs scenes, sources and targets, got {num_scenes} scenes, "
                f"sources {list(sources)}, targets {list(targets)}"
            )
        num_views = max(*sources, *targets) + 1
        views = [generate_scene(seed + i, num_views, image_hw) for i in range(num_scenes)]
        self.images = torch.stack([v.images for v in views]).to(device)  # (b, v, 3, h, w)
        self.c2w = torch.stack([v.c2w for v in views]).to(device)
        self.fxfycxcy = torch.stack([v.fxfycxcy for v in views]).to(device)
        # The same scenes reflected left-right, made once as the originals are.
        self.mirror_images = self.images.flip(-1)
        self.mirror_c2w, self.mirror_fxfycxcy = mirror_cameras(self.c2w, self.fxfycxcy, image_hw[1])
        self.sources, self.targets = list(sources), list(targets)
        low, high = min(sources), max(sources)
        self.interp = torch.tensor([low < t < high for t in targets])

    @torch.no_grad()
    def __call__(self, model: NVSModel) -> dict[str, float]:
        """{"probe/copy_psnr", "probe/novel_psnr", "probe/interp_psnr",
        "probe/extrap_psnr", "probe/mirror_novel_psnr"} (dB) for `model` as it is (eval
        mode is the caller's).

        A model with a warp refiner also gets "probe/decoder_copy_psnr" and
        "probe/decoder_novel_psnr", its decoder's own render before the refiner: at a
        source's camera the warp returns the source itself, so the refined copy probe
        says more about the refiner than about the decoder."""
        s, t = self.sources, self.targets
        h, w = self.images.shape[-2:]
        scene = model.encode(self.images[:, s], self.c2w[:, s], self.fxfycxcy[:, s])
        copy = model.render(scene, self.c2w[:, s], self.fxfycxcy[:, s], (h, w))
        novel = model.render(scene, self.c2w[:, t], self.fxfycxcy[:, t], (h, w))
        novel_psnr = psnr(novel.rgb.float(), self.images[:, t])  # (b, t)
        result = {
            "probe/copy_psnr": psnr(copy.rgb.float(), self.images[:, s]).mean(),
            "probe/novel_psnr": novel_psnr.mean(),
        }
        if self.interp.any():
            result["probe/interp_psnr"] = novel_psnr[:, self.interp].mean()
        if (~self.interp).any():
            result["probe/extrap_psnr"] = novel_psnr[:, ~self.interp].mean()
        images, c2w, fxfycxcy = self.mirror_images, self.mirror_c2w, self.mirror_fxfycxcy
        mirrored = model.encode(images[:, s], c2w[:, s], fxfycxcy[:, s])
        mirror_novel = model.render(mirrored, c2w[:, t], fxfycxcy[:, t], (h, w))
        result["probe/mirror_novel_psnr"] = psnr(mirror_novel.rgb.float(), images[:, t]).mean()
        if novel.decoder_rgb is not None:
            decoder_copy = psnr(copy.decoder_rgb.float(), self.images[:, s])
            result["probe/decoder_copy_psnr"] = decoder_copy.mean()
            result["probe/decoder_novel_psnr"] = psnr(
                novel.decoder_rgb.float(), self.images[:, t]
            ).mean()
        return {name: float(value) for name, value in result.items()}
