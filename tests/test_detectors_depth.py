"""Depth maps: near = bright, 16-bit uploads kept precise, Depth Anything from a local folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnet.conditions import CONDITIONS, detect, set_annotators_dir
from cnet.detectors.depth import colour_notice, depth_to_map


def _ramp16() -> np.ndarray:
    """A 16-bit depth image whose values span only 1/64 of the range: fine detail in low bits."""
    return (30000 + np.tile(np.arange(512, dtype=np.uint16), (512, 1)) * 2).astype(np.uint16)


def test_depth_to_map_stretches_to_full_range_near_bright():
    depth = np.array([[1.0, 2.0], [3.0, 5.0]])
    assert depth_to_map(depth).tolist() == [[0, 64], [128, 255]]
    assert depth_to_map(depth, invert=True).tolist() == [[255, 191], [128, 0]]
    assert depth_to_map(np.full((3, 3), 7.0)).max() == 0


def test_16_bit_upload_is_normalised_without_banding():
    png = io.BytesIO()
    Image.fromarray(_ramp16()).save(png, format="PNG")
    control = detect("depth", Image.open(io.BytesIO(png.getvalue())), backend="depth_map")
    assert control.shape == (512, 512, 3)
    row = control[10, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255  # stretched to the full range
    assert (np.diff(row) >= 0).all() and len(np.unique(row)) > 200  # 8-bit input would band


def test_invert_for_far_is_bright_renders():
    far_bright = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (256, 1))
    control = detect("depth", far_bright, backend="depth_map", invert=True, image_resolution=256)
    assert control[0, 0, 0] == 255 and control[0, -1, 0] == 0


def test_enlarging_a_sharp_map_keeps_its_far_background_at_zero():
    """Lanczos overshoots next to a sharp edge; that must not lift the whole background."""
    near = np.zeros((128, 128), np.uint8)
    near[40:90, 30:70] = 250  # an object in front of a far background
    control = detect(
        "depth", near, backend="depth_map", detect_resolution=512, image_resolution=128
    )
    assert control[5, 5, 0] == 0 and control[60, 50, 0] == 255


@pytest.fixture(scope="module")
def tiny_depth_anything_dir(tmp_path_factory):
    """A random-weight Depth Anything in the layout `hf download` makes."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    root = tmp_path_factory.mktemp("annotators")
    folder = root / "Depth-Anything-V2-Small-hf"
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        reassemble_hidden_size=32,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=False).save_pretrained(
        folder
    )
    return root


@pytest.mark.slow  # builds a transformers model: the import alone takes ~10 s
def test_depth_anything_runs_from_the_annotators_folder(tiny_depth_anything_dir):
    set_annotators_dir(tiny_depth_anything_dir)
    try:
        assert CONDITIONS["depth"].backend("depth_anything").availability().ok
        image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
        control = detect("depth", image, backend="depth_anything", detect_resolution=256)
    finally:
        set_annotators_dir(None)
    assert control.shape == (512, 512, 3)
    assert control.min() <= 5 and control.max() >= 240  # stretched to the full range
    assert (control[..., 0] == control[..., 2]).all()


EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def test_a_grey_depth_map_gets_no_notice_even_as_a_jpeg_or_16_bit():
    depth = np.asarray(Image.open(EXAMPLES / "depth.png").convert("RGB"))
    buffer = io.BytesIO()
    Image.fromarray(depth).save(buffer, "JPEG", quality=50)
    as_jpeg = np.asarray(Image.open(buffer))
    deep = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    assert colour_notice(depth) is colour_notice(as_jpeg) is colour_notice(deep) is None


@pytest.mark.parametrize("name", ["scene.jpg", "room.png", "seg.png"])
def test_a_colour_picture_given_as_a_depth_map_gets_a_notice(name):
    notice = colour_notice(np.asarray(Image.open(EXAMPLES / name)))
    assert notice is not None and "not a grey depth map" in notice


def test_the_depth_map_backends_of_depth_and_normal_check_their_input():
    photo = np.asarray(Image.open(EXAMPLES / "scene.jpg"))
    for key in ("depth", "normal"):
        assert len(CONDITIONS[key].backend("depth_map").input_notices(photo)) == 1
