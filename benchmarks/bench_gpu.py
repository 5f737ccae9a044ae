"""GPU sampling speed: an SD 1.5-sized UNet + ControlNet (random weights), plain, channels_last,
torch.compile; denoising iterations per second next to diffusers' published figures.

The models have Stable Diffusion 1.5's architecture (config below, from its public
unet/config.json facts) with random weights, so nothing is downloaded. One iteration is one
denoising step as in StableDiffusionControlNetPipeline with classifier-free guidance: the
ControlNet and the UNet each run on a batch of 2 (unconditional + conditional) 64x64 latents
(512x512 images), then a DDPM scheduler step. fp16, SDPA attention (diffusers' default).

    python benchmarks/bench_gpu.py                          # needs a CUDA GPU
    python benchmarks/bench_gpu.py --compile-mode default --compile-mode reduce-overhead
    python benchmarks/bench_gpu.py --smoke       # tiny models, CPU allowed: checks the script
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measured_on import machine_line, software_line  # noqa: E402

from cnet.cli.options import positive_int  # noqa: E402
from cnet.models import compile_problem  # noqa: E402

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
# Same block layout, narrow: for --smoke only (the script's code path on any machine).
SMOKE_UNET = dict(
    SD15_UNET, sample_size=8, block_out_channels=(32, 32, 64, 64), cross_attention_dim=32
)
PROMPT_TOKENS = 77
# diffusers' published SD-ControlNet figures (torch 2.0 docs page), A100, batch 1, it/s.
ANCHORS = {"A100, no compile": 15.0, "A100, torch.compile": 32.1}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def build_models(config: dict, device: str, dtype: torch.dtype):
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: much faster than on the CPU
        unet = UNet2DConditionModel(**config)
        controlnet = ControlNetModel.from_unet(unet)
    # nn.Module.to: ModelMixin.to warns about fp32-only modules, which these models have none of
    return tuple(torch.nn.Module.to(m, dtype).eval() for m in (unet, controlnet))


def denoise(unet, controlnet, scheduler, inputs: dict, steps: int) -> torch.Tensor:
    """`steps` denoising iterations with classifier-free guidance, as the pipeline runs them."""
    latents = inputs["latents"]
    scheduler.set_timesteps(steps, device=latents.device)
    for t in scheduler.timesteps:
        model_input = torch.cat([latents] * 2)
        down, mid = controlnet(
            model_input,
            t,
            encoder_hidden_states=inputs["text"],
            controlnet_cond=inputs["control"],
            return_dict=False,
        )
        noise = unet(
            model_input,
            t,
            encoder_hidden_states=inputs["text"],
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        uncond, cond = noise.chunk(2)
        noise = uncond + 7.5 * (cond - uncond)
        latents = scheduler.step(noise, t, latents).prev_sample
    return latents


def measure(unet, controlnet, inputs, steps: int, repeats: int, device: str) -> dict:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)

    def run() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        denoise(unet, controlnet, scheduler, inputs, steps)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        first = run()  # compiles, when compiled; allocator warm-up otherwise
        run()
        times = [run() for _ in range(repeats)]
    median = statistics.median(times)
    return {
        "first_s": first,
        "median_s": median,
        "its": steps / median,
        "best_its": steps / min(times),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument(
        "--compile-mode",
        action="append",
        choices=COMPILE_MODES,
        help="torch.compile mode to measure (repeatable; default: 'default', the engine's)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models, CPU allowed: check the script runs"
    )
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()

    if args.smoke:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        config, dtype = SMOKE_UNET, torch.float16 if device == "cuda" else torch.float32
        args.steps, args.repeats = min(args.steps, 2), min(args.repeats, 2)
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing measured (this benchmark needs a CUDA GPU; --smoke runs")
        print("tiny models on the CPU to check the script).")
        return 1
    else:
        device, config, dtype = "cuda", SD15_UNET, torch.float16
    size = config["sample_size"]

    unet, controlnet = build_models(config, device, dtype)
    generator = torch.Generator(device).manual_seed(0)
    inputs = {
        "latents": torch.randn(1, 4, size, size, generator=generator, device=device, dtype=dtype),
        "text": torch.randn(
            2, PROMPT_TOKENS, config["cross_attention_dim"], device=device, dtype=dtype
        ),
        "control": torch.rand(2, 3, size * 8, size * 8, device=device, dtype=dtype),
    }
    attention = {type(p).__name__ for p in unet.attn_processors.values()}
    rows = [("plain", measure(unet, controlnet, inputs, args.steps, args.repeats, device))]
    print(f"measured: plain {rows[-1][1]['its']:.2f} it/s", file=sys.stderr)

    unet.to(memory_format=torch.channels_last)
    controlnet.to(memory_format=torch.channels_last)
    rows.append(
        ("channels_last", measure(unet, controlnet, inputs, args.steps, args.repeats, device))
    )
    print(f"measured: channels_last {rows[-1][1]['its']:.2f} it/s", file=sys.stderr)

    if not args.no_compile:
        problem = compile_problem(device)
        for mode in args.compile_mode or ["default"]:
            name = f"channels_last + torch.compile ({mode})"
            if problem:
                print(f"{name}: skipped, {problem}", file=sys.stderr)
                continue
            torch._dynamo.reset()
            compiled_unet = torch.compile(unet, mode=mode)
            compiled_controlnet = torch.compile(controlnet, mode=mode)
            result = measure(
                compiled_unet, compiled_controlnet, inputs, args.steps, args.repeats, device
            )
            rows.append((name, result))
            print(f"measured: {name} {result['its']:.2f} it/s", file=sys.stderr)

    gpu = []
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        gpu = [
            f"GPU {torch.cuda.get_device_name()}",
            f"CUDA {torch.version.cuda}",
            f"peak GPU memory {peak:.1f} GiB",
        ]
    model = "SD 1.5-sized" if config is SD15_UNET else "tiny (smoke test)"
    print(
        f"{model} UNet + ControlNet, random weights, {size * 8}x{size * 8}, {args.steps} steps, "
        f"batch 1 (CFG: model batch 2), {str(dtype).removeprefix('torch.')}, "
        f"attention {', '.join(sorted(attention))}"
    )
    print(machine_line(*gpu))
    print(software_line())
    print(f"median of {args.repeats} runs after 2 warm-up runs")
    print()
    print("| variant | it/s (median) | it/s (best) | first run s | vs A100 no compile |")
    print("|---|---|---|---|---|")
    anchor = ANCHORS["A100, no compile"]
    sized = config is SD15_UNET  # the anchors are SD 1.5's: a tiny model's ratio means nothing
    for name, result in rows:
        ratio = f"{result['its'] / anchor:.2f}" if sized else "n/a (tiny model)"
        print(
            f"| {name} | {result['its']:.2f} | {result['best_its']:.2f} | "
            f"{result['first_s']:.1f} | {ratio} |"
        )
    for name, value in ANCHORS.items() if sized else ():
        print(f"| diffusers published: {name} | {value:.1f} | | | {value / anchor:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
