"""What the "Use via API" page says about each tab's three endpoints, written from the registry
(plain text: the page shows no Markdown)."""

from __future__ import annotations

from cnet.conditions import Backend, Condition
from cnet.engine import PROMPT_MODES
from cnet.ui.events import input_name, param_input_name

SKETCH_PAD = (
    ' image is the sketch pad: {"background": handle_file("drawing.png"), "layers": '
    '[handle_file("strokes.png")]} (RGBA strokes; [] for none), or a bare '
    'handle_file("drawing.png"). Left out, it is the blank sheet; the example below shows that '
    "sheet as a path on the server, which fails when a client sends it: give your own files."
)


def preprocessors(condition: Condition) -> str:
    """The preprocessors by name, which input or part of the sketch pad each reads (where they
    differ), and how their own settings are named."""

    def name(backend: Backend) -> str:
        return f'"{backend.name}"'

    names = ", ".join(name(b) for b in condition.backends)
    text = f"The preprocessor parameter picks the detector: {names}."
    if condition.sketch:
        strokes = " and ".join(name(b) for b in condition.backends if b.accepts == "sketch")
        if strokes:
            text += f" The strokes are read by {strokes}, the picture as shown by the rest."
    elif len({input_name(b) for b in condition.backends}) > 1:
        reads = ", ".join(f"{name(b)} {input_name(b)}" for b in condition.backends)
        text += f" Each reads one input: {reads}."
    example = next((b for b in condition.backends if b.params), None)
    if example is not None:
        text += (
            " A preprocessor's own settings are named after it, e.g. "
            f"{param_input_name(example, example.params[0].name)}."
        )
    return text


def detect_description(condition: Condition) -> str:
    text = (
        f"The {condition.label} control map the tab's preview shows, as an image. "
        f"{preprocessors(condition)} Settings left out take the tab's defaults."
    )
    return text + (SKETCH_PAD if condition.sketch else "")


def generate_description(condition: Condition) -> str:
    modes = ", ".join(f'"{mode}"' for mode in PROMPT_MODES)
    text = (
        f"Images guided by the {condition.label} control map that /detect_{condition.key} "
        f"makes from the same inputs. {preprocessors(condition)} prompt_mode is one of "
        f'{modes}; "user" reads prompt, "auto" captions a default-prompt image and samples '
        "again. Settings left out take the tab's defaults. Returns the gallery (the control "
        'map, then one image per seed, captioned "seed N"), the caption the automatic mode '
        "used (else empty) and the first seed."
    )
    return text + (SKETCH_PAD if condition.sketch else "")


def stop_description(condition: Condition) -> str:
    return (
        f"Stops this client's running /{condition.key} request after the step it is on; the "
        "stopped request returns the control map alone. A request still waiting in the queue "
        "is dropped by gradio_client's job.cancel()."
    )
