"""A wall-clock budget for a training loop, so a run on borrowed time ends cleanly.

A time-boxed run stops after the step during which its budget ran out, writes a checkpoint and
exports its model as a run that reached --max-steps does; training.json's steps say how far it
got, and the same command with --resume latest goes on from there (`train embedded`, whose
stages always resume the latest checkpoint, says only "the same command").
"""

from __future__ import annotations

import time

import torch


class TimeBox:
    def __init__(self, minutes: float | None, accelerator, resume: str | None = None) -> None:
        """`resume`: the run's --resume, which decides what going on takes."""
        if minutes is not None and minutes <= 0:
            raise ValueError(f"--max-minutes must be positive, got {minutes}.")
        self.minutes = minutes
        self.resume = resume
        self.accelerator = accelerator
        self.deadline = None if minutes is None else time.monotonic() + 60 * minutes

    def spent(self) -> bool:
        """Whether the budget has run out on any process. Every process must ask at the same step:
        the answer is gathered, so all of them stop together (one clock could run ahead)."""
        if self.deadline is None:
            return False
        late = float(time.monotonic() >= self.deadline)
        flags = self.accelerator.gather(torch.tensor([late], device=self.accelerator.device))
        return bool(flags.max().item() > 0)

    def message(self, step: int, exported: bool = True) -> str:
        """`exported`: False where the run has no model to export yet (the base's VAE phase)."""
        written = "Checkpoint and export written" if exported else "Checkpoint written"
        minutes = f"{self.minutes:.3g}" if self.minutes < 1000 else f"{self.minutes:.0f}"
        # A named checkpoint given to --resume would start from that checkpoint again.
        again = "the same command" if self.resume == "latest" else "again with --resume latest"
        return (
            f"Stopped at step {step}: the {minutes}-minute time box (--max-minutes) is "
            f"spent. {written}; run {again} to go on."
        )
