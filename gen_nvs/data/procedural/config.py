"""How procedural scenes are drawn: `SceneConfig` and the choices it offers."""

from __future__ import annotations

from dataclasses import dataclass, fields

RIGS = ("orbit", "walk", "mixed")
WALLS = ("none", "back", "room", "random")
ORBIT_DIRECTIONS = ("ccw", "both")
TEXTURES = ("solid", "checkers", "stripes", "noise", "gradient")
OBJECT_KINDS = ("sphere", "box", "cylinder")


@dataclass(frozen=True)
class SceneConfig:
    """How procedural scenes are drawn. Ranges are inclusive (low, high) pairs.

    Sizes are in world units (the objects are roughly 0.5 to 2 units across), angles
    in degrees, `fov_deg` is the horizontal field of view.
    """

    num_objects: tuple[int, int] = (3, 7)
    object_kinds: tuple[str, ...] = OBJECT_KINDS
    object_size: tuple[float, float] = (0.3, 0.9)  # bounding-sphere radius
    scene_radius: float = 2.5
    walls: str = "random"  # none | back | room | random (each scene picks one)
    wall_distance: tuple[float, float] = (4.5, 8.0)
    wall_height: tuple[float, float] = (1.5, 4.0)
    textures: tuple[str, ...] = TEXTURES
    rig: str = "mixed"  # orbit | walk | mixed (each scene picks one)
    fov_deg: tuple[float, float] = (50.0, 75.0)
    orbit_radius: tuple[float, float] = (4.0, 6.5)
    orbit_elevation_deg: tuple[float, float] = (5.0, 40.0)
    orbit_arc_deg: tuple[float, float] = (40.0, 180.0)
    # "ccw": every orbit turns counter-clockwise seen from above (the scenes every dataset
    # and evaluation so far was drawn with); "both": each orbit picks its way at random, so
    # the rig's motion has no handedness for a model to learn (`data.mirror` does the
    # same by reflecting scenes).
    orbit_direction: str = "ccw"
    walk_length: tuple[float, float] = (0.75, 3.5)
    walk_height: tuple[float, float] = (0.7, 1.8)
    walk_turn_deg: tuple[float, float] = (-20.0, 20.0)
    light_elevation_deg: tuple[float, float] = (25.0, 70.0)
    ambient: tuple[float, float] = (0.2, 0.45)
    shadows: bool = True
    sky_radius: float = 100.0
    sky_depth_valid: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], str):
                if value[0] > value[1]:
                    raise ValueError(f"SceneConfig.{f.name}: empty range {value}")
        if self.num_objects[0] < 0:
            raise ValueError(f"SceneConfig.num_objects must be >= 0, got {self.num_objects}")
        if min(self.object_size) <= 0 or self.scene_radius <= 0:
            raise ValueError("SceneConfig: object_size and scene_radius must be positive")
        for name, value, allowed in (
            ("rig", (self.rig,), RIGS),
            ("orbit_direction", (self.orbit_direction,), ORBIT_DIRECTIONS),
            ("walls", (self.walls,), WALLS),
            ("textures", self.textures, TEXTURES),
            ("object_kinds", self.object_kinds, OBJECT_KINDS),
        ):
            unknown = [x for x in value if x not in allowed]
            if unknown or not value:
                raise ValueError(
                    f"SceneConfig.{name}: {value} is not a non-empty choice of {allowed}"
                )
        if not (0 < self.fov_deg[0] and self.fov_deg[1] < 180):
            raise ValueError(f"SceneConfig.fov_deg must lie in (0, 180), got {self.fov_deg}")
        if self.sky_radius <= 4 * max(self.wall_distance[1], self.orbit_radius[1]):
            raise ValueError(
                f"SceneConfig.sky_radius {self.sky_radius} must be far beyond the walls and cameras"
            )
