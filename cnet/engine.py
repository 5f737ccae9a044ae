"""The generation engine: a control map and a prompt in, images and their parameters out.

One base pipeline per engine, loaded on first use (or by `Engine.load()`); each condition's
ControlNet is loaded when first asked for, kept in a small LRU cache and swapped into the same
pipeline, so changing condition never reloads the base. Prompt embeddings are cached too.
Models are moved to the device and optimised once, when loaded: float16 on GPUs, channels_last
weights on CUDA, torch.compile on request, or model CPU offload for GPUs short of memory.
Importing this module loads neither torch nor diffusers, so a server can answer before they load.

Prompt modes follow the paper: no prompt (""), the default prompt, the automatic prompt (generate
with the default prompt, caption that image with BLIP, generate again with the caption, same
seed), and the user's prompt. The added prompt is appended (", ".join) in every mode except "no
prompt", which stays truly empty as in the paper's no-prompt experiments.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from PIL import Image

from cnet import png_info
from cnet.models import (
    LRUCache,
    ModelMissingError,
    Preset,
    check_controlnet_fits,
    check_device,
    checkpoint_differences,
    compile_problem,
    config_at_hand,
    cpu_threads,
    encoder_differences,
    load_base,
    load_controlnet,
    missing_weights,
    model_missing,
    resolve_preset,
    safetensors_shapes,
)

__all__ = [
    "DEFAULT_PROMPT",
    "PROMPT_MODES",
    "SAMPLERS",
    "Engine",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "ModelMissingError",
    "load_engine",
]

PROMPT_MODES = ("none", "default", "auto", "user")
DEFAULT_PROMPT = "a professional, detailed, high-quality image"
SAMPLERS = ("DDPM", "DDIM", "UniPC", "Euler a", "DPM++ 2M")
MAX_IMAGES = 12
MAX_STEPS = 150
MIN_CFG, MAX_CFG = 1.0, 30.0  # diffusers turns guidance off at 1 and below: 1 means none
MAX_SEED = 2**32 - 1
MIN_RESOLUTION, MAX_RESOLUTION = 64, 2048
MAX_SIDE = 2048  # long side cap, so an extreme aspect ratio cannot ask for a giant image

ProgressFn = Callable[[int, int], None]


def random_seed() -> int:
    """A seed drawn for a run: low enough that no image's seed + i wraps past MAX_SEED."""
    return random.randint(0, MAX_SEED - MAX_IMAGES)


log = logging.getLogger(__name__)


class WithoutLengthWarnings(logging.Filter):
    """Drops transformers' and diffusers' warnings that a prompt is longer than the text encoder
    reads ("will result in indexing errors", which the pipeline's truncation prevents): the
    engine says so itself, in words a user reads (`Engine.encode`'s notice)."""

    STARTS = ("Token indices sequence length is longer", "The following part of your input")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.STARTS)


def without_length_warnings(pipeline) -> None:
    for name in ("transformers.tokenization_utils_base", type(pipeline).__module__):
        logger = logging.getLogger(name)
        if not any(isinstance(f, WithoutLengthWarnings) for f in logger.filters):
            logger.addFilter(WithoutLengthWarnings())


def check_long_side(height: int, width: int, resolution: int) -> None:
    """Refuse a control map whose long side at `resolution` (its short side) passes MAX_SIDE."""
    long_side = max(height, width) * resolution / min(height, width)
    if long_side > MAX_SIDE:
        raise ValueError(
            f"A {width}x{height} control map at resolution {resolution} would be "
            f"{long_side:.0f} px long; the limit is {MAX_SIDE}. Crop it or lower the resolution."
        )


class GenerationCancelled(RuntimeError):
    """The caller set the cancel event; no images were returned."""


@dataclass
class GenerationRequest:
    control_image: np.ndarray  # uint8 HxWx3 control map
    condition: str  # registry key
    prompt_mode: str = "user"
    prompt: str = ""
    added_prompt: str | None = None  # None = the preset's (the paper's apps' unless it says)
    negative_prompt: str | None = None  # None = the preset's, likewise
    num_images: int = 1  # 1..12
    resolution: int | None = None  # short side; None = preset default; rounded to the latent grid
    control_strength: float = 1.0  # 0..2
    guess_mode: bool = False
    control_start: float = 0.0
    control_end: float = 1.0
    steps: int = 20
    cfg: float | None = None  # None = the preset's (the paper's 9.0 unless its preset.json says)
    sampler: str | None = None  # None = the preset's (the paper's DDPM unless its preset.json says)
    eta: float = 0.0
    seed: int = 0  # image i uses seed + i
    keep_first_pass: bool = False  # auto mode: also return first-pass images
    # The detector that made the control map (`Backend.module`: A1111's name where it has one),
    # for the PNG text's Module; None: the map was given as it is ("none").
    preprocessor: str | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        image = self.control_image
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise ValueError("The control map must be a uint8 numpy array (H x W x 3).")
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"The control map must have shape H x W x 3, got {image.shape}.")
        from cnet.conditions import CONDITIONS

        if self.condition not in CONDITIONS:  # a key, not a label or an sd15 checkpoint's name
            names = ", ".join(CONDITIONS)
            raise ValueError(f"Unknown condition {self.condition!r}; choose one of: {names}.")
        for name in ("prompt", "added_prompt", "negative_prompt"):
            text, label = getattr(self, name), name.replace("_", " ")
            if text is None and name != "prompt":  # the preset's
                continue
            if not isinstance(text, str):
                raise ValueError(f"The {label} must be text, got {text!r}.")
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # a shell that is not UTF-8 passes bytes it cannot
                    raise ValueError(
                        f"The {label} holds characters that are not UTF-8 text ({text!r:.60}); "
                        "set a UTF-8 locale (e.g. LANG=C.UTF-8) or retype them."
                    ) from None
        _choice("prompt mode", self.prompt_mode, PROMPT_MODES)
        if self.sampler is not None:
            _choice("sampler", self.sampler, SAMPLERS)
        _in_range("number of images", self.num_images, 1, MAX_IMAGES, integer=True)
        if self.resolution is not None:
            _in_range("resolution", self.resolution, MIN_RESOLUTION, MAX_RESOLUTION, integer=True)
        _in_range("control strength", self.control_strength, 0.0, 2.0)
        _in_range("control start", self.control_start, 0.0, 1.0)
        _in_range("control end", self.control_end, 0.0, 1.0)
        if self.control_start >= self.control_end:
            raise ValueError(
                f"Control start ({self.control_start}) must be below control end "
                f"({self.control_end})."
            )
        _in_range("steps", self.steps, 1, MAX_STEPS, integer=True)
        if not controlled_steps(self.steps, self.control_start, self.control_end):
            raise ValueError(
                f"Control start {self.control_start} and end {self.control_end} hold none of the "
                f"{self.steps} steps (each is 1/{self.steps} of the way), so the ControlNet would "
                "have no effect; widen the window or take more steps."
            )
        if self.cfg is not None:
            _in_range("CFG scale", self.cfg, MIN_CFG, MAX_CFG)
        _in_range("eta", self.eta, 0.0, 1.0)
        _in_range("seed", self.seed, 0, MAX_SEED, integer=True)


def controlled_steps(steps: int, start: float, end: float) -> int:
    """How many of `steps` sampling steps the ControlNet joins: step i when it lies wholly in the
    window, i / steps >= start and (i + 1) / steps <= end (diffusers' rule)."""
    return sum(i / steps >= start and (i + 1) / steps <= end for i in range(steps))


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of: {', '.join(choices)}.")


def _in_range(name: str, value, low, high, integer: bool = False) -> None:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"The {name} must be {kind}, got {value!r}.")
    if not low <= value <= high:
        raise ValueError(f"The {name} must be between {low} and {high}, got {value}.")


@dataclass
class GenerationResult:
    images: list[Image.Image]  # each with the PNG "parameters" text in image.info
    control_image: np.ndarray  # the map as the ControlNet saw it (resized)
    prompt: str  # the positive text actually encoded
    caption: str | None  # auto mode
    first_pass_images: list[Image.Image]
    seeds: list[int]
    metadata: dict = field(default_factory=dict)


def empty_prompt_notice(added_prompt: str) -> str:
    """What a User prompt run with an empty prompt says."""
    follows = "the added prompt alone" if added_prompt.strip() else "the map alone, unprompted"
    return (
        f"The prompt is empty: the images follow {follows}. Type what the image should show, or "
        'choose the No prompt ("none") or Default prompt ("default") mode.'
    )


def compose_prompt(text: str, added_prompt: str) -> str:
    """The original apps' `prompt + ", " + a_prompt`, skipping empty parts."""
    return ", ".join(part for part in (text.strip(), added_prompt.strip()) if part)


def positive_prompt(mode: str, prompt: str, added_prompt: str) -> str:
    """The text encoded for one pass of `mode` ("auto" passes its caption as `prompt`)."""
    if mode == "none":
        return ""
    base = DEFAULT_PROMPT if mode == "default" else prompt
    return compose_prompt(base, added_prompt)


def make_scheduler(sampler: str, config: Mapping):
    """A scheduler of the named kind built from the base pipeline's scheduler config."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    kinds = {
        "DDPM": (DDPMScheduler, {}),
        "DDIM": (DDIMScheduler, {}),
        "UniPC": (UniPCMultistepScheduler, {}),
        "Euler a": (EulerAncestralDiscreteScheduler, {}),
        "DPM++ 2M": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    }
    _choice("sampler", sampler, SAMPLERS)
    cls, extra = kinds[sampler]
    return cls.from_config(config, **extra)


@dataclass
class _Pass:
    """One call of the pipeline: what to encode and which seeds to sample."""

    prompt: str
    seeds: list[int]
    offset: int  # progress steps done before this pass
    total: int  # progress steps of the whole request


class Engine:
    """Generation on one preset.

    `compile`: torch.compile the UNet and every ControlNet (compiled on their first call; off,
    with a notice in status(), where torch.compile cannot run). `channels_last`: weights in
    channels-last memory format (None: on CUDA only, where convolutions gain from it).
    `cpu_offload`: diffusers' model CPU offload, each model on the GPU only while it runs, for
    GPUs too small for the whole pipeline. `threads`: torch CPU threads (see cpu_threads).
    """

    def __init__(
        self,
        preset: Preset,
        reason: str = "",
        controlnet_cache_size: int = 3,
        prompt_cache_size: int = 64,
        threads: int | None = None,
        compile: bool = False,
        channels_last: bool | None = None,
        cpu_offload: bool = False,
    ):
        if cpu_offload and preset.device == "cpu":
            raise ValueError(
                "Model CPU offload moves each model between the CPU and a GPU while it runs; "
                "this engine runs on the CPU, so leave out --cpu-offload (or use --device cuda)."
            )
        if preset.sampler not in SAMPLERS:
            raise ValueError(
                f"Preset '{preset.name}' names the sampler {preset.sampler!r}; set \"sampler\" in "
                f"its preset.json to one of: {', '.join(SAMPLERS)}."
            )
        self.preset = preset
        self.reason = reason
        self.threads = threads or cpu_threads()
        self.compile = compile
        self.channels_last = preset.device == "cuda" if channels_last is None else channels_last
        self.cpu_offload = cpu_offload
        self.notices: list[str] = []  # engine-wide, e.g. why torch.compile is off
        self._compiling = False  # compile requested and possible (known once loaded)
        self._controlnets = LRUCache(controlnet_cache_size)
        self._embeddings = LRUCache(prompt_cache_size)
        self._schedulers: dict[str, object] = {}
        self._pipe = None
        self._captioner = None
        self._lock = threading.RLock()

    # ---- loading ------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def load(self) -> None:
        """Load the base pipeline now (generate() does it on first use).

        Raises ModelMissingError when its weights are not here."""
        with self._lock:
            if self._pipe is not None:
                return
            # Imported under the lock: two threads importing diffusers' lazy module at once (a
            # background load and the first request) can fail with "cannot import name".
            import torch
            from diffusers import StableDiffusionControlNetPipeline

            if self.preset.device == "cpu":
                torch.set_num_threads(self.threads)
            if self.compile:
                problem = compile_problem(self.preset.device)
                if problem:
                    self._notice(f"--compile is off: {problem}.")
                self._compiling = problem is None
            components = load_base(self.preset, move=not self.cpu_offload)
            components["unet"] = self._optimize(components["unet"])
            self._base_scheduler_config = components["scheduler"].config
            self._pipe = StableDiffusionControlNetPipeline(
                **components,
                controlnet=None,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
            self._pipe.set_progress_bar_config(disable=True)

    def load_in_background(self, conditions: Iterable[str] = ()) -> threading.Thread:
        """Load the base and these conditions' ControlNets in a daemon thread, so that a server
        answers while weights load. A failure is logged; generate() raises it again."""

        def load_all() -> None:
            try:
                self.load()
                for condition in conditions:
                    self.controlnet(condition)
            except Exception as error:  # generate() reports it to the user
                log.warning("background loading stopped: %s", error)

        thread = threading.Thread(target=load_all, name="cnet-engine-load", daemon=True)
        thread.start()
        return thread

    def _optimize(self, module):
        """Apply channels_last and torch.compile to a model just loaded (never per request)."""
        import torch

        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        if self._compiling:
            module = torch.compile(module)  # returns at once; compiles on the first call
        return module

    def _notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)
            log.warning("%s", text)

    @property
    def pipeline(self):
        """The one StableDiffusionControlNetPipeline (loaded on first access)."""
        self.load()
        return self._pipe

    def controlnet(self, condition: str):
        """The condition's ControlNetModel, from the cache or loaded now."""
        source = self.preset.controlnet_source(condition)
        self.load()  # decides the optimisations the ControlNet gets too
        device = "cpu" if self.cpu_offload else self.preset.device

        def load_now():
            label = f"The {condition} ControlNet of preset '{self.preset.name}'"
            model = load_controlnet(source, self.preset.base, self.preset.dtype, device, label)
            check_controlnet_fits(model.config, self._pipe.unet.config, label)
            return self._optimize(model)

        with self._lock:
            return self._controlnets.get(source, load_now)

    def _use_controlnet(self, condition: str) -> None:
        """Swap the condition's ControlNet into the pipeline (the base stays where it is)."""
        pipe = self.pipeline
        controlnet = self.controlnet(condition)
        if pipe.controlnet is not controlnet:
            pipe.controlnet = controlnet
            if self.cpu_offload:  # offload hooks are per model: the new one needs its own
                pipe.enable_model_cpu_offload(device=self.preset.device)

    def scheduler(self, sampler: str):
        if sampler not in self._schedulers:
            self.load()  # the base's scheduler config, which each sampler is made from
            self._schedulers[sampler] = make_scheduler(sampler, self._base_scheduler_config)
        return self._schedulers[sampler]

    def encode(self, text: str, name: str = "prompt"):
        """(embedding [1, tokens, width], notice or "") for `text`, the embedding cached per text;
        the notice, naming the text `name`, says when the text encoder reads only its start."""
        pipe = self.pipeline

        def encode_now():
            without_length_warnings(pipe)
            length = len(pipe.tokenizer(text).input_ids)
            embedding, _ = pipe.encode_prompt(text, pipe._execution_device, 1, False)
            return embedding, length

        embedding, length = self._embeddings.get(text, encode_now)
        limit = pipe.tokenizer.model_max_length
        if length <= limit:
            return embedding, ""
        return embedding, (
            f"The {name} is {length} tokens long; the text encoder reads the first {limit}, "
            "the rest is ignored."
        )

    def captioner(self):
        """The preset's BLIP captioner, loaded when the automatic prompt mode first runs."""
        if self._captioner is None:
            from cnet.captioner import CaptionerUnavailable, load_captioner

            if not self.preset.captioner:
                raise CaptionerUnavailable(
                    f"Preset '{self.preset.name}' has no captioner configured, so the automatic "
                    "prompt mode cannot run; choose another prompt mode."
                )
            self._captioner = load_captioner(self.preset.captioner, device=self.preset.device)
        return self._captioner

    # ---- generation ---------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Images for `request`. Raises ValueError (bad request), ModelMissingError,
        CaptionerUnavailable (auto mode) or GenerationCancelled."""
        import torch

        request.validate()
        request = replace(
            request,
            cfg=self.preset.cfg if request.cfg is None else request.cfg,
            sampler=request.sampler or self.preset.sampler,
            added_prompt=(
                self.preset.added_prompt if request.added_prompt is None else request.added_prompt
            ),
            negative_prompt=(
                self.preset.negative_prompt
                if request.negative_prompt is None
                else request.negative_prompt
            ),
        )
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            _check_cancel(cancel)
            pipe = self.pipeline
            self._use_controlnet(request.condition)
            pipe.scheduler = self.scheduler(request.sampler)
            control = self._control_map(request)
            seeds = [(request.seed + i) % (MAX_SEED + 1) for i in range(request.num_images)]
            caption, first_pass, first_prompt = None, [], ""
            notices: list[str] = []
            if request.eta and request.sampler != "DDIM":
                ignored = request.sampler
                notices.append(f"Eta is read by the DDIM sampler only; {ignored} ignores it.")
            if request.prompt_mode == "auto":
                self.captioner()  # fail before sampling when there is none
                first_seeds = seeds if request.keep_first_pass else seeds[:1]
                total = request.steps * 2
                first_prompt = positive_prompt("default", "", request.added_prompt)
                first_pass = self._sample(
                    request,
                    control,
                    _Pass(first_prompt, first_seeds, 0, total),
                    progress,
                    cancel,
                    notices,
                )
                caption = self._caption(first_pass[0])
                prompt = positive_prompt("user", caption, request.added_prompt)
                images = self._sample(
                    request,
                    control,
                    _Pass(prompt, seeds, request.steps, total),
                    progress,
                    cancel,
                    notices,
                )
            else:
                if request.prompt_mode == "user" and not request.prompt.strip():
                    notices.append(empty_prompt_notice(request.added_prompt))
                prompt = positive_prompt(request.prompt_mode, request.prompt, request.added_prompt)
                images = self._sample(
                    request,
                    control,
                    _Pass(prompt, seeds, 0, request.steps),
                    progress,
                    cancel,
                    notices,
                )
        metadata = self._metadata(request, control, prompt, caption, seeds, notices)
        metadata["seconds"] = round(time.perf_counter() - started, 3)
        for image, seed in zip(images, seeds, strict=True):
            png_info.attach(image, self.parameters_text(metadata, seed))
        if not request.keep_first_pass:
            first_pass = []
        first_metadata = {**metadata, "prompt": first_prompt, "prompt_mode": "default"}
        for image, seed in zip(first_pass, seeds, strict=False):
            png_info.attach(image, self.parameters_text(first_metadata, seed))
        return GenerationResult(images, control, prompt, caption, first_pass, seeds, metadata)

    def _control_map(self, request: GenerationRequest) -> np.ndarray:
        from cnet.imageio import resize_to_resolution

        multiple = 8 * self.pipeline.vae_scale_factor
        resolution = request.resolution or self.preset.resolution
        resolution = max(multiple, round(resolution / multiple) * multiple)
        check_long_side(*request.control_image.shape[:2], resolution)
        return resize_to_resolution(request.control_image, resolution, multiple)

    def _sample(
        self,
        request: GenerationRequest,
        control: np.ndarray,
        one_pass: _Pass,
        progress: ProgressFn | None,
        cancel: threading.Event | None,
        notices: list[str],
    ) -> list[Image.Image]:
        import torch

        _check_cancel(cancel)
        pipe = self.pipeline
        positive, notice = self.encode(one_pass.prompt)
        negative, negative_notice = self.encode(request.negative_prompt, "negative prompt")
        notices.extend(n for n in (notice, negative_notice) if n and n not in notices)
        device = pipe._execution_device  # the GPU, also while models wait on the CPU (offload)
        generator_device = "cpu" if device.type == "mps" else device
        generators = [torch.Generator(generator_device).manual_seed(s) for s in one_pass.seeds]

        def on_step_end(_pipe, step: int, _timestep, tensors: dict) -> dict:
            _check_cancel(cancel)
            if progress is not None:
                progress(one_pass.offset + step + 1, one_pass.total)
            return tensors

        height, width = control.shape[:2]
        # With the same text on both sides CFG's two halves agree, so it would double the work for
        # nothing (no prompt, empty negative). Guess mode keeps it: the control joins one half.
        same_text = one_pass.prompt == request.negative_prompt and not request.guess_mode
        with self._compile_errors():
            output = pipe(
                image=Image.fromarray(control),
                height=height,
                width=width,
                prompt_embeds=positive,
                negative_prompt_embeds=negative,
                num_images_per_prompt=len(one_pass.seeds),
                num_inference_steps=request.steps,
                guidance_scale=1.0 if same_text else request.cfg,
                eta=request.eta,
                generator=generators,
                controlnet_conditioning_scale=request.control_strength,
                guess_mode=request.guess_mode,
                control_guidance_start=request.control_start,
                control_guidance_end=request.control_end,
                callback_on_step_end=on_step_end,
            )
        return list(output.images)

    @contextlib.contextmanager
    def _compile_errors(self):
        """A torch.compile failure (on a model's first call) as a message saying what to do."""
        try:
            yield
        except Exception as error:
            if not self._compiling or not _is_compile_error(error):
                raise
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise RuntimeError(
                f"torch.compile failed ({type(error).__name__}: {first_line[:300]}). "
                "Start again without --compile."
            ) from error

    def _caption(self, image: Image.Image) -> str:
        from cnet.captioner import CaptionerUnavailable

        captioner = self.captioner()
        try:
            (caption,) = captioner([image])
        except Exception as error:  # the user gets a message, never a stack trace
            raise CaptionerUnavailable(
                f"Captioning the first-pass image failed: {error}"
            ) from error
        return caption.strip()

    def _metadata(self, request, control, prompt, caption, seeds, notices) -> dict:
        settings = asdict(request)
        del settings["control_image"], settings["prompt"], settings["keep_first_pass"]
        height, width = control.shape[:2]
        return {
            **settings,
            "prompt": prompt,
            "user_prompt": request.prompt,
            "caption": caption,
            "seeds": seeds,
            "width": width,
            "height": height,
            "preset": self.preset.name,
            "base": self.preset.base,
            "controlnet": self.preset.controlnet_source(request.condition),
            "device": self.preset.device,
            "dtype": self.preset.dtype,
            "notices": notices,
        }

    @staticmethod
    def parameters_text(metadata: Mapping, seed: int) -> str:
        """The A1111-style "parameters" text for one image of a result."""
        settings = {
            "Steps": metadata["steps"],
            "Sampler": metadata["sampler"],
            "CFG scale": metadata["cfg"],
            "Seed": seed,
            "Size": f"{metadata['width']}x{metadata['height']}",
            "Model": metadata["preset"],
        }
        if metadata["sampler"] == "DDIM":
            settings["Eta"] = metadata["eta"]
        settings["Prompt mode"] = metadata["prompt_mode"]
        controlnet = png_info.model_name(metadata["controlnet"])
        settings["ControlNet 0"] = (
            f"Module: {metadata['preprocessor'] or 'none'}, Model: {controlnet}, "
            f"Weight: {metadata['control_strength']}, Guidance Start: {metadata['control_start']}, "
            f"Guidance End: {metadata['control_end']}, Guess Mode: {metadata['guess_mode']}"
        )
        return png_info.format_parameters(metadata["prompt"], metadata["negative_prompt"], settings)

    # ---- reporting ----------------------------------------------------------------------------

    def check_weights(self, conditions: Sequence[str]) -> None:
        """Raise ModelMissingError naming the first of the base and these conditions'
        ControlNets that cannot load, with the command that fetches it (files only)."""
        parts = [(self.preset.base, "The base model", "base")]
        for condition in conditions:
            source = self.preset.controlnet_source(condition)
            parts.append((source, f"The {condition} ControlNet", "controlnet"))
        for source, what, kind in parts:
            if detail := missing_weights(source, kind):
                raise model_missing(source, what, detail, kind)

    def missing(self) -> list[str]:
        """What cannot load here, one short entry each (looks at files only, loads nothing)."""
        found = []
        if not self.loaded:
            detail = missing_weights(self.preset.base, "base")
            if detail:
                found.append(f"base ({detail})")
        for condition, source in self.preset.controlnets.items():
            if source not in self._controlnets and missing_weights(source, "controlnet"):
                found.append(f"{condition} ControlNet")
        return found

    def mismatched(self) -> list[str]:
        """The conditions whose ControlNet was made for another base, as far as the configs at
        hand tell (files only; loading refuses them in any case)."""
        unet = config_at_hand(self.preset.base, "unet/config.json")
        if unet is None:
            return []
        found = []
        for condition, source in self.preset.controlnets.items():
            if (config := config_at_hand(source)) is not None:
                differ = encoder_differences(config, unet)
            elif (shapes := safetensors_shapes(source)) is not None:
                differ = checkpoint_differences(shapes, unet)
            else:
                continue
            if differ:
                found.append(condition)
        return found

    def status(self) -> str:
        """One line: the summary, then the engine-wide notices."""
        return "; ".join([self.summary(), *self.notices])

    def summary(self) -> str:
        """Preset, device, dtype and speed options, and which weights are missing."""
        missing = self.missing()
        state = "loaded" if self.loaded else "loads on first use"
        if missing:
            state = "missing: " + ", ".join(missing)
        if mismatched := self.mismatched():
            state += "; ControlNets made for another base: " + ", ".join(mismatched)
        compiled = self._compiling if self.loaded else self.compile
        options = [self.preset.dtype] + [
            name
            for on, name in (
                (self.channels_last, "channels_last"),
                (compiled, "torch.compile"),
                (self.cpu_offload, "model CPU offload"),
            )
            if on
        ]
        return f"preset {self.preset.name} on {self.preset.device} ({', '.join(options)}), {state}"


def _is_compile_error(error: BaseException) -> bool:
    """Whether `error` comes from torch.compile (Dynamo tracing or Inductor code generation)."""
    return type(error).__module__.startswith(("torch._dynamo", "torch._inductor"))


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled("Generation cancelled.")


def load_engine(
    preset: str = "auto",
    model_dir: str | None = None,
    base: str | None = None,
    controlnets: Mapping[str, str] | None = None,
    device: str | None = None,
    controlnet_cache_size: int = 3,
    threads: int | None = None,
    compile: bool = False,
    channels_last: bool | None = None,
    cpu_offload: bool = False,
) -> Engine:
    """An engine for the preset. It loads no weights yet (see Engine.load), so it never raises
    for missing weights: Engine.status() says what is missing; generate() raises
    ModelMissingError. `threads`: torch CPU threads (default: see models.cpu_threads);
    `compile`, `channels_last`, `cpu_offload`: see Engine. Raises ValueError for a device torch
    cannot use here (as --device does; else torch would fail at the first image) and for
    cpu_offload on the CPU."""
    if device is not None:
        check_device(device)
    chosen, reason = resolve_preset(preset, model_dir, base, controlnets, device)
    return Engine(
        chosen,
        reason,
        controlnet_cache_size=controlnet_cache_size,
        threads=threads,
        compile=compile,
        channels_last=channels_last,
        cpu_offload=cpu_offload,
    )
