"""The condition registry: what the app builds one tab per entry from.

A condition is data: its label, its backends (detectors, in order of preference) with their
parameters, and the ControlNet checkpoint per preset. Adding a condition means adding one entry
here (and its detector); the tab follows. Weight-based backends report, through
`availability()`, which file is missing in which folder and the command that fetches it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from cnet.detectors import depth, edges, lines, normal, pose, scribble, seg
from cnet.detectors.base import Passthrough, on_black_notice
from cnet.detectors.weights import (
    ANNOTATORS_REPO,
    Availability,
    Weights,
    annotators_dir,
    package_availability,
    set_annotators_dir,
)

__all__ = [
    "CONDITIONS",
    "Availability",
    "Backend",
    "BackendUnavailable",
    "Condition",
    "Example",
    "Param",
    "annotators_dir",
    "detect",
    "set_annotators_dir",
]


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says why and how to fix it."""


@dataclass(frozen=True)
class Param:
    """One detector parameter, rendered as one UI control."""

    name: str
    label: str
    default: float | int | bool | str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # A value is read as the default's type: an int default takes only whole numbers.
        if self.whole and any(v is not None and v != int(v) for v in (self.minimum, self.step)):
            raise ValueError(f"Param {self.name!r}: a fractional range needs a float default")

    @property
    def whole(self) -> bool:
        return isinstance(self.default, int) and not isinstance(self.default, bool)

    def check(self, value: Any) -> Any:
        """`value` as this parameter's type, or a ValueError naming it and what it takes: refused
        as the app's control refuses it, never clamped."""
        if self.choices is not None or isinstance(self.default, str):
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                takes = f"one of {', '.join(self.choices)}" if self.choices else "text"
                raise ValueError(f"{self.name} takes {takes}, not {value!r}")
            return value
        if isinstance(self.default, bool):
            if not isinstance(value, bool | np.bool_):  # "false" would be true
                raise ValueError(f"{self.name} takes True or False, not {value!r}")
            return bool(value)
        number = "a whole number" if self.whole else "a number"
        real = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
        if not real or (self.whole and math.isfinite(value) and value != int(value)):
            raise ValueError(f"{self.name} takes {number}, not {value!r}")
        low = -math.inf if self.minimum is None else self.minimum
        high = math.inf if self.maximum is None else self.maximum
        if not low <= value <= high:  # NaN too
            raise ValueError(
                f"{self.name}: {value:g} is out of range; choose {number} from {low:g} to {high:g}"
            )
        return int(value) if self.whole else float(value)


# what a backend reads: a picture, the sketch pad's value, or an OpenPose JSON file
ACCEPTS = ("image", "sketch", "openpose_json")

_LOADED: dict[tuple[Any, str], Any] = {}


@dataclass(frozen=True)
class Backend:
    name: str
    label: str
    params: tuple[Param, ...] = ()
    #: builds the detector; called with the weights folder when `weights` is set
    factory: Callable[..., Any] = field(default=Passthrough, kw_only=True, compare=False)
    weights: Weights | None = field(default=None, kw_only=True)
    #: (import name, pip name) of the library the detector needs beyond the core requirements
    package: tuple[str, str] | None = field(default=None, kw_only=True)
    accepts: str = field(default="image", kw_only=True)
    #: a notice when a picture does not look like what the detector reads, else None
    input_check: Callable[[np.ndarray], str | None] | None = field(
        default=None, kw_only=True, compare=False
    )
    #: the name A1111's ControlNet extension gives the same preprocessor, where it has one; a
    #: function of the detector's parameters where A1111 names each setting apart
    a1111: str | Callable[[Mapping[str, Any]], str] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.accepts not in ACCEPTS:
            raise ValueError(f"Backend {self.name!r}: accepts must be one of {ACCEPTS}")

    def input_notices(self, image: np.ndarray) -> list[str]:
        """What `input_check` says about a picture given to this backend."""
        notice = None if self.input_check is None else self.input_check(image)
        return [] if notice is None else [notice]

    def module(self, params: Mapping[str, Any] | None = None) -> str:
        """The preprocessor's name in an image's A1111 parameters text ("Module: ..."), run
        with `params` (the defaults for those left out)."""
        if callable(self.a1111):
            return self.a1111({p.name: p.default for p in self.params} | dict(params or {}))
        return self.a1111 or self.name

    @property
    def reads_keypoints(self) -> bool:
        """Whether it reads an OpenPose JSON file (as its path) instead of a picture."""
        return self.accepts == "openpose_json"

    def availability(self) -> Availability:
        if self.package is not None:
            found = package_availability(*self.package)
            if not found.ok:
                return found
        return Availability(True) if self.weights is None else self.weights.availability()

    def load(self) -> Any:
        """The detector, built once per annotators folder; raises BackendUnavailable."""
        available = self.availability()
        if not available.ok:
            raise BackendUnavailable(f"{self.label}: {available.reason}")
        folder = None if self.weights is None else self.weights.folder()
        key = (self.factory, str(folder))
        if key not in _LOADED:
            if folder is None:
                _LOADED[key] = self.factory()
            else:
                try:
                    _LOADED[key] = self.factory(folder)
                except Exception as error:  # a truncated or corrupt file: torch's many errors
                    raise BackendUnavailable(
                        f"{self.label}: its weights in {folder} could not be loaded "
                        f"({type(error).__name__}: {error}); delete them and fetch them again: "
                        f"{self.weights.fetch_command()}"
                    ) from error
        return _LOADED[key]

    def defaults(self) -> dict[str, Any]:
        return {param.name: param.default for param in self.params}


@dataclass(frozen=True)
class Example:
    """An input shown under a tab and the backend that reads it. A map needs its reader named
    (a depth map given to MiDaS would be read as a photo); None: the first backend that runs
    here and reads this kind of file, so a photo goes to the best detector installed."""

    path: str  # relative to the repository root, or absolute
    backend: str | None = None


@dataclass(frozen=True)
class Condition:
    key: str
    label: str
    backends: tuple[Backend, ...]
    controlnet: Mapping[str, str]
    sketch: bool = False
    example_prompt: str = ""
    examples: tuple[Example, ...] = ()

    def backend(self, name: str) -> Backend:
        for backend in self.backends:
            if backend.name == name:
                return backend
        names = ", ".join(b.name for b in self.backends)
        raise ValueError(f"{self.label} has no backend {name!r}; choose one of: {names}")

    def default_backend(self) -> Backend:
        """The first backend that can run now (the classical ones always can)."""
        for backend in self.backends:
            if backend.availability().ok:
                return backend
        raise BackendUnavailable(f"No {self.label} backend can run here.")

    def readers(self, path: str | Path, sketch_pad: bool = False) -> list[Backend]:
        """The backends that run now and read a file like `path`, in order of preference: an
        OpenPose .json, else a picture; the strokes reader too when the file is loaded into the
        sketch pad (strokes drawn there then add to it)."""
        kinds = _file_kinds(path, sketch_pad)
        return [b for b in self.backends if b.accepts in kinds and b.availability().ok]

    def reader_for(self, path: str | Path) -> Backend:
        """The first backend that reads the file `path` (else the default, which says why not)."""
        return next(iter(self.readers(path)), None) or self.default_backend()

    def passed_over(self, path: str | Path) -> list[Backend]:
        """The backends `reader_for(path)` would have chosen first, had they been able to run
        here (a photo detector without its weights): a command that chose for the user says so."""
        kinds, chosen = _file_kinds(path), self.reader_for(path)
        before = self.backends[: self.backends.index(chosen)]
        return [b for b in before if b.accepts in kinds and not b.availability().ok]


def _file_kinds(path: str | Path, sketch_pad: bool = False) -> set[str]:
    """What a file is to the backends: an OpenPose .json, else a picture (and, loaded into the
    sketch pad, strokes drawn on it too)."""
    if Path(path).suffix.lower() == ".json":
        return {"openpose_json"}
    return {"image", "sketch"} if sketch_pad else {"image"}


def _openpose_module(params: Mapping[str, Any]) -> str:
    """A1111 names OpenPose by what it draws: openpose, openpose_hand, _face or _full."""
    hands, face = bool(params["include_hands"]), bool(params["include_face"])
    return {
        (False, False): "openpose",
        (True, False): "openpose_hand",
        (False, True): "openpose_face",
        (True, True): "openpose_full",
    }[hands, face]


def _annotator(*files: str) -> Weights:
    return Weights(ANNOTATORS_REPO, files)


def _controlnet(key: str, sd15: str) -> Mapping[str, str]:
    return MappingProxyType({"sd15": sd15, "embedded": key})


_AUX = ("controlnet_aux", "controlnet-aux==0.0.10")
_TRANSFORMERS = ("transformers", "transformers")
_EXAMPLES = "assets/examples"
_TORCH_WEIGHTS = "model.safetensors|pytorch_model.bin"  # transformers reads either

NONE_BACKEND = Backend("none", "None — my image already is a control map")
THICKNESS = Param("thickness", "Thicken strokes (px)", 0, 0, 12, 1)

CONDITIONS: dict[str, Condition] = {
    condition.key: condition
    for condition in (
        Condition(
            key="scribble",
            label="Scribble",
            sketch=True,
            backends=(
                Backend(
                    "canvas",
                    "Drawing canvas",
                    (THICKNESS,),
                    factory=scribble.CanvasDetector,
                    accepts="sketch",
                ),
                Backend(
                    "drawing",
                    "Uploaded drawing (dark on light or light on dark)",
                    (THICKNESS,),
                    factory=scribble.DrawingDetector,
                ),
                Backend(
                    "hed",
                    "Photo → HED scribble",
                    factory=scribble.HEDScribbleDetector,
                    a1111="scribble_hed",
                    weights=_annotator("ControlNetHED.pth"),
                    package=_AUX,
                ),
                Backend(
                    "pidinet",
                    "Photo → PidiNet scribble",
                    factory=scribble.PidiNetScribbleDetector,
                    a1111="scribble_pidinet",
                    weights=_annotator("table5_pidinet.pth"),
                    package=_AUX,
                ),
                Backend(
                    "fake_scribble",
                    "Photo → fake scribble (no weights)",
                    (Param("edge_strength", "Edge threshold", 0.3, 0.05, 1.0, 0.05),),
                    factory=scribble.FakeScribbleDetector,
                ),
                replace(NONE_BACKEND, input_check=partial(on_black_notice, drawn="white strokes")),
            ),
            controlnet=_controlnet("scribble", "lllyasviel/control_v11p_sd15_scribble"),
            example_prompt="a hot air balloon over a lake",
            examples=(Example(f"{_EXAMPLES}/scribble_balloon.png"),),
        ),
        Condition(
            key="canny",
            label="Canny edges",
            backends=(
                Backend(
                    "canny",
                    "Canny (OpenCV)",
                    (
                        Param("low_threshold", "Low threshold", 100, 1, 255, 1),
                        Param("high_threshold", "High threshold", 200, 1, 255, 1),
                    ),
                    factory=edges.CannyDetector,
                ),
                replace(NONE_BACKEND, input_check=partial(on_black_notice, drawn="white edges")),
            ),
            controlnet=_controlnet("canny", "lllyasviel/control_v11p_sd15_canny"),
            example_prompt="a red sphere and a blue cube on a wooden table",
            examples=(Example(f"{_EXAMPLES}/scene.jpg"),),
        ),
        Condition(
            key="hough",
            label="Hough lines",
            backends=(
                Backend(
                    "mlsd",
                    "M-LSD",
                    (
                        Param("value_threshold", "Value threshold", 0.1, 0.01, 2.0, 0.01),
                        Param("distance_threshold", "Distance threshold", 0.1, 0.01, 20.0, 0.01),
                    ),
                    factory=lines.MLSDDetector,
                    weights=_annotator("mlsd_large_512_fp32.pth"),
                    package=_AUX,
                ),
                Backend(
                    "lines",
                    "Line segments (OpenCV LSD, no weights)",
                    (
                        Param(
                            "min_length_percent", "Minimum length (% of side)", 4.0, 0.5, 50, 0.5
                        ),
                        Param("contrast", "Minimum contrast", 20, 1, 255, 1),
                    ),
                    factory=lines.LineSegmentDetector,
                ),
                replace(
                    NONE_BACKEND, input_check=partial(on_black_notice, drawn="white line segments")
                ),
            ),
            controlnet=_controlnet("hough", "lllyasviel/control_v11p_sd15_mlsd"),
            example_prompt="a bright modern room with a large window",
            examples=(Example(f"{_EXAMPLES}/room.png"),),
        ),
        Condition(
            key="pose",
            label="Human pose",
            backends=(
                Backend(
                    "openpose",
                    "OpenPose",
                    (
                        Param("include_hands", "Hands", False),
                        Param("include_face", "Face", False),
                    ),
                    factory=pose.OpenPoseDetector,
                    a1111=_openpose_module,
                    weights=_annotator("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
                    package=_AUX,
                ),
                Backend(
                    "keypoints_json",
                    "OpenPose JSON keypoints (no weights)",
                    (
                        Param("include_hands", "Hands", True),
                        Param("include_face", "Face", True),
                    ),
                    factory=pose.KeypointsJSONDetector,
                    accepts="openpose_json",
                ),
                replace(
                    NONE_BACKEND, input_check=partial(on_black_notice, drawn="a coloured skeleton")
                ),
            ),
            controlnet=_controlnet("pose", "lllyasviel/control_v11p_sd15_openpose"),
            example_prompt="an astronaut dancing on the moon",
            examples=(Example(f"{_EXAMPLES}/pose.json", "keypoints_json"),),
        ),
        Condition(
            key="seg",
            label="Segmentation",
            backends=(
                Backend(
                    "upernet",
                    "UperNet (ADE20K)",
                    factory=seg.UperNetDetector,
                    weights=Weights(
                        "openmmlab/upernet-convnext-small",
                        ("config.json", "preprocessor_config.json", _TORCH_WEIGHTS),
                        subfolder="upernet-convnext-small",
                    ),
                    package=_TRANSFORMERS,
                ),
                Backend(
                    "palette",
                    "Uploaded map, snapped to the ADE20K palette",
                    factory=seg.PaletteSnapDetector,
                    input_check=seg.photo_notice,
                ),
                replace(NONE_BACKEND, input_check=seg.photo_notice),
            ),
            controlnet=_controlnet("seg", "lllyasviel/control_v11p_sd15_seg"),
            example_prompt="a cozy living room",
            examples=(Example(f"{_EXAMPLES}/seg.png", "palette"),),
        ),
        Condition(
            key="depth",
            label="Depth",
            backends=(
                Backend(
                    "midas",
                    "MiDaS (DPT-Hybrid)",
                    factory=depth.MidasDepthDetector,
                    a1111="depth_midas",
                    weights=_annotator("dpt_hybrid-midas-501f0c75.pt"),
                    package=_AUX,
                ),
                Backend(
                    "depth_anything",
                    "Depth Anything V2 (small)",
                    factory=depth.DepthAnythingDetector,
                    a1111="depth_anything_v2",
                    weights=Weights(
                        "depth-anything/Depth-Anything-V2-Small-hf",
                        ("config.json", "preprocessor_config.json", _TORCH_WEIGHTS),
                        subfolder="Depth-Anything-V2-Small-hf",
                    ),
                    package=_TRANSFORMERS,
                ),
                Backend(
                    "depth_map",
                    "Uploaded depth map (8/16-bit; near = bright)",
                    (Param("invert", "Invert (my map has far = bright)", False),),
                    factory=depth.DepthMapDetector,
                    input_check=depth.colour_notice,
                ),
                replace(NONE_BACKEND, input_check=depth.colour_notice),
            ),
            controlnet=_controlnet("depth", "lllyasviel/control_v11f1p_sd15_depth"),
            example_prompt="a stone statue in a garden",
            examples=(Example(f"{_EXAMPLES}/depth.png", "depth_map"),),
        ),
        Condition(
            key="normal",
            label="Normal map",
            backends=(
                Backend(
                    "normalbae",
                    "NormalBae",
                    factory=normal.NormalBaeDetector,
                    a1111="normal_bae",
                    weights=_annotator("scannet.pt"),
                    package=_AUX,
                ),
                Backend(
                    "midas",
                    "MiDaS depth → normals",
                    (Param("bg_threshold", "Background threshold", 0.4, 0.0, 1.0, 0.01),),
                    factory=normal.MidasNormalDetector,
                    a1111="normal_midas",
                    weights=_annotator("dpt_hybrid-midas-501f0c75.pt"),
                    package=_AUX,
                ),
                Backend(
                    "depth_map",
                    "Uploaded depth map → normals (no weights)",
                    (
                        Param("bg_threshold", "Background threshold", 0.1, 0.0, 1.0, 0.01),
                        Param("invert", "Invert (my map has far = bright)", False),
                    ),
                    factory=normal.NormalFromDepthDetector,
                    input_check=depth.colour_notice,
                ),
                replace(NONE_BACKEND, input_check=normal.photo_notice),
            ),
            controlnet=_controlnet("normal", "lllyasviel/control_v11p_sd15_normalbae"),
            example_prompt="a marble bust in a museum",
            examples=(Example(f"{_EXAMPLES}/depth.png", "depth_map"),),
        ),
    )
}


def _condition(key: str) -> Condition:
    if key not in CONDITIONS:
        raise ValueError(f"Unknown condition {key!r}; choose one of: {', '.join(CONDITIONS)}")
    return CONDITIONS[key]


def detect(
    condition: str,
    image: Any,
    backend: str | None = None,
    detect_resolution: int = 512,
    image_resolution: int = 512,
    **params: Any,
) -> np.ndarray:
    """Control map (uint8 HxWx3) for `condition` from `image` with `backend` (default: the
    first available). Unknown parameters are an error; missing ones take their defaults."""
    entry = _condition(condition)
    chosen = entry.default_backend() if backend is None else entry.backend(backend)
    values = chosen.defaults()
    unknown = sorted(set(params) - set(values))
    if unknown:
        known = ", ".join(values) or "none"
        raise ValueError(f"{chosen.label} has no parameter {unknown[0]!r} (parameters: {known})")
    for param in chosen.params:
        if param.name in params:
            values[param.name] = param.check(params[param.name])
    detector = chosen.load()
    return detector(
        image, detect_resolution=detect_resolution, image_resolution=image_resolution, **values
    )
