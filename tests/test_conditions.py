"""The registry the app builds its tabs from: order, checkpoints, backends and their reasons."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnet.conditions import (
    CONDITIONS,
    BackendUnavailable,
    Param,
    annotators_dir,
    detect,
    set_annotators_dir,
)
from cnet.detectors.weights import Weights

ROOT = Path(__file__).resolve().parents[1]
PAPER_ORDER = ("scribble", "canny", "hough", "pose", "seg", "depth", "normal")
SD15 = {
    "scribble": "lllyasviel/control_v11p_sd15_scribble",
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "hough": "lllyasviel/control_v11p_sd15_mlsd",
    "pose": "lllyasviel/control_v11p_sd15_openpose",
    "seg": "lllyasviel/control_v11p_sd15_seg",
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
    "normal": "lllyasviel/control_v11p_sd15_normalbae",
}
OFFLINE_DEFAULTS = {
    "scribble": "canvas",
    "canny": "canny",
    "hough": "lines",
    "pose": "keypoints_json",
    "seg": "palette",
    "depth": "depth_map",
    "normal": "depth_map",
}


@pytest.fixture
def empty_annotators(tmp_path):
    set_annotators_dir(tmp_path)
    yield tmp_path
    set_annotators_dir(None)


def test_conditions_in_paper_order_with_checkpoints():
    assert tuple(CONDITIONS) == PAPER_ORDER
    for key, condition in CONDITIONS.items():
        assert condition.key == key
        assert dict(condition.controlnet) == {"sd15": SD15[key], "embedded": key}
    assert [c.key for c in CONDITIONS.values() if c.sketch] == ["scribble"]


def test_offline_defaults_are_the_classical_backends(empty_annotators):
    for key, name in OFFLINE_DEFAULTS.items():
        assert CONDITIONS[key].default_backend().name == name
        assert CONDITIONS[key].backends[-1].name == "none"
        assert CONDITIONS[key].backends[-1].label.startswith("None")


def test_unavailable_backends_name_file_folder_and_command(empty_annotators):
    unavailable = [b for c in CONDITIONS.values() for b in c.backends if not b.availability().ok]
    assert {b.name for b in unavailable} >= {"hed", "pidinet", "mlsd", "openpose", "upernet",
                                              "midas", "depth_anything", "normalbae"}  # fmt: skip
    for backend in unavailable:
        reason = backend.availability().reason
        assert str(empty_annotators) in reason and "hf download" in reason, reason
        for entry in backend.weights.files:
            assert entry.split("|")[0] in reason
        with pytest.raises(BackendUnavailable, match="not found"):
            backend.load()


def test_exact_annotator_file_names(empty_annotators):
    files = {
        (key, b.name): b.weights.files
        for key, c in CONDITIONS.items()
        for b in c.backends
        if b.weights is not None and b.weights.repo == "lllyasviel/Annotators"
    }
    assert files[("hough", "mlsd")] == ("mlsd_large_512_fp32.pth",)
    assert files[("scribble", "hed")] == ("ControlNetHED.pth",)
    assert files[("scribble", "pidinet")] == ("table5_pidinet.pth",)
    assert files[("pose", "openpose")] == ("body_pose_model.pth", "hand_pose_model.pth",
                                           "facenet.pth")  # fmt: skip
    assert files[("depth", "midas")] == ("dpt_hybrid-midas-501f0c75.pt",)
    assert files[("normal", "normalbae")] == ("scannet.pt",)


def test_weights_in_the_folder_make_a_backend_available(empty_annotators):
    mlsd = CONDITIONS["hough"].backend("mlsd")
    assert not mlsd.availability().ok
    (empty_annotators / "mlsd_large_512_fp32.pth").write_bytes(b"")
    assert mlsd.availability().ok
    assert CONDITIONS["hough"].default_backend().name == "mlsd"


def test_a_corrupt_weights_file_is_named_with_how_to_fetch_it_again(empty_annotators):
    (empty_annotators / "mlsd_large_512_fp32.pth").write_bytes(b"")  # an interrupted download
    with pytest.raises(BackendUnavailable, match="could not be loaded .*hf download lllyasviel"):
        detect("hough", str(ROOT / "assets/examples/room.png"), backend="mlsd")


def test_only_missing_files_are_in_the_command(empty_annotators):
    (empty_annotators / "body_pose_model.pth").write_bytes(b"")
    reason = CONDITIONS["pose"].backend("openpose").availability().reason
    assert "hand_pose_model.pth facenet.pth --local-dir" in reason
    assert "body_pose_model.pth" not in reason


def test_annotators_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CNET_ANNOTATORS_DIR", str(tmp_path))
    assert annotators_dir() == tmp_path
    set_annotators_dir(tmp_path / "other")
    try:
        assert annotators_dir() == tmp_path / "other"
    finally:
        set_annotators_dir(None)


def test_fetch_refuses_when_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set: not downloading"):
        Weights("lllyasviel/Annotators", ("scannet.pt",)).fetch(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")  # transformers' own switch counts too
    with pytest.raises(RuntimeError, match="TRANSFORMERS_OFFLINE is set: not downloading"):
        Weights("lllyasviel/Annotators", ("scannet.pt",)).fetch(tmp_path)
    assert not any(tmp_path.iterdir())


def test_module_names_are_a1111s_where_it_has_the_same_preprocessor():
    modules = {
        key: {backend.name: backend.module() for backend in condition.backends}
        for key, condition in CONDITIONS.items()
    }
    assert modules["depth"]["midas"] == "depth_midas"
    assert modules["normal"]["midas"] == "normal_midas"
    assert modules["normal"]["normalbae"] == "normal_bae"
    assert modules["scribble"]["hed"] == "scribble_hed"
    assert modules["canny"]["canny"] == "canny" and modules["canny"]["none"] == "none"
    assert modules["seg"]["upernet"] == "upernet"  # A1111's ADE20K models are other ones
    openpose = CONDITIONS["pose"].backend("openpose")  # named by what it draws
    assert modules["pose"]["openpose"] == "openpose"
    assert openpose.module({"include_hands": True}) == "openpose_hand"
    assert openpose.module({"include_hands": True, "include_face": True}) == "openpose_full"
    for names in modules.values():
        assert len(set(names.values())) == len(names)


def test_params_have_sane_ranges():
    for condition in CONDITIONS.values():
        for backend in condition.backends:
            names = [p.name for p in backend.params]
            assert len(names) == len(set(names))
            for param in backend.params:
                if param.minimum is not None:
                    assert param.minimum <= param.default <= param.maximum
    with pytest.raises(ValueError, match="a fractional range needs a float default"):
        Param("length", "Length", 4, 0.5, 50, 0.5)


@pytest.mark.parametrize("key", PAPER_ORDER)
def test_examples_exist_and_give_a_map_offline(key, empty_annotators):
    condition = CONDITIONS[key]
    assert condition.example_prompt and condition.examples
    for example in condition.examples:
        path = ROOT / example.path
        assert path.is_file() and path.stat().st_size < 50 * 1024
        backend = example.backend
        if backend is None:  # a photo: the first backend that runs offline (the canvas reads
            backend = "drawing" if key == "scribble" else None  # sketch-pad values)
        control = detect(key, path, backend=backend, image_resolution=256)
        assert control.dtype == np.uint8 and control.ndim == 3 and control.shape[2] == 3
        assert min(control.shape[:2]) == 256 and control.max() > 0


def test_the_map_as_is_backends_check_what_their_condition_reads():
    from PIL import Image

    photo = np.asarray(Image.open(ROOT / "assets/examples/scene.jpg"))
    drawing = np.asarray(Image.open(ROOT / "assets/embedded/examples/scribble.png"))  # dark lines
    for key in PAPER_ORDER:
        assert len(CONDITIONS[key].backend("none").input_notices(photo)) == 1, key
    # Maps of light lines or a skeleton on black pass; a drawing on light paper does not.
    maps = {
        "scribble": detect("scribble", drawing, backend="drawing"),
        "canny": detect("canny", photo, low_threshold=1, high_threshold=10),
        "hough": detect("hough", ROOT / "assets/examples/room.png"),
        "pose": detect("pose", ROOT / "assets/examples/pose.json", backend="keypoints_json"),
    }
    for key, control in maps.items():
        as_is = CONDITIONS[key].backend("none")
        assert as_is.input_notices(control) == [], key
        (notice,) = as_is.input_notices(drawing)
        assert notice.startswith("Only 3% of this image is black") and "on black" in notice


@pytest.mark.parametrize(
    ("condition", "backend", "params", "message"),
    [
        ("canny", "canny", {"low_threshold": -5}, "low_threshold: -5 is out of range; choose a w"),
        ("canny", "canny", {"low_threshold": None}, "low_threshold takes a whole number, not None"),
        ("scribble", "drawing", {"thickness": 2.5}, "thickness takes a whole number, not 2.5"),
        ("hough", "lines", {"min_length_percent": 0.1}, "choose a number from 0.5 to 50"),
        ("hough", "lines", {"contrast": float("nan")}, "contrast: nan is out of range"),
        ("depth", "depth_map", {"invert": "false"}, "invert takes True or False, not 'false'"),
    ],
)
def test_detect_refuses_a_parameter_the_apps_control_would(condition, backend, params, message):
    photo = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=re.escape(message)):
        detect(condition, photo, backend=backend, **params)
    detect("canny", photo, low_threshold=50.0, high_threshold=np.int64(120))  # whole: taken
    for resolution in ("128", None, 0):
        with pytest.raises(ValueError, match="a whole number of pixels, at least 1, got"):
            detect("canny", photo, detect_resolution=resolution)


def test_unknown_condition_is_explained():
    with pytest.raises(ValueError, match="scribble, canny"):
        detect("lineart", np.zeros((8, 8, 3), np.uint8))


def test_importing_the_registry_imports_no_model_library():
    code = (
        "import sys, cnet.conditions; "
        "print(sorted(m for m in ('controlnet_aux', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cli_detect_writes_the_map(tmp_path, capsys):
    from cnet.__main__ import main

    output = tmp_path / "edges.png"
    example = str(ROOT / "assets/examples/scene.jpg")
    code = main(["detect", example, "-c", "canny", "-p", "low_threshold=50", "-o", str(output)])
    assert code == 0
    from PIL import Image

    written = np.asarray(Image.open(output))
    assert np.array_equal(written, detect("canny", example, low_threshold=50))
    assert "Canny edges" in capsys.readouterr().out


def test_cli_reads_files_as_the_app_reads_uploads(tmp_path, capsys):
    from PIL import Image

    from cnet.__main__ import main

    frames = [Image.new("RGB", (64, 64), (200 * (i % 2), 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert main(["detect", str(tmp_path / "anim.gif"), "-c", "canny"]) == 0
    assert "note: The image is animated (3 frames)" in capsys.readouterr().err


def test_cli_notes_a_photo_given_as_a_map(tmp_path, capsys):
    from cnet.__main__ import main

    photo = str(Path(__file__).resolve().parents[1] / "assets" / "examples" / "scene.jpg")
    output = str(tmp_path / "seg.png")
    assert main(["detect", photo, "-c", "seg", "--backend", "palette", "-o", output]) == 0
    assert "note: Only " in capsys.readouterr().err
    # Without OpenPose's weights the photo goes to the map-as-is reader, which says so.
    given = ["--annotators-dir", str(tmp_path), "-o", str(tmp_path / "pose.png")]
    try:
        assert main(["detect", photo, "-c", "pose", *given]) == 0
    finally:
        set_annotators_dir(None)
    printed = capsys.readouterr()
    assert "(none)" in printed.out and "a coloured skeleton on black" in printed.err
    # ... and names the detector it passed over, and how to get its weights
    assert "note: openpose would read this file first, but weights files " in printed.err
    assert "fetch with: hf download lllyasviel/Annotators body_pose_model.pth" in printed.err


def test_the_detectors_passed_over_for_a_file_are_those_before_its_reader(empty_annotators):
    assert [b.name for b in CONDITIONS["depth"].passed_over("photo.jpg")] == [
        "midas",
        "depth_anything",
    ]
    assert CONDITIONS["pose"].passed_over("pose.json") == []  # its reader needs no weights
    assert CONDITIONS["canny"].passed_over("photo.jpg") == []


def test_cli_detect_without_a_backend_takes_one_that_reads_that_kind_of_file(tmp_path, capsys):
    from cnet.__main__ import main

    drawing = str(ROOT / "assets/embedded/examples/scribble.png")
    assert main(["detect", drawing, "-c", "scribble", "-o", str(tmp_path / "s.png")]) == 0
    assert "(drawing)" in capsys.readouterr().out  # not the sketch pad's strokes reader
    keypoints = str(ROOT / "assets/embedded/examples/pose.json")
    assert main(["detect", keypoints, "-c", "pose", "-o", str(tmp_path / "p.png")]) == 0
    assert "(keypoints_json)" in capsys.readouterr().out
    # given to a condition that reads pictures only, it is named for what it is
    assert main(["detect", keypoints, "-c", "canny", "-o", str(tmp_path / "c.png")]) == 2
    assert (
        "is a .json file, not a picture: OpenPose keypoints are read by --condition pose's "
        "keypoints_json backend, not by canny." in capsys.readouterr().err
    )
    given = ["-b", "none", "-o", str(tmp_path / "p.png")]  # pose, but a backend for pictures
    assert main(["detect", keypoints, "-c", "pose", *given]) == 2
    assert "keypoints_json backend, not by none." in capsys.readouterr().err
    assert main(["detect", "nothere.json", "-c", "canny"]) == 2  # no file: named as missing
    assert "No image file at nothere.json" in capsys.readouterr().err


def test_cli_detect_says_what_is_missing_and_never_writes_over_its_input(tmp_path, capsys):
    import shutil

    from cnet.__main__ import main

    assert main(["detect", "-c", "canny"]) == 2
    assert "error: give an input image (or --list / --fetch)" in capsys.readouterr().err
    assert main(["detect", "-c", "depth", "--fetch"]) == 2
    assert "error: --fetch needs --backend NAME (with weights: midas" in capsys.readouterr().err
    assert main(["detect", "-c", "depth", "--backend", "depth_map", "--fetch"]) == 0
    assert capsys.readouterr().out == "depth_map needs no weights\n"
    photo = tmp_path / "photo.jpg"
    shutil.copy(ROOT / "assets/examples/scene.jpg", photo)
    before = photo.read_bytes()
    assert main(["detect", str(photo), "-c", "canny", "-o", str(photo)]) == 2
    assert "is the input image; give the map another name" in capsys.readouterr().err
    assert photo.read_bytes() == before


def test_cli_reports_missing_weights_and_bad_params(tmp_path, capsys):
    from cnet.__main__ import main

    example = str(ROOT / "assets/examples/room.png")
    common = ["--annotators-dir", str(tmp_path), "-o", str(tmp_path / "x.png")]
    try:
        assert main(["detect", example, "-c", "hough", "-b", "mlsd", *common]) == 1
        assert (
            "hf download lllyasviel/Annotators mlsd_large_512_fp32.pth" in capsys.readouterr().err
        )
        assert main(["detect", example, "-c", "hough", "-p", "min_length_percent=x", *common]) == 2
        assert "min_length_percent takes a number, not 'x'" in capsys.readouterr().err
        for value in ("0.5", "2.5"):  # the slider's steps of 0.5, as in the app
            given = ["-p", f"min_length_percent={value}", "-o", str(tmp_path / "lines.png")]
            assert main(["detect", example, "-c", "hough", *given]) == 0
        capsys.readouterr()
        assert main(["detect", example, "-c", "hough", "-p", "votes=3", *common]) == 2
        assert "min_length_percent" in capsys.readouterr().err
        for value in ("300", "-5"):  # refused as the app refuses it, never clamped
            assert main(["detect", example, "-c", "canny", "-p", f"low_threshold={value}"]) == 2
            assert f"low_threshold: {value} is out of range; choose a whole number from 1 to" in (
                capsys.readouterr().err
            )
        assert main(["detect", example, "-c", "hough", "-p", "min_length_percent=-5"]) == 2
        assert "min_length_percent: -5 is out of range" in capsys.readouterr().err
        assert main(["detect", example, "-c", "canny", "-o", str(tmp_path / "edges.psd")]) == 2
        capsys.readouterr()  # Pillow reads .psd but cannot write it
        assert main(["detect", example, "-c", "canny", "-o", str(tmp_path / "edges")]) == 2
        assert "-o " + str(tmp_path / "edges") + ": give a file name ending in .png" in (
            capsys.readouterr().err
        )
        for name in ("edges.xbm", "edges.blp", "edges.ico"):  # mode 1 only, refused, 256 px
            assert main(["detect", example, "-c", "canny", "-o", str(tmp_path / name)]) == 2
            assert "give a file name ending in .png" in capsys.readouterr().err
        (tmp_path / "maps.png").mkdir()
        assert main(["detect", example, "-c", "canny", "-o", str(tmp_path / "maps.png")]) == 2
        assert "is a folder" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["detect", example, "-c", "canny", "--detect-resolution", "0", *common])
        assert main(["detect", "--list", *common]) == 0
        assert "upernet-convnext-small" in capsys.readouterr().out
    finally:
        set_annotators_dir(None)
    assert not (tmp_path / "x.png").exists()
