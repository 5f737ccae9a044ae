"""`python -m cnet synth`: render scenes, export them for training, draw a contact sheet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from cnet.cli.options import image_file, non_negative_int, output_folder, positive_int
from cnet.synth.contact_sheet import contact_sheet
from cnet.synth.examples import add_examples
from cnet.synth.export import export_fill50k, export_imagefolder
from cnet.synth.sample import CONDITION_KEYS, generate
from cnet.synth.splits import SPLITS, split_seeds

EXPORTS = {"fill50k": export_fill50k, "imagefolder": export_imagefolder}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="action", required=True)

    def scenes(command: argparse.ArgumentParser, count: int) -> None:
        command.add_argument("--split", choices=tuple(SPLITS), default="train")
        command.add_argument("--count", type=positive_int, default=count, help="number of scenes")
        command.add_argument("--start", type=int, default=0, help="first scene within the split")
        command.add_argument("--size", type=positive_int, default=128, help="image side in pixels")

    export = sub.add_parser("export", help="write scenes as fill50k or an image folder")
    export.add_argument("layout", choices=tuple(EXPORTS))
    export.add_argument("out_dir", type=output_folder)
    export.add_argument("--condition", choices=CONDITION_KEYS, required=True)
    scenes(export, 1000)

    sheet = sub.add_parser("contact-sheet", help="PNG: one row per scene, target then every map")
    sheet.add_argument("out", type=image_file, help="the sheet, e.g. sheet.png")
    scenes(sheet, 6)

    render = sub.add_parser("render", help="write one scene's target, maps and attributes")
    render.add_argument("seed", type=non_negative_int)
    render.add_argument("out_dir", type=output_folder)
    render.add_argument("--size", type=positive_int, default=128)

    examples = sub.add_parser(
        "examples",
        help="put one held-out scene per condition under a model folder's tabs (examples/, "
        "named in its preset.json)",
    )
    examples.add_argument("model_dir", type=Path, help="a folder in the embedded layout")


def run(args: argparse.Namespace) -> int:
    if args.action in ("export", "contact-sheet"):
        try:  # before any folder is made
            split_seeds(args.split, args.count, args.start)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if args.action == "export":
        try:
            index = EXPORTS[args.layout](
                args.out_dir, args.split, args.condition, args.count, args.size, args.start
            )
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        scenes = "scene" if args.count == 1 else "scenes"
        print(f"wrote {args.count} {args.split} {scenes} ({args.condition}) to {index}")
    elif args.action == "contact-sheet":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        seeds = split_seeds(args.split, args.count, args.start)
        Image.fromarray(contact_sheet(seeds, args.size)).save(args.out, optimize=True)
        print(f"wrote {args.out}")
    elif args.action == "examples":
        try:
            settings = add_examples(args.model_dir)
        except (FileNotFoundError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for key, prompt in settings["example_prompts"].items():
            print(f"{key:9s} {settings['examples'][key][0]['file']:22s} {prompt}")
        print(f"named them in {args.model_dir / 'preset.json'}")
    else:
        sample = generate(args.seed, args.size)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.image).save(args.out_dir / "target.png")
        for key, control in sample.conditions.items():
            Image.fromarray(control).save(args.out_dir / f"{key}.png")
        attributes = {"prompt": sample.prompt, **sample.attributes}
        (args.out_dir / "attributes.json").write_text(json.dumps(attributes, indent=2) + "\n")
        print(f"{sample.prompt}\nwrote {args.out_dir}")
    return 0
