"""One synthetic example: the target image and every control map of one scene."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from cnet.synth.maps import CONDITION_MAPS, keypoints
from cnet.synth.render import Render, render
from cnet.synth.scene import Scene, sample_scene

CONDITION_KEYS = tuple(CONDITION_MAPS)  # paper order


@dataclass(frozen=True)
class Sample:
    seed: int
    image: np.ndarray  # uint8 (H, W, 3) RGB target
    conditions: dict[str, np.ndarray]  # key -> uint8 (H, W, 3) control map
    masks: np.ndarray  # bool (objects, H, W), visible pixels of each object
    keypoints: list[np.ndarray]  # per person (18, 3): pixel x, y, visible
    prompt: str
    attributes: dict
    scene: Scene = field(repr=False)
    render: Render = field(repr=False)


def generate(seed: int, size: int = 128, conditions: Iterable[str] | None = None) -> Sample:
    """Render scene `seed` at `size` x `size` with the named control maps (default: all seven).

    The same seed gives identical arrays on every call; asking for fewer conditions is faster and
    does not change the maps that are computed.
    """
    keys = CONDITION_KEYS if conditions is None else tuple(conditions)
    unknown = [key for key in keys if key not in CONDITION_MAPS]
    if unknown:
        raise ValueError(f"Unknown condition {unknown}; choose from {', '.join(CONDITION_KEYS)}.")
    scene = sample_scene(seed)
    rendered = render(scene, size)
    maps = {}
    for key in keys:
        # each map draws its own randomness, so one map never depends on which others were asked for
        rng = np.random.default_rng([seed, CONDITION_KEYS.index(key)])
        maps[key] = CONDITION_MAPS[key](scene, rendered, rng)
    return Sample(
        seed=seed,
        image=rendered.rgb,
        conditions=maps,
        masks=np.stack([rendered.mask(i) for i in range(len(scene.objects))]),
        keypoints=keypoints(scene, rendered),
        prompt=scene.prompt,
        attributes=scene.attributes(),
        scene=scene,
        render=rendered,
    )
