"""`python -m cnet generate`: images from a control map (or a photo to detect it from) + prompt.

python -m cnet generate edges.png -c canny --prompt "a red sphere" -n 4 -o outputs/
python -m cnet generate --detect photo.jpg -c depth --prompt-mode auto
python -m cnet generate map.png -c canny --preset sd15 --controlnet canny=my_canny.safetensors

Writes <condition>-<seed>.png (with the "parameters" PNG text) and <condition>-control.png.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import fields
from pathlib import Path

from cnet.cli.options import (
    add_model_flags,
    add_performance_flags,
    model_settings,
    output_folder,
    performance_settings,
)
from cnet.conditions import CONDITIONS, BackendUnavailable, set_annotators_dir
from cnet.engine import (
    MAX_IMAGES,
    MAX_SEED,
    PROMPT_MODES,
    SAMPLERS,
    GenerationCancelled,
    GenerationRequest,
    ModelMissingError,
    load_engine,
)

DEFAULTS = {f.name: f.default for f in fields(GenerationRequest) if f.name != "control_image"}


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("control map")
    source.add_argument("control", nargs="?", help="control map image (already a map)")
    source.add_argument("--detect", metavar="PHOTO", help="detect the map from this photo instead")
    source.add_argument(
        "--detector",
        help="detector backend for --detect (default: the first ready one that reads it)",
    )
    source.add_argument("-c", "--condition", required=True, choices=tuple(CONDITIONS))

    add_model_flags(parser)
    add_performance_flags(parser)

    prompt = parser.add_argument_group("prompt")
    prompt.add_argument("--prompt-mode", choices=PROMPT_MODES, default=DEFAULTS["prompt_mode"])
    prompt.add_argument("-p", "--prompt", default=DEFAULTS["prompt"])
    prompt.add_argument(
        "--added-prompt",
        help="default: the preset's; the paper's apps' unless its preset.json says",
    )
    prompt.add_argument("--negative-prompt", help="default: the preset's, likewise")

    settings = parser.add_argument_group("sampling")
    settings.add_argument(
        "-n", "--num-images", type=int, default=DEFAULTS["num_images"], help=f"1..{MAX_IMAGES}"
    )
    settings.add_argument("--resolution", type=int, help="short side (default: the preset's)")
    settings.add_argument("--strength", type=float, default=DEFAULTS["control_strength"])
    settings.add_argument("--guess-mode", action="store_true")
    settings.add_argument("--control-start", type=float, default=DEFAULTS["control_start"])
    settings.add_argument("--control-end", type=float, default=DEFAULTS["control_end"])
    settings.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    settings.add_argument(
        "--cfg",
        type=float,
        help="guidance scale (default: the preset's; the paper's 9.0 unless its preset.json says)",
    )
    settings.add_argument(
        "--sampler",
        choices=SAMPLERS,
        help="default: the preset's; the paper's DDPM unless its preset.json says",
    )
    settings.add_argument("--eta", type=float, default=DEFAULTS["eta"], help="DDIM only")
    settings.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="-1: random")
    settings.add_argument(
        "--keep-first-pass",
        action="store_true",
        help="auto prompt mode: also save the default-prompt images",
    )
    parser.add_argument(
        "-o",
        "--out-dir",
        type=output_folder,
        default="outputs",
        help="where PNGs go (default: outputs)",
    )


def _control_map(args: argparse.Namespace, resolution: int):
    from cnet.cli.reading import read_input
    from cnet.conditions import CONDITIONS, NONE_BACKEND, detect
    from cnet.imageio import to_rgb_array

    if bool(args.control) == bool(args.detect):
        raise ValueError("Give either a control map image or --detect PHOTO (one of them).")
    condition = CONDITIONS[args.condition]
    if args.control:
        if any(backend.reads_keypoints for backend in condition.readers(args.control)):
            raise ValueError(
                f"{args.control} is a keypoints file, not a control map image: give it as "
                f"--detect {args.control}"
            )
        # Used as it is, so checked as the map-as-is preprocessor checks its input.
        return to_rgb_array(read_input(args.control, condition.backend(NONE_BACKEND.name)))
    backend = (
        condition.backend(args.detector) if args.detector else condition.reader_for(args.detect)
    )
    print(f"{condition.label} map by {backend.label} ({backend.name})", file=sys.stderr)
    source = read_input(args.detect, backend)
    return detect(
        args.condition,
        source,
        backend=backend.name,
        detect_resolution=resolution,
        image_resolution=resolution,
    )


def _progress(done: int, total: int) -> None:
    print(f"\rsampling {done}/{total}", end="\n" if done == total else "", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from cnet import png_info
    from cnet.captioner import CaptionerUnavailable
    from cnet.imageio import ImageInputError

    if args.annotators_dir:
        set_annotators_dir(args.annotators_dir)
    out_dir = Path(args.out_dir)
    try:
        engine = load_engine(**model_settings(args), **performance_settings(args))
        print(f"{engine.status()} ({engine.reason})", file=sys.stderr)
        resolution = args.resolution or engine.preset.resolution
        seed = random.randint(0, MAX_SEED - MAX_IMAGES) if args.seed == -1 else args.seed
        request = GenerationRequest(
            control_image=_control_map(args, resolution),
            condition=args.condition,
            prompt_mode=args.prompt_mode,
            prompt=args.prompt,
            added_prompt=args.added_prompt,
            negative_prompt=args.negative_prompt,
            num_images=args.num_images,
            resolution=args.resolution,
            control_strength=args.strength,
            guess_mode=args.guess_mode,
            control_start=args.control_start,
            control_end=args.control_end,
            steps=args.steps,
            cfg=args.cfg,
            sampler=args.sampler,
            eta=args.eta,
            seed=seed,
            keep_first_pass=args.keep_first_pass,
        )
        request.validate()
        engine.check_weights([args.condition])
        try:  # before sampling, once the request is known good: else the images would be lost
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"error: cannot make the folder {out_dir} ({error})", file=sys.stderr)
            return 1
        result = engine.generate(request, progress=_progress)
    except (ModelMissingError, CaptionerUnavailable, BackendUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, ImageInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (GenerationCancelled, KeyboardInterrupt):
        print("cancelled", file=sys.stderr)
        return 130

    try:
        Image.fromarray(result.control_image).save(out_dir / f"{args.condition}-control.png")
        written = [
            png_info.save_png(image, out_dir / f"{args.condition}-{seed}.png")
            for image, seed in zip(result.images, result.seeds, strict=True)
        ]
        written += [
            png_info.save_png(image, out_dir / f"{args.condition}-{seed}-first-pass.png")
            for image, seed in zip(result.first_pass_images, result.seeds, strict=False)
        ]
    except OSError as error:
        print(f"error: cannot write the images in {out_dir} ({error})", file=sys.stderr)
        return 1
    if result.caption is not None:
        print(f"caption: {result.caption}")
    print(f"prompt: {result.prompt!r}")
    for notice in result.metadata["notices"]:
        print(f"note: {notice}", file=sys.stderr)
    for path in written:
        print(path)
    return 0
