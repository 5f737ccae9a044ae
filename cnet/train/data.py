"""Training data: where (image, control map, prompt) triples come from, and in which order.

Three sources give the same example, a dict with
  "pixel_values"               float CHW in [-1, 1] (the target image, as the VAE expects it)
  "conditioning_pixel_values"  float CHW in [0, 1]  (the control map, as ControlNet expects it)
  "prompt"                     str
- the fill50k layout: `prompt.json` (one JSON object a line: source, target, prompt) beside the
  `source/` (control maps) and `target/` (images) folders;
- an image folder with `metadata.jsonl` (one JSON object a line: image or file_name,
  conditioning_image, text), file names relative to the folder;
- the synthetic scene world (`cnet.synth`), rendered on the fly.

The order is a pure function of (seed, step), so a resumed run reads exactly the batches the
uninterrupted run would have read, and each process of a multi-GPU run reads its own share.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

SYNTHETIC = "synth"
EVERY_CONDITION = "all"  # synthetic scenes, each with the map of another condition in turn
SYNTHETIC_DEFAULT = "canny"  # the synthetic world's map where a run names none
TENSORS = ("pixel_values", "conditioning_pixel_values", "kinds")  # stacked by collate


# A map whose shape differs from its image's by more than this shows another picture, or a crop.
SHAPE_TOLERANCE = 1.05
# How to undo the quarter turn an EXIF orientation (5-8) asks a viewer for: back to stored pixels.
UNTURN = {
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def read_rgb(path: Path) -> Image.Image:
    """An image file as RGB, read as the app reads uploads (`cnet.imageio`): EXIF orientation
    applied, 16-bit scaled to 8, transparency composited on white."""
    from cnet.imageio import ImageInputError, to_rgb_array

    try:
        return Image.fromarray(to_rgb_array(path))
    except ImageInputError as error:  # it names the file alone, as the app does
        raise ImageInputError(f"In {Path(path).parent}: {error}") from None


def load_square(path: Path, resolution: int) -> Image.Image:
    """Open an image as RGB, scale its short side to `resolution` and crop the centre square."""
    return square(read_rgb(path), resolution)


def load_pair(
    image_path: Path, control_path: Path, resolution: int, unturn: int | None = None
) -> tuple[Image.Image, ...]:
    """(image, control map) as centre squares of the same part of the picture: a map of another
    size (made at a rounded size, say) is scaled to its image's first, not cropped on its own.
    `unturn`: the image's EXIF orientation, undone (its map was made from its stored pixels)."""
    image, control = read_rgb(image_path), read_rgb(control_path)
    if unturn:
        image = image.transpose(UNTURN[unturn])
    if control.size != image.size:
        control = control.resize(image.size, Image.BICUBIC)
    return square(image, resolution), square(control, resolution)


def square(image: Image.Image, resolution: int) -> Image.Image:
    """Scale the short side to `resolution` and crop the centre square."""
    scale = resolution / min(image.size)
    width, height = (max(resolution, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 HWC RGB -> float CHW in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def make_example(image: Image.Image, control: Image.Image, prompt: str) -> dict:
    return {
        "pixel_values": to_unit_tensor(image) * 2.0 - 1.0,
        "conditioning_pixel_values": to_unit_tensor(control),
        "prompt": prompt,
    }


def same_picture(image_size: tuple[int, int], map_size: tuple[int, int]) -> bool:
    """Whether a map of `map_size` (width, height) can show the whole of an image of `image_size`:
    the same shape within SHAPE_TOLERANCE, or the shape the detectors give a map of it (sides
    rounded to multiples of 64, `cnet.imageio.target_size`: up to 32 px off at the map's size)."""
    from cnet.imageio import ImageInputError, target_size

    (width, height), (map_width, map_height) = image_size, map_size
    shapes = (width / height) / (map_width / map_height)
    if max(shapes, 1 / shapes) <= SHAPE_TOLERANCE:
        return True
    try:
        return target_size(height, width, min(map_size)) == (map_height, map_width)
    except ImageInputError:  # past the detectors' pixel limit: none of theirs
        return False


def check_pairs(root: Path, records: list[tuple[str, str, str]]) -> dict[int, int]:
    """Refuse, before the first step rather than when a batch first reads them hours into a run,
    images that are not there or not images (from their headers), and maps whose shape is not
    their image's. Returns {record: EXIF orientation} for the photos whose maps were made from
    their stored pixels (the shape of the stored image, not of the turned one): read as stored,
    as tools that ignore EXIF (diffusers' data sets) pair them."""
    from cnet.imageio import ImageInputError, stored_size

    sizes, orientations, missing, unreadable = {}, {}, [], []
    for name in dict.fromkeys(name for record in records for name in record[:2]):
        if not (root / name).is_file():
            missing.append(name)
            continue
        try:
            sizes[name], orientations[name] = stored_size(root / name)
        except ImageInputError as error:
            unreadable.append(str(error))
    if missing:
        raise FileNotFoundError(
            f"{root} lists {len(missing)} image(s) that are not there, e.g. {missing[0]}; "
            "restore them or drop their lines from the index file."
        )
    if unreadable:
        raise ValueError(
            f"{root} lists {len(unreadable)} file(s) that are not readable images, e.g. "
            f"{unreadable[0]} Or drop their lines from the index file."
        )
    misshapen, unturn = [], {}
    for index, (image_name, control_name, _) in enumerate(records):
        (width, height), (map_width, map_height) = sizes[image_name], sizes[control_name]
        if same_picture((width, height), (map_width, map_height)):
            continue
        if orientations[image_name] in UNTURN and same_picture(
            (height, width), (map_width, map_height)
        ):  # the map of its stored pixels
            unturn[index] = orientations[image_name]
        else:
            misshapen.append(
                f"{control_name} {map_width}x{map_height} for {image_name} {width}x{height}"
            )
    if misshapen:
        raise ValueError(
            f"{root} lists {len(misshapen)} map(s) of another shape than their image, e.g. "
            f"{misshapen[0]}: a map shows the whole of its image (it is scaled to the image's "
            "size). Make each map from its own image, or drop those lines from the index file."
        )
    return unturn


class PairedImageDataset(Dataset):
    """(image, control map, prompt) triples listed in a JSON-lines file inside a folder."""

    def __init__(self, root: Path, records: list[tuple[str, str, str]], resolution: int):
        if not records:
            raise ValueError(f"{root} lists no examples: its index file is empty.")
        self.unturn = check_pairs(root, records)
        self.root, self.records, self.resolution = root, records, resolution

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        image_name, control_name, prompt = self.records[index]
        image, control = load_pair(
            self.root / image_name,
            self.root / control_name,
            self.resolution,
            self.unturn.get(index),
        )
        return make_example(image, control, prompt)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each line that is not blank."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark, as some editors write, too
        try:
            lines = list(f)
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text ({error.reason}).") from None
    first = next((number for number, line in enumerate(lines, start=1) if line.strip()), None)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if number == first and line.lstrip().startswith("["):
            raise ValueError(
                f"{path} starts a JSON array; it holds one JSON object a line (JSON Lines), "
                "as `python -m cnet synth export` writes it."
            )
        line = line.strip()
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            where = "at its end" if error.pos >= len(line) else f"at character {error.pos + 1}"
            raise ValueError(f"{path} line {number} is not JSON ({error.msg}, {where}).") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {number} is not a JSON object.")
        rows.append((number, row))
    return rows


def _records(
    index: Path, keys: tuple[tuple[str, ...], ...], wanted: str
) -> list[tuple[str, str, str]]:
    """(image, control map, prompt) of each line of `index`, read from the keys `keys` names for
    them (the first key present of a tuple); every one must be there and hold text."""
    records = []
    for number, row in _read_jsonl(index):
        names = [next((key for key in options if key in row), None) for options in keys]
        if None in names:
            raise ValueError(
                f"{index} line {number}: each line needs {wanted}; found keys {sorted(row)}."
            )
        if not all(isinstance(row[name], str) for name in names):
            name = next(name for name in names if not isinstance(row[name], str))
            raise ValueError(f"{index} line {number}: {name!r} must be text, got {row[name]!r}.")
        records.append(tuple(row[name] for name in names))
    return records


def fill50k(root: str | Path, resolution: int) -> PairedImageDataset:
    """The fill50k layout of the ControlNet paper's tutorial: prompt.json, source/, target/."""
    root = Path(root)
    wanted = "'source', 'target' and 'prompt'"
    records = _records(root / "prompt.json", (("target",), ("source",), ("prompt",)), wanted)
    return PairedImageDataset(root, records, resolution)


def metadata_folder(root: str | Path, resolution: int) -> PairedImageDataset:
    """An image folder with metadata.jsonl: image (or file_name), conditioning_image, text."""
    root = Path(root)
    wanted = "'image' (or 'file_name'), 'conditioning_image' and 'text'"
    keys = (("image", "file_name"), ("conditioning_image",), ("text",))
    return PairedImageDataset(root, _records(root / "metadata.jsonl", keys, wanted), resolution)


class MixedMaps(Dataset):
    """Synthetic scene i with the control map of condition `condition_of(i)`.

    Condition "all" takes every condition in turn (i mod 7, paper order): one ControlNet trained on
    it reads every kind of map, the shared start from which each per-condition ControlNet is
    fine-tuned, so seven of them cost little more than one. A fine-tune of one condition with a
    `replay_share` shows that share of its examples (evenly spread) another condition's map, each
    in turn, so it keeps some of what the other maps taught the shared start.
    """

    def __init__(
        self,
        split: str,
        resolution: int,
        length: int,
        condition: str = EVERY_CONDITION,
        replay_share: float = 0.0,
    ):
        from cnet.synth.dataset import SynthDataset
        from cnet.synth.sample import CONDITION_KEYS

        self.parts = {key: SynthDataset(split, resolution, key, length) for key in CONDITION_KEYS}
        self.others = [key for key in CONDITION_KEYS if key != condition]  # all of them for "all"
        self.condition, self.replay_share = condition, replay_share

    def condition_of(self, index: int) -> str:
        if self.condition == EVERY_CONDITION:
            return self.others[index % len(self.others)]
        replayed = math.floor(index * self.replay_share)  # replays before example `index`
        if math.floor((index + 1) * self.replay_share) == replayed:
            return self.condition
        return self.others[replayed % len(self.others)]

    def __len__(self) -> int:
        return len(self.parts[self.others[0]])

    def __getitem__(self, index: int) -> dict:
        return self.parts[self.condition_of(index)][index]


def maps_condition(source: str, condition: str | None) -> str | None:
    """The condition a ControlNet run's maps are of, as its record keeps it (--install puts the
    run in that condition's place): the synthetic world draws the one named (canny unless told);
    a folder brings its own maps, of the condition `condition` names (None: not named)."""
    from cnet.synth.sample import CONDITION_KEYS

    if condition not in (None, EVERY_CONDITION, *CONDITION_KEYS):
        raise ValueError(
            f"Unknown condition {condition!r}; choose from {', '.join(CONDITION_KEYS)} "
            f"(or {EVERY_CONDITION}: the synthetic world's maps of each in turn)."
        )
    if source == SYNTHETIC:
        return condition or SYNTHETIC_DEFAULT
    if condition == EVERY_CONDITION:
        raise ValueError(
            f"--condition {EVERY_CONDITION} takes the synthetic world's maps of every condition "
            f"in turn, and {source} brings its own maps: name the condition they are of (e.g. "
            "--condition depth), or leave --condition out."
        )
    return condition


def synthetic_maps(source: str, condition: str | None, replay_share: float = 0.0) -> list[str]:
    """The conditions whose maps the synthetic world draws for a run on `source` (open_dataset's
    arguments); [] where the data brings its own maps."""
    from cnet.synth.sample import CONDITION_KEYS

    if source != SYNTHETIC or condition is None:
        return []
    return list(CONDITION_KEYS) if condition == EVERY_CONDITION or replay_share else [condition]


def open_dataset(
    source: str,
    resolution: int,
    condition: str | None = None,
    length: int = 50_000,
    split: str = "train",
    kinds: bool = False,
    replay_share: float = 0.0,
) -> Dataset:
    """`source` is "synth" (the synthetic world), a fill50k folder, or a metadata.jsonl folder.

    With "synth", `condition` is a condition key, "all" (every condition in turn) or None (no map),
    `kinds` adds each pixel's object kind to the items (SynthDataset) and `replay_share` shows that
    share of a condition's examples the other conditions' maps (MixedMaps); other sources have
    none of these.
    """
    if replay_share and (source != SYNTHETIC or condition in (None, EVERY_CONDITION)):
        raise ValueError(
            "A replay share mixes the other conditions' maps into one condition's synthetic "
            f"examples: use it with --data {SYNTHETIC} and one --condition (not "
            f"{condition or 'none'} on {source})."
        )
    if not 0 <= replay_share < 1:
        raise ValueError(f"The replay share is a fraction from 0 to below 1, not {replay_share}.")
    if source == SYNTHETIC and (condition == EVERY_CONDITION or replay_share):
        return MixedMaps(split, resolution, length, condition, replay_share)
    if source == SYNTHETIC:
        from cnet.synth.dataset import SynthDataset

        return SynthDataset(split, resolution, condition, length, kinds)
    root = Path(source)
    if root.is_file() and root.name in ("prompt.json", "metadata.jsonl"):
        raise FileNotFoundError(
            f"{root} is an index file: give the folder that holds it, {root.parent}."
        )
    if not root.exists():
        raise FileNotFoundError(
            f"--data {root}: no such folder; give a fill50k or image folder, or {SYNTHETIC}."
        )
    if (root / "prompt.json").is_file() and (root / "metadata.jsonl").is_file():
        raise ValueError(
            f"{root} holds both prompt.json (fill50k) and metadata.jsonl (image folder): keep the "
            "index file of the examples to train on, or give each its own folder."
        )
    if (root / "prompt.json").is_file():
        return fill50k(root, resolution)
    if (root / "metadata.jsonl").is_file():
        return metadata_folder(root, resolution)
    raise FileNotFoundError(
        f"{root} is not a training set: expected {root / 'prompt.json'} (fill50k layout) or "
        f"{root / 'metadata.jsonl'} (image folder). Export one from the synthetic world with "
        f"`python -m cnet synth`, or pass --data {SYNTHETIC} to render scenes on the fly."
    )


def prompts_of(dataset: Dataset, count: int) -> list[str]:
    """The first `count` prompts of a data source, without loading or rendering images."""
    if isinstance(dataset, PairedImageDataset):
        return [prompt for _, _, prompt in dataset.records[:count]]
    from cnet.synth.dataset import SynthDataset
    from cnet.synth.scene import sample_scene

    if isinstance(dataset, SynthDataset):
        return [sample_scene(seed, dataset.include).prompt for seed in dataset.seeds[:count]]
    return [dataset[i]["prompt"] for i in range(min(count, len(dataset)))]


class StepBatches(Sampler[list[int]]):
    """Endless batches of dataset indices, a pure function of (seed, position in the stream).

    Epoch e visits the dataset in the order torch.randperm(n, seed + e). From example `start`
    on, the stream is cut into global micro-batches of `batch_size * num_processes` indices;
    process p takes its slice of each. Starting at an example skips straight to it, which is
    what makes resume exact, with the batch size changed or not.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        seed: int,
        start: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
    ):
        if num_examples < batch_size * num_processes:
            raise ValueError(
                f"The dataset has {num_examples} examples, fewer than one global batch "
                f"({batch_size} per process x {num_processes} processes)."
            )
        self.n, self.batch_size, self.seed, self.start = num_examples, batch_size, seed, start
        self.process_index, self.num_processes = process_index, num_processes

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.num_processes
        position = self.start + self.process_index * self.batch_size
        epoch, order = -1, None
        while True:
            indices = []
            for i in range(position, position + self.batch_size):
                if i // self.n != epoch:
                    epoch = i // self.n
                    order = self._epoch_order(epoch)
                indices.append(int(order[i % self.n]))
            yield indices
            position += global_batch


def collate(examples: list[dict]) -> dict:
    batch = {key: torch.stack([e[key] for e in examples]) for key in TENSORS if key in examples[0]}
    batch["prompt"] = [e["prompt"] for e in examples]
    return batch


def stream_position(saved: dict, examples_per_step: int) -> int:
    """Where a resumed run's BatchStream goes on: the position its checkpoint `saved` records,
    else (a checkpoint from before it was recorded) its step x `examples_per_step`, what a step
    read when it was saved."""
    return saved.get("stream_position", saved["step"] * examples_per_step)


def examples_per_step(config: dict, num_processes: int) -> int:
    """What one optimizer step of a ControlNet or captioner run with `config` reads."""
    return config["batch_size"] * config.get("gradient_accumulation_steps", 1) * num_processes


class BatchStream:
    """Collated batches from example `start` of the stream on (`StepBatches`, over all
    processes), read by `num_workers` loader processes. `position` is where the next global
    micro-batch begins: a checkpoint records it, so a run resumed with another batch size goes
    on from the next unseen example."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        start: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
        num_workers: int = 0,
    ):
        sampler = StepBatches(len(dataset), batch_size, seed, start, process_index, num_processes)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate,
            persistent_workers=num_workers > 0,
        )
        self._batches = iter(loader)
        self.position, self.global_batch = start, batch_size * num_processes

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        batch = next(self._batches)
        self.position += self.global_batch
        return batch
