"""`ProceduralScene`: the drawn description of one scene (primitives, materials, light
and sky) that the ray caster and the shader read."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class ProceduralScene:
    """Everything a renderer needs: primitives, materials, light and sky.

    Primitives are numbered planes first, then objects; objects are sorted by kind
    (OBJECT_KINDS order). Material rows follow the primitive numbering. Rotations
    hold an object's local axes as columns (local -> world); a cylinder's axis is
    its local z.

    Fields (n planes, m objects, p = n + m primitives):
        plane_normal [n, 3] (unit, facing the visible side), plane_offset [n]: the
            plane is normal . x = offset; planes are seen from the front only and
            end at height plane_top [n] (inf for the ground; walls are finite so
            that they do not shade the whole room).
        object_kind [m] (index into OBJECT_KINDS), object_center [m, 3],
        object_rotation [m, 3, 3], object_size [m, 3]: sphere (r, r, r), box half
        extents, cylinder (r, r, half height); object_bound [m]: bounding-sphere
        radius around the centre.
        color_a, color_b [p, 3]: the two colours of each texture.
        texture [p] (index into TEXTURES), frequency [p] (texture cycles per unit),
        texture_dir [p, 3] (stripes / gradient direction, texture frame),
        noise_seed [p], texture_origin [p, 3], texture_rotation [p, 3, 3]: the
        texture's frame (textures stick to their object).
        light_dir [3] (towards the light, unit), light_color [3], ambient [].
        sky_horizon, sky_zenith [3]; sky_radius [].
    """

    plane_normal: Tensor
    plane_offset: Tensor
    plane_top: Tensor
    object_kind: Tensor
    object_center: Tensor
    object_rotation: Tensor
    object_size: Tensor
    object_bound: Tensor
    color_a: Tensor
    color_b: Tensor
    texture: Tensor
    frequency: Tensor
    texture_dir: Tensor
    noise_seed: Tensor
    texture_origin: Tensor
    texture_rotation: Tensor
    light_dir: Tensor
    light_color: Tensor
    ambient: Tensor
    sky_horizon: Tensor
    sky_zenith: Tensor
    sky_radius: Tensor

    def to(self, device: torch.device | str) -> ProceduralScene:
        """A copy on `device`, floats in float32 (integer fields stay int64)."""

        def move(x: Tensor) -> Tensor:
            return x.to(device, torch.float32) if x.is_floating_point() else x.to(device)

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    @property
    def num_planes(self) -> int:
        return self.plane_normal.shape[0]

    @property
    def num_objects(self) -> int:
        return self.object_kind.shape[0]
