"""The page: a Gradio Blocks layout wired to `app.logic.Engine`.

Three columns: the source views, the target camera and mode, the results. Handlers only
translate between components and the engine: errors a visitor can fix become `gr.Error`
toasts (the page keeps its other results), a cancelled sampling run a `gr.Warning`. The
page loads nothing from outside the machine (system fonts, no analytics, no share link).
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

# Before gradio is imported: it reads this at import time.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr

import samplers
from app.logic import (
    COMPLETION,
    MODES,
    PRESETS,
    TARGET_KINDS,
    CameraControls,
    Engine,
    SamplingControls,
    Session,
)
from gen_nvs.inputs import MAX_VIEWS, TRAJECTORY_NAMES

# Gradio swaps in a fresh tracker per call; one shared default is enough.
PROGRESS = gr.Progress()
# System fonts only: the default theme would fetch Google Fonts.
THEME = gr.themes.Soft(
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "monospace"],
)
INTRO = f"""# gen-nvs: new views of a scene from a few photos
Pick an example scene, or upload 1-{MAX_VIEWS} photos of one scene with their cameras (a
RealEstate10K metadata JSON) or without (the camera head estimates them). Choose a target
camera and render it: **Regression** is deterministic and fast, **Sampling** draws plausible
completions of what the photos did not show.
"""
SAMPLING_UNAVAILABLE = (
    "**Sampling is not available**: this checkpoint is a regression model (it has no "
    "diffusion decoder). Use Regression, or start the app with a diffusion checkpoint."
)
NO_SCENE = f"No scene yet: upload 1-{MAX_VIEWS} images or pick an example."


def _page_errors(fn):
    """Visitor-fixable errors -> a gr.Error toast; the page keeps its other outputs."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as err:
            raise gr.Error(str(err), print_exception=False) from err

    return wrapped


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------


def _source_panel(engine: Engine) -> SimpleNamespace:
    gr.Markdown("### 1. Source views")
    thumbnails = [(str(ex.thumbnail), str(i + 1)) for i, ex in enumerate(engine.examples)]
    panel = SimpleNamespace(
        examples=gr.Gallery(
            value=thumbnails,
            label="Example scenes (click one)",
            columns=len(thumbnails),
            height=140,
            allow_preview=False,
            interactive=False,
            elem_id="examples",
        ),
        images=gr.File(
            file_count="multiple",
            label=f"Source images (1-{MAX_VIEWS})",
            elem_id="images",
        ),
        cameras=gr.File(
            label="Cameras (RealEstate10K JSON, optional)",
            file_types=[".json"],
            height=100,
            elem_id="cameras",
        ),
        pose_free=gr.Checkbox(
            label="Pose-free: ignore the cameras, let the camera head estimate them",
            elem_id="pose-free",
        ),
        sources=gr.Gallery(
            label="Model inputs",
            columns=4,
            height=130,
            allow_preview=False,
            interactive=False,
            format="png",
            elem_id="sources",
        ),
        info=gr.Markdown(NO_SCENE, min_height=60, elem_id="scene-info"),
    )
    return panel


def _target_panel() -> SimpleNamespace:
    gr.Markdown("### 2. Target camera")
    preset = gr.Dropdown(
        ["Custom", *PRESETS], value="Custom", label="Preset (sets the controls below)",
        elem_id="preset",
    )  # fmt: skip
    kind = gr.Radio(list(TARGET_KINDS), value=TARGET_KINDS[0], label="Target", elem_id="kind")
    with gr.Group(visible=True) as view_group:
        from_source = gr.Dropdown(choices=[("1", 0)], value=0, label="Start from source view")
        azimuth = gr.Slider(-180, 180, value=30, step=5, label="Azimuth ° (+ right)")
        elevation = gr.Slider(-80, 80, value=10, step=5, label="Elevation ° (+ up)")
        distance = gr.Slider(0.25, 3, value=1, step=0.05, label="Distance (× the source's)")
    with gr.Group(visible=False) as video_group:
        trajectory = gr.Dropdown(list(TRAJECTORY_NAMES), value="orbit", label="Trajectory")
        frames = gr.Slider(2, 48, value=12, step=1, label="Frames", elem_id="frames")
        fps = gr.Slider(2, 24, value=8, step=1, label="Frames per second")
    plot = gr.Image(
        label="Cameras",
        interactive=False,
        format="png",
        elem_id="plot",
    )
    return SimpleNamespace(
        preset=preset,
        trajectory=trajectory,
        frames=frames,
        kind=kind,
        view_group=view_group,
        video_group=video_group,
        # In CameraControls order (see `_controls`).
        controls=[kind, from_source, azimuth, elevation, distance, trajectory, frames, fps],
        from_source=from_source,
        plot=plot,
    )


def _mode_panel() -> SimpleNamespace:
    gr.Markdown("### 3. Mode")
    mode = gr.Radio(
        list(MODES),
        value=MODES[0],
        label="Mode",
        info="Regression: deterministic, fast. Sampling: diffusion, several plausible views.",
        elem_id="mode",
    )
    note = gr.Markdown(SAMPLING_UNAVAILABLE, visible=False, elem_id="mode-note")
    with gr.Group(visible=False) as group:
        options = [
            gr.Dropdown(
                list(samplers.SCHEDULER_NAMES), value=SamplingControls.scheduler, label="Sampler"
            ),
            gr.Slider(1, 100, value=20, step=1, label="Steps", elem_id="steps"),
            gr.Slider(0, 10, value=1, step=0.5, label="Guidance scale (1: off)"),
            gr.Slider(1, 8, value=2, step=1, label="Samples", elem_id="samples"),
            gr.Number(value=0, precision=0, minimum=0, label="Seed"),
            gr.Radio(list(COMPLETION), value=next(iter(COMPLETION)), label="Completion"),
        ]
    with gr.Row():
        run = gr.Button("Render view", variant="primary", elem_id="run")
        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
    status = gr.Markdown(min_height=70, elem_id="status")
    return SimpleNamespace(
        mode=mode, note=note, group=group, options=options, run=run, cancel=cancel, status=status
    )


def _output_panel() -> SimpleNamespace:
    with gr.Row():
        gallery = gr.Gallery(
            label="Novel view / samples",
            columns=4,
            height=330,
            preview=True,
            format="png",
            elem_id="views",
        )
        depth = gr.Image(label="Depth (red: near)", format="png", height=330, elem_id="depth")
    with gr.Row():
        unseen = gr.Image(label="Unseen (magenta)", format="png", height=300, elem_id="unseen")
        video = gr.Video(
            label="Trajectory video", height=300, autoplay=True, loop=True, elem_id="video"
        )
    cloud = gr.Model3D(
        label="Fused point cloud (sources and views)",
        clear_color=(0.97, 0.97, 0.97, 1.0),
        height=320,
        elem_id="cloud",
    )
    with gr.Row():
        ply = gr.File(label="Point cloud (PLY, in the frame of the given cameras)", elem_id="ply")
        export = gr.File(
            label="Everything (zip: views, samples, depth, masks, PLY, cameras, videos)",
            elem_id="export",
        )
    return SimpleNamespace(
        gallery=gallery, depth=depth, unseen=unseen, video=video, cloud=cloud, ply=ply,
        export=export, run_outputs=[gallery, depth, unseen, video, cloud, ply, export],
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------


def _controls(kind, source, azimuth, elevation, distance, trajectory, frames, fps):
    return CameraControls(
        kind=kind,
        from_source=int(source or 0),
        azimuth_deg=float(azimuth),
        elevation_deg=float(elevation),
        distance=float(distance),
        trajectory=trajectory,
        frames=int(frames),
        fps=float(fps),
    )


class Handlers:
    """Event handlers of one page. Gradio passes progress trackers and event data only to
    positional parameters, hence the spelled-out camera controls (k, s, az, el, d, tr, n,
    f: the CameraControls fields in order)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def sources(self, session: Session, controls: CameraControls) -> tuple:
        """(sources gallery, scene info, camera plot, source-view choices)."""
        loaded = session.loaded
        if loaded is None:
            return [], NO_SCENE, None, gr.update(choices=[("1", 0)], value=0)
        views = loaded.views
        gallery = [
            (image.permute(1, 2, 0).mul(255).round().byte().numpy(), name)
            for image, name in zip(views.images, views.names, strict=True)
        ]
        choices = [(f"{i + 1}: {name}", i) for i, name in enumerate(views.names)]
        value = controls.from_source if controls.from_source < len(choices) else 0
        return (
            gallery,
            self.engine.describe(loaded),
            self.engine.plot(session, controls),
            gr.update(choices=choices, value=value),
        )

    @_page_errors
    def inputs(self, sess, files, cams, free, k, s, az, el, d, tr, n, f, progress=PROGRESS):
        if files:
            self.engine.load(sess, files, cams, free, progress)
        else:
            sess.loaded = None
        return self.sources(sess, _controls(k, s, az, el, d, tr, n, f))

    @_page_errors
    def example(self, evt: gr.SelectData, sess, free, k, s, az, el, d, tr, n, f, progress=PROGRESS):
        example = self.engine.examples[evt.index]
        files, cams = [str(p) for p in example.images], str(example.cameras)
        self.engine.load(sess, files, cams, free, progress)
        return files, cams, *self.sources(sess, _controls(k, s, az, el, d, tr, n, f))

    def camera(self, sess, *controls):
        return self.engine.plot(sess, _controls(*controls))

    def kind(self, sess, *controls):
        single = controls[0] == TARGET_KINDS[0]
        return (
            gr.update(visible=single),
            gr.update(visible=not single),
            self.engine.plot(sess, _controls(*controls)),
            gr.update(value="Render view" if single else "Render video"),
        )

    def mode(self, chosen):
        sampling, can = chosen == "Sampling", self.engine.can_sample
        if sampling and not can:
            gr.Warning(SAMPLING_UNAVAILABLE.replace("**", ""))
        return gr.update(visible=sampling and can), gr.update(visible=sampling and not can)

    @_page_errors
    def run(
        self, sess, files, cams, free, mode, k, s, az, el, d, tr, n, f,
        scheduler, steps, guidance, samples, seed, completion, progress=PROGRESS,
    ):  # fmt: skip
        """-> (gallery, depth, unseen, video, cloud, ply, export, plot, status)."""
        self.engine.check_mode(mode)
        self.engine.load(sess, files, cams, free, progress)
        sampling = SamplingControls(
            scheduler=scheduler,
            steps=int(steps),
            guidance_scale=float(guidance),
            num_samples=int(samples),
            seed=int(seed or 0),
            completion=completion,
        )
        controls = _controls(k, s, az, el, d, tr, n, f)
        try:
            out = self.engine.run(sess, controls, mode, sampling, progress)
        except samplers.SamplingCancelled as err:
            gr.Warning(f"Sampling cancelled ({err}); the earlier results are kept.")
            return *([gr.skip()] * 8), "Sampling cancelled."
        # A single view's panels and a trajectory's video belong to the run that made
        # them: each run clears the other kind's, so nothing on the page is stale.
        single = out.video is None
        gallery = gr.update(value=out.gallery, selected_index=0) if single else None
        view_panels = [gallery, out.depth, out.unseen] if single else [None, None, None]
        video = None if single else str(out.video)
        cloud = [p and str(p) for p in (out.cloud_view, out.cloud_ply)]
        cloud = [gr.skip() if p is None else p for p in cloud]
        export = str(out.export) if out.export is not None else None
        return *view_panels, video, *cloud, export, out.plot, out.status

    def preset(self, name: str) -> tuple:
        """A preset's values for (kind, mode, trajectory, frames, steps, guidance, samples,
        completion); gr.skip() where the preset leaves a control alone."""
        values = PRESETS.get(name, {})
        names = (
            "kind",
            "mode",
            "trajectory",
            "frames",
            "steps",
            "guidance",
            "samples",
            "completion",
        )
        return tuple(gr.update(value=values[k]) if k in values else gr.skip() for k in names)

    def cancel(self, sess):
        sess.cancel_requested = True
        gr.Info("Cancelling after the current sampling step.")


def build(engine: Engine) -> gr.Blocks:
    """The app's page for `engine`."""
    handlers = Handlers(engine)
    with gr.Blocks(title="gen-nvs") as demo:
        # A factory, not the class: gradio would read a dataclass type as a value.
        session = gr.State(lambda: Session(), delete_callback=engine.close_session)
        gr.Markdown(INTRO)
        gr.Markdown(engine.model_note(), elem_id="model-note")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                src = _source_panel(engine)
            with gr.Column(scale=4, min_width=300):
                tgt = _target_panel()
                mode = _mode_panel()
            with gr.Column(scale=7, min_width=400):
                out = _output_panel()
        _wire(handlers, session, src, tgt, mode, out)
    return demo


def _wire(handlers, session, src, tgt, mode, out) -> None:
    # Model work runs one at a time. Progress (and an error badge) shows on the one-line
    # info and status boxes, so that a failed event never hides earlier results.
    model_work = {"concurrency_id": "model", "concurrency_limit": 1}
    source_outputs = [src.sources, src.info, tgt.plot, tgt.from_source]
    load = [session, src.images, src.cameras, src.pose_free, *tgt.controls]
    for event in (
        src.images.upload,
        src.images.clear,
        src.cameras.upload,
        src.cameras.clear,
        src.pose_free.input,
    ):
        event(handlers.inputs, load, source_outputs, show_progress_on=src.info, **model_work)
    src.examples.select(
        handlers.example,
        [session, src.pose_free, *tgt.controls],
        [src.images, src.cameras, *source_outputs],
        show_progress_on=src.info,
        **model_work,
    )
    for control in tgt.controls[1:]:
        control.change(handlers.camera, [session, *tgt.controls], tgt.plot, show_progress="hidden")
    tgt.kind.change(
        handlers.kind,
        [session, *tgt.controls],
        [tgt.view_group, tgt.video_group, tgt.plot, mode.run],
    )
    mode.mode.change(handlers.mode, mode.mode, [mode.group, mode.note])
    mode.run.click(
        handlers.run,
        [*load[:4], mode.mode, *tgt.controls, *mode.options],
        [*out.run_outputs, tgt.plot, mode.status],
        show_progress_on=mode.status,
        **model_work,
    )
    mode.cancel.click(handlers.cancel, session, None, queue=False)
    _, steps, guidance, samples, _, completion = mode.options
    tgt.preset.input(
        handlers.preset,
        tgt.preset,
        [tgt.kind, mode.mode, tgt.trajectory, tgt.frames, steps, guidance, samples, completion],
    )


def launch(engine: Engine, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the page until interrupted (no share link, no server-side rendering process)."""
    demo = build(engine)
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        theme=THEME,
        allowed_paths=[str(engine.workdir)],
        footer_links=[],
    )
