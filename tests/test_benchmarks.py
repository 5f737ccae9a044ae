"""The benchmark scripts' command lines and request settings (nothing is timed here)."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from cnet.models import gpu_driver_present

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
WHOLE = "expected a whole number of at least 1, got"


@functools.cache
def script(name: str):
    """benchmarks/<name>.py as a module (bench_synth pins this process's thread variables at
    import: they are restored)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(os.environ):
        sys.modules[name] = module  # bench_app imports bench_startup by name
        spec.loader.exec_module(module)
    return module


REFUSED = [
    ("bench_engine", ["--repeats", "0"], f"argument --repeats: {WHOLE} '0'"),
    ("bench_engine", ["--steps", "-3"], f"argument --steps: {WHOLE} '-3'"),
    ("bench_engine", ["--threads", "1.5"], f"argument --threads: {WHOLE} '1.5'"),
    ("bench_engine", ["--condition", "edges"], "argument --condition: invalid choice: 'edges'"),
    ("bench_engine", ["--device", "tpu"], "argument --device: Unknown device 'tpu'"),
    pytest.param(
        "bench_engine",
        ["--device", "cuda"],
        "argument --device: torch sees no cuda device on this machine",
        marks=pytest.mark.skipif(gpu_driver_present(), reason="a GPU may be usable here"),
    ),
    ("bench_app", ["--repeats", "0"], f"argument --repeats: {WHOLE} '0'"),
    ("bench_app", ["--random", "tiny", "--model-dir", "m"], "--random builds a model of random"),
    ("bench_app", ["--timeout", "0"], "argument --timeout: expected a number above 0, got '0'"),
    ("bench_app", ["--condition", "edges"], "argument --condition: invalid choice: 'edges'"),
    ("bench_app", ["--idle-seconds", "0"], "argument --idle-seconds: expected a number above 0"),
    ("bench_startup", ["--runs", "0"], f"argument --runs: {WHOLE} '0'"),
    ("bench_startup", ["--threads", "0"], f"argument --threads: {WHOLE} '0'"),
    ("bench_gpu", ["--steps", "-3"], f"argument --steps: {WHOLE} '-3'"),
    ("bench_gpu", ["--compile-mode", "bogus"], "argument --compile-mode: invalid choice: 'bogus'"),
    ("bench_detectors", ["--resolution", "0"], f"argument --resolution: {WHOLE} '0'"),
    ("bench_detectors", ["--repeats", "2.5"], f"argument --repeats: {WHOLE} '2.5'"),
    ("bench_train", ["--batch-size", "0"], f"argument --batch-size: {WHOLE} '0'"),
    ("bench_train", ["--rounds", "0"], f"argument --rounds: {WHOLE} '0'"),
    ("bench_train", ["--warmup", "-1"], "argument --warmup: expected a whole number of at least 0"),
    ("bench_synth", ["--scenes", "0"], f"argument --scenes: {WHOLE} '0'"),
    ("bench_synth", ["--size", "-1"], f"argument --size: {WHOLE} '-1'"),
]


@pytest.mark.parametrize(("name", "argv", "message"), REFUSED)
def test_a_bad_argument_is_refused_before_anything_runs(name, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script(name).parse_args(argv)
    assert exit_info.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err.splitlines()[-1]


DEFAULTS = {
    "bench_engine": {"condition": "canny", "steps": 20, "repeats": 7, "device": None},
    "bench_app": {
        "condition": "canny",
        "steps": 20,
        "repeats": 7,
        "timeout": 300.0,
        "idle_seconds": 10.0,
    },
    "bench_startup": {"condition": "canny", "steps": 20, "runs": 3, "threads": None},
    "bench_gpu": {"steps": 20, "repeats": 5, "compile_mode": None},
    "bench_detectors": {"repeats": 15, "resolution": 512},
    "bench_train": {"batch_size": 2, "steps": 8, "warmup": 2, "rounds": 2, "threads": None},
    "bench_synth": {"size": 128, "scenes": 300, "repeats": 3},
}


@pytest.mark.parametrize("name", DEFAULTS)
def test_the_defaults_parse(name):
    args = vars(script(name).parse_args([]))
    assert {key: args[key] for key in DEFAULTS[name]} == DEFAULTS[name]


def test_good_values_parse():
    engine = script("bench_engine").parse_args(["--device", "cpu", "--condition", "depth"])
    assert (engine.device, engine.condition) == ("cpu", "depth")
    modes = ["--compile-mode", "default", "--compile-mode", "reduce-overhead"]
    assert script("bench_gpu").parse_args(modes).compile_mode == ["default", "reduce-overhead"]
    assert script("bench_train").parse_args(["--warmup", "0", "--threads", "1"]).warmup == 0


def test_the_app_is_asked_for_the_presets_sampler_and_guidance_scale():
    from cnet.engine import GenerationRequest
    from cnet.models import Preset

    preset = Preset("tiny", "base", resolution=64, cfg=2.0, sampler="DDIM")
    settings = script("bench_startup").generation_settings(preset, steps=2)
    assert (settings["sampler"], settings["cfg"], settings["resolution"]) == ("DDIM", 2.0, 64)
    del settings["randomize_seed"]
    GenerationRequest(np.zeros((8, 8, 3), np.uint8), "canny", **settings).validate()


def test_idle_cpu_tells_a_sleeping_process_from_a_busy_one():
    idle_cpu_share = script("bench_app").idle_cpu_share
    code = {"sleeping": "import time; time.sleep(30)", "busy": "while True: pass"}
    shares = {}
    for name, statement in code.items():
        process = subprocess.Popen([sys.executable, "-c", statement])
        try:
            time.sleep(0.3)  # past the interpreter's start
            shares[name] = idle_cpu_share(process.pid, 0.5)
        finally:
            process.kill()
            process.wait()
    assert shares["sleeping"] < 0.05 < 0.2 < shares["busy"]


def test_the_drawing_backend_is_timed_on_an_upload_and_the_canvas_on_a_strokes_layer():
    load_input = script("bench_detectors").load_input
    assert load_input("scribble_balloon.png", "drawing").shape[2] == 3
    assert load_input("scribble_balloon.png", "canvas").shape[2] == 4


def test_a_model_dir_that_is_not_there_is_refused_before_the_app_starts(tmp_path, capsys):
    startup = script("bench_startup")
    with pytest.raises(SystemExit) as exit_info:
        startup.model_dir_or_tiny(str(tmp_path / "nodir"))
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert (
        f"error: --model-dir {tmp_path / 'nodir'}: {tmp_path / 'nodir' / 'base'} does not" in error
    )


def test_an_app_that_exits_is_named_with_its_log(tmp_path, capsys):
    startup = script("bench_startup")
    log = tmp_path / "app.log"
    log.write_text("failing on purpose\n")
    exited = mock.Mock(poll=mock.Mock(return_value=3))
    with pytest.raises(SystemExit):
        startup.wait_until_answering(exited, "http://127.0.0.1:9/", log, 5, Path("variant.py"))
    assert "error: variant.py exited; the end of its log:\nfailing on purpose" in (
        capsys.readouterr().err
    )


def test_every_table_names_the_machine_and_the_package_versions(monkeypatch):
    import torch

    measured_on = script("measured_on")
    line = measured_on.machine_line("torch threads 1")
    assert line.startswith("machine: ") and f", {os.cpu_count()} cores, load average " in line
    assert line.endswith(", torch threads 1")
    software = measured_on.software_line()
    assert f"torch {torch.__version__.split('+')[0]}" in software and "python 3." in software
    monkeypatch.setattr(measured_on, "PACKAGES", ("no-such-package-here",))
    assert measured_on.software_line().endswith("no-such-package-here not installed")
    for name in ("bench_app", "bench_startup", "bench_engine", "bench_gpu", "bench_detectors",
                 "bench_train", "bench_synth"):  # fmt: skip
        assert "software_line()" in (BENCHMARKS / f"{name}.py").read_text(), name
