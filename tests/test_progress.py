"""Long commands' progress: a bar on a terminal, a line a minute in a log file."""

import io
import sys

from cnet.progress import LogLines, duration, step_progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def log_lines(total: int = 100, initial: int = 0) -> tuple[LogLines, io.StringIO, Clock]:
    stream, clock = io.StringIO(), Clock()
    progress = LogLines(
        total, initial, "controlnet", stream=stream, messages=stream, every=60, clock=clock
    )
    return progress, stream, clock


def steps(progress: LogLines, clock: Clock, count: int, seconds_each: float) -> None:
    for _ in range(count):
        clock.now += seconds_each
        progress.update(1)
        progress.set_postfix(loss="0.1234")


def test_a_log_gets_the_first_step_then_a_line_a_minute_and_no_carriage_returns():
    progress, stream, clock = log_lines()
    steps(progress, clock, 50, 3.0)  # 150 s: the first step, then 60 s and 120 s after it
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == [
        "controlnet: step 1/100 (1 %), loss=0.1234",
        "controlnet: step 21/100 (21 %), 3.00 s/step, about 4 min left, loss=0.1234",
        "controlnet: step 41/100 (41 %), 3.00 s/step, about 3 min left, loss=0.1234",
        "controlnet: step 50/100 (50 %), 3.00 s/step, about 2 min left, loss=0.1234",
    ]


def test_the_last_step_is_always_said_and_a_resumed_run_times_only_its_own_steps():
    progress, stream, clock = log_lines(total=10, initial=6)
    clock.now += 500  # loading and the first step's warm-up are not the run's pace
    steps(progress, clock, 1, 200.0)
    steps(progress, clock, 3, 20.0)
    progress.close()  # nothing new to say
    assert stream.getvalue().splitlines() == [
        "controlnet: step 7/10 (70 %), loss=0.1234",
        "controlnet: step 10/10 (100 %), 20 s/step, loss=0.1234",
    ]


def test_a_time_box_that_ends_the_run_first_is_what_the_line_counts_down():
    stream, clock = io.StringIO(), Clock()
    deadline = clock.now + 100
    progress = LogLines(100, 0, "base", deadline=deadline, stream=stream, clock=clock)
    steps(progress, clock, 2, 10.0)  # 98 steps left at 10 s: the box ends it first, in 80 s
    progress.close()
    assert stream.getvalue().splitlines()[-1] == (
        "base: step 2/100 (2 %), 10 s/step, the time box stops it in about 1 min, loss=0.1234"
    )
    steps(progress, clock, 9, 10.0)  # past it: the stop line that follows says the rest
    progress.close()
    assert stream.getvalue().splitlines()[-1] == "base: step 11/100 (11 %), 10 s/step, loss=0.1234"


def test_a_message_follows_the_step_it_belongs_to():
    progress, stream, clock = log_lines()
    steps(progress, clock, 5, 1.0)
    progress.write("Control gain at step 5: 0.01000")
    assert stream.getvalue().splitlines()[-2:] == [
        "controlnet: step 5/100 (5 %), 1.00 s/step, about 2 min left, loss=0.1234",
        "Control gain at step 5: 0.01000",
    ]


def test_a_disabled_display_says_nothing():
    stream = io.StringIO()
    progress = LogLines(10, 0, "base", disable=True, stream=stream, messages=stream)
    progress.update(1)
    progress.set_postfix(loss="1")
    progress.write("hello")
    progress.close()
    assert stream.getvalue() == ""


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (0.4, 45, 89, 3600, 3 * 3600 + 5 * 60 + 20)] == [
        "0 s",
        "45 s",
        "1 min",
        "1 h 00 min",
        "3 h 05 min",
    ]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_tqdms_bar_and_a_log_file_the_lines(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = step_progress(10, 0, "base")
    assert type(bar).__module__.startswith("tqdm")
    bar.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(step_progress(10, 0, "base"), LogLines)
