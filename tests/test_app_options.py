"""app.py's performance flags reach the engine, and the engine's notices reach the UI."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import gradio as gr
import pytest

import cnet.engine
from cnet.conditions import CONDITIONS
from cnet.models import cpu_threads
from cnet.ui import build_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_model(tmp_path: Path) -> list[str]:
    return ["--model-dir", str(tmp_path)]


def test_without_flags_the_engine_keeps_its_defaults(app, no_model, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    engine = app.engine_from(app.parse_args(no_model))
    assert engine.preset.device == "cpu"
    assert engine.threads == cpu_threads()
    assert (engine.compile, engine.channels_last, engine.cpu_offload) == (False, False, False)


def test_performance_flags_reach_the_engine(app, no_model):
    engine = app.engine_from(app.parse_args([*no_model, "--threads", "3", "--compile"]))
    assert engine.threads == 3 and engine.compile
    engine = app.engine_from(app.parse_args([*no_model, "--channels-last"]))
    assert engine.channels_last and "channels_last" in engine.status()
    engine = app.engine_from(app.parse_args([*no_model, "--no-channels-last"]))
    assert engine.channels_last is False


def test_no_channels_last_overrides_the_cuda_default(app, no_model, monkeypatch):
    resolve = cnet.engine.resolve_preset
    monkeypatch.setattr(cnet.engine, "resolve_preset", lambda *a: resolve(*a[:4], "cuda"))
    assert app.engine_from(app.parse_args(no_model)).channels_last is True
    engine = app.engine_from(app.parse_args([*no_model, "--no-channels-last", "--cpu-offload"]))
    assert engine.channels_last is False and engine.cpu_offload is True


@pytest.mark.parametrize("threads", ["0", "-2", "two"])
def test_threads_must_be_a_positive_whole_number(app, threads):
    with pytest.raises(SystemExit):
        app.parse_args(["--threads", threads])


def test_cpu_offload_without_a_gpu_stops_with_what_to_do(app, no_model, caplog):
    with caplog.at_level(logging.ERROR, logger="cnet.app"):
        assert app.main([*no_model, "--cpu-offload", "--port", "1"]) == 2
    assert "leave out --cpu-offload" in caplog.text


def model_status_events(demo: gr.Blocks) -> list:
    return [
        fn
        for fn in demo.fns.values()
        if [block.elem_id for block in fn.outputs] == ["model-status"]
    ]


def test_status_line_is_redrawn_on_page_load_and_after_every_run(tmp_path: Path):
    demo = build_demo(cnet.engine.load_engine(model_dir=str(tmp_path)))
    runs = {id_: fn.api_name for id_, fn in demo.fns.items() if fn.api_name in CONDITIONS}
    refreshes = model_status_events(demo)
    assert any([event for _, event in fn.targets] == ["load"] for fn in refreshes)
    followed = {runs.get(fn.trigger_after) for fn in refreshes if fn.trigger_after is not None}
    assert followed == set(CONDITIONS)
    assert all(fn.api_visibility == "private" for fn in refreshes)


def test_engine_notices_appear_in_the_status_line_once_known(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(cnet.engine, "compile_problem", lambda device: "no C++ compiler here")
    engine = cnet.engine.load_engine(model_dir=str(tiny_model_dir), threads=1, compile=True)
    demo = build_demo(engine)
    (on_load,) = [
        fn for fn in model_status_events(demo) if [event for _, event in fn.targets] == ["load"]
    ]
    assert "--compile is off" not in on_load.fn()  # not loaded: not known yet
    engine.load()
    shown = on_load.fn()
    assert "⚠️ --compile is off: no C++ compiler here." in shown
    assert "loaded" in shown and "torch.compile" not in shown


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "99999"], "expected a port number from 1 to 65535, got '99999'"),
        (["--max-file-size", "25xb"], "expected a size such as 25mb or 1gb"),
        (["--max-file-size", "abc"], "expected a size such as 25mb or 1gb"),
    ],
)
def test_server_flags_gradio_cannot_take_are_refused_on_the_command_line(
    app, capsys, flags, message
):
    with pytest.raises(SystemExit):
        app.parse_args(flags)
    assert message in capsys.readouterr().err
    assert app.parse_args(["--max-file-size", "1 GB", "--port", "7861"]).port == 7861


def test_a_port_in_use_is_named_with_the_flag_to_change(app, no_model, caplog):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        used = str(taken.getsockname()[1])
        with caplog.at_level(logging.ERROR, logger="cnet.app"):
            assert app.main([*no_model, "--port", used]) == 1
    assert f"Cannot listen on 127.0.0.1:{used}: the port is in use" in caplog.text
    assert "choose another --port" in caplog.text


def test_the_queue_polls_at_the_apps_rate_not_every_millisecond(app, caplog):
    demo = gr.Blocks()
    demo.queue()
    app.calm_queue(demo._queue)
    for name, seconds in app.QUEUE_POLL_SECONDS.items():
        assert getattr(demo._queue, name) == seconds
    assert not caplog.records  # this Gradio still has the attributes it reads

    class RenamedQueue:
        sleep_when_free = 0.001

    renamed = RenamedQueue()
    with caplog.at_level(logging.WARNING):
        app.calm_queue(renamed)
    assert renamed.sleep_when_free == 0.02
    assert not hasattr(renamed, "progress_update_sleep_when_free")
    assert "no progress_update_sleep_when_free" in caplog.text
