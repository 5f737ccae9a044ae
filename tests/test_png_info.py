"""The "parameters" PNG text: what format_parameters writes, parse_parameters reads back."""

from __future__ import annotations

import pytest
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
    written = format_parameters("a cat", "bad\nugly", {"Steps": 20, "Seed": 1, "Size": "64x64"})
    settings = {"Steps": "20", "Seed": "1", "Size": "64x64"}
    assert parse_parameters(written) == ("a cat", "bad\nugly", settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a photo of a cat, best quality", ("a photo of a cat, best quality", "", {})),
        ("a cat\nNegative prompt: dog", ("a cat", "dog", {})),
        (
            'p\nSteps: 20, Model: "unclosed, Seed: 1',
            ("p", "", {"Steps": "20", "Model": '"unclosed', "Seed": "1"}),
        ),
    ],
)
def test_other_tools_texts_read_as_automatic1111_reads_them(text, expected):
    assert parse_parameters(text) == expected


def test_a_setting_with_a_line_break_or_accents_round_trips():
    settings = {"Model": "my\nmodel", "Seed": 1, "Steps": 2, "Name": "café, crème"}
    text = format_parameters("p", "", settings)
    assert "café" in text and text.count("\n") == 1
    assert parse_parameters(text) == ("p", "", {k: str(v) for k, v in settings.items()})


def test_save_png_keeps_the_text_and_refuses_another_format_s_name(tmp_path):
    from PIL import Image

    from cnet.png_info import KEY, read_parameters, save_png

    image = Image.new("RGB", (4, 4))
    image.info[KEY] = "a red sphere\nSteps: 2"
    assert read_parameters(save_png(image, str(tmp_path / "a.PNG"))) == "a red sphere\nSteps: 2"
    with pytest.raises(ValueError, match="end the name with .png"):
        save_png(image, tmp_path / "a.jpg")
    assert not (tmp_path / "a.jpg").exists()


def test_a_local_model_is_named_by_its_folder_and_a_runs_export_by_its_run(tmp_path):
    from cnet.png_info import model_name

    assert model_name("lllyasviel/control_v11p_sd15_canny") == "lllyasviel/control_v11p_sd15_canny"
    assert model_name(str(tmp_path / "models" / "my_canny.safetensors")) == "my_canny.safetensors"
    assert model_name(str(tmp_path / "runs" / "canny" / "controlnet")) == "canny/controlnet"
