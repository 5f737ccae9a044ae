"""Random scenes: 1-3 coloured solids or people on an optional floor, a camera, a light, a prompt.

`sample_scene(seed)` is deterministic and does not depend on the image size: the same seed renders
the same scene at any resolution. `sample_scene(seed, include)` is another scene, just as fixed,
whose first object is one of the `include` kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from cnet.synth import palette
from cnet.synth.humanoid import random_person
from cnet.synth.shapes import Cone, Cylinder, Solid, Sphere, box, pyramid

KINDS = ("sphere", "cube", "cylinder", "cone", "pyramid", "person")
COUNT_CDF = np.cumsum([0.3, 0.4, 0.3])  # 1, 2 or 3 objects
BACKGROUNDS, FLOORS = tuple(palette.BACKGROUND_COLORS), tuple(palette.FLOOR_COLORS)
MIN_CONTRAST = 70  # per-channel difference between an object's colour and what is behind it
TAN_HALF_FOV = np.tan(np.radians(20))
FLOOR_DEPTH = 40.0  # the ground plane ends here, which draws the horizon
# The prompt names the wall only when it fills at least this share of the image's height: a
# camera looking down can frame the floor alone, and a caption cannot name an unseen colour.
MIN_WALL_SHARE = 0.02


@lru_cache(maxsize=8)
def _pixel_grid(size: int, tan_half_fov: float) -> np.ndarray:
    u = ((np.arange(size) + 0.5) / size * 2 - 1) * tan_half_fov
    grid = np.empty((size, size, 3))
    grid[..., 0] = u[None, :]
    grid[..., 1] = -u[:, None]
    grid[..., 2] = 1.0
    return grid


@dataclass(frozen=True)
class Camera:
    eye: np.ndarray  # (3,) world position
    rotation: np.ndarray  # (3, 3) columns: right, up, forward in world coordinates; no roll
    tan_half_fov: float

    def rays(self, size: int) -> np.ndarray:
        """(size, size, 3) world directions through pixel centres, scaled to camera-z = 1."""
        return cv2.transform(_pixel_grid(size, self.tan_half_fov), self.rotation)

    def project(self, points: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (x = column, y = row, continuous, pixel centres at .5) and depth."""
        cam = (np.atleast_2d(points) - self.eye) @ self.rotation
        depth = cam[:, 2]
        scale = size / 2 / self.tan_half_fov / depth
        xy = np.stack([size / 2 + cam[:, 0] * scale, size / 2 - cam[:, 1] * scale], axis=1)
        return xy, depth


@dataclass(frozen=True)
class Scene:
    seed: int
    objects: tuple[Solid, ...]  # left to right in the image
    background: str  # name in palette.BACKGROUND_COLORS
    floor: str | None  # name in palette.FLOOR_COLORS, None: no ground plane drawn
    camera: Camera
    light: np.ndarray  # (3,) unit vector towards the light, world coordinates
    include: tuple[str, ...] = ()  # sample_scene(seed, include) drew it

    @property
    def prompt(self) -> str:
        names = [_describe(obj) for obj in self.objects]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        if self.floor is None:
            return f"{listed} on a {self.background} background"
        if self.wall_share < MIN_WALL_SHARE:
            return f"{listed} on a {self.floor} floor"
        return f"{listed} on a {self.floor} floor against a {self.background} background"

    @property
    def wall_share(self) -> float:
        """Share of the image's height above the floor's far edge (1 with no floor), at any size."""
        if self.floor is None:
            return 1.0
        camera = self.camera
        up, forward = camera.rotation[1, 1], camera.rotation[1, 2]  # world heights of the axes
        # the image height (camera units) whose ray meets the ground FLOOR_DEPTH away
        edge = (-camera.eye[1] / FLOOR_DEPTH - forward) / up
        share = (camera.tan_half_fov - edge) / (2 * camera.tan_half_fov)
        return float(np.clip(share, 0.0, 1.0))

    def attributes(self) -> dict:
        """The structured description behind the prompt (JSON-serialisable)."""
        drawn_with = {"include": list(self.include)} if self.include else {}
        return {
            "seed": self.seed,
            **drawn_with,
            "background": self.background,
            "floor": self.floor,
            "objects": [
                {
                    "kind": obj.kind,
                    "color": obj.color,
                    "seg_class": palette.SEG_CLASS[obj.kind],
                    "position": [round(float(x), 4) for x in obj.base],
                    "yaw": round(float(obj.yaw), 4),
                }
                for obj in self.objects
            ],
        }


def _describe(obj: Solid) -> str:
    if obj.kind == "person":
        return f"a person in {obj.color}"
    article = "an" if obj.color[0] in "aeiou" else "a"
    return f"{article} {obj.color} {obj.kind}"


@lru_cache(maxsize=64)
def _visible_colors(background: str, floor: str | None) -> tuple[str, ...]:
    """Object colours that stand out from the background and the floor."""
    behind = [palette.BACKGROUND_COLORS[background]]
    if floor is not None:
        behind.append(palette.FLOOR_COLORS[floor])
    return tuple(
        name
        for name, rgb in palette.OBJECT_COLORS.items()
        if all(palette.contrast(rgb, other) >= MIN_CONTRAST for other in behind)
    )


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    """A uniform choice: the draw rng.choice(options) makes, without its ~20 us of checks."""
    return options[rng.integers(len(options))]


def _camera(rng: np.random.Generator, count: int) -> Camera:
    pitch = rng.uniform(0.12, 0.45)
    distance = rng.uniform(4.3, 5.3) + 1.1 * (count - 1)
    forward = np.array([0.0, -np.sin(pitch), np.cos(pitch)])
    up = np.array([0.0, np.cos(pitch), np.sin(pitch)])
    target = np.array([0.0, 0.6, 0.4])
    rotation = np.stack([[1.0, 0.0, 0.0], up, forward], axis=1)
    return Camera(target - distance * forward, rotation, TAN_HALF_FOV)


def _solid(rng: np.random.Generator, kind: str, color: str, base: np.ndarray) -> Solid:
    albedo = np.array(palette.OBJECT_COLORS[color]) / 255
    yaw = rng.uniform(0, np.pi / 2)
    if kind == "sphere":
        return Sphere(kind, color, albedo, base, 0.0, radius=rng.uniform(0.45, 0.7))
    if kind == "cube":
        return box(kind, color, albedo, base, yaw, half=rng.uniform(0.38, 0.58))
    if kind == "cylinder":
        return Cylinder(
            kind, color, albedo, base, yaw, rng.uniform(0.3, 0.5), rng.uniform(0.7, 1.5)
        )
    if kind == "cone":
        return Cone(kind, color, albedo, base, yaw, rng.uniform(0.4, 0.6), rng.uniform(0.9, 1.5))
    if kind == "pyramid":
        return pyramid(
            kind, color, albedo, base, yaw, rng.uniform(0.45, 0.65), rng.uniform(0.8, 1.3)
        )
    facing = rng.uniform(-0.9, 0.9)  # turned at most ~50 degrees away from the camera
    return random_person(rng, color, albedo, base, facing, scale=rng.uniform(0.95, 1.15))


def _first_fit(
    camera: Camera, centers: np.ndarray, radius: float, placed: list[tuple[np.ndarray, float]]
) -> tuple[int, tuple[np.ndarray, float]] | None:
    """Index and screen disc of the first candidate bounding sphere that lands inside the frame
    (with a margin) and overlaps no placed object's disc much; discs are in image widths."""
    xy, depth = camera.project(centers, 1)
    r = radius / depth / camera.tan_half_fov / 2
    inside = (xy - r[:, None] >= 0.02) & (xy + r[:, None] <= 0.98)
    ok = inside[:, 0] & inside[:, 1]
    for other, r_other in placed:
        dx, dy = (xy - other).T
        ok &= np.sqrt(dx * dx + dy * dy) >= 0.75 * (r + r_other)
    hits = np.flatnonzero(ok)
    if not len(hits):
        return None
    return int(hits[0]), (xy[hits[0]], r[hits[0]])


def sample_scene(seed: int, include: tuple[str, ...] = ()) -> Scene:
    rng = np.random.default_rng(seed)
    # the draw rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]) makes
    count = 1 + int(COUNT_CDF.searchsorted(rng.random(), side="right"))
    background = _pick(rng, BACKGROUNDS)
    floor = _pick(rng, FLOORS) if rng.random() < 0.5 else None
    colors = _visible_colors(background, floor)
    camera = _camera(rng, count)
    spread = 0.8 + 0.9 * (count - 1)
    placed: list[Solid] = []
    discs: list[tuple[np.ndarray, float]] = []
    while len(placed) < count:
        kind = _pick(rng, include if include and not placed else KINDS)
        color = _pick(rng, colors)
        if any(obj.kind == kind and obj.color == color for obj in placed):
            continue
        solid = _solid(rng, kind, color, np.zeros(3))
        center, radius = solid.bounding_sphere()
        bases = np.zeros((64, 3))
        bases[:, 0] = rng.uniform(-spread, spread, 64)
        bases[:, 2] = rng.uniform(-0.8, 1.6, 64)
        fit = _first_fit(camera, center + bases, radius, discs)
        if fit is not None:
            placed.append(solid.moved(bases[fit[0]]))
            discs.append(fit[1])
        elif placed:  # no room left for another object in this view
            count -= 1
    order = np.argsort([xy[0] for xy, _ in discs], kind="stable")
    placed = [placed[i] for i in order]
    elevation, azimuth = rng.uniform(0.5, 1.2), rng.uniform(-2.4, -0.7)
    light = np.array(
        [
            np.cos(elevation) * np.cos(azimuth),
            np.sin(elevation),
            np.cos(elevation) * np.sin(azimuth),
        ]
    )
    return Scene(seed, tuple(placed), background, floor, camera, light, include)
