"""Normal maps: a sphere's normals point outward, in control_v11p_sd15_normalbae's colours.

Convention: red = left, green = up, blue = toward the viewer (ControlNet 1.1 README).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnet.conditions import detect
from cnet.detectors.normal import normal_from_depth, photo_notice

ASSETS = Path(__file__).resolve().parents[1] / "assets"

SIZE, RADIUS = 256, 100


def _sphere_depth() -> np.ndarray:
    """Near-is-bright depth of a sphere in front of a far background (0)."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inside = RADIUS**2 - (xx - SIZE // 2) ** 2 - (yy - SIZE // 2) ** 2
    return np.where(inside > 0, 100 + np.sqrt(np.clip(inside, 0, None)), 0).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "offset", "channel", "high"),
    [
        ("left", (0, -70), 0, True),
        ("right", (0, 70), 0, False),
        ("top", (-70, 0), 1, True),
        ("bottom", (70, 0), 1, False),
    ],
)
def test_sphere_normals_point_outward(name, offset, channel, high):
    normals = normal_from_depth(_sphere_depth())
    y, x = SIZE // 2 + offset[0], SIZE // 2 + offset[1]
    pixel = normals[y, x].astype(int)
    other = 1 - channel
    if high:
        assert pixel[channel] > 200, (name, pixel)
    else:
        assert pixel[channel] < 55, (name, pixel)
    assert abs(pixel[other] - 127) <= 2  # a horizontal/vertical tilt only
    assert 127 < pixel[2] < 255  # still partly toward the viewer


def test_sphere_centre_and_background_face_the_viewer():
    normals = normal_from_depth(_sphere_depth())
    assert tuple(normals[SIZE // 2, SIZE // 2]) == (127, 127, 255)
    assert tuple(normals[3, 3]) == (127, 127, 255)


def test_diagonal_quadrant_mixes_left_and_up():
    normals = normal_from_depth(_sphere_depth()).astype(int)
    top_left = normals[SIZE // 2 - 50, SIZE // 2 - 50]
    bottom_right = normals[SIZE // 2 + 50, SIZE // 2 + 50]
    assert top_left[0] > 160 and top_left[1] > 160
    assert bottom_right[0] < 95 and bottom_right[1] < 95


def test_normals_are_unit_vectors():
    n = normal_from_depth(_sphere_depth()).astype(np.float32) / 127.5 - 1.0
    assert np.allclose(np.linalg.norm(n, axis=2), 1.0, atol=0.03)


def test_uploaded_depth_backend_and_invert():
    depth = _sphere_depth()
    control = detect("normal", depth, backend="depth_map", detect_resolution=SIZE,
                     image_resolution=SIZE)  # fmt: skip
    assert control.shape == (SIZE, SIZE, 3)
    assert control[SIZE // 2, SIZE // 2 - 70, 0] > 200
    far_bright = depth.max() - depth
    inverted = detect("normal", far_bright, backend="depth_map", invert=True,
                      detect_resolution=SIZE, image_resolution=SIZE)  # fmt: skip
    assert np.abs(inverted.astype(int) - control.astype(int)).max() <= 1


def test_a_16_bit_depth_gives_smooth_normals_not_the_steps_of_an_8_bit_copy():
    """A shallow slope over 8-bit levels is a staircase; at 16 bits it is a ramp."""
    width = 1024  # more pixels than an 8-bit map has levels
    ramp = np.tile(np.arange(20000, 20000 + 8 * width, 8), (SIZE, 1)).astype(np.uint16)
    control = detect("normal", ramp, backend="depth_map", detect_resolution=SIZE,
                     image_resolution=SIZE, bg_threshold=0.0)  # fmt: skip
    red = control[SIZE // 2, 8:-8, 0].astype(int)
    assert red.max() - red.min() <= 1  # one slope, one colour


def test_midas_normals_take_the_networks_float_depth_not_its_8_bit_map():
    import torch
    from controlnet_aux.midas import MidasDetector

    from cnet.detectors.depth import MidasDepthDetector
    from cnet.detectors.normal import MidasNormalDetector

    class ShallowSlope(torch.nn.Module):  # MiDaS's place: a wall turning slowly away, left to right
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            assert pixels.shape[:2] == (1, 3) and -1 <= pixels.min() <= pixels.max() <= 1
            width = pixels.shape[3]
            return torch.linspace(3000.0, 1000.0, width).expand(1, pixels.shape[2], width)

    midas = MidasNormalDetector.__new__(MidasNormalDetector)
    midas.depth = MidasDepthDetector.__new__(MidasDepthDetector)
    midas.depth.model = MidasDetector(ShallowSlope())
    photo = np.full((SIZE, 4 * SIZE, 3), 128, np.uint8)
    control = midas(photo, detect_resolution=SIZE, image_resolution=SIZE, bg_threshold=0.0)
    red = control[SIZE // 2, 8:-8, 0].astype(int)
    assert red.max() - red.min() <= 1 and red.mean() < 127  # one slope, turned right: one colour


def test_a_float_depth_with_an_infinite_background_keeps_its_relief():
    zpass = np.full((SIZE, SIZE), np.inf, np.float32)  # a renderer's Z pass: far = large
    zpass[64:192, 64:192] = np.linspace(2.0, 4.0, 128)[None, :]
    depth = detect("depth", zpass, backend="depth_map", invert=True, image_resolution=SIZE)
    row = depth[SIZE // 2, 70:186, 0].astype(int)
    assert row[0] > row[-1] + 100 and depth[5, 5, 0] == 0  # the near side bright, the far dark


def test_a_photo_given_as_a_normal_map_gets_a_notice_a_normal_map_none():
    photo = np.asarray(Image.open(ASSETS / "examples" / "scene.jpg"))
    normals = np.asarray(Image.open(ASSETS / "embedded" / "examples" / "normal.png"))
    depth = np.asarray(Image.open(ASSETS / "examples" / "depth.png"))
    from_depth = detect("normal", depth, backend="depth_map")
    assert photo_notice(normals) is None and photo_notice(from_depth) is None
    notice = photo_notice(photo)
    assert notice is not None and "looks like a photo" in notice
