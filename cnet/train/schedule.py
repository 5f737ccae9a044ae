"""The learning-rate schedule of the from-scratch trainers (base, captioner)."""

from __future__ import annotations


def lr_factor(step: int, total: int, warmup_steps: int, cooldown_steps: int) -> float:
    """Multiplier of the peak learning rate at 0-based `step` of `total`: a linear warm-up over
    the first `warmup_steps`, then constant, then a linear fall over the last `cooldown_steps`
    (a pure function of the step, so a resumed run follows the same schedule)."""
    warmup = (step + 1) / warmup_steps if warmup_steps else 1.0
    cooldown = (total - step) / cooldown_steps if cooldown_steps else 1.0
    return max(0.0, min(1.0, warmup, cooldown))
