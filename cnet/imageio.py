"""Turn whatever the user hands us into the arrays detectors work on.

Every detector sees uint8 HxWx3 RGB. Uploads arrive as paths, PIL images (any mode, EXIF-rotated)
or numpy arrays (grey, RGBA, 16-bit, float), so the conversion lives here, once.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Image.Image | np.ndarray | str | os.PathLike
WHITE = (255, 255, 255)


class ImageInputError(ValueError):
    """The input is not an image we can read; the message is meant for the user."""


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"No image file at {path}.")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise ImageInputError(f"{path.name} is not a readable image ({error}).") from None
    return image


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """PIL image -> array keeping its precision: uint8 (H, W[, 3|4]) or uint16/float (H, W)."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":
        array = np.asarray(image)
        return array.astype(np.uint16) if array.min() >= 0 and array.max() < 65536 else array
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"))
    if image.mode in ("LA", "PA", "RGBa", "La"):
        return np.asarray(image.convert("RGBA"))
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    return np.asarray(image)


def _load(image: ImageLike) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        image = _open(image)
    if isinstance(image, Image.Image):
        return _pil_to_array(image)
    if isinstance(image, np.ndarray):
        return image
    raise ImageInputError(f"Expected an image, got {type(image).__name__}.")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return ((array.astype(np.float32) + 0.5) / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float32))
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        return (finite * scale).round().clip(0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array.clip(0, 255).astype(np.uint8)
    raise ImageInputError(f"Unsupported pixel type {array.dtype}.")


def _check_shape(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageInputError(f"Expected an HxW, HxWx3 or HxWx4 image, got shape {array.shape}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageInputError("The image is empty.")
    return array


def to_rgb_array(image: ImageLike, background: tuple[int, int, int] | None = WHITE) -> np.ndarray:
    """Any image -> uint8 HxWx3 RGB.

    EXIF orientation is applied; palette, grey, CMYK, 16-bit and float inputs are converted;
    RGBA is composited on `background` (white by default, the arithmetic of controlnet-aux's
    `HWC3`), or its alpha dropped when `background` is None.
    """
    array = _to_uint8(_check_shape(_load(image)))
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 3:
        return array
    if background is None:
        return np.ascontiguousarray(array[:, :, :3])
    color = array[:, :, :3].astype(np.float32)
    alpha = array[:, :, 3:4].astype(np.float32) / 255.0
    backdrop = np.asarray(background, dtype=np.float32)
    return (color * alpha + backdrop * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def to_rgba_array(image: ImageLike) -> np.ndarray:
    """Any image -> uint8 HxWx4; images without alpha are fully opaque."""
    array = _to_uint8(_check_shape(_load(image)))
    if array.ndim == 3 and array.shape[2] == 4:
        return array
    rgb = to_rgb_array(array)
    return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)


def to_grey_float(image: ImageLike) -> np.ndarray:
    """Any image -> float32 HxW in [0, 1], keeping 16-bit and float precision (depth uploads)."""
    array = _check_shape(_load(image))
    if array.ndim == 3:
        rgb = to_rgb_array(array, background=None).astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == bool:
        return array.astype(np.float32)
    values = np.nan_to_num(array.astype(np.float32))
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return values
    return (values - low) / max(high - low, 1e-12)


def target_size(height: int, width: int, resolution: int, multiple: int = 64) -> tuple[int, int]:
    """(height, width) with the short side scaled to `resolution`, both rounded to `multiple`."""
    scale = float(resolution) / min(height, width)
    new_height = int(np.round(height * scale / multiple)) * multiple
    new_width = int(np.round(width * scale / multiple)) * multiple
    return max(new_height, multiple), max(new_width, multiple)


def resize_to_resolution(image: np.ndarray, resolution: int, multiple: int = 64) -> np.ndarray:
    """Short side -> `resolution`, sides rounded to `multiple`, as the original `resize_image`.

    Lanczos when enlarging, area averaging when shrinking, so results match controlnet-aux.
    """
    height, width = image.shape[:2]
    new_height, new_width = target_size(height, width, resolution, multiple)
    enlarging = resolution > min(height, width)
    interpolation = cv2.INTER_LANCZOS4 if enlarging else cv2.INTER_AREA
    return cv2.resize(image, (new_width, new_height), interpolation=interpolation)
