"""Training speed of the paper's two ControlNet modes: full (all links) vs small-scale.

The paper reports small-scale training 1.6x faster on an RTX 3070 Ti laptop GPU. This measures
our training step (the same `training_loss`, backward and AdamW step the loop runs) on random
data with a randomly initialised model of the chosen architecture. Each mode runs in its own
process, so each peak memory figure is that mode's own; modes alternate over several rounds and
the median speed is reported, which tames a shared machine's noise.

  python benchmarks/bench_train.py                      # SMALL (the embedded preset), CPU
  python benchmarks/bench_train.py --architecture tiny --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere without installing the package
sys.path.insert(0, str(ROOT / "benchmarks"))
from measured_on import machine_line, software_line  # noqa: E402

from cnet.cli.options import positive_int  # noqa: E402

MODES = {"full": True, "small-scale": False}  # mode -> connect_decoder


def build_base(architecture: str, out: Path) -> None:
    import torch

    from cnet.architecture import SMALL, TINY, build_components, build_tokenizer, save_pipeline_dir

    config = {"small": SMALL, "tiny": TINY}[architecture]
    torch.manual_seed(0)
    corpus = ["a red sphere and a blue cube on a white background"]
    tokenizer = build_tokenizer(corpus, out / "tokenizer", 50, config.max_text_length)
    save_pipeline_dir(build_components(config, tokenizer), out / "base", config)


def worker(base: str, mode: str, batch_size: int, steps: int, warmup: int) -> dict:
    """Time `steps` optimizer steps in one mode; print a JSON line with speed and peak memory."""
    import torch

    from cnet.train.controlnet import Models, load_base, lock, new_controlnet, training_loss

    parts = load_base(base)
    controlnet = new_controlnet(parts["unet"], base)
    lock(parts["vae"], parts["text_encoder"], parts["unet"])
    models = Models(controlnet=controlnet, **parts)
    controlnet.train()
    size = parts["unet"].config.sample_size * 8
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1,
        "conditioning_pixel_values": torch.rand(batch_size, 3, size, size, generator=generator),
        "prompt": ["a red sphere and a blue cube"] * batch_size,
    }
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)
    prompts = torch.Generator().manual_seed(1)
    if torch.cuda.is_available():
        for model in (parts["vae"], parts["text_encoder"], parts["unet"], controlnet):
            model.to("cuda")
        generator = torch.Generator("cuda").manual_seed(0)

    def step() -> None:
        loss = training_loss(models, batch, generator, prompts, 0.5, MODES[mode])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {
        "mode": mode,
        "steps_per_s": steps / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loaded_rss_mb": loaded_rss,
        "trainable_params_m": sum(p.numel() for p in controlnet.parameters()) / 1e6,
        "resolution": size,
    }
    if torch.cuda.is_available():
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=("small", "tiny"), default="small")
    parser.add_argument("--batch-size", type=positive_int, default=2)
    parser.add_argument("--steps", type=positive_int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--rounds", type=positive_int, default=2)
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads per run"
    )
    parser.add_argument("--worker", nargs=2, metavar=("BASE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"argument --warmup: expected a whole number of at least 0, got {args.warmup}")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        base, mode = args.worker
        print(json.dumps(worker(base, mode, args.batch_size, args.steps, args.warmup)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        build_base(args.architecture, Path(tmp))
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for round_index in range(args.rounds):
            order = list(MODES) if round_index % 2 == 0 else list(MODES)[::-1]
            for mode in order:
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    str(Path(tmp) / "base"),
                    mode,
                    "--batch-size",
                    str(args.batch_size),
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                ] + (["--threads", str(args.threads)] if args.threads else [])
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    sys.stderr.write(done.stderr)
                    sys.exit(
                        f"error: the {mode} training run failed (exit code {done.returncode}); "
                        "its error output is above."
                    )
                runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))

    speed = {mode: statistics.median(r["steps_per_s"] for r in rs) for mode, rs in runs.items()}
    first = runs["full"][0]
    print(
        f"ControlNet training step, {args.architecture} architecture, {first['resolution']} px, "
        f"batch {args.batch_size}, {first['trainable_params_m']:.1f} M trainable parameters, "
        f"median of {args.rounds} rounds x {args.steps} steps"
    )
    print(machine_line(f"{args.threads or 'default'} torch threads"))
    print(software_line())
    print()
    print("| mode | steps/s | s/step | peak RSS | of which training | peak GPU |")
    print("|---|---|---|---|---|---|")
    for mode, rs in runs.items():
        peak = max(r["peak_rss_mb"] for r in rs)
        growth = max(r["peak_rss_mb"] - r["loaded_rss_mb"] for r in rs)
        gpu = f"{max(r['peak_gpu_mb'] for r in rs):.0f} MB" if "peak_gpu_mb" in rs[0] else "-"
        print(
            f"| {mode} | {speed[mode]:.3f} | {1 / speed[mode]:.2f} | {peak:.0f} MB "
            f"| +{growth:.0f} MB | {gpu} |"
        )
    print()
    print(
        f"small-scale / full speed ratio: {speed['small-scale'] / speed['full']:.2f}x "
        "(the paper: 1.6x on an RTX 3070 Ti laptop GPU)"
    )


if __name__ == "__main__":
    main()
