"""The seven control maps of a rendered scene, drawn in the conventions of `cnet.detectors`.

Where a map can be computed the way the detector computes it from a photo (Canny), the detector's
own code runs on the target image. The others come from the geometry: straight visible edges,
outlines, the skeleton, class labels, depth and normals, drawn with the detectors' palettes and
drawing functions, so a map of a synthetic scene reads like a detector's map of a photo of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import numpy as np

from cnet.detectors.base import resize_map
from cnet.detectors.depth import depth_to_map
from cnet.detectors.edges import CannyDetector
from cnet.detectors.lines import draw_segments
from cnet.detectors.pose import POSE_CANVAS, draw_pose
from cnet.detectors.scribble import thicken
from cnet.detectors.seg import ade20k_color
from cnet.synth import palette
from cnet.synth.render import FLOOR, Render
from cnet.synth.scene import KINDS, Scene

SCRIBBLE_POINTS_PER_EDGE = 8

_canny = CannyDetector()
_SEG_COLORS = {name: ade20k_color(label) for name, label in palette.SEG_CLASS.items()}
_SCRIBBLE_EDGE_STEPS = np.linspace(0.0, 1.0, SCRIBBLE_POINTS_PER_EDGE)[None, :, None]


def _rng(scene: Scene, key: str) -> np.random.Generator:
    """A map's own randomness, seeded by the scene and the map: no map depends on which others
    were drawn."""
    return np.random.default_rng([scene.seed, list(CONDITION_MAPS).index(key)])


def _rgb(gray: np.ndarray) -> np.ndarray:
    """HxW -> HxWx3 (what `as_rgb` gives, ~5x faster)."""
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)


def canny(scene: Scene, render: Render) -> np.ndarray:
    """Canny (100, 200) of the target image, exactly as the Canny detector computes it."""
    return _rgb(_canny.detect(render.rgb))


def horizon_segments(scene: Scene, render: Render) -> np.ndarray:
    """(N, 4) pixel segments along the first row of floor: where it meets the background."""
    if scene.floor is None:
        return np.zeros((0, 4), np.float32)
    rows = np.flatnonzero((render.ids == FLOOR).any(axis=1))
    if not len(rows) or rows[0] == 0:
        return np.zeros((0, 4), np.float32)
    row = int(rows[0])
    steps = np.diff(np.concatenate([[0], (render.ids[row] == FLOOR).astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(steps == 1), np.flatnonzero(steps == -1)
    return np.array([[a, row, b - 1, row] for a, b in zip(starts, stops, strict=True)], np.float32)


def hough(scene: Scene, render: Render) -> np.ndarray:
    """Straight visible edges as 1-pixel white segments, the way M-LSD maps are drawn."""
    size = render.ids.shape[0]
    segments = np.concatenate([render.edges, horizon_segments(scene, render)])
    return _rgb(draw_segments(segments, size, size))


def scribble(scene: Scene, render: Render) -> np.ndarray:
    """Object outlines, straight edges and the horizon redrawn with a wobbly hand and a thick pen,
    as a person sketches the scene (HED or fake_scribble find the horizon in a photo too)."""
    size = render.ids.shape[0]
    scale = size / 128
    step = max(1, round(3 * scale))
    rng = _rng(scene, "scribble")
    strokes: list[np.ndarray] = []
    for index in range(len(scene.objects)):
        mask = render.mask(index).view(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        strokes += [np.append(c[::step, 0], c[:1, 0], axis=0) for c in contours if len(c) > step]
    edges = np.concatenate([render.edges, horizon_segments(scene, render)]).reshape(-1, 2, 2)
    strokes.append(
        (edges[:, :1] + (edges[:, 1:] - edges[:, :1]) * _SCRIBBLE_EDGE_STEPS).reshape(-1, 2)
    )
    canvas = np.zeros((size, size), np.uint8)
    points = np.concatenate(strokes).astype(np.float64)
    if len(points):
        # A hand's wobble: a random walk, band-passed by a moving average over 4 points.
        walk = np.cumsum(rng.normal(0.0, 1.2 * scale, (len(points) + 4, 2)), axis=0)
        points += (walk[4:] - walk[:-4]) / 4
        drawn = np.round(points * 4).astype(np.int32)  # 2 fractional bits for cv2's `shift`
        outline_stop = len(points) - len(edges) * SCRIBBLE_POINTS_PER_EDGE
        bounds = np.cumsum([0] + [len(stroke) for stroke in strokes[:-1]])
        lines = [drawn[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        lines += list(drawn[outline_stop:].reshape(-1, SCRIBBLE_POINTS_PER_EDGE, 2))
        cv2.polylines(canvas, lines, False, 255, thickness=1, shift=2)
    return _rgb(thicken(canvas, int(rng.integers(0, 2)) + round(scale - 1)))


def pose(scene: Scene, render: Render) -> np.ndarray:
    """The OpenPose skeleton of every person (black when there is none)."""
    size = render.ids.shape[0]
    people = render.keypoints
    if not people:
        return np.zeros((size, size, 3), np.uint8)
    scale = max(1.0, POSE_CANVAS / size)
    canvas_size = round(size * scale)
    scaled = [np.concatenate([p[:, :2] * scale, p[:, 2:]], axis=1) for p in people]
    return resize_map(draw_pose(scaled, canvas_size, canvas_size), (size, size))


def seg_colors(scene: Scene) -> np.ndarray:
    """(ids, 3) uint8: the ADE20K colour of the background, floor and each object's class."""
    names = ["background", "floor"] + [obj.kind for obj in scene.objects]
    return np.array([_SEG_COLORS[name] for name in names], np.uint8)


def seg(scene: Scene, render: Render) -> np.ndarray:
    """Every pixel painted with the ADE20K colour of its class."""
    table = np.zeros((256, 1, 3), np.uint8)
    colors = seg_colors(scene)
    table[: len(colors), 0] = colors
    return cv2.LUT(cv2.merge([render.ids] * 3), table)


def depth(scene: Scene, render: Render) -> np.ndarray:
    """Inverse depth min-max scaled, near = bright, as MiDaS maps are (background = 0)."""
    with np.errstate(divide="ignore"):
        disparity = 1.0 / render.depth  # inf -> 0
    return _rgb(depth_to_map(disparity))


def normal(scene: Scene, render: Render) -> np.ndarray:
    """Normals in the control_v11p_sd15_normalbae convention of `cnet.detectors.normal`:
    RGB = (left, up, towards the viewer) * 127.5 + 127.5, rounded down."""
    height, width = render.ids.shape
    # (-x) * 127.5 == x * -127.5 exactly; a whole row of factors keeps numpy's loops long
    row_scale = np.tile(np.array([-127.5, 127.5, 127.5], np.float32), width)
    scaled = render.normals.reshape(height, -1) * row_scale + 127.5
    return scaled.clip(0, 255).astype(np.uint8).reshape(height, width, 3)


# Conditions whose map is blank without one of these kinds of object: pose draws only people.
MAP_BLANK_WITHOUT: dict[str, tuple[str, ...]] = {"pose": ("person",)}
# Conditions whose map shows only some kinds of object: the others are not in it at all. Hough
# draws straight edges, and a sphere has none (its map still holds the horizon).
MAP_SHOWS_ONLY: dict[str, tuple[str, ...]] = {
    **MAP_BLANK_WITHOUT,
    "hough": tuple(kind for kind in KINDS if kind != "sphere"),
}


# A map as first drawn is version 1; a map drawn anew counts up, so that figures scored on the
# old drawing are not paired with the new (scenes.json records it: `cnet eval --into`, `compare`).
MAP_VERSIONS: dict[str, int] = {"scribble": 2}
# What each drawing anew changed, as model cards name it.
MAP_CHANGES: dict[tuple[str, int], str] = {("scribble", 2): "the horizon drawn too"}  # 2026-11-28


def map_version(condition: str) -> int:
    return MAP_VERSIONS.get(condition, 1)


def redrawn_maps(conditions: Iterable[str]) -> dict[str, int]:
    """{condition: its map's version} for those of `conditions` whose maps are drawn anew (above
    version 1): what an evaluation's scenes.json and a training run's record keep."""
    return {c: version for c in conditions if (version := map_version(c)) > 1}


def map_versions_text(versions: dict[str, int], condition: str) -> str:
    """A run's redrawn maps as a model card names them: "version 2: the horizon drawn too" for its
    own condition's, "scribble's version 2: ..." for another's; "" for none."""
    parts = []
    for key, version in versions.items():
        whose = "" if key == condition else f"{key}'s "
        parts.append(f"{whose}version {version}: {MAP_CHANGES[key, version]}")
    return "; ".join(parts)


def training_kinds(condition: str | None) -> tuple[str, ...]:
    """Object kinds every training scene for `condition` holds one of: a map that is blank
    without one (pose: a person) teaches a ControlNet nothing."""
    return MAP_BLANK_WITHOUT.get(condition, ())


CONDITION_MAPS: dict[str, Callable[[Scene, Render], np.ndarray]] = {
    "scribble": scribble,
    "canny": canny,
    "hough": hough,
    "pose": pose,
    "seg": seg,
    "depth": depth,
    "normal": normal,
}
