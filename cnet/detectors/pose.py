"""Human pose maps: the 18-keypoint COCO skeleton in the OpenPose colours of control_*_openpose.

Maps are drawn exactly as controlnet-aux's `draw_bodypose` draws them (the training maps of the
OpenPose ControlNets): each limb a filled ellipse 4 px thick in 60 % of its colour on black, then
each keypoint a disc of radius 4 in its full colour. Hands and face follow `draw_handpose` and
`draw_facepose`. Keypoints can come from OpenPose JSON with no weights at all.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cnet.detectors.base import Detector, resize_map, run_aux
from cnet.imageio import ImageInputError, target_size

KEYPOINT_NAMES = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip

#: limbs as pairs of keypoint indices, in OpenPose drawing order (limb i gets colour i)
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip

#: RGB colour of keypoint i: the OpenPose hue wheel from red through green and blue to pink
KEYPOINT_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip

#: RGB colour of limb i: keypoint colour i at 60 % brightness
LIMB_COLORS = tuple(tuple(int(c * 0.6) for c in color) for color in KEYPOINT_COLORS[: len(LIMBS)])

STICK_WIDTH = 4
KEYPOINT_RADIUS = 4
# The pose ControlNets saw skeletons drawn at about 512 px. Limbs and discs have fixed pixel
# sizes, so keypoints are drawn on a canvas at least this large and the map resized: a smaller
# one would draw them thicker relative to the image.
POSE_CANVAS = 512

HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
    (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
HAND_EDGE_COLORS = tuple(
    tuple(round(c * 255) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
    for i in range(len(HAND_EDGES))
)
HAND_KEYPOINT_COLOR = (0, 0, 255)
FACE_KEYPOINT_COLOR = (255, 255, 255)

# BODY_25 (OpenPose's default model) -> COCO-18: drop mid-hip (8) and the six foot points
BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

Keypoints = np.ndarray | list | tuple
POSE_FILE_HELP = (
    'Give the keypoints as OpenPose JSON: {"people": [{"pose_keypoints_2d": [x, y, confidence, '
    "...]}]}, as OpenPose and pose editors export it."
)


def _as_points(keypoints: Keypoints, count: int | None = None) -> np.ndarray:
    """(N, 2|3) keypoints, None entries allowed -> float (N, 2) with NaN where missing."""
    rows = []
    for point in keypoints:
        if point is None or len(point) < 2 or (len(point) > 2 and not point[2] > 0):
            rows.append((math.nan, math.nan))
        else:
            rows.append((float(point[0]), float(point[1])))
    points = np.array(rows, dtype=np.float64).reshape(-1, 2)
    if count is not None and len(points) != count:
        raise ValueError(f"Expected {count} keypoints, got {len(points)}.")
    return points


def _people(keypoints: Keypoints) -> list[np.ndarray]:
    """One person (18 rows) or several (a sequence of 18-row persons) -> list of (18, 2)."""
    several = any(entry is not None and len(entry) == len(KEYPOINT_NAMES) for entry in keypoints)
    people = keypoints if several else [keypoints]
    return [_as_points(person, len(KEYPOINT_NAMES)) for person in people]


def draw_body(canvas: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Draw one COCO-18 body ((18, 2) pixel coordinates, NaN = missing) on an RGB canvas."""
    present = ~np.isnan(points).any(axis=1)
    for (a, b), color in zip(LIMBS, LIMB_COLORS, strict=True):
        if not (present[a] and present[b]):
            continue
        (xa, ya), (xb, yb) = points[a], points[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        center = (int((xa + xb) / 2), int((ya + yb) / 2))
        polygon = cv2.ellipse2Poly(center, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, color)
    for (x, y), color, ok in zip(points, KEYPOINT_COLORS, present, strict=True):
        if ok:
            cv2.circle(canvas, (int(x), int(y)), KEYPOINT_RADIUS, color, thickness=-1)
    return canvas


def draw_hand(canvas: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Draw one 21-point hand ((21, 2) pixel coordinates, NaN = missing) on an RGB canvas."""
    present = ~np.isnan(points).any(axis=1) & (np.nan_to_num(points) > 0).all(axis=1)
    for (a, b), color in zip(HAND_EDGES, HAND_EDGE_COLORS, strict=True):
        if present[a] and present[b]:
            start, end = points[a].astype(int), points[b].astype(int)
            cv2.line(canvas, tuple(start.tolist()), tuple(end.tolist()), color, thickness=2)
    for (x, y), ok in zip(points, present, strict=True):
        if ok:
            cv2.circle(canvas, (int(x), int(y)), 4, HAND_KEYPOINT_COLOR, thickness=-1)
    return canvas


def draw_face(canvas: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Draw face keypoints ((N, 2) pixel coordinates, NaN = missing) as small white discs."""
    present = ~np.isnan(points).any(axis=1) & (np.nan_to_num(points) > 0).all(axis=1)
    for (x, y), ok in zip(points, present, strict=True):
        if ok:
            cv2.circle(canvas, (int(x), int(y)), 3, FACE_KEYPOINT_COLOR, thickness=-1)
    return canvas


def draw_pose(keypoints: Keypoints, height: int, width: int) -> np.ndarray:
    """OpenPose body map (uint8 HxWx3 RGB, black background) from COCO-18 keypoints.

    `keypoints` holds pixel coordinates, one person as 18 rows of (x, y) or (x, y, confidence)
    or several people as a list / (P, 18, 2|3) array. A row that is None, or whose confidence is
    0, is a missing keypoint and its limbs are not drawn. Names: `KEYPOINT_NAMES`.
    """
    return draw_people([Person(body) for body in _people(keypoints)], height, width)


@dataclass
class Person:
    """One person's keypoints in pixel coordinates (NaN rows are missing)."""

    body: np.ndarray
    left_hand: np.ndarray | None = None
    right_hand: np.ndarray | None = None
    face: np.ndarray | None = None

    def scaled(self, sx: float, sy: float) -> Person:
        scale = np.array([sx, sy])
        parts = (self.body, self.left_hand, self.right_hand, self.face)
        return Person(*(None if part is None else part * scale for part in parts))


@dataclass
class PoseFile:
    """The people of an OpenPose JSON file and the canvas their coordinates refer to."""

    people: list[Person] = field(default_factory=list)
    height: int = 512
    width: int = 512


def _triples(values: list[float] | None, normalized: bool, height: int, width: int):
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    points = _as_points(array)
    if normalized:
        points = points * np.array([width, height])
    return points


def _read_json(source: Any) -> dict:
    if isinstance(source, dict):
        return source
    if isinstance(source, bytes):
        source = source.decode("utf-8")
    # A string is JSON text when it starts like JSON, else a path (any name: pose.JSON, .txt).
    text = isinstance(source, str) and source.lstrip().startswith(("{", "["))
    if isinstance(source, os.PathLike) or (isinstance(source, str) and not text):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"No pose file at {path}.")
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ImageInputError(
                f"{path} is not text (a picture?), so not a pose file; a photo goes to the "
                f"OpenPose detector. {POSE_FILE_HELP}"
            ) from None
    if not isinstance(source, str):
        raise ImageInputError(f"Expected OpenPose JSON, got {type(source).__name__}.")
    if not source.strip():
        raise ImageInputError(f"The pose file is empty. {POSE_FILE_HELP}")
    try:
        data = json.loads(source)
    except json.JSONDecodeError as error:
        raise ImageInputError(
            f"The pose file is not valid JSON ({error}). {POSE_FILE_HELP}"
        ) from None
    if isinstance(data, list):  # some editors export a list of frames: take the first
        data = data[0] if data else {}
    if not isinstance(data, dict):
        raise ImageInputError('OpenPose JSON is an object with a "people" list.')
    return data


def read_openpose_json(source: Any) -> PoseFile:
    """Parse OpenPose JSON (dict, text or path): COCO-18 or BODY_25 bodies, hands and face.

    Coordinates are pixels of a canvas of `canvas_width` x `canvas_height` (editor exports), or
    normalised to [0, 1] when every coordinate is at most 2 (points may stray outside the frame).
    Without a canvas size, pixel coordinates get the smallest canvas that holds them.
    """
    data = _read_json(source)
    people = data.get("people")
    if not isinstance(people, list) or not all(isinstance(person, dict) for person in people):
        raise ImageInputError(
            f'OpenPose JSON needs a "people" list with "pose_keypoints_2d". {POSE_FILE_HELP}'
        )
    try:
        return _read_people(data, people)
    except ImageInputError:
        raise
    except (TypeError, ValueError) as error:  # numpy's words for a list that is not triples
        raise ImageInputError(
            f"The pose file's keypoints are not lists of x, y, confidence numbers ({error})."
        ) from None


def _read_people(data: dict, people: list[dict]) -> PoseFile:
    keys = ("pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d")
    coords = [
        value
        for person in people
        for key in keys
        for value in np.asarray(person.get(key) or [], np.float64).reshape(-1, 3)[:, :2].ravel()
    ]
    # Normalised coordinates may stray a little outside [0, 1] (a hand beyond the frame); pixel
    # coordinates of a real canvas are never all below 2.
    normalized = bool(coords) and max(coords) <= 2.0
    try:
        width = int(data.get("canvas_width") or 0)
        height = int(data.get("canvas_height") or 0)
    except (TypeError, ValueError):
        raise ImageInputError(
            'The pose file\'s "canvas_width" and "canvas_height" are not whole numbers '
            f"({data.get('canvas_width')!r} x {data.get('canvas_height')!r})."
        ) from None
    if width < 0 or height < 0:
        raise ImageInputError(f"The pose file's canvas is {width} x {height}; sizes are positive.")
    if not (width and height):
        if normalized or not coords:
            width = height = 512
        else:
            width = height = int(math.ceil(max(coords))) + 1
    pose = PoseFile(height=height, width=width)
    for person in people:
        body = _triples(person.get("pose_keypoints_2d"), normalized, height, width)
        if body is None:
            continue
        if len(body) == 25:
            body = body[list(BODY25_TO_COCO18)]
        if len(body) != len(KEYPOINT_NAMES):
            count = f"{len(body)} body keypoint" + ("" if len(body) == 1 else "s")
            raise ImageInputError(
                f"A person in the pose file has {count}; OpenPose JSON has 18 (COCO) or 25 "
                "(BODY_25), each as x, y, confidence."
            )
        left, right, face = (
            _triples(person.get(key), normalized, height, width)
            for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d")
        )
        pose.people.append(Person(body, left, right, face))
    return pose


def draw_people(
    people: list[Person], height: int, width: int, hands: bool = True, face: bool = True
) -> np.ndarray:
    """Bodies, then (optionally) hands and faces of several people, on one black canvas."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for person in people:
        draw_body(canvas, person.body)
    for person in people:
        if hands:
            for hand in (person.left_hand, person.right_hand):
                if hand is not None:
                    draw_hand(canvas, hand)
        if face and person.face is not None:
            draw_face(canvas, person.face)
    return canvas


class KeypointsJSONDetector:
    """OpenPose JSON -> pose map; no weights. The "image" argument is the JSON (dict/text/path)."""

    def __call__(
        self,
        image: Any,
        detect_resolution: int = 512,
        image_resolution: int = 512,
        include_hands: bool = True,
        include_face: bool = True,
        **params: Any,
    ) -> np.ndarray:
        pose = read_openpose_json(image)
        if not pose.people:
            raise ImageInputError(
                'The pose file holds no person with "pose_keypoints_2d", so the map would be '
                f"empty. {POSE_FILE_HELP}"
            )
        height, width = target_size(pose.height, pose.width, max(detect_resolution, POSE_CANVAS))
        people = [p.scaled(width / pose.width, height / pose.height) for p in pose.people]
        control = draw_people(people, height, width, include_hands, include_face)
        if not control.any():
            raise ImageInputError(
                f"No keypoint of the pose file lies on its {pose.width} x {pose.height} canvas "
                "(all missing, at confidence 0, or outside it), so the map would be empty. "
                'Coordinates are pixels of "canvas_width" x "canvas_height", or fractions (0-1) '
                "of the image."
            )
        return resize_map(control, target_size(height, width, image_resolution))


class OpenPoseDetector(Detector):
    """controlnet-aux OpenPose (body, optionally hands and face) from a local weights folder."""

    def __init__(self, weights_dir: Path):
        from controlnet_aux.open_pose import OpenposeDetector

        self.model = OpenposeDetector.from_pretrained(str(weights_dir))

    def detect(
        self, image: np.ndarray, include_hands: bool = False, include_face: bool = False, **_: Any
    ) -> np.ndarray:
        return run_aux(self.model, image, include_hand=include_hands, include_face=include_face)
