"""Train / validation / test splits of the scene world: disjoint ranges of scene seeds."""

from __future__ import annotations

SPLITS: dict[str, range] = {
    "train": range(0, 900_000),
    "validation": range(900_000, 1_000_000),
    "test": range(1_000_000, 1_001_000),  # the held-out evaluation scenes
}


def split_seeds(split: str, count: int | None = None, start: int = 0) -> range:
    """Seeds `start` .. `start + count` of `split` (all of it from `start` when count is None)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose from {', '.join(SPLITS)}.")
    if start < 0 or (count is not None and count < 0):
        raise ValueError(f"Scenes are counted from 0; got start {start} and count {count}.")
    seeds = SPLITS[split][start:]
    if count is not None:
        if count > len(seeds):
            total = len(SPLITS[split])
            after = f", {len(seeds)} of them from scene {start} on" if start else ""
            raise ValueError(f"The {split} split holds {total} scenes{after}; asked for {count}.")
        seeds = seeds[:count]
    return seeds
