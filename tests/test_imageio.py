"""Input conversion: every kind of upload becomes uint8 HxWx3 RGB, the right way up."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from cnet import imageio
from cnet.imageio import (
    ImageInputError,
    resize_to_resolution,
    target_size,
    to_grey_float,
    to_rgb_array,
    to_rgba_array,
)


def _gradient(height: int = 40, width: int = 60) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    return np.stack([x * 4, y * 6, (x + y) * 2], axis=2).clip(0, 255).astype(np.uint8)


def test_rgb_passes_through_unchanged():
    rgb = _gradient()
    assert np.array_equal(to_rgb_array(rgb), rgb)
    assert np.array_equal(to_rgb_array(Image.fromarray(rgb)), rgb)


def test_grey_becomes_three_equal_channels():
    grey = _gradient()[:, :, 0]
    for source in (grey, grey[:, :, None], Image.fromarray(grey)):
        out = to_rgb_array(source)
        assert out.shape == grey.shape + (3,)
        assert np.array_equal(out[:, :, 0], grey) and np.array_equal(out[:, :, 2], grey)


def test_rgba_is_composited_on_white_or_given_background():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    out = to_rgb_array(rgba)
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[3, 0]) == (255, 255, 255)
    assert tuple(to_rgb_array(rgba, background=(51, 51, 51))[3, 0]) == (51, 51, 51)
    assert tuple(to_rgb_array(rgba, background=None)[3, 0]) == (200, 0, 0)


def test_grey_with_premultiplied_alpha_is_read():
    image = Image.new("LA", (4, 4), (100, 255)).convert("La")
    assert tuple(to_rgb_array(image)[0, 0]) == (100, 100, 100)


def test_palette_image_with_transparency():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([10, 20, 30, 250, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    out = to_rgb_array(image)
    assert tuple(out[1, 1]) == (250, 0, 0)
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent index composited on white


def test_16_bit_images_keep_their_range():
    wide = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
    out = to_rgb_array(wide)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    png = io.BytesIO()
    Image.fromarray(wide).save(png, format="PNG")
    png.seek(0)
    grey = to_grey_float(Image.open(png))
    assert grey.dtype == np.float32
    assert len(np.unique(grey)) == 64  # 16-bit steps survive, 8-bit would merge some
    assert grey.min() == 0.0 and grey.max() == 1.0


def test_32_bit_integer_images_are_read_at_the_precision_their_values_have(tmp_path):
    band = np.zeros((8, 16), np.int32)
    band[:, :8] = 200  # 8-bit values in a 32-bit file (some scanners' and tools' TIFFs)
    Image.fromarray(band).save(tmp_path / "eight.tif")
    assert Image.open(tmp_path / "eight.tif").mode == "I"
    assert to_rgb_array(tmp_path / "eight.tif")[0, 0, 0] == 200
    assert to_grey_float(tmp_path / "eight.tif")[0, 0] == pytest.approx(200 / 255)
    Image.fromarray(band * 300).save(tmp_path / "sixteen.tif")  # 60000: 16-bit values
    assert to_rgb_array(tmp_path / "sixteen.tif")[0, 0, 0] == 233
    assert to_grey_float(tmp_path / "sixteen.tif")[0, 0] == pytest.approx(60000 / 65535)
    Image.fromarray(band * 1000 - 50_000).save(tmp_path / "wide.tif")  # -50000 .. 150000
    assert to_rgb_array(tmp_path / "wide.tif")[0, :, 0].tolist() == [255] * 8 + [0] * 8
    assert to_grey_float(tmp_path / "wide.tif")[0, :].tolist() == [1.0] * 8 + [0.0] * 8


def test_float_images_in_unit_range():
    out = to_rgb_array(np.full((3, 3, 3), 0.5, np.float32))
    assert out[0, 0, 0] == 128


def test_exif_orientation_is_applied(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)  # left half red, landscape
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 6  # stored image must be rotated 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    out = to_rgb_array(path)
    assert out.shape[:2] == (40, 20)  # portrait after applying orientation
    assert out[5, 10, 0] > 200 and out[35, 10, 0] < 60  # red is now on top


def test_cmyk_and_path_inputs(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(path)
    out = to_rgb_array(str(path))
    assert out.shape == (10, 10, 3) and out[0, 0, 0] > 200 and out[0, 0, 1] < 60


@pytest.mark.parametrize(
    "bad",
    [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), "missing.png", 42],
)
def test_bad_inputs_raise_a_user_facing_error(bad):
    with pytest.raises(ImageInputError):
        to_rgb_array(bad)


def test_corrupt_file_raises(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageInputError, match="broken.png"):
        to_rgb_array(path)


def test_rgba_of_opaque_image_is_opaque():
    assert (to_rgba_array(_gradient())[:, :, 3] == 255).all()


@pytest.mark.parametrize(
    ("shape", "resolution", "expected"),
    [((512, 512), 512, (512, 512)), ((300, 451), 512, (512, 768)), ((1080, 1920), 512, (512, 896))],
)
def test_target_size_rounds_to_multiples_of_64(shape, resolution, expected):
    assert target_size(*shape, resolution) == expected


def test_resize_to_resolution_shapes():
    out = resize_to_resolution(_gradient(300, 451), 512)
    assert out.shape == (512, 768, 3) and out.dtype == np.uint8
    assert np.array_equal(resize_to_resolution(Image.fromarray(_gradient(300, 451)), 512), out)


def test_load_image_scales_large_uploads_down_with_a_notice(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(_gradient(200, 300)).save(path)
    loaded = imageio.load_image(path, max_pixels=64 * 64)
    height, width = loaded.array.shape[:2]
    assert height * width <= 64 * 64 and abs(width / height - 1.5) < 0.05
    assert len(loaded.notices) == 1 and "300x200" in loaded.notices[0]
    small = imageio.load_image(_gradient(10, 10), max_pixels=64 * 64)
    assert small.notices == [] and small.array.shape == (10, 10, 3)


@pytest.mark.parametrize(
    ("stored", "decoded"), [((512, 512), (256, 256)), ((640, 400), (320, 200))]
)
def test_a_large_jpeg_decoded_at_a_reduced_scale_is_named_at_its_stored_size(
    tmp_path, stored, decoded
):
    path = tmp_path / "big.jpg"
    Image.new("RGB", stored, (120, 30, 200)).save(path)
    limit = stored[0] * stored[1] // 4
    loaded = imageio.load_image(path, max_pixels=limit)
    assert loaded.array.shape[1::-1] == decoded  # the JPEG decoder halved it, nothing else did
    assert loaded.notices == [
        f"The image is {stored[0]}x{stored[1]} pixels; it was scaled down to "
        f"{decoded[0]}x{decoded[1]} (the limit is {limit / 1e6:.1f} megapixels)."
    ]


def test_load_image_keeps_16_bit_precision_when_scaling():
    wide = np.linspace(0, 65535, 128 * 128).reshape(128, 128).astype(np.uint16)
    loaded = imageio.load_image(wide, max_pixels=32 * 32)
    assert loaded.array.dtype == np.uint16 and loaded.array.shape == (32, 32)


def test_load_image_refuses_a_decompression_bomb_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(imageio, "REFUSE_PIXELS", 100 * 100)
    path = tmp_path / "bomb.png"
    Image.new("L", (400, 300)).save(path)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(ImageInputError, match="400x300"):
        imageio.load_image(path)
    assert decoded == []


def test_animated_image_gives_its_first_frame_and_a_notice(tmp_path):
    colours = [(200, 0, 0), (0, 0, 200), (0, 200, 0)]
    frames = [Image.new("RGB", (16, 16), colour) for colour in colours]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    loaded = imageio.load_image(path)
    assert "3 frames" in loaded.notices[0]
    rgb = to_rgb_array(loaded.array)
    assert rgb[0, 0, 0] > 150 and rgb[0, 0, 2] < 50


@pytest.mark.parametrize(
    "content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64]
)
def test_load_image_refuses_empty_corrupt_and_non_images(tmp_path, content):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(ImageInputError, match="upload.png"):
        imageio.load_image(path)


def test_one_pixel_image_loads():
    loaded = imageio.load_image(np.full((1, 1, 3), 7, np.uint8))
    assert loaded.array.shape == (1, 1, 3) and loaded.notices == []
    assert resize_to_resolution(to_rgb_array(loaded.array), 64).shape == (64, 64, 3)


def test_target_size_refuses_extreme_shapes():
    with pytest.raises(ImageInputError, match="crop"):
        target_size(1, 100_000, 512)


def test_damaged_files_are_named_not_tracebacks(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    pixels = zlib.compress(b"".join(b"\x00" + bytes(range(32)) for _ in range(32)))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 0, 0, 0, 0))
    broken = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", pixels[:40])
    broken += chunk(b"\xffw\xfc\\", pixels[40:]) + chunk(b"IEND", b"")  # Pillow: SyntaxError
    (tmp_path / "broken.png").write_bytes(broken)
    with pytest.raises(ImageInputError, match="broken.png is not a readable image"):
        imageio.load_image(tmp_path / "broken.png")


def test_a_truncated_animation_gives_its_first_frame(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    frames = [Image.fromarray(frame) for frame in noise]
    whole = io.BytesIO()
    frames[0].save(whole, format="GIF", save_all=True, append_images=frames[1:])
    (tmp_path / "cut.gif").write_bytes(whole.getvalue()[: len(whole.getvalue()) * 9 // 10])
    with pytest.raises(IndexError):
        Image.open(tmp_path / "cut.gif").n_frames  # noqa: B018 (Pillow counts by decoding)
    loaded = imageio.load_image(tmp_path / "cut.gif")
    assert loaded.array.shape[:2] == (16, 16)


def test_pages_of_a_tiff_are_named_and_a_phone_photos_second_image_is_not(tmp_path):
    pages = [Image.new("RGB", (16, 16), (40 * i, 0, 0)) for i in range(3)]
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:])
    assert imageio.load_image(tmp_path / "scan.tif").notices == [
        "The TIFF has 3 pages; the first page is used."
    ]
    pages[0].save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=pages[1:2])
    assert Image.open(tmp_path / "phone.jpg").format == "MPO"
    assert imageio.load_image(tmp_path / "phone.jpg").notices == []


def test_beyond_pillows_own_bomb_limit_the_apps_message(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("L", (400, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400x300 is over twice Pillow's limit
    with pytest.raises(ImageInputError, match="more than this app reads.*scale it down first"):
        imageio.load_image(path)


def test_a_photo_stored_on_its_side_is_named_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to view
    path = tmp_path / "side.jpg"
    Image.new("RGB", (640, 400), (90, 90, 90)).save(path, exif=exif.tobytes())
    loaded = imageio.load_image(path, max_pixels=640 * 400 // 4)
    assert loaded.array.shape[:2] == (320, 200)
    assert loaded.notices[0].startswith("The image is 400x640 pixels; it was scaled down to 200x")


def test_a_16_bit_colour_png_keeps_its_precision_and_channel_order(tmp_path):
    ramp = np.linspace(0, 1000, 64 * 48).reshape(48, 64).astype(np.uint16)
    rgb = np.dstack([ramp, ramp // 2, np.full_like(ramp, 65535)])
    cv2.imwrite(str(tmp_path / "depth16.png"), rgb[:, :, ::-1])  # OpenCV writes BGR
    loaded = imageio.load_image(tmp_path / "depth16.png").array
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, rgb)
    grey = to_grey_float(tmp_path / "depth16.png")
    assert len(np.unique(grey)) > 1000  # 8 bits would leave about 4 levels of this ramp


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
@pytest.mark.parametrize("orientation", [6, 8])
def test_uncompressed_tiff_on_its_side_is_turned_not_garbled(tmp_path, mode, orientation):
    stored = np.zeros((20, 40), np.uint8)
    stored[:5, :10] = 255  # a bright corner at the top left, landscape
    image = Image.fromarray(stored).convert(mode)
    if mode == "I;16":
        image = Image.fromarray(stored.astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.tif"
    image.save(path, exif=exif)  # no compression: Pillow reads it without libtiff
    loaded = imageio.load_image(path, max_pixels=400)
    upright = np.rot90(stored, -1 if orientation == 6 else 1)
    grey = to_grey_float(path)
    assert grey.shape == upright.shape and ((grey > 0.5) == (upright > 0)).all()
    # scaled down to 400 pixels: the notice names the file's size the right way up
    assert len(loaded.notices) == 1 and "The image is 20x40 pixels" in loaded.notices[0]
