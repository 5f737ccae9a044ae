"""`python -m cnet generate`: images from a control map (or a photo to detect it from) + prompt.

python -m cnet generate edges.png -c canny --prompt "a red sphere" -n 4 -o outputs/
python -m cnet generate --detect photo.jpg -c depth --prompt-mode auto
python -m cnet generate map.png -c canny --preset sd15 --controlnet canny=my_canny.safetensors

Writes <condition>-control.png and <condition>-<seed>.png (with the "parameters" PNG text; with
--keep-first-pass also <condition>-<seed>-first-pass.png) and prints their paths; a run whose
names are taken adds -run2, -run3, ... to all of its names.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from cnet.cli.options import (
    add_model_flags,
    add_performance_flags,
    model_settings,
    output_folder,
    performance_settings,
)
from cnet.conditions import CONDITIONS, BackendUnavailable, set_annotators_dir
from cnet.engine import (
    MAX_CFG,
    MAX_IMAGES,
    MAX_RESOLUTION,
    MAX_STEPS,
    MIN_CFG,
    MIN_RESOLUTION,
    PROMPT_MODES,
    SAMPLERS,
    GenerationCancelled,
    GenerationRequest,
    ModelMissingError,
    load_engine,
    random_seed,
)
from cnet.progress import quiet_library_bars, writes_to_terminal

if TYPE_CHECKING:
    import numpy as np

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
    prompt.add_argument(
        "--prompt-mode",
        choices=PROMPT_MODES,
        default=DEFAULTS["prompt_mode"],
        help="none: no text; default: the paper's default prompt; auto: a caption of the "
        "default-prompt image, then sampling again; user: --prompt (default: %(default)s)",
    )
    prompt.add_argument("-p", "--prompt", default=DEFAULTS["prompt"], help="user prompt mode")
    prompt.add_argument(
        "--added-prompt",
        help="default: the preset's; the paper's apps' unless its preset.json says",
    )
    prompt.add_argument("--negative-prompt", help="default: the preset's, likewise")

    settings = parser.add_argument_group("sampling")
    # (flags, type, GenerationRequest field whose default it takes, what it holds)
    numbers = (
        (("-n", "--num-images"), int, "num_images", f"1..{MAX_IMAGES}, seeds --seed, --seed + 1"),
        (("--strength",), float, "control_strength", "control strength, 0..2; 0: no control"),
        (("--control-start",), float, "control_start", "share of steps before it joins, 0..1"),
        (("--control-end",), float, "control_end", "share of steps before it leaves, 0..1"),
        (("--steps",), int, "steps", f"1..{MAX_STEPS}"),
        (("--eta",), float, "eta", "0..1, DDIM only"),
        (("--seed",), int, "seed", "-1: random"),
    )  # fmt: skip
    for flags, kind, field, text in numbers:
        settings.add_argument(
            *flags, type=kind, default=DEFAULTS[field], help=f"{text} (default: %(default)s)"
        )
    settings.add_argument(
        "--resolution",
        type=int,
        help=f"short side, {MIN_RESOLUTION}..{MAX_RESOLUTION} (default: the preset's)",
    )
    settings.add_argument(
        "--guess-mode",
        action="store_true",
        help="the ControlNet reads the map without the prompt (use with --prompt-mode none)",
    )
    settings.add_argument(
        "--cfg",
        type=float,
        help=f"guidance scale, {MIN_CFG:g}..{MAX_CFG:g} (default: the preset's; the paper's 9.0 "
        "unless its preset.json says)",
    )
    settings.add_argument(
        "--sampler",
        choices=SAMPLERS,
        help="default: the preset's; the paper's DDPM unless its preset.json says",
    )
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


def _control_map(args: argparse.Namespace, resolution: int) -> tuple[np.ndarray, str]:
    """The control map and the preprocessor that made it ("none": the map given as it is)."""
    from cnet.cli.reading import chosen_reader, keypoints_file, read_input
    from cnet.conditions import CONDITIONS, NONE_BACKEND, detect
    from cnet.imageio import to_rgb_array

    if bool(args.control) == bool(args.detect):
        raise ValueError("Give either a control map image or --detect PHOTO (one of them).")
    condition = CONDITIONS[args.condition]
    if args.control:
        if keypoints_file(args.control):
            pose = "" if args.condition == "pose" else " -c pose"
            raise ValueError(
                f"{args.control} is a keypoints file, not a control map image: give it as "
                f"--detect {args.control}{pose}"
            )
        # Used as it is, so checked as the map-as-is preprocessor checks its input.
        none = condition.backend(NONE_BACKEND.name)
        return to_rgb_array(read_input(args.control, none)), none.module()
    backend = (
        condition.backend(args.detector) if args.detector else chosen_reader(condition, args.detect)
    )
    print(f"{condition.label} map by {backend.label} ({backend.name})", file=sys.stderr)
    source = read_input(args.detect, backend)
    control = detect(
        args.condition,
        source,
        backend=backend.name,
        detect_resolution=resolution,
        image_resolution=resolution,
    )
    return control, backend.module()


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse flags the chosen mode would drop without a word."""
    if args.prompt and args.prompt_mode != "user":
        raise ValueError(
            f"--prompt is read in --prompt-mode user only, and this run is in --prompt-mode "
            f"{args.prompt_mode}: drop --prompt, or drop --prompt-mode (user is the default)."
        )
    if args.keep_first_pass and args.prompt_mode != "auto":
        raise ValueError("--keep-first-pass keeps the first pass of --prompt-mode auto only.")
    if args.detector and not args.detect:
        raise ValueError("--detector picks the detector for --detect PHOTO; give --detect.")


def free_suffix(out_dir: Path, stems: list[str]) -> str:
    """The empty suffix when none of the files `stems` name exist in out_dir, else the first
    "-runN" under which none do: a run with seeds used before keeps the earlier run's images."""
    run, suffix = 1, ""
    while any((out_dir / f"{stem}{suffix}.png").exists() for stem in stems):
        run += 1
        suffix = f"-run{run}"
    return suffix


def _progress(done: int, total: int) -> None:
    if writes_to_terminal():
        print(f"\rsampling {done}/{total}", end="\n" if done == total else "", file=sys.stderr)
    elif done == total:  # a log file gets the line, not a carriage return a step
        print(f"sampling {done}/{total}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from cnet import png_info
    from cnet.captioner import CaptionerUnavailable
    from cnet.imageio import ImageInputError

    if args.annotators_dir:
        set_annotators_dir(args.annotators_dir)
    out_dir = Path(args.out_dir)
    try:
        _check_flags(args)
        engine = load_engine(**model_settings(args), **performance_settings(args))
        print(f"{engine.status()} ({engine.reason})", file=sys.stderr)
        resolution = args.resolution or engine.preset.resolution
        seed = random_seed() if args.seed == -1 else args.seed
        control, preprocessor = _control_map(args, resolution)
        request = GenerationRequest(
            control_image=control,
            condition=args.condition,
            preprocessor=preprocessor,
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
        quiet_library_bars()  # here, where the models load: a refused command imports none
        engine.check_weights([args.condition])
        if request.prompt_mode == "auto":
            engine.captioner()  # a missing one is named before the folder is made
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

    seeds = result.seeds
    images = {f"{args.condition}-{s}": image for image, s in zip(result.images, seeds, strict=True)}
    images |= {
        f"{args.condition}-{s}-first-pass": image
        for image, s in zip(result.first_pass_images, seeds, strict=False)  # first pass: 1 or all
    }
    control = f"{args.condition}-control"
    suffix = free_suffix(out_dir, [control, *images])
    try:
        written = [out_dir / f"{control}{suffix}.png"]
        Image.fromarray(result.control_image).save(written[0])
        written += [
            png_info.save_png(image, out_dir / f"{stem}{suffix}.png")
            for stem, image in images.items()
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
