"""A ControlNet stored as a low-rank difference from another ControlNet folder.

A condition's fine-tune of the shared ControlNet moves every weight a little, but most of the
move lies in a few directions per layer. Keeping the top `rank` singular vectors of each weight's
change (the truncated SVD, as LoRA extraction does) stores the embedded 2.5 M-parameter
ControlNet in 0.48 M numbers at rank 16, so every condition can have its own within the weights
budget. The folder holds

    lowrank.json         {"starts_from": "../all", "rank": 16}   (relative to this folder)
    lowrank.safetensors  per weight W of the start: "W.up" (out x rank) and "W.down"
                         (rank x in*kh*kw) where that is smaller than W, else "W" (the whole change)

and loads as the start's weights plus up @ down (`cnet.models.load_controlnet`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LOWRANK_CONFIG = "lowrank.json"
LOWRANK_WEIGHTS = "lowrank.safetensors"
FULL_WEIGHTS = "diffusion_pytorch_model.safetensors"  # what save_pretrained writes


def low_rank_difference(
    tuned: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor], rank: int
) -> dict[str, torch.Tensor]:
    """tuned - start, each weight's change cut to its `rank` largest singular directions."""
    import torch

    if rank < 1:
        raise ValueError("rank must be at least 1")
    if tuned.keys() != start.keys():
        raise ValueError(
            "the two ControlNets have different weights: a low-rank difference needs a fine-tune "
            "of the start ControlNet itself"
        )
    difference = {}
    for name, weight in tuned.items():
        if weight.shape != start[name].shape:
            raise ValueError(
                f"{name} is {tuple(weight.shape)} here, {tuple(start[name].shape)} in the start: "
                "not a fine-tune of it"
            )
        change = weight.float() - start[name].float()
        if change.dim() < 2 or rank * (change.shape[0] + change[0].numel()) >= change.numel():
            difference[name] = change
            continue
        u, s, vh = torch.linalg.svd(change.reshape(change.shape[0], -1), full_matrices=False)
        difference[f"{name}.up"] = (u[:, :rank] * s[:rank]).contiguous()
        difference[f"{name}.down"] = vh[:rank].contiguous()
    return difference


def add_difference(
    start: Mapping[str, torch.Tensor], difference: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The start's weights plus a `low_rank_difference`, in float32."""
    weights, used = {}, set()
    for name, weight in start.items():
        if name in difference:
            change, parts = difference[name].float(), (name,)
        elif f"{name}.up" in difference:
            parts = (f"{name}.up", f"{name}.down")
            up, down = (difference[part].float() for part in parts)
            change = (up @ down).reshape(weight.shape)
        else:
            raise ValueError(
                f"the low-rank difference has no change for {name}: it was made from a "
                "ControlNet of another architecture than its start"
            )
        weights[name] = weight.float() + change
        used.update(parts)
    if unknown := sorted(set(difference) - used):
        raise ValueError(f"the low-rank difference changes weights its start lacks: {unknown[:3]}")
    return weights


def is_lowrank(folder: str | Path) -> bool:
    return (Path(folder) / LOWRANK_CONFIG).is_file()


def lowrank_settings(folder: str | Path) -> dict:
    """{"starts_from": path relative to the folder, "rank": int}"""
    path = Path(folder) / LOWRANK_CONFIG
    try:
        settings = json.loads(path.read_text())
    except ValueError as error:  # cut short or edited by hand
        raise ValueError(f"{path} is not valid JSON ({error}); restore the file.") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} holds no settings object; restore the file.")
    return settings


def lowrank_start(folder: str | Path) -> Path:
    """The ControlNet folder a low-rank folder's difference is added to."""
    start = lowrank_settings(folder).get("starts_from")
    if not isinstance(start, str):
        raise ValueError(
            f'{Path(folder) / LOWRANK_CONFIG} names no "starts_from" folder (the ControlNet '
            "its difference is added to, relative to it); restore the file."
        )
    return (Path(folder) / start).resolve()


def write_lowrank(folder: str | Path, tuned: str | Path, start: str | Path, rank: int) -> None:
    """Write `tuned` (a ControlNet folder fine-tuned from `start`) into `folder` as its rank-`rank`
    difference from `start`, which `folder` then names by its path relative to itself."""
    from safetensors.torch import load_file, save_file

    folder, tuned, start = Path(folder), Path(tuned), Path(start)
    for source in (tuned, start):
        if not (source / FULL_WEIGHTS).is_file():
            raise FileNotFoundError(
                f"{source} holds no {FULL_WEIGHTS}: a low-rank difference is taken between two "
                "whole ControlNet folders as save_pretrained writes them (one weights file)"
            )
    difference = low_rank_difference(
        load_file(tuned / FULL_WEIGHTS), load_file(start / FULL_WEIGHTS), rank
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(difference, folder / LOWRANK_WEIGHTS, metadata={"format": "pt"})
    settings = {"starts_from": os.path.relpath(start.resolve(), folder.resolve()), "rank": rank}
    (folder / LOWRANK_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")


def read_difference(folder: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(folder) / LOWRANK_WEIGHTS)
