"""Model presets and the code that loads them: base pipelines and ControlNets, from folders,
hub ids or single original-format checkpoints, onto the right device and dtype.

A preset names a base (a diffusers pipeline folder or hub id) and one ControlNet source per
condition. Three kinds exist and share every line of loading code:

- ``embedded``: ``assets/embedded`` in the model-dir layout (``base/``, ``controlnet/<key>/``,
  ``preset.json``); small, offline, fast on a CPU.
- ``sd15``: Stable Diffusion 1.5 and the ControlNet 1.1 checkpoints named by the condition registry.
- custom: any model dir in the embedded layout, or any base plus ControlNets given one by one.

torch and diffusers are imported inside the functions that need them, so that importing this
module (for presets, errors, status lines) stays fast.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cnet.lowrank import (
    LOWRANK_WEIGHTS,
    add_difference,
    is_lowrank,
    lowrank_start,
    read_difference,
)

if TYPE_CHECKING:
    from cnet.conditions import Example

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DIR = REPO_ROOT / "assets" / "embedded"
EMBEDDED_RESTORE_COMMAND = "git checkout HEAD -- assets/embedded"
EMBEDDED_TRAIN_COMMAND = (
    "python -m cnet train embedded --runs runs/embedded, then --pack assets/embedded"
)

SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_CAPTIONER = "Salesforce/blip-image-captioning-base"
SD15_RESOLUTION = 512
PAPER_CFG = 9.0  # the ControlNet paper's guidance scale, every preset's unless its preset.json says
PAPER_SAMPLER = "DDPM"  # likewise the sampler
# the paper's apps' a_prompt and n_prompt, written for SD 1.5; likewise every preset's unless its
# preset.json says (a model that knows a small vocabulary samples worse with them)
PAPER_ADDED_PROMPT = "best quality, extremely detailed"
PAPER_NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality"
)
# The files diffusers reads from the SD 1.5 repository (the safety checker is not loaded).
SD15_BASE_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
CONTROLNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
SINGLE_FILE_SUFFIXES = (".safetensors", ".pth", ".ckpt", ".pt", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelMissingError(RuntimeError):
    """Weights the request needs are not here; the message names them and the fetch command."""


class UnsafeCheckpointError(ValueError):
    """A pickled checkpoint that can only be read by running code from the file."""


class ModelMismatchError(ValueError):
    """A ControlNet made for another base: its residuals cannot join this base's UNet."""


@dataclass(frozen=True)
class Preset:
    name: str  # "embedded", "sd15", or a custom name
    base: str  # diffusers pipeline folder or hub id
    controlnets: Mapping[str, str] = field(default_factory=dict)  # condition -> folder/id/file
    resolution: int = SD15_RESOLUTION  # default short side of generated images
    cfg: float = PAPER_CFG  # default guidance scale
    sampler: str = PAPER_SAMPLER  # default sampler, one of engine.SAMPLERS
    added_prompt: str = PAPER_ADDED_PROMPT  # default text appended to the prompt
    negative_prompt: str = PAPER_NEGATIVE_PROMPT  # default negative prompt
    device: str = "cpu"
    dtype: str = "float32"  # a torch dtype name
    captioner: str | None = None  # BLIP folder or hub id for the automatic prompt mode
    # condition -> the prompt its tab starts with, in words the model knows (else the registry's)
    example_prompts: Mapping[str, str] = field(default_factory=dict)
    # condition -> example inputs from the scenes the model was trained on (else the registry's)
    examples: Mapping[str, tuple[Example, ...]] = field(default_factory=dict)

    def controlnet_source(self, condition: str) -> str:
        if condition in self.controlnets:
            return self.controlnets[condition]
        known = ", ".join(self.controlnets) or "none"
        raise ModelMissingError(
            f"Preset '{self.name}' has no ControlNet for '{condition}' (it has: {known}). "
            f"Pass one with --controlnet {condition}=PATH_OR_HUB_ID."
        )


# ---------------------------------------------------------------------------------------------
# Devices


def offline_variable() -> str | None:
    """The environment variable that keeps the hub offline, HF_HUB_OFFLINE or transformers' own
    TRANSFORMERS_OFFLINE (None: online). The first one set decides, as huggingface_hub reads
    them."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if value := os.environ.get(name):
            return name if value.strip().lower() in {"1", "true", "yes", "on"} else None
    return None


def hub_offline() -> bool:
    return offline_variable() is not None


# Files a GPU driver creates on Linux (NVIDIA, AMD ROCm, WSL 2). Without any of them torch cannot
# see a GPU, so detect_device answers "cpu" without importing torch (seconds at start-up).
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def gpu_driver_present() -> bool:
    """False only where no GPU can be present; macOS (MPS) and Windows always ask torch."""
    if platform.system() != "Linux":
        return True
    return any(os.path.exists(path) for path in GPU_DRIVER_FILES)


def detect_device() -> str:
    if not gpu_driver_present():
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str) -> None:
    """Raises ValueError, saying what to do, when torch cannot use the `device` asked for."""
    if device == "cpu":
        return
    import torch

    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device not in available:
        raise ValueError(f"Unknown device {device!r}: use cuda, mps or cpu.")
    if not (gpu_driver_present() and available[device]()):
        raise ValueError(
            f"torch sees no {device} device on this machine; leave --device out to use the best "
            f"one available ({detect_device()})."
        )


def dtype_for(device: str) -> str:
    return "float32" if device == "cpu" else "float16"


def cpu_threads() -> int:
    """Torch CPU threads: OMP_NUM_THREADS when set, else one per core this process may use.

    On a machine shared with other busy processes, fewer threads than cores can be much faster
    (OpenMP threads wait for each other); set OMP_NUM_THREADS there.
    """
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def compile_problem(device: str) -> str | None:
    """Why torch.compile cannot run on `device` here, or None when it can.

    Inductor generates Triton kernels on CUDA and C++ on the CPU, so each needs its compiler.
    """
    import shutil

    import torch

    if not hasattr(torch, "compile") or not torch._dynamo.is_dynamo_supported():
        return f"torch {torch.__version__} has no torch.compile for this Python or platform"
    if device.startswith("cuda"):
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile on CUDA needs Triton (`pip install triton`)"
    if device == "cpu":
        compilers = (os.environ.get("CXX", ""), "g++", "c++", "clang++")
        if not any(name and shutil.which(name) for name in compilers):
            return "torch.compile on the CPU needs a C++ compiler (install g++ or set CXX)"
    return None


# ---------------------------------------------------------------------------------------------
# Where weights live and how to fetch them


def is_local(source: str) -> bool:
    """True when `source` names a local path (existing, or clearly not a hub id)."""
    path = Path(source).expanduser()
    if path.exists():
        return True
    return (
        path.is_absolute()
        or source.startswith((".", "~"))
        or source.lower().endswith(SINGLE_FILE_SUFFIXES)
        or not _HUB_ID.match(source)
    )


def download_command(repo_id: str, files: tuple[str, ...] = ()) -> str:
    return " ".join(["hf download", repo_id, *files])


def hub_cached(repo_id: str, files: tuple[str, ...]) -> bool:
    """Whether every file is in the local hub cache; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(repo_id, name), str) for name in files)


def _fetch_hint(source: str, kind: str) -> str:
    files = SD15_BASE_FILES if kind == "base" else CONTROLNET_FILES
    path = Path(source).expanduser().resolve()
    if path == EMBEDDED_DIR or EMBEDDED_DIR in path.parents:
        return (
            f"A checkout that ships the embedded model restores it with "
            f"`{EMBEDDED_RESTORE_COMMAND}`; to train it yourself run "
            f"`{EMBEDDED_TRAIN_COMMAND}` (README, The embedded model)."
        )
    if path.is_dir() and is_lowrank(path):  # the detail names its damaged file, or its start
        try:
            return _fetch_hint(str(lowrank_start(path)), kind)
        except ValueError:
            return ""
    if source.lower().endswith(SINGLE_FILE_SUFFIXES):
        return "Check the path: a single-file checkpoint is read from that file."
    if not path.exists() and kind == "base" and layout_part(path, "base", "controlnet"):
        return "Put a diffusers pipeline folder there, as `python -m cnet train base` makes."
    if not path.exists() and layout_part(path.parent, "controlnet", "base"):
        return (
            "Put a ControlNet folder there, such as a training run's <run>/controlnet "
            "(`python -m cnet train controlnet`), or pack a whole `python -m cnet train "
            "embedded` run into this folder with --pack."
        )
    if is_local(source):
        return (
            "Check the path, or put the weights there "
            f"(e.g. `{download_command('<hub-id>', files)} --local-dir {source}`)."
        )
    offline = (
        f" ({offline_variable()} is set, so only the local cache is used)" if hub_offline() else ""
    )
    return f"Download it with `{download_command(source, files)}`{offline}."


def layout_part(path: Path, name: str, sibling: str) -> bool:
    """Whether `path` is the `name` part of a folder in the embedded layout (`--model-dir`),
    which holds a preset.json or the `sibling` part beside it."""
    return path.name == name and any(
        (path.parent / marker).exists() for marker in ("preset.json", sibling)
    )


def missing_weights(source: str, kind: str) -> str | None:
    """A one-line reason when `source` (kind: "base" | "controlnet") cannot load here, else None."""
    files = SD15_BASE_FILES if kind == "base" else CONTROLNET_FILES
    if is_local(source):
        path = Path(source).expanduser()
        if not path.exists():
            return f"{path} does not exist"
        if path.is_file():
            return None if kind == "controlnet" else f"{path} is a file, not a pipeline folder"
        if kind == "base":
            needed = path / "model_index.json"
            return None if needed.is_file() else f"{path} has no model_index.json"
        if is_lowrank(path):
            if not (path / LOWRANK_WEIGHTS).is_file():
                return f"{path} has no {LOWRANK_WEIGHTS}"
            try:
                start = lowrank_start(path)
            except ValueError as error:  # a status line reports it; it never raises
                return str(error).removesuffix(".")
            detail = missing_weights(str(start), kind)
            return detail and f"{path} is a low-rank difference from {start}, and {detail}"
        return None if (path / "config.json").is_file() else f"{path} has no config.json"
    if hub_offline() and not hub_cached(source, files[:1]):
        if Path(source).parent.is_dir():  # "runs/nope" beside a runs/ folder: a path mistyped?
            return f"there is no folder {source} here, and as a hub id it is not in the hub cache"
        return f"{source} is not in the hub cache"
    return None


def model_missing(source: str, what: str, detail: str, kind: str) -> ModelMissingError:
    hint = _fetch_hint(source, kind)
    return ModelMissingError(f"{what} is missing: {detail}." + (f" {hint}" if hint else ""))


# ---------------------------------------------------------------------------------------------
# Presets


def _registry_checkpoints(preset_name: str) -> dict[str, str]:
    from cnet.conditions import CONDITIONS

    return {
        key: condition.controlnet[preset_name]
        for key, condition in CONDITIONS.items()
        if preset_name in condition.controlnet
    }


def preset_settings(model_dir: str | Path) -> dict:
    """The folder's preset.json ({} when it has none)."""
    path = Path(model_dir).expanduser() / "preset.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or remove it.") from None
    if not isinstance(settings, dict):
        raise ValueError(f'{path} must hold one JSON object, {{"name": ...}}; fix or remove it.')
    check_settings(path, settings)
    return settings


def check_settings(path: Path, settings: dict) -> None:
    """Raise ValueError naming the file and key for a preset.json value the app cannot use (a
    guidance scale or size the UI would refuse at every Run, a wrong type)."""
    from cnet.engine import MAX_CFG, MAX_RESOLUTION, MIN_CFG, MIN_RESOLUTION

    numbers = {
        "resolution": (MIN_RESOLUTION, MAX_RESOLUTION, True),
        "cfg": (MIN_CFG, MAX_CFG, False),
    }
    for key, (low, high, whole) in numbers.items():
        if key not in settings:
            continue
        value = settings[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and low <= value <= high) or (
            whole and not float(value).is_integer()
        ):
            kind = "a whole number" if whole else "a number"
            raise ValueError(f'{path}: "{key}" must be {kind} from {low} to {high}, got {value!r}.')
    for key, kind, name in (
        ("name", str, "text"),
        ("sampler", str, "text"),
        ("added_prompt", str, "text"),
        ("negative_prompt", str, "text"),
        ("controlnets", dict, "an object {condition: folder}"),
        ("example_prompts", dict, "an object {condition: prompt}"),
        ("examples", dict, "an object {condition: [examples]}"),
    ):
        if key in settings and not isinstance(settings[key], kind):
            raise ValueError(f'{path}: "{key}" must be {name}, got {settings[key]!r:.60}.')


def preset_sampling(settings: dict) -> tuple[float, str]:
    """The guidance scale and sampler a preset.json's settings name, else the paper's."""
    return float(settings.get("cfg", PAPER_CFG)), settings.get("sampler", PAPER_SAMPLER)


def settings_beside(base: str) -> tuple[Path | None, dict]:
    """(model folder, its preset.json settings) for a base pipeline folder in the embedded layout
    (<dir>/preset.json next to <dir>/base/); (None, {}) for a hub id."""
    if not is_local(base):
        return None, {}
    folder = Path(base).expanduser().parent
    return folder, preset_settings(folder)


def sampling_defaults(base: str | None) -> tuple[float, str]:
    """The guidance scale and sampler a base pipeline is sampled at: those of the preset.json
    beside its folder, else the paper's."""
    return preset_sampling({} if base is None else settings_beside(base)[1])


def config_at_hand(source: str, name: str = "config.json") -> dict | None:
    """The JSON file `name` of a folder or hub id, from the folder or the hub cache (nothing is
    downloaded); None where it is not at hand. A low-rank ControlNet folder answers with its
    start's."""
    if is_local(source):
        folder = Path(source).expanduser()
        if folder.is_dir() and is_lowrank(folder):
            try:
                folder = lowrank_start(folder)
            except ValueError:  # a broken file: `missing_weights` names it
                return None
        path = folder / name
    else:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(source, name)
    if not isinstance(path, str | Path) or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):  # a broken file: loading it names the problem
        return None


def base_resolution(base: str) -> int | None:
    """The image side a base pipeline was trained at, its UNet's sample size times its VAE's
    down-sampling, from its configs at hand (config_at_hand); None where they are not."""
    unet, vae = (config_at_hand(base, f"{part}/config.json") for part in ("unet", "vae"))
    sample_size = (unet or {}).get("sample_size")
    blocks = (vae or {}).get("block_out_channels")
    if not isinstance(sample_size, int) or not blocks:  # e.g. a non-square model's [h, w]
        return None
    return sample_size * 2 ** (len(blocks) - 1)


def preset_resolution(settings: dict, base: str) -> int:
    """A preset's image side: its preset.json's, else its base's own, else SD 1.5's."""
    return int(settings.get("resolution") or base_resolution(base) or SD15_RESOLUTION)


def size_multiple(base: str) -> int | None:
    """What the sides of a base's images are rounded to, 8 times its VAE's down-sampling (the
    UNet halves the latents three times), from its VAE config at hand; None where it is not."""
    blocks = (config_at_hand(base, "vae/config.json") or {}).get("block_out_channels")
    return 8 * 2 ** (len(blocks) - 1) if blocks else None


def base_defaults(base: str, beside: tuple[Path | None, dict] | None = None) -> dict:
    """The preset fields that belong to a base rather than to its ControlNets: the resolution,
    guidance scale, sampler and added and negative prompts it is sampled with and the tabs'
    examples in words it knows. From
    the preset.json beside its folder when there is one (`beside`: settings_beside(base) where
    it was read already); else its native resolution (SD 1.5's where its configs are not at
    hand), the paper's sampling and the registry's examples."""
    folder, settings = beside or settings_beside(base)
    cfg, sampler = preset_sampling(settings)
    resolution = preset_resolution(settings, base)
    example_prompts = settings.get("example_prompts", {})
    if folder is not None:
        known_conditions(folder, example_prompts, "an example prompt")
    return {
        "resolution": int(resolution),
        "cfg": cfg,
        "sampler": sampler,
        "added_prompt": settings.get("added_prompt", PAPER_ADDED_PROMPT),
        "negative_prompt": settings.get("negative_prompt", PAPER_NEGATIVE_PROMPT),
        "example_prompts": example_prompts,
        "examples": preset_examples(folder, settings.get("examples", {})) if folder else {},
    }


def preset_from_dir(model_dir: str | Path, name: str | None = None, device: str | None = None):
    """A preset for a folder in the embedded layout (base/, controlnet/<key>/, preset.json).

    preset.json may hold "name", "resolution" (else the base's native size), "cfg" and
    "sampler" (the default guidance scale and sampler, when the paper's 9.0 and DDPM do not suit
    the model), "added_prompt" and "negative_prompt" (when the paper's SD 1.5 words do not suit
    it), "controlnets": {condition: folder under controlnet/} for conditions whose
    ControlNet is not in controlnet/<condition>/, "example_prompts": {condition: prompt} for a
    model that knows only a small vocabulary (the registry's example prompts are written for
    SD 1.5), and "examples": {condition: [{"file": path in the folder, "backend": the backend
    that reads it}]}, inputs of the kind the model was trained on, shown under the tabs instead
    of the registry's.
    """
    # absolute, so a folder that is not there reads as a missing path, never as a hub id
    model_dir = Path(model_dir).expanduser().absolute()
    settings = preset_settings(model_dir)
    folders = _registry_checkpoints("embedded")  # condition -> folder name under controlnet/
    known_conditions(model_dir, settings.get("controlnets", {}), "a ControlNet")
    folders.update(settings.get("controlnets", {}))  # e.g. one ControlNet shared by several
    controlnets = {key: str(model_dir / "controlnet" / folder) for key, folder in folders.items()}
    device = device or detect_device()
    base = str(model_dir / "base")
    return Preset(
        name=name or settings.get("name") or model_dir.name,
        base=base,
        controlnets=controlnets,
        device=device,
        dtype=dtype_for(device),
        captioner=str(model_dir / "captioner"),
        **base_defaults(base, (model_dir, settings)),
    )


def known_conditions(model_dir: Path, entries: Mapping, what: str) -> None:
    from cnet.conditions import CONDITIONS

    unknown = sorted(set(entries) - set(CONDITIONS))
    if unknown:
        raise ValueError(
            f"{model_dir / 'preset.json'} gives {what} for {unknown[0]!r}, which is no "
            f"condition; use the condition keys: {', '.join(CONDITIONS)}."
        )


def preset_examples(model_dir: Path, entries: Mapping) -> dict[str, tuple[Example, ...]]:
    """preset.json's "examples", each file found in `model_dir` and each backend its condition's."""
    from cnet.conditions import CONDITIONS, Example

    known_conditions(model_dir, entries, "examples")
    examples = {}
    for key, listed in entries.items():
        if not all(isinstance(entry, dict) and "file" in entry for entry in listed):
            raise ValueError(
                f"{model_dir / 'preset.json'}: each {key} example is "
                '{"file": "examples/...", "backend": "..."} (the backend optional).'
            )
        examples[key] = tuple(
            Example(str(model_dir / entry["file"]), entry.get("backend")) for entry in listed
        )
        for example in examples[key]:
            if not Path(example.path).is_file():
                raise ValueError(
                    f"{model_dir / 'preset.json'} names the {key} example {example.path}, which "
                    "is not there; restore the folder's examples/ or drop the entry."
                )
            if example.backend is not None:
                try:
                    CONDITIONS[key].backend(example.backend)
                except ValueError as error:
                    raise ValueError(f"{model_dir / 'preset.json'}: {error}") from None
    return examples


def sd15_preset(device: str | None = None) -> Preset:
    device = device or detect_device()
    return Preset(
        name="sd15",
        base=SD15_BASE,
        controlnets=_registry_checkpoints("sd15"),
        resolution=SD15_RESOLUTION,
        device=device,
        dtype=dtype_for(device),
        captioner=SD15_CAPTIONER,
    )


def _hub_reachable(repo_id: str, timeout: float = 3.0) -> bool:
    """A metadata request (no download) to see whether the hub answers for `repo_id`."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except Exception:  # any failure (no network, DNS, HTTP error) means: not reachable now
        return False
    return True


def choose_auto(device: str, asked: bool = False) -> tuple[str, str]:
    """(preset name, reason) for --preset auto on `device` (`asked`: given by the user, not
    detected): sd15 on a GPU with its weights cached or reachable, else the embedded preset.
    Looks at the cache and asks the hub for metadata; downloads nothing."""
    if device == "cpu":
        why = "the CPU was asked for" if asked else "no GPU found"
        return "embedded", f"{why}, so the embedded CPU model runs (sd15 needs a GPU)"
    if hub_cached(SD15_BASE, SD15_BASE_FILES):
        return "sd15", f"{device} GPU found and Stable Diffusion 1.5 is in the hub cache"
    if hub_offline():
        return "embedded", (
            f"{device} GPU found, but {offline_variable()} is set and Stable Diffusion 1.5 is not "
            "cached "
            f"(fetch it with `{download_command(SD15_BASE, SD15_BASE_FILES)}`)"
        )
    if _hub_reachable(SD15_BASE):
        return "sd15", f"{device} GPU found; Stable Diffusion 1.5 downloads on first use"
    return "embedded", f"{device} GPU found, but the hub is unreachable and SD 1.5 is not cached"


def resolve_preset(
    preset: str = "auto",
    model_dir: str | None = None,
    base: str | None = None,
    controlnets: Mapping[str, str] | None = None,
    device: str | None = None,
) -> tuple[Preset, str]:
    """(Preset, reason). `preset` is "auto", "embedded", "sd15", or a model-dir path.

    `model_dir` overrides the preset with a folder in the embedded layout; `base` and
    `controlnets` then override single parts (a custom preset).
    """
    from cnet.conditions import CONDITIONS

    if controlnets is not None and not isinstance(controlnets, Mapping):
        raise ValueError(
            "controlnets maps each condition to its weights, e.g. {'canny': "
            f"'my_canny.safetensors'}}; got a {type(controlnets).__name__}."
        )
    unknown = sorted(set(controlnets or {}) - set(CONDITIONS))
    if unknown:
        raise ValueError(
            f"A ControlNet is given for {unknown[0]!r}, which names no condition; "
            f"use one of: {', '.join(CONDITIONS)}."
        )
    asked, device = device is not None, device or detect_device()
    if model_dir is not None:
        chosen, reason = preset_from_dir(model_dir, device=device), f"--model-dir {model_dir}"
    elif preset == "auto":
        name, reason = choose_auto(device, asked)
        chosen = sd15_preset(device) if name == "sd15" else _embedded(device)
    elif preset == "embedded":
        chosen, reason = _embedded(device), "embedded preset requested"
    elif preset == "sd15":
        chosen, reason = sd15_preset(device), "sd15 preset requested"
    elif Path(preset).expanduser().is_dir():
        chosen, reason = preset_from_dir(preset, device=device), f"model folder {preset}"
    else:
        raise ValueError(
            f"Unknown preset '{preset}': use auto, embedded, sd15, or a folder with base/ and "
            "controlnet/<condition>/."
        )
    if controlnets:
        given = {key: trained_controlnet(source) for key, source in controlnets.items()}
        chosen = replace(chosen, name="custom", controlnets={**chosen.controlnets, **given})
        reason += "; custom ControlNets given"
    if base is not None and base != chosen.base:
        # The base decides the size and sampling, not the preset whose ControlNets stay.
        chosen = replace(chosen, name="custom", base=base, **base_defaults(base))
        reason += f"; custom base given ({chosen.resolution} px, CFG {chosen.cfg:g})"
    return chosen, reason


def run_result(source: str, result: str) -> str:
    """`source`, or where it is a training run's output folder (no config.json of its own), the
    model the run exported into its `result` subfolder (controlnet/, captioner/)."""
    path = Path(source).expanduser()
    if not (path / "config.json").is_file() and (path / result / "config.json").is_file():
        return str(path / result)
    return source


def trained_controlnet(source: str) -> str:
    """`source`, or where it is a `cnet train controlnet` run's folder, the run's result in it."""
    return run_result(source, "controlnet")


def _embedded(device: str) -> Preset:
    return preset_from_dir(EMBEDDED_DIR, name="embedded", device=device)


# ---------------------------------------------------------------------------------------------
# Loading


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def load_base(preset: Preset, move: bool = True) -> dict:
    """The base pipeline's components (vae, text_encoder, tokenizer, unet, scheduler), moved to
    the preset's device unless `move` is False (model CPU offload moves them per call)."""
    from diffusers import StableDiffusionPipeline

    detail = missing_weights(preset.base, "base")
    if detail:
        raise model_missing(
            preset.base, f"The base model of preset '{preset.name}'", detail, "base"
        )
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(Path(preset.base).expanduser()) if is_local(preset.base) else preset.base,
            dtype=_torch_dtype(preset.dtype),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=hub_offline(),
        )
    except OSError as error:
        raise model_missing(
            preset.base, f"The base model of preset '{preset.name}'", str(error), "base"
        ) from error
    if move:
        pipe.to(preset.device)
    return {
        name: getattr(pipe, name)
        for name in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    }


def read_checkpoint(path: str | Path) -> dict:
    """A state dict from .safetensors, or from a pickle with torch.load(weights_only=True)."""
    import pickle

    import torch

    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" not in str(error):  # torch names the code a pickle would run as a "global"
            raise ValueError(
                f"{path} is not a readable checkpoint (torch.load cannot read it); give a "
                ".safetensors or .pth file of a ControlNet, or a folder with config.json."
            ) from error
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it is a pickle that needs to run code to load "
            "(weights_only=True rejected it), and running code from a model file is unsafe. "
            "Use a .safetensors version of this checkpoint."
        ) from error
    except Exception as error:  # safetensors' and torch's parsers raise many kinds
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {error}); give a "
            ".safetensors or .pth file of a ControlNet, or a folder with config.json."
        ) from error
    while isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    return checkpoint


def _original_prefix(checkpoint: Mapping) -> str:
    return "control_model." if any(k.startswith("control_model.") for k in checkpoint) else ""


def checkpoint_differences(shapes: Mapping[str, Sequence[int]], unet_config: Mapping) -> list[str]:
    """Where an original-format ControlNet checkpoint's encoder (its tensors' shapes by name)
    differs from a base UNet's, as far as the shapes show: channels in, first and last widths,
    text width. An empty list: it fits."""
    prefix = _original_prefix(shapes)
    first = shapes.get(f"{prefix}input_blocks.0.0.weight")
    last = shapes.get(f"{prefix}middle_block_out.0.weight")
    text = next((shape for k, shape in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    widths = unet_config.get("block_out_channels") or [None]
    pairs = {
        "in_channels": (first, 1, unet_config.get("in_channels")),
        "first block width": (first, 0, widths[0]),
        "last block width": (last, 0, widths[-1]),
        "cross_attention_dim": (text, 1, unet_config.get("cross_attention_dim")),
    }
    return [
        f"{name} {shape[axis]} (the base's {wanted})"
        for name, (shape, axis, wanted) in pairs.items()
        if shape is not None and isinstance(wanted, int) and shape[axis] != wanted
    ]


def safetensors_shapes(source: str) -> dict[str, list[int]] | None:
    """The tensors' shapes by name in a local .safetensors file, from its header alone (no
    weights read); None for anything else or an unreadable header."""
    path = Path(source).expanduser()
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    try:
        with path.open("rb") as file:
            header = json.loads(file.read(int.from_bytes(file.read(8), "little")))
        return {key: entry["shape"] for key, entry in header.items() if key != "__metadata__"}
    except (ValueError, KeyError, TypeError, OSError, MemoryError):
        return None


def conditioning_shape(checkpoint: Mapping) -> tuple[int, tuple[int, ...]]:
    """(conditioning_channels, conditioning_embedding_out_channels) of an original-format
    ControlNet checkpoint.

    The hint encoder is Conv, SiLU, (Conv, SiLU, strided Conv, SiLU)*, zero Conv: the widths are
    the outputs of the first conv and of every strided one.
    """
    prefix = _original_prefix(checkpoint)
    hint = re.compile(rf"^{re.escape(prefix)}input_hint_block\.(\d+)\.weight$")
    weights = {int(m.group(1)): checkpoint[k] for k in checkpoint if (m := hint.match(k))}
    if not weights:
        raise ValueError("not an original-format ControlNet checkpoint (no input_hint_block)")
    indices = sorted(weights)[:-1]  # the last conv maps into the UNet's width
    widths = tuple(int(weights[i].shape[0]) for i in indices if i % 4 == 0)
    return int(weights[0].shape[1]), widths


def load_controlnet(source: str, base: str, dtype: str, device: str, label: str = "ControlNet"):
    """A ControlNetModel from a folder, a hub id, a single original-format checkpoint file, or a
    low-rank difference from another ControlNet folder (`cnet.lowrank`).

    A single file carries no config; the architecture comes from the base UNet's config (a
    ControlNet is a copy of its base's encoder), so loading needs no download.
    """
    from diffusers import ControlNetModel

    detail = missing_weights(source, "controlnet")
    if detail:
        raise model_missing(source, label, detail, "controlnet")
    torch_dtype = _torch_dtype(dtype)
    path = Path(source).expanduser()
    try:
        if path.is_dir() and is_lowrank(path):
            model = load_controlnet(str(lowrank_start(path)), base, dtype, "cpu", label)
            # the sum is taken in float32, then stored in the model's dtype
            model.load_state_dict(add_difference(model.state_dict(), read_difference(path)))
        elif path.is_file():
            checkpoint = read_checkpoint(path)
            if any(key.startswith("controlnet_cond_embedding.") for key in checkpoint):
                folder = path.parent if (path.parent / "config.json").is_file() else None
                raise ValueError(
                    f"{label}: {path} holds the weights of a diffusers ControlNet folder, which "
                    "are read with the config.json beside them: give "
                    + (f"the folder, {folder}." if folder else "the folder they came from.")
                )
            unet = config_at_hand(base, "unet/config.json")
            shapes = {key: tuple(tensor.shape) for key, tensor in checkpoint.items()}
            differ = checkpoint_differences(shapes, unet) if unet else []
            if differ:  # diffusers would only name two tensors of different shapes
                raise ModelMismatchError(mismatch_message(label, differ))
            channels, widths = conditioning_shape(checkpoint)
            base_path = Path(base).expanduser()
            model = ControlNetModel.from_single_file(
                checkpoint,
                config=str(base_path) if is_local(base) else base,
                subfolder="unet",
                conditioning_channels=channels,
                conditioning_embedding_out_channels=widths,
                torch_dtype=torch_dtype,
                local_files_only=hub_offline() or is_local(base),
            )
        else:
            model = ControlNetModel.from_pretrained(
                str(path) if is_local(source) else source,
                dtype=torch_dtype,
                local_files_only=hub_offline(),
            )
    except OSError as error:
        raise model_missing(source, label, str(error), "controlnet") from error
    return model.to(device).eval()


# A ControlNet is a copy of its base UNet's encoder: where these differ, its residuals and text
# input cannot fit the UNet, and torch would only say that two shapes do not multiply.
ENCODER_SHAPE = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim")


def encoder_differences(controlnet_config: Mapping, unet_config: Mapping) -> list[str]:
    """Where a ControlNet's encoder differs from a base UNet's, one entry each (none: it fits)."""

    def plain(value):
        return list(value) if isinstance(value, list | tuple) else value

    return [
        f"{key} {plain(controlnet_config.get(key))} (the base's {plain(unet_config.get(key))})"
        for key in ENCODER_SHAPE
        if plain(controlnet_config.get(key)) != plain(unet_config.get(key))
    ]


# What to do about a ControlNet made for another base, where the app or cnet generate loads it.
GIVE_ANOTHER = (
    "Give a ControlNet trained on this base (--controlnet CONDITION=PATH), or the base it was "
    "trained on (--base, or its preset)."
)


def check_controlnet_fits(
    controlnet_config: Mapping, unet_config: Mapping, label: str, fix: str = GIVE_ANOTHER
) -> None:
    """Raise ModelMismatchError, naming what differs, for a ControlNet of another architecture;
    `fix`: what to do about it, where it was given."""
    differ = encoder_differences(controlnet_config, unet_config)
    if differ:
        raise ModelMismatchError(mismatch_message(label, differ, fix))


def mismatch_message(label: str, differ: list[str], fix: str = GIVE_ANOTHER) -> str:
    return f"{label} was made for another base model: {'; '.join(differ)}. {fix}"


class LRUCache:
    """At most `size` values, the least recently used dropped first."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError("cache size must be at least 1")
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, key, make: Callable):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()
