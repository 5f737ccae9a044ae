"""Example inputs for a model trained on the synthetic scenes: one held-out scene per condition,
in the form a user would hand it to the app (a photo for canny, keypoints for pose, a drawing on
paper for scribble, the map itself for the others, each with the backend that reads it), with the
scene's own prompt.

The registry's examples (a balloon, a street, a bust) are drawn for SD 1.5; a model that knows
only these scenes draws one blob for them. `write_examples` puts the files in a model folder and
returns what its preset.json names them by.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from cnet.models import preset_resolution, preset_settings
from cnet.synth.maps import MAP_SHOWS_ONLY, training_kinds
from cnet.synth.sample import CONDITION_KEYS, Sample, generate
from cnet.synth.scene import KINDS
from cnet.synth.splits import split_seeds

FOLDER = "examples"  # in the model folder
# Validation scenes from here on: held out from training and from the scenes `cnet eval
# --split validation` chooses settings on.
FIRST_SCENE = 1000
MIN_OBJECT_SHARE = 0.02  # of the image: an object smaller than this is hard to see in a thumbnail


@dataclass(frozen=True)
class Form:
    """How a condition's example is handed to the app."""

    backend: str
    # "map": the map itself; "photo": the scene's image, for the backend to detect the map from;
    # "keypoints": OpenPose JSON of its people; "paper": the map's white-on-black strokes drawn
    # dark on white, as by hand
    given: Literal["map", "photo", "keypoints", "paper"] = "map"


FORMS = {
    "scribble": Form("drawing", given="paper"),  # so the sketch pad's dark brush adds to it
    "canny": Form("canny", given="photo"),
    "hough": Form("none"),  # the map itself: M-LSD needs weights, the offline detector is rougher
    "pose": Form("keypoints_json", given="keypoints"),
    "seg": Form("palette"),
    "depth": Form("depth_map"),
    "normal": Form("none"),  # from a depth map the app would compute other normals
}


def shows_every_object(sample: Sample, condition: str) -> bool:
    """At least two objects (one for pose: its maps show people alone), each of a kind the map
    shows, each a visible share of the image, no two of one colour: an example whose prompt
    the map fully places."""
    objects = sample.scene.objects
    shown = MAP_SHOWS_ONLY.get(condition, KINDS)
    big = sample.masks.reshape(len(objects), -1).mean(axis=1) >= MIN_OBJECT_SHARE
    colors = [obj.color for obj in objects]
    return (
        len(objects) >= (1 if condition == "pose" else 2)
        and all(obj.kind in shown for obj in objects)
        and bool(big.all())
        and len(set(colors)) == len(colors)
    )


def example_scenes(size: int) -> dict[str, Sample]:
    """Per condition, the first validation scene from FIRST_SCENE on that shows every object
    (`shows_every_object`), a different one each."""
    chosen: dict[str, Sample] = {}
    seeds = iter(split_seeds("validation", start=FIRST_SCENE))
    for key in CONDITION_KEYS:
        for seed in seeds:
            sample = generate(seed, size, (key,), include=training_kinds(key))
            if shows_every_object(sample, key):
                chosen[key] = sample
                break
    return chosen


def openpose_json(sample: Sample) -> dict:
    """The scene's people as OpenPose JSON (COCO-18, pixels; hidden points at confidence 0)."""
    height, width = sample.image.shape[:2]
    people = []
    for points in sample.keypoints:
        flat = [
            float(value) if visible else 0.0
            for x, y, visible in points
            for value in (x, y, visible)
        ]
        people.append({"pose_keypoints_2d": flat})
    return {"version": 1.3, "canvas_width": width, "canvas_height": height, "people": people}


def write_examples(model_dir: Path, size: int) -> dict:
    """Write each condition's example into `model_dir`/examples/ at `size` px; returns the
    preset.json entries that name them: "examples" and "example_prompts"."""
    folder = Path(model_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    examples, prompts = {}, {}
    for key, sample in example_scenes(size).items():
        form = FORMS[key]
        if form.given == "keypoints":
            name = f"{key}.json"
            (folder / name).write_text(json.dumps(openpose_json(sample), indent=1) + "\n")
        else:
            name = f"{key}.png"
            picture = sample.image if form.given == "photo" else sample.conditions[key]
            picture = 255 - picture if form.given == "paper" else picture
            Image.fromarray(np.ascontiguousarray(picture)).save(folder / name, optimize=True)
        examples[key] = [{"file": f"{FOLDER}/{name}", "backend": form.backend}]
        prompts[key] = sample.prompt
    return {"examples": examples, "example_prompts": prompts}


def add_examples(model_dir: Path) -> dict:
    """`write_examples` at the resolution of `model_dir`'s preset.json, which then names them."""
    preset = Path(model_dir) / "preset.json"
    if not preset.is_file():
        raise FileNotFoundError(
            f"{model_dir} has no preset.json; give a model folder in the embedded layout "
            "(python -m cnet train embedded --pack writes one)."
        )
    settings = preset_settings(model_dir)  # a broken file is named (ValueError)
    size = preset_resolution(settings, str(Path(model_dir) / "base"))
    settings.update(write_examples(Path(model_dir), size))
    preset.write_text(json.dumps(settings, indent=2) + "\n")
    return settings
