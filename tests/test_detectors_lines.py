"""Hough lines, offline: a rendered square gives exactly its four sides, drawn like M-LSD maps."""

from __future__ import annotations

import numpy as np
import pytest

from cnet.conditions import detect
from cnet.detectors.lines import detect_segments, draw_segments

SIDES = {  # the square's sides as (fixed axis, value): x = 128, x = 383, y = 128, y = 383
    "left": (0, 128),
    "right": (0, 383),
    "top": (1, 128),
    "bottom": (1, 383),
}


def _square() -> np.ndarray:
    image = np.full((512, 512, 3), 240, np.uint8)
    image[128:384, 128:384] = (30, 60, 200)
    return image


def _side_of(segment: np.ndarray) -> str | None:
    x1, y1, x2, y2 = segment
    for name, (axis, value) in SIDES.items():
        fixed = (x1, x2) if axis == 0 else (y1, y2)
        along = sorted((y1, y2) if axis == 0 else (x1, x2))
        if all(abs(v - value) <= 2 for v in fixed) and along[0] <= 136 and along[1] >= 375:
            return name
    return None


def test_square_gives_its_four_sides():
    segments = detect_segments(_square())
    assert len(segments) == 4
    assert sorted(_side_of(s) for s in segments) == sorted(SIDES)


def test_noise_texture_is_not_lines():
    rng = np.random.default_rng(0)
    noise = rng.integers(100, 156, (512, 512, 3)).astype(np.uint8)
    assert len(detect_segments(noise)) < 5


def test_map_is_one_pixel_white_lines_on_black():
    control = detect("hough", _square(), backend="lines")
    assert control.shape == (512, 512, 3)
    assert set(np.unique(control)) <= {0, 255}
    column = control[256, :, 0]
    assert column[:120].sum() == 0 and column[140:370].sum() == 0  # background stays black
    assert column[125:132].sum() == 255  # the left side is a single pixel wide


def test_draw_segments():
    canvas = draw_segments(np.array([[10, 20, 50, 20]]), 64, 64)
    assert canvas[20, 10:51].min() == 255 and canvas.sum() == 41 * 255


@pytest.mark.slow  # imports controlnet-aux
def test_mlsd_loads_from_the_annotators_folder(tmp_path):
    import torch
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    from cnet.conditions import CONDITIONS, set_annotators_dir

    torch.manual_seed(0)
    torch.save(MobileV2_MLSD_Large().state_dict(), tmp_path / "mlsd_large_512_fp32.pth")
    set_annotators_dir(tmp_path)
    try:
        assert CONDITIONS["hough"].default_backend().name == "mlsd"
        control = detect("hough", _square(), value_threshold=0.1, distance_threshold=0.1)
    finally:
        set_annotators_dir(None)
    assert control.shape == (512, 512, 3)
    assert set(np.unique(control)) <= {0, 255}


def _small_squares(size: int) -> np.ndarray:
    """A square of a tenth of the side, and one of a fiftieth, at `size` px."""
    image = np.full((size, size, 3), 240, np.uint8)
    tenth, fiftieth = size // 4 + size // 10, size * 3 // 4 + size // 50
    image[size // 4 : tenth, size // 4 : tenth] = (30, 60, 200)
    image[size * 3 // 4 : fiftieth, size * 3 // 4 : fiftieth] = (30, 60, 200)
    return image


@pytest.mark.parametrize("size", [128, 512])
def test_the_minimum_length_is_a_share_of_the_side_so_any_resolution_keeps_the_same_lines(size):
    segments = detect_segments(_small_squares(size))  # at least 4 % of the side
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    assert len(segments) == 4 and (lengths > 0.06 * size).all()  # the larger square's sides
    assert len(detect_segments(_small_squares(size), min_length_percent=12)) == 0
