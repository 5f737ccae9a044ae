"""Depth maps, near = bright, as control_v11f1p_sd15_depth was trained on (MiDaS-style).

MiDaS, DPT and Depth Anything predict relative inverse depth (large = near), so their output is
min-max scaled to 0..255 unchanged. Uploaded depth maps keep their 16-bit or float precision
until that scaling; `invert` is for renderers that write far = bright (e.g. a Z pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnet.detectors.base import Detector, as_rgb, resize_map, run_aux
from cnet.imageio import (
    ImageLike,
    resize_to_resolution,
    sample_pixels,
    target_size,
    to_grey_float,
)

COLOUR_SPREAD = 16  # a pixel whose channels differ by more is coloured (a depth map's: 0, JPEG too)
COLOUR_SHARE = 0.1  # photos: 0.3-1.0 of their pixels; colour-mapped depth maps: all


def scaled_depth(depth: np.ndarray, invert: bool = False) -> np.ndarray:
    """Any-scale depth (HxW, large = near unless `invert`) -> float32 HxW, near = 1, far = 0."""
    values = np.nan_to_num(np.asarray(depth, dtype=np.float32))
    values = values - values.min()
    span = float(values.max())
    if span > 0:  # a flat map stays flat
        values = values / span
    return 1.0 - values if invert else values


def depth_to_map(depth: np.ndarray, invert: bool = False) -> np.ndarray:
    """Any-scale depth (HxW, large = near unless `invert`) -> uint8 HxW, near = 255, far = 0."""
    return (scaled_depth(depth, invert) * 255.0).round().clip(0, 255).astype(np.uint8)


def load_depth(
    image: ImageLike, resolution: int, invert: bool = False
) -> tuple[np.ndarray, tuple[int, int]]:
    """(an uploaded depth image as float32 HxW near-is-bright depth in [0, 1] at `resolution`
    (short side), its 16-bit or float precision kept; the upload's own height and width)."""
    depth = to_grey_float(image)
    # Lanczos overshoots at sharp edges when enlarging; outside the map's own range that would
    # move the min-max scaling (a far background of 0 came out at 47)
    resized = resize_to_resolution(depth, resolution).clip(depth.min(), depth.max())
    return scaled_depth(resized, invert), depth.shape[:2]


def colour_notice(image: ImageLike) -> str | None:
    """A notice when `image` is a colour picture (a photo, a colour-mapped depth map), not a grey
    depth map, judged on pixels spread over it."""
    pixels = sample_pixels(image).astype(np.int16)
    share = float((np.ptp(pixels, axis=1) > COLOUR_SPREAD).mean())
    if share < COLOUR_SHARE:
        return None
    return (
        f"{share:.0%} of this image's pixels are coloured: it looks like a photo (or a depth map "
        "in false colours), not a grey depth map, and its brightness is read as depth. Upload a "
        "grey depth map (near = bright), or choose a preprocessor that estimates depth from "
        "photos."
    )


class DepthMapDetector:
    """An uploaded depth map (8/16-bit or float), normalised to near = bright; no weights."""

    def __call__(
        self,
        image: ImageLike,
        detect_resolution: int = 512,
        image_resolution: int = 512,
        invert: bool = False,
        **_: Any,
    ) -> np.ndarray:
        depth, shape = load_depth(image, detect_resolution, invert)
        return resize_map(as_rgb(depth_to_map(depth)), target_size(*shape, image_resolution))


class MidasDepthDetector(Detector):
    """MiDaS DPT-Hybrid through controlnet-aux (weights: dpt_hybrid-midas-501f0c75.pt)."""

    def __init__(self, weights_dir: Path):
        from controlnet_aux.midas import MidasDetector

        self.model = MidasDetector.from_pretrained(str(weights_dir))

    def detect(self, image: np.ndarray, **_: Any) -> np.ndarray:
        return run_aux(self.model, image)

    def relative_depth(self, image: np.ndarray) -> np.ndarray:
        """The network's own float output for uint8 RGB `image` (sides multiples of 32), HxW,
        near = large: the precision that the 8-bit map of `detect` rounds away."""
        import torch

        network = self.model.model
        device = next(network.parameters()).device
        pixels = torch.from_numpy(image).to(device).float() / 127.5 - 1.0  # controlnet-aux's input
        with torch.no_grad():
            depth = network(pixels.permute(2, 0, 1)[None])[0]
        return depth.float().cpu().numpy()


class DepthAnythingDetector(Detector):
    """Depth Anything (transformers), loaded from a local `from_pretrained` folder."""

    def __init__(self, model_dir: Path):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.processor = AutoImageProcessor.from_pretrained(model_dir)
        self.model = AutoModelForDepthEstimation.from_pretrained(model_dir).eval()

    def detect(self, image: np.ndarray, **_: Any) -> np.ndarray:
        import torch

        inputs = self.processor(images=image, return_tensors="pt")
        with torch.no_grad():
            depth = self.model(**inputs).predicted_depth
        depth = torch.nn.functional.interpolate(
            depth[:, None], size=image.shape[:2], mode="bicubic", align_corners=False
        )
        return depth_to_map(depth[0, 0].numpy())
