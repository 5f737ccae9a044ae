"""Named colours of the scene world and the segmentation class of every kind of object.

Colour names appear verbatim in prompts, so each name must be a word a caption would use.
"""

from __future__ import annotations

RGB = tuple[int, int, int]

OBJECT_COLORS: dict[str, RGB] = {
    "red": (200, 30, 35),
    "orange": (240, 130, 20),
    "yellow": (235, 205, 40),
    "green": (40, 150, 60),
    "blue": (35, 75, 200),
    "purple": (120, 50, 160),
    "pink": (240, 120, 170),
    "brown": (120, 75, 40),
    "gray": (128, 128, 128),
    "white": (235, 235, 235),
    "black": (30, 30, 30),
}

BACKGROUND_COLORS: dict[str, RGB] = {
    "white": (245, 245, 245),
    "light gray": (200, 200, 200),
    "beige": (225, 210, 180),
    "light blue": (170, 205, 235),
    "black": (15, 15, 15),
    "dark blue": (25, 35, 80),
}

FLOOR_COLORS: dict[str, RGB] = {
    "gray": (110, 110, 110),
    "brown": (125, 90, 60),
    "green": (80, 130, 70),
    "white": (215, 215, 210),
    "dark": (55, 55, 60),
}

SKIN: RGB = (225, 180, 145)

# Segmentation uses ADE20K class names (cnet.detectors.seg paints them) so that maps look like the
# ones the seg ControlNet was trained on. Shapes have no ADE20K class of their own; each gets the
# class of an everyday object of that shape.
SEG_CLASS: dict[str, str] = {
    "background": "wall",
    "floor": "floor",
    "person": "person",
    "sphere": "ball",
    "cube": "box",
    "cylinder": "column",
    "cone": "tower",
    "pyramid": "tent",
}


def contrast(a: RGB, b: RGB) -> float:
    """Largest per-channel difference: how well Canny and the eye separate two flat colours."""
    return float(max(abs(x - y) for x, y in zip(a, b, strict=True)))
