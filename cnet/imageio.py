"""Turn whatever the user hands us into the arrays detectors work on.

Every detector sees uint8 HxWx3 RGB. Uploads arrive as paths, PIL images (any mode, EXIF-rotated)
or numpy arrays (grey, RGBA, 16-bit, float), so the conversion lives here, once.

Size limits: `load_image` scales an upload above MAX_PIXELS down to it (and says so), and refuses
one above REFUSE_PIXELS before decoding it; `target_size` refuses a resize that would make more
than MAX_PIXELS (an extreme aspect ratio, or a keypoints canvas of absurd size).
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

ImageLike = Image.Image | np.ndarray | str | os.PathLike
WHITE = (255, 255, 255)
MAX_PIXELS = 4096 * 4096  # larger uploads are scaled down to this many pixels
BGR_TO_RGB = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGBA}  # by OpenCV's channel count
REFUSE_PIXELS = 100_000_000  # larger ones are refused before decoding (a 100 MP file is a bomb)


# What Pillow's decoders raise on a damaged file, besides OSError ("broken PNG file" is a
# SyntaxError; a damaged AVIF frame a RuntimeError; a truncated GIF an IndexError or struct.error).
DAMAGED = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    RuntimeError,
    IndexError,
    TypeError,
    EOFError,
    struct.error,
)


class ImageInputError(ValueError):
    """The input is not an image we can read; the message is meant for the user."""


def _open(
    path: str | os.PathLike, max_pixels: int | None = None
) -> tuple[Image.Image | np.ndarray, tuple[int, int]]:
    """(the first frame decoded, its full size the right way up); with `max_pixels`, a JPEG
    decodes at a reduced scale. A 16-bit colour PNG comes as a uint16 array (Pillow would make
    it 8-bit)."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"No image file at {path}.")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning (above 89 MP, at open and load); _check_pixels refuses
            # at our limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            stored = image.size
            _check_pixels(*stored)
            orientation = _orientation(image)
            if image.format == "TIFF" and orientation in (5, 6, 7, 8):
                # from memory: Pillow (12.3, 13.0) maps an uncompressed grey, RGBA, 16-bit TIFF from
                # its file at the turned size, which garbles the pixels; read from bytes it is right
                image = Image.open(io.BytesIO(path.read_bytes()))
            if max_pixels and image.width * image.height > max_pixels:
                scale = math.sqrt(max_pixels / (image.width * image.height))
                image.draft(image.mode, (int(image.width * scale), int(image.height * scale)))
            if image.format == "PNG" and orientation == 1 and _colour_16_bit(path):
                array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                if array is not None:
                    return cv2.cvtColor(array, BGR_TO_RGB[array.shape[2]]), stored
            image.load()
            if _orientation(image) in (5, 6, 7, 8):  # on its side still (Pillow turns some TIFFs)
                stored = stored[::-1]
    except ImageInputError:
        raise
    except Image.DecompressionBombError:  # more than twice Pillow's limit: no size to tell
        raise ImageInputError(
            f"{path.name} is more than this app reads ({REFUSE_PIXELS // 1_000_000} "
            "megapixels); scale it down first."
        ) from None
    except DAMAGED as error:
        raise ImageInputError(
            f"{path.name} is not a readable image ({str(error) or type(error).__name__}); "
            "save it again as PNG or JPEG."
        ) from None
    return image, stored


def _colour_16_bit(path: Path) -> bool:
    """Whether a PNG holds 16-bit colour (RGB, RGBA, or grey with alpha) by its header."""
    with path.open("rb") as file:
        header = file.read(26)
    return len(header) == 26 and header[24] == 16 and header[25] in (2, 4, 6)


def stored_size(path: str | os.PathLike) -> tuple[tuple[int, int], int]:
    """((width, height) the right way up, EXIF orientation) of an image file, from its header
    alone (cheap: nothing is decoded). Raises ImageInputError for a file that is not an image."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = _orientation(image)
    except FileNotFoundError:
        raise ImageInputError(f"No image file at {path}.") from None
    except DAMAGED as error:
        raise ImageInputError(
            f"{path} is not a readable image ({str(error) or type(error).__name__}); "
            "save it again as PNG or JPEG."
        ) from None
    turned = orientation in (5, 6, 7, 8)
    return ((height, width) if turned else (width, height)), orientation


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: upright as stored), 1 when the EXIF block cannot be read."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        return 1


def _frames(image: Image.Image) -> int:
    """How many frames a file holds, 1 when a later frame is too damaged to count (the first
    one, already decoded, is still used)."""
    try:
        return getattr(image, "n_frames", 1)
    except DAMAGED:
        return 1


def _check_pixels(width: int, height: int) -> None:
    if width * height > REFUSE_PIXELS:
        raise ImageInputError(
            f"The image is {width}x{height} pixels, more than this app reads "
            f"({REFUSE_PIXELS // 1_000_000} megapixels); scale it down first."
        )


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """PIL image -> array keeping its precision: uint8 (H, W[, 3|4]) or uint16/float (H, W)."""
    with contextlib.suppress(Exception):  # a damaged EXIF block: keep the pixels as stored
        image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":  # 32-bit integers: the values say which precision they were saved at
        array = np.asarray(image)
        if array.min() < 0 or array.max() >= 65536:
            return array
        return array.astype(np.uint8 if array.max() < 256 else np.uint16)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"))
    if image.mode == "La":  # premultiplied; Pillow converts it only to LA
        image = image.convert("LA")
    if image.mode in ("LA", "PA", "RGBa"):
        return np.asarray(image.convert("RGBA"))
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    return np.asarray(image)


@dataclass
class LoadedImage:
    """An upload as an array (precision kept: uint8, uint16 or float) and what was done to it."""

    array: np.ndarray
    notices: list[str] = field(default_factory=list)


def load_image(image: ImageLike, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read an upload for the detectors: EXIF orientation applied, the first frame of an
    animation, scaled down to `max_pixels` when larger; each change is named in `notices`.

    Raises ImageInputError for files that are not images, are corrupt, empty, or too large.
    """
    notices = []
    stored = None  # a file's own size: a large JPEG is decoded already scaled down
    if isinstance(image, (str, os.PathLike)):
        image, stored = _open(image, max_pixels)
    array = _check_shape(_load(image))  # before counting frames, which seeks through them
    if isinstance(image, Image.Image) and (frames := _frames(image)) > 1:
        if image.format == "TIFF":
            notices.append(f"The TIFF has {frames} pages; the first page is used.")
        elif image.format != "MPO":  # a phone photo's second image is its depth or gain map
            notices.append(f"The image is animated ({frames} frames); the first frame is used.")
    height, width = array.shape[:2]
    _check_pixels(width, height)
    if height * width > max_pixels:
        scale = math.sqrt(max_pixels / (height * width))
        array = _resize_any(array, (max(1, int(width * scale)), max(1, int(height * scale))))
    width, height = stored or (width, height)
    if array.shape[0] * array.shape[1] < width * height:
        notices.append(
            f"The image is {width}x{height} pixels; it was scaled down to "
            f"{array.shape[1]}x{array.shape[0]} (the limit is {max_pixels / 1e6:.1f} megapixels)."
        )
    return LoadedImage(array, notices)


def _resize_any(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average resize keeping dtype (cv2 takes uint8, uint16 and float32, up to 4 channels)."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype not in (np.uint8, np.uint16, np.float32):
        array = array.astype(np.float32)
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)


def _load(image: ImageLike) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        image = _open(image)[0]
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
        low, high = int(array.min()), int(array.max())
        if low >= 0 and high <= 255:
            return array.astype(np.uint8)
        scaled = (array.astype(np.float64) - low) * 255.0 / max(high - low, 1)
        return scaled.round().astype(np.uint8)  # beyond 8 bits: the image's own range
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


def sample_pixels(image: ImageLike, count: int = 4096) -> np.ndarray:
    """About `count` pixels spread evenly over `image`, as uint8 RGB rows (N, 3): enough to judge
    what kind of picture it is without reading every pixel."""
    pixels = to_rgb_array(image).reshape(-1, 3)
    return pixels[:: max(1, len(pixels) // count)]


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
        luma = np.array([0.299, 0.587, 0.114], np.float32)
        if array.dtype == np.uint16:  # a 16-bit colour PNG (a depth pass saved as RGB)
            return array[:, :, :3].astype(np.float32) @ luma / 65535.0
        return to_rgb_array(array, background=None).astype(np.float32) @ luma / 255.0
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == bool:
        return array.astype(np.float32)
    values = array.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.all():  # a render pass's inf background: the far end of the finite range
        known = values[finite] if finite.any() else np.zeros(1, np.float32)
        values = np.where(finite, values, np.where(values > 0, known.max(), known.min()))
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return values
    return (values - low) / max(high - low, 1e-12)


def target_size(height: int, width: int, resolution: int, multiple: int = 64) -> tuple[int, int]:
    """(height, width) with the short side scaled to `resolution`, both rounded to `multiple`."""
    whole = isinstance(resolution, numbers.Integral) and not isinstance(resolution, bool)
    if not whole or resolution < 1:
        raise ValueError(
            f"The resolution must be a whole number of pixels, at least 1, got {resolution!r}."
        )
    scale = float(resolution) / min(height, width)
    new_height = int(np.round(height * scale / multiple)) * multiple
    new_width = int(np.round(width * scale / multiple)) * multiple
    new_height, new_width = max(new_height, multiple), max(new_width, multiple)
    if new_height * new_width > MAX_PIXELS:
        raise ImageInputError(
            f"A {width}x{height} image at resolution {resolution} would become "
            f"{new_width}x{new_height} pixels, more than the limit of {MAX_PIXELS / 1e6:.1f} "
            "megapixels; crop it to a less extreme shape or lower the resolution."
        )
    return new_height, new_width


def resize_to_resolution(image: ImageLike, resolution: int, multiple: int = 64) -> np.ndarray:
    """Short side -> `resolution`, sides rounded to `multiple`, as the original `resize_image`.

    Lanczos when enlarging, area averaging when shrinking, so results match controlnet-aux. An
    array keeps its channels; anything else is read as RGB (`to_rgb_array`).
    """
    if not isinstance(image, np.ndarray):
        image = to_rgb_array(image)
    height, width = image.shape[:2]
    new_height, new_width = target_size(height, width, resolution, multiple)
    enlarging = resolution > min(height, width)
    interpolation = cv2.INTER_LANCZOS4 if enlarging else cv2.INTER_AREA
    return cv2.resize(image, (new_width, new_height), interpolation=interpolation)
