"""Learning-rate schedules: the from-scratch trainers' warm-up and cool-down, and the record of
the settings each stretch of a resumed run trained with."""

from __future__ import annotations

from collections.abc import Sequence


def diverged(what: str, loss: float, step: int, rates: str, precision: str) -> FloatingPointError:
    """The error a trainer raises when its loss (`what`) stops being a number: lower `rates`, or,
    under fp16, whose range a loss can overflow, use bf16."""
    bf16 = ", or use --mixed-precision bf16" if precision == "fp16" else ""
    return FloatingPointError(f"The {what} became {loss} at step {step}; lower {rates}{bf16}.")


def lr_factor(step: int, total: int, warmup_steps: int, cooldown_steps: int) -> float:
    """Multiplier of the peak learning rate at 0-based `step` of `total`: a linear warm-up over
    the first `warmup_steps`, then constant, then a linear fall over the last `cooldown_steps`
    (a pure function of the step, so a resumed run follows the same schedule)."""
    warmup = (step + 1) / warmup_steps if warmup_steps else 1.0
    cooldown = (total - step) / cooldown_steps if cooldown_steps else 1.0
    return max(0.0, min(1.0, warmup, cooldown))


def schedule_of(config: dict, from_step: int, fields: Sequence[str]) -> dict:
    # A field newer than the run's checkpoint is left out of its record (see below).
    return {"from_step": from_step, **{name: config[name] for name in fields if name in config}}


def schedules_after_resume(saved: dict, config: dict, fields: Sequence[str]) -> list[dict]:
    """The schedules (`fields` of the config) a run has followed, each from the step it began at.

    Runs here are lengthened by resuming with a larger --max-steps, often with a new rate or batch,
    so the final config alone misreports how the weights were trained; the model cards list them.
    """
    schedules = saved.get("schedules") or [schedule_of(saved["config"], 0, fields)]
    now = schedule_of(config, saved["step"], fields)
    last = schedules[-1]
    if any(name in last and last[name] != now[name] for name in fields):
        schedules.append(now)
    return schedules
