"""The engine on the tiny random-weight model: loading, swapping, seeds, prompt modes, settings."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from cnet import png_info
from cnet.engine import (
    DEFAULT_PROMPT,
    MAX_SEED,
    SAMPLERS,
    Engine,
    GenerationCancelled,
    GenerationRequest,
    ModelMissingError,
    controlled_steps,
    load_engine,
)
from cnet.models import ModelMismatchError

STEPS = 2


@pytest.fixture
def control_map() -> np.ndarray:
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 12:30] = 255
    image[30:34, 30:60] = 255
    return image


def request(control_map: np.ndarray, **settings) -> GenerationRequest:
    settings = {"condition": "canny", "steps": STEPS, "added_prompt": "", **settings}
    return GenerationRequest(control_map, **settings)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture
def calls(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The keyword arguments of every pipeline call (the call itself still runs)."""
    pipeline_class = type(engine.pipeline)
    original = pipeline_class.__call__
    recorded = []

    def spy(pipe, *args, **kwargs):
        recorded.append({**kwargs, "scheduler": type(pipe.scheduler).__name__})
        return original(pipe, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", spy)
    return recorded


@pytest.fixture
def tokenized(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the pipeline's tokenizer is asked to tokenize."""
    tokenizer_class = type(engine.pipeline.tokenizer)
    original = tokenizer_class.__call__
    texts = []

    def spy(tokenizer, text, *args, **kwargs):
        texts.extend([text] if isinstance(text, str) else text)
        return original(tokenizer, text, *args, **kwargs)

    monkeypatch.setattr(tokenizer_class, "__call__", spy)
    return texts


def test_loads_the_model_folder(engine: Engine, tiny_model_dir: Path, control_map):
    import json

    unet_config = json.loads((tiny_model_dir / "base" / "unet" / "config.json").read_text())
    assert list(engine.pipeline.unet.config.block_out_channels) == unet_config["block_out_channels"]
    assert engine.preset.resolution == 64  # from preset.json
    assert (
        "tiny" in engine.status() and "cpu" in engine.status() and "missing" not in engine.status()
    )
    result = engine.generate(request(control_map, prompt="a red sphere"))
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert result.control_image.shape == (64, 64, 3)


def test_controlnet_swap_keeps_the_base(engine: Engine, control_map, monkeypatch):
    import cnet.engine

    loads = []
    original = cnet.engine.load_controlnet
    monkeypatch.setattr(
        cnet.engine,
        "load_controlnet",
        lambda source, *a, **k: loads.append(source) or original(source, *a, **k),
    )
    pipe = engine.pipeline
    base = (pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer)
    engine.generate(request(control_map, condition="canny"))
    canny = pipe.controlnet
    engine.generate(request(control_map, condition="depth"))
    depth = pipe.controlnet
    engine.generate(request(control_map, condition="canny"))
    assert engine.pipeline is pipe
    assert (pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer) == base
    assert depth is not canny and pipe.controlnet is canny  # cached, not reloaded
    assert [Path(s).name for s in loads].count("canny") <= 1
    weight = "controlnet_mid_block.weight"
    assert not np.allclose(canny.state_dict()[weight], depth.state_dict()[weight])


def test_controlnet_cache_is_bounded(tiny_model_dir: Path):
    engine = load_engine(model_dir=str(tiny_model_dir), device="cpu", controlnet_cache_size=2)
    models = [engine.controlnet(key) for key in ("canny", "depth", "seg")]
    assert len(engine._controlnets) == 2
    assert engine.controlnet("seg") is models[2]
    assert engine.controlnet("canny") is not models[0]  # evicted, so loaded again


def test_same_seed_same_images_and_image_i_uses_seed_plus_i(engine: Engine, control_map):
    first = engine.generate(request(control_map, seed=11, num_images=2))
    again = engine.generate(request(control_map, seed=11, num_images=2))
    alone = engine.generate(request(control_map, seed=12, num_images=1))
    assert first.seeds == [11, 12]
    for a, b in zip(first.images, again.images, strict=True):
        assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(first.images[0]) - pixels(first.images[1])).max() > 10
    # batched and alone: the same noise; batch arithmetic may differ in the last bit
    assert np.abs(pixels(first.images[1]) - pixels(alone.images[0])).max() <= 2


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("none", ""),
        ("default", f"{DEFAULT_PROMPT}, extra words"),
        ("user", "a blue cube, extra words"),
    ],
)
def test_prompt_mode_sets_the_encoded_text(engine, control_map, calls, mode, expected):
    result = engine.generate(
        request(control_map, prompt_mode=mode, prompt="a blue cube", added_prompt="extra words")
    )
    assert result.prompt == expected
    import torch

    pipe = engine.pipeline
    with torch.no_grad():
        direct, _ = pipe.encode_prompt(expected, pipe.device, 1, False)
    (call,) = calls
    assert call["prompt_embeds"].shape == direct.shape
    assert torch.allclose(call["prompt_embeds"], direct, atol=1e-5)


def test_no_prompt_skips_cfg_only_where_both_halves_agree(engine, control_map, calls):
    unprompted = {"prompt_mode": "none", "negative_prompt": "", "cfg": 9.0}
    fast = engine.generate(request(control_map, **unprompted, seed=3))
    engine.generate(request(control_map, **unprompted, guess_mode=True))
    engine.generate(request(control_map, **{**unprompted, "negative_prompt": "blurry"}))
    assert [call["guidance_scale"] for call in calls] == [1.0, 9.0, 9.0]
    assert fast.metadata["cfg"] == 9.0  # what the user asked for is what is recorded

    call = {k: v for k, v in calls[0].items() if k != "scheduler"}
    with_cfg = engine.pipeline(**{**call, "guidance_scale": 9.0, "generator": _generator(3)})
    with_cfg = with_cfg.images[0]
    assert np.abs(pixels(with_cfg) - pixels(fast.images[0])).max() <= 2


def test_a_request_without_cfg_takes_the_presets(engine, control_map, calls, monkeypatch):
    from dataclasses import replace

    monkeypatch.setattr(engine, "preset", replace(engine.preset, cfg=2.5))
    preset_default = engine.generate(request(control_map, prompt="a red cube"))
    asked = engine.generate(request(control_map, prompt="a red cube", cfg=7.0))
    assert [call["guidance_scale"] for call in calls] == [2.5, 7.0]
    assert (preset_default.metadata["cfg"], asked.metadata["cfg"]) == (2.5, 7.0)
    assert "CFG scale: 2.5" in preset_default.images[0].info["parameters"]


def test_a_request_without_sampler_takes_the_presets(engine, control_map, monkeypatch):
    from dataclasses import replace

    from diffusers import DDIMScheduler, DDPMScheduler

    used = []
    original = engine.scheduler
    monkeypatch.setattr(engine, "scheduler", lambda name: used.append(original(name)) or used[-1])
    monkeypatch.setattr(engine, "preset", replace(engine.preset, sampler="DDIM"))
    preset_default = engine.generate(request(control_map, prompt="a red cube", steps=2))
    asked = engine.generate(request(control_map, prompt="a red cube", steps=2, sampler="DDPM"))
    assert [type(s) for s in used] == [DDIMScheduler, DDPMScheduler]
    assert (preset_default.metadata["sampler"], asked.metadata["sampler"]) == ("DDIM", "DDPM")
    assert "Sampler: DDIM" in preset_default.images[0].info["parameters"]


def test_a_preset_naming_an_unknown_sampler_is_refused_with_the_fix(engine):
    from dataclasses import replace

    from cnet.engine import Engine

    with pytest.raises(ValueError, match=r"set \"sampler\" in its preset.json to one of: DDPM"):
        Engine(replace(engine.preset, sampler="Euler"))


def _generator(seed: int):
    import torch

    return [torch.Generator("cpu").manual_seed(seed)]


def test_prompt_modes_encode_different_text(engine, control_map, calls):
    for mode in ("none", "default", "user"):
        engine.generate(request(control_map, prompt_mode=mode, prompt="a yellow cone"))
    embeds = [call["prompt_embeds"].numpy() for call in calls]
    assert not np.allclose(embeds[0], embeds[1]) and not np.allclose(embeds[1], embeds[2])


def test_auto_mode_captions_the_default_prompt_image(
    engine, control_map, calls, tokenized, monkeypatch
):
    seen = []

    def fake_captioner(images):
        seen.extend(images)
        return ["a green cylinder on a grey background"]

    monkeypatch.setattr(engine, "captioner", lambda: fake_captioner)
    result = engine.generate(
        request(control_map, prompt_mode="auto", added_prompt="sharp", seed=7, num_images=2,
                keep_first_pass=True)
    )  # fmt: skip
    assert result.caption == "a green cylinder on a grey background"
    assert result.prompt == "a green cylinder on a grey background, sharp"
    assert f"{DEFAULT_PROMPT}, sharp" in tokenized and result.prompt in tokenized
    assert len(calls) == 2 and len(result.first_pass_images) == 2 and len(result.images) == 2
    assert pixels(seen[0]).tolist() == pixels(result.first_pass_images[0]).tolist()
    first_seeds = [g.initial_seed() for g in calls[0]["generator"]]
    second_seeds = [g.initial_seed() for g in calls[1]["generator"]]
    assert first_seeds == second_seeds == [7, 8]
    assert "Prompt mode: auto" in result.images[0].info["parameters"]


def test_auto_mode_without_keep_first_pass_samples_one_first_image(
    engine, control_map, calls, monkeypatch
):
    monkeypatch.setattr(engine, "captioner", lambda: lambda images: ["a red sphere"])
    result = engine.generate(request(control_map, prompt_mode="auto", num_images=2))
    assert [len(call["generator"]) for call in calls] == [1, 2]
    assert result.first_pass_images == []


def test_auto_mode_reports_a_missing_captioner(tiny_model_dir, control_map):
    from cnet.captioner import CaptionerUnavailable

    engine = load_engine(model_dir=str(tiny_model_dir), device="cpu")
    with pytest.raises(CaptionerUnavailable, match="captioner") as error:
        engine.captioner()
    assert str(tiny_model_dir / "captioner") in str(error.value)
    assert "python -m cnet train captioner" in str(error.value)


def test_auto_mode_fails_before_sampling_without_a_captioner(
    engine, control_map, calls, tmp_path, monkeypatch
):
    from dataclasses import replace

    from cnet.captioner import CaptionerUnavailable

    monkeypatch.setattr(engine, "preset", replace(engine.preset, captioner=str(tmp_path / "none")))
    with pytest.raises(CaptionerUnavailable, match=str(tmp_path / "none")):
        engine.generate(request(control_map, prompt_mode="auto"))
    assert calls == []


def test_auto_mode_reports_a_failing_captioner(engine, control_map, monkeypatch):
    from cnet.captioner import CaptionerUnavailable

    def broken(images):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine, "captioner", lambda: broken)
    with pytest.raises(CaptionerUnavailable, match="out of memory"):
        engine.generate(request(control_map, prompt_mode="auto"))


def test_repeated_prompts_are_encoded_once(engine, control_map, tokenized):
    text = "a person on a white background"
    engine.generate(request(control_map, prompt=text, seed=1))
    assert text in tokenized
    count = len(tokenized)
    engine.generate(request(control_map, prompt=text, seed=2))
    assert len(tokenized) == count


def test_settings_reach_the_pipeline(engine, control_map, calls):
    engine.generate(
        request(control_map, control_strength=0.6, guess_mode=True, control_start=0.2,
                control_end=0.7, steps=3, cfg=4.5, sampler="DDIM", eta=0.3)
    )  # fmt: skip
    (call,) = calls
    assert call["controlnet_conditioning_scale"] == 0.6
    assert call["guess_mode"] is True
    assert (call["control_guidance_start"], call["control_guidance_end"]) == (0.2, 0.7)
    assert call["num_inference_steps"] == 3 and call["guidance_scale"] == 4.5
    assert call["scheduler"] == "DDIMScheduler" and call["eta"] == 0.3


@pytest.mark.parametrize(
    ("sampler", "scheduler"),
    [
        ("DDPM", "DDPMScheduler"),
        ("DDIM", "DDIMScheduler"),
        ("UniPC", "UniPCMultistepScheduler"),
        ("Euler a", "EulerAncestralDiscreteScheduler"),
        ("DPM++ 2M", "DPMSolverMultistepScheduler"),
    ],
)
def test_each_sampler_runs(engine, control_map, calls, sampler, scheduler):
    result = engine.generate(request(control_map, sampler=sampler))
    assert calls[0]["scheduler"] == scheduler
    assert f"Sampler: {sampler}" in result.images[0].info["parameters"]
    assert sampler in SAMPLERS


def test_every_sampler_is_made_from_the_bases_scheduler_not_the_last_one_used(
    engine, control_map, monkeypatch
):
    import cnet.engine

    engine.generate(request(control_map, sampler="Euler a"))  # the pipeline's scheduler now
    made_from = []
    monkeypatch.setattr(
        cnet.engine, "make_scheduler", lambda sampler, config: made_from.append(config)
    )
    monkeypatch.setattr(engine, "_schedulers", {})  # the engine is shared: its own come back
    engine.scheduler("DDIM")
    assert made_from == [engine._base_scheduler_config]
    assert made_from[0]["_class_name"] != "EulerAncestralDiscreteScheduler"


def test_control_strength_changes_the_image(engine, control_map):
    """At strength 0 the ControlNet adds nothing: two conditions give the same image."""
    images = {
        (condition, strength): pixels(
            engine.generate(
                request(control_map, condition=condition, control_strength=strength)
            ).images[0]
        )
        for condition in ("canny", "seg")
        for strength in (0.0, 1.0)
    }
    assert np.array_equal(images["canny", 0.0], images["seg", 0.0])
    assert np.abs(images["canny", 1.0] - images["seg", 1.0]).max() > 0


def test_progress_reports_every_step(engine, control_map):
    steps = []
    engine.generate(
        request(control_map, steps=3), progress=lambda done, total: steps.append((done, total))
    )
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_cancel_stops_generation_and_the_engine_keeps_working(engine, control_map):
    cancel = threading.Event()
    steps = []

    def progress(done, total):
        steps.append(done)
        cancel.set()

    with pytest.raises(GenerationCancelled):
        engine.generate(request(control_map, steps=4), progress=progress, cancel=cancel)
    assert steps == [1]
    with pytest.raises(GenerationCancelled):
        engine.generate(request(control_map), cancel=cancel)  # already set: nothing runs
    assert len(engine.generate(request(control_map)).images) == 1


def test_resolution_is_rounded_to_the_latent_grid(engine):
    control = np.zeros((100, 150, 3), np.uint8)
    result = engine.generate(request(control, resolution=100))
    assert result.control_image.shape == (128, 192, 3)
    assert result.images[0].size == (192, 128)
    assert (result.metadata["width"], result.metadata["height"]) == (192, 128)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_images": 13}, "number of images"),
        ({"num_images": 0}, "number of images"),
        ({"steps": 0}, "steps"),
        ({"cfg": 31.0}, "CFG"),
        ({"cfg": 0.5}, "CFG scale must be between 1.0"),  # below 1 diffusers would ignore it
        ({"steps": 4, "control_end": 0.2}, "hold none of the 4 steps"),
        ({"steps": 4, "control_start": 0.8}, "hold none of the 4 steps"),
        ({"prompt": None}, "The prompt must be text"),
        ({"negative_prompt": 3}, "The negative prompt must be text"),
        ({"prompt": "a caf\udce9 table"}, "not UTF-8 text.*LANG=C.UTF-8"),  # argv in Latin-1
        ({"control_strength": 2.5}, "control strength"),
        ({"control_start": 0.8, "control_end": 0.5}, "Control start"),
        ({"resolution": 32}, "resolution"),
        ({"seed": -1}, "seed"),
        ({"sampler": "Heun"}, "sampler"),
        ({"prompt_mode": "magic"}, "prompt mode"),
        ({"condition": "Canny"}, "Unknown condition 'Canny'; choose one of: scribble, canny"),
        ({"condition": "mlsd"}, "Unknown condition 'mlsd'"),  # the sd15 checkpoint's name
        ({"steps": 2.5}, "whole number"),
        ({"control_image": np.zeros((8, 8), np.uint8)}, "H x W x 3"),
        ({"control_image": np.zeros((8, 8, 3), np.float32)}, "uint8"),
        ({"control_image": np.zeros((8, 800, 3), np.uint8), "resolution": 512}, "limit"),
    ],
)
def test_bad_requests_raise_clear_errors(engine, control_map, settings, message):
    with pytest.raises(ValueError, match=message):
        engine.generate(request(settings.pop("control_image", control_map), **settings))


@pytest.mark.parametrize(
    ("steps", "start", "end", "held"),
    [(4, 0.0, 0.2, 0), (20, 0.0, 0.2, 4), (4, 0.5, 1.0, 2), (4, 0.8, 1.0, 0), (20, 0.0, 1.0, 20)],
)
def test_controlled_steps_follows_diffusers_rule(steps, start, end, held):
    assert controlled_steps(steps, start, end) == held


def test_seeds_past_the_largest_wrap_to_zero(engine, control_map):
    result = engine.generate(request(control_map, seed=MAX_SEED, num_images=2))
    assert result.seeds == [MAX_SEED, 0]
    assert "Seed: 0," in result.images[1].info["parameters"]


def test_an_overlong_negative_prompt_is_named_as_such(engine, control_map):
    long = " ".join(["lowres"] * 100)
    settings = request(control_map, prompt="a red sphere", negative_prompt=long)
    notices = engine.generate(settings).metadata["notices"]
    assert len(notices) == 1 and notices[0].startswith("The negative prompt is")
    notices = engine.generate(request(control_map, prompt=long, negative_prompt="")).metadata[
        "notices"
    ]
    assert len(notices) == 1 and notices[0].startswith("The prompt is")


def test_result_images_carry_parameters(engine, control_map, tmp_path):
    result = engine.generate(
        request(control_map, prompt="a red sphere", added_prompt="sharp", seed=42, num_images=2)
    )
    path = png_info.save_png(result.images[1], tmp_path / "out.png")
    prompt, negative, settings = png_info.parse_parameters(png_info.read_parameters(path))
    assert prompt == "a red sphere, sharp"
    assert negative == engine.preset.negative_prompt and negative.startswith("longbody, lowres")
    assert settings["Seed"] == "43" and settings["Steps"] == str(STEPS)
    assert settings["Sampler"] == "DDPM" and settings["Size"] == "64x64"
    assert "Weight: 1.0" in settings["ControlNet 0"]
    assert "Model: canny," in settings["ControlNet 0"]  # the folder's name, not its path
    assert settings["ControlNet 0"].startswith("Module: none,")  # a map given as it is
    detected = engine.generate(request(control_map, preprocessor="canny", steps=1))
    assert 'ControlNet 0: "Module: canny, Model: canny,' in detected.images[0].info["parameters"]
    assert str(Path(result.metadata["controlnet"]).parent) not in png_info.read_parameters(path)
    assert result.metadata["seeds"] == [42, 43] and result.metadata["condition"] == "canny"


def test_missing_weights_raise_model_missing_error(tmp_path: Path, control_map):
    engine = load_engine(model_dir=str(tmp_path / "nowhere"), device="cpu")  # does not raise
    assert "missing" in engine.status() and "base" in engine.status()
    with pytest.raises(ModelMissingError) as error:
        engine.generate(request(control_map))
    assert str(tmp_path / "nowhere" / "base") in str(error.value)
    assert "hf download" in str(error.value)


def test_a_missing_controlnet_names_its_folder(tiny_model_dir: Path, tmp_path: Path, control_map):
    engine = load_engine(
        model_dir=str(tiny_model_dir), device="cpu", controlnets={"canny": str(tmp_path / "gone")}
    )
    assert "canny ControlNet" in engine.status()
    with pytest.raises(ModelMissingError, match=str(tmp_path / "gone")):
        engine.controlnet("canny")


def test_a_controlnet_of_another_base_is_refused_naming_what_differs(
    tiny_model_dir: Path, tmp_path: Path
):
    from diffusers import ControlNetModel

    config = dict(ControlNetModel.load_config(tiny_model_dir / "controlnet" / "canny"))
    config["cross_attention_dim"] *= 2  # one trained with a wider text encoder
    ControlNetModel.from_config(config).save_pretrained(tmp_path / "wider")
    engine = load_engine(
        model_dir=str(tiny_model_dir), device="cpu", controlnets={"canny": str(tmp_path / "wider")}
    )
    assert engine.mismatched() == ["canny"]  # told before any Run, from the configs alone
    assert "ControlNets made for another base: canny" in engine.status()
    from cnet.ui.blocks import model_status

    assert "another base** (Run refuses them): canny. Give" in model_status(engine)
    width = config["cross_attention_dim"]
    with pytest.raises(ModelMismatchError, match=rf"cross_attention_dim {width} \(the base's"):
        engine.controlnet("canny")
    assert engine.controlnet("depth") is not None  # the base's own ControlNets still load


def test_the_embedded_controlnets_on_another_base_are_flagged_low_rank_ones_too(tiny_model_dir):
    engine = load_engine("embedded", base=str(tiny_model_dir / "base"), device="cpu")
    assert engine.mismatched() == list(engine.preset.controlnets)
    assert load_engine("embedded", device="cpu").mismatched() == []


def test_a_request_without_added_or_negative_prompt_takes_the_presets(
    engine, control_map, tokenized, monkeypatch
):
    own = dataclasses.replace(engine.preset, added_prompt="sharp", negative_prompt="dull")
    monkeypatch.setattr(engine, "preset", own)
    settings = request(control_map, prompt="a red sphere", added_prompt=None)
    result = engine.generate(settings)
    assert result.prompt == "a red sphere, sharp" and result.metadata["negative_prompt"] == "dull"
    assert "dull" in tokenized
    given = request(control_map, prompt="a red sphere", added_prompt="", negative_prompt="")
    assert engine.generate(given).metadata["negative_prompt"] == ""


def test_eta_with_a_sampler_that_ignores_it_is_named(engine, control_map):
    notice = "Eta is read by the DDIM sampler only; DDPM ignores it."
    settings = request(control_map, prompt="a red sphere", sampler="DDPM", eta=0.5)
    assert notice in engine.generate(settings).metadata["notices"]
    for sampler, eta in (("DDIM", 0.5), ("DDPM", 0.0)):
        settings = dataclasses.replace(settings, sampler=sampler, eta=eta)
        assert not [n for n in engine.generate(settings).metadata["notices"] if "Eta" in n]


def test_an_empty_user_prompt_is_named_with_what_to_do(engine, control_map):
    settings = request(control_map, prompt_mode="user", prompt="  ", negative_prompt="")
    (unprompted,) = engine.generate(settings).metadata["notices"]
    assert "follow the map alone, unprompted" in unprompted
    assert 'the No prompt ("none") or Default prompt ("default") mode' in unprompted
    settings = dataclasses.replace(settings, added_prompt="sharp")
    (added,) = engine.generate(settings).metadata["notices"]
    assert "follow the added prompt alone" in added
    for mode, prompt in (("user", "a red sphere"), ("none", ""), ("default", "")):
        settings = request(control_map, prompt_mode=mode, prompt=prompt, negative_prompt="")
        assert engine.generate(settings).metadata["notices"] == []


def test_a_long_prompt_gets_the_engines_notice_not_the_libraries_warnings(engine):
    import logging

    said = []

    class Collect(logging.Handler):  # sees what the loggers' own filters let through
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    collect = Collect()
    names = ("transformers.tokenization_utils_base", type(engine.pipeline).__module__)
    loggers = [logging.getLogger(name) for name in names]
    engine.pipeline.tokenizer.deprecation_warnings.clear()  # transformers warns once per tokenizer
    text = "a red sphere beside a blue cube on a wooden floor, " * 8  # some 100 tokens
    request = GenerationRequest(
        np.zeros((64, 64, 3), np.uint8), "canny", prompt=text, negative_prompt=text + "x", steps=1
    )
    for logger in loggers:
        logger.addHandler(collect)
    try:
        notices = engine.generate(request).metadata["notices"]
    finally:
        for logger in loggers:
            logger.removeHandler(collect)
    assert any("tokens long; the text encoder reads the first" in notice for notice in notices)
    assert not [line for line in said if "truncated" in line or "indexing errors" in line], said
