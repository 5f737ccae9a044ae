"""The seven control maps of a rendered scene, drawn in the conventions of `cnet.detectors`.

Where a map can be computed the way the detector computes it from a photo (Canny), the detector's
own code runs on the target image. The others come from the geometry: straight visible edges,
outlines, the skeleton, class labels, depth and normals, drawn with the detectors' palettes and
drawing functions, so a map of a synthetic scene reads like a detector's map of a photo of it.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from cnet.detectors.base import as_rgb, resize_map
from cnet.detectors.depth import depth_to_map
from cnet.detectors.edges import CannyDetector
from cnet.detectors.lines import draw_segments
from cnet.detectors.pose import draw_pose
from cnet.detectors.scribble import thicken
from cnet.detectors.seg import ade20k_color
from cnet.synth import palette
from cnet.synth.render import FIRST_OBJECT, FLOOR, Render
from cnet.synth.scene import Scene

# The pose ControlNets saw skeletons drawn at ~512 px; drawing at that scale and resizing keeps
# limb width relative to the image the same as the app's keypoint detector at any size.
POSE_CANVAS = 512
HIDDEN_LINE_TOLERANCE = 0.03  # relative depth by which a line may lie behind the visible surface
SAMPLES_PER_LINE = 32

_canny = CannyDetector()


def canny(scene: Scene, render: Render, rng: np.random.Generator) -> np.ndarray:
    """Canny (100, 200) of the target image, exactly as the Canny detector computes it."""
    return as_rgb(_canny.detect(render.rgb))


def visible_segments(scene: Scene, render: Render, objects_only: bool = False) -> np.ndarray:
    """(N, 4) float pixel segments (x1, y1, x2, y2): the parts of every straight edge of the scene
    that are not hidden behind a nearer surface, plus the horizon where the floor meets the
    background (unless `objects_only`)."""
    size = render.ids.shape[0]
    lines = [line for obj in scene.objects for line in obj.lines(scene.camera.eye)]
    found = []
    if lines:
        ends = np.array(lines)  # (S, 2, 3)
        t = np.linspace(0.0, 1.0, SAMPLES_PER_LINE)[None, :, None]
        points = ends[:, :1] + (ends[:, 1:] - ends[:, :1]) * t  # (S, T, 3)
        xy, depth = scene.camera.project(points.reshape(-1, 3), size)
        col, row = np.floor(xy).astype(int).T
        inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
        # the farthest surface around the pixel: a line on a silhouette is in front of what
        # lies beside it, a line behind an object is behind everything around it
        farthest = cv2.dilate(render.depth, np.ones((3, 3), np.uint8))
        surface = farthest[np.clip(row, 0, size - 1), np.clip(col, 0, size - 1)]
        shown = inside & (depth <= surface * (1 + HIDDEN_LINE_TOLERANCE))
        shown = shown.reshape(len(lines), -1)
        xy = xy.reshape(len(lines), -1, 2)
        for line_shown, line_xy in zip(shown, xy, strict=True):
            edges = np.diff(np.concatenate([[0], line_shown.astype(np.int8), [0]]))
            for start, stop in zip(
                np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True
            ):
                if stop - start >= 2:
                    found.append([*line_xy[start], *line_xy[stop - 1]])
    if not objects_only and scene.floor is not None:
        horizon = np.flatnonzero((render.ids == FLOOR).any(axis=1))
        if len(horizon) and horizon[0] > 0:
            row = int(horizon[0])
            on_floor = np.concatenate([[0], (render.ids[row] == FLOOR).astype(np.int8), [0]])
            steps = np.diff(on_floor)
            for start, stop in zip(
                np.flatnonzero(steps == 1), np.flatnonzero(steps == -1), strict=True
            ):
                found.append([start, row, stop - 1, row])
    return np.array(found, np.float32).reshape(-1, 4)


def hough(scene: Scene, render: Render, rng: np.random.Generator) -> np.ndarray:
    """Straight visible edges as 1-pixel white segments, the way M-LSD maps are drawn."""
    size = render.ids.shape[0]
    return as_rgb(draw_segments(visible_segments(scene, render), size, size))


def scribble(scene: Scene, render: Render, rng: np.random.Generator) -> np.ndarray:
    """Object outlines and straight edges redrawn with a wobbly hand and a thick pen."""
    size = render.ids.shape[0]
    scale = size / 128
    canvas = np.zeros((size, size), np.uint8)
    strokes: list[np.ndarray] = []
    for index in range(len(scene.objects)):
        mask = render.mask(index).view(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for contour in contours:
            step = max(1, int(3 * scale))
            strokes.append(contour[::step, 0].astype(np.float64))
    for x1, y1, x2, y2 in visible_segments(scene, render, objects_only=True):
        count = max(2, int(np.hypot(x2 - x1, y2 - y1) / (3 * scale)))
        strokes.append(np.linspace([x1, y1], [x2, y2], count))
    for points in strokes:
        if len(points) < 2:
            continue
        # low-frequency wobble: random offsets smoothed along the stroke
        wobble = rng.normal(0.0, 1.2 * scale, (len(points) + 4, 2))
        wobble = np.cumsum(wobble, axis=0)
        wobble = (wobble[4:] - wobble[:-4]) / 4
        drawn = np.round((points + wobble) * 4).astype(np.int32)  # 2 fractional bits
        cv2.polylines(canvas, [drawn], False, 255, thickness=1, lineType=cv2.LINE_8, shift=2)
    return as_rgb(thicken(canvas, int(rng.integers(0, 2) + round(scale - 1))))


def keypoints(scene: Scene, render: Render) -> list[np.ndarray]:
    """(18, 3) pixel x, y and visibility (1 or 0) for every person, OpenPose COCO order. A
    keypoint is hidden when it falls outside the image or behind another object."""
    size = render.ids.shape[0]
    people = []
    for index, obj in enumerate(scene.objects):
        if obj.kind != "person":
            continue
        xy, depth = scene.camera.project(obj.keypoints, size)
        col, row = np.floor(xy).astype(int).T
        inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
        col, row = np.clip(col, 0, size - 1), np.clip(row, 0, size - 1)
        owner = render.ids[row, col]
        covered = (
            (owner != index + FIRST_OBJECT)
            & (owner >= FIRST_OBJECT)
            & (render.depth[row, col] < depth)
        )
        people.append(np.concatenate([xy, (inside & ~covered)[:, None]], axis=1))
    return people


def pose(scene: Scene, render: Render, rng: np.random.Generator) -> np.ndarray:
    """The OpenPose skeleton of every person (black when there is none)."""
    size = render.ids.shape[0]
    people = keypoints(scene, render)
    if not people:
        return np.zeros((size, size, 3), np.uint8)
    scale = max(1.0, POSE_CANVAS / size)
    canvas_size = round(size * scale)
    scaled = [np.concatenate([p[:, :2] * scale, p[:, 2:]], axis=1) for p in people]
    return resize_map(draw_pose(scaled, canvas_size, canvas_size), (size, size))


def seg_colors(scene: Scene) -> np.ndarray:
    """(ids, 3) uint8: the ADE20K colour of the background, floor and each object's class."""
    names = ["background", "floor"] + [obj.kind for obj in scene.objects]
    return np.array([ade20k_color(palette.SEG_CLASS[name]) for name in names], np.uint8)


def seg(scene: Scene, render: Render, rng: np.random.Generator) -> np.ndarray:
    """Every pixel painted with the ADE20K colour of its class."""
    return seg_colors(scene)[render.ids]


def depth(scene: Scene, render: Render, rng: np.random.Generator) -> np.ndarray:
    """Inverse depth min-max scaled, near = bright, as MiDaS maps are (background = 0)."""
    with np.errstate(divide="ignore"):
        disparity = 1.0 / render.depth  # inf -> 0
    return as_rgb(depth_to_map(disparity))


def normal(scene: Scene, render: Render, rng: np.random.Generator) -> np.ndarray:
    """Normals in the control_v11p_sd15_normalbae convention of `cnet.detectors.normal`:
    RGB = (left, up, towards the viewer) * 127.5 + 127.5, rounded down."""
    left_up_front = render.normals * np.array([-1.0, 1.0, 1.0], np.float32)
    return (left_up_front * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


CONDITION_MAPS: dict[str, Callable[[Scene, Render, np.random.Generator], np.ndarray]] = {
    "scribble": scribble,
    "canny": canny,
    "hough": hough,
    "pose": pose,
    "seg": seg,
    "depth": depth,
    "normal": normal,
}
