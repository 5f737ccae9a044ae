"""Gradio input components that answer a bad value with one short line naming the control.

Gradio checks a slider's range or a dropdown's choices before the app's function runs, but its
message does not say which control ("Value 500 is greater than maximum value 100."), and a value
of the wrong type (None, "abc", NaN for a number; a text file for an image) fails inside Gradio
with no message at all. These subclasses render exactly as Gradio's own and raise `gr.Error`
("Steps: 500 is out of range; choose a number from 1 to 100.") instead. Each keeps its Gradio
class name, which is what tells the frontend how to draw it.

Policy, the same for every number: a value out of range is refused, never clamped.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
from PIL import Image as PILImage


class _Checked:
    """Mixin: check the payload, then let Gradio preprocess it; every failure is a gr.Error."""

    label: str | None

    def preprocess(self, payload: Any) -> Any:
        name = self.label or "A setting"
        if payload is not None or self.refuses_none():
            problem = self.problem(payload)
            if problem:
                raise gr.Error(f"{name}: {problem}", print_exception=False)
        try:
            return super().preprocess(payload)  # type: ignore[misc]
        except gr.Error as error:
            raise gr.Error(f"{name}: {error.message}", print_exception=False) from None
        except Exception as error:
            raise gr.Error(f"{name}: {self.unreadable(error)}", print_exception=False) from None

    def refuses_none(self) -> bool:
        return False

    def problem(self, payload: Any) -> str | None:
        return None

    def unreadable(self, error: Exception) -> str:
        return f"this value cannot be read ({type(error).__name__})."


class _Numeric(_Checked):
    minimum: float | None
    maximum: float | None

    def refuses_none(self) -> bool:
        return True

    def problem(self, payload: Any) -> str | None:
        low, high = self.minimum, self.maximum
        wanted = "a number" if low is None or high is None else f"a number from {low} to {high}"
        number = isinstance(payload, (int, float)) and not isinstance(payload, bool)
        if not number or not math.isfinite(payload):
            return f"expected {wanted}, got {payload!r:.40}."
        if (low is not None and payload < low) or (high is not None and payload > high):
            return f"{payload} is out of range; choose {wanted}."
        return None

from gradio.events import Dependency

class Slider(_Numeric, gr.Slider):
    pass
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class Number(_Numeric, gr.Number):
    pass
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class _Choice(_Checked):
    def refuses_none(self) -> bool:
        return True

    def problem(self, payload: Any) -> str | None:
        values = [value for _, value in self.choices]  # type: ignore[attr-defined]
        if payload not in values:
            return f"{payload!r:.40} is not one of: {', '.join(map(str, values))}."
        return None


class Dropdown(_Choice, gr.Dropdown):
    pass
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class Radio(_Choice, gr.Radio):
    pass
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class Checkbox(_Checked, gr.Checkbox):
    def refuses_none(self) -> bool:
        return True

    def problem(self, payload: Any) -> str | None:
        return (
            None if isinstance(payload, bool) else f"expected true or false, got {payload!r:.40}."
        )
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class Textbox(_Checked, gr.Textbox):
    def problem(self, payload: Any) -> str | None:
        return None if isinstance(payload, str) else f"expected text, got {payload!r:.40}."
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


def _image_problem(error: Exception) -> str:
    if isinstance(error, PILImage.DecompressionBombError):
        return f"the image is too large to read ({error})"
    return f"the file is not an image this app can read ({type(error).__name__})."


class Image(_Checked, gr.Image):
    def unreadable(self, error: Exception) -> str:
        return _image_problem(error)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class ImageEditor(_Checked, gr.ImageEditor):
    def unreadable(self, error: Exception) -> str:
        return _image_problem(error)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class File(_Checked, gr.File):
    pass
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component