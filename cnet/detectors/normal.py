"""Normal maps in the axis convention of control_v11p_sd15_normalbae.

Convention (ControlNet 1.1 README, "blue is front, red is left, green is top"; the ScanNet /
NYU-v2 visualisation of Bae et al.'s estimator): a unit normal n = (left, up, toward-viewer) is
stored as RGB = round-down(n * 127.5 + 127.5). A surface facing the viewer is (127, 127, 255),
facing left (255, 127, 127)-ish, facing up (127, 255, 127)-ish; facing right has low red and
facing down low green. NormalBae's own output (`NormalBaeDetector`) is this convention by
definition; `normal_from_depth` produces it from a near-is-bright depth map.

Note: controlnet-aux's MiDaS normal (ControlNet 1.0's `control_sd15_normal`) reverses the
channels to BGR; that is the 1.0 model's convention and is not used here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cnet.detectors.base import Detector, resize_map, run_aux
from cnet.detectors.depth import MidasDepthDetector, load_depth
from cnet.imageio import ImageLike, sample_pixels, target_size

# Every surface a camera sees faces it, so a normal map's blue (z) stays at 128 or above.
LOW_BLUE = 100  # below this (JPEG's noise included) a pixel cannot be a normal
LOW_BLUE_SHARE = 0.1  # photos: 0.3-0.5 of their pixels; normal maps: none


def photo_notice(image: ImageLike) -> str | None:
    """A notice when `image` cannot be a normal map (too many pixels with little blue, as in a
    photo), judged on pixels spread over it."""
    share = float((sample_pixels(image)[:, 2] < LOW_BLUE).mean())
    if share < LOW_BLUE_SHARE:
        return None
    return (
        f"{share:.0%} of this image's pixels have too little blue for a normal map (whose "
        "surfaces all face the camera: blue 128 or more): it looks like a photo. Upload a normal "
        "map, or choose a preprocessor that estimates normals from photos or depth maps."
    )


def normal_from_depth(
    depth: np.ndarray, bg_threshold: float = 0.1, a: float = np.pi * 2.0
) -> np.ndarray:
    """Near-is-bright depth (HxW, any dtype) -> uint8 HxWx3 normal map, as ControlNet 1.0 did.

    The depth is min-max scaled to 0..255 (an 8-bit depth map's range), differentiated with 3x3
    Sobel filters, and (dx, dy, a) normalised: a sets how steep a slope reads as tilted. Pixels
    farther than `bg_threshold` (below that fraction of the depth range) are background and face
    the viewer.
    """
    values = np.asarray(depth, dtype=np.float32)
    if values.ndim == 3:
        values = values[:, :, 0]
    values = values - values.min()
    span = float(values.max())
    if span > 0:  # a flat map stays flat
        values = values / span
    scaled = values * 255.0
    x = cv2.Sobel(scaled, cv2.CV_32F, 1, 0, ksize=3)  # > 0 where the surface turns to the left
    y = cv2.Sobel(scaled, cv2.CV_32F, 0, 1, ksize=3)  # > 0 where it turns up (image y points down)
    background = values < bg_threshold
    x[background] = 0
    y[background] = 0
    normal = np.stack([x, y, np.full_like(x, a)], axis=2)
    normal /= np.sqrt((normal**2).sum(axis=2, keepdims=True))
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


class NormalFromDepthDetector:
    """An uploaded depth map (near = bright; 8/16-bit or float) -> normal map, no weights. The
    slopes are taken on the depth at its own precision: an 8-bit copy of a smooth 16-bit depth
    is a staircase, whose steps read as alternating tilts."""

    def __call__(
        self,
        image: ImageLike,
        detect_resolution: int = 512,
        image_resolution: int = 512,
        bg_threshold: float = 0.1,
        invert: bool = False,
        **_: Any,
    ) -> np.ndarray:
        depth, shape = load_depth(image, detect_resolution, invert)
        control = normal_from_depth(depth, bg_threshold)
        return resize_map(control, target_size(*shape, image_resolution))


class MidasNormalDetector(Detector):
    """Photo -> MiDaS depth (controlnet-aux) -> `normal_from_depth`: the ControlNet 1.0 recipe,
    on the network's float depth as there (slopes of the 8-bit depth map would be its steps)."""

    def __init__(self, weights_dir: Path):
        self.depth = MidasDepthDetector(weights_dir)

    def detect(self, image: np.ndarray, bg_threshold: float = 0.1, **_: Any) -> np.ndarray:
        return normal_from_depth(self.depth.relative_depth(image), bg_threshold)


class NormalBaeDetector(Detector):
    """Bae et al.'s normal estimator through controlnet-aux (weights: scannet.pt)."""

    def __init__(self, weights_dir: Path):
        from controlnet_aux.normalbae import NormalBaeDetector as AuxNormalBae

        self.model = AuxNormalBae.from_pretrained(str(weights_dir))

    def detect(self, image: np.ndarray, **_: Any) -> np.ndarray:
        return run_aux(self.model, image)
