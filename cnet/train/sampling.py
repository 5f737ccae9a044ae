"""How the trainers sample their validation images: as the app samples the base they train on."""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from cnet.engine import SAMPLERS
from cnet.models import sampling_defaults

Config = TypeVar("Config")


def sampled_like_the_app(config: Config, base: str | None) -> Config:
    """`config` with its unset validation guidance scale and sampler taken from the preset.json
    beside `base` (models.sampling_defaults), so its validation images look like the app's."""
    cfg, sampler = sampling_defaults(base)
    config = replace(
        config,
        validation_guidance_scale=(
            cfg if config.validation_guidance_scale is None else config.validation_guidance_scale
        ),
        validation_sampler=config.validation_sampler or sampler,
    )
    if config.validation_sampler not in SAMPLERS:
        raise ValueError(
            f"Unknown validation sampler {config.validation_sampler!r} (from --validation-sampler "
            f"or the preset.json beside {base}); use one of: {', '.join(SAMPLERS)}."
        )
    return config
