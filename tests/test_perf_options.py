"""Engine speed options on the tiny model: torch.compile, channels_last, model CPU offload, and
the work that must happen once per engine, never per request. No timings here (see benchmarks/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel

import cnet.cli.generate
import cnet.engine
import cnet.models
from cnet.__main__ import main
from cnet.engine import GenerationRequest, ModelMissingError, load_engine
from cnet.models import compile_problem, cpu_threads, dtype_for

ROOT = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("torch", "diffusers", "transformers", "controlnet_aux", "gradio")


@pytest.fixture
def control_map() -> np.ndarray:
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 12:30] = 255
    return image


def request(control_map: np.ndarray, condition: str = "canny") -> GenerationRequest:
    return GenerationRequest(control_map, condition, prompt="a red sphere", steps=1)


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every module handed to torch.compile (returned unchanged, so nothing compiles)."""
    modules = []

    def spy(module, *args, **kwargs):
        modules.append(module)
        return module

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.setattr(cnet.engine, "compile_problem", lambda device: None)
    return modules


def channels_last(module: torch.nn.Module) -> bool:
    weights = [p for p in module.parameters() if p.ndim == 4]
    return all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


# ---- startup -----------------------------------------------------------------------------------


def test_importing_the_engine_registry_and_models_loads_no_heavy_library():
    code = (
        "import json, sys; import cnet.engine, cnet.models, cnet.conditions; "
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(output.stdout) == []


def test_a_refused_generate_in_a_log_file_loads_no_heavy_library(tmp_path):
    code = (
        "import json, sys; from cnet.__main__ import main; "
        "code = main(['generate', 'map.png', '-c', 'canny']); "
        f"print(json.dumps([code, [m for m in {HEAVY_MODULES!r} if m in sys.modules]]))"
    )
    output = subprocess.run(  # stderr is a pipe here, not a terminal: the libraries' bars go
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "error: No image file at map.png." in output.stderr  # refused after the engine's made
    code, loaded = json.loads(output.stdout)
    assert code == 2 and not {"diffusers", "transformers"} & set(loaded)


def test_without_a_gpu_driver_choosing_the_device_imports_no_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(cnet.models.platform, "system", lambda: "Linux")
    monkeypatch.setattr(cnet.models, "GPU_DRIVER_FILES", (str(tmp_path / "nvidia0"),))
    assert not cnet.models.gpu_driver_present()
    assert cnet.models.detect_device() == "cpu"
    (tmp_path / "nvidia0").touch()
    assert cnet.models.gpu_driver_present()
    monkeypatch.setattr(cnet.models.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(cnet.models, "GPU_DRIVER_FILES", ())
    assert cnet.models.gpu_driver_present()  # MPS: only torch can tell


@pytest.mark.skipif(cnet.models.gpu_driver_present(), reason="a GPU driver is present here")
def test_load_engine_on_a_machine_without_gpu_imports_no_torch(tiny_model_dir):
    code = (
        "import sys; from cnet.engine import load_engine; "
        f"engine = load_engine(model_dir={str(tiny_model_dir)!r}); "
        "print(engine.preset.device, 'torch' in sys.modules)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert output.stdout.split() == ["cpu", "False"]


def test_load_in_background_loads_base_and_controlnets(tiny_model_dir, control_map):
    engine = load_engine(model_dir=str(tiny_model_dir), device="cpu", threads=1)
    assert not engine.loaded
    engine.load_in_background(["depth"]).join(timeout=120)
    assert engine.loaded
    assert engine.preset.controlnet_source("depth") in engine._controlnets


@pytest.mark.slow
def test_first_request_during_background_load_in_a_fresh_process(tiny_model_dir):
    # A fresh interpreter: diffusers not imported yet, so both threads import it at once.
    code = (
        "import numpy as np; from cnet.engine import GenerationRequest, load_engine; "
        f"engine = load_engine(model_dir={str(tiny_model_dir)!r}, device='cpu', threads=1); "
        "engine.load_in_background(['canny']); "
        "image = np.zeros((64, 64, 3), np.uint8); image[20:40, 10:50] = 255; "
        "result = engine.generate(GenerationRequest(image, 'canny', steps=1)); "
        "print(len(result.images))"
    )
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert output.returncode == 0, output.stderr[-2000:]
    assert output.stdout.split()[-1] == "1"


def test_load_in_background_leaves_a_missing_model_to_generate(tmp_path, control_map):
    engine = load_engine(model_dir=str(tmp_path), device="cpu", threads=1)
    engine.load_in_background(["canny"]).join(timeout=60)
    assert not engine.loaded and "missing" in engine.status()
    with pytest.raises(ModelMissingError):
        engine.generate(request(control_map))


# ---- once per engine, never per request --------------------------------------------------------


def test_requests_neither_reload_nor_move_models(engine, control_map, monkeypatch):
    engine.generate(request(control_map, "canny"))
    engine.generate(request(control_map, "depth"))  # both ControlNets now cached
    events = []

    def spy(name, original):
        def recorded(*args, **kwargs):
            events.append(name)
            return original(*args, **kwargs)

        return recorded

    from diffusers import DiffusionPipeline, ModelMixin
    from transformers import PreTrainedModel

    for cls in (torch.nn.Module, ModelMixin, PreTrainedModel, DiffusionPipeline):
        if "to" in vars(cls):
            monkeypatch.setattr(cls, "to", spy(f"{cls.__name__}.to", cls.to))
    for cls in (ModelMixin, PreTrainedModel, DiffusionPipeline):
        original = cls.from_pretrained.__func__
        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy("from_pretrained", original)))
    for name in ("load_base", "load_controlnet"):
        monkeypatch.setattr(cnet.engine, name, spy(name, getattr(cnet.engine, name)))

    engine.generate(request(control_map, "canny"))
    engine.generate(request(control_map, "depth"))
    assert events == []


def test_sampling_runs_under_inference_mode(engine, control_map, monkeypatch):
    unet_class = type(engine.pipeline.unet)
    original = unet_class.forward
    modes = []

    def spy(unet, *args, **kwargs):
        modes.append(torch.is_inference_mode_enabled())
        return original(unet, *args, **kwargs)

    monkeypatch.setattr(unet_class, "forward", spy)
    engine.generate(request(control_map))
    assert modes and all(modes)


def test_repeated_prompts_skip_the_text_encoder(engine, control_map, monkeypatch):
    engine.generate(request(control_map))
    encoder_class = type(engine.pipeline.text_encoder)
    original = encoder_class.forward
    calls = []

    def spy(encoder, *args, **kwargs):
        calls.append(args)
        return original(encoder, *args, **kwargs)

    monkeypatch.setattr(encoder_class, "forward", spy)
    engine.generate(request(control_map))
    assert calls == []
    engine.generate(GenerationRequest(control_map, "canny", prompt="a blue cube", steps=1))
    assert len(calls) == 1  # a new text is encoded once (the negative prompt is cached)


def test_attention_uses_scaled_dot_product_attention(engine):
    for model in (engine.pipeline.unet, engine.controlnet("canny")):
        kinds = {type(processor).__name__ for processor in model.attn_processors.values()}
        assert kinds == {"AttnProcessor2_0"}


def test_cpu_threads_are_the_cores_unless_omp_says_otherwise(engine, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads() == len(__import__("os").sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    assert torch.get_num_threads() == engine.threads == 1


@pytest.fixture
def gpus_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines for "cuda" and "mps" on this machine: names only, nothing is moved there."""
    monkeypatch.setattr(cnet.engine, "check_device", lambda device: None)


def test_a_device_torch_cannot_use_is_refused_when_the_engine_is_made(tiny_model_dir):
    with pytest.raises(ValueError, match="Unknown device 'gpu': use cuda, mps or cpu."):
        load_engine(model_dir=str(tiny_model_dir), device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no cuda device on this machine"):
            load_engine(model_dir=str(tiny_model_dir), device="cuda")


def test_float16_on_gpus_float32_on_the_cpu(tiny_model_dir, gpus_here):
    assert dtype_for("cpu") == "float32"
    assert dtype_for("cuda") == dtype_for("mps") == "float16"
    assert load_engine(model_dir=str(tiny_model_dir), device="cuda").preset.dtype == "float16"


# ---- channels_last ------------------------------------------------------------------------------


def test_channels_last_is_on_for_cuda_only_by_default(engine, tiny_model_dir, gpus_here):
    assert load_engine(model_dir=str(tiny_model_dir), device="cuda").channels_last
    assert not load_engine(model_dir=str(tiny_model_dir), device="mps").channels_last
    assert not engine.channels_last
    assert not channels_last(engine.pipeline.unet)
    assert not channels_last(engine.controlnet("canny"))


def test_channels_last_when_asked_converts_unet_and_controlnets(tiny_model_dir, control_map):
    engine = load_engine(model_dir=str(tiny_model_dir), device="cpu", threads=1, channels_last=True)
    engine.generate(request(control_map))
    assert channels_last(engine.pipeline.unet)
    assert channels_last(engine.controlnet("canny"))
    assert "channels_last" in engine.status()


# ---- torch.compile -------------------------------------------------------------------------------


def test_compile_flag_compiles_unet_and_each_controlnet_once(tiny_model_dir, control_map, compiled):
    engine = load_engine(model_dir=str(tiny_model_dir), device="cpu", threads=1, compile=True)
    assert compiled == []  # nothing before the first use
    engine.generate(request(control_map, "canny"))
    assert [type(m) for m in compiled] == [UNet2DConditionModel, ControlNetModel]
    engine.generate(request(control_map, "canny"))
    assert len(compiled) == 2
    engine.generate(request(control_map, "depth"))
    assert len(compiled) == 3 and isinstance(compiled[2], ControlNetModel)
    assert engine.pipeline.controlnet is compiled[2]
    assert "torch.compile" in engine.status()


def test_without_compile_nothing_is_compiled(engine, control_map, compiled):
    engine.generate(request(control_map, "seg"))
    assert compiled == []
    assert "torch.compile" not in engine.status()


def test_compile_where_unsupported_runs_without_it_and_says_why(
    tiny_model_dir, compiled, monkeypatch
):
    monkeypatch.setattr(cnet.engine, "compile_problem", lambda device: "no C++ compiler here")
    engine = load_engine(model_dir=str(tiny_model_dir), device="cpu", threads=1, compile=True)
    engine.load()
    engine.controlnet("canny")
    assert compiled == []
    assert "--compile is off: no C++ compiler here" in engine.status()


def test_compile_problem_names_what_is_missing(monkeypatch):
    import shutil

    import torch.utils._triton

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "C++ compiler" in compile_problem("cpu")
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    assert "Triton" in compile_problem("cuda")


def test_a_compile_failure_says_to_run_without_compile(
    tiny_model_dir, control_map, compiled, monkeypatch
):
    engine = load_engine(model_dir=str(tiny_model_dir), device="cpu", threads=1, compile=True)
    engine.load()

    def fail(*args, **kwargs):
        raise torch._dynamo.exc.TorchDynamoException("inductor could not build a kernel")

    monkeypatch.setattr(type(engine.pipeline.unet), "forward", fail)
    with pytest.raises(RuntimeError, match="without --compile"):
        engine.generate(request(control_map))


# ---- model CPU offload --------------------------------------------------------------------------


def test_cpu_offload_hooks_each_new_controlnet_and_moves_nothing(
    tiny_model_dir, monkeypatch, gpus_here
):
    devices = []
    monkeypatch.setattr(
        StableDiffusionControlNetPipeline,
        "enable_model_cpu_offload",
        lambda pipe, device=None, gpu_id=None: devices.append(device),
    )
    # "cuda" is only a name here: with offload nothing is moved there until a hook runs
    engine = load_engine(
        model_dir=str(tiny_model_dir), device="cuda", cpu_offload=True, channels_last=False
    )
    engine._use_controlnet("canny")
    engine._use_controlnet("canny")
    assert devices == ["cuda"]
    engine._use_controlnet("depth")
    assert devices == ["cuda", "cuda"]
    pipe = engine.pipeline
    for model in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.controlnet):
        assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert "model CPU offload" in engine.status()


def test_cpu_offload_on_the_cpu_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="--cpu-offload"):
        load_engine(model_dir=str(tiny_model_dir), device="cpu", cpu_offload=True)
    control = tmp_path / "map.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(control)
    argv = ["generate", str(control), "-c", "canny", "--model-dir", str(tiny_model_dir)]
    assert main([*argv, "--device", "cpu", "--cpu-offload", "-o", str(tmp_path)]) == 2
    assert "--cpu-offload" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], dict(compile=False, channels_last=None, cpu_offload=False)),
        (["--compile", "--cpu-offload"], dict(compile=True, channels_last=None, cpu_offload=True)),
        (["--channels-last"], dict(compile=False, channels_last=True, cpu_offload=False)),
        (["--no-channels-last"], dict(compile=False, channels_last=False, cpu_offload=False)),
    ],
)
def test_cli_flags_reach_load_engine(flags, expected, tmp_path, monkeypatch):
    received = {}

    def spy(*args, **kwargs):
        received.update(kwargs)
        raise ModelMissingError("stop here")

    monkeypatch.setattr(cnet.cli.generate, "load_engine", spy)
    assert main(["generate", "map.png", "-c", "canny", *flags, "-o", str(tmp_path)]) == 1
    assert {key: received[key] for key in expected} == expected
