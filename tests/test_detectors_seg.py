"""Segmentation maps: ADE20K palette colours, uploads snapped, UperNet from a local folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnet.conditions import CONDITIONS, detect, set_annotators_dir
from cnet.detectors.seg import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    ade20k_color,
    colorize,
    photo_notice,
    snap_to_palette,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


def test_palette_has_one_distinct_colour_per_class():
    assert len(ADE20K_CLASSES) == len(ADE20K_PALETTE) == 150
    assert ade20k_color("wall") == (120, 120, 120)
    assert ade20k_color("sky") == (6, 230, 230)
    assert ade20k_color("person") == (150, 5, 61)
    with pytest.raises(ValueError, match="'dragon' is no ADE20K class name"):
        ade20k_color("dragon")


def test_colorize_labels():
    labels = np.array([[0, 2], [12, 149]])
    assert np.array_equal(colorize(labels)[1, 0], ADE20K_PALETTE[12])


def test_noisy_upload_snaps_back_to_the_palette():
    labels = np.zeros((128, 128), int)
    labels[:64] = ADE20K_CLASSES.index("sky")
    labels[64:, 40:90] = ADE20K_CLASSES.index("tree")
    clean = colorize(labels)
    rng = np.random.default_rng(0)
    noisy = (clean.astype(int) + rng.integers(-6, 7, clean.shape)).clip(0, 255).astype(np.uint8)
    assert np.array_equal(snap_to_palette(noisy), clean)
    control = detect("seg", noisy, backend="palette", detect_resolution=128, image_resolution=128)
    assert np.array_equal(control, clean)


@pytest.mark.parametrize("jpeg_quality", [None, 50])
def test_a_map_in_the_palette_gets_no_notice_even_saved_as_a_jpeg(jpeg_quality):
    image = Image.open(EXAMPLES / "seg.png").convert("RGB")
    if jpeg_quality:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=jpeg_quality)
        image = Image.open(buffer)
    assert photo_notice(np.asarray(image)) is None


@pytest.mark.parametrize("name", ["scene.jpg", "room.png", "depth.png"])
def test_a_photo_or_another_map_given_as_a_segmentation_map_gets_a_notice(name):
    notice = photo_notice(np.asarray(Image.open(EXAMPLES / name)))
    assert notice is not None and "looks like a photo" in notice and "UperNet" in notice


def test_output_resize_keeps_palette_colours():
    labels = np.random.default_rng(1).integers(0, 150, (100, 150))
    control = detect("seg", colorize(labels), backend="palette")
    colours = {tuple(c) for c in np.unique(control.reshape(-1, 3), axis=0)}
    assert colours <= {tuple(c) for c in ADE20K_PALETTE.tolist()}


@pytest.fixture(scope="module")
def tiny_upernet_dir(tmp_path_factory):
    """A random-weight UperNet laid out as `hf download openmmlab/upernet-convnext-small` does."""
    from transformers import (
        ConvNextConfig,
        SegformerImageProcessor,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    root = tmp_path_factory.mktemp("annotators")
    folder = root / "upernet-convnext-small"
    backbone = ConvNextConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 32, 64],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,
        auxiliary_in_channels=32,
        auxiliary_channels=8,
        num_labels=150,
    )
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return root


@pytest.mark.slow  # builds a transformers model: the import alone takes ~10 s
def test_upernet_runs_from_the_annotators_folder(tiny_upernet_dir):
    backend = CONDITIONS["seg"].backend("upernet")
    set_annotators_dir(tiny_upernet_dir)
    try:
        assert backend.availability().ok
        assert CONDITIONS["seg"].default_backend().name == "upernet"
        image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
        control = detect("seg", image, backend="upernet")
    finally:
        set_annotators_dir(None)
    assert control.shape == (512, 768, 3)
    colours = {tuple(c) for c in np.unique(control.reshape(-1, 3), axis=0)}
    assert colours <= {tuple(c) for c in ADE20K_PALETTE.tolist()}


def test_upernet_missing_names_the_folder_and_command(tmp_path):
    set_annotators_dir(tmp_path)
    try:
        reason = CONDITIONS["seg"].backend("upernet").availability().reason
    finally:
        set_annotators_dir(None)
    assert str(tmp_path / "upernet-convnext-small") in reason
    assert "hf download openmmlab/upernet-convnext-small --local-dir" in reason
