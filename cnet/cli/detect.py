"""`python -m cnet detect`: turn an image (or OpenPose JSON) into a control map PNG.

python -m cnet detect photo.jpg --condition canny -p low_threshold=50 -o edges.png
python -m cnet detect pose.json --condition pose
python -m cnet detect --list                      # backends, and what each one is missing
python -m cnet detect --condition depth --backend midas --fetch   # download its weights
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from cnet.cli.options import positive_int
from cnet.cli.reading import chosen_reader, read_input
from cnet.conditions import (
    CONDITIONS,
    Backend,
    BackendUnavailable,
    Condition,
    annotators_dir,
    detect,
    set_annotators_dir,
)
from cnet.imageio import ImageInputError

# Types that hold an RGB map (JPEG and WebP lossily); Pillow writes others in other modes or not
OUTPUT_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", nargs="?", help="image file, or OpenPose .json for --condition pose"
    )
    parser.add_argument("-c", "--condition", choices=tuple(CONDITIONS), help="control map type")
    parser.add_argument(
        "-b",
        "--backend",
        help="detector (default: the first that runs and reads this kind of file)",
    )
    parser.add_argument("-o", "--output", help="output PNG (default: <input>_<condition>.png)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="detector parameter, repeatable (see --list)")  # fmt: skip
    parser.add_argument(
        "--detect-resolution",
        type=positive_int,
        default=512,
        metavar="PX",
        help="short side the detector reads the input at (default: %(default)s)",
    )
    parser.add_argument(
        "--image-resolution",
        type=positive_int,
        default=512,
        metavar="PX",
        help="short side of the map written (default: %(default)s)",
    )
    parser.add_argument("--annotators-dir", help="annotator weights folder "
                        "(default: $CNET_ANNOTATORS_DIR or ~/.cache/cnet/annotators)")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list conditions and backends")
    parser.add_argument("--fetch", action="store_true",
                        help="download the chosen backend's missing weights first")  # fmt: skip


def _parse_value(backend: Backend, name: str, text: str) -> Any:
    params = {param.name: param for param in backend.params}
    if name not in params:
        known = ", ".join(params) or "none"
        raise ValueError(f"{backend.label} has no parameter {name!r} (parameters: {known})")
    param = params[name]
    default = param.default
    if isinstance(default, bool):
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"{name} takes true or false, not {text!r}")
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, str):
        return param.check(text)
    try:
        value = type(default)(text)
    except ValueError:
        number = "a whole number" if param.whole else "a number"
        raise ValueError(f"{name} takes {number}, not {text!r}") from None
    return param.check(value)


def _params(backend: Backend, pairs: list[str]) -> dict[str, Any]:
    values = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"Parameters are NAME=VALUE, got {pair!r}")
        values[name.strip()] = _parse_value(backend, name.strip(), text.strip())
    return values


def _describe(condition: Condition) -> str:
    lines = [f"{condition.key}: {condition.label}  (sd15: {condition.controlnet['sd15']})"]
    for backend in condition.backends:
        available = backend.availability()
        status = "ready" if available.ok else f"unavailable: {available.reason}"
        params = ", ".join(f"{p.name}={p.default}" for p in backend.params)
        lines.append(f"  {backend.name:16s} {backend.label}" + (f" [{params}]" if params else ""))
        lines.append(f"  {'':16s} {status}")
    return "\n".join(lines)


def _output_path(source: str, output: str | None, condition: str) -> Path:
    """-o as given, checked before detecting; default <input>_<condition>.png."""
    if output is None:
        return Path(source).with_name(f"{Path(source).stem}_{condition}.png")
    if Path(output).suffix.lower() not in OUTPUT_TYPES:
        types = ", ".join(OUTPUT_TYPES)
        raise ValueError(f"-o {output}: give a file name ending in {types} (PNG keeps it exact)")
    if Path(output).is_dir():
        raise ValueError(f"-o {output} is a folder; give a file name, e.g. {output}/map.png")
    if Path(output).resolve() == Path(source).resolve():
        raise ValueError(f"-o {output} is the input image; give the map another name")
    return Path(output)


def run(args: argparse.Namespace) -> int:
    if args.annotators_dir:
        set_annotators_dir(args.annotators_dir)
    if args.list:
        print(f"annotators folder: {annotators_dir()}")
        keys = [args.condition] if args.condition else list(CONDITIONS)
        print("\n".join(_describe(CONDITIONS[key]) for key in keys))
        return 0
    if not args.condition:
        print("error: --condition is required (or use --list)", file=sys.stderr)
        return 2
    condition = CONDITIONS[args.condition]
    if args.fetch and not args.backend:
        named = ", ".join(b.name for b in condition.backends if b.weights is not None) or "none"
        print(f"error: --fetch needs --backend NAME (with weights: {named})", file=sys.stderr)
        return 2
    if not args.input and not args.fetch:
        print("error: give an input image (or --list / --fetch)", file=sys.stderr)
        return 2
    try:
        if args.backend:
            backend = condition.backend(args.backend)
        else:
            backend = chosen_reader(condition, args.input)
        if args.fetch and backend.weights is None:
            print(f"{backend.name} needs no weights")
        elif args.fetch:
            print(f"fetching {backend.weights.repo} into {backend.weights.fetch()}")
        if not args.input:
            return 0
        params = _params(backend, args.param)
        output = _output_path(args.input, args.output, condition.key)
        source = read_input(args.input, backend)
        control = detect(
            condition.key,
            source,
            backend=backend.name,
            detect_resolution=args.detect_resolution,
            image_resolution=args.image_resolution,
            **params,
        )
    except BackendUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, ImageInputError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(control).save(output)
    except OSError as error:
        print(f"error: cannot write {output} ({error})", file=sys.stderr)
        return 1
    height, width = control.shape[:2]
    print(f"{condition.label} ({backend.name}) {width}x{height} -> {output}")
    return 0
