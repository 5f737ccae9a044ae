"""App overhead: the same request through the running app (gradio_client, HTTP, queue, PNG files)
vs a direct `Engine.generate` call in this process; ratio of medians (issue 9 target: <= 1.10).

The app runs as `python app.py --model-dir DIR --port P` in its own process; the engine here loads
the same model with the same thread count. Both sides get the same control map (the app detects
it on the first call and then serves it from its cache; this side detects it once), prompt,
steps, sampler and seed; runs are interleaved (each path first in turn) after one warm-up each.

Two gradio_client set-ups are timed. gradio_client 2.x opens a new httpx client for every HTTP
call of a request (upload, queue join, message stream, each file download), and httpx builds a
new SSL context for each, reading the whole CA bundle, even for an http:// URL: about 50 ms each
on a busy 2-core machine. Handing the client one `ssl.SSLContext` (`ssl_verify=`) removes that
cost, which belongs to the client, not to the app (tests/app_server.py `api_client` does it);
the default set-up is timed too.
`--server-phases` also prints Gradio's own per-phase timings of the app's side of each request.
Before the timed runs, the app's process is left idle for `--idle-seconds` and its CPU use printed:
an idle app's polling takes CPU from a generation on a small machine.

    python benchmarks/bench_app.py                        # embedded model, or the tiny one
    python benchmarks/bench_app.py --model-dir DIR --repeats 9 --threads 1 --server-phases
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_startup import (  # noqa: E402
    api_client,
    check_app,
    free_port,
    generation_settings,
    model_dir_or_tiny,
    model_preset,
    scene,
    start_app,
    stop,
    temporary_folder,
    wait_until_answering,
)
from measured_on import machine_line, software_line  # noqa: E402

from cnet.cli.options import positive_int, positive_number  # noqa: E402
from cnet.conditions import CONDITIONS  # noqa: E402

SHARED_CONTEXT = "app via gradio_client, one SSL context"
DEFAULT_CLIENT = "app via gradio_client, default set-up"
PHASES = {  # Gradio's trace fields (GRADIO_PROFILING=1) -> what they hold
    "queue_wait_ms": "queue wait",
    "preprocess_ms": "preprocess (inputs: upload read, each control's check)",
    "fn_call_ms": "the app's function (control-map cache, engine.generate, progress)",
    "postprocess_ms": "postprocess (PNG files of the gallery, caption, seed)",
    "total_ms": "total on the server",
}


def server_phases(url: str, endpoint: str) -> dict[str, float]:
    """Median milliseconds per phase of the app's `endpoint` requests since the last clear."""
    with urllib.request.urlopen(url + "gradio_api/profiling/traces") as response:
        traces = [t for t in json.loads(response.read()) if t["fn_name"] == endpoint]
    return {field: statistics.median(t[field] for t in traces) for field in PHASES}


def idle_cpu_share(pid: int, seconds: float) -> float:
    """The share of one core the process uses over `seconds` in which nothing is asked of it."""
    import psutil

    process = psutil.Process(pid)
    before = sum(process.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(process.cpu_times()[:2]) - before) / seconds


def clear_server_phases(url: str) -> None:
    request = urllib.request.Request(url + "gradio_api/profiling/clear", method="POST")
    urllib.request.urlopen(request).close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="model folder (default: embedded, else tiny)")
    parser.add_argument(
        "--random",
        choices=("tiny", "small"),
        help="random weights of this architecture instead (small: the embedded preset's widths)",
    )
    parser.add_argument("--condition", choices=CONDITIONS, default="canny")
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="torch threads on both sides (default: OMP_NUM_THREADS/cores)",
    )
    parser.add_argument(
        "--timeout", type=positive_number, default=300.0, help="seconds to wait for the UI"
    )
    parser.add_argument(
        "--idle-seconds",
        type=positive_number,
        default=10.0,
        help="how long the app's CPU use is measured while it waits for requests (default: 10)",
    )
    parser.add_argument(
        "--server-phases",
        action="store_true",
        help="run the app with GRADIO_PROFILING=1 and print its per-phase server timings",
    )
    args = parser.parse_args(argv)
    if args.random and args.model_dir:
        parser.error("--random builds a model of random weights: leave out --model-dir")
    return args


def main() -> None:
    args = parse_args()
    check_app()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gradio_client import Client, handle_file

    from cnet.conditions import detect
    from cnet.engine import GenerationRequest, load_engine

    model_dir, model_name = model_dir_or_tiny(args.model_dir, args.random)
    preset = model_preset(model_dir)
    resolution = preset.resolution
    work = temporary_folder("cnet-app-bench-")
    image = scene(work / "scene.png")
    settings = generation_settings(preset, args.steps, seed=5)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = work / "app.log"
    profiling = {"GRADIO_PROFILING": "1"} if args.server_phases else None
    process = start_app(model_dir, port, log_path, args.threads, env=profiling)
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
        clients = {
            SHARED_CONTEXT: api_client(url, download_files=str(work)),
            DEFAULT_CLIENT: Client(url, verbose=False, download_files=str(work)),
        }

        def through_app(client) -> Image.Image:
            gallery, _, _ = client.predict(
                image=handle_file(image), **settings, api_name=f"/{args.condition}"
            )
            return Image.open(gallery[1]["image"]).convert("RGB")

        paths = {name: lambda c=client: through_app(c) for name, client in clients.items()}
        paths["engine.generate"] = lambda: engine.generate(request).images[0]
        for run in paths.values():  # warm-up: model and ControlNet loading, detector, caches
            run()
        idle_share = idle_cpu_share(process.pid, args.idle_seconds)
        if args.server_phases:
            clear_server_phases(url)
        times: dict[str, list[float]] = {name: [] for name in paths}
        images: dict[str, Image.Image] = {}
        names = list(paths)
        for repeat in range(args.repeats):
            # Each path goes first in turn: what one leaves running must not slow the same next.
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                run = paths[name]
                start = time.perf_counter()
                images[name] = run()
                times[name].append(time.perf_counter() - start)
        phases = server_phases(url, args.condition) if args.server_phases else {}
    finally:
        stop(process)

    direct = np.asarray(images["engine.generate"], np.int16)
    difference = max(np.abs(np.asarray(images[name], np.int16) - direct).max() for name in clients)
    print(
        f"model: {model_name}, {args.condition}, {resolution}x{resolution}, {args.steps} steps "
        f"{settings['sampler']}, CFG {settings['cfg']:g}, 1 image"
    )
    print(
        machine_line(f"device {engine.preset.device}, torch threads {engine.threads} on both sides")
    )
    print(software_line())
    print(
        f"repeats: {args.repeats} (interleaved), max pixel difference app vs engine: {difference}"
    )
    print()
    engine_times = times["engine.generate"]
    engine_median = statistics.median(engine_times)
    # Each repeat runs every path back to back, so its difference sees the same machine load.
    print("| path | median s | min s | max s | ratio to engine | overhead s, paired |")
    print("|---|---|---|---|---|---|")
    for name in ("engine.generate", SHARED_CONTEXT, DEFAULT_CLIENT):
        median = statistics.median(times[name])
        paired = statistics.median(a - b for a, b in zip(times[name], engine_times, strict=True))
        print(
            f"| {name} | {median:.3f} | {min(times[name]):.3f} | {max(times[name]):.3f} "
            f"| {median / engine_median:.3f} | {paired:.3f} |"
        )
    ratio = statistics.median(times[SHARED_CONTEXT]) / engine_median
    print(f"\nratio app / engine (medians, one SSL context): {ratio:.3f} (target <= 1.10)")
    print(
        f"the app's CPU while idle (weights loaded, no request, {args.idle_seconds:g} s): "
        f"{100 * idle_share:.1f} % of one core"
    )
    if phases:
        print()
        print(f"| the app's side of each /{args.condition} request (Gradio profiling) | ms |")
        print("|---|---|")
        for field, label in PHASES.items():
            print(f"| {label} | {phases[field]:.1f} |")
        outside = phases["total_ms"] - phases["fn_call_ms"]
        print(f"\nGradio's server-side handling outside the app's function: {outside:.1f} ms")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the app process and temporary folders are cleaned up all the same
        print("\ninterrupted: nothing measured", file=sys.stderr)
        sys.exit(130)
