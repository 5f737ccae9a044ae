"""Cold start of the app: from process start to (a) the UI answering over HTTP and (b) the first
image returned through gradio_client; issue 9 targets: <= 8 s and <= 20 s on 2 CPU cores.

Each run starts `python app.py --model-dir DIR --port P` afresh (the OS file cache stays warm after
the first run, as on a machine that has run the app before). The model is the embedded preset when
assets/embedded holds its weights, else the tiny test model (tests/conftest.py); the table names it.
Then each heavy import is timed in a fresh interpreter, to show where the start-up time goes.

    python benchmarks/bench_startup.py                    # embedded model, or the tiny one
    python benchmarks/bench_startup.py --model-dir DIR --runs 5 --threads 1
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
EMBEDDED = ROOT / "assets" / "embedded"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from app_server import answers, api_client, free_port  # noqa: E402
from measured_on import machine_line, software_line  # noqa: E402

from cnet.cli.options import positive_int, positive_number  # noqa: E402
from cnet.conditions import CONDITIONS  # noqa: E402

IMPORTS = {  # what app.py and the first request import, one fresh interpreter each
    "python itself": "pass",
    "numpy + PIL": "import numpy, PIL.Image",
    "cnet.engine + cnet.models": "import cnet.engine, cnet.models",
    "cnet.conditions (registry)": "import cnet.conditions",
    "torch": "import torch",
    "diffusers pipeline": "from diffusers import StableDiffusionControlNetPipeline",
    "gradio": "import gradio",
    "cnet.ui (gradio + engine + registry)": "import cnet.ui",
}

# The UI start step by step, in one fresh interpreter: app.main as `python app.py` runs it, on a
# folder without weights (so nothing loads behind it), stopped once it serves.
UI_STEPS = (
    "app.py (or the --app script), cnet.engine, cnet.models",
    "import gradio",
    "import cnet.ui (layout code, condition registry)",
    "build_demo: seven tabs, and Gradio's FastAPI app",
    "queue + launch until serving (Gradio builds its app again, checks itself)",
)
UI_STEPS_CODE = """
import importlib.util, sys, time
marks = [time.perf_counter()]
spec = importlib.util.spec_from_file_location("app", sys.argv.pop(1))
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
import cnet.engine, cnet.models
marks.append(time.perf_counter())
import gradio
marks.append(time.perf_counter())
import cnet.ui
marks.append(time.perf_counter())
build_demo = cnet.ui.build_demo

def timed_build_demo(*args, **kwargs):
    demo = build_demo(*args, **kwargs)
    marks.append(time.perf_counter())
    return demo

def serving(demo):
    marks.append(time.perf_counter())
    demo.close()

cnet.ui.build_demo = timed_build_demo
gradio.Blocks.block_thread = serving
app.main(sys.argv[1:])
print(*(end - start for start, end in zip(marks, marks[1:])))
"""


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def check_app(app: Path = APP) -> None:
    """Exit with a message unless the app script exists and takes --model-dir and --port."""
    if not app.is_file():
        fail(f"{app} does not exist; this benchmark starts it as a subprocess.")
    shown = subprocess.run(
        [sys.executable, str(app), "--help"],
        cwd=ROOT,
        env=app_env(None),
        capture_output=True,
        text=True,
    )
    missing = [flag for flag in ("--model-dir", "--port") if flag not in shown.stdout]
    if shown.returncode != 0 or missing:
        fail(
            f"{app.name} --help {'failed' if shown.returncode else 'lacks ' + ', '.join(missing)}; "
            f"this benchmark runs `{app.name} --model-dir DIR --port P`."
            + (f"\n{shown.stderr[-2000:]}" if shown.stderr.strip() else "")
        )


def temporary_folder(prefix: str) -> Path:
    """A new folder in the system's temporary folder, removed when this process exits."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def model_dir_or_tiny(model_dir: str | None, random: str | None = None) -> tuple[Path, str]:
    """(folder, how to name it in the table): the given one, the embedded preset, or random
    weights of the `random` architecture (tiny when the embedded preset has no weights)."""
    if model_dir:
        from cnet.models import missing_weights

        if detail := missing_weights(str(Path(model_dir) / "base"), "base"):
            fail(f"--model-dir {model_dir}: {detail}; give a folder in the embedded layout.")
        return Path(model_dir), f"{model_dir} (given)"
    if random is None and (EMBEDDED / "base" / "model_index.json").is_file():
        return EMBEDDED, "embedded preset (assets/embedded)"
    from conftest import build_tiny_model_dir

    architecture = random or "tiny"
    folder = build_tiny_model_dir(temporary_folder("cnet-bench-"), architecture)
    return folder, f"random weights, {architecture} architecture (tests/conftest.py)"


def model_preset(model_dir: Path):
    """The folder's preset as the app reads it: its resolution and guidance scale."""
    from cnet.models import preset_from_dir

    return preset_from_dir(model_dir, device="cpu")


def scene(path: Path, size: int = 256) -> Path:
    """A picture with clear edges, so every edge detector finds something."""
    image = Image.new("RGB", (size, size), (90, 90, 90))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 6, size // 6, size // 2, size // 2), fill=(200, 30, 30))
    draw.rectangle((size // 2, size // 2, size - 20, size - 20), fill=(30, 60, 200))
    image.save(path)
    return path


def app_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def start_app(
    model_dir: Path,
    port: int,
    log_path: Path,
    threads: int | None,
    app: Path = APP,
    env: dict[str, str] | None = None,
):
    """`python app.py --model-dir DIR --port P` in its own process; `env`: extra variables."""
    command = [sys.executable, str(app), "--model-dir", str(model_dir), "--port", str(port)]
    with open(log_path, "w") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env={**app_env(threads), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_until_answering(
    process, url: str, log_path: Path, timeout: float, app: Path = APP
) -> None:
    deadline = time.monotonic() + timeout
    while not answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            state = "exited" if process.poll() is not None else f"is not up after {timeout:.0f} s"
            log = log_path.read_text()[-3000:] or "(empty)"
            fail(f"{app.name} {state}; the end of its log:\n{log}")
        time.sleep(0.05)


def stop(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def generation_settings(preset, steps: int, seed: int = 0) -> dict:
    """The Run endpoint's settings as the app starts them (the engine's defaults; the preset's
    resolution, guidance scale, sampler and added and negative prompts, which the request's
    defaults leave to the preset), apart from steps."""
    return dict(
        prompt_mode="user",
        prompt="a red sphere and a blue cube",
        added_prompt=preset.added_prompt,
        negative_prompt=preset.negative_prompt,
        num_images=1,
        resolution=preset.resolution,
        steps=steps,
        cfg=preset.cfg,
        sampler=preset.sampler,
        seed=seed,
        randomize_seed=False,
    )


def one_cold_start(args, model_dir: Path, image: Path, preset, log_path: Path):
    from gradio_client import handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    started = time.perf_counter()
    process = start_app(model_dir, port, log_path, args.threads, args.app)
    try:
        wait_until_answering(process, url, log_path, args.timeout, args.app)
        ui = time.perf_counter() - started
        client = api_client(url, download_files=str(log_path.parent))
        gallery, _, _ = client.predict(
            image=handle_file(image),
            **generation_settings(preset, args.steps),
            api_name=f"/{args.condition}",
        )
        first_image = time.perf_counter() - started
    finally:
        stop(process)
    if len(gallery) < 2:
        fail(f"the app returned no image: {gallery}")
    return ui, first_image


def import_seconds(statement: str) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    command = [sys.executable, "-c", code]
    started = time.perf_counter()
    output = subprocess.run(
        command, cwd=ROOT, env=app_env(None), capture_output=True, text=True, check=True
    )
    if statement == "pass":  # interpreter start-up itself
        return time.perf_counter() - started
    return float(output.stdout.strip().splitlines()[-1])


def ui_step_seconds(app: Path = APP, timeout: float = 300.0) -> list[float]:
    """Seconds of each of UI_STEPS, starting the `app` script."""
    with tempfile.TemporaryDirectory(prefix="cnet-no-model-") as empty:
        command = [sys.executable, "-c", UI_STEPS_CODE, str(app), "--model-dir", empty, "--port"]
        command.append(str(free_port()))
        try:
            output = subprocess.run(
                command,
                cwd=ROOT,
                env=app_env(None),
                capture_output=True,
                text=True,
                check=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            fail(
                f"{app.name}'s UI steps did not end in {timeout:.0f} s: a variant is timed step by "
                "step where it keeps app.py's main(argv) and cnet.ui.build_demo."
            )
    return [float(seconds) for seconds in output.stdout.strip().splitlines()[-1].split()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="model folder (default: embedded, else tiny)")
    parser.add_argument("--condition", choices=CONDITIONS, default="canny")
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--runs", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, help="OMP_NUM_THREADS for the app")
    parser.add_argument(
        "--timeout",
        type=positive_number,
        default=300.0,
        help="seconds to wait for the UI, and for the UI steps",
    )
    parser.add_argument("--no-imports", action="store_true", help="skip the import timings")
    parser.add_argument(
        "--app",
        type=Path,
        default=APP,
        help="the app script (default: app.py; to compare a variant)",
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    args.app = args.app.resolve()  # the app runs in the repository root
    check_app(args.app)
    model_dir, model_name = model_dir_or_tiny(args.model_dir)
    preset = model_preset(model_dir)
    resolution = preset.resolution
    work = temporary_folder("cnet-startup-")
    image = scene(work / "scene.png")

    runs = []
    for run in range(args.runs):
        log_path = work / f"app-{run}.log"
        runs.append(one_cold_start(args, model_dir, image, preset, log_path))
        print(
            f"run {run + 1}: UI {runs[-1][0]:.1f} s, first image {runs[-1][1]:.1f} s",
            file=sys.stderr,
        )

    print(f"app: {args.app}")
    print(
        f"model: {model_name}, {args.condition}, {resolution}x{resolution}, {args.steps} steps, "
        "1 image"
    )
    threads = args.threads or os.environ.get("OMP_NUM_THREADS", "unset")
    print(machine_line(f"OMP_NUM_THREADS={threads}"))
    print(software_line())
    print()
    print("| run | process start -> UI answers s | process start -> first image s |")
    print("|---|---|---|")
    for run, (ui, first) in enumerate(runs, 1):
        print(f"| {run} | {ui:.1f} | {first:.1f} |")
    ui_median = statistics.median(ui for ui, _ in runs)
    first_median = statistics.median(first for _, first in runs)
    print(
        f"| **median** | **{ui_median:.1f}** (target <= 8) | **{first_median:.1f}** "
        "(target <= 20) |"
    )

    if not args.no_imports:
        print()
        print("| import in a fresh interpreter | s |")
        print("|---|---|")
        for name, statement in IMPORTS.items():
            print(f"| {name} | {import_seconds(statement):.2f} |")
        print()
        print("| UI start, step by step (one fresh interpreter, no weights) | s |")
        print("|---|---|")
        for name, seconds in zip(UI_STEPS, ui_step_seconds(args.app, args.timeout), strict=True):
            print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the app process and temporary folders are cleaned up all the same
        print("\ninterrupted: nothing measured", file=sys.stderr)
        sys.exit(130)
