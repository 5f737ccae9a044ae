"""A capsule humanoid in a random plausible pose, with its 18 OpenPose (COCO) keypoints.

The body frame has y up and the person facing -z (towards a camera in front), so the person's
right side is at -x. Lengths are in metres for a 1.8 m person before scaling.
"""

from __future__ import annotations

import numpy as np

from cnet.synth.palette import SKIN
from cnet.synth.shapes import Person, yaw_matrix

KEYPOINT_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip

UPPER_ARM, FOREARM, THIGH, SHIN = 0.30, 0.27, 0.44, 0.44
HEAD_RADIUS = 0.11


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _bend(direction: np.ndarray, towards: np.ndarray, angle: float) -> np.ndarray:
    """Turn `direction` by `angle` in the plane it spans with `towards`."""
    perp = _unit(towards - (towards @ direction) * direction)
    return np.cos(angle) * direction + np.sin(angle) * perp


def _limb(rng: np.random.Generator, side: float, arm: bool) -> tuple[np.ndarray, np.ndarray]:
    """Directions of the upper and lower segment of one arm or leg."""
    if arm:
        raise_angle = rng.uniform(0.15, 2.6)  # from hanging down to above the head, sideways
        forward = rng.uniform(-0.4, 0.9)
        joint = rng.uniform(0.0, 2.0)  # elbow
        bend_to = np.array([0.0, 0.6, -1.0])
    else:
        raise_angle = rng.uniform(0.0, 0.35)
        forward = rng.uniform(-0.35, 0.7)
        joint = rng.uniform(0.0, 1.1)  # knee, folding backwards
        bend_to = np.array([0.0, 0.0, 1.0])
    upper = np.array(
        [
            side * np.sin(raise_angle) * np.cos(forward),
            -np.cos(raise_angle) * np.cos(forward),
            -np.sin(forward),
        ]
    )
    return upper, _bend(upper, bend_to, joint)


def random_person(
    rng: np.random.Generator,
    color: str,
    albedo: np.ndarray,
    base: np.ndarray,
    yaw: float,
    scale: float,
) -> Person:
    """A person standing on the ground at `base`, turned by `yaw`, in a random pose."""
    kp = np.zeros((18, 3))
    kp[1] = [0.0, 1.48, 0.0]  # neck
    kp[2], kp[5] = [-0.19, 1.44, 0.0], [0.19, 1.44, 0.0]
    kp[8], kp[11] = [-0.1, 0.93, 0.0], [0.1, 0.93, 0.0]
    for shoulder, elbow, wrist, side in ((2, 3, 4, -1.0), (5, 6, 7, 1.0)):
        upper, lower = _limb(rng, side, arm=True)
        kp[elbow] = kp[shoulder] + UPPER_ARM * upper
        kp[wrist] = kp[elbow] + FOREARM * lower
    for hip, knee, ankle, side in ((8, 9, 10, -1.0), (11, 12, 13, 1.0)):
        upper, lower = _limb(rng, side, arm=False)
        kp[knee] = kp[hip] + THIGH * upper
        kp[ankle] = kp[knee] + SHIN * lower

    head = np.array([0.0, 1.64, 0.0])
    face = yaw_matrix(rng.uniform(-0.4, 0.4))  # head turn; face points stay inside the head
    kp[0] = head + face @ [0.0, -0.01, -0.095]
    kp[14], kp[15] = head + face @ [-0.035, 0.025, -0.085], head + face @ [0.035, 0.025, -0.085]
    kp[16], kp[17] = head + face @ [-0.09, 0.0, -0.02], head + face @ [0.09, 0.0, -0.02]

    pelvis = (kp[8] + kp[11]) / 2
    parts = [  # (start, end, radius, skin)
        (kp[1], pelvis + [0, 0.08, 0], 0.15, False),  # torso
        (kp[2], kp[5], 0.065, False),  # shoulders
        (kp[8], kp[11], 0.095, False),  # hips
        (kp[1], head, 0.05, True),  # neck
        (head - [0, 0.015, 0], head + [0, 0.015, 0], HEAD_RADIUS, True),
        (kp[2], kp[3], 0.055, False),
        (kp[3], kp[4], 0.05, True),
        (kp[5], kp[6], 0.055, False),
        (kp[6], kp[7], 0.05, True),
        (kp[8], kp[9], 0.08, False),
        (kp[9], kp[10], 0.065, False),
        (kp[11], kp[12], 0.08, False),
        (kp[12], kp[13], 0.065, False),
    ]
    starts = np.array([start for start, _, _, _ in parts])
    ends = np.array([end for _, end, _, _ in parts])
    radii = np.array([radius for _, _, radius, _ in parts])
    # the lowest point rests on the ground
    lift = np.array([0.0, (np.minimum(starts[:, 1], ends[:, 1]) - radii).min(), 0.0])
    turn = yaw_matrix(yaw)

    def place(points: np.ndarray) -> np.ndarray:
        return ((points - lift) * scale) @ turn.T + base

    skin = np.array(SKIN) / 255
    part_albedo = np.array([skin if bare else albedo for _, _, _, bare in parts])
    return Person(
        "person", color, albedo, base, yaw,
        starts=place(starts), ends=place(ends), radii=radii * scale, part_albedo=part_albedo,
        keypoints=place(kp), outline_parts=(0, 5, 6, 7, 8, 9, 10, 11, 12),
    )  # fmt: skip
