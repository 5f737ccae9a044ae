"""Engine overhead: one image through `Engine.generate` vs a bare diffusers call, same process.

Both sides use the same weights (loaded separately, the ControlNet by the project's loader, which
also reads single checkpoint files and low-rank ControlNets), control map, prompt, steps, sampler
and CFG (the preset's) and seed; runs are interleaved and the ratio of medians is printed (issue 9
target: <= 1.03).

    python benchmarks/bench_engine.py            # the tiny test model, built in a temp dir
    python benchmarks/bench_engine.py --model-dir assets/embedded --steps 20
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from measured_on import machine_line, software_line  # noqa: E402
from PIL import Image  # noqa: E402

from cnet.cli.options import positive_int, usable_device  # noqa: E402
from cnet.conditions import CONDITIONS  # noqa: E402
from cnet.engine import (  # noqa: E402
    GenerationRequest,
    compose_prompt,
    load_engine,
    make_scheduler,
)
from cnet.models import load_controlnet  # noqa: E402


def control_map(size: int) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[size // 4 : 3 * size // 4, size // 5 : size // 2] = 255
    image[size // 2 - 2 : size // 2 + 2, size // 2 : size - 4] = 255
    return image


def tiny_model_dir() -> Path:
    """The tiny test model, built in a temporary folder that is removed at exit."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny_model_dir

    folder = Path(tempfile.mkdtemp(prefix="cnet-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return build_tiny_model_dir(folder)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="model folder (default: build the tiny test model)")
    parser.add_argument("--condition", choices=CONDITIONS, default="canny")
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument(
        "--device",
        type=usable_device,
        choices=("cuda", "mps", "cpu"),
        help="default: the best one available",
    )
    parser.add_argument("--threads", type=positive_int, default=None)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    from diffusers import StableDiffusionControlNetPipeline

    model_dir = Path(args.model_dir) if args.model_dir else tiny_model_dir()
    engine = load_engine(model_dir=str(model_dir), device=args.device, threads=args.threads)
    engine.load()
    preset = engine.preset
    source = preset.controlnet_source(args.condition)
    bare = StableDiffusionControlNetPipeline.from_pretrained(
        preset.base,
        controlnet=load_controlnet(source, preset.base, preset.dtype, preset.device),
        safety_checker=None,
        requires_safety_checker=False,
        dtype=getattr(torch, preset.dtype),
    ).to(preset.device)
    bare.scheduler = make_scheduler(preset.sampler, bare.scheduler.config)
    bare.set_progress_bar_config(disable=True)

    size = preset.resolution
    request = GenerationRequest(
        control_map(size),
        args.condition,
        prompt="a red sphere",
        steps=args.steps,
        cfg=preset.cfg,
        sampler=preset.sampler,
        seed=3,
    )
    prompt = compose_prompt(request.prompt, preset.added_prompt)
    generator_device = "cpu" if preset.device == "mps" else preset.device

    def run_engine() -> Image.Image:
        return engine.generate(request).images[0]

    def run_bare() -> Image.Image:
        return bare(
            prompt,
            image=Image.fromarray(request.control_image),
            height=size,
            width=size,
            num_inference_steps=request.steps,
            guidance_scale=request.cfg,
            negative_prompt=preset.negative_prompt,
            generator=torch.Generator(generator_device).manual_seed(request.seed),
            controlnet_conditioning_scale=request.control_strength,
        ).images[0]

    def timed(fn):
        if preset.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        image = fn()
        if preset.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, image

    run_engine(), run_bare()  # warm-up: ControlNet load, first-call allocations
    engine_times, bare_times = [], []
    for _ in range(args.repeats):
        seconds, engine_image = timed(run_engine)
        engine_times.append(seconds)
        seconds, bare_image = timed(run_bare)
        bare_times.append(seconds)
    difference = np.abs(np.asarray(engine_image, np.int16) - np.asarray(bare_image, np.int16)).max()

    engine_median, bare_median = statistics.median(engine_times), statistics.median(bare_times)
    print(
        f"model: {model_dir} ({preset.name}), {size}x{size}, {args.steps} steps "
        f"{request.sampler}, CFG {request.cfg:g}"
    )
    print(
        machine_line(
            f"device {preset.device} {preset.dtype}, torch threads {torch.get_num_threads()}"
        )
    )
    print(software_line())
    print(
        f"repeats: {args.repeats} (interleaved), max pixel difference engine vs bare: {difference}"
    )
    print()
    print("| path | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, times in (("bare diffusers", bare_times), ("engine", engine_times)):
        print(f"| {name} | {statistics.median(times):.3f} | {min(times):.3f} | {max(times):.3f} |")
    print(f"\nratio engine / bare (medians): {engine_median / bare_median:.3f}")


if __name__ == "__main__":
    main()
