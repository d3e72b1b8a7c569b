"""`NVSPipeline`: the toolkit in one object, as diffusers' pipelines are.

    from gen_nvs.pipeline import NVSPipeline, SamplingConfig

    pipe = NVSPipeline.from_pretrained()              # the embedded default model
    scene = pipe.encode(["a.png", "b.png"], cameras="cameras.json")  # or pose-free
    views = pipe.render(scene, pipe.trajectory(scene, "orbit", frames=8))
    samples = pipe.sample(scene, pipe.view(scene, azimuth=30), SamplingConfig(samples=4))
    pipe.save_pretrained("my-model")                  # model.safetensors, config.json, README.md

A `Scene` knows its own geometry: the source cameras (given, or the camera head's
estimate for pose-free input, with its estimated intrinsics), the image size, and the
render of the sources (made once, at encoding). Targets are `TargetCameras` (world or scene
frame, with their intrinsics); `trajectory`, `view` and `cameras_file` build them.
`SamplingConfig` holds the sampling options with the project's one set of defaults.

Dimension legend: `s` source views, `t` target views, `n` samples, `h`/`w` image size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from gen_nvs.inputs import (
    DEFAULT_RESOLUTION,
    SourceViews,
    TargetCameras,
    TargetSpec,
    first_image_size,
    load_source_views,
    render_size,
    scene_focus,
    target_cameras,
)
from gen_nvs.models.decoder import DecoderOutput
from gen_nvs.models.nvs import DEFAULT_MODEL_DIR, EncodedScene, NVSModel, load_model_or_default
from gen_nvs.models.nvs import save_model as save_export
from gen_nvs.rendering import render_targets
from gen_nvs.sampling import SampledViews, SamplingConfig, sample_views

__all__ = ["NVSPipeline", "SamplingConfig", "Scene", "Views"]


@dataclass
class Scene:
    """Encoded sources of one scene that know their geometry.

    encoded: the model's EncodedScene (caches); views: the loaded sources (images [s, 3, h,
    w], names); source_c2w [s, 4, 4] in the scene's normalised frame and source_fxfycxcy
    [s, 4] in pixels of `image_hw`: given, or estimated by the camera head (pose-free);
    None when unknown. focus: distance to the point orbits look at. source_render: the
    model's render of the source cameras (the unseen mask of sampling uses it), None when
    they are unknown.
    """

    encoded: EncodedScene
    views: SourceViews
    image_hw: tuple[int, int]
    source_c2w: Tensor | None
    source_fxfycxcy: Tensor | None
    focus: float
    source_render: DecoderOutput | None = field(default=None, repr=False)

    @property
    def posed(self) -> bool:
        return self.encoded.posed


@dataclass
class Views:
    """A regression render of t targets: rgb [t, 3, h, w] in [0, 1]; depth [t, h, w] (z in
    each target camera, scene units of the given cameras), points [t, h, w, 3] (scene
    frame) and confidence [t, h, w], None without a point head."""

    rgb: Tensor
    depth: Tensor | None
    points: Tensor | None
    confidence: Tensor | None


class NVSPipeline:
    """Load a model once; encode scenes; render and sample their novel views."""

    def __init__(self, model: NVSModel, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)

    # ----------------------------------------------------------------------------------
    # Loading and saving
    # ----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, device: torch.device | str = "cpu"
    ) -> NVSPipeline:
        """An export folder, `hf://org/repo[/subdir]`, or None for the embedded default."""
        return cls(load_model_or_default(None if path is None else path, device), device)

    def save_pretrained(self, directory: str | Path, card: str | None = None) -> Path:
        """Write the Hub layout: `model.safetensors`, `config.json` (model config and the
        noise schedule the samplers build on) and `README.md` (the model card: `card`, or
        the embedded model's when this is it, or a short one)."""
        out = save_export(self.model, directory)
        if card is None:
            default = DEFAULT_MODEL_DIR / "README.md"
            card = default.read_text() if default.is_file() else _short_card(self.model)
        (out / "README.md").write_text(card)
        return out

    def push_to_hub(self, repo_id: str, *, private: bool = True, token: str | None = None) -> str:
        """Upload `save_pretrained`'s folder to a Hub model repo; -> its URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model")
        return str(commit)

    # ----------------------------------------------------------------------------------
    # Scenes and targets
    # ----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self,
        images: list[str | Path] | str | Path,
        cameras: str | Path | None = None,
        *,
        size: tuple[int, int] | None = None,
        resolution: int = DEFAULT_RESOLUTION,
    ) -> Scene:
        """Source image files (or a folder) and their cameras (a RealEstate10K metadata
        JSON; None: pose-free) -> Scene. `size` (h, w) or, without it, the first image's
        aspect at about `resolution`^2 pixels."""
        paths = [images] if isinstance(images, (str, Path)) else list(images)
        patch = self.model.patch_size
        image_hw = size or render_size(first_image_size(paths), resolution, patch)
        views = load_source_views(paths, cameras, image_hw)
        encoded = self.model.encode(*views.batch(self.device))
        # Pose-free: the camera head's estimate, intrinsics included (no default field of
        # view); both None without a camera head.
        source_c2w = fxfycxcy = sources = None
        if encoded.source_c2w is not None:
            source_c2w = encoded.source_c2w[0].cpu()
            fxfycxcy = encoded.source_fxfycxcy[0].cpu()
            sources = self.model.render(  # once: the focus, the unseen mask and clouds
                encoded, encoded.source_c2w, encoded.source_fxfycxcy, image_hw, normalized=True
            )
        focus = scene_focus(self.model, encoded, image_hw, fxfycxcy, sources=sources)
        return Scene(encoded, views, image_hw, source_c2w, fxfycxcy, focus, sources)

    def trajectory(
        self, scene: Scene, name: str = "orbit", frames: int = 8, distance: float | None = None
    ) -> TargetCameras:
        """A trajectory preset (`gen_nvs.geometry.trajectories`) around source 0."""
        spec = TargetSpec(
            trajectory=name, frames=frames, trajectory_distance=distance, focus=scene.focus
        )
        return self._targets(scene, spec)

    def view(
        self, scene: Scene, azimuth: float = 0.0, elevation: float = 0.0, *, source: int = 0
    ) -> TargetCameras:
        """One camera turned about the focus point in front of source `source`."""
        spec = TargetSpec(
            azimuth_deg=azimuth, elevation_deg=elevation, from_source=source, focus=scene.focus
        )
        return self._targets(scene, spec)

    def cameras_file(self, scene: Scene, path: str | Path) -> TargetCameras:
        """Target cameras from a RealEstate10K metadata JSON (the --cameras frame)."""
        return self._targets(scene, TargetSpec(cameras=path))

    def _targets(self, scene: Scene, spec: TargetSpec) -> TargetCameras:
        return target_cameras(spec, scene.image_hw, scene.source_c2w, scene.source_fxfycxcy)

    # ----------------------------------------------------------------------------------
    # Rendering and sampling
    # ----------------------------------------------------------------------------------

    @torch.no_grad()
    def render(self, scene: Scene, targets: TargetCameras) -> Views:
        """The regression render of every target (from the scene's cache)."""
        out = render_targets(self.model, scene.encoded, targets, scene.image_hw, self.device)
        return _views(out, scene, targets)

    @torch.no_grad()
    def sample(
        self, scene: Scene, targets: TargetCameras, config: SamplingConfig | None = None
    ) -> SampledViews:
        """`config.samples` diffusion samples of every target (`sample_views`)."""
        config = config or SamplingConfig()
        c2w, fxfycxcy = targets.batch(self.device)
        k = None if scene.source_fxfycxcy is None else scene.source_fxfycxcy[None]
        return sample_views(
            self.model, scene.encoded, c2w, fxfycxcy, scene.image_hw,
            normalized=targets.normalized, num_samples=config.samples, seed=config.seed,
            scheduler=config.sampler, steps=config.steps, eta=config.eta,
            guidance_scale=config.guidance, mask_mode=config.mask, noise=config.noise,
            source_fxfycxcy=None if k is None else k.to(self.device),
            sources=scene.source_render,
        )  # fmt: skip


def _views(out: DecoderOutput, scene: Scene, targets: TargetCameras) -> Views:
    from gen_nvs.geometry.rgbd import points_to_depth

    rgb = out.rgb[0]
    if out.points is None:
        return Views(rgb=rgb, depth=None, points=None, confidence=None)
    c2w = targets.scene_c2w(scene.encoded).to(out.points)
    depth = points_to_depth(out.points[0], c2w) * scene.encoded.scale[0].item()
    return Views(rgb=rgb, depth=depth, points=out.points[0], confidence=out.conf[0])


def _short_card(model: NVSModel) -> str:
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    sampling = "regression and diffusion sampling" if model.can_sample else "regression"
    return (
        "---\nlibrary_name: gen-nvs\ntags: [novel-view-synthesis]\n---\n\n"
        f"# gen-nvs model\n\n{millions:.1f} M parameters; {sampling}.\n\n"
        "```python\nfrom gen_nvs.pipeline import NVSPipeline\n"
        'pipe = NVSPipeline.from_pretrained("hf://ORG/REPO")\n```\n'
    )
