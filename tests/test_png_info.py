"""The "parameters" PNG text: what format_parameters writes, parse_parameters reads back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cnet.png_info import NEGATIVE, format_parameters, parse_parameters

SETTINGS = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 9.0, "ControlNet 0": "Module: canny, x"}
line = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"))
prompt_line = line.filter(lambda text: not text.startswith(NEGATIVE))


@given(
    st.lists(prompt_line, min_size=1, max_size=3).map("\n".join),
    st.lists(line, max_size=3).map("\n".join),
)
def test_prompts_of_several_lines_come_back_as_written(prompt, negative):
    parsed = parse_parameters(format_parameters(prompt, negative, SETTINGS))
    assert parsed[:2] == (prompt, negative)
    assert parsed[2] == {key: str(value) for key, value in SETTINGS.items()}


def test_a_negative_prompt_over_two_lines_stays_negative():
    written = format_parameters("a cat", "bad\nugly", {"Steps": 20})
    assert parse_parameters(written) == ("a cat", "bad\nugly", {"Steps": "20"})
