"""What every detector shares: the image-in, control-map-out call and its two resolutions.

As in controlnet-aux, a detector works on the input resized so its short side is
`detect_resolution`, and its map is then resized to the size `image_resolution` gives (sides
rounded to multiples of 64). Subclasses implement `detect` at detect resolution only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import cv2
import numpy as np

from cnet.imageio import ImageLike, resize_to_resolution, sample_pixels, target_size, to_rgb_array

BLACK_LEVEL = 40  # a pixel with no channel above this is background black
# Line, scribble and pose maps are 0.89-0.99 black (the repo's examples, Canny down to
# thresholds 1/10); photos and drawings on light paper 0.00-0.05.
MAP_BLACK_SHARE = 0.5


def as_rgb(control: np.ndarray) -> np.ndarray:
    """A single-channel map (HxW or HxWx1) -> HxWx3; a 3-channel map unchanged."""
    if control.ndim == 3 and control.shape[2] == 3:
        return control
    return np.repeat(control.reshape(control.shape[:2] + (1,)), 3, axis=2)


def run_aux(model: Any, image: np.ndarray, **options: Any) -> np.ndarray:
    """A controlnet-aux detector on `image` at the image's own size (the detect-size copy is made
    before it, and the map resized after it, here), as a numpy map."""
    side = min(image.shape[:2])
    return model(image, detect_resolution=side, image_resolution=side, output_type="np", **options)


def resize_map(
    control: np.ndarray, size: tuple[int, int], interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """Resize a control map to (height, width); linear like controlnet-aux unless told otherwise."""
    height, width = size
    if control.shape[:2] == (height, width):
        return control
    return cv2.resize(control, (width, height), interpolation=interpolation)


def on_black_notice(image: ImageLike, drawn: str) -> str | None:
    """A notice when `image` is not mostly black, as a map of `drawn` (e.g. "white edges") on
    black is, judged on pixels spread over it."""
    share = float((sample_pixels(image).max(axis=1) <= BLACK_LEVEL).mean())
    if share >= MAP_BLACK_SHARE:
        return None
    return (
        f"Only {share:.0%} of this image is black, but the map this ControlNet reads is {drawn} "
        "on black: this looks like a photo or a drawing on light paper, and it would be read as "
        f"a map as it is. Choose a preprocessor that makes the map from it, or upload {drawn} on "
        "black."
    )


class Detector(ABC):
    """`detector(image, detect_resolution, image_resolution, **params)` -> uint8 HxWx3 map."""

    #: how the map is brought to the output size (nearest keeps label colours exact)
    output_interpolation: int = cv2.INTER_LINEAR

    def __call__(
        self,
        image: ImageLike,
        detect_resolution: int = 512,
        image_resolution: int = 512,
        **params: Any,
    ) -> np.ndarray:
        rgb = to_rgb_array(image)
        small = resize_to_resolution(rgb, detect_resolution)
        control = as_rgb(self.detect(small, **params))
        # sized from the input, not the detect-size copy: two roundings would bend the aspect
        size = target_size(*rgb.shape[:2], image_resolution)
        return resize_map(control, size, self.output_interpolation)

    @abstractmethod
    def detect(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """uint8 HxWx3 RGB at detect resolution -> uint8 map of the same height and width."""


class Passthrough:
    """The "none" backend: the input already is a control map; only made 3-channel and resized."""

    def __call__(
        self,
        image: ImageLike,
        detect_resolution: int = 512,
        image_resolution: int = 512,
        **params: Any,
    ) -> np.ndarray:
        return resize_to_resolution(to_rgb_array(image), image_resolution)
