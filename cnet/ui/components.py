"""Gradio input components that answer a bad value with one short line naming the control.

Gradio checks a slider's range or a dropdown's choices before the app's function runs, but its
message does not say which control ("Value 500 is greater than maximum value 100."), and a value
of the wrong type (None, "abc", NaN for a number; a text file for an image) fails inside Gradio
with no message at all. `checked(component)` wraps one component's `preprocess` so that it raises
`gr.Error` ("Steps: 500 is out of range; choose a number from 1 to 100.") instead; `Slider`,
`Number`, ... make Gradio's components already checked.

The components stay Gradio's own classes: a subclass would get its own frontend id (the sketch
pad then draws but sends no strokes) and Gradio would write a .pyi stub next to this file.

Gradio also checks a file's payload against the component's data model before `preprocess`, with
pydantic's message ("1 validation error for ImageData ..."); `checked` names the control and the
payload it takes there too, and lets the sketch pad take a bare image file as its background.

Policy, the same for every number: a value out of range is refused, never clamped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr
import pydantic
from PIL import Image as PILImage

C = TypeVar("C", bound=gr.components.Component)
Problem = Callable[[Any], "str | None"]


def whole_numbers_only(component: gr.Slider | gr.Number) -> bool:
    """A Number of precision 0, or a Slider whose start and step are whole (1, 8, 64 ...)."""
    if isinstance(component, gr.Number):
        return component.precision == 0
    return all(float(value).is_integer() for value in (component.minimum, component.step))


def is_number(payload: Any) -> bool:
    number = isinstance(payload, (int, float)) and not isinstance(payload, bool)
    return number and math.isfinite(payload)


def out_of_range(component: gr.Slider | gr.Number, payload: float) -> bool:
    low, high = component.minimum, component.maximum
    return (low is not None and payload < low) or (high is not None and payload > high)


def unfinished_number(component: gr.components.Component, payload: Any) -> bool:
    """A number box as it is while a number is typed: emptied, or out of range on the way to
    a number in range ("2" of "256")."""
    if not isinstance(component, (gr.Slider, gr.Number)):
        return False
    if payload is None or payload == "":
        return True
    return is_number(payload) and out_of_range(component, payload)


def number_problem(component: gr.Slider | gr.Number) -> Problem:
    low, high = component.minimum, component.maximum
    whole = whole_numbers_only(component)
    kind = "a whole number" if whole else "a number"
    wanted = kind if low is None or high is None else f"{kind} from {low} to {high}"

    def problem(payload: Any) -> str | None:
        if not is_number(payload):
            return f"expected {wanted}, got {payload!r:.40}."
        if out_of_range(component, payload):
            return f"{payload} is out of range; choose {wanted}."
        if whole and not float(payload).is_integer():
            return f"{payload} is not a whole number; choose {wanted}."
        return None

    return problem


def choice_problem(component: gr.Dropdown | gr.Radio) -> Problem:
    values = [value for _, value in component.choices]

    def problem(payload: Any) -> str | None:
        if payload not in values:
            return f"{payload!r:.40} is not one of: {', '.join(map(str, values))}."
        return None

    return problem


def bool_problem(payload: Any) -> str | None:
    return None if isinstance(payload, bool) else f"expected true or false, got {payload!r:.40}."


def text_problem(payload: Any) -> str | None:
    if payload is None or isinstance(payload, str):
        return None
    return f"expected text, got {payload!r:.40}."


def unreadable(component: gr.components.Component, error: Exception) -> str:
    if not isinstance(component, (gr.Image, gr.ImageEditor)):
        return f"this value cannot be read ({type(error).__name__})."
    if isinstance(error, PILImage.DecompressionBombError):
        return f"the image is too large to read ({error})"
    return f"the file is not an image this app can read ({type(error).__name__})."


def problem_for(component: gr.components.Component) -> Problem | None:
    if isinstance(component, (gr.Slider, gr.Number)):
        return number_problem(component)
    if isinstance(component, (gr.Dropdown, gr.Radio)):
        return choice_problem(component)
    if isinstance(component, gr.Checkbox):
        return bool_problem
    if isinstance(component, gr.Textbox):
        return text_problem
    return None  # files and images: Gradio's own reading is the check


def payload_shape(component: gr.components.Component) -> str:
    """What an API client sends for a file-like component."""
    if isinstance(component, gr.ImageEditor):
        return 'a sketch pad value, {"background": handle_file(path), "layers": []}'
    if isinstance(component, gr.Image):
        return "an image file, handle_file(path)"
    return "a file, handle_file(path)"


def check_payload_model(component: gr.components.Component) -> None:
    """Validate `component`'s payloads with a data model that refuses a wrong one naming the
    control, and reads a bare file given to the sketch pad as its background."""
    model = getattr(component, "data_model", None)
    if model is None:
        return
    sketch_pad = isinstance(component, gr.ImageEditor)

    def model_validate(cls: type, payload: Any, *args: Any, **kwargs: Any) -> Any:
        if sketch_pad and isinstance(payload, dict) and "path" in payload:
            payload = {"background": payload}
        try:
            validated = model.model_validate(payload, *args, **kwargs)
        except pydantic.ValidationError:
            validated = None
        # A file's path is optional in Gradio's models, but nothing is read without one.
        if validated is None or getattr(validated, "path", "") is None:
            message = f"expected {payload_shape(component)}, got {payload!r:.40}."
            raise gr.Error(f"{label(component)}: {message}", print_exception=False) from None
        return validated

    # A subclass keeps the model's name and fields, so the API's schema is unchanged.
    component.data_model = type(  # type: ignore[misc]
        model.__name__,
        (model,),
        {"__module__": model.__module__, "model_validate": classmethod(model_validate)},
    )


def label(component: gr.components.Component) -> str:
    return component.label or "A setting"


def checked(component: C) -> C:
    """Make every failure of `component.preprocess` a gr.Error that names the control."""
    preprocess = component.preprocess
    problem = problem_for(component)
    check_payload_model(component)

    def checked_preprocess(payload: Any) -> Any:
        name = label(component)
        found = problem(payload) if problem is not None else None
        if found:
            raise gr.Error(f"{name}: {found}", print_exception=False)
        try:
            return preprocess(payload)
        except gr.Error as error:
            raise gr.Error(f"{name}: {error.message}", print_exception=False) from None
        except Exception as error:
            message = unreadable(component, error)
            raise gr.Error(f"{name}: {message}", print_exception=False) from None

    component.preprocess = checked_preprocess  # type: ignore[method-assign]
    return component


def _checked_kind(cls: type[C]) -> Callable[..., C]:
    def make(*args: Any, **kwargs: Any) -> C:
        return checked(cls(*args, **kwargs))

    make.__name__ = make.__qualname__ = cls.__name__
    make.__doc__ = f"A gr.{cls.__name__} whose bad values are refused naming the control."
    return make


Slider = _checked_kind(gr.Slider)
Number = _checked_kind(gr.Number)
Dropdown = _checked_kind(gr.Dropdown)
Radio = _checked_kind(gr.Radio)
Checkbox = _checked_kind(gr.Checkbox)
Textbox = _checked_kind(gr.Textbox)
Image = _checked_kind(gr.Image)
ImageEditor = _checked_kind(gr.ImageEditor)
File = _checked_kind(gr.File)
