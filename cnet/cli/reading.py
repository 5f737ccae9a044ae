"""Input files of the command line, read as the app reads an upload."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cnet.conditions import Backend, Condition
from cnet.imageio import load_image


def read_picture(path: str) -> np.ndarray:
    """`path` through cnet.imageio.load_image (EXIF orientation, first frame, scaled down past
    its pixel limit), each change it made printed as a note."""
    loaded = load_image(path)
    for notice in loaded.notices:
        print(f"note: {notice}", file=sys.stderr)
    return loaded.array


def keypoints_file(path: str) -> bool:
    """Whether `path` is a .json file that is there: OpenPose keypoints, not a picture."""
    return Path(path).suffix.lower() == ".json" and Path(path).is_file()


def chosen_reader(condition: Condition, path: str) -> Backend:
    """The backend that reads the file `path` when the user named none; a detector that would
    have come first but cannot run here (its weights missing) is named, with how to get it."""
    if Path(path).is_file():  # else the reading names the file missing, nothing else
        for backend in condition.passed_over(path):
            reason = backend.availability().reason
            print(f"note: {backend.name} would read this file first, but {reason}", file=sys.stderr)
    return condition.reader_for(path)


def read_input(path: str, backend: Backend) -> Any:
    """What `backend` detects from for the file `path`: a keypoints file as its path, a picture
    through read_picture."""
    if backend.reads_keypoints:
        return path
    if keypoints_file(path):
        raise ValueError(
            f"{path} is a .json file, not a picture: OpenPose keypoints are read by "
            f"--condition pose's keypoints_json backend, not by {backend.name}."
        )
    picture = read_picture(path)
    for notice in backend.input_notices(picture):
        print(f"note: {notice}", file=sys.stderr)
    return picture
