"""`python -m cnet generate` on the tiny model: PNGs with parameters, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnet import png_info
from cnet.__main__ import main


@pytest.fixture
def control_png(tmp_path: Path) -> Path:
    image = np.zeros((64, 64, 3), np.uint8)
    image[10:50, 20:28] = 255
    path = tmp_path / "map.png"
    Image.fromarray(image).save(path)
    return path


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_generate_writes_images_with_parameters(tiny_model_dir, control_png, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "generate",
        str(control_png),
        "--model-dir",
        str(tiny_model_dir),
        "-c",
        "canny",
        "--prompt",
        "a red sphere",
        "--steps",
        "2",
        "-n",
        "2",
        "--seed",
        "5",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    assert (out / "canny-control.png").is_file()
    for seed in (5, 6):
        prompt, _, settings = png_info.parse_parameters(
            png_info.read_parameters(out / f"canny-{seed}.png")
        )
        assert prompt == "a red sphere, best quality, extremely detailed"
        assert settings["Seed"] == str(seed) and settings["Steps"] == "2"
        assert settings["CFG scale"] == "9.0"  # the preset's: no --cfg given
        assert settings["Sampler"] == "DDPM"  # likewise
        assert settings["ControlNet 0"].startswith("Module: none,")  # the map as it was given
    assert "canny-6.png" in capsys.readouterr().out


def test_generate_detects_the_map_from_a_photo(tiny_model_dir, tmp_path):
    photo = np.full((64, 64, 3), 40, np.uint8)
    photo[16:48, 16:48] = (220, 60, 60)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    args = [
        "generate",
        "--detect",
        str(tmp_path / "photo.png"),
        "--model-dir",
        str(tiny_model_dir),
        "-c",
        "canny",
        "--steps",
        "1",
        "-o",
        str(tmp_path / "out"),
    ]
    assert main(args) == 0
    edges = np.asarray(Image.open(tmp_path / "out" / "canny-control.png"))
    assert edges.max() == 255 and edges.mean() < 128  # white edges on black


@pytest.mark.parametrize(("condition", "reader"), [("pose", "none"), ("scribble", "drawing")])
def test_generate_detects_with_a_backend_that_reads_the_file(
    tiny_model_dir, control_png, capsys, tmp_path, condition, reader
):
    """Not the first backend (pose's keypoints reader, scribble's sketch-pad strokes reader)."""
    from cnet.conditions import set_annotators_dir

    args = ["generate", "--detect", str(control_png), "-c", condition, "--steps", "1"]
    args += ["-o", str(tmp_path / "out"), "--model-dir", str(tiny_model_dir)]
    try:
        code = main([*args, "--annotators-dir", str(tmp_path)])  # no weights: no OpenPose
    finally:
        set_annotators_dir(None)
    assert code == 0, capsys.readouterr().err
    assert f"({reader})" in capsys.readouterr().err
    written = png_info.read_parameters(tmp_path / "out" / f"{condition}-0.png")
    assert f"Module: {reader}, " in written  # the preprocessor that made the map


def test_module_is_the_preprocessors_a1111_name_where_it_has_one(
    tiny_model_dir, control_png, tmp_path, monkeypatch
):
    import cnet.conditions

    # MiDaS' weights are not here: the map it would make, for the parameters text alone
    made = np.zeros((64, 64, 3), np.uint8)
    monkeypatch.setattr(cnet.conditions, "detect", lambda *args, **kwargs: made)
    args = ["generate", "--detect", str(control_png), "-c", "depth", "--detector", "midas"]
    out = ["--model-dir", str(tiny_model_dir), "--steps", "1", "-o", str(tmp_path / "out")]
    assert main([*args, *out]) == 0
    written = png_info.read_parameters(tmp_path / "out" / "depth-0.png")
    assert "Module: depth_midas, " in written


def test_a_second_run_with_the_same_seeds_keeps_the_first_runs_images(
    tiny_model_dir, control_png, tmp_path, capsys
):
    out = tmp_path / "out"
    args = ["generate", str(control_png), "--model-dir", str(tiny_model_dir), "-c", "canny"]
    args += ["--steps", "1", "--seed", "3", "-o", str(out)]
    assert main([*args, "-p", "a red sphere"]) == 0
    assert main([*args, "-p", "a blue cube"]) == 0
    assert str(out / "canny-3-run2.png") in capsys.readouterr().out
    assert (out / "canny-control-run2.png").is_file()
    first, second = (
        png_info.read_parameters(out / name) for name in ("canny-3.png", "canny-3-run2.png")
    )
    assert first.startswith("a red sphere") and second.startswith("a blue cube")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prompt-mode", "none", "-p", "a cat"], "--prompt is read in --prompt-mode user only"),
        (["--prompt-mode", "default", "--keep-first-pass"], "--keep-first-pass keeps the first"),
        (["--detector", "canny"], "--detector picks the detector for --detect PHOTO"),
    ],
)
def test_flags_the_run_would_drop_are_refused(control_png, capsys, flags, message):
    assert main(["generate", str(control_png), "-c", "canny", *flags]) == 2
    assert message in capsys.readouterr().err


def test_generate_reports_missing_weights(tmp_path, control_png, capsys):
    args = ["generate", str(control_png), "--model-dir", str(tmp_path), "-c", "canny"]
    assert main(args) == 1
    error = capsys.readouterr().err
    assert str(tmp_path / "base") in error and "Traceback" not in error


def test_a_model_folder_that_is_not_there_is_named_as_a_typo(tmp_path, control_png, capsys):
    args = ["generate", str(control_png), "--model-dir", str(tmp_path / "nothere"), "-c", "canny"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument --model-dir: no folder {tmp_path / 'nothere'}; give a folder" in error
    assert "hf download" not in error


def test_auto_prompt_without_a_captioner_is_refused_before_the_folder_is_made(
    tiny_model_dir, control_png, tmp_path, capsys
):
    out = tmp_path / "out"
    args = ["generate", str(control_png), "-c", "canny", "--prompt-mode", "auto", "-o", str(out)]
    assert main([*args, "--model-dir", str(tiny_model_dir), "--steps", "1"]) == 1
    assert "captioner" in capsys.readouterr().err
    assert not out.exists()


def test_generate_reports_a_detector_that_cannot_run(tiny_model_dir, control_png, capsys, tmp_path):
    from cnet.conditions import set_annotators_dir

    args = ["generate", "--detect", str(control_png), "-c", "depth", "--detector", "midas"]
    try:
        code = main([*args, "--model-dir", str(tiny_model_dir), "--annotators-dir", str(tmp_path)])
    finally:
        set_annotators_dir(None)
    error = capsys.readouterr().err
    assert code == 1 and "MiDaS" in error and "hf download" in error and "Traceback" not in error


def test_generate_reports_bad_settings(tiny_model_dir, control_png, capsys):
    args = [
        "generate",
        str(control_png),
        "--model-dir",
        str(tiny_model_dir),
        "-c",
        "canny",
        "--steps",
        "0",
    ]
    assert main(args) == 2
    assert "steps must be between" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["generate", "map.png", "-c", "depth", "-o", "{file}"], "at {file}: {file} is a file"),
        (["synth", "render", "5", "{file}/one"], "at {file}/one: {file} is a file"),
        (["synth", "render", "-1", "{tmp}/one"], "a whole number of at least 0, got '-1'"),
        (["synth", "export", "fill50k", "{file}", "--condition", "canny"], "{file} is a file"),
        (["synth", "contact-sheet", "{tmp}/sheet.txt"], "end its name with .png or .jpg"),
        (["compare", "{tmp}", "{tmp}", "--out", "{file}/c.md"], "write {file}/c.md: {file} is a"),
        (["eval", "--out", "{file}"], "cannot write a folder at {file}: {file} is a file"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    tmp_path, capsys, command, message
):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")

    def placed(text: str) -> str:
        return text.format(tmp=tmp_path, file=file)

    with pytest.raises(SystemExit) as exit_info:
        main([placed(part) for part in command])
    assert exit_info.value.code == 2
    assert placed(message) in capsys.readouterr().err
    assert file.read_text() == "keep me"


def test_a_folder_that_cannot_be_made_is_told_before_sampling(
    tiny_model_dir, control_png, tmp_path, capsys, monkeypatch
):
    from cnet.engine import Engine

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    def sample(*args, **kwargs):
        raise AssertionError("sampled though the images could not be written")

    monkeypatch.setattr(Path, "mkdir", refuse)
    monkeypatch.setattr(Engine, "generate", sample)
    out = tmp_path / "out"
    args = ["generate", str(control_png), "--model-dir", str(tiny_model_dir), "-c", "canny"]
    assert main([*args, "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert (
        f"\nerror: cannot make the folder {out} ([Errno 13]" in error and "Traceback" not in error
    )


def test_a_keypoints_file_given_as_the_map_is_sent_to_detect(tmp_path, capsys):
    keypoints = str(Path(__file__).resolve().parents[1] / "assets/examples/pose.json")
    assert main(["generate", keypoints, "-c", "pose", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err.endswith(f"give it as --detect {keypoints}\n")
    assert main(["generate", keypoints, "-c", "depth", "-o", str(tmp_path)]) == 2  # and pose's
    assert f"give it as --detect {keypoints} -c pose" in capsys.readouterr().err


def test_a_photo_given_as_the_map_gets_the_map_as_is_notice(tiny_model_dir, tmp_path, capsys):
    photo = str(Path(__file__).resolve().parents[1] / "assets/examples/scene.jpg")
    args = ["generate", photo, "--model-dir", str(tiny_model_dir), "-c", "canny", "--steps", "1"]
    assert main([*args, "-o", str(tmp_path)]) == 0
    assert "note: Only 3% of this image is black" in capsys.readouterr().err


def test_images_that_cannot_be_written_are_an_error_not_a_traceback(
    tiny_model_dir, control_png, tmp_path, capsys, monkeypatch
):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(png_info, "save_png", full)
    args = ["generate", str(control_png), "--model-dir", str(tiny_model_dir), "-c", "canny"]
    assert main([*args, "--steps", "1", "-o", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert f"error: cannot write the images in {tmp_path} ([Errno 28]" in error


def test_help_gives_each_sampling_flags_range_and_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in ("1..150 (default: 20)", "0..2; 0: no control (default: 1.0)", "(default: user)"):
        assert shown in text
    assert "short side, 64..2048" in text and "1..12, seeds --seed" in text
