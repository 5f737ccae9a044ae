"""The app without a server: layout built from the registry, event helpers, command line."""

from __future__ import annotations

import dataclasses
import importlib.util
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import cnet.engine
from cnet import models
from cnet.conditions import CONDITIONS, Availability, Backend, Param
from cnet.engine import MAX_IMAGES, MAX_SEED, SAMPLERS, GenerationRequest, load_engine
from cnet.imageio import ImageInputError
from cnet.ui import build_demo
from cnet.ui import components as checked
from cnet.ui.blocks import backend_choice_label, param_control, settings_panel
from cnet.ui.events import (
    NO_INPUT,
    AppEvents,
    ControlMapCache,
    RunningJobs,
    backend_params,
    detector_input,
    fingerprint,
    user_errors,
)

ROOT = Path(__file__).resolve().parents[1]


def load_app_module():
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    return load_engine(model_dir=str(tmp_path_factory.mktemp("no-model")))


@pytest.fixture(scope="module")
def demo(engine) -> gr.Blocks:
    return build_demo(engine)


def test_one_tab_per_condition_in_registry_order(demo):
    tabs = [block for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    assert [tab.label for tab in tabs] == [condition.label for condition in CONDITIONS.values()]


def test_galleries_show_wide_and_tall_results_whole(demo):
    galleries = [block for block in demo.blocks.values() if isinstance(block, gr.Gallery)]
    assert len(galleries) == len(CONDITIONS)
    assert {gallery.object_fit for gallery in galleries} == {"contain"}


def test_every_public_event_has_its_api_name(demo):
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    expected = set()
    for key in CONDITIONS:
        expected |= {key, f"detect_{key}", f"stop_{key}"}
    assert public == expected


def test_the_api_page_describes_each_endpoint_from_the_registry(demo):
    described = {
        name: endpoint["description"]
        for name, endpoint in demo.get_api_info()["named_endpoints"].items()
    }
    for key, condition in CONDITIONS.items():
        for name in (f"/detect_{key}", f"/{key}"):
            assert condition.label in described[name]
            for backend in condition.backends:
                assert f'"{backend.name}"' in described[name]
            assert ('"layers": [handle_file(' in described[name]) == condition.sketch
        assert f"/{key} request" in described[f"/stop_{key}"]
    assert (
        'Each reads one input: "openpose" image, "keypoints_json" openpose_json'
        in (described["/pose"])
    )
    assert 'prompt_mode is one of "none", "default", "auto", "user"' in described["/canny"]
    # The browser's message for an empty sketch pad leaves the API's format to the API page.
    assert "API" not in NO_INPUT["sketch"]


def test_generation_endpoint_takes_every_setting_by_name(demo):
    generate = next(fn for fn in demo.fns.values() if fn.api_name == "canny")
    names = set(generate.input_parameter_names)
    settings = {"num_images", "resolution", "control_strength", "guess_mode", "control_start"}
    settings |= {"control_end", "steps", "cfg", "sampler", "eta", "seed", "added_prompt"}
    settings |= {"negative_prompt", "prompt_mode", "prompt", "randomize_seed", "preprocessor"}
    settings |= {"image", "canny_low_threshold", "canny_high_threshold"}
    assert settings <= names


def test_settings_panel_defaults_are_the_request_defaults(engine):
    defaults = {
        field.name: field.default
        for field in dataclasses.fields(GenerationRequest)
        if field.default is not dataclasses.MISSING
    }
    with gr.Blocks():
        controls = settings_panel(engine)
    for name in ("num_images", "control_strength", "guess_mode", "control_start", "control_end"):
        assert controls[name].value == defaults[name], name
    assert controls["steps"].value == 20 and controls["cfg"].value == 9.0  # the paper's
    assert controls["cfg"].info is None
    assert controls["sampler"].value == "DDPM" and controls["sampler"].info is None
    assert [value for _, value in controls["sampler"].choices] == list(SAMPLERS)
    assert controls["resolution"].value == engine.preset.resolution
    assert (controls["num_images"].minimum, controls["num_images"].maximum) == (1, 12)
    assert (controls["control_strength"].minimum, controls["control_strength"].maximum) == (0, 2)


def test_cfg_and_sampler_start_at_the_presets_own(engine, monkeypatch):
    own = dataclasses.replace(engine.preset, cfg=2.0, sampler="DDIM")
    monkeypatch.setattr(engine, "preset", own)
    with gr.Blocks():
        controls = settings_panel(engine)
    assert controls["cfg"].value == 2.0
    assert "2" in controls["cfg"].info and "9.0" in controls["cfg"].info
    assert controls["sampler"].value == "DDIM"
    assert "DDIM" in controls["sampler"].info and "DDPM" in controls["sampler"].info


def test_the_added_and_negative_prompts_start_as_the_presets(engine, monkeypatch):
    with gr.Blocks():
        paper = settings_panel(engine)
    assert paper["added_prompt"].value == "best quality, extremely detailed"
    assert paper["negative_prompt"].value.startswith("longbody, lowres")
    own = dataclasses.replace(engine.preset, added_prompt="", negative_prompt="dull")
    monkeypatch.setattr(engine, "preset", own)
    with gr.Blocks():
        controls = settings_panel(engine)
    assert (controls["added_prompt"].value, controls["negative_prompt"].value) == ("", "dull")


def test_each_tab_and_its_examples_start_with_the_presets_prompt_else_the_registrys(
    engine, monkeypatch
):
    own = dataclasses.replace(
        engine.preset, example_prompts={"canny": "a red cube on a white background"}
    )
    monkeypatch.setattr(engine, "preset", own)
    demo = build_demo(engine)
    for key, condition in CONDITIONS.items():
        prompt = next(b for b in demo.blocks.values() if b.elem_id == f"{key}-prompt")
        assert prompt.value == own.example_prompts.get(key, condition.example_prompt), key
    rows = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset)]
    prompts = {row[-1] for dataset in rows for row in dataset.samples}
    assert "a red cube on a white background" in prompts
    assert CONDITIONS["canny"].example_prompt not in prompts
    assert CONDITIONS["scribble"].example_prompt in prompts


def test_examples_go_to_the_backend_they_name_and_the_presets_replace_the_registrys(
    engine, monkeypatch, tmp_path
):
    from cnet.conditions import Example

    depth_map = tmp_path / "depth.png"
    depth_map.write_bytes((ROOT / "assets/examples/depth.png").read_bytes())
    own = dataclasses.replace(
        engine.preset, resolution=128, examples={"depth": (Example(str(depth_map), "none"),)}
    )
    monkeypatch.setattr(engine, "preset", own)
    # as on a machine with every annotator's weights: a map must still go to its reader
    monkeypatch.setattr(Backend, "availability", lambda self: Availability(True))
    demo = build_demo(engine)

    def example_rows(key: str) -> list[list]:
        tab = next(b for b in demo.blocks.values() if b.elem_id == f"{key}-preprocessor")
        return [
            row
            for dataset in demo.blocks.values()
            if isinstance(dataset, gr.Dataset) and tab in dataset._components
            for row in dataset.samples
        ]

    (depth_row,) = example_rows("depth")
    assert depth_row[-2] == "none" and depth_row[0]["path"].endswith("depth.png")
    assert [row[-2] for row in example_rows("normal")] == ["depth_map"]  # not NormalBae
    assert [row[-2] for row in example_rows("seg")] == ["palette"]  # not UperNet
    assert [row[-2] for row in example_rows("canny")] == ["canny"]  # a photo: the default
    sliders = [
        b for b in demo.blocks.values() if getattr(b, "label", "") == "Preprocessor resolution"
    ]
    assert len(sliders) == len(CONDITIONS) and {b.value for b in sliders} == {128}


def test_param_controls_follow_the_spec():
    with gr.Blocks():
        slider = param_control(Param("low", "Low", 100, 1, 255, 1))
        checkbox = param_control(Param("hands", "Hands", False))
        dropdown = param_control(Param("mode", "Mode", "a", choices=("a", "b")))
    assert isinstance(slider, gr.Slider)
    assert (slider.minimum, slider.maximum, slider.step, slider.value) == (1, 255, 1, 100)
    assert isinstance(checkbox, gr.Checkbox) and checkbox.value is False
    assert isinstance(dropdown, gr.Dropdown) and dropdown.value == "a"


def test_unavailable_backend_is_marked_in_the_choice():
    missing = Backend("x", "Needs a library", package=("no_such_module_here", "no-such-pkg"))
    assert backend_choice_label(missing) == "Needs a library (unavailable)"
    assert backend_choice_label(Backend("none", "None")) == "None"


def test_backend_params_take_only_the_chosen_backends_values():
    canny = CONDITIONS["canny"].backend("canny")
    values = {"canny_low_threshold": 10, "other_low_threshold": 99}
    assert backend_params(canny, values) == {"low_threshold": 10, "high_threshold": 200}


def sketch_pad(strokes: bool, background: int | None = 255) -> dict:
    paper = None if background is None else np.full((32, 32, 4), background, np.uint8)
    ink = np.zeros((32, 32, 4), np.uint8)
    if strokes:
        ink[10:20, 10, 3] = 255
    return {"background": paper, "layers": [ink], "composite": paper}


def test_sketch_pad_input_per_backend():
    scribble = CONDITIONS["scribble"]
    canvas, drawing = scribble.backend("canvas"), scribble.backend("drawing")
    assert detector_input(canvas, {"image": sketch_pad(strokes=False)}) is None
    assert detector_input(canvas, {"image": sketch_pad(False, background=None)}) is None
    drawn = sketch_pad(strokes=True)
    assert detector_input(canvas, {"image": drawn}) is drawn
    assert detector_input(drawing, {"image": drawn}) is drawn["composite"]


def test_keypoints_backend_reads_the_keypoints_input():
    keypoints = CONDITIONS["pose"].backend("keypoints_json")
    none = CONDITIONS["pose"].backend("none")
    inputs = {"image": "photo.png", "openpose_json": "pose.json"}
    assert detector_input(keypoints, inputs) == "pose.json"
    assert detector_input(none, inputs) == "photo.png"


def test_fingerprint_follows_content(tmp_path: Path):
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(b"same")
    second.write_bytes(b"same")
    assert fingerprint(("canny", str(first))) == fingerprint(("canny", str(second)))
    second.write_bytes(b"other")
    assert fingerprint(("canny", str(first))) != fingerprint(("canny", str(second)))
    assert fingerprint(sketch_pad(True)) != fingerprint(sketch_pad(False))


def test_control_map_cache_reuses_and_evicts():
    cache, made = ControlMapCache(size=2), []

    def make(name: str):
        return lambda: made.append(name) or np.zeros(1)

    for name in ("a", "a", "b", "c", "a"):
        cache.get_or_make(name, make(name))
    assert made == ["a", "b", "c", "a"]


def test_stop_cancels_only_that_sessions_runs_in_that_tab():
    jobs = RunningJobs()
    with (
        jobs.start("alice", "canny") as canny,
        jobs.start("alice", "canny") as again,  # --concurrency 2: both are stopped
        jobs.start("alice", "hough") as hough,
        jobs.start("bob", "canny") as bob,
    ):
        assert jobs.cancel("alice", "canny")
        assert canny.is_set() and again.is_set()
        assert not hough.is_set() and not bob.is_set()
    assert not jobs.cancel("alice", "canny")
    with jobs.start("alice", "canny") as canny, jobs.start("alice", "hough") as hough:
        with jobs.start("bob", "canny") as bob:
            assert jobs.cancel("alice")  # the page closed: every tab of that session
        assert canny.is_set() and hough.is_set() and not bob.is_set()


def test_stop_says_whether_it_stopped_a_run_from_a_queued_event(demo, monkeypatch):
    """Gradio shows a message only from a queued event; Stop's must not wait in the queue."""
    event = next(fn for fn in demo.fns.values() if fn.name == "stop_canny")
    assert event.queue is not False and event.concurrency_limit is None
    shown = []
    monkeypatch.setattr(gr, "Info", shown.append)
    events = AppEvents(load_engine(model_dir="unused"))
    stop = events.stop_fn(CONDITIONS["canny"])
    alice = gr.Request(session_hash="alice")
    with events.jobs.start("alice", "canny") as running:
        stop(alice)
    stop(alice)
    assert running.is_set() and shown == ["Stopped.", "Nothing of yours is sampling in this tab."]


def test_closing_the_page_stops_that_sessions_runs(demo):
    unload = next(fn for fn in demo.fns.values() if fn.name == "end_session")
    with unload.fn.__self__.jobs.start("alice", "depth") as running:
        unload.fn(gr.Request(session_hash="bob"))
        assert not running.is_set()
        unload.fn(gr.Request(session_hash="alice"))
        assert running.is_set()


def requested(demo: gr.Blocks, monkeypatch: pytest.MonkeyPatch, key: str, **payloads):
    """The GenerationRequest a tab's Run makes of its defaults and `payloads` (its control map
    faked: detectors may lack their weights here)."""
    event = next(fn for fn in demo.fns.values() if fn.name == key)
    events = next(fn for fn in demo.fns.values() if fn.name == "end_session").fn.__self__
    made = np.zeros((64, 64, 3), np.uint8)
    monkeypatch.setattr(events, "control_map", lambda *args: (made, []))
    asked = []

    def generate(request, **kwargs):
        asked.append(request)
        raise KeyError("stop here")

    monkeypatch.setattr(events.engine, "generate", generate)
    given = {
        name: getattr(component, "value", None)
        for name, component in zip(event.input_parameter_names, event.inputs, strict=True)
    }
    with pytest.raises(gr.Error):
        event.fn(**(given | payloads), request=gr.Request(session_hash="alice"))
    return asked[0]


def test_run_names_the_preprocessor_as_a1111_does_for_its_settings(demo, monkeypatch):
    chosen = {"preprocessor": "openpose", "openpose_include_hands": True, "prompt": "a person"}
    assert requested(demo, monkeypatch, "pose", **chosen).preprocessor == "openpose_hand"


def test_a_random_seed_leaves_room_for_every_images_seed(demo, monkeypatch):
    monkeypatch.setattr(cnet.engine.random, "randint", lambda low, high: high)
    seed = requested(demo, monkeypatch, "canny", randomize_seed=True, prompt="x").seed
    assert seed + MAX_IMAGES - 1 <= MAX_SEED and seed == cnet.engine.random_seed()


class Preview:
    """A tab's preview event as the browser sends it: raw payloads, one session; the map it
    answers (None: cleared, SKIP: left as it was) and the notices shown."""

    def __init__(self, demo: gr.Blocks, key: str, monkeypatch: pytest.MonkeyPatch):
        event = next(fn for fn in demo.fns.values() if fn.name == f"preview_{key}")
        self.fn = event.fn
        self.components = dict(zip(event.input_parameter_names, event.inputs, strict=True))
        self.payloads = {
            name: component.value
            if isinstance(component, (gr.Slider, gr.Number, gr.Dropdown))
            else None
            for name, component in self.components.items()
        }
        self.notices: list[str] = []
        monkeypatch.setattr("cnet.ui.events.show_notices", self.notices.extend)
        self.session = f"browser-{uuid.uuid4().hex}"  # a page just loaded (id() is reused)

    def change(self, name: str, payload) -> object:
        if isinstance(payload, Path):
            payload = {"path": str(payload), "meta": {"_type": "gradio.FileData"}}
        self.payloads[name] = payload
        return self.fn(gr.Request(session_hash=self.session), **self.payloads)


SKIP = gr.skip()


def photo(path: Path, size: tuple[int, int] = (96, 64)) -> Path:
    picture = np.zeros((size[1], size[0], 3), np.uint8)
    picture[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = 255
    Image.fromarray(picture).save(path)
    return path


def test_preview_waits_while_a_number_is_typed_and_refuses_a_fraction(demo, monkeypatch, tmp_path):
    preview = Preview(demo, "canny", monkeypatch)
    assert preview.change("resolution", 128) is None  # no input yet: no map
    assert preview.change("image", photo(tmp_path / "a.png")).shape == (128, 192, 3)
    assert preview.change("resolution", None) == SKIP  # emptied, a number on its way
    assert preview.change("resolution", 2) == SKIP  # the "2" of "256"
    assert preview.change("resolution", 256).shape == (256, 384, 3)
    with pytest.raises(gr.Error, match="Low threshold: 50.5 is not a whole number"):
        preview.change("canny_low_threshold", 50.5)


def test_a_photo_given_as_a_segmentation_map_is_previewed_with_a_notice(demo, monkeypatch):
    preview = Preview(demo, "seg", monkeypatch)
    preview.change("preprocessor", "palette")
    assert preview.change("image", ROOT / "assets" / "examples" / "seg.png") is not None
    assert preview.notices == []
    assert preview.change("image", ROOT / "assets" / "examples" / "scene.jpg") is not None
    assert len(preview.notices) == 1 and "looks like a photo" in preview.notices[0]


def test_preview_names_a_bad_value_left_in_a_box_when_another_input_changes(
    demo, monkeypatch, tmp_path
):
    preview = Preview(demo, "canny", monkeypatch)
    assert preview.change("resolution", 2) == SKIP
    with pytest.raises(gr.Error, match="Resolution .short side.: 2 is out of range"):
        preview.change("image", photo(tmp_path / "a.png"))


def test_preview_reads_only_the_chosen_preprocessors_controls(demo, monkeypatch, tmp_path):
    preview = Preview(demo, "scribble", monkeypatch)
    preview.change("resolution", 128)
    preview.change("preprocessor", "drawing")
    assert preview.change("fake_scribble_edge_strength", 7.5) == SKIP  # hidden: nothing changes
    assert preview.change("image", photo(tmp_path / "a.png")).shape == (128, 192, 3)
    with pytest.raises(gr.Error, match="Edge threshold: 7.5 is out of range"):
        preview.change("preprocessor", "fake_scribble")


def test_preview_answers_a_repeated_request_once_and_tells_an_inputs_notices_once(
    demo, monkeypatch, tmp_path
):
    preview = Preview(demo, "canny", monkeypatch)
    big = photo(tmp_path / "big.png", size=(4800, 4000))
    assert preview.change("image", big) is not SKIP
    assert preview.change("image", big) == SKIP  # Gradio fires .change twice on a replace
    assert len(preview.notices) == 1 and "scaled down" in preview.notices[0]
    assert preview.change("canny_low_threshold", 101) is not SKIP
    assert preview.change("image", photo(tmp_path / "small.png")) is not SKIP
    assert preview.change("image", big) is not SKIP
    assert len(preview.notices) == 2


def test_a_map_too_long_for_the_engine_is_refused_when_it_is_made(engine, tmp_path):
    events = AppEvents(engine)
    thin = photo(tmp_path / "thin.png", size=(3000, 10))
    with pytest.raises(gr.Error, match="38400 px long; the limit is 2048"):
        events.tab_map(CONDITIONS["canny"], True, "canny", 128, 128, image=str(thin))
    # 4:1 at resolution 520 is made (and rendered) at 512 x 2048, within the limit.
    wide = photo(tmp_path / "wide.png", size=(400, 100))
    made, _ = events.tab_map(CONDITIONS["canny"], True, "canny", 128, 520, image=str(wide))
    assert made.shape[:2] == (512, 2048)


def test_a_payload_of_the_wrong_shape_names_the_control_and_what_it_takes():
    image = checked.Image(label="Input image", type="filepath")
    with pytest.raises(gr.Error, match="Input image: expected an image file, handle_file"):
        image.data_model.model_validate("not a file")
    with pytest.raises(gr.Error, match="Input image: expected an image file"):
        image.data_model.model_validate({"url": "x", "meta": {"_type": "gradio.FileData"}})
    assert image.api_info() == gr.Image(type="filepath").api_info()
    pad = checked.ImageEditor(label="Sketch", type="numpy")
    bare = {"path": "drawing.png", "meta": {"_type": "gradio.FileData"}}
    assert pad.data_model.model_validate(bare).background.path == "drawing.png"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ImageInputError("photo.png is not a readable image."), "photo.png is not a readable"),
        (ValueError("steps must be between 1 and 150"), "Generation failed: steps must"),
        (KeyError("boom"), "server log"),
    ],
)
def test_failures_reach_the_user_as_short_messages(error, message):
    with pytest.raises(gr.Error, match=message) as raised, user_errors("Generation"):
        raise error
    assert raised.value.print_exception is False  # no traceback in the server log for them


def test_command_line(monkeypatch, capsys):
    app = load_app_module()
    args = app.parse_args(["--controlnet", "canny=/w/canny", "--controlnet", "depth=org/depth"])
    assert args.preset == "auto" and args.concurrency == 1 and args.max_queue > 0
    assert dict(args.controlnet) == {"canny": "/w/canny", "depth": "org/depth"}
    with pytest.raises(SystemExit):
        app.parse_args(["--controlnet", "canny"])
    assert app.parse_args(["--device", "cpu"]).device == "cpu"
    monkeypatch.setattr(models, "gpu_driver_present", lambda: False)
    with pytest.raises(SystemExit):
        app.parse_args(["--device", "cuda"])
    assert "no cuda device on this machine; leave --device out" in capsys.readouterr().err
    settings = app.model_settings(app.parse_args(["--base", "org/sd", "--device", "cpu"]))
    assert settings == {
        "preset": "auto",
        "model_dir": None,
        "base": "org/sd",
        "controlnets": None,
        "device": "cpu",
    }
