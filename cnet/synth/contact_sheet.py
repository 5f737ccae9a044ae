"""A contact sheet: one row per scene, the target image then every control map, with a header."""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from cnet.synth.sample import CONDITION_KEYS, generate

HEADER = 18
GAP = 2


def contact_sheet(seeds: Iterable[int], size: int = 128) -> np.ndarray:
    """uint8 RGB image: a header row naming the columns, then one row per seed."""
    columns = ("target", *CONDITION_KEYS)
    width = len(columns) * (size + GAP) - GAP
    rows = [_header(columns, size, width)]
    for seed in seeds:
        sample = generate(seed, size)
        tiles = [sample.image] + [sample.conditions[key] for key in CONDITION_KEYS]
        row = np.full((size, width, 3), 255, np.uint8)
        for column, tile in enumerate(tiles):
            x = column * (size + GAP)
            row[:, x : x + size] = tile
        rows += [row, np.full((GAP, width, 3), 255, np.uint8)]
    return np.concatenate(rows[:-1] if len(rows) > 1 else rows)


def _header(columns: tuple[str, ...], size: int, width: int) -> np.ndarray:
    header = np.full((HEADER, width, 3), 255, np.uint8)
    for column, name in enumerate(columns):
        (text_width, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        x = column * (size + GAP) + (size - text_width) // 2
        cv2.putText(
            header, name, (x, HEADER - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA
        )
    return header
