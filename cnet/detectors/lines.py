"""Straight-line maps: 1-pixel white segments on black, as M-LSD draws them for control_*_mlsd.

M-LSD (controlnet-aux) needs weights; `LineSegmentDetector` is the offline path: OpenCV's LSD
finds segments, then short and faint ones are dropped so what remains looks like an M-LSD map
(long structural lines, no texture).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cnet.detectors.base import Detector, run_aux

# how far either side of a segment the contrast is measured, in pixels
_CONTRAST_OFFSET = 2.0


def _contrast(grey: np.ndarray, segments: np.ndarray, samples: int = 16) -> np.ndarray:
    """Mean absolute grey-level step across each segment (x1, y1, x2, y2), in 0..255."""
    start, end = segments[:, None, :2], segments[:, None, 2:]
    t = np.linspace(0.1, 0.9, samples)[None, :, None]
    points = start + (end - start) * t
    direction = (end - start)[:, 0]
    normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-6)
    offset = normal[:, None, :] * _CONTRAST_OFFSET
    height, width = grey.shape

    def sample(p: np.ndarray) -> np.ndarray:
        x = np.clip(np.round(p[..., 0]).astype(int), 0, width - 1)
        y = np.clip(np.round(p[..., 1]).astype(int), 0, height - 1)
        return grey[y, x].astype(np.float32)

    return np.abs(sample(points + offset) - sample(points - offset)).mean(axis=1)


def detect_segments(image: np.ndarray, min_length_percent: float = 4.0, contrast: float = 20.0):
    """Line segments of an RGB image as a float (N, 4) array of (x1, y1, x2, y2) pixels.

    Segments shorter than `min_length_percent` of the image's shorter side, or with a grey-level
    step across them below `contrast` (0..255), are dropped: the same lines at any preprocessor
    resolution.
    """
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    found = cv2.createLineSegmentDetector().detect(grey)[0]
    if found is None:
        return np.zeros((0, 4), np.float32)
    segments = found.reshape(-1, 4)
    lengths = np.hypot(segments[:, 2] - segments[:, 0], segments[:, 3] - segments[:, 1])
    segments = segments[lengths >= min_length_percent / 100 * min(grey.shape)]
    if len(segments):
        segments = segments[_contrast(grey, segments) >= contrast]
    return segments


def draw_segments(segments: np.ndarray, height: int, width: int) -> np.ndarray:
    """White 1-pixel segments on a black HxW canvas, as M-LSD maps are drawn."""
    canvas = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in np.asarray(segments).astype(int).tolist():
        cv2.line(canvas, (x1, y1), (x2, y2), 255, 1)
    return canvas


class LineSegmentDetector(Detector):
    """Offline straight lines: OpenCV LSD, filtered by length and contrast."""

    def detect(
        self,
        image: np.ndarray,
        min_length_percent: float = 4.0,
        contrast: float = 20.0,
        **_: Any,
    ) -> np.ndarray:
        segments = detect_segments(image, min_length_percent, contrast)
        return draw_segments(segments, *image.shape[:2])


class MLSDDetector(Detector):
    """M-LSD through controlnet-aux (weights: mlsd_large_512_fp32.pth)."""

    def __init__(self, weights_dir: Path):
        from controlnet_aux.mlsd import MLSDdetector

        self.model = MLSDdetector.from_pretrained(str(weights_dir))

    def detect(
        self,
        image: np.ndarray,
        value_threshold: float = 0.1,
        distance_threshold: float = 0.1,
        **_: Any,
    ) -> np.ndarray:
        return run_aux(self.model, image, thr_v=value_threshold, thr_d=distance_threshold)
