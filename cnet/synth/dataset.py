"""A PyTorch dataset that renders scenes on the fly: no files, deterministic per index."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cnet.synth.maps import training_kinds
from cnet.synth.sample import CONDITION_KEYS, generate
from cnet.synth.splits import split_seeds


class SynthDataset(Dataset):
    """Item i is scene `split_seeds(split)[i]` rendered at `size` with the control map `condition`.

    Items are dicts in the layout of diffusers' ControlNet training example:
    "pixel_values" float (3, size, size) in [-1, 1], "conditioning_pixel_values" float
    (3, size, size) in [0, 1], "prompt" str, and "seed" int. With `condition=None` no map is
    drawn and items have no "conditioning_pixel_values" (base model or captioner training).
    With `kinds=True` items also hold "kinds", uint8 (size, size) indices into KIND_CLASSES.

    Scenes for a map that shows only some kinds of object hold one of them (`training_kinds`:
    pose examples always show a person, as a pose data set is made of photos of people).
    """

    def __init__(
        self,
        split: str,
        size: int = 128,
        condition: str | None = "canny",
        length: int | None = None,
        kinds: bool = False,
    ):
        if condition is not None and condition not in CONDITION_KEYS:
            raise ValueError(
                f"Unknown condition {condition!r}; choose from {', '.join(CONDITION_KEYS)}."
            )
        self.seeds = split_seeds(split, length)
        self.size = size
        self.condition = condition
        self.kinds = kinds
        self.include = training_kinds(condition)

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> dict:
        conditions = [] if self.condition is None else [self.condition]
        sample = generate(self.seeds[index], self.size, conditions, self.include)
        image = torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1)))
        item = {
            "pixel_values": image.float() / 127.5 - 1.0,
            "prompt": sample.prompt,
            "seed": sample.seed,
        }
        if self.condition is not None:
            control = np.ascontiguousarray(sample.conditions[self.condition].transpose(2, 0, 1))
            item["conditioning_pixel_values"] = torch.from_numpy(control).float() / 255.0
        if self.kinds:
            item["kinds"] = torch.from_numpy(sample.kinds)
        return item
