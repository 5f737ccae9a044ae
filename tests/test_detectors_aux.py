"""The controlnet-aux wrappers, with a stand-in for each model (their weights are not here): each
runs its model at the image's own size, with the detector's settings under aux's names."""

import numpy as np
import pytest

from cnet.detectors.depth import MidasDepthDetector
from cnet.detectors.lines import MLSDDetector
from cnet.detectors.normal import NormalBaeDetector
from cnet.detectors.pose import OpenPoseDetector
from cnet.detectors.scribble import HEDScribbleDetector, PidiNetScribbleDetector


class StandIn:
    """What a controlnet-aux detector is called with; answers a map of the image's size."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, image: np.ndarray, **options) -> np.ndarray:
        self.calls.append(options)
        return np.full(image.shape[:2] + (3,), 200, np.uint8)


@pytest.mark.parametrize(
    ("detector", "settings", "aux_options"),
    [
        (MidasDepthDetector, {}, {}),
        (NormalBaeDetector, {}, {}),
        (
            MLSDDetector,
            {"value_threshold": 0.2, "distance_threshold": 0.3},
            {"thr_v": 0.2, "thr_d": 0.3},
        ),
        (
            OpenPoseDetector,
            {"include_hands": True, "include_face": False},
            {"include_hand": True, "include_face": False},
        ),
        (HEDScribbleDetector, {}, {}),
        (PidiNetScribbleDetector, {}, {}),
    ],
)
def test_each_aux_detector_runs_its_model_at_the_images_size(detector, settings, aux_options):
    wrapper = detector.__new__(detector)
    wrapper.model = StandIn()
    made = wrapper.detect(np.zeros((96, 128, 3), np.uint8), **settings)
    assert made.shape[:2] == (96, 128)
    size = {"detect_resolution": 96, "image_resolution": 96, "output_type": "np"}
    assert wrapper.model.calls == [size | aux_options]
