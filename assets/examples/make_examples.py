"""Draw the example inputs shown under each tab (run from the repository root).

    python assets/examples/make_examples.py

Everything is drawn here with OpenCV and numpy, so the examples are ours and reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from cnet.detectors.pose import KEYPOINT_NAMES
from cnet.detectors.seg import ade20k_color

HERE = Path(__file__).resolve().parent
SIZE = 512


def scribble_balloon() -> np.ndarray:
    """A hand-drawn-looking hot air balloon over a lake, black pen on white paper."""
    paper = np.full((SIZE, SIZE), 255, np.uint8)
    pen = {"color": 0, "thickness": 4, "lineType": cv2.LINE_AA}
    cv2.ellipse(paper, (256, 170), (95, 110), 0, 0, 360, **pen)
    for dx in (-50, 0, 50):  # gores of the envelope
        cv2.ellipse(paper, (256 + dx // 2, 170), (abs(dx) + 8, 108), 0, 0, 360, **pen)
    cv2.line(paper, (190, 255), (236, 320), **pen)
    cv2.line(paper, (322, 255), (276, 320), **pen)
    cv2.rectangle(paper, (232, 320), (280, 352), **pen)
    mountains = np.array([[0, 400], [90, 330], [160, 380], [250, 300], [360, 390], [440, 320],
                          [512, 370]])  # fmt: skip
    cv2.polylines(paper, [mountains], False, **pen)
    for y in (430, 460, 490):  # ripples on the lake
        for x in range(20, 500, 90):
            cv2.ellipse(paper, (x + (y % 60), y), (30, 6), 0, 200, 340, **pen)
    return paper


def scene() -> np.ndarray:
    """A photo-like render: a shaded red sphere and a blue cube on a wooden table."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    image[:] = (225, 225, 215)
    wall = yy < 300
    image[wall] = np.stack([220 - yy * 0.1, 222 - yy * 0.1, 210 - yy * 0.05], -1)[wall]
    table = ~wall
    grain = 10 * np.sin(xx / 7.0 + np.sin(yy / 23.0) * 3)
    image[table] = np.stack([150 + grain, 100 + grain * 0.7, 60 + grain * 0.4], -1)[table]
    # sphere, lit from the upper left
    cx, cy, r = 180, 300, 90
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    inside = d2 < r * r
    nz = np.sqrt(np.clip(1 - d2 / r**2, 0, 1))
    light = np.clip(((cx - xx) / r * 0.5 + (cy - yy) / r * 0.6 + nz * 0.7), 0.15, 1.0)
    image[inside] = (np.stack([210 * light, 35 * light, 35 * light], -1))[inside]
    cv2.ellipse(image, (cx + 20, cy + r - 5), (80, 14), 0, 0, 360, (90, 60, 40), -1)  # shadow
    image[inside] = (np.stack([210 * light, 35 * light, 35 * light], -1))[inside]
    # cube: three visible faces
    front = np.array([[300, 250], [420, 250], [420, 370], [300, 370]])
    top = np.array([[300, 250], [345, 215], [465, 215], [420, 250]])
    side = np.array([[420, 250], [465, 215], [465, 335], [420, 370]])
    for face, shade in ((front, (40, 70, 190)), (top, (90, 120, 230)), (side, (25, 45, 130))):
        cv2.fillConvexPoly(image, face, shade, cv2.LINE_AA)
    return cv2.GaussianBlur(image, (0, 0), 0.8).clip(0, 255).astype(np.uint8)


def room() -> np.ndarray:
    """A flat-shaded room in one-point perspective with a window: strong straight lines."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    back = np.array([[160, 140], [352, 140], [352, 300], [160, 300]])
    walls = {
        "floor": ([[0, 512], [512, 512], [352, 300], [160, 300]], (150, 120, 90)),
        "ceiling": ([[0, 0], [512, 0], [352, 140], [160, 140]], (235, 235, 230)),
        "left": ([[0, 0], [160, 140], [160, 300], [0, 512]], (200, 195, 185)),
        "right": ([[512, 0], [352, 140], [352, 300], [512, 512]], (185, 180, 170)),
    }
    for polygon, color in walls.values():
        cv2.fillConvexPoly(image, np.array(polygon), color)
    cv2.fillConvexPoly(image, back, (215, 210, 200))
    cv2.rectangle(image, (205, 170), (307, 250), (150, 200, 235), -1)  # window
    cv2.line(image, (256, 170), (256, 250), (90, 80, 70), 4)
    cv2.line(image, (205, 210), (307, 210), (90, 80, 70), 4)
    cv2.fillConvexPoly(image, np.array([[40, 330], [120, 300], [120, 420], [40, 470]]),
                       (120, 80, 50))  # a door on the left wall  # fmt: skip
    return image


def pose() -> dict:
    """OpenPose JSON (COCO-18, pixel coordinates) of a person waving."""
    figure = {
        "nose": (256, 96), "neck": (256, 160),
        "right_shoulder": (200, 160), "right_elbow": (150, 110), "right_wrist": (130, 50),
        "left_shoulder": (312, 160), "left_elbow": (345, 240), "left_wrist": (360, 315),
        "right_hip": (225, 310), "right_knee": (215, 400), "right_ankle": (205, 490),
        "left_hip": (290, 310), "left_knee": (305, 400), "left_ankle": (320, 490),
        "right_eye": (242, 84), "left_eye": (270, 84),
        "right_ear": (226, 92), "left_ear": (286, 92),
    }  # fmt: skip
    flat = [v for name in KEYPOINT_NAMES for v in (*figure[name], 1.0)]
    return {
        "version": 1.3,
        "canvas_width": SIZE,
        "canvas_height": SIZE,
        "people": [{"pose_keypoints_2d": flat}],
    }


def segmentation() -> np.ndarray:
    """A street scene painted in ADE20K class colours: sky, buildings, road, a tree, a person."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:] = ade20k_color("sky")
    cv2.rectangle(image, (0, 150), (200, 380), ade20k_color("building"), -1)
    cv2.rectangle(image, (330, 110), (512, 380), ade20k_color("building"), -1)
    for x in range(350, 500, 50):
        for y in range(140, 340, 60):
            cv2.rectangle(image, (x, y), (x + 25, y + 35), ade20k_color("windowpane"), -1)
    image[380:] = ade20k_color("road")
    cv2.rectangle(image, (0, 380), (512, 410), ade20k_color("sidewalk"), -1)
    cv2.rectangle(image, (255, 280), (270, 400), ade20k_color("tree"), -1)
    cv2.circle(image, (262, 250), 55, ade20k_color("tree"), -1)
    cv2.ellipse(image, (150, 330), (18, 60), 0, 0, 360, ade20k_color("person"), -1)
    cv2.circle(image, (150, 255), 16, ade20k_color("person"), -1)
    cv2.rectangle(image, (360, 420), (500, 480), ade20k_color("car"), -1)
    return image


def depth() -> np.ndarray:
    """Near-is-bright depth of a bust-like shape (sphere head on a box) in front of a wall."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    near = np.full((SIZE, SIZE), 40.0, np.float32)  # far wall
    near = np.maximum(near, np.where(yy > 380, 40 + (yy - 380) * 0.9, 0))  # floor rising to us
    d2 = (xx - 256) ** 2 + (yy - 200) ** 2
    head = np.where(d2 < 110**2, 150 + np.sqrt(np.clip(110**2 - d2, 0, None)), 0)
    box = np.where((abs(xx - 256) < 130) & (yy > 300) & (yy < 470), 170.0, 0)
    near = np.maximum(near, np.maximum(head, box))
    return (near / near.max() * 255).astype(np.uint8)


def main() -> None:
    cv2.imwrite(str(HERE / "scribble_balloon.png"), scribble_balloon())
    cv2.imwrite(str(HERE / "scene.jpg"), scene()[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(HERE / "room.png"), room()[:, :, ::-1])
    cv2.imwrite(str(HERE / "seg.png"), segmentation()[:, :, ::-1])
    cv2.imwrite(str(HERE / "depth.png"), depth())
    (HERE / "pose.json").write_text(json.dumps(pose(), indent=1) + "\n")
    for path in sorted(HERE.iterdir()):
        print(f"{path.name:24s} {path.stat().st_size / 1024:6.1f} KB")


if __name__ == "__main__":
    main()
