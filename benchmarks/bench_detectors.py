"""Median latency of every runnable detector at 512 px on this machine, and ours vs controlnet-aux
for Canny, measured in the same run. Prints a Markdown table; asserts nothing.

    HF_HUB_OFFLINE=1 python benchmarks/bench_detectors.py [--repeats 15] [--resolution 512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from measured_on import machine_line, software_line  # noqa: E402

from cnet.cli.options import positive_int  # noqa: E402
from cnet.conditions import CONDITIONS  # noqa: E402
from cnet.imageio import to_rgb_array  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
INPUTS = {  # (condition, backend) -> example input; everything else gets the rendered scene
    ("scribble", "canvas"): "scribble_balloon.png",
    ("scribble", "drawing"): "scribble_balloon.png",
    ("hough", "lines"): "room.png",
    ("hough", "mlsd"): "room.png",
    ("pose", "keypoints_json"): "pose.json",
    ("seg", "palette"): "seg.png",
    ("depth", "depth_map"): "depth.png",
    ("normal", "depth_map"): "depth.png",
}


def median_ms(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up: lazy imports, model loading, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def load_input(name: str, backend: str):
    """The example as `backend` gets it: an upload, or for the canvas, an RGBA strokes layer."""
    if name.endswith(".json"):
        return (EXAMPLES / name).read_text()
    image = to_rgb_array(EXAMPLES / name)
    if backend == "canvas":
        alpha = 255 - image[:, :, 0]
        image = np.dstack([np.zeros_like(image), alpha])
    return image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=positive_int, default=15)
    parser.add_argument("--resolution", type=positive_int, default=512)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    res = args.resolution

    import torch

    print(machine_line(f"torch threads {torch.get_num_threads()}"))
    print(software_line())
    print(f"resolution {res}, median of {args.repeats}\n")
    print("| condition | backend | median ms |")
    print("|---|---|---:|")
    for key, condition in CONDITIONS.items():
        for backend in condition.backends:
            if backend.name == "none" or not backend.availability().ok:
                continue
            detector = backend.load()
            image = load_input(INPUTS.get((key, backend.name), "scene.jpg"), backend.name)
            params = backend.defaults()
            ms = median_ms(lambda: detector(image, res, res, **params), args.repeats)  # noqa: B023
            print(f"| {key} | {backend.name} | {ms:.1f} |")

    from controlnet_aux.canny import CannyDetector as AuxCanny

    scene = to_rgb_array(EXAMPLES / "scene.jpg")
    ours_detector = CONDITIONS["canny"].backend("canny").load()
    aux = AuxCanny()
    ours = median_ms(lambda: ours_detector(scene, res, res), args.repeats)
    theirs = median_ms(lambda: aux(scene, detect_resolution=res, image_resolution=res,
                                   output_type="np"), args.repeats)  # fmt: skip
    print(
        f"\nCanny, same run: ours {ours:.2f} ms, controlnet-aux {theirs:.2f} ms, "
        f"ratio ours/theirs {ours / theirs:.2f}"
    )


if __name__ == "__main__":
    main()
