"""Canny edges, white on black, as control_v11p_sd15_canny was trained on."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from cnet.detectors.base import Detector


class CannyDetector(Detector):
    """OpenCV Canny on the RGB image; pixel-identical to controlnet-aux's CannyDetector."""

    def detect(
        self, image: np.ndarray, low_threshold: int = 100, high_threshold: int = 200, **_: Any
    ) -> np.ndarray:
        return cv2.Canny(image, int(low_threshold), int(high_threshold))
