"""Bad input against the running app: every endpoint answers with a result or one clear message.

Hypothesis draws requests for every named endpoint (/<key>, /detect_<key>, /stop_<key>): each
parameter left out, given a small valid value, or given a bad one (out of range, wrong type,
None, a file that is not an image, corrupt, empty, animated, CMYK, 16-bit, 1x1, huge, ...).
Every case must end in a result or an error whose message is short and says something, and the
server must answer a normal request afterwards. Also: Gradio serves no file the app does not
hand out, and a ControlNet pickle that would run code is refused with the server still serving.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from app_server import api_client, serve_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from cnet.conditions import CONDITIONS

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

SERVER_ENV = {"OMP_NUM_THREADS": "1"}  # one torch thread: far faster on a shared 2-core machine
GENERIC_ERRORS = ("has not enabled verbose error reporting", "Traceback", "server log")
FAST_CASES = 12  # per endpoint, default suite (keeps it near a minute on 2 busy cores)
SLOW_CASES = 220  # per endpoint, with -m slow
# Never left at their (slow) defaults: the fuzzing is about validation, not about throughput.
COSTLY = {"steps", "num_images", "detect_resolution", "resolution"}


def make_inputs(folder: Path) -> dict[str, Path]:
    """Uploads of every kind the issue lists, good and bad."""
    files: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **options) -> None:
        files[name] = folder / name
        image.save(files[name], **options)

    ramp = np.linspace(40, 220, 96, dtype=np.uint8)
    scene = Image.fromarray(np.dstack([np.tile(ramp, (96, 1))] * 3))
    draw = ImageDraw.Draw(scene)
    draw.ellipse((10, 10, 60, 60), fill=(200, 30, 30))
    draw.rectangle((40, 50, 90, 90), fill=(30, 60, 200))
    save("scene.png", scene)
    save("one.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    save("grey.png", scene.convert("L"))
    save("rgba.png", scene.convert("RGBA"))
    save("palette.png", scene.convert("P"))
    wide = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    save("wide16.png", Image.fromarray(wide))
    save("cmyk.jpg", scene.convert("CMYK"))
    frames = [scene, scene.rotate(90), scene.rotate(180)]
    save("anim.gif", frames[0], save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif.jpg", scene, exif=exif)
    save("huge.png", Image.new("RGB", (4800, 4000), (30, 90, 200)))  # > the 16.8 MP cap
    save("thin.png", Image.new("RGB", (1, 20000), (30, 90, 200)))  # too thin at any resolution
    ink = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    ImageDraw.Draw(ink).line((10, 80, 48, 10, 86, 80), fill=(0, 0, 0, 255), width=4)
    save("ink.png", ink)
    save("paper.png", Image.new("RGBA", (96, 96), (255, 255, 255, 255)))
    raw = {
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(64),
        "empty.png": b"",
        "text.png": b"this is not an image",
        "notes.txt": b"plain text",
    }
    skeleton = [(48, 15), (48, 30), (37, 30), (33, 45), (31, 60), (59, 30), (63, 45), (65, 60)]
    skeleton += [(41, 60), (39, 79), (37, 94), (55, 60), (57, 79), (58, 94)]
    skeleton += [(45, 12), (51, 12), (42, 14), (54, 14)]
    points = [value for x, y in skeleton for value in (x, y, 1.0)]
    pose = {"canvas_width": 96, "canvas_height": 96, "people": [{"pose_keypoints_2d": points}]}
    raw["pose.json"] = json.dumps(pose).encode()
    raw["huge_canvas.json"] = json.dumps(dict(pose, canvas_width=10**9)).encode()
    raw["broken.json"] = b'{"people": [{"pose_keypoints_2d": [1, 2'
    for name, content in raw.items():
        files[name] = folder / name
        files[name].write_bytes(content)
    return files


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_inputs(tmp_path_factory.mktemp("uploads"))


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("robust-app")
    annotators = tmp_path_factory.mktemp("no-annotators")  # every weight-based detector missing
    args = ("--model-dir", str(tiny_model_dir), "--max-queue", "64")
    args += ("--annotators-dir", str(annotators))
    with serve_app(*args, log_path=logs / "app.log", env=SERVER_ENV) as url:
        yield url, logs


@pytest.fixture(scope="module")
def client(server) -> Client:
    url, logs = server
    return api_client(url, str(logs))


@pytest.fixture(scope="module")
def endpoints(client) -> dict[str, list[dict]]:
    """api name -> its parameters: name plus the props of the component behind it."""
    names = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    components = {c["id"]: c for c in client.config["components"]}
    found = {}
    for dependency in client.config["dependencies"]:
        api_name = f"/{dependency.get('api_name')}"
        if api_name not in names:
            continue
        parameters = names[api_name]["parameters"]
        assert len(parameters) == len(dependency["inputs"]), api_name
        found[api_name] = [
            dict(components[i]["props"], name=p["parameter_name"], kind=components[i]["type"])
            for p, i in zip(parameters, dependency["inputs"], strict=True)
        ]
    return found


def fuzzed_endpoints() -> list[str]:
    return [f"/{kind}{key}" for key in CONDITIONS for kind in ("detect_", "", "stop_")]


def test_fuzzing_covers_every_named_endpoint(endpoints):
    assert set(endpoints) == set(fuzzed_endpoints())


# ---- strategies, one per component kind ----------------------------------------------------

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.just({"unexpected": "dict"}),
)
IMAGE_FILES = (
    "scene.png",
    "one.png",
    "grey.png",
    "rgba.png",
    "palette.png",
    "wide16.png",
    "cmyk.jpg",
    "anim.gif",
    "exif.jpg",
    "thin.png",  # huge.png is left to a named test: decoding 19 MP costs a second a case
    "corrupt.png",
    "empty.png",
    "text.png",
    "notes.txt",
    "pose.json",
)


def upload(files: dict[str, Path], names=IMAGE_FILES):
    return st.sampled_from(names).map(lambda name: handle_file(files[name]))


def number(props: dict, name: str):
    low, high = props.get("minimum"), props.get("maximum")
    step = props.get("step") or 1
    if low is None or high is None:
        low, high = 0, 2**32 - 1
    small_high = min(high, low + 2 * step) if name in COSTLY else high
    valid = st.floats(low, small_high, allow_nan=False)
    if float(step).is_integer():
        valid = st.integers(int(low), int(small_high))
    outside = st.one_of(
        st.floats(max_value=low, exclude_max=True, allow_nan=False, allow_infinity=False),
        st.floats(min_value=high, exclude_min=True, allow_nan=False, allow_infinity=False),
    )
    return valid, st.one_of(outside, JUNK)


def strategies(param: dict, files: dict[str, Path]):
    """(valid, bad) strategies for one parameter."""
    kind, name = param["kind"], param["name"]
    if kind in ("slider", "number"):
        return number(param, name)
    if kind in ("dropdown", "radio"):
        values = [value for _, value in param["choices"]]
        return st.sampled_from(values), st.one_of(st.text(max_size=20), JUNK)
    if kind == "checkbox":
        return st.booleans(), JUNK
    if kind == "textbox":
        long_text = st.integers(100, 3000).map(lambda n: "a red sphere " * n)
        return st.one_of(st.text(max_size=200), long_text), JUNK
    if kind == "image":
        return upload(files, ("scene.png",)), st.one_of(upload(files), JUNK)
    if kind == "file":
        return upload(files, ("pose.json",)), st.one_of(upload(files), JUNK)
    if kind == "imageeditor":
        layer = upload(files, ("ink.png", "paper.png", "rgba.png", "one.png"))
        valid = st.builds(
            lambda: {
                "background": handle_file(files["paper.png"]),
                "layers": [handle_file(files["ink.png"])],
            }
        )
        bad = st.fixed_dictionaries(
            {
                "background": st.one_of(st.none(), upload(files)),
                "layers": st.lists(st.one_of(layer, upload(files)), max_size=2),
            }
        )
        return valid, st.one_of(bad, JUNK)
    raise AssertionError(f"no strategy for a {kind} input ({name})")


@st.composite
def requests(draw, params: list[dict], files: dict[str, Path]) -> dict:
    chosen = {}
    for param in params:
        valid, bad = strategies(param, files)
        options = ["valid", "bad"] if param["name"] in COSTLY else ["omit", "valid", "bad"]
        if param["kind"] in ("image", "imageeditor"):
            options.append("valid")  # get past the input check more often than not
        how = draw(st.sampled_from(options))
        if how != "omit":
            chosen[param["name"]] = draw(valid if how == "valid" else bad)
    return chosen


def check_answer(client: Client, api_name: str, kwargs: dict) -> None:
    try:
        result = client.predict(**kwargs, api_name=api_name)
    except AppError as error:
        message = str(error)
        assert message.strip(), f"{api_name} answered an empty error for {kwargs}"
        assert not any(text in message for text in GENERIC_ERRORS), (message, kwargs)
        assert len(message) < 600, message
        return
    if api_name.startswith("/detect_"):
        assert Path(result).is_file()
    elif api_name.startswith("/stop_"):
        assert result in (None, ())
    else:
        gallery, caption, seed = result
        assert gallery[0]["caption"] == "control map" and isinstance(seed, int)
        assert isinstance(caption, str)


def assert_still_serving(client: Client, files: dict[str, Path]) -> None:
    gallery, _, seed = client.predict(
        image=handle_file(files["scene.png"]),
        steps=1,
        resolution=64,
        num_images=1,
        seed=5,
        randomize_seed=False,
        api_name="/canny",
    )
    assert seed == 5 and len(gallery) == 2


def fuzz(client, endpoints, uploads, api_name: str, cases: int) -> None:
    @settings(
        max_examples=cases,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(kwargs=requests(endpoints[api_name], uploads))
    def run(kwargs: dict) -> None:
        check_answer(client, api_name, kwargs)

    run()
    assert_still_serving(client, uploads)


@pytest.mark.parametrize("api_name", fuzzed_endpoints())
def test_fuzz_endpoint(client, endpoints, uploads, api_name):
    fuzz(client, endpoints, uploads, api_name, FAST_CASES if "stop_" not in api_name else 3)


@pytest.mark.slow
@pytest.mark.parametrize("api_name", fuzzed_endpoints())
def test_fuzz_endpoint_long(client, endpoints, uploads, api_name):
    fuzz(client, endpoints, uploads, api_name, SLOW_CASES if "stop_" not in api_name else 10)


# ---- named cases the issue lists: each answer is the message we mean ---------------------

FAST = dict(steps=1, resolution=64, num_images=1, randomize_seed=False)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("corrupt.png", "not an image this app can read"),
        ("empty.png", "not an image this app can read"),
        ("notes.txt", "not an image this app can read"),
        ("thin.png", "crop it"),
    ],
)
def test_unreadable_uploads_are_refused_clearly(client, uploads, name, message):
    for api_name, extra in (("/detect_canny", {}), ("/canny", FAST)):
        with pytest.raises(AppError, match=message):
            client.predict(image=handle_file(uploads[name]), **extra, api_name=api_name)


@pytest.mark.parametrize(
    "name", ["one.png", "grey.png", "rgba.png", "palette.png", "wide16.png", "cmyk.jpg", "exif.jpg"]
)
def test_every_kind_of_image_makes_a_map_and_images(client, uploads, name):
    gallery, _, _ = client.predict(image=handle_file(uploads[name]), **FAST, api_name="/depth")
    assert len(gallery) == 2


def notices(job) -> list[str]:
    """The gr.Warning/gr.Info texts a finished job sent to the client."""
    found = []
    while not job.communicator.updates.empty():
        update = job.communicator.updates.get_nowait()
        if getattr(update, "log", None):
            found.append(update.log[0])
    return found


def test_huge_and_animated_uploads_and_long_prompts_come_with_notices(client, uploads):
    job = client.submit(image=handle_file(uploads["huge.png"]), api_name="/detect_canny")
    assert Path(job.result()).is_file()
    assert any("scaled down" in text and "4800x4000" in text for text in notices(job))

    job = client.submit(
        image=handle_file(uploads["anim.gif"]), prompt="sphere " * 200, **FAST, api_name="/canny"
    )
    gallery, _, _ = job.result()
    said = notices(job)
    assert any("3 frames" in text for text in said), said
    assert any("text encoder reads the first" in text for text in said), said
    assert len(gallery) == 2


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("steps", 1000, "Steps: 1000 is out of range"),
        ("cfg", -1.0, r"Guidance scale \(CFG\): -1.0 is out of range"),
        ("resolution", 8, r"Resolution \(short side\): 8 is out of range"),
        ("seed", -3, "Seed: -3 is out of range"),
        ("control_strength", 2.5, "Control strength: 2.5 is out of range"),
        ("num_images", 13, "Images: 13 is out of range"),
        ("steps", "twenty", "Steps: expected a whole number"),
        ("num_images", 2.6, "Images: 2.6 is not a whole number; choose a whole number from 1"),
        ("seed", 7.5, "Seed: 7.5 is not a whole number"),
        ("sampler", "Heun", "Sampler: 'Heun' is not one of"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_setting(
    client, uploads, setting, value, message
):
    kwargs = dict(FAST, image=handle_file(uploads["scene.png"]), **{setting: value})
    with pytest.raises(AppError, match=message):
        client.predict(**kwargs, api_name="/canny")


def test_a_detector_that_cannot_run_is_named_to_an_api_caller(client, uploads):
    with pytest.raises(AppError, match="MiDaS.* is not available"):
        client.predict(
            image=handle_file(uploads["scene.png"]), preprocessor="midas", api_name="/detect_depth"
        )
    with pytest.raises(AppError, match=r"Thicken strokes \(px\): 2.5 is not a whole number"):
        client.predict(
            image={"background": handle_file(uploads["paper.png"]), "layers": []},
            preprocessor="drawing",
            drawing_thickness=2.5,
            api_name="/detect_scribble",
        )


def test_empty_canvas_and_missing_input_say_what_to_do(client, uploads):
    blank = {"background": handle_file(uploads["paper.png"]), "layers": []}
    with pytest.raises(AppError, match="Draw a scribble"):
        client.predict(image=blank, **FAST, api_name="/scribble")
    with pytest.raises(AppError, match="Draw a scribble"):
        client.predict(image=blank, api_name="/detect_scribble")
    with pytest.raises(AppError, match="Upload an image first"):
        client.predict(image=None, **FAST, api_name="/seg")


# ---- files: Gradio hands out only what the app made or the user uploaded ---------------------


def http_status(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_file_routes_do_not_serve_arbitrary_files(server, client, uploads):
    url, _ = server
    root = Path(__file__).resolve().parents[1]
    secrets = ["/etc/passwd", str(root / "app.py"), "app.py", "../../../../etc/passwd"]
    secrets += [str(root / "cnet" / "engine.py"), "%2Fetc%2Fpasswd"]
    for path in secrets:
        for route in ("gradio_api/file=", "file=", "gradio_api/file/"):
            status, body = http_status(url + route + path)
            assert status in (403, 404), (route, path, status)
            assert b"root:" not in body and b"import" not in body
    # A file the app made is served (so the check above can fail).
    remote = api_client(url, False)
    made = remote.predict(image=handle_file(uploads["scene.png"]), api_name="/detect_canny")
    status, body = http_status(url + "gradio_api/file=" + made["path"])
    assert status == 200 and body.startswith(b"\x89PNG")


def test_inputs_cannot_point_at_server_files(server):
    """A raw API call naming a server path as the upload is refused, with a message."""
    url, _ = server
    data = [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, "canny", 512, 64, 100]
    request = urllib.request.Request(
        url + "gradio_api/call/detect_canny",
        data=json.dumps({"data": [*data, 200]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.load(response)["event_id"]
    status, body = http_status(f"{url}gradio_api/call/detect_canny/{event_id}")
    text = body.decode()
    assert "event: error" in text and "not uploaded by a user" in text
    assert "root:" not in text


def test_uploads_above_the_size_limit_are_refused(server, tmp_path):
    url, _ = server
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (26 * 1024 * 1024))
    boundary = "cnet-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body += big.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url + "gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=60)
    assert error.value.code == 413


# ---- a pickled ControlNet that would run code ------------------------------------------------


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow  # its own server: ~25 s here
def test_malicious_controlnet_pickle_is_refused_and_the_server_keeps_serving(
    tiny_model_dir, uploads, tmp_path
):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload(marker)}, evil)
    args = ("--model-dir", str(tiny_model_dir), "--controlnet", f"canny={evil}")
    with serve_app(*args, log_path=tmp_path / "app.log", env=SERVER_ENV) as url:
        client = api_client(url, str(tmp_path))
        image = handle_file(uploads["scene.png"])
        for _ in range(2):  # refused every time, not only on the first load
            with pytest.raises(AppError, match="(?s)Refused to load.*evil.pth.*safetensors"):
                client.predict(image=image, **FAST, api_name="/canny")
        gallery, _, _ = client.predict(image=image, **FAST, api_name="/depth")
        assert len(gallery) == 2
    assert not marker.exists(), "the pickle's payload ran"
