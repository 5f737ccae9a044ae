"""What the app's events do: read the inputs, make the control map, ask the engine, report clearly.

No layout here and no tensors: inputs arrive as Gradio delivers them (a file path, or the image
editor's dict of numpy layers), leave as numpy arrays / PIL images, and every failure a user can
cause comes back as a short `gr.Error` or `gr.Warning`, never a stack trace.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from cnet.conditions import Backend, BackendUnavailable, Condition, detect
from cnet.engine import (
    Engine,
    GenerationCancelled,
    GenerationRequest,
    ModelMissingError,
    check_long_side,
    random_seed,
)
from cnet.imageio import ImageInputError, load_image
from cnet.ui.components import unfinished_number

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 4000  # far beyond what a text encoder reads; longer text is cut, with a notice
NO_INPUT = {
    "image": "Upload an image first.",
    "sketch": "Draw a scribble on the canvas (or upload a drawing) first.",
    "openpose_json": "Upload an OpenPose JSON file first.",
}


def refusal(message: str) -> gr.Error:
    """The one line a user reads; no traceback in the server log for what the user can mend
    (an unexpected failure is logged in full by user_errors itself)."""
    return gr.Error(message, print_exception=False)


@contextlib.contextmanager
def user_errors(action: str) -> Iterator[None]:
    """Turn failures into short messages for the browser (and the full story for the log)."""
    try:
        yield
    except gr.Error:
        raise
    except (ImageInputError, ModelMissingError, BackendUnavailable) as error:
        raise refusal(str(error)) from None
    except ValueError as error:
        raise refusal(f"{action} failed: {error}") from None
    except Exception as error:
        # Only a loaded captioner module can have raised its error; importing it costs seconds.
        captioner = sys.modules.get("cnet.captioner")
        if captioner is not None and isinstance(error, captioner.CaptionerUnavailable):
            raise refusal(str(error)) from None
        log.exception("%s failed", action)
        raise refusal(
            f"{action} failed ({type(error).__name__}: {error}). The server log has the details."
        ) from None


def backend_named(condition: Condition, name: str | None) -> Backend:
    for backend in condition.backends:
        if backend.name == name:
            return backend
    return condition.default_backend()


def param_input_name(backend: Backend, param_name: str) -> str:
    """The API parameter name of a detector parameter: stable, and unique within a condition."""
    return f"{backend.name}_{param_name}"


def backend_params(backend: Backend, values: Mapping[str, Any]) -> dict:
    """Pick the chosen backend's parameters out of every backend's controls of a tab."""
    return {
        param.name: values.get(param_input_name(backend, param.name), param.default)
        for param in backend.params
    }


def input_name(backend: Backend) -> str:
    """Which of a tab's inputs a backend reads: the picture (or sketch pad), or a keypoints file."""
    return "openpose_json" if backend.reads_keypoints else "image"


def detector_input(backend: Backend, inputs: Mapping[str, Any]) -> Any | None:
    """What the detector gets, or None when there is nothing to detect from yet.

    The sketch pad delivers a dict of numpy layers: sketch backends read it whole (the strokes);
    every other backend reads the picture as shown (upload + strokes).
    """
    value = inputs.get(input_name(backend))
    if not isinstance(value, dict):
        return value
    layers = [layer for layer in value.get("layers") or [] if layer is not None]
    picture = value.get("composite")
    picture = value.get("background") if picture is None else picture
    has_strokes = any(layer[..., 3].any() for layer in layers if layer.ndim == 3)
    blank = picture is None or np.ptp(picture) == 0
    if not has_strokes and blank:
        return None
    return value if backend.accepts == "sketch" else picture


def no_input_message(condition: Condition, backend: Backend, inputs: Mapping[str, Any]) -> str:
    """What to give `backend`, and which preprocessors read the input given instead, if any."""
    message = NO_INPUT["sketch" if condition.sketch else backend.accepts]
    given = {name for name, value in inputs.items() if value is not None} - {input_name(backend)}
    readers = [
        f'"{b.name}"' for b in condition.backends if input_name(b) in given and b.availability().ok
    ]
    if readers:
        names, choices = " or ".join(sorted(given)), " or ".join(readers)
        message += f" {backend.label} does not read {names}; preprocessor {choices} does."
    return message


def map_input_names(backend: Backend) -> list[str]:
    """The tab inputs a control map from `backend` depends on."""
    params = [param_input_name(backend, param.name) for param in backend.params]
    return [input_name(backend), "preprocessor", "detect_resolution", "resolution", *params]


def file_digests(payloads: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """The `names` payloads with each file replaced by a digest of its content: the same upload
    can arrive under another path, URL or metadata."""

    def reduce(item: Any) -> Any:
        if isinstance(item, dict):
            if "path" in item:
                return fingerprint(item["path"])
            return {name: reduce(value) for name, value in item.items()}
        if isinstance(item, list):
            return [reduce(element) for element in item]
        return item

    return {name: reduce(payloads.get(name)) for name in names}


def payload_keys(digests: Mapping[str, Any]) -> dict[str, str]:
    """A fingerprint of each payload in `file_digests`."""
    return {name: fingerprint(value) for name, value in digests.items()}


def without_strokes(value: Any) -> Any:
    """The uploaded picture of a sketch pad's value (what a notice about the input is about)."""
    return value.get("background") if isinstance(value, dict) else value


def read_upload(backend: Backend, value: Any) -> tuple[Any, list[str]]:
    """The detector input with uploads read and capped in size (cnet.imageio.load_image), and
    the notices saying what was changed. Keypoint files pass through as paths."""
    if input_name(backend) != "image":
        return value, []
    notices: list[str] = []

    def read(image: Any) -> Any:
        if image is None:
            return None
        loaded = load_image(image)
        notices.extend(notice for notice in loaded.notices if notice not in notices)
        return loaded.array

    if isinstance(value, dict):
        layers = [read(layer) for layer in value.get("layers") or []]
        return {
            "background": read(value.get("background")),
            "layers": layers,
            "composite": read(value.get("composite")),
        }, notices
    picture = read(value)
    if picture is not None:
        notices.extend(backend.input_notices(picture))
    return picture, notices


def preprocessed(component: gr.components.Component, payload: Any) -> Any:
    """What an event with `preprocess=True` would give its function for `payload`: Gradio has
    already checked and cached any files; this builds the component's data model and reads it."""
    model = getattr(component, "data_model", None)
    if model is not None and payload is not None:
        payload = model.model_validate(payload)
    return component.preprocess(payload)


def show_notices(notices: list[str]) -> None:
    for notice in notices:
        gr.Warning(notice)


def limit_text(name: str, text: Any, notices: list[str]) -> str:
    text = "" if text is None else str(text)
    if len(text) > MAX_PROMPT_CHARS:
        notices.append(
            f"The {name} is {len(text)} characters long; only its first {MAX_PROMPT_CHARS} "
            "are used."
        )
        text = text[:MAX_PROMPT_CHARS]
    return text


def fingerprint(value: Any) -> str:
    """A digest of an input (file path, array or sketch-pad dict) for the control-map cache."""
    digest = hashlib.sha1()

    def add(item: Any) -> None:
        if isinstance(item, np.ndarray):
            digest.update(repr((item.shape, item.dtype.str)).encode())
            digest.update(item.tobytes())
        elif isinstance(item, dict):
            for name in sorted(item):
                digest.update(name.encode())
                add(item[name])
        elif isinstance(item, (list, tuple)):
            for element in item:
                add(element)
        elif isinstance(item, (str, Path)) and Path(item).is_file():
            digest.update(Path(item).read_bytes())
        else:
            digest.update(repr(item).encode())

    add(value)
    return digest.hexdigest()


class ControlMapCache:
    """The last few control maps (with their notices), so Run reuses the map the preview made."""

    def __init__(self, size: int = 16):
        self.size = size
        self._maps: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return self._maps[key]
        control_map = make()
        with self._lock:
            self._maps[key] = control_map
            while len(self._maps) > self.size:
                self._maps.popitem(last=False)
        return control_map


class PreviewRequests:
    """What each browser tab's preview was last asked (a fingerprint per input) and from which
    input, by (session, tab); the oldest sessions are forgotten first."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._requests: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()
        self._inputs: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def _swap(self, memory: OrderedDict, who: tuple[str, str], value: Any) -> Any:
        with self._lock:
            last = memory.get(who)
            memory[who] = value
            memory.move_to_end(who)
            while len(memory) > self.size:
                memory.popitem(last=False)
            return last

    def changed(
        self, who: tuple[str, str], keys: dict[str, str], initial: dict[str, str]
    ) -> set[str]:
        """The inputs whose keys differ from the last request's, or from the `initial` ones (the
        page's values) for a first request."""
        last = self._swap(self._requests, who, keys) or initial
        return {name for name, key in keys.items() if last.get(name) != key}

    def is_new_input(self, who: tuple[str, str], key: str) -> bool:
        return self._swap(self._inputs, who, key) != key


class RunningJobs:
    """The cancel flags of the runs going on, by browser session (or API client) and tab, so a
    tab's Stop ends only that person's runs in that tab."""

    def __init__(self):
        self._flags: dict[tuple[str, str], set[threading.Event]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def start(self, session: str, tab: str) -> Iterator[threading.Event]:
        flag = threading.Event()
        with self._lock:
            self._flags.setdefault((session, tab), set()).add(flag)
        try:
            yield flag
        finally:
            with self._lock:
                flags = self._flags[(session, tab)]
                flags.discard(flag)
                if not flags:
                    del self._flags[(session, tab)]

    def cancel(self, session: str, tab: str | None = None) -> bool:
        """Stop the session's runs in `tab` (in every tab when None); whether there were any."""
        with self._lock:
            flags = [
                flag
                for (owner, where), running in self._flags.items()
                if owner == session and tab in (None, where)
                for flag in running
            ]
        for flag in flags:
            flag.set()
        return bool(flags)


class AppEvents:
    """The functions behind every tab's preview, Run and Stop, bound to one engine."""

    def __init__(self, engine: Engine, cache_size: int = 16):
        self.engine = engine
        self.maps = ControlMapCache(cache_size)
        self.previews = PreviewRequests()
        self.jobs = RunningJobs()

    def control_map(
        self,
        condition: Condition,
        inputs: Mapping[str, Any],
        preprocessor: str | None,
        detect_resolution: int,
        image_resolution: int,
        values: Mapping[str, Any],
        required: bool,
    ) -> tuple[np.ndarray | None, list[str]]:
        """The control map and notices about the input (scaled down, first frame, ...)."""
        backend = backend_named(condition, preprocessor)
        availability = backend.availability()
        if not availability.ok:
            if required:
                raise refusal(f"{backend.label} is not available: {availability.reason}")
            return None, []  # the tab's panel says why
        source = detector_input(backend, inputs)
        if source is None:
            if required:
                raise refusal(no_input_message(condition, backend, inputs))
            return None, []
        params = backend_params(backend, values)
        settings = dict(params, detect_resolution=int(detect_resolution))
        settings["image_resolution"] = int(image_resolution)
        key = fingerprint((condition.key, backend.name, sorted(settings.items()), source))

        def make() -> tuple[np.ndarray, list[str]]:
            read, notices = read_upload(backend, source)
            control_map = detect(condition.key, read, backend=backend.name, **settings)
            # The map is already at the resolution's size, rounded as the engine rounds it.
            check_long_side(*control_map.shape[:2], min(control_map.shape[:2]))
            return control_map, notices

        control_map, notices = self.maps.get_or_make(key, make)
        return control_map, list(notices)

    def tab_map(
        self,
        condition: Condition,
        required: bool,
        preprocessor: str,
        detect_resolution: int,
        resolution: int,
        image: Any = None,
        openpose_json: str | None = None,
        **params: Any,
    ) -> tuple[np.ndarray | None, list[str]]:
        """The control map for the tab's values and its notices; a problem raised as a toast."""
        inputs = {"image": image, "openpose_json": openpose_json}
        with user_errors("Making the control map"):
            return self.control_map(
                condition, inputs, preprocessor, detect_resolution, resolution, params, required
            )

    def detect_fn(self, condition: Condition) -> Callable[..., np.ndarray | None]:
        """The `/detect_<key>` endpoint: the control map, or an error saying what is missing."""

        def detect_map(
            preprocessor: str,
            detect_resolution: int,
            resolution: int,
            image: Any = None,  # defaults here make these optional in the API
            openpose_json: str | None = None,
            **params: Any,
        ) -> np.ndarray | None:
            control_map, notices = self.tab_map(
                condition,
                True,
                preprocessor,
                detect_resolution,
                resolution,
                image,
                openpose_json,
                **params,
            )
            show_notices(notices)
            return control_map

        detect_map.__name__ = f"detect_{condition.key}"
        return detect_map

    def preview_fn(
        self, condition: Condition, components: Mapping[str, gr.components.Component]
    ) -> Callable[..., Any]:
        """The browser's live preview, for an event with `preprocess=False` on the `.change` of
        every one of `components`. It reads only what the chosen preprocessor uses, so a change
        to another preprocessor's (hidden) controls changes nothing. A number being typed into
        the only changed box ("2" on the way to "256", or an emptied box) leaves the map as it is
        instead of raising a toast at every keystroke; every other problem (a fraction, a bad
        value left in another box, an unreadable upload) is told as `/detect_<key>` tells it,
        and the event's `.failure` clears the map. No input clears the map too. The same request
        twice in a row (replacing an image fires `.change` twice) is answered once, and an
        input's notices ("scaled down") are shown when the input is new, not at every change."""

        values = {name: component.value for name, component in components.items()}
        initial = payload_keys(file_digests(values, list(components)))

        def preview(request: gr.Request, **payloads: Any) -> Any:
            chosen = preprocessed(components["preprocessor"], payloads["preprocessor"])
            backend = backend_named(condition, chosen)
            names = map_input_names(backend)
            who = (request.session_hash or "anonymous", condition.key)
            # Which inputs changed is read from the values, not the event's target: Gradio
            # gives a component a new id in the session once an event updates it.
            digests = file_digests(payloads, names)
            changed = self.previews.changed(who, payload_keys(digests), initial)
            if not changed:  # another preprocessor's control, or the same request again
                return gr.skip()
            values = {}
            for name in names:
                component = components[name]
                try:
                    values[name] = preprocessed(component, payloads[name])
                except gr.Error:
                    if changed == {name} and unfinished_number(component, payloads[name]):
                        return gr.skip()
                    raise
            control_map, notices = self.tab_map(condition, False, **values)
            upload = fingerprint(without_strokes(digests[input_name(backend)]))
            if self.previews.is_new_input(who, upload):
                show_notices(notices)
            return control_map

        preview.__name__ = f"preview_{condition.key}"
        return preview

    def generate_fn(self, condition: Condition) -> Callable[..., tuple]:
        def generate(
            preprocessor: str,
            detect_resolution: int,
            prompt_mode: str,
            prompt: str,
            num_images: int,
            resolution: int,
            control_strength: float,
            guess_mode: bool,
            control_start: float,
            control_end: float,
            steps: int,
            cfg: float,
            sampler: str,
            eta: float,
            seed: int,
            randomize_seed: bool,
            added_prompt: str,
            negative_prompt: str,
            request: gr.Request,
            image: Any = None,
            openpose_json: str | None = None,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio reads the default)
            **params: Any,
        ) -> tuple[list[tuple[Any, str]], str, int]:
            seed = random_seed() if randomize_seed else int(seed)
            inputs = {"image": image, "openpose_json": openpose_json}
            with user_errors("Generation"):
                control_map, notices = self.control_map(
                    condition, inputs, preprocessor, detect_resolution, resolution, params, True
                )
                chosen = backend_named(condition, preprocessor)
                generation = GenerationRequest(
                    control_image=control_map,
                    condition=condition.key,
                    preprocessor=chosen.module(backend_params(chosen, params)),
                    prompt_mode=prompt_mode,
                    prompt=limit_text("prompt", prompt, notices),
                    added_prompt=limit_text("added prompt", added_prompt, notices),
                    negative_prompt=limit_text("negative prompt", negative_prompt, notices),
                    num_images=int(num_images),
                    resolution=int(resolution),
                    control_strength=float(control_strength),
                    guess_mode=bool(guess_mode),
                    control_start=float(control_start),
                    control_end=float(control_end),
                    steps=int(steps),
                    cfg=float(cfg),
                    sampler=sampler,
                    eta=float(eta),
                    seed=seed,
                )

                def report(step: int, total: int) -> None:
                    progress((step, total), desc="Sampling", unit="steps")

                session = request.session_hash or "anonymous"
                with self.jobs.start(session, condition.key) as cancel:
                    try:
                        result = self.engine.generate(generation, progress=report, cancel=cancel)
                    except GenerationCancelled:
                        show_notices(notices)
                        gr.Warning("Stopped.")
                        return [(control_map, "control map")], "", seed
            show_notices(notices + result.metadata.get("notices", []))
            gallery = [(result.control_image, "control map")]
            gallery += [
                (sample, f"seed {s}") for sample, s in zip(result.images, result.seeds, strict=True)
            ]
            return gallery, result.caption or "", seed

        generate.__name__ = condition.key
        return generate

    def end_session(self, request: gr.Request) -> None:
        """The page was closed or reloaded: its runs, in every tab, stop at their next step."""
        if request.session_hash:
            self.jobs.cancel(request.session_hash)

    def stop_fn(self, condition: Condition) -> Callable[[gr.Request], None]:
        def stop(request: gr.Request) -> None:
            if self.jobs.cancel(request.session_hash or "anonymous", condition.key):
                gr.Info("Stopped.")
            else:
                gr.Info("Nothing of yours is sampling in this tab.")

        stop.__name__ = f"stop_{condition.key}"
        return stop
