"""Write scenes to disk in the two layouts that standard ControlNet training code reads.

- fill50k (the original ControlNet tutorial): `prompt.json` with one JSON object per line,
  {"source": "source/0.png", "target": "target/0.png", "prompt": ...}, and the two folders.
- image folder (diffusers' ControlNet example columns): `metadata.jsonl` lines
  {"image": "images/0.png", "conditioning_image": "conditioning_images/0.png", "text": ...}.

Both also write `attributes.jsonl`: the seed and structured scene description of every line.
Scenes for a map that shows only some kinds of object hold one of them (`training_kinds`), as
`SynthDataset` draws them for training.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from cnet.synth.maps import training_kinds
from cnet.synth.sample import Sample, generate
from cnet.synth.splits import split_seeds

INDEX_FILES = ("prompt.json", "metadata.jsonl")  # fill50k's, the image folder's


def _save(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, compress_level=1)


def _remove_stale(folder: Path, count: int) -> None:
    """Numbered PNGs an earlier, larger export into the same folder left: no line names them, and
    a tool that reads the folder rather than the index would train on them."""
    for path in folder.glob("*.png"):
        # as an export names them: "7.png", never "0007.png" (which may be someone's own)
        if path.stem.isdigit() and path.stem == str(int(path.stem)) and int(path.stem) >= count:
            path.unlink()


def _export(
    out_dir: Path,
    folders: tuple[str, str],
    index_file: str,
    line: Callable[[str, str, Sample], dict],
    split: str,
    condition: str,
    count: int,
    size: int,
    start: int,
) -> Path:
    out_dir = Path(out_dir)
    other = next(name for name in INDEX_FILES if name != index_file)
    if (out_dir / other).exists():
        raise ValueError(
            f"{out_dir} holds an export of the other layout ({other}), and a training run reads "
            "one index file: export into another folder."
        )
    image_dir, control_dir = folders
    (out_dir / image_dir).mkdir(parents=True, exist_ok=True)
    (out_dir / control_dir).mkdir(parents=True, exist_ok=True)
    include = training_kinds(condition)
    seeds = split_seeds(split, count, start)
    with (
        open(out_dir / index_file, "w") as index,
        open(out_dir / "attributes.jsonl", "w") as attributes,
    ):
        for number, seed in enumerate(seeds):
            sample = generate(seed, size, [condition], include)
            image_path, control_path = f"{image_dir}/{number}.png", f"{control_dir}/{number}.png"
            _save(sample.image, out_dir / image_path)
            _save(sample.conditions[condition], out_dir / control_path)
            index.write(json.dumps(line(image_path, control_path, sample)) + "\n")
            attributes.write(json.dumps({"line": number, **sample.attributes}) + "\n")
    for folder in folders:
        _remove_stale(out_dir / folder, len(seeds))
    return out_dir / index_file


def export_fill50k(
    out_dir: Path, split: str, condition: str, count: int, size: int = 128, start: int = 0
) -> Path:
    """Write `count` scenes of `split` in the fill50k layout; returns the prompt.json path."""
    return _export(
        out_dir, ("target", "source"), "prompt.json",
        lambda image, control, s: {"source": control, "target": image, "prompt": s.prompt},
        split, condition, count, size, start,
    )  # fmt: skip


def export_imagefolder(
    out_dir: Path, split: str, condition: str, count: int, size: int = 128, start: int = 0
) -> Path:
    """Write `count` scenes of `split` as an image folder; returns the metadata.jsonl path."""
    return _export(
        out_dir, ("images", "conditioning_images"), "metadata.jsonl",
        lambda image, control, s: {"image": image, "conditioning_image": control, "text": s.prompt},
        split, condition, count, size, start,
    )  # fmt: skip
