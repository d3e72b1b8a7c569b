"""`NVSPipeline`: the toolkit in one object, as diffusers' pipelines are. The CLI
commands, the app, `gen-nvs eval` and the benchmarks run their model work through it.

    from gen_nvs.pipeline import NVSPipeline, SamplingConfig

    pipe = NVSPipeline.from_pretrained()              # the embedded default model
    scene = pipe.encode(["a.png", "b.png"], cameras="cameras.json")  # or pose-free
    views = pipe.render(scene, pipe.trajectory(scene, "orbit", frames=8))
    samples = pipe.sample(scene, pipe.view(scene, azimuth=30), SamplingConfig(samples=4))
    pipe.save_pretrained("my-model")                  # model.safetensors, config.json, README.md

A `Scene` knows its own geometry: the source cameras (given, or the camera head's
estimate for pose-free input, with its estimated intrinsics), the image size, and the
render of the sources (made once, when first needed: the focus, the unseen mask). Sources
are image files, or a `SourceViews` of tensors already loaded (eval, benchmarks). Targets
are `TargetCameras` (world or scene frame, with their intrinsics); `targets`,
`trajectory`, `view` and `cameras_file` build them. `SamplingConfig` holds the sampling
options with the project's one set of defaults.

Dimension legend: `s` source views, `t` target views, `n` samples, `h`/`w` image size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gen_nvs.geometry.rgbd import points_to_depth
from gen_nvs.inputs import (
    DEFAULT_RESOLUTION,
    SourceViews,
    TargetCameras,
    TargetSpec,
    default_intrinsics,
    first_image_size,
    load_source_views,
    render_size,
    scene_focus,
    target_cameras,
)
from gen_nvs.models.decoder import DecoderOutput
from gen_nvs.models.nvs import DEFAULT_MODEL_DIR, EncodedScene, NVSModel, load_model_or_default
from gen_nvs.models.nvs import save_model as save_export
from gen_nvs.rendering import Progress, no_progress, render_targets
from gen_nvs.sampling import SampledViews, SamplingConfig, StepCallback, sample_views
from gen_nvs.unseen import PREDICTED_REL_TOL, unseen_region

__all__ = ["NVSPipeline", "SamplingConfig", "Scene", "Views"]


@dataclass(eq=False)
class Scene:
    """Encoded sources of one scene that know their geometry.

    encoded: the model's EncodedScene (caches); views: the sources as encoded (images
    [s, 3, h, w], names); source_c2w [s, 4, 4] in the scene's normalised frame and
    source_fxfycxcy [s, 4] in pixels of `image_hw` (CPU): given, or estimated by the camera
    head (pose-free; the default field of view `gen_nvs.inputs.DEFAULT_FOV_DEG` where its
    estimate is unusable, as an untrained head's zero field of view); None when unknown.
    model: the model that encoded it (renders the sources when first needed).
    """

    encoded: EncodedScene
    views: SourceViews
    image_hw: tuple[int, int]
    source_c2w: Tensor | None
    source_fxfycxcy: Tensor | None
    model: NVSModel = field(repr=False)

    @property
    def posed(self) -> bool:
        return self.encoded.posed

    @cached_property
    def source_render(self) -> DecoderOutput | None:
        """The model's render of the source cameras ([1, s, ...], normalised frame, on the
        model's device), made once on first use: the focus, the unseen mask and the app's
        point cloud read it. None when the source cameras are unknown or the model has no
        point head (nothing reads it then)."""
        c2w = self.encoded.source_c2w
        if c2w is None or self.model.decoder.point_head is None:
            return None
        fxfycxcy = self.source_fxfycxcy[None].to(c2w)
        with torch.no_grad():
            return self.model.render(self.encoded, c2w, fxfycxcy, self.image_hw, normalized=True)

    @cached_property
    def focus(self) -> float:
        """The median depth (normalised units) seen from source 0: the distance to the
        point orbits and views turn about (`gen_nvs.inputs.scene_focus`)."""
        return scene_focus(
            self.model, self.encoded, self.image_hw, self.source_fxfycxcy,
            sources=self.source_render,
        )  # fmt: skip

    def focused(self, spec: TargetSpec) -> TargetSpec:
        """`spec` with the scene's focus where it turns about one and gives none."""
        if spec.focus is not None or spec.kind in ("cameras", "keyframes"):
            return spec
        return dataclasses.replace(spec, focus=self.focus)


@dataclass
class Views:
    """A regression render of t targets: rgb [t, 3, h, w] in [0, 1]; depth [t, h, w] (z in
    each target camera, scene units of the given cameras), points [t, h, w, 3] (scene
    frame) and confidence [t, h, w], None without a point head; output: the model's
    render they come from ([1, t, ...], what `sample_views` and `unseen_region` take)."""

    rgb: Tensor
    depth: Tensor | None
    points: Tensor | None
    confidence: Tensor | None
    output: DecoderOutput = field(repr=False)

    @classmethod
    def of(cls, out: DecoderOutput, scene: Scene, targets: TargetCameras) -> Views:
        """The views of a render ([1, t, ...]) of `targets` against `scene`."""
        if out.points is None:
            return cls(rgb=out.rgb[0], depth=None, points=None, confidence=None, output=out)
        c2w = targets.scene_c2w(scene.encoded).to(out.points)
        depth = points_to_depth(out.points[0], c2w) * scene.encoded.scale[0].item()
        return cls(out.rgb[0], depth, out.points[0], out.conf[0], out)


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
        """An export folder, `hf://org/repo[/subdir]`, or None / "default" for the embedded
        default model."""
        default = path is None or str(path) == "default"
        return cls(load_model_or_default(None if default else path, device), device)

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
        images: SourceViews | Sequence[str | Path] | str | Path,
        cameras: str | Path | None = None,
        *,
        size: tuple[int, int] | None = None,
        resolution: int = DEFAULT_RESOLUTION,
    ) -> Scene:
        """Source image files (or a folder) and their cameras (a RealEstate10K metadata
        JSON; None: pose-free) -> Scene. `size` (h, w) or, without it, the first image's
        aspect at about `resolution`^2 pixels. Or sources already loaded: a `SourceViews`
        (images [s, 3, h, w] with their cameras, or none), as the loaders give them."""
        if isinstance(images, SourceViews):
            if cameras is not None:
                raise ValueError("SourceViews carry their own cameras; give no cameras file")
            views = images
        else:
            paths = [images] if isinstance(images, (str, Path)) else list(images)
            image_hw = size or render_size(
                first_image_size(paths), resolution, self.model.patch_size
            )
            views = load_source_views(paths, cameras, image_hw)
        encoded = self.model.encode(*views.batch(self.device))
        # Pose-free: the camera head's estimate, intrinsics included (an untrained head's
        # zero field of view gives none: the default one then); None without a camera head.
        source_c2w = fxfycxcy = None
        if encoded.source_c2w is not None:
            source_c2w = encoded.source_c2w[0].cpu()
            fxfycxcy = encoded.source_fxfycxcy[0].cpu()
            if not (torch.isfinite(fxfycxcy).all() and (fxfycxcy[:, :2] > 0).all()):
                fxfycxcy = default_intrinsics(views.image_hw).expand_as(fxfycxcy).clone()
        return Scene(encoded, views, views.image_hw, source_c2w, fxfycxcy, self.model)

    def targets(self, scene: Scene, spec: TargetSpec) -> TargetCameras:
        """The target cameras `spec` describes (`gen_nvs.inputs.TargetSpec`), turning about
        the scene's focus unless the spec gives one."""
        return target_cameras(
            scene.focused(spec), scene.image_hw, scene.source_c2w, scene.source_fxfycxcy
        )

    def trajectory(
        self, scene: Scene, name: str = "orbit", frames: int = 8, distance: float | None = None
    ) -> TargetCameras:
        """A trajectory preset (`gen_nvs.geometry.trajectories`) around source 0."""
        spec = TargetSpec(trajectory=name, frames=frames, trajectory_distance=distance)
        return self.targets(scene, spec)

    def view(
        self, scene: Scene, azimuth: float = 0.0, elevation: float = 0.0, *, source: int = 0
    ) -> TargetCameras:
        """One camera turned about the focus point in front of source `source`."""
        spec = TargetSpec(azimuth_deg=azimuth, elevation_deg=elevation, from_source=source)
        return self.targets(scene, spec)

    def cameras_file(self, scene: Scene, path: str | Path) -> TargetCameras:
        """Target cameras from a RealEstate10K metadata JSON (the --cameras frame)."""
        return self.targets(scene, TargetSpec(cameras=path))

    # ----------------------------------------------------------------------------------
    # Rendering and sampling
    # ----------------------------------------------------------------------------------

    @torch.no_grad()
    def render(
        self,
        scene: Scene,
        targets: TargetCameras,
        progress: Progress = no_progress,
        out_device: torch.device | str = "cpu",
    ) -> Views:
        """The regression render of every target (from the scene's cache, a few views per
        decoder call: `gen_nvs.rendering.render_targets`), on `out_device`. progress:
        called with (fraction done, what) as the chunks finish."""
        out = render_targets(
            self.model, scene.encoded, targets, scene.image_hw, self.device, progress, out_device
        )
        return Views.of(out, scene, targets)

    @torch.no_grad()
    def sample(
        self,
        scene: Scene,
        targets: TargetCameras,
        config: SamplingConfig | None = None,
        *,
        callback: StepCallback | None = None,
        regression: Views | None = None,
        mask: Tensor | None = None,
        **options: Any,
    ) -> SampledViews:
        """`config.samples` diffusion samples of every target (`sample_views`).

        callback: called after every solver step with a `samplers.StepInfo`; returning
            `samplers.STOP` cancels (`samplers.SamplingCancelled`).
        regression: the targets' `render` when the caller has it (not rendered again).
        mask: [1, t, h, w] in [0, 1], 1 = generate, instead of the computed one (with
            `config.mask` "auto").
        options: the further options of `sample_views` (conf_threshold, mask_tolerance,
            guidance_rescale, guidance_interval, resample_jumps, max_batch, memory_budget).
        """
        config = config or SamplingConfig()
        c2w, fxfycxcy = targets.batch(self.device)
        k = None if scene.source_fxfycxcy is None else scene.source_fxfycxcy[None]
        # The sources' render only where a computed mask reads it.
        sources = scene.source_render if mask is None and config.mask != "off" else None
        known = None if regression is None else regression.output.to(self.device)
        return sample_views(
            self.model, scene.encoded, c2w, fxfycxcy, scene.image_hw,
            normalized=targets.normalized, num_samples=config.samples, seed=config.seed,
            scheduler=config.sampler, steps=config.steps, eta=config.eta,
            guidance_scale=config.guidance, mask_mode=config.mask, noise=config.noise,
            patch_shift=config.patch_shift,
            source_fxfycxcy=None if k is None else k.to(self.device),
            sources=sources, regression=known, mask=mask, callback=callback, **options,
        )  # fmt: skip

    @torch.no_grad()
    def unseen(
        self, scene: Scene, targets: TargetCameras, views: Views, rel_tol: float = PREDICTED_REL_TOL
    ) -> Tensor | None:
        """bool [t, h, w] on the views' device: the target pixels no source saw, as the
        sampler's "auto" mask finds them before its soft edge (`gen_nvs.unseen.
        unseen_region`: the targets' regressed points against the sources' depth); None
        without source cameras or a point head."""
        if scene.source_render is None:
            return None
        device = views.rgb.device
        unseen = unseen_region(
            self.model, scene.encoded, views.output,
            targets.scene_c2w(scene.encoded)[None].to(device), targets.fxfycxcy[None].to(device),
            scene.image_hw, source_fxfycxcy=scene.source_fxfycxcy[None],
            sources=scene.source_render, rel_tol=rel_tol,
        )  # fmt: skip
        return None if unseen is None else unseen[0]


def _short_card(model: NVSModel) -> str:
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    sampling = "regression and diffusion sampling" if model.can_sample else "regression"
    return (
        "---\nlibrary_name: gen-nvs\ntags: [novel-view-synthesis]\n---\n\n"
        f"# gen-nvs model\n\n{millions:.1f} M parameters; {sampling}.\n\n"
        "```python\nfrom gen_nvs.pipeline import NVSPipeline\n"
        'pipe = NVSPipeline.from_pretrained("hf://ORG/REPO")\n```\n'
    )
