"""End to end: app.py serves the tiny model; every tab's endpoints answer through gradio_client."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from app_server import answers, api_client, serve_app
from PIL import Image, ImageDraw

from cnet.conditions import CONDITIONS

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

FAST = dict(steps=2, resolution=64, num_images=2, randomize_seed=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A picture every image backend finds something in, a drawing, and OpenPose keypoints."""
    folder = tmp_path_factory.mktemp("inputs")
    ramp = np.linspace(40, 220, 256, dtype=np.uint8)
    scene = Image.fromarray(np.dstack([np.tile(ramp, (256, 1))] * 3))
    draw = ImageDraw.Draw(scene)
    draw.ellipse((40, 40, 150, 150), fill=(200, 30, 30))
    draw.rectangle((120, 130, 230, 230), fill=(30, 60, 200))
    draw.line((10, 240, 250, 200), fill=(250, 250, 250), width=4)
    scene.save(folder / "scene.png")

    Image.new("RGBA", (256, 256), (255, 255, 255, 255)).save(folder / "paper.png")
    ink = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(ink).line((30, 200, 128, 40, 226, 200), fill=(0, 0, 0, 255), width=6)
    ink.save(folder / "ink.png")

    skeleton = [(128, 40), (128, 80), (98, 80), (88, 120), (84, 160), (158, 80), (168, 120)]
    skeleton += [(172, 160), (110, 160), (104, 210), (100, 250), (146, 160), (152, 210)]
    skeleton += [(156, 250), (120, 34), (136, 34), (112, 38), (144, 38)]
    keypoints = [value for x, y in skeleton for value in (x, y, 1.0)]
    pose = {"canvas_width": 256, "canvas_height": 256, "people": [{"pose_keypoints_2d": keypoints}]}
    (folder / "pose.json").write_text(json.dumps(pose))
    return {
        "scene": folder / "scene.png",
        "paper": folder / "paper.png",
        "ink": folder / "ink.png",
        "pose": folder / "pose.json",
    }


def tab_inputs(key: str, inputs: dict[str, Path]) -> dict:
    if CONDITIONS[key].sketch:
        layers = [handle_file(inputs["ink"])]
        return {"image": {"background": handle_file(inputs["paper"]), "layers": layers}}
    found = {"image": handle_file(inputs["scene"])}
    if any(backend.accepts == "openpose_json" for backend in CONDITIONS[key].backends):
        found["openpose_json"] = handle_file(inputs["pose"])
    return found


def read(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("app")
    with serve_app("--model-dir", str(tiny_model_dir), log_path=logs / "app.log") as url:
        yield api_client(url, download_files=str(logs))


@pytest.fixture(scope="module")
def client_without_model(tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("app-no-model")
    empty = tmp_path_factory.mktemp("no-model")
    with serve_app("--model-dir", str(empty), log_path=logs / "app.log") as url:
        yield api_client(url, download_files=str(logs))


def test_every_tab_has_its_endpoints(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    for key in CONDITIONS:
        assert {f"/{key}", f"/detect_{key}"} <= names


@pytest.mark.parametrize("key", list(CONDITIONS))
def test_detect_then_generate(client, inputs, key):
    given = tab_inputs(key, inputs)
    control_map = read(client.predict(**given, resolution=64, api_name=f"/detect_{key}"))
    assert control_map.ndim == 3 and min(control_map.shape[:2]) >= 64
    assert np.ptp(control_map) > 0, "the control map is blank"

    gallery, caption, seed = client.predict(**given, **FAST, seed=11, api_name=f"/{key}")
    assert seed == 11 and caption == ""
    assert [item["caption"] for item in gallery] == ["control map", "seed 11", "seed 12"]
    samples = [Image.open(item["image"]) for item in gallery[1:]]
    assert all(min(sample.size) == 64 for sample in samples)
    assert "Seed: 11" in samples[0].info["parameters"]
    assert "Seed: 12" in samples[1].info["parameters"]
    module = CONDITIONS[key].default_backend().module()  # the tab's preprocessor, as A1111 names it
    assert f"Module: {module}, " in samples[0].info["parameters"]
    assert np.ptp(read(gallery[0]["image"])) > 0


def test_same_seed_same_images_and_randomize_picks_a_seed(client, inputs):
    given = tab_inputs("canny", inputs)
    first, _, _ = client.predict(**given, **FAST, seed=3, api_name="/canny")
    again, _, _ = client.predict(**given, **FAST, seed=3, api_name="/canny")
    assert np.array_equal(read(first[1]["image"]), read(again[1]["image"]))
    settings = dict(FAST, num_images=1, randomize_seed=True)
    _, _, seed = client.predict(**given, **settings, seed=3, api_name="/canny")
    unrandomized = dict(settings, randomize_seed=False)
    gallery, _, same = client.predict(**given, **unrandomized, seed=seed, api_name="/canny")
    assert same == seed and gallery[1]["caption"] == f"seed {seed}"


def test_run_without_input_says_what_to_do(client):
    with pytest.raises(AppError, match="Upload an image first"):
        client.predict(**FAST, api_name="/canny")
    with pytest.raises(AppError, match="Upload an image first"):
        client.predict(api_name="/detect_canny")
    with pytest.raises(AppError, match="Draw a scribble"):
        client.predict(api_name="/detect_scribble")


def test_detect_from_the_wrong_input_says_which_one_is_read(client, inputs):
    only_photo = {"image": handle_file(inputs["scene"])}  # the default reader takes keypoints
    with pytest.raises(AppError, match="Upload an OpenPose JSON file first") as error:
        client.predict(**only_photo, api_name="/detect_pose")
    assert 'does not read image; preprocessor "none"' in str(error.value)


def test_a_payload_of_the_wrong_shape_is_named_and_a_bare_drawing_is_read(client, inputs):
    with pytest.raises(AppError, match="Input image: expected an image file, handle_file"):
        client.predict(image="not a file", api_name="/detect_canny")
    drawing = read(client.predict(image=handle_file(inputs["ink"]), api_name="/detect_scribble"))
    assert drawing.any()


def test_bad_settings_come_back_as_a_message(client, inputs):
    with pytest.raises(AppError, match="(?i)control start"):
        settings = dict(FAST, control_start=0.8, control_end=0.2)
        client.predict(**tab_inputs("canny", inputs), **settings, api_name="/canny")


def test_missing_model_previews_and_says_what_is_missing(client_without_model, inputs):
    given = tab_inputs("canny", inputs)
    control_map = read(client_without_model.predict(**given, api_name="/detect_canny"))
    assert np.ptp(control_map) > 0
    with pytest.raises(AppError, match="missing") as error:
        client_without_model.predict(**given, **FAST, api_name="/canny")
    assert "Traceback" not in str(error.value)
    page = client_without_model.src
    assert answers(page)
    config = json.dumps(client_without_model.config)
    assert "The model is missing" in config


def test_automatic_prompt_without_a_captioner_says_what_is_missing(client, inputs):
    given = tab_inputs("canny", inputs)
    with pytest.raises(AppError, match="(?i)captioner") as error:
        client.predict(**given, **FAST, prompt_mode="auto", api_name="/canny")
    assert "server log" not in str(error.value)
