"""Scribble maps: the same strokes give the same map whatever the canvas or paper colour."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cnet.conditions import detect
from cnet.detectors.scribble import thin_edges

SIZE = (448, 640)


def _strokes_layer() -> np.ndarray:
    """An RGBA drawing layer: antialiased strokes on a transparent layer."""
    alpha = np.zeros(SIZE, np.uint8)
    cv2.polylines(alpha, [np.array([[60, 400], [200, 100], [330, 380], [560, 90]])], False, 255, 6,
                  cv2.LINE_AA)  # fmt: skip
    cv2.circle(alpha, (470, 330), 70, 255, 5, cv2.LINE_AA)
    layer = np.zeros(SIZE + (4,), np.uint8)
    layer[..., 3] = alpha
    return layer


def _editor_value(layer: np.ndarray, background: int, brush: int) -> dict:
    """What Gradio's image editor returns: background, layers and their composite."""
    painted = layer.copy()
    painted[..., :3] = brush
    alpha = painted[..., 3:4].astype(np.float32) / 255.0
    backdrop = np.full(SIZE + (3,), background, np.float32)
    composite = (painted[..., :3] * alpha + backdrop * (1 - alpha)).astype(np.uint8)
    return {
        "background": np.full(SIZE + (4,), (background,) * 3 + (255,), np.uint8),
        "layers": [painted],
        "composite": composite,
    }


def test_same_strokes_on_white_and_dark_canvas_give_the_same_map():
    layer = _strokes_layer()
    light = detect("scribble", _editor_value(layer, 255, 0), backend="canvas")
    dark = detect("scribble", _editor_value(layer, 0x33, 255), backend="canvas")
    assert np.array_equal(light, dark)
    assert light.shape == (512, 704, 3)
    assert set(np.unique(light)) == {0, 255}
    assert 0.01 < (light[..., 0] > 0).mean() < 0.2  # strokes, not a filled or empty page


def test_canvas_map_follows_the_strokes():
    layer = _strokes_layer()
    control = detect("scribble", layer, backend="canvas", image_resolution=448)
    assert control.shape[:2] == SIZE
    stroke = layer[..., 3] > 200
    assert (control[..., 0][stroke] == 255).mean() > 0.95
    assert (control[..., 0][cv2.dilate(layer[..., 3], np.ones((9, 9))) == 0] == 0).all()


def test_uploaded_drawing_either_polarity_gives_the_same_white_on_black_map():
    strokes = _strokes_layer()[..., 3]
    black_on_white = 255 - strokes
    white_on_black = strokes
    a = detect("scribble", black_on_white, backend="drawing", image_resolution=448)
    b = detect("scribble", white_on_black, backend="drawing", image_resolution=448)
    assert np.array_equal(a, b)
    assert a[..., 0][strokes > 200].mean() == 255  # strokes white
    assert (a[..., 0] == 0).mean() > 0.8  # paper black


def test_canvas_without_layers_reads_the_uploaded_drawing():
    strokes = _strokes_layer()[..., 3]
    drawing = np.repeat((255 - strokes)[..., None], 3, 2)
    value = {"background": drawing, "layers": [], "composite": drawing}
    assert np.array_equal(
        detect("scribble", value, backend="canvas"), detect("scribble", drawing, backend="drawing")
    )


def test_strokes_drawn_over_an_uploaded_drawing_add_to_it():
    strokes = _strokes_layer()[..., 3]
    drawing = np.repeat((255 - strokes)[..., None], 3, 2)
    line = np.zeros(SIZE + (4,), np.uint8)
    line[20:26, 40:600, 3] = 255  # one stroke across the top, away from the drawing
    value = {"background": drawing, "layers": [line], "composite": None}
    control = detect("scribble", value, backend="canvas", image_resolution=448)[..., 0]
    assert (control[strokes > 200] == 255).mean() > 0.95  # the drawing stays
    assert (control[22, 60:580] == 255).all()  # and the stroke is added


def test_thickness_widens_strokes():
    layer = _strokes_layer()
    thin = detect("scribble", layer, backend="canvas")
    thick = detect("scribble", layer, backend="canvas", thickness=4)
    assert (thick > 0).sum() > 1.5 * (thin > 0).sum()
    assert (thick[thin > 0] == 255).all()


def test_blank_drawing_gives_an_empty_map():
    assert detect("scribble", np.full((64, 64, 3), 250, np.uint8), backend="drawing").max() == 0


def test_fake_scribble_traces_the_outline_of_a_shape():
    image = np.full((512, 512, 3), 235, np.uint8)
    cv2.circle(image, (256, 256), 150, (180, 40, 40), -1)
    control = detect("scribble", image, backend="fake_scribble")[..., 0]
    assert set(np.unique(control)) == {0, 255}
    yy, xx = np.mgrid[:512, :512]
    radius = np.hypot(xx - 256, yy - 256)
    assert (control[np.abs(radius - 150) < 2] == 255).mean() > 0.95  # the outline is a stroke
    assert control[radius < 120].max() == 0 and control[radius > 180].max() == 0
    width = (control[256, :256] > 0).sum()
    assert 1 <= width <= 24  # stroke widths the scribble model was trained on


def test_thin_edges_keeps_ridges_above_threshold():
    soft = np.zeros((64, 64), np.float32)
    soft[:, 30:34] = 255.0
    ridges = thin_edges(soft, 127, 1.0)
    assert ridges[:, 31:33].min() == 255 and ridges[:, :25].max() == 0


def test_unknown_backend_and_parameter_are_explained():
    with pytest.raises(ValueError, match="canvas"):
        detect("scribble", np.zeros((8, 8, 3), np.uint8), backend="crayon")
    with pytest.raises(ValueError, match="thickness"):
        detect("scribble", np.zeros((8, 8, 3), np.uint8), backend="drawing", width=3)


@pytest.mark.slow  # imports controlnet-aux and writes a 60 MB random HED checkpoint
def test_hed_scribble_loads_from_the_annotators_folder(tmp_path):
    import torch
    from controlnet_aux.hed import ControlNetHED_Apache2

    from cnet.conditions import CONDITIONS, set_annotators_dir

    torch.manual_seed(0)
    torch.save(ControlNetHED_Apache2().state_dict(), tmp_path / "ControlNetHED.pth")
    set_annotators_dir(tmp_path)
    try:
        assert CONDITIONS["scribble"].backend("hed").availability().ok
        image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
        control = detect("scribble", image, backend="hed", detect_resolution=256)
    finally:
        set_annotators_dir(None)
    assert control.shape == (512, 512, 3)
    assert set(np.unique(control)) <= {0, 255}


def test_fake_scribble_is_binary_when_output_is_larger_than_detection():
    image = np.full((300, 300, 3), 235, np.uint8)
    cv2.rectangle(image, (80, 80), (220, 220), (30, 30, 160), -1)
    control = detect(
        "scribble", image, backend="fake_scribble", detect_resolution=256, image_resolution=640
    )
    assert control.shape == (640, 640, 3)
    assert set(np.unique(control)) == {0, 255}


@pytest.mark.parametrize("ink", [0, 255])  # black or white line art on a transparent background
def test_line_art_on_transparent_paper_is_read_by_its_opaque_strokes(ink):
    strokes = _strokes_layer()
    art = strokes.copy()
    art[..., :3] = ink
    control = detect("scribble", art, backend="drawing", image_resolution=448)[..., 0]
    assert (control[strokes[..., 3] > 200] == 255).mean() > 0.95
    assert (control == 0).mean() > 0.8


def test_an_opaque_drawing_with_a_transparent_margin_is_read_as_a_drawing():
    strokes = _strokes_layer()[..., 3]
    drawing = np.full(SIZE + (4,), 255, np.uint8)
    drawing[..., :3] = (255 - strokes)[..., None]
    drawing[:8, :, 3] = 0  # a transparent border, as a screenshot's shadow
    for backend in ("canvas", "drawing"):
        control = detect("scribble", drawing, backend=backend, image_resolution=448)[..., 0]
        assert (control == 255).mean() < 0.2, backend  # strokes, not a white page


def test_a_pen_line_thinner_than_an_output_pixel_survives_shrinking():
    paper = np.full((2048, 2048), 255, np.uint8)
    paper[1000, 100:1900] = 0  # one 1-px line, 4 times finer than the 512 px map
    control = detect("scribble", paper, backend="drawing", image_resolution=512)[..., 0]
    assert (control[248:252, 30:470] == 255).any(axis=0).all()  # unbroken along its length
