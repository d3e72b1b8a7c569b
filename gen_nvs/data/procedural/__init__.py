"""Procedural RGB-D scenes: analytic primitives ray-cast in pure PyTorch.

A scene is a ground plane, optional walls, a few objects (spheres, boxes and cylinders
at arbitrary orientations) with procedural solid textures, a directional light with cast
shadows and an ambient term, and a sky. Cameras follow a rig: an object-centric orbit or
a forward-facing walk (RealEstate10K-like). Every random choice is drawn from one CPU
`torch.Generator` seeded by the scene's seed, so a seed gives the same scene on any
device; rendering then runs on the requested device, all views and rays batched.

World frame: z is up and the ground is the plane z = 0. Cameras use the project's
conventions (OpenCV axes, c2w, `fxfycxcy` in pixels, depth = z along the optical axis).

Modules, in the order a scene is made:
    config    `SceneConfig`: the ranges scenes are drawn from
    draws     uniform numbers and choices from the scene's generator
    cameras   the camera rigs (`sample_cameras`)
    scene     `ProceduralScene`: primitives, materials, light and sky
    layout    drawing a `ProceduralScene` for given cameras (`sample_scene`)
    raycast   nearest hits of rays on the primitives (`cast_rays`)
    shading   normals, textures, light, shadows and sky of camera rays
    render    `render_views`, `generate_scene` and `RenderedViews`
    dataset   `ProceduralDataset`: scenes as `SceneSample`s
"""

from gen_nvs.data.procedural.cameras import orbit_rig, sample_cameras, walk_rig
from gen_nvs.data.procedural.config import (
    OBJECT_KINDS,
    ORBIT_DIRECTIONS,
    RIGS,
    TEXTURES,
    WALLS,
    SceneConfig,
)
from gen_nvs.data.procedural.dataset import ProceduralDataset
from gen_nvs.data.procedural.layout import sample_scene
from gen_nvs.data.procedural.raycast import cast_rays
from gen_nvs.data.procedural.render import (
    RenderedViews,
    generate_scene,
    render_views,
    scene_name,
)
from gen_nvs.data.procedural.scene import ProceduralScene

__all__ = [
    "OBJECT_KINDS",
    "ORBIT_DIRECTIONS",
    "RIGS",
    "TEXTURES",
    "WALLS",
    "ProceduralDataset",
    "ProceduralScene",
    "RenderedViews",
    "SceneConfig",
    "cast_rays",
    "generate_scene",
    "orbit_rig",
    "render_views",
    "sample_cameras",
    "sample_scene",
    "scene_name",
    "walk_rig",
]
