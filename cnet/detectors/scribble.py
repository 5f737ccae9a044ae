"""Scribble maps: binary white strokes on black, as control_v11p_sd15_scribble was trained on.

Three sources: the browser canvas (strokes read from the drawing layer's alpha, so the canvas
background and the theme do not matter), an uploaded drawing (dark-on-light or light-on-dark,
detected), and a photo turned into a "fake scribble" by thinning soft edges, blurring and
thresholding as the original fake-scribble app did (HED/PidiNet edges when their weights are
present, image gradients otherwise). The model was trained on strokes 1 to 24 px wide at 512 px.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cnet.detectors.base import Detector, as_rgb, resize_map, run_aux
from cnet.imageio import (
    ImageLike,
    resize_to_resolution,
    target_size,
    to_grey_float,
    to_rgb_array,
    to_rgba_array,
)

# scale of the gradient soft edges: about as wide as HED's edge responses
_SOFT_EDGE_SIGMA = 2.5

_LINE_KERNELS = [
    np.array(kernel, np.uint8)
    for kernel in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
        [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
    )
]


def thin_edges(soft_edges: np.ndarray, threshold: float = 127, sigma: float = 3.0) -> np.ndarray:
    """Soft edge map -> binary ridge lines: blur, keep pixels that are a maximum along at least
    one of four directions, then keep those above `threshold` (uint8 HxW, 0 or 255)."""
    blurred = cv2.GaussianBlur(soft_edges.astype(np.float32), (0, 0), sigma)
    ridges = np.zeros_like(blurred)
    for kernel in _LINE_KERNELS:
        is_max = cv2.dilate(blurred, kernel) == blurred
        ridges[is_max] = blurred[is_max]
    return np.where(ridges > threshold, 255, 0).astype(np.uint8)


def edges_to_scribble(soft_edges: np.ndarray) -> np.ndarray:
    """The fake-scribble recipe: thin soft edges, blur (sigma 3), any trace -> a 255 stroke."""
    strokes = cv2.GaussianBlur(thin_edges(soft_edges, 127, 3.0), (0, 0), 3.0)
    return np.where(strokes > 4, 255, 0).astype(np.uint8)


def thicken(strokes: np.ndarray, width: int) -> np.ndarray:
    """Grow binary strokes by about `width` pixels (0 = unchanged)."""
    if width <= 0:
        return strokes
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(strokes, kernel)


def _binary_map(coverage: np.ndarray, size: tuple[int, int], width: int) -> np.ndarray:
    """Stroke coverage (float HxW, 0..1) at any size -> 0/255 HxWx3 map of `size`."""
    coverage = coverage.astype(np.float32)
    shrink = math.ceil(min(coverage.shape) / min(size))
    if shrink > 1:  # a pen line thinner than one output pixel must still cover it
        coverage = cv2.dilate(coverage, np.ones((shrink, shrink), np.uint8))
    small = resize_map(coverage, size, cv2.INTER_AREA)
    return as_rgb(thicken(np.where(small >= 0.25, 255, 0).astype(np.uint8), width))


def drawing_strokes(image: ImageLike) -> np.ndarray:
    """A drawing on plain paper -> stroke mask (float HxW, 1 = ink) at the drawing's size.

    The paper is the median grey; dark paper means light ink, so both polarities give the same
    mask. Ink is whatever Otsu's threshold separates from the paper. On mostly transparent paper
    (line art exported with a transparent background) the ink is what is opaque.
    """
    rgba = to_rgba_array(image)
    if np.median(rgba[:, :, 3]) < 128:
        return rgba[:, :, 3].astype(np.float32) / 255.0
    grey = to_grey_float(to_rgb_array(rgba))  # partly transparent paper: composited on white
    paper = float(np.median(grey))
    ink = paper - grey if paper > 0.5 else grey - paper
    ink_u8 = (ink.clip(0, 1) * 255).round().astype(np.uint8)
    if int(ink_u8.max()) < 16:  # blank page
        return np.zeros(grey.shape, np.float32)
    level, _ = cv2.threshold(ink_u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return (ink_u8 > max(level, 8)).astype(np.float32)


def _layers_alpha(layers: list) -> np.ndarray | None:
    alphas = [to_rgba_array(layer)[:, :, 3] for layer in layers if layer is not None]
    return np.maximum.reduce(alphas) if alphas else None


def canvas_strokes(value: Any) -> np.ndarray:
    """Canvas input -> stroke mask (float HxW, 1 = stroke).

    Accepts a Gradio image-editor value ({"background", "layers", "composite"}), an RGBA
    strokes layer, or a plain image. Strokes come from layer alpha, joined by the drawing on the
    background (a drawing uploaded into the sketch pad, or an example; blank paper adds none).
    """
    if isinstance(value, Mapping):
        alpha = _layers_alpha(list(value.get("layers") or []))
        background = value.get("background")
        if alpha is None or not alpha.any():
            fallback = value.get("composite")
            fallback = background if fallback is None else fallback
            if fallback is None:
                raise ValueError("The canvas is empty: draw something first.")
            return drawing_strokes(fallback)
        strokes = alpha.astype(np.float32) / 255.0
        if background is None:
            return strokes
        drawn = drawing_strokes(background)
        if drawn.shape != strokes.shape:
            drawn = cv2.resize(drawn, strokes.shape[::-1], interpolation=cv2.INTER_AREA)
        return np.maximum(strokes, drawn)
    return drawing_strokes(value)  # a strokes layer is mostly transparent: its alpha is read


class CanvasDetector:
    """Browser-canvas strokes (layer alpha) -> scribble map; no weights."""

    def __call__(
        self,
        image: Any,
        detect_resolution: int = 512,
        image_resolution: int = 512,
        thickness: int = 0,
        **_: Any,
    ) -> np.ndarray:
        strokes = canvas_strokes(image)
        return _binary_map(strokes, target_size(*strokes.shape, image_resolution), thickness)


class DrawingDetector:
    """An uploaded drawing, either polarity -> white-on-black scribble map; no weights."""

    def __call__(
        self,
        image: ImageLike,
        detect_resolution: int = 512,
        image_resolution: int = 512,
        thickness: int = 0,
        **_: Any,
    ) -> np.ndarray:
        strokes = drawing_strokes(image)
        return _binary_map(strokes, target_size(*strokes.shape, image_resolution), thickness)


class _EdgesToScribble(Detector):
    """Soft edges at detect resolution, resized to the output, then thinned and binarised there
    (the order of the original scribble apps, so the map stays strictly 0/255)."""

    def __call__(
        self,
        image: ImageLike,
        detect_resolution: int = 512,
        image_resolution: int = 512,
        **params: Any,
    ) -> np.ndarray:
        rgb = to_rgb_array(image)
        small = resize_to_resolution(rgb, detect_resolution)
        soft = self.detect(small, **params).astype(np.float32)
        soft = resize_map(soft, target_size(*rgb.shape[:2], image_resolution))
        return as_rgb(edges_to_scribble(soft))


class FakeScribbleDetector(_EdgesToScribble):
    """A photo -> scribble with no weights: gradient soft edges through the fake-scribble recipe."""

    def detect(self, image: np.ndarray, edge_strength: float = 0.3, **_: Any) -> np.ndarray:
        """Soft edges (float HxW, 255 = a certain edge) from the strongest channel gradient."""
        smooth = cv2.GaussianBlur(image.astype(np.float32), (0, 0), _SOFT_EDGE_SIGMA)
        gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
        magnitude = np.sqrt(gx**2 + gy**2).max(axis=2)  # colour edges count, as they do for HED
        # Sobel peak over a blurred step of height h: 8 h / (sigma sqrt(2 pi)). A step of
        # `edge_strength` x the channel range reads as a certain edge (255), like a strong HED edge.
        step = max(edge_strength, 1e-3) * 255.0
        peak = 8.0 * step / (_SOFT_EDGE_SIGMA * np.sqrt(2.0 * np.pi))
        return magnitude / peak * 255.0


class _AuxScribble(_EdgesToScribble):
    """HED / PidiNet soft edges (controlnet-aux) through the same fake-scribble recipe."""

    def __init__(self, model: Any):
        self.model = model

    def detect(self, image: np.ndarray, **_: Any) -> np.ndarray:
        return run_aux(self.model, image)[:, :, 0]


class HEDScribbleDetector(_AuxScribble):
    """HED scribble (weights: ControlNetHED.pth)."""

    def __init__(self, weights_dir: Path):
        from controlnet_aux.hed import HEDdetector

        super().__init__(HEDdetector.from_pretrained(str(weights_dir)))


class PidiNetScribbleDetector(_AuxScribble):
    """PidiNet scribble (weights: table5_pidinet.pth)."""

    def __init__(self, weights_dir: Path):
        from controlnet_aux.pidi import PidiNetDetector

        super().__init__(PidiNetDetector.from_pretrained(str(weights_dir)))
