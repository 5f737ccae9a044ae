"""Segmentation maps in the ADE20K palette that control_v11p_sd15_seg was trained on.

Class i of ADE20K's 150 is painted `ADE20K_PALETTE[i]` (the mmsegmentation palette, which the
ControlNet 1.1 seg annotators use). Uploaded maps are snapped to the nearest palette colour so
JPEG noise or antialiased borders do not produce colours the ControlNet never saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cnet.detectors.base import Detector, resize_map
from cnet.imageio import ImageLike, sample_pixels, target_size, to_rgb_array

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashtray", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip

#: (150, 3) uint8 RGB, row i = colour of ADE20K class i (`ADE20K_CLASSES[i]`)
ADE20K_PALETTE = np.array(
    [
        [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3],
        [120, 120, 80], [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7],
        [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70], [8, 255, 51],
        [255, 6, 82], [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3],
        [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255], [255, 7, 71],
        [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
        [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10],
        [7, 255, 255], [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7],
        [255, 122, 8], [0, 255, 20], [255, 8, 41], [255, 5, 153], [6, 51, 255],
        [235, 12, 255], [160, 150, 20], [0, 163, 255], [140, 140, 140], [250, 10, 15],
        [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0], [153, 255, 0],
        [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
        [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112],
        [0, 255, 133], [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0],
        [0, 143, 255], [51, 255, 0], [0, 82, 255], [0, 255, 41], [0, 255, 173],
        [10, 0, 255], [173, 255, 0], [0, 255, 153], [255, 92, 0], [255, 0, 255],
        [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20], [255, 184, 184],
        [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
        [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255],
        [0, 122, 255], [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0],
        [143, 255, 0], [82, 0, 255], [163, 255, 0], [255, 235, 0], [8, 184, 170],
        [133, 0, 255], [0, 255, 92], [184, 0, 255], [255, 0, 31], [0, 184, 255],
        [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255], [112, 224, 255],
        [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
        [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235],
        [245, 0, 255], [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0],
        [0, 204, 255], [20, 0, 255], [255, 255, 0], [0, 153, 255], [0, 41, 255],
        [0, 255, 204], [41, 0, 255], [41, 255, 0], [173, 0, 255], [0, 245, 255],
        [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255], [184, 255, 0],
        [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
    ],
    dtype=np.uint8,
)  # fmt: skip


def ade20k_color(name: str) -> tuple[int, int, int]:
    """Palette colour of an ADE20K class by name, e.g. `ade20k_color("sky")`."""
    if name not in ADE20K_CLASSES:
        raise ValueError(f"{name!r} is no ADE20K class name (e.g. wall, sky, person, floor).")
    return tuple(int(c) for c in ADE20K_PALETTE[ADE20K_CLASSES.index(name)])


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) integer ADE20K class indices -> uint8 HxWx3 palette map."""
    return ADE20K_PALETTE[np.asarray(labels) % len(ADE20K_PALETTE)]


def snap_to_palette(image: np.ndarray, palette: np.ndarray = ADE20K_PALETTE) -> np.ndarray:
    """Replace every pixel by the nearest palette colour (Euclidean in RGB)."""
    pixels = image.reshape(-1, 3).astype(np.int32)
    keys = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    colors = np.stack([unique_keys >> 16, (unique_keys >> 8) & 255, unique_keys & 255], axis=1)
    nearest = np.empty(len(colors), np.intp)
    reference = palette.astype(np.int32)
    for start in range(0, len(colors), 8192):  # bounded memory for photo-like uploads
        chunk = colors[start : start + 8192]
        distances = ((chunk[:, None, :] - reference[None]) ** 2).sum(axis=-1)
        nearest[start : start + 8192] = distances.argmin(axis=1)
    return palette[nearest[inverse.ravel()]].reshape(image.shape)


MAP_COLOUR_REACH = 12  # a pixel this near (RGB distance) a palette colour is one of a map
MAP_SHARE = 0.5  # maps, even saved as JPEG: about 0.9 of the pixels; photos and depth maps: < 0.2


def photo_notice(image: ImageLike) -> str | None:
    """A notice when `image` does not look like a map in the ADE20K palette (a photo, or a map
    in other colours), judged on pixels spread over it."""
    pixels = sample_pixels(image).astype(np.int32)
    distances = ((pixels[:, None, :] - ADE20K_PALETTE.astype(np.int32)[None]) ** 2).sum(axis=-1)
    share = float((distances.min(axis=1) <= MAP_COLOUR_REACH**2).mean())
    if share >= MAP_SHARE:
        return None
    return (
        f"Only {share:.0%} of this image's pixels have ADE20K segmentation colours: it looks like "
        "a photo (or a map in other colours), and snapped to the palette it makes a meaningless "
        "map. Upload a map in the ADE20K palette, or choose a preprocessor that segments photos "
        "(UperNet)."
    )


class PaletteSnapDetector:
    """An uploaded segmentation map, snapped to the ADE20K palette.

    Resized with nearest-neighbour on both sides so no blended border colours appear.
    """

    def __call__(
        self,
        image: ImageLike,
        detect_resolution: int = 512,
        image_resolution: int = 512,
        **_: Any,
    ) -> np.ndarray:
        rgb = to_rgb_array(image)
        small = resize_map(rgb, target_size(*rgb.shape[:2], detect_resolution), cv2.INTER_NEAREST)
        snapped = snap_to_palette(small)
        size = target_size(*rgb.shape[:2], image_resolution)
        return resize_map(snapped, size, cv2.INTER_NEAREST)


class UperNetDetector(Detector):
    """UperNet (transformers) trained on ADE20K, loaded from a local `from_pretrained` folder."""

    output_interpolation = cv2.INTER_NEAREST

    def __init__(self, model_dir: Path):
        from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

        self.processor = AutoImageProcessor.from_pretrained(model_dir)
        self.model = UperNetForSemanticSegmentation.from_pretrained(model_dir).eval()

    def detect(self, image: np.ndarray, **_: Any) -> np.ndarray:
        import torch

        inputs = self.processor(images=image, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**inputs).logits
        logits = torch.nn.functional.interpolate(
            logits, size=image.shape[:2], mode="bilinear", align_corners=False
        )
        return colorize(logits.argmax(dim=1)[0].numpy())
