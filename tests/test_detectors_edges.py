"""Canny: edges on a rendered square's border, pixel-identical to controlnet-aux."""

from __future__ import annotations

import numpy as np
import pytest

from cnet.conditions import detect
from cnet.detectors.edges import CannyDetector


def _square(size: int = 512, lo: int = 128, hi: int = 384) -> np.ndarray:
    image = np.full((size, size, 3), 235, np.uint8)
    image[lo:hi, lo:hi] = (40, 70, 190)
    return image


def test_canny_edges_lie_on_the_square_border():
    control = detect("canny", _square(), backend="canny")
    assert control.shape == (512, 512, 3) and control.dtype == np.uint8
    assert set(np.unique(control)) <= {0, 255}
    ys, xs = np.nonzero(control[:, :, 0])
    distance_to_border = np.minimum(
        np.minimum(np.abs(xs - 128), np.abs(xs - 383)),
        np.minimum(np.abs(ys - 128), np.abs(ys - 383)),
    )
    inside_band = (xs >= 126) & (xs <= 385) & (ys >= 126) & (ys <= 385)
    assert inside_band.all() and (distance_to_border <= 1).all()
    for y in (128, 200, 383):  # both vertical sides are found along their length
        assert control[y, 126:131, 0].any() and control[y, 381:386, 0].any()


def test_thresholds_matter():
    image = _square()
    image[200:210, 200:210] = (60, 90, 200)  # faint inner detail
    low = detect("canny", image, low_threshold=10, high_threshold=20)
    high = detect("canny", image, low_threshold=200, high_threshold=250)
    assert (low > 0).sum() > (high > 0).sum()


@pytest.fixture(scope="module")
def aux_canny():
    from controlnet_aux.canny import CannyDetector as AuxCanny

    return AuxCanny()


@pytest.mark.parametrize(
    ("shape", "detect_resolution", "image_resolution", "thresholds"),
    [
        ((512, 512), 512, 512, (100, 200)),
        ((300, 451), 512, 512, (100, 200)),
        ((500, 500), 384, 640, (50, 120)),
    ],
)
def test_canny_is_pixel_identical_to_controlnet_aux(
    aux_canny, shape, detect_resolution, image_resolution, thresholds
):
    rng = np.random.default_rng(sum(shape))
    image = _square(max(shape))[: shape[0], : shape[1]].copy()
    image = (image.astype(int) + rng.integers(-30, 30, image.shape)).clip(0, 255).astype(np.uint8)
    low, high = thresholds
    ours = CannyDetector()(
        image, detect_resolution, image_resolution, low_threshold=low, high_threshold=high
    )
    theirs = aux_canny(
        image,
        low_threshold=low,
        high_threshold=high,
        detect_resolution=detect_resolution,
        image_resolution=image_resolution,
        output_type="np",
    )
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)


def test_the_map_is_sized_from_the_input_not_from_its_detect_size_copy():
    """ControlNet 1.1's apps size the map from the input; controlnet-aux rounds twice, and a
    700 x 500 photo detected at 384 would come out 832 x 640 (1.3) instead of 896 x 640 (1.4)."""
    image = _square(700)[:700, :500].copy()
    for detect_resolution in (128, 384, 512, 1024):
        control = CannyDetector()(image, detect_resolution, 640)
        assert control.shape[:2] == (896, 640), detect_resolution
