"""Pose maps from OpenPose JSON: skeleton pixels at the keypoints, in the OpenPose colours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnet.conditions import detect
from cnet.detectors.pose import (
    BODY25_TO_COCO18,
    KEYPOINT_COLORS,
    KEYPOINT_NAMES,
    LIMB_COLORS,
    LIMBS,
    draw_pose,
    read_openpose_json,
)

# a standing figure on a 512 x 512 canvas, (x, y) per COCO-18 keypoint
FIGURE = {
    "nose": (256, 90), "neck": (256, 150),
    "right_shoulder": (200, 150), "right_elbow": (170, 230), "right_wrist": (150, 310),
    "left_shoulder": (312, 150), "left_elbow": (342, 230), "left_wrist": (362, 310),
    "right_hip": (222, 300), "right_knee": (215, 390), "right_ankle": (210, 480),
    "left_hip": (290, 300), "left_knee": (297, 390), "left_ankle": (302, 480),
    "right_eye": (240, 78), "left_eye": (272, 78), "right_ear": (222, 88), "left_ear": (290, 88),
}  # fmt: skip
POINTS = np.array([FIGURE[name] for name in KEYPOINT_NAMES], np.float64)


def _openpose_json(points: np.ndarray, **extra) -> dict:
    flat = np.concatenate([points, np.ones((len(points), 1))], axis=1).ravel().tolist()
    return {"people": [{"pose_keypoints_2d": flat}], **extra}


def test_keypoints_and_limbs_in_openpose_colours():
    data = _openpose_json(POINTS, canvas_width=512, canvas_height=512)
    control = detect("pose", json.dumps(data), backend="keypoints_json")
    assert control.shape == (512, 512, 3)
    for (x, y), color in zip(POINTS.astype(int), KEYPOINT_COLORS, strict=True):
        assert tuple(control[y, x]) == color
    for (a, b), color in zip(LIMBS, LIMB_COLORS, strict=True):
        length = np.hypot(*(POINTS[a] - POINTS[b]))
        if length > 30:  # midpoints of long limbs are clear of the keypoint discs
            x, y = ((POINTS[a] + POINTS[b]) / 2).astype(int)
            assert tuple(control[y, x]) == color, KEYPOINT_NAMES[a] + "-" + KEYPOINT_NAMES[b]
    assert tuple(control[5, 5]) == (0, 0, 0)
    assert (control.any(axis=2)).mean() < 0.1  # a skeleton, not a blob


def test_limb_colours_are_the_keypoint_colours_at_sixty_percent():
    assert LIMB_COLORS[0] == (153, 0, 0) and LIMB_COLORS[12] == (0, 0, 153)


def test_missing_keypoint_removes_its_limbs():
    points = POINTS.copy()
    data = _openpose_json(points, canvas_width=512, canvas_height=512)
    data["people"][0]["pose_keypoints_2d"][4 * 3 + 2] = 0.0  # right wrist not detected
    control = detect("pose", data, backend="keypoints_json")
    x, y = ((POINTS[3] + POINTS[4]) / 2).astype(int)
    assert tuple(control[y, x]) == (0, 0, 0)
    wx, wy = POINTS[4].astype(int)
    assert tuple(control[wy, wx]) == (0, 0, 0)


def test_body25_and_normalised_coordinates_draw_the_same_figure():
    reference = draw_pose(POINTS, 512, 512)
    body25 = np.zeros((25, 2))
    body25[list(BODY25_TO_COCO18)] = POINTS
    body25[8] = (256, 300)  # mid-hip, not part of COCO-18
    data25 = _openpose_json(body25, canvas_width=512, canvas_height=512)
    assert np.array_equal(detect("pose", data25, backend="keypoints_json"), reference)
    normalised = _openpose_json(POINTS / 512.0)
    assert np.array_equal(detect("pose", normalised, backend="keypoints_json"), reference)


def test_json_file_and_canvas_scaling(tmp_path):
    path = tmp_path / "pose.json"
    path.write_text(json.dumps(_openpose_json(POINTS * 2, canvas_width=1024, canvas_height=1024)))
    pose = read_openpose_json(path)
    assert (pose.height, pose.width) == (1024, 1024)
    control = detect("pose", str(path), backend="keypoints_json")
    assert control.shape == (512, 512, 3)
    x, y = POINTS[1].astype(int)  # the neck, scaled back to 512
    assert tuple(control[y, x]) == KEYPOINT_COLORS[1]


def test_hands_are_drawn_when_present():
    hand = np.array([(150 + 3 * i, 320 + 4 * i, 1.0) for i in range(21)]).ravel().tolist()
    data = _openpose_json(POINTS, canvas_width=512, canvas_height=512)
    data["people"][0]["hand_right_keypoints_2d"] = hand
    with_hands = detect("pose", data, backend="keypoints_json")
    without = detect("pose", data, backend="keypoints_json", include_hands=False)
    assert tuple(with_hands[320 + 40, 150 + 30]) == (0, 0, 255)  # hand keypoint 10
    assert not np.array_equal(with_hands, without)


def test_bad_json_is_explained():
    with pytest.raises(ValueError, match="people"):
        detect("pose", {"figures": []}, backend="keypoints_json")
    with pytest.raises(ValueError, match="JSON"):
        detect("pose", "{not json", backend="keypoints_json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[42]", "is an object"),
        ('{"people": [[1, 2, 3]]}', '"people" list'),
        ('{"people": [null]}', '"people" list'),
        ('{"people": [{"pose_keypoints_2d": [10, 20]}]}', "x, y, confidence numbers"),
        ('{"people": [{"pose_keypoints_2d": ["a", "b", "c"]}]}', "x, y, confidence numbers"),
        ('{"people": [{"pose_keypoints_2d": [1, 2, 3]}]}', "has 1 body keypoint; OpenPose"),
        ('{"people": [], "canvas_width": "abc", "canvas_height": 5}', "are not whole numbers"),
        ('{"people": [], "canvas_width": -512, "canvas_height": 512}', "sizes are positive"),
    ],
)
def test_malformed_pose_files_are_refused_with_a_message(text, message):
    from cnet.imageio import ImageInputError

    with pytest.raises(ImageInputError, match=message):
        read_openpose_json(text)


def test_a_picture_given_to_the_keypoints_reader_is_named_as_such():
    photo = Path(__file__).resolve().parents[1] / "assets" / "examples" / "scene.jpg"
    with pytest.raises(ValueError, match=r"scene\.jpg is not text \(a picture\?\), so not a pose"):
        detect("pose", str(photo), backend="keypoints_json")


def test_an_empty_pose_file_says_so_and_what_a_pose_file_holds(tmp_path):
    (tmp_path / "pose.json").write_text("  \n")
    with pytest.raises(ValueError, match=r'The pose file is empty\. Give .*"pose_keypoints_2d"'):
        read_openpose_json(str(tmp_path / "pose.json"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"people": []}, "no person"),
        ({"people": [{"face_keypoints_2d": [1, 2, 1]}]}, "no person"),
        ({"people": [{"pose_keypoints_2d": [0.0] * 54}]}, "No keypoint .* on its 512 x 512"),
        (_openpose_json(POINTS + 5000, canvas_width=512, canvas_height=512), "outside it"),
    ],
)
def test_a_pose_file_that_draws_nothing_is_refused_not_run_as_an_empty_map(data, message):
    with pytest.raises(ValueError, match=message):
        detect("pose", data, backend="keypoints_json")


def test_a_pose_file_of_any_name_is_read_as_a_file(tmp_path):
    data = json.dumps(_openpose_json(POINTS, canvas_width=512, canvas_height=512))
    for name in ("POSE.JSON", "keypoints.txt"):
        (tmp_path / name).write_text(data)
        assert read_openpose_json(str(tmp_path / name)).width == 512


def test_a_normalised_point_just_outside_the_frame_keeps_the_figure_normalised():
    points = POINTS / 512.0
    points[0, 0] = 1.02  # the nose a little beyond the right edge
    control = detect("pose", _openpose_json(points), backend="keypoints_json")
    x, y = POINTS[1].astype(int)  # the neck stays where it is on the 512 canvas
    assert tuple(control[y, x]) == KEYPOINT_COLORS[1]


def test_existing_pose_map_passes_through():
    control = draw_pose(POINTS, 512, 512)
    assert np.array_equal(detect("pose", control, backend="none"), control)


def test_drawing_matches_controlnet_aux():
    from controlnet_aux.open_pose.body import Keypoint
    from controlnet_aux.open_pose.util import draw_bodypose

    height, width = 384, 640
    rng = np.random.default_rng(1)
    people = rng.uniform((10, 10), (width - 10, height - 10), size=(2, 18, 2))
    people[1, 7] = np.nan
    ours = draw_pose([[None if np.isnan(p).any() else p for p in person] for person in people],
                     height, width)  # fmt: skip
    theirs = np.zeros((height, width, 3), np.uint8)
    for person in people:
        keypoints = [None if np.isnan(p).any() else Keypoint(p[0] / width, p[1] / height)
                     for p in person]  # fmt: skip
        draw_bodypose(theirs, keypoints)
    assert np.array_equal(ours, theirs)


def test_a_small_preprocessor_resolution_draws_limbs_no_thicker():
    """Limbs have a fixed width in pixels, so a 128 px map must be the 512 px drawing resized,
    the width every pose ControlNet saw, not a drawing at 128 px with limbs 4x as thick."""
    data = _openpose_json(POINTS, canvas_width=512, canvas_height=512)
    small = detect(
        "pose", data, backend="keypoints_json", detect_resolution=128, image_resolution=128
    )
    large = detect(
        "pose", data, backend="keypoints_json", detect_resolution=512, image_resolution=128
    )
    assert small.shape == (128, 128, 3)
    assert np.array_equal(small, large)
