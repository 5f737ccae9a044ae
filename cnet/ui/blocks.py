"""The app's layout: one tab per condition of the registry, one shared shape for every tab.

A tab is built by `condition_tab` from a `Condition`; the engine settings of every tab come from
`settings_panel`. Adding a condition to the registry adds a tab; nothing here names a condition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import gradio as gr
import numpy as np

from cnet.conditions import CONDITIONS, Backend, Condition, Example, Param
from cnet.engine import (
    MAX_CFG,
    MAX_IMAGES,
    MAX_SEED,
    MIN_CFG,
    MIN_RESOLUTION,
    PROMPT_MODES,
    SAMPLERS,
    Engine,
    GenerationRequest,
)
from cnet.models import PAPER_CFG, PAPER_SAMPLER
from cnet.ui import api_docs
from cnet.ui import components as checked
from cnet.ui.events import AppEvents, backend_named, input_name, param_input_name

ROOT = Path(__file__).resolve().parents[2]
PROMPT_MODE_LABELS = {
    "none": "No prompt",
    "default": "Default prompt",
    "auto": "Automatic prompt (BLIP)",
    "user": "User prompt",
}
CANVAS_SIZE = 512
INTRO = (
    "# ControlNet Studio\n"
    "Stable Diffusion guided by a control map: pick a condition, draw or upload, check the map, "
    "Run. The base model stays locked; a trainable copy reads the map and joins it through "
    "zero convolutions ([ControlNet](https://arxiv.org/abs/2302.05543))."
)

# Small maps (the embedded model works at 128 px) are shown enlarged, pixels kept sharp.
CSS = """
.control-map img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
"""

Controls = dict[str, gr.components.Component]


def build_demo(engine: Engine, conditions: Mapping[str, Condition] | None = None) -> gr.Blocks:
    conditions = CONDITIONS if conditions is None else conditions
    events = AppEvents(engine)
    # Outputs (PNG files in Gradio's cache) are deleted a day after they are made, so the disk a
    # long-running server uses stays bounded.
    with gr.Blocks(
        title="ControlNet Studio", analytics_enabled=False, delete_cache=(3600, 86400)
    ) as demo:
        gr.Markdown(INTRO)
        status = gr.Markdown(model_status(engine), elem_id="model-status")

        # The engine's state and notices (e.g. why --compile is off) are known only once the
        # weights load, after the page is built: the line is redrawn on each page load and Run.
        def current_model_status() -> str:
            return model_status(engine)

        refresh_status = dict(
            fn=current_model_status,
            outputs=status,
            api_visibility="private",
            queue=False,
        )
        with gr.Tabs():
            for condition in conditions.values():
                with gr.Tab(condition.label, id=condition.key, elem_id=f"tab-{condition.key}"):
                    condition_tab(condition, engine, events).then(**refresh_status)
        demo.load(**refresh_status)
        # A page closed or reloaded mid-run would otherwise keep the worker to the run's end.
        demo.unload(events.end_session)
    return demo


def model_status(engine: Engine) -> str:
    """Which preset runs and why, its state, and the engine's notices (one line each); when its
    weights are missing, say so before anyone clicks Run."""
    text = f"**Model:** `{engine.preset.name}` preset — {engine.reason}  \n{engine.summary()}"
    for notice in engine.notices:
        text += f"  \n⚠️ {notice}"
    if engine.missing():
        text += (
            "  \n⚠️ **The model is missing**, so Run will tell you what to fetch. "
            "Control-map previews work without it."
        )
    if mismatched := engine.mismatched():
        text += (
            f"  \n⚠️ **ControlNets made for another base** (Run refuses them): "
            f"{', '.join(mismatched)}. Give ones trained on this base with "
            "`--controlnet CONDITION=PATH`."
        )
    return text


def condition_tab(condition: Condition, engine: Engine, events: AppEvents) -> gr.events.Dependency:
    """One tab's components and events; returns its Run event."""
    key = condition.key
    example_prompt = engine.preset.example_prompts.get(key, condition.example_prompt)
    with gr.Row():
        with gr.Column(scale=1):
            inputs = input_components(condition)
            with gr.Group():
                preprocessor = checked.Dropdown(
                    choices=[(backend_choice_label(b), b.name) for b in condition.backends],
                    value=condition.default_backend().name,
                    label="Preprocessor",
                    elem_id=f"{key}-preprocessor",
                )
                detect_resolution = checked.Slider(
                    64,  # a model trained at 64 px detects at 64
                    max(1024, engine.preset.resolution),
                    value=engine.preset.resolution,  # the size the model's maps were made at
                    step=64,
                    label="Preprocessor resolution",
                )
            params, backend_panels = preprocessor_params(condition)
            prompt_mode = checked.Radio(
                choices=[(PROMPT_MODE_LABELS[mode], mode) for mode in PROMPT_MODES],
                value="user",
                label="Prompt mode",
            )
            prompt = checked.Textbox(
                value=example_prompt,
                label="Prompt",
                info="Used in User prompt mode.",
                elem_id=f"{key}-prompt",
            )
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id=f"{key}-run")
                stop = gr.Button("Stop", variant="stop", elem_id=f"{key}-stop")
            settings = settings_panel(engine)
        with gr.Column(scale=1):
            control_map = gr.Image(
                label="Control map (preview)",
                height=320,
                type="numpy",
                format="png",
                interactive=False,
                elem_id=f"{key}-map",
                elem_classes=["control-map"],
            )
            gallery = gr.Gallery(
                label="Control map and samples",
                columns=2,
                object_fit="contain",  # a wide or tall result shown whole, not cropped square
                format="png",
                elem_id=f"{key}-gallery",
            )
            caption = gr.Textbox(
                label="Caption used (Automatic prompt mode)",
                interactive=False,
                elem_id=f"{key}-caption",
            )
    own = engine.preset.examples.get(key, ())
    examples(condition, own, inputs, preprocessor, prompt, example_prompt)

    def show_backend(name: str) -> list:
        chosen = backend_named(condition, name)
        panels = [gr.Column(visible=b.name == chosen.name) for b in condition.backends]
        return panels + [gr.update(visible=n == input_name(chosen)) for n in inputs]

    preprocessor.change(
        show_backend,
        inputs=preprocessor,
        outputs=[*backend_panels, *inputs.values()],
        api_visibility="private",
        queue=False,
    )
    map_inputs = dict(
        **inputs,
        preprocessor=preprocessor,
        detect_resolution=detect_resolution,
        resolution=settings["resolution"],
        **params,
    )
    gr.on(
        triggers=[],  # an API endpoint only: the browser's preview is the quieter event below
        fn=events.detect_fn(condition),
        inputs_kwargs=map_inputs,
        outputs=control_map,
        api_name=f"detect_{key}",
        api_description=api_docs.detect_description(condition),
        concurrency_id="detect",
    )
    # `.change` also fires on arrow keys and typed digits, which `.release` misses.
    preview = gr.on(
        triggers=[component.change for component in map_inputs.values()],
        fn=events.preview_fn(condition, map_inputs),
        inputs_kwargs=map_inputs,
        outputs=control_map,
        preprocess=False,
        api_visibility="private",
        show_progress="minimal",
        trigger_mode="always_last",
        concurrency_id="detect",
    )
    # A map that could not be made for the inputs shown must not stay as if it had been.
    preview.failure(no_map, outputs=control_map, api_visibility="private", queue=False)
    generation = gr.on(
        triggers=[run.click, prompt.submit],
        fn=events.generate_fn(condition),
        inputs_kwargs=dict(map_inputs, prompt_mode=prompt_mode, prompt=prompt, **settings),
        outputs=[gallery, caption, settings["seed"]],
        api_name=key,
        api_description=api_docs.generate_description(condition),
        concurrency_id="generate",
    )
    # Queued, never waiting (no limit): a message is shown only from a queued event.
    stop.click(
        events.stop_fn(condition),
        cancels=[generation],
        api_name=f"stop_{key}",
        api_description=api_docs.stop_description(condition),
        concurrency_limit=None,
    )
    return generation


def no_map() -> None:
    return None


def input_components(condition: Condition) -> Controls:
    """The tab's inputs by API name: "image" (a picture, or the sketch pad), and "openpose_json"
    where a backend reads keypoints; only the chosen backend's input is shown."""
    shown = input_name(condition.default_backend())
    names = {input_name(backend) for backend in condition.backends}
    inputs: Controls = {"image": input_image(condition, visible=shown == "image")}
    if "openpose_json" in names:
        inputs["openpose_json"] = checked.File(
            label="OpenPose JSON keypoints",
            file_types=[".json"],
            type="filepath",
            visible=shown == "openpose_json",
            elem_id=f"{condition.key}-keypoints",
        )
    return inputs


def input_image(condition: Condition, visible: bool) -> gr.components.Component:
    if condition.sketch:
        # A white sheet to draw on, and an empty strokes layer: loading the layer is the change
        # Gradio's editor skips at start, so the user's first stroke already updates the preview.
        paper = np.full((CANVAS_SIZE, CANVAS_SIZE, 4), 255, dtype=np.uint8)
        ink = np.zeros((CANVAS_SIZE, CANVAS_SIZE, 4), dtype=np.uint8)
        return checked.ImageEditor(
            value={"background": paper, "layers": [ink], "composite": None},
            label="Draw a scribble (or upload a drawing)",
            type="numpy",
            image_mode="RGBA",
            sources=("upload", "clipboard"),
            brush=gr.Brush(default_size=8, colors=["#000000"], color_mode="fixed"),
            eraser=gr.Eraser(default_size=16),
            canvas_size=(CANVAS_SIZE, CANVAS_SIZE),
            layers=False,
            transforms=(),
            visible=visible,
            elem_id=f"{condition.key}-input",
        )
    return checked.Image(
        label="Input image",
        type="filepath",
        image_mode=None,  # the file as uploaded: cnet.imageio handles modes, bit depth and EXIF
        sources=("upload", "clipboard"),
        visible=visible,
        elem_id=f"{condition.key}-input",
    )


def backend_choice_label(backend: Backend) -> str:
    return backend.label if backend.availability().ok else f"{backend.label} (unavailable)"


def preprocessor_params(condition: Condition) -> tuple[Controls, list[gr.Column]]:
    """Every backend's parameter controls, each backend in a panel shown only when it is chosen."""
    controls: Controls = {}
    panels = []
    default = condition.default_backend().name
    for backend in condition.backends:
        with gr.Column(visible=backend.name == default) as panel:
            availability = backend.availability()
            if not availability.ok:
                gr.Markdown(f"**{backend.label} is not available.** {availability.reason}")
            for param in backend.params:
                controls[param_input_name(backend, param.name)] = param_control(param)
        panels.append(panel)
    return controls, panels


def param_control(param: Param) -> gr.components.Component:
    if param.choices:
        return checked.Dropdown(list(param.choices), value=param.default, label=param.label)
    if isinstance(param.default, bool):
        return checked.Checkbox(value=param.default, label=param.label)
    if isinstance(param.default, str):
        return checked.Textbox(value=param.default, label=param.label)
    integer = isinstance(param.default, int)
    if param.minimum is not None and param.maximum is not None:
        step = param.step if param.step is not None else (1 if integer else 0.01)
        return checked.Slider(
            param.minimum, param.maximum, value=param.default, step=step, label=param.label
        )
    return checked.Number(value=param.default, precision=0 if integer else None, label=param.label)


def cfg_info(cfg: float) -> str | None:
    if cfg == PAPER_CFG:
        return None
    return f"This model's default is {cfg:g}; the paper's {PAPER_CFG} suits Stable Diffusion 1.5."


def sampler_info(sampler: str) -> str | None:
    if sampler == PAPER_SAMPLER:
        return None
    return f"This model's default is {sampler}; Stable Diffusion 1.5 starts from {PAPER_SAMPLER}."


def settings_panel(engine: Engine) -> Controls:
    """The engine settings of one tab, defaults taken from `GenerationRequest` itself."""
    defaults = {
        field.name: field.default
        for field in dataclasses.fields(GenerationRequest)
        if field.default is not dataclasses.MISSING
    }
    resolution = engine.preset.resolution
    with gr.Accordion("Advanced", open=False):
        controls: Controls = dict(
            num_images=checked.Slider(
                1, MAX_IMAGES, value=defaults["num_images"], step=1, label="Images"
            ),
            resolution=checked.Slider(
                MIN_RESOLUTION,
                max(1024, resolution),
                value=resolution,
                step=8,
                label="Resolution (short side)",
                info="Rounded to the model's latent grid: a multiple of 64 for SD 1.5 and "
                "the embedded model.",
            ),
            control_strength=checked.Slider(
                0.0, 2.0, value=defaults["control_strength"], step=0.05, label="Control strength"
            ),
            guess_mode=checked.Checkbox(
                value=defaults["guess_mode"],
                label="Guess mode",
                info="The ControlNet reads the map without the prompt (use with No prompt).",
            ),
            control_start=checked.Slider(
                0.0, 1.0, value=defaults["control_start"], step=0.01, label="Control start"
            ),
            control_end=checked.Slider(
                0.0, 1.0, value=defaults["control_end"], step=0.01, label="Control end"
            ),
            steps=checked.Slider(1, 100, value=defaults["steps"], step=1, label="Steps"),
            cfg=checked.Slider(
                MIN_CFG,
                MAX_CFG,
                value=engine.preset.cfg,
                step=0.1,
                label="Guidance scale (CFG)",
                info=cfg_info(engine.preset.cfg),
            ),
            sampler=checked.Dropdown(
                list(SAMPLERS),
                value=engine.preset.sampler,
                label="Sampler",
                info=sampler_info(engine.preset.sampler),
            ),
            eta=checked.Slider(0.0, 1.0, value=defaults["eta"], step=0.01, label="Eta (DDIM)"),
        )
        with gr.Row():
            controls["seed"] = checked.Number(
                value=defaults["seed"], precision=0, minimum=0, maximum=MAX_SEED, label="Seed"
            )
            controls["randomize_seed"] = checked.Checkbox(value=True, label="Randomize seed")
        controls["added_prompt"] = checked.Textbox(
            value=engine.preset.added_prompt, label="Added prompt"
        )
        controls["negative_prompt"] = checked.Textbox(
            value=engine.preset.negative_prompt, label="Negative prompt"
        )
    return controls


def examples(
    condition: Condition,
    own: Sequence[Example],
    inputs: Controls,
    preprocessor: gr.Dropdown,
    prompt: gr.Textbox,
    example_prompt: str,
) -> None:
    """The preset's `own` example inputs for this tab if it has any, else the registry's (our own
    drawn or rendered ones in assets/examples/), with `example_prompt`; each goes to the backend it
    names, or the first that runs here and reads its kind of file. An example whose backend cannot
    run here is left out."""
    rows = []
    for example in own or condition.examples:
        path = ROOT / example.path
        if not path.is_file():
            continue
        readers = condition.readers(path, sketch_pad=condition.sketch)
        backend = next((b for b in readers if example.backend in (None, b.name)), None)
        kind = None if backend is None else input_name(backend)
        if kind in inputs:
            values = [str(path) if name == kind else None for name in inputs]
            rows.append([*values, backend.name, example_prompt])
    if rows:
        gr.Examples(
            examples=rows,
            inputs=[*inputs.values(), preprocessor, prompt],
            cache_examples=False,
            label="Examples",
        )
