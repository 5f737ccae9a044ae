"""Scenes per second of the synthetic world on one CPU core: all seven maps, and each map alone.

    python benchmarks/bench_synth.py [--size 128] [--scenes 300]

Prints a table; asserts nothing. Threads are pinned to one so the figure is per core (a DataLoader
with N workers renders about N times as many).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cv2  # noqa: E402

from cnet.synth.render import render  # noqa: E402
from cnet.synth.sample import CONDITION_KEYS, generate  # noqa: E402
from cnet.synth.scene import sample_scene  # noqa: E402


def rate(work, seeds: range) -> tuple[float, float]:
    """Scenes per second of wall time and of this process's CPU time (the fairer figure on a
    shared machine, where other processes take turns on the same core)."""
    work(seeds[0])  # warm caches
    wall, cpu = time.perf_counter(), time.process_time()
    for seed in seeds:
        work(seed)
    return len(seeds) / (time.perf_counter() - wall), len(seeds) / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--scenes", type=int, default=300)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    seeds = range(args.scenes)
    rows = [
        ("scene spec only", rate(sample_scene, seeds)),
        ("spec + render (target image)", rate(lambda s: render(sample_scene(s), args.size), seeds)),
        ("all seven maps", rate(lambda s: generate(s, args.size), seeds)),
    ]
    rows += [
        (f"{key} only", rate(lambda s, k=key: generate(s, args.size, [k]), seeds))
        for key in CONDITION_KEYS
    ]
    machine = platform.processor() or platform.machine()
    load = os.getloadavg()[0]
    print(f"{args.scenes} scenes at {args.size} px, one thread, {machine}, load {load:.1f}")
    print(f"| {'what':<30} | scenes/s (wall) | scenes/s (CPU time) | CPU ms/scene |")
    print(f"|{'-' * 32}|----------------:|--------------------:|-------------:|")
    for name, (wall, cpu) in rows:
        print(f"| {name:<30} | {wall:15.0f} | {cpu:19.0f} | {1000 / cpu:12.2f} |")


if __name__ == "__main__":
    main()
