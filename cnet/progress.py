"""Progress of long commands: tqdm's bar on a terminal, plain lines in a log file.

Redirected to a file (`nohup ... > run.log`), a bar's carriage returns would pile every update of
a training run of hours onto one line, which `less` and `grep` show badly; there a run writes a
line a minute instead, with the same figures.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

LINE_EVERY_SECONDS = 60.0


def writes_to_terminal() -> bool:
    """Whether stderr is a terminal, or a notebook's (whose widgets tqdm draws itself)."""
    return "ipykernel" in sys.modules or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 05 min' (to the nearest unit)."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class LogLines:
    """tqdm's `update`, `set_postfix`, `write` and `close`, as one line every `every` seconds:
    'controlnet: step 120/5000 (2 %), 3.10 s/step, about 4 h 12 min left, loss=0.1234'. A line is
    written when the postfix is set, which the trainers do after each step's `update`."""

    def __init__(
        self,
        total: int,
        initial: int,
        desc: str,
        disable: bool = False,
        deadline: float | None = None,
        stream: TextIO | None = None,
        messages: TextIO | None = None,
        every: float = LINE_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.n, self.desc, self.disable = total, initial, desc, disable
        self.deadline = deadline  # a time box's end (the clock's time), which may come first
        # as tqdm: its lines on stderr (None: sys.stderr), `write`'s messages on stdout
        self.stream, self.messages, self.every, self.clock = stream, messages, every, clock
        self.started: float | None = None  # the rate counts from the first step on: before it,
        self.start_step = initial  # loading and the first step's warm-up say little
        self.last_line: float | None = None
        self.last_line_step = initial
        self.postfix = ""

    def _write_line(self, text: str) -> None:
        sys.stdout.flush()  # a log file holds both: what was printed before comes first
        print(text, file=sys.stderr if self.stream is None else self.stream, flush=True)

    def _write_message(self, text: str) -> None:
        sys.stderr.flush()
        print(text, file=sys.stdout if self.messages is None else self.messages, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.started is None:
            self.started, self.start_step = self.clock(), self.n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())
        now = self.clock()
        # The first step's line says the run is going; after it, one a minute and the last one.
        due = self.last_line is None or now - self.last_line >= self.every or self.n >= self.total
        if due:
            self._say_step(now)

    def line(self, now: float) -> str:
        share = 100 * self.n // max(self.total, 1)
        parts = [f"{self.desc}: step {self.n}/{self.total} ({share} %)"]
        done = self.n - self.start_step
        if self.started is not None and done > 0:
            per_step = (now - self.started) / done
            parts.append(
                f"{per_step:.2f} s/step" if per_step < 10 else f"{duration(per_step)}/step"
            )
            left = per_step * (self.total - self.n)
            if self.deadline is not None and now + left > self.deadline:
                if now < self.deadline:  # once past it, the stop line says so
                    parts.append(f"the time box stops it in about {duration(self.deadline - now)}")
            elif self.n < self.total:
                parts.append(f"about {duration(left)} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def write(self, text: str) -> None:
        """A message (validation, a stop) comes after the step it belongs to."""
        self.close()
        if not self.disable:
            self._write_message(text)

    def close(self) -> None:
        """Says the step reached since the last line, if any (the run ends or stops between)."""
        self._say_step(self.clock())

    def _say_step(self, now: float) -> None:
        if not self.disable and self.n > self.last_line_step:
            self._write_line(self.line(now))
            self.last_line, self.last_line_step = now, self.n


def step_progress(
    total: int, initial: int, desc: str, disable: bool = False, deadline: float | None = None
) -> Any:
    """A progress display for a loop of `total` steps starting at `initial`; `deadline`: when a
    time box ends it (time.monotonic()), which a log file's lines say where it comes first."""
    if writes_to_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=disable)
    return LogLines(total, initial, desc, disable, deadline)


def quiet_library_bars() -> None:
    """Loading bars of transformers, diffusers and the hub: in a log file, noise of `\\r`s."""
    if writes_to_terminal():
        return
    import diffusers.utils.logging
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
