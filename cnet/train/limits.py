"""What the trainers' numbers may be, one rule per config field name: the command line's flags
and `check_numbers`, for a config made in Python, hold every trainer to the same rules."""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Callable

# Every number a trainer takes is at least 0 (a share at most 1); these must be above it.
# Counts where 0 would divide by zero or mean nothing (--validate-every 0 does mean "never"):
AT_LEAST_ONE = {
    "batch_size",
    "vae_batch_size",
    "gradient_accumulation_steps",
    "checkpoint_every",
    "checkpoints_to_keep",
    "num_validation_images",
    "num_validation_scenes",
    "num_test_scenes",
    "validation_inference_steps",
    "synth_length",
    "corpus_examples",
    "resolution",
    "vae_crop_size",
    "workers",
    "pairs",
    "steps",
}
# Rates and the time box, where 0 would train nothing:
ABOVE_ZERO = {
    "learning_rate",
    "base_learning_rate",
    "vae_learning_rate",
    "unet_learning_rate",
    "text_encoder_learning_rate",
    "adam_epsilon",
    "max_minutes",
}
SHARES = {"proportion_empty_prompts", "default_prompt_share"}
# Fractions that cannot be 1: AdamW's betas (torch refuses 1), and the replay share (all examples
# another condition's maps would teach this condition's ControlNet nothing of its own):
FRACTIONS = {"replay_share", "adam_betas"}


def rule(name: str, kind: type, zero_rate: bool = False) -> tuple[Callable[[float], bool], str]:
    """What the field `name` of number type `kind` (int or float) fits, and how to say it;
    `zero_rate`: a rate (or time box) of 0 fits too."""
    if name in SHARES:
        return (lambda value: 0 <= value <= 1), "a share from 0 to 1"
    if name in FRACTIONS:
        return (lambda value: 0 <= value < 1), "a fraction from 0 to below 1"
    if kind is int:
        if name in AT_LEAST_ONE:
            return (lambda value: value >= 1), "a whole number of at least 1"
        return (lambda value: value >= 0), "a whole number of at least 0"
    if name in ABOVE_ZERO and not zero_rate:
        return (lambda value: value > 0), "a number above 0"
    return (lambda value: value >= 0), "a number of at least 0"


def without_none(hint: object) -> object:
    """A field's type without its "| None" ("int | None" -> int)."""
    if isinstance(hint, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def number_kind(hint: object) -> type | None:
    """int or float for a field typed as one (alone, optional, or in a tuple or list), else None."""
    hint = without_none(hint)
    if typing.get_origin(hint) in (tuple, list):
        hint = typing.get_args(hint)[0]
    return hint if hint in (int, float) else None


def check_numbers(config: object) -> None:
    """Raise ValueError naming the first number of the dataclass `config` that its flag would
    refuse (a config made in Python meets no argparse), but for a rate of 0: from Python, a run
    whose weights stay where they started is a way to test where that is."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        kind = number_kind(hints[field.name])
        value = getattr(config, field.name)
        if kind is None or value is None:
            continue
        fits, wanted = rule(field.name, kind, zero_rate=True)
        for item in value if isinstance(value, tuple | list) else [value]:
            real = isinstance(item, numbers.Real) and not isinstance(item, bool)
            if not (real and (kind is float or float(item).is_integer()) and fits(item)):
                flag = "--" + field.name.replace("_", "-")
                raise ValueError(f"{field.name} ({flag}) takes {wanted}, got {item!r}.")
