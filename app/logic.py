"""What the app does, apart from its layout, so that it can be tested without a browser.

An `Engine` holds the pipeline (`gen_nvs.pipeline.NVSPipeline`: the model, shared by every
visitor, which does all the model work) and the example scenes; a `Session` holds one
visitor's encoded scene (the pipeline's `Scene`). Sources are encoded once per input set
(the bytes of the images and the cameras, and the pose-free switch) and kept in the
session, so that changing the target camera, the mode or the sampling options re-renders
from the cache.

Anything a visitor can get wrong raises ValueError (or FileNotFoundError) with a message
fit for the page; the layout shows it and keeps the earlier results. A cancelled sampling
run raises `samplers.SamplingCancelled`.

Dimension legend: `s` source views, `t` target views, `n` samples, `h`/`w` render size.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

import samplers
from app import visuals
from gen_nvs.data.procedural import generate_scene, scene_name
from gen_nvs.data.re10k import write_re10k_scene
from gen_nvs.geometry import rgbd
from gen_nvs.inputs import (
    MAX_VIEWS,
    SourceViews,
    TargetCameras,
    TargetSpec,
    first_image_size,
    load_source_views,
    render_size,
)
from gen_nvs.models.decoder import DecoderOutput
from gen_nvs.models.nvs import NVSModel, require_diffusion
from gen_nvs.options import check_render_size
from gen_nvs.outputs import (
    colorize_depth,
    fit_depth_scale,
    to_pil,
    write_cameras,
    write_depth,
    write_gif,
    write_gray,
    write_mp4,
    write_regression,
    write_rgb,
)
from gen_nvs.pipeline import NVSPipeline, Scene, Views
from gen_nvs.rendering import Progress, no_progress
from gen_nvs.sampling import SamplingConfig, scene_to_world

MODES = ("Regression", "Sampling")
TARGET_KINDS = ("Single view", "Trajectory video")
# Page wording -> `sample_views` mask mode.
COMPLETION = {"complete occluded regions only": "auto", "generate freely": "off"}
# Presets that set sensible controls at once, as generative NVS demos offer; a preset
# names only what it sets (the rest stays as the visitor left it).
PRESETS: dict[str, dict[str, object]] = {
    "Quick look: one view (regression)": dict(kind="Single view", mode="Regression"),
    "Orbit video (regression)": dict(
        kind="Trajectory video", mode="Regression", trajectory="orbit", frames=16
    ),
    "Complete the unseen parts (sampling)": dict(
        kind="Single view", mode="Sampling", steps=20, samples=4, guidance=1.0,
        completion="complete occluded regions only",
    ),
    "Imagine freely (sampling)": dict(
        kind="Single view", mode="Sampling", steps=30, samples=4, guidance=2.0,
        completion="generate freely",
    ),
    "Sampled fly-through (video)": dict(
        kind="Trajectory video", mode="Sampling", trajectory="dolly-in", frames=8, steps=20,
        samples=1,
    ),
}  # fmt: skip
EXAMPLE_SEEDS = (0, 1, 4)  # procedural scenes that read well at 64x64
EXAMPLE_VIEWS = 3
MAX_CLOUD_POINTS = 60_000
SOURCE_COLOR, TARGET_COLOR = (40, 90, 230), (245, 140, 20)  # frusta in the 3D viewer
# The 3D viewer is y-up; scene points use OpenCV axes (y down, z forward).
_VIEWER_AXES = torch.tensor([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Example:
    """A procedural example scene on disk: source PNGs and their cameras JSON."""

    name: str
    images: list[Path]
    cameras: Path
    thumbnail: Path


@dataclass(frozen=True)
class CameraControls:
    """The page's target-camera controls.

    kind: one of TARGET_KINDS. A single view turns from source `from_source` (0-based) by
    `azimuth_deg` right and `elevation_deg` up about the point the scene's focus distance
    in front of it, at `distance` times that distance. A video follows `trajectory` for
    `frames` frames shown at `fps`.
    """

    kind: str = TARGET_KINDS[0]
    from_source: int = 0
    azimuth_deg: float = 0.0
    elevation_deg: float = 0.0
    distance: float = 1.0
    trajectory: str = "orbit"
    frames: int = 12
    fps: float = 8.0

    def spec(self, focus: float) -> TargetSpec:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"unknown target kind {self.kind!r}, expected one of {TARGET_KINDS}")
        if self.kind == TARGET_KINDS[0]:
            if not self.distance > 0:
                raise ValueError(f"distance must be positive, got {self.distance}")
            return TargetSpec(
                azimuth_deg=self.azimuth_deg,
                elevation_deg=self.elevation_deg,
                distance=self.distance * focus,
                from_source=self.from_source,
                focus=focus,
            )
        return TargetSpec(trajectory=self.trajectory, frames=self.frames, focus=focus)


@dataclass(frozen=True)
class SamplingControls:
    """The page's sampling controls; `completion` is a key of COMPLETION."""

    scheduler: str = SamplingConfig.sampler
    steps: int = SamplingConfig.steps
    guidance_scale: float = SamplingConfig.guidance
    num_samples: int = 2  # the page's default: quick on a CPU
    seed: int = SamplingConfig.seed
    completion: str = next(iter(COMPLETION))

    @property
    def mask_mode(self) -> str:
        if self.completion not in COMPLETION:
            raise ValueError(f"unknown completion {self.completion!r}, expected {list(COMPLETION)}")
        return COMPLETION[self.completion]

    def check(self) -> None:
        """ValueError naming an option sampling cannot run with."""
        self.config()

    def config(self, num_views: int = 1) -> SamplingConfig:
        """The pipeline's sampling options (checked): `num_samples` samples of a single
        view, one sample of every frame of a video."""
        return SamplingConfig(
            sampler=self.scheduler,
            steps=self.steps,
            guidance=self.guidance_scale,
            samples=self.num_samples if num_views == 1 else 1,
            seed=self.seed,
            mask=self.mask_mode,
        )


@dataclass
class LoadedScene:
    """One input set, encoded.

    key: the input set's identity (content hash); scene: the pipeline's Scene (the encoded
    sources, their cameras, the render size: the first photo's aspect, see
    `Engine.render_size`); focus: the median depth seen from source 0 (normalised units);
    seconds: how long encoding took (the sources' render included); cameras_name: the
    cameras file's name (None when pose-free).
    """

    key: str
    scene: Scene
    focus: float
    seconds: float
    cameras_name: str | None = None

    @property
    def views(self) -> SourceViews:
        return self.scene.views

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.scene.image_hw

    @property
    def source_fxfycxcy(self) -> Tensor | None:
        """[s, 4] in pixels of the renders (the camera head's estimate when pose-free)."""
        return self.scene.source_fxfycxcy

    @property
    def sources(self) -> DecoderOutput | None:
        """The render of the source cameras ([1, s, ...]) for the unseen mask and the point
        cloud; None when the source cameras are unknown or the model has no point head."""
        return self.scene.source_render

    @property
    def source_c2w(self) -> Tensor:
        """[s, 4, 4] source cameras in the normalised frame (the first one alone, as the
        identity, when unknown)."""
        if self.scene.source_c2w is None:
            return torch.eye(4)[None]
        return self.scene.source_c2w


@dataclass
class Session:
    """One visitor's state: the encoded scene and a cancel flag the Cancel button sets
    while a sampling run (another handler, same object) polls it."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    loaded: LoadedScene | None = None
    cancel_requested: bool = False
    runs: int = 0


@dataclass
class Outputs:
    """One run's results (None: not produced by this run; the page keeps what it shows).

    gallery: (image, caption) pairs: the view, or the samples then the regression render.
    cloud_view: PLY for the 3D viewer (normalised frame, y up); cloud_ply: PLY to download,
    in the frame of the given cameras (the first camera's when pose-free). video: MP4
    (H.264) of a trajectory. export: a zip of everything the run made (views, samples,
    depth, unseen masks, PLY, cameras JSON, MP4 and GIF).
    """

    gallery: list[tuple[Image.Image, str]] | None = None
    depth: Image.Image | None = None
    unseen: Image.Image | None = None
    cloud_view: Path | None = None
    cloud_ply: Path | None = None
    video: Path | None = None
    export: Path | None = None
    plot: Image.Image | None = None
    status: str = ""


class Engine:
    """The pipeline and the example scenes, shared by all sessions.

    pipe: the NVSPipeline (its model and device); image_hw: the size sources are resized
    to and views rendered at (multiples of the patch size); workdir: where examples and
    each session's output files go.
    """

    def __init__(
        self,
        pipe: NVSPipeline,
        workdir: str | Path,
        *,
        image_hw: tuple[int, int] = (64, 64),
        model_name: str = "the embedded default model",
    ) -> None:
        # `gen-nvs app --size`: checked as render's, before the examples are made at it.
        check_render_size(tuple(image_hw), pipe.model.patch_size)
        self.pipe = pipe
        self.device = pipe.device
        self.image_hw = tuple(image_hw)
        self.workdir = Path(workdir)
        self.examples = make_examples(self.workdir / "examples", self.image_hw)
        self.model_name = model_name

    @property
    def model(self) -> NVSModel:
        return self.pipe.model

    @property
    def can_sample(self) -> bool:
        return self.model.can_sample

    def model_note(self) -> str:
        """One line on the model in use: which, its size, resolution and abilities."""
        h, w = self.image_hw
        millions = sum(p.numel() for p in self.model.parameters()) / 1e6
        can = "regression and sampling" if self.can_sample else "regression only"
        return (
            f"**Model:** {self.model_name} ({millions:.1f} M parameters, {can}); renders {w}x{h} "
            f"(other aspect ratios at about as many pixels) on {self.device.type}."
        )

    def session_dir(self, session: Session) -> Path:
        path = self.workdir / "sessions" / session.id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close_session(self, session: Session | None) -> None:
        """Remove a finished session's output files."""
        if session is not None:
            shutil.rmtree(self.workdir / "sessions" / session.id, ignore_errors=True)

    # ----------------------------------------------------------------------------------
    # Sources
    # ----------------------------------------------------------------------------------

    @torch.no_grad()
    def load(
        self,
        session: Session,
        image_paths: Sequence[str | Path] | None,
        cameras: str | Path | None = None,
        pose_free: bool = False,
        progress: Progress = no_progress,
    ) -> LoadedScene:
        """The session's encoded scene for these inputs: from the cache when the input set
        is unchanged, else loaded, checked and encoded (and cached)."""
        if not image_paths:
            raise ValueError(f"no source images: upload 1-{MAX_VIEWS} images or pick an example")
        cameras = None if pose_free else cameras
        image_hw = self.render_size(image_paths)
        key = input_key(image_paths, cameras, image_hw)
        if session.loaded is not None and session.loaded.key == key:
            return session.loaded
        views = _named_by_file(load_source_views, [*image_paths, cameras])(
            image_paths, cameras, image_hw
        )
        s = views.images.shape[0]
        progress(0.05, f"encoding {s} source view{'s' * (s > 1)}")
        start = time.perf_counter()
        scene = self.pipe.encode(views)
        progress(0.7, "rendering the source views' geometry")
        focus = scene.focus  # renders the sources once: the focus, unseen masks, point cloud
        progress(1.0, "encoded")
        session.loaded = LoadedScene(
            key=key,
            scene=scene,
            focus=focus,
            seconds=time.perf_counter() - start,
            cameras_name=None if cameras is None else Path(cameras).name,
        )
        return session.loaded

    def render_size(self, image_paths: Sequence[str | Path]) -> tuple[int, int]:
        """The first photo's aspect ratio at about the engine's pixel count, both sides
        multiples of the patch (`gen_nvs.inputs.render_size`): a landscape photo stays
        landscape instead of being cropped to the engine's square."""
        h, w = self.image_hw
        first = _named_by_file(first_image_size, image_paths)(image_paths)
        resolution = round(math.sqrt(h * w))
        return render_size(first, resolution, self.model.patch_size)

    def describe(self, loaded: LoadedScene) -> str:
        """One line about the encoded scene, for the page."""
        s = loaded.views.images.shape[0]
        h, w = loaded.image_hw
        cameras = "pose-free (camera head estimate)"
        if loaded.views.posed:
            cameras = f"cameras from {loaded.cameras_name}"
        return (
            f"{s} source view{'s' * (s > 1)} at {w}x{h}, {cameras}; encoded in "
            f"{loaded.seconds:.1f} s, cached for this session."
        )

    # ----------------------------------------------------------------------------------
    # Targets
    # ----------------------------------------------------------------------------------

    def targets(self, loaded: LoadedScene, controls: CameraControls) -> TargetCameras:
        """The target cameras of `controls`, in the scene's normalised frame."""
        return self.pipe.targets(loaded.scene, controls.spec(loaded.focus))

    def plot(self, session: Session, controls: CameraControls) -> Image.Image | None:
        """The camera sketch of the session's scene and targets (None before a scene).
        Targets that cannot be built are left out of the sketch (the run says why)."""
        if session.loaded is None:
            return None
        try:
            target_c2w = self.targets(session.loaded, controls).c2w
        except ValueError:
            target_c2w = None
        h, w = session.loaded.image_hw
        return visuals.camera_plot(session.loaded.source_c2w, target_c2w, aspect=w / h)

    # ----------------------------------------------------------------------------------
    # Rendering and sampling
    # ----------------------------------------------------------------------------------

    def check_mode(self, mode: str) -> None:
        """ValueError unless this checkpoint can run `mode`."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}, expected one of {MODES}")
        if mode == "Sampling":
            require_diffusion(self.model, "this checkpoint")

    @torch.no_grad()
    def run(
        self,
        session: Session,
        controls: CameraControls,
        mode: str = MODES[0],
        sampling: SamplingControls | None = None,
        progress: Progress = no_progress,
    ) -> Outputs:
        """Render (Regression) or sample (Sampling) the targets of `controls` against the
        session's encoded scene (`load` first)."""
        loaded = session.loaded
        if loaded is None:
            raise ValueError(f"no scene yet: upload 1-{MAX_VIEWS} images or pick an example")
        self.check_mode(mode)
        sampling = sampling or SamplingControls()
        if mode == "Sampling":
            sampling.check()
        targets = self.targets(loaded, controls)
        session.runs += 1
        start = time.perf_counter()
        if mode == "Sampling":
            views = self._sample(session, loaded, targets, sampling, progress)
        else:
            views = _Views.of_regression(self.pipe.render(loaded.scene, targets, progress), targets)
        if views.mask is None:
            views.mask = self.pipe.unseen(loaded.scene, targets, views.regression)
        seconds = time.perf_counter() - start

        out = Outputs(plot=self.plot(session, controls))
        stem = self.session_dir(session) / f"{session.runs:04d}"
        if views.points is not None:
            out.cloud_ply, out.cloud_view = self._cloud(loaded, stem, views, targets)
        if controls.kind == TARGET_KINDS[0]:
            out.gallery, out.depth, out.unseen = _view_pictures(views, mode, sampling.seed)
        else:
            frames = [visuals.enlarge(to_pil(frame)) for frame in views.rgb[0]]
            out.video = write_mp4(frames, stem.with_suffix(".mp4"), controls.fps)
            write_gif(frames, stem.with_suffix(".gif"), controls.fps)
        out.export = self._export(loaded, stem, views, targets, out)
        what = _what(mode, targets.num_views, sampling)
        out.status = f"Run {session.runs}: {what} in {seconds:.1f} s."
        return out

    def _sample(
        self,
        session: Session,
        loaded: LoadedScene,
        targets: TargetCameras,
        sampling: SamplingControls,
        progress: Progress,
    ) -> _Views:
        """Draw the samples (a video: one sample of every frame); the Cancel button's flag
        stops them after the current step."""
        session.cancel_requested = False

        def callback(info: samplers.StepInfo) -> samplers.Signal | None:
            progress((info.step + 1) / info.num_steps, f"sampling: step {info.step + 1}")
            return samplers.STOP if session.cancel_requested else None

        progress(0.0, "sampling")
        config = sampling.config(targets.num_views)
        sampled = self.pipe.sample(loaded.scene, targets, config, callback=callback)
        return _Views(
            rgb=sampled.rgb[:, 0].cpu(),
            points=None if sampled.points is None else sampled.points[:, 0].cpu(),
            depth=None if sampled.depth is None else sampled.depth[:, 0].cpu(),
            conf=None,
            regression=Views.of(sampled.regression.to("cpu"), loaded.scene, targets),
            mask=None if sampled.mask is None else sampled.mask[0].cpu(),
            sampled=True,
        )

    def _export(
        self, loaded: LoadedScene, stem: Path, views: _Views, targets: TargetCameras, out: Outputs
    ) -> Path:
        """`stem`-all.zip: every view (regression render, samples), its depth (16-bit PNG
        and coloured) and unseen mask, the point cloud, the target cameras (RealEstate10K
        JSON, the --target-cameras format) and the run's videos."""
        folder = stem.parent / f"{stem.name}-export"
        encoded = loaded.scene.encoded
        depth = views.depth[0] if views.depth is not None else None
        if depth is not None:
            depth = depth * encoded.scale[0].item()  # units of the given cameras
        depth_scale = None if depth is None else fit_depth_scale(depth.flatten())
        folder.mkdir(parents=True, exist_ok=True)
        folders = write_regression(folder, views.regression.rgb, None, None)
        for j, target in enumerate(folders):
            if depth is not None:
                write_depth(target / "depth.png", depth[j], depth_scale)
                colorize_depth(depth[j]).save(target / "depth_color.png")
            if views.mask is not None:
                write_gray(target / "unseen.png", views.mask[j].float())
            if views.sampled:
                for k in range(views.rgb.shape[0]):
                    write_rgb(target / f"sample_{k:02d}_rgb.png", views.rgb[k, j])
        write_cameras(
            folder / "cameras.json", encoded, targets.scene_c2w(encoded), targets.fxfycxcy
        )
        extras = [out.cloud_ply, out.video, out.video and out.video.with_suffix(".gif")]
        for extra in extras:
            if extra is not None and extra.is_file():
                shutil.copy2(extra, folder / extra.name.removeprefix(f"{stem.name}-"))
        (folder / "README.txt").write_text(
            f"gen-nvs app export: {targets.num_views} view(s) of {self.model_name}.\n"
            f"depth.png: 16-bit, depth = value / {depth_scale} (scene units of the given "
            "cameras); unseen.png: white where no source saw; cameras.json: the targets, "
            "RealEstate10K format (gen-nvs render --target-cameras reads it).\n"
        )
        archive = shutil.make_archive(str(stem.parent / f"{stem.name}-all"), "zip", folder)
        shutil.rmtree(folder)
        return Path(archive)

    def _cloud(
        self, loaded: LoadedScene, stem: Path, views: _Views, targets: TargetCameras
    ) -> tuple[Path, Path]:
        """Fuse the sources' and the (first sample's) views' points into two PLYs: one in
        the input world frame to download (the first camera's frame when pose-free), one
        in the normalised frame with y up for the 3D viewer, which also shows the cameras
        as frusta (sources blue, targets orange)."""
        points = views.points[0]  # (t, h, w, 3)
        colors = views.rgb[0].permute(0, 2, 3, 1)  # (t, h, w, 3)
        conf = views.conf
        if loaded.sources is not None:
            points = torch.cat([loaded.sources.points[0].cpu(), points])
            colors = torch.cat([loaded.views.images.permute(0, 2, 3, 1), colors])
            if conf is not None:
                conf = torch.cat([loaded.sources.conf[0].cpu(), conf])
        xyz, rgb = rgbd.fuse_point_clouds(
            points,
            colors,
            conf,
            conf_quantile=None if conf is None else 0.1,
            max_points=MAX_CLOUD_POINTS,
        )
        encoded = loaded.scene.encoded
        world = scene_to_world(encoded, xyz[None].to(encoded.scale.device))[0].cpu()
        ply = rgbd.write_ply(stem.parent / f"{stem.name}-points.ply", world, rgb)
        shown_xyz, shown_rgb = [xyz], [rgb]
        h, w = loaded.image_hw
        size = 0.15 * loaded.focus
        target_c2w = targets.scene_c2w(encoded)
        for c2w, color in ((loaded.source_c2w, SOURCE_COLOR), (target_c2w, TARGET_COLOR)):
            frusta = visuals.frustum_points(c2w.cpu(), size, w / h, color)
            shown_xyz.append(frusta[0])
            shown_rgb.append(frusta[1].to(rgb.dtype) / 255)  # floats in [0, 1] like rgb
        viewer_xyz = torch.cat(shown_xyz) * _VIEWER_AXES
        view = rgbd.write_ply(
            stem.parent / f"{stem.name}-viewer.ply", viewer_xyz, torch.cat(shown_rgb)
        )
        return ply, view


@dataclass
class _Views:
    """One run's views on the CPU: rgb [n, t, 3, h, w] (n samples, or 1: the regression
    render), points [n, t, h, w, 3] and depth [n, t, h, w] (normalised frame) | None, conf
    [t, h, w] | None (regression only), the regression render, the unseen mask [t, h, w]
    (bool, or weights with a soft edge) | None, and whether the views were sampled."""

    rgb: Tensor
    points: Tensor | None
    depth: Tensor | None
    conf: Tensor | None
    regression: Views
    mask: Tensor | None
    sampled: bool = False

    @classmethod
    def of_regression(cls, views: Views, targets: TargetCameras) -> _Views:
        points = None if views.points is None else views.points[None]
        depth = None if points is None else rgbd.points_to_depth(points, targets.c2w[None])
        return cls(
            rgb=views.rgb[None],
            points=points,
            depth=depth,
            conf=views.confidence,
            regression=views,
            mask=None,
        )


def _view_pictures(views: _Views, mode: str, seed: int):
    """(gallery, depth picture | None, unseen overlay | None) of a single-view run."""
    regression = views.regression.rgb[0]
    gallery = [(visuals.enlarge(to_pil(regression)), "regression")]
    if mode == "Sampling":
        samples = [
            (visuals.enlarge(to_pil(view[0])), f"sample {k + 1} (seed {seed + k})")
            for k, view in enumerate(views.rgb)
        ]
        gallery = samples + gallery
    depth = None
    if views.depth is not None:
        depth = visuals.enlarge(colorize_depth(views.depth[0, 0]))
    unseen = None
    if views.mask is not None:
        unseen = visuals.enlarge(visuals.overlay_mask(regression, views.mask[0]))
    return gallery, depth, unseen


def _what(mode: str, num_views: int, sampling: SamplingControls) -> str:
    if mode == "Regression":
        return f"rendered {num_views} view{'s' * (num_views > 1)}"
    if num_views == 1:
        return f"drew {sampling.num_samples} sample(s) x {sampling.steps} steps"
    return f"sampled {num_views} frames x {sampling.steps} steps"


def input_key(
    image_paths: Sequence[str | Path], cameras: str | Path | None, image_hw: tuple[int, int]
) -> str:
    """Identity of an input set: the files' names and bytes, in order, and the size.
    Unreadable paths hash by name only (loading then reports them)."""
    digest = hashlib.sha256(repr(tuple(image_hw)).encode())
    for path in [*image_paths, cameras]:
        digest.update(b"\0" if path is None else Path(path).name.encode() + b"\0")
        if path is not None and Path(path).is_file():
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _named_by_file(fn: Callable, paths: Sequence[str | Path | None]) -> Callable:
    """`fn` with uploaded files named by their file names in its error messages (uploads
    live in temporary folders whose names mean nothing to a visitor)."""

    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as err:
            message = str(err)
            for path in sorted({str(p) for p in paths if p is not None}, key=len, reverse=True):
                message = message.replace(path, Path(path).name)
            raise type(err)(message) from err

    return wrapped


def make_examples(directory: Path, image_hw: tuple[int, int]) -> list[Example]:
    """Write the example scenes (procedural, RealEstate10K layout) and their thumbnails."""
    examples = []
    for seed in EXAMPLE_SEEDS:
        views = generate_scene(seed, EXAMPLE_VIEWS, image_hw)
        name = scene_name(seed)
        cameras = write_re10k_scene(directory, name, views.images, views.c2w, views.fxfycxcy)
        images = sorted((directory / "images" / name).glob("*.png"))
        thumbnail = directory / f"{name}-thumbnail.png"
        visuals.enlarge(to_pil(views.images[0]), 128).save(thumbnail)
        examples.append(Example(name=name, images=images, cameras=cameras, thumbnail=thumbnail))
    return examples
