"""App overhead: the same request through the running app (gradio_client, HTTP, queue, PNG files)
vs a direct `Engine.generate` call in this process; ratio of medians (issue 9 target: <= 1.10).

The app runs as `python app.py --model-dir DIR --port P` in its own process; the engine here loads
the same model with the same thread count. Both sides get the same control map (the app detects
it on the first call and then serves it from its cache; this side detects it once), prompt,
steps, sampler and seed; runs are interleaved after one warm-up call each.

    python benchmarks/bench_app.py                        # embedded model, or the tiny one
    python benchmarks/bench_app.py --model-dir DIR --repeats 9 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_startup import (  # noqa: E402
    check_app,
    free_port,
    generation_settings,
    model_dir_or_tiny,
    model_resolution,
    scene,
    start_app,
    stop,
    wait_until_answering,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="model folder (default: embedded, else tiny)")
    parser.add_argument("--condition", default="canny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, help="torch threads on both sides (default: OMP_NUM_THREADS/cores)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the UI")
    args = parser.parse_args()

    check_app()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gradio_client import Client, handle_file

    from cnet.conditions import detect
    from cnet.engine import GenerationRequest, load_engine

    model_dir, model_name = model_dir_or_tiny(args.model_dir)
    resolution = model_resolution(model_dir)
    work = Path(tempfile.mkdtemp(prefix="cnet-app-bench-"))
    image = scene(work / "scene.png")
    settings = generation_settings(resolution, args.steps, seed=5)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = work / "app.log"
    process = start_app(model_dir, port, log_path, args.threads)
    try:
        engine = load_engine(model_dir=str(model_dir), threads=args.threads)
        engine.load()
        control = detect(
            args.condition, str(image), detect_resolution=resolution, image_resolution=resolution
        )
        request = GenerationRequest(
            control,
            args.condition,
            **{k: v for k, v in settings.items() if k != "randomize_seed"},
        )
        wait_until_answering(process, url, log_path, args.timeout)
        client = Client(url, verbose=False, download_files=str(work))

        def through_app() -> Image.Image:
            gallery, _, _ = client.predict(
                image=handle_file(image), **settings, api_name=f"/{args.condition}"
            )
            return Image.open(gallery[1]["image"]).convert("RGB")

        def direct() -> Image.Image:
            return engine.generate(request).images[0]

        def timed(fn) -> tuple[float, Image.Image]:
            start = time.perf_counter()
            result = fn()
            return time.perf_counter() - start, result

        through_app(), direct()  # warm-up: model and ControlNet loading, the detector, caches
        app_times, engine_times = [], []
        for _ in range(args.repeats):
            seconds, app_image = timed(through_app)
            app_times.append(seconds)
            seconds, engine_image = timed(direct)
            engine_times.append(seconds)
    finally:
        stop(process)

    difference = np.abs(np.asarray(app_image, np.int16) - np.asarray(engine_image, np.int16)).max()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"model: {model_name}, {args.condition}, {resolution}x{resolution}, {args.steps} steps "
        f"{settings['sampler']}, CFG {settings['cfg']}, 1 image"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}, "
        f"device {engine.preset.device}, torch threads {engine.threads} on both sides"
    )
    print(
        f"repeats: {args.repeats} (interleaved), max pixel difference app vs engine: {difference}"
    )
    print()
    print("| path | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, times in (("engine.generate", engine_times), ("app via gradio_client", app_times)):
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")
    ratio = statistics.median(app_times) / statistics.median(engine_times)
    overhead = statistics.median(app_times) - statistics.median(engine_times)
    print(f"\nratio app / engine (medians): {ratio:.3f} (target <= 1.10)")
    print(f"app overhead per request (difference of medians): {overhead:.3f} s")


if __name__ == "__main__":
    main()
