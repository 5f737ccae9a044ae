"""Generation parameters in a PNG "parameters" text chunk, the convention other SD tools read.

The text is three parts, as AUTOMATIC1111's web UI writes it::

    a red sphere, best quality
    Negative prompt: lowres, bad anatomy
    Steps: 20, Sampler: DDPM, CFG scale: 9.0, Seed: 12, Size: 512x512, ControlNet 0: "..."

Values holding a comma, colon or quote are written as JSON strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

KEY = "parameters"
NEGATIVE = "Negative prompt: "
_FIELD = re.compile(r'\s*([^:,]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _value(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if re.search(r'[,:"\n]', text) else text


def _setting(value: str) -> str:
    if value.startswith('"'):
        try:
            return json.loads(value)
        except json.JSONDecodeError:  # another tool's unclosed quote: keep what is there
            return value
    return value


def model_name(source: str) -> str:
    """How a model is named in the text: a hub id as it is, a local folder or file by its own
    name (an image that is shared should not carry the folders of the machine that made it)."""
    path = Path(source)
    if not (path.is_absolute() or path.exists()):
        return source
    # a training run's export, <run>/controlnet, by its run: every run's is named "controlnet"
    return f"{path.parent.name}/{path.name}" if path.name == "controlnet" else path.name


def format_parameters(prompt: str, negative_prompt: str, settings: Mapping[str, object]) -> str:
    lines = [prompt]
    if negative_prompt:
        lines.append(NEGATIVE + negative_prompt)
    lines.append(", ".join(f"{key}: {_value(value)}" for key, value in settings.items()))
    return "\n".join(lines)


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, settings as strings) from a "parameters" text. As AUTOMATIC1111
    reads it, the last line holds the settings only when it has at least three `key: value`
    fields; otherwise it belongs to the prompt (or the negative prompt)."""
    *head, last = text.split("\n")
    fields = [(m.group(1).strip(), m.group(2).strip()) for m in _FIELD.finditer(last)]
    settings = {key: _setting(value) for key, value in fields}
    if len(fields) < 3:
        head, settings = [*head, last], {}
    # The negative prompt runs from its marker line to the settings, over any lines it has.
    starts = [i for i, line in enumerate(head) if line.startswith(NEGATIVE)]
    if not starts:
        return "\n".join(head), "", settings
    negative = "\n".join(head[starts[0] :])[len(NEGATIVE) :]
    return "\n".join(head[: starts[0]]), negative, settings


def attach(image: Image.Image, text: str) -> Image.Image:
    """Set the text on the image; PNG writers that copy `image.info` (Gradio does) keep it."""
    image.info[KEY] = text
    return image


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write `image` as a PNG with its text (the parameters) kept; `path` must end in .png."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(
            f"{path}: the parameters text is kept in PNG files only; end the name with .png."
        )
    info = PngInfo()
    for key, value in image.info.items():
        if isinstance(key, str) and isinstance(value, str):
            info.add_text(key, value)
    image.save(path, format="PNG", pnginfo=info)
    return path


def read_parameters(path: str | Path) -> str | None:
    with Image.open(path) as image:
        return image.info.get(KEY)
