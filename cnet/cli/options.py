"""Command-line flags and argparse types shared by `python app.py` and `python -m cnet`."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


def checked_number(kind: type, fits: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
    """An argparse type: `kind(text)` where `fits` it, else an error saying `wanted`."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not fits(value):  # NaN fits no comparison
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


positive_int = checked_number(int, lambda value: value >= 1, "a whole number of at least 1")
non_negative_int = checked_number(int, lambda value: value >= 0, "a whole number of at least 0")
positive_number = checked_number(float, lambda value: value > 0, "a number above 0")
port = checked_number(int, lambda value: 1 <= value <= 65535, "a port number from 1 to 65535")
FILE_SIZE = re.compile(r"\s*\d+\s*(b|kb|mb|gb|tb)\s*", re.IGNORECASE)


def file_size(text: str) -> str:
    """An argparse type: a size such as 25mb or 1gb, as Gradio's max_file_size reads it."""
    if not FILE_SIZE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected a size such as 25mb or 1gb (units b, kb, mb, gb, tb), got {text!r}"
        )
    return text


def nearest_existing(path: str | Path) -> Path:
    """`path` (absolute) if it is there, else the nearest of its parents that is."""
    found = Path(path).absolute()
    while not found.exists():
        found = found.parent
    return found


def folder_problem(path: str | Path) -> str | None:
    """Why no folder can be written at `path` (a file is there or on the way, or the nearest
    folder is not writable), or None."""
    folder = nearest_existing(path)
    if not folder.is_dir():
        return f"{folder} is a file"
    if not os.access(folder, os.W_OK):
        return f"{folder} is read-only (or not this user's)"
    return None


def output_folder(text: str) -> Path:
    """An argparse type: a folder to write in, refused before any work when it cannot be."""
    if problem := folder_problem(text):
        raise argparse.ArgumentTypeError(f"cannot write a folder at {text}: {problem}")
    return Path(text)


def model_folder(text: str) -> str:
    """An argparse type: a model folder that is there (a typo is named as one, not as missing
    weights with advice on downloading them)."""
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(
            f"no folder {text}; give a folder in the embedded layout (base/, controlnet/<key>/, "
            "preset.json), as assets/embedded"
        )
    return text


def output_file(text: str) -> Path:
    """An argparse type: a file to write (or an existing folder to write it in)."""
    path = Path(text)
    if problem := folder_problem(path if path.is_dir() else path.parent):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {problem}")
    return path


def image_file(text: str) -> Path:
    """An argparse type: an image file to write, its format named by its extension."""
    from PIL import Image

    path = output_file(text)
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise argparse.ArgumentTypeError(
            f"cannot tell which image format to write {text} in: end its name with .png or .jpg"
        )
    return path


def controlnet_override(text: str) -> tuple[str, str]:
    from cnet.conditions import CONDITIONS

    key, sep, source = text.partition("=")
    if not sep or not key.strip() or not source.strip():
        raise argparse.ArgumentTypeError(f"expected CONDITION=PATH_OR_HUB_ID, got {text!r}")
    if key.strip() not in CONDITIONS:
        raise argparse.ArgumentTypeError(
            f"{key.strip()!r} in {text!r} names no condition; use one of: {', '.join(CONDITIONS)}"
        )
    return key.strip(), source.strip()


def usable_device(name: str) -> str:
    from cnet.models import check_device

    try:
        check_device(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name


def add_model_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Which preset, base and ControlNets the engine loads, and on which device, as one "model"
    group (returned, for a command's own model options)."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--preset",
        default="auto",
        help="auto (sd15 on a GPU with its weights cached or the hub reachable, else the "
        "embedded model), embedded, sd15, or a folder in the embedded layout (default: auto)",
    )
    model.add_argument(
        "--model-dir",
        type=model_folder,
        help="a folder in the embedded layout: base/, controlnet/<key>/, preset.json",
    )
    model.add_argument(
        "--base",
        help="base model: a diffusers folder or a hub id; its own size and sampling become the "
        "defaults",
    )
    model.add_argument(
        "--controlnet",
        action="append",
        type=controlnet_override,
        default=[],
        metavar="CONDITION=PATH",
        help="ControlNet for one condition: a folder, a hub id or a single "
        ".safetensors/.pth file (repeatable)",
    )
    model.add_argument(
        "--annotators-dir",
        help="folder with the detectors' weights (default: $CNET_ANNOTATORS_DIR, else "
        "~/.cache/cnet/annotators)",
    )
    model.add_argument(
        "--device",
        type=usable_device,
        choices=("cuda", "mps", "cpu"),
        help="default: the best one available",
    )
    return model


def model_settings(args: argparse.Namespace) -> dict:
    """The keyword arguments of `load_engine` that add_model_flags' flags set."""
    return {
        "preset": args.preset,
        "model_dir": args.model_dir,
        "base": args.base,
        "controlnets": dict(args.controlnet) or None,
        "device": args.device,
    }


def add_performance_flags(parser: argparse.ArgumentParser) -> None:
    """The engine's speed options, as one "performance" group."""
    performance = parser.add_argument_group("performance")
    performance.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch CPU threads (default: $OMP_NUM_THREADS, else one per core)",
    )
    performance.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet and each ControlNet (the first image compiles them, later "
        "ones are faster; needs Triton on CUDA, a C++ compiler on the CPU)",
    )
    performance.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last weights (default: on for CUDA only)",
    )
    performance.add_argument(
        "--cpu-offload",
        action="store_true",
        help="keep each model on the CPU until it runs (GPUs short of memory; slower)",
    )


def performance_settings(args: argparse.Namespace) -> dict:
    """The keyword arguments of `load_engine` that add_performance_flags' flags set."""
    return {
        "threads": args.threads,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "cpu_offload": args.cpu_offload,
    }
