"""Scenes per second of the synthetic world on one CPU core: the target image alone, with each map
(what ControlNet training renders), and with all seven.

    python benchmarks/bench_synth.py [--size 128] [--scenes 300] [--repeats 3]

Prints a table of medians over the repeats; asserts nothing. Threads are pinned to one so the
figure is per core (a DataLoader with N workers renders about N times as many). On a shared
machine the CPU-time column is the fairer one: other processes take turns on the same core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
from measured_on import machine_line, software_line  # noqa: E402

from cnet.cli.options import positive_int  # noqa: E402
from cnet.synth.sample import CONDITION_KEYS, generate  # noqa: E402
from cnet.synth.scene import sample_scene  # noqa: E402


def rate(work, seeds: range, repeats: int) -> tuple[float, float]:
    """Median scenes per second of wall time and of this process's CPU time over `repeats` runs."""
    work(seeds[0])  # warm caches
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for seed in seeds:
            work(seed)
        walls.append(len(seeds) / (time.perf_counter() - wall))
        cpus.append(len(seeds) / (time.process_time() - cpu))
    return statistics.median(walls), statistics.median(cpus)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=positive_int, default=128)
    parser.add_argument("--scenes", type=positive_int, default=300)
    parser.add_argument("--repeats", type=positive_int, default=3)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    cv2.setNumThreads(1)
    seeds, repeats = range(args.scenes), args.repeats
    load_before = os.getloadavg()[0]
    rows = [
        ("scene spec only", rate(sample_scene, seeds, repeats)),
        ("target image", rate(lambda s: generate(s, args.size, []), seeds, repeats)),
    ]
    rows += [
        (f"target + {key}", rate(lambda s, k=key: generate(s, args.size, [k]), seeds, repeats))
        for key in CONDITION_KEYS
    ]
    rows.append(("target + all seven maps", rate(lambda s: generate(s, args.size), seeds, repeats)))
    print(machine_line(f"{load_before:.1f} before the runs", "one thread"))
    print(software_line())
    print(f"{args.scenes} scenes at {args.size} px, median of {repeats}")
    print(f"| {'what':<30} | scenes/s (wall) | scenes/s (CPU time) | CPU ms/scene |")
    print(f"|{'-' * 32}|----------------:|--------------------:|-------------:|")
    for name, (wall, cpu) in rows:
        print(f"| {name:<30} | {wall:15.0f} | {cpu:19.0f} | {1000 / cpu:12.2f} |")


if __name__ == "__main__":
    main()
