"""One synthetic example: the target image and every control map of one scene."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from cnet.synth.maps import CONDITION_MAPS, training_kinds
from cnet.synth.render import Render, render
from cnet.synth.scene import KINDS, Scene, sample_scene

CONDITION_KEYS = tuple(CONDITION_MAPS)  # paper order
KIND_CLASSES = ("background", "floor", *KINDS)  # the values of Sample.kinds


@dataclass(frozen=True)
class Sample:
    seed: int
    image: np.ndarray  # uint8 (H, W, 3) RGB target
    conditions: dict[str, np.ndarray]  # key -> uint8 (H, W, 3) control map
    prompt: str
    scene: Scene = field(repr=False)
    render: Render = field(repr=False)

    # Computed when first read: training reads only the image, its map and the prompt.
    @cached_property
    def masks(self) -> np.ndarray:
        """bool (objects, H, W), visible pixels of each object."""
        return np.stack([self.render.mask(i) for i in range(len(self.scene.objects))])

    @cached_property
    def kinds(self) -> np.ndarray:
        """uint8 (H, W): each pixel's index in KIND_CLASSES (background, floor or object kind)."""
        table = [0, 1] + [KIND_CLASSES.index(obj.kind) for obj in self.scene.objects]
        return np.asarray(table, np.uint8)[self.render.ids]

    @property
    def keypoints(self) -> list[np.ndarray]:
        """Per person (18, 3): pixel x, y, visible."""
        return self.render.keypoints

    @cached_property
    def attributes(self) -> dict:
        """The structured description behind the prompt."""
        return self.scene.attributes()


def generate(
    seed: int,
    size: int = 128,
    conditions: Iterable[str] | None = None,
    include: tuple[str, ...] = (),
) -> Sample:
    """Render scene `seed` at `size` x `size` with the named control maps (default: all seven).

    The same seed gives identical arrays on every call; asking for fewer conditions is faster and
    does not change the maps that are computed. `include`: object kinds of which the scene holds
    at least one (`sample_scene`).
    """
    for name, value, least in (("seed", seed, 0), ("size", size, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"The {name} is a whole number of at least {least}, got {value!r}.")
    keys = CONDITION_KEYS if conditions is None else one_or_many(conditions)
    unknown = [key for key in keys if key not in CONDITION_MAPS]
    if unknown:
        raise ValueError(f"Unknown condition {unknown}; choose from {', '.join(CONDITION_KEYS)}.")
    include = one_or_many(include)
    if strange := [kind for kind in include if kind not in KINDS]:
        raise ValueError(f"Unknown object kind {strange[0]!r}; choose from: {', '.join(KINDS)}.")
    scene = sample_scene(seed, include)
    rendered = render(scene, size)
    return Sample(
        seed=seed,
        image=rendered.rgb,
        conditions={key: CONDITION_MAPS[key](scene, rendered) for key in keys},
        prompt=scene.prompt,
        scene=scene,
        render=rendered,
    )


def one_or_many(names: str | Iterable[str]) -> tuple[str, ...]:
    """One name given alone, or several."""
    return (names,) if isinstance(names, str) else tuple(names)


def condition_sample(seed: int, size: int, condition: str) -> Sample:
    """Scene `seed` with `condition`'s map, as that condition's examples and tests show it: the
    seed's own scene, or for a map that is blank without some kind of object (pose: a person) the
    seed's scene that holds one (`training_kinds`)."""
    return generate(seed, size, conditions=[condition], include=training_kinds(condition))
