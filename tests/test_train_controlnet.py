"""ControlNet training as the paper describes, checked on tiny models.

y_c = y at initialisation, zero convolutions that block gradients until their first update,
prompt dropout, small-scale and large-scale modes, exact resume, and an export the pipeline loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnet.engine import DEFAULT_PROMPT
from cnet.train.controlnet import (
    Models,
    TrainConfig,
    base_parameters,
    drop_prompts,
    load_base,
    lock,
    new_controlnet,
    train,
    training_loss,
    zero_convolutions,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fill50k_dir(tmp_path_factory) -> Path:
    """Eight 64 px examples: a coloured disc (target) and its white outline (control)."""
    root = tmp_path_factory.mktemp("fill50k")
    (root / "source").mkdir()
    (root / "target").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    lines = []
    for i in range(8):
        cx, cy, r = rng.integers(20, 44, 2).tolist() + [int(rng.integers(8, 18))]
        distance = np.hypot(xx - cx, yy - cy)
        target = np.full((64, 64, 3), 230, np.uint8)
        target[distance < r] = rng.integers(0, 255, 3)
        source = np.zeros((64, 64, 3), np.uint8)
        source[np.abs(distance - r) < 1.0] = 255
        Image.fromarray(target).save(root / "target" / f"{i}.png")
        Image.fromarray(source).save(root / "source" / f"{i}.png")
        prompt = f"a disc of colour {i}"
        lines.append({"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": prompt})
    (root / "prompt.json").write_text("\n".join(json.dumps(line) for line in lines))
    return root


def config(tiny_model_dir, data, out, **overrides) -> TrainConfig:
    settings = dict(
        base=str(tiny_model_dir),
        output_dir=str(out),
        data=str(data),
        batch_size=2,
        learning_rate=1e-3,
        max_steps=2,
        checkpoint_every=2,
        validate_every=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def models_with(controlnet, parts) -> Models:
    lock(parts["vae"], parts["text_encoder"], parts["unet"])
    return Models(controlnet=controlnet, **parts)


def a_batch(fill50k_dir, size=2) -> dict:
    from cnet.train.data import BatchStream, open_dataset

    return next(BatchStream(open_dataset(str(fill50k_dir), 64), size, seed=0))


def test_a_start_controlnet_of_another_base_is_refused_before_training(
    tiny_model_dir, fill50k_dir, tmp_path
):
    from diffusers import ControlNetModel

    from cnet.models import ModelMismatchError

    settings = dict(ControlNetModel.load_config(tiny_model_dir / "controlnet" / "canny"))
    settings["layers_per_block"] += 1  # a deeper encoder than this base's
    ControlNetModel.from_config(settings).save_pretrained(tmp_path / "deeper")
    run = config(tiny_model_dir, fill50k_dir, tmp_path / "run", controlnet=str(tmp_path / "deeper"))
    with pytest.raises(ModelMismatchError, match="layers_per_block"):
        train(run)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_pipeline_output_is_bit_identical_with_a_fresh_controlnet(tiny_model_dir):
    """y_c = F(x) + Z(F(x + Z(c))) = F(x): at init the ControlNet changes nothing at all."""
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
    )

    parts = load_base(str(tiny_model_dir))
    control = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))

    def sample(pipe, **extra) -> np.ndarray:
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(3)
        return pipe(
            "a red sphere",
            num_inference_steps=3,
            output_type="np",
            height=64,
            width=64,
            generator=generator,
            **extra,
        ).images

    def with_controlnet(controlnet) -> np.ndarray:
        pipe = StableDiffusionControlNetPipeline(
            **parts, controlnet=controlnet, safety_checker=None, feature_extractor=None
        )
        return sample(pipe, image=control)

    base = sample(StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None))
    fresh = new_controlnet(parts["unet"], str(tiny_model_dir))
    assert np.array_equal(with_controlnet(fresh), base)

    # The same check notices a ControlNet whose zero convolutions are no longer zero.
    trained = ControlNetModel.from_pretrained(tiny_model_dir / "controlnet" / "canny")
    assert not np.array_equal(with_controlnet(trained), base)


def test_zero_convolutions_pass_no_gradient_at_init_and_move_after_one_step(
    tiny_model_dir, fill50k_dir
):
    parts = load_base(str(tiny_model_dir))
    controlnet = new_controlnet(parts["unet"], str(tiny_model_dir))
    models = models_with(controlnet, parts)
    convs = zero_convolutions(controlnet)
    assert all(not conv.weight.any() and not conv.bias.any() for conv in convs)
    input_grads = []
    hooks = [
        conv.register_full_backward_hook(lambda m, grad_in, grad_out: input_grads.append(grad_in))
        for conv in convs
    ]
    loss = training_loss(
        models,
        a_batch(fill50k_dir),
        torch.Generator().manual_seed(0),
        torch.Generator().manual_seed(1),
        0.5,
        connect_decoder=True,
    )
    loss.backward()
    for hook in hooks:
        hook.remove()

    assert len(input_grads) == len(convs)
    assert all(not g.any() for grads in input_grads for g in grads if g is not None)
    zero_conv_params = {id(p) for conv in convs for p in conv.parameters()}
    trunk = [p for p in controlnet.parameters() if id(p) not in zero_conv_params]
    assert all(p.grad is None or not p.grad.any() for p in trunk)
    assert all(conv.weight.grad.any() for conv in convs)
    assert all(p.grad is None for m in (parts["unet"], parts["vae"]) for p in m.parameters())

    torch.optim.AdamW(controlnet.parameters(), lr=1e-3).step()
    assert all(conv.weight.any() for conv in convs)


def test_measured_empty_prompt_rate_matches_the_proportion():
    generator = torch.Generator().manual_seed(0)
    prompts = [f"prompt {i}" for i in range(16)]
    for proportion in (0.5, 0.1):
        dropped = [drop_prompts(prompts, proportion, generator) for _ in range(1000)]
        empty = sum(p == "" for batch in dropped for p in batch) / (1000 * len(prompts))
        assert abs(empty - proportion) < 0.01
        assert all(p in ("", q) for batch in dropped for p, q in zip(batch, prompts, strict=True))
    assert TrainConfig(base="x").proportion_empty_prompts == 0.5


def test_the_training_loss_sees_the_configured_share_of_empty_prompts(tiny_model_dir, fill50k_dir):
    parts = load_base(str(tiny_model_dir))
    models = models_with(new_controlnet(parts["unet"], str(tiny_model_dir)), parts)
    tokenizer, seen = models.tokenizer, []

    def spying_tokenizer(prompts, **kwargs):
        seen.extend(prompts)
        return tokenizer(prompts, **kwargs)

    spying_tokenizer.model_max_length = tokenizer.model_max_length
    models.tokenizer = spying_tokenizer
    batch = a_batch(fill50k_dir, size=8)
    noise, prompts = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(25):
            training_loss(models, batch, noise, prompts, 0.5, connect_decoder=True)
    rate = sum(p == "" for p in seen) / len(seen)
    assert len(seen) == 200 and abs(rate - 0.5) < 0.12

    seen.clear()
    with torch.no_grad():
        for _ in range(25):
            training_loss(models, batch, noise, prompts, 0.5, True, default_prompt_share=1.0)
    assert "" not in seen and abs(seen.count(DEFAULT_PROMPT) / len(seen) - 0.5) < 0.12


def test_a_share_of_the_dropped_prompts_becomes_the_default_prompt():
    prompts = [f"prompt {i}" for i in range(16)]
    dropped = [
        drop_prompts(prompts, 0.5, torch.Generator().manual_seed(i), default_share=0.4)
        for i in range(500)
    ]
    flat = [p for batch in dropped for p in batch]
    assert abs(flat.count(DEFAULT_PROMPT) / len(flat) - 0.5 * 0.4) < 0.015
    assert abs(flat.count("") / len(flat) - 0.5 * 0.6) < 0.015
    pairs = [(p, q) for b in dropped for p, q in zip(b, prompts, strict=True)]
    assert all(p in ("", DEFAULT_PROMPT, q) for p, q in pairs)
    # without a share nothing more is drawn: runs from before the option resume exactly
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert drop_prompts(prompts, 0.5, a) == drop_prompts(prompts, 0.5, b, default_share=0.0)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    assert TrainConfig(base="x").default_prompt_share == 0.0


def unet_inputs(models, batch, connect_decoder) -> dict:
    captured = {}

    def hook(module, args, kwargs):
        captured.update(kwargs)

    handle = models.unet.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        training_loss(
            models,
            batch,
            torch.Generator().manual_seed(0),
            torch.Generator().manual_seed(1),
            0.5,
            connect_decoder,
        )
    handle.remove()
    return captured


def test_small_scale_injects_only_the_middle_residual_and_reconnecting_restores_all(
    tiny_model_dir, fill50k_dir
):
    from diffusers import ControlNetModel

    # A ControlNet whose zero convolutions are not zero, so every link would carry a signal.
    controlnet = ControlNetModel.from_pretrained(tiny_model_dir / "controlnet" / "canny")
    models = models_with(controlnet, load_base(str(tiny_model_dir)))
    batch = a_batch(fill50k_dir)

    small = unet_inputs(models, batch, connect_decoder=False)
    assert small["mid_block_additional_residual"].abs().sum() > 0
    assert len(small["down_block_additional_residuals"]) == len(controlnet.controlnet_down_blocks)
    assert all(not r.any() for r in small["down_block_additional_residuals"])

    full = unet_inputs(models, batch, connect_decoder=True)
    assert all(r.abs().sum() > 0 for r in full["down_block_additional_residuals"])
    assert torch.equal(
        full["mid_block_additional_residual"], small["mid_block_additional_residual"]
    )


def test_small_scale_run_trains_only_the_middle_link_until_reconnected(
    tiny_model_dir, fill50k_dir, tmp_path, capsys
):
    from diffusers import ControlNetModel

    run = config(
        tiny_model_dir, fill50k_dir, tmp_path, small_scale=True, max_steps=1, checkpoint_every=1
    )
    train(run)
    small = ControlNetModel.from_pretrained(tmp_path / "controlnet")
    assert small.controlnet_mid_block.weight.any()
    assert not any(conv.weight.any() for conv in small.controlnet_down_blocks)

    # --small-scale left out: the run's mode comes from its checkpoint, not reported as changed
    run.resume, run.reconnect_decoder, run.max_steps = "latest", True, 2
    run.small_scale = False
    train(run)
    assert "'small_scale'" not in capsys.readouterr().out
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["config"]["small_scale"] is True
    reconnected = ControlNetModel.from_pretrained(tmp_path / "controlnet")
    assert all(conv.weight.any() for conv in reconnected.controlnet_down_blocks)
    state = json.loads((tmp_path / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["connect_decoder"] is True


def test_reconnecting_the_decoder_is_refused_without_a_checkpoint_to_continue(
    tiny_model_dir, fill50k_dir, tmp_path
):
    for resume in ("latest", None):
        run = config(tiny_model_dir, fill50k_dir, tmp_path, resume=resume, reconnect_decoder=True)
        with pytest.raises(ValueError, match="no checkpoint to reconnect from .*--resume latest"):
            train(run)
    assert not tmp_path.joinpath("controlnet").exists()
    # --resume latest alone, with nothing to resume, starts a new run
    assert train(config(tiny_model_dir, fill50k_dir, tmp_path, resume="latest")).step == 2


def optimizer_groups(checkpoint: Path) -> list[dict]:
    return torch.load(checkpoint / "optimizer.pt")["param_groups"]


@pytest.mark.parametrize("which", ["decoder", "all"])
def test_large_scale_unlocks_the_base_at_the_configured_step_not_before(
    tiny_model_dir, fill50k_dir, tmp_path, which
):
    from diffusers import UNet2DConditionModel

    run = config(
        tiny_model_dir,
        fill50k_dir,
        tmp_path,
        max_steps=3,
        checkpoint_every=1,
        unlock_base_at_step=2,
        unlock_base=which,
        base_learning_rate=1e-4,
    )
    result = train(run)
    checkpoints = tmp_path / "checkpoints"
    for step in (1, 2):
        assert len(optimizer_groups(checkpoints / f"step-{step:07d}")) == 1
        assert not (checkpoints / f"step-{step:07d}" / "unet").exists()
    groups = optimizer_groups(checkpoints / "step-0000003")
    base = load_base(str(tiny_model_dir))["unet"]
    assert len(groups) == 2
    assert groups[1]["lr"] == 1e-4 and len(groups[1]["params"]) == len(base_parameters(base, which))

    jointly_trained = UNet2DConditionModel.from_pretrained(result.base_dir, subfolder="unet")
    assert not torch.equal(jointly_trained.conv_out.weight, base.conv_out.weight)
    encoder_moved = not torch.equal(jointly_trained.conv_in.weight, base.conv_in.weight)
    assert encoder_moved == (which == "all")


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, fill50k_dir, tmp_path_factory):
    """Four steps with accumulation, prompt dropout, checkpoints and validation in between."""
    out = tmp_path_factory.mktemp("uninterrupted")
    run = config(
        tiny_model_dir,
        fill50k_dir,
        out,
        max_steps=4,
        gradient_accumulation_steps=2,
        validate_every=2,
        num_validation_images=2,
        validation_inference_steps=2,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(run), out
    finally:
        torch.set_num_threads(threads)


def test_killed_and_resumed_run_gives_the_same_next_losses(
    tiny_model_dir, fill50k_dir, tmp_path, uninterrupted
):
    from diffusers import ControlNetModel

    full, full_dir = uninterrupted
    killed = config(
        tiny_model_dir,
        fill50k_dir,
        tmp_path,
        max_steps=2,
        gradient_accumulation_steps=2,
        validate_every=2,
        num_validation_images=2,
        validation_inference_steps=2,
    )
    train(killed)  # stops after its step-2 checkpoint, as a killed run would have
    killed.resume, killed.max_steps = "latest", 4
    resumed = train(killed)
    assert resumed.losses == full.losses
    a = ControlNetModel.from_pretrained(full_dir / "controlnet").state_dict()
    b = ControlNetModel.from_pretrained(tmp_path / "controlnet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_time_boxed_run_stops_with_a_checkpoint_and_an_export_then_resumes_exactly(
    tiny_model_dir, fill50k_dir, tmp_path, uninterrupted
):
    full, _ = uninterrupted
    boxed = config(
        tiny_model_dir,
        fill50k_dir,
        tmp_path,
        max_steps=4,
        gradient_accumulation_steps=2,
        validate_every=2,
        num_validation_images=2,
        validation_inference_steps=2,
        max_minutes=1e-9,  # spent during the first step
    )
    stopped = train(boxed)
    assert stopped.step == 1
    assert (tmp_path / "checkpoints" / "step-0000001" / "state.json").is_file()
    assert json.loads((tmp_path / "training.json").read_text())["steps"] == 1
    assert (tmp_path / "controlnet" / "config.json").is_file()
    boxed.resume, boxed.max_minutes = "latest", None
    assert train(boxed).losses == full.losses


def test_a_run_resumed_with_a_new_rate_and_batch_lists_both_stretches_and_reads_on(
    tiny_model_dir, fill50k_dir, tmp_path, monkeypatch
):
    import cnet.train.controlnet as controlnet
    from cnet.train.embedded import describe_schedules
    from cnet.train.lineage import recorded_runs

    starts = []

    def recording(dataset, batch_size, seed, start=0, **kwargs):
        starts.append(start)
        return real(dataset, batch_size, seed, start, **kwargs)

    real = controlnet.BatchStream
    monkeypatch.setattr(controlnet, "BatchStream", recording)
    train(config(tiny_model_dir, fill50k_dir, tmp_path, max_steps=1, checkpoint_every=1))
    faster = dict(max_steps=2, learning_rate=5e-4, batch_size=4, resume="latest")
    train(config(tiny_model_dir, fill50k_dir, tmp_path, **faster))
    assert starts == [0, 2]  # on from the third example, not from step 1's fifth at batch 4
    state = json.loads((tmp_path / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["stream_position"] == 2 + 4
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["base_lineage"] == recorded_runs(tiny_model_dir / "base")  # the base it steers
    assert [
        (s["from_step"], s["learning_rate"], s["batch_size"]) for s in summary["schedules"]
    ] == [
        (0, 1e-3, 2),
        (1, 5e-4, 4),
    ]
    assert describe_schedules(summary) == (
        "batch 2, AdamW learning rate 0.001 from step 0; "
        "batch 4, AdamW learning rate 0.0005 from step 1"
    )
    summary["schedules"] = summary["schedules"][1:]  # one stretch: no steps named
    assert describe_schedules(summary) == "batch 4, AdamW learning rate 0.0005"


def test_the_cooldown_lowers_the_rate_linearly_over_the_last_steps(
    tiny_model_dir, fill50k_dir, tmp_path
):
    from cnet.train.embedded import describe_schedules

    every_step = dict(checkpoint_every=1, checkpoints_to_keep=None, cooldown_steps=3)
    train(config(tiny_model_dir, fill50k_dir, tmp_path, max_steps=4, **every_step))
    rates = [
        optimizer_groups(tmp_path / "checkpoints" / f"step-{step:07d}")[0]["lr"]
        for step in range(1, 5)
    ]
    assert rates == pytest.approx([1e-3, 1e-3, 2e-3 / 3, 1e-3 / 3])
    summary = json.loads((tmp_path / "training.json").read_text())
    assert describe_schedules(summary) == (
        "batch 2, AdamW learning rate 0.001 falling to 0 over the last 3 steps"
    )


def test_a_run_stopped_before_its_cooldown_ended_says_where_it_stopped():
    from cnet.train.embedded import describe_schedules

    stretch = {"from_step": 0, "learning_rate": 1e-4, "batch_size": 64, "cooldown_steps": 1700}
    lineage_run = {"steps": 2178, "max_steps": 2600, "schedules": [stretch]}
    assert describe_schedules(lineage_run) == (
        "batch 64, AdamW learning rate 0.0001 falling to 0 over the last 1700 steps "
        "(stopped at step 2178 of 2600, at 25% of the peak rate)"
    )
    summary = {"steps": 2600, "config": {"max_steps": 2600}, "schedules": [stretch]}
    assert describe_schedules(summary).endswith("over the last 1700 steps")


def test_the_exported_controlnet_records_every_run_behind_it_even_after_a_resume(
    tiny_model_dir, fill50k_dir, tmp_path
):
    from cnet.train.lineage import LINEAGE_FILE, UNRECORDED, recorded_runs

    first = tmp_path / "first"
    train(config(tiny_model_dir, fill50k_dir, first, max_steps=1))
    assert [(r["trainer"], r["steps"]) for r in recorded_runs(first / "controlnet")] == [
        ("controlnet", 1)
    ]
    second = config(tiny_model_dir, fill50k_dir, tmp_path / "second", checkpoint_every=1)
    second.controlnet = str(first / "controlnet")
    second.max_steps, second.cooldown_steps = 1, 1
    train(second)
    (first / "controlnet" / LINEAGE_FILE).unlink()  # gone before the resume: kept in the state
    second.max_steps, second.resume = 2, "latest"
    train(second)
    runs = recorded_runs(tmp_path / "second" / "controlnet")
    assert [r["steps"] for r in runs] == [1, 2]
    assert runs[1]["data"] == fill50k_dir.name  # a folder's name, not a path on this machine
    assert [s["cooldown_steps"] for s in runs[1]["schedules"]] == [1]
    assert runs[1]["max_steps"] == 2  # the card can tell a run stopped short of its cool-down
    assert "map_versions" not in runs[1]  # a folder brings its own maps
    third = config(tiny_model_dir, fill50k_dir, tmp_path / "third", max_steps=1)
    third.controlnet = str(first / "controlnet")  # no record left there
    train(third)
    assert recorded_runs(tmp_path / "third" / "controlnet")[0] == UNRECORDED


def test_a_run_writes_loss_curve_validation_grids_and_a_loadable_controlnet(
    tiny_model_dir, uninterrupted
):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    result, out = uninterrupted
    assert len(result.losses) == 4 and all(np.isfinite(result.losses))
    assert Image.open(out / "loss.png").size[0] > 100
    grids = sorted((out / "validation").glob("*.png"))
    assert [g.name for g in grids] == ["step-0000002.png", "step-0000004.png"]
    assert Image.open(grids[0]).size == (3 * 64, 2 * 64)  # control | sample | reference, 2 rows
    assert (result.controlnet_dir / "diffusion_pytorch_model.safetensors").is_file()
    summary = json.loads((out / "training.json").read_text())
    assert list(summary["control_gains"]) == ["2", "4"]  # measured at each validation
    assert summary["device"] == "1 x cpu"

    controlnet = ControlNetModel.from_pretrained(result.controlnet_dir)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_model_dir / "base", controlnet=controlnet, safety_checker=None
    )
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a disc", image=Image.new("RGB", (64, 64)), num_inference_steps=1).images[0]
    assert image.size == (64, 64)


def test_cli_trains_and_exports(tiny_model_dir, fill50k_dir, tmp_path):
    from cnet.__main__ import main

    code = main(
        [
            "train",
            "controlnet",
            "--base",
            str(tiny_model_dir),
            "--data",
            str(fill50k_dir),
            "--output-dir",
            str(tmp_path),
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--validate-every",
            "0",
            "--small-scale",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["steps"] == 1 and summary["connect_decoder"] is False
    assert (tmp_path / "controlnet" / "config.json").is_file()
    assert summary["config"]["validation_guidance_scale"] == 9.0  # no "cfg" in its preset.json
    assert summary["config"]["validation_sampler"] == "DDPM"  # nor a "sampler"
    assert summary["config"]["condition"] is None  # the folder's maps, of no named condition


def test_a_run_records_the_condition_its_maps_are_of(tiny_model_dir, fill50k_dir, tmp_path):
    from cnet.train.controlnet import train
    from cnet.train.data import maps_condition

    assert maps_condition("synth", None) == "canny"
    assert maps_condition("synth", "all") == "all"
    assert maps_condition(str(fill50k_dir), None) is None
    assert maps_condition(str(fill50k_dir), "depth") == "depth"
    with pytest.raises(ValueError, match="brings its own maps: name the condition"):
        maps_condition(str(fill50k_dir), "all")
    with pytest.raises(ValueError, match="Unknown condition 'edges'; choose from scribble"):
        maps_condition(str(fill50k_dir), "edges")
    train(config(tiny_model_dir, fill50k_dir, tmp_path, condition="depth", max_steps=1))
    assert json.loads((tmp_path / "training.json").read_text())["config"]["condition"] == "depth"


def test_validation_images_take_the_guidance_scale_and_sampler_of_the_bases_preset(
    tiny_model_dir, fill50k_dir, tmp_path
):
    from dataclasses import replace
    from unittest.mock import patch

    from diffusers import StableDiffusionControlNetPipeline

    from cnet.train.controlnet import TrainConfig, train

    model = tmp_path / "model"
    model.mkdir()
    (model / "base").symlink_to(tiny_model_dir / "base")
    (model / "preset.json").write_text(json.dumps({"cfg": 2.5, "sampler": "DDIM"}))
    calls = []
    pipeline_call = StableDiffusionControlNetPipeline.__call__

    def recording(self, *args, **kwargs):
        calls.append((kwargs["guidance_scale"], type(self.scheduler).__name__))
        return pipeline_call(self, *args, **kwargs)

    config = TrainConfig(
        base=str(model / "base"), data=str(fill50k_dir), output_dir=str(tmp_path / "run"),
        max_steps=1, batch_size=2, validate_every=1, num_validation_images=1,
        validation_inference_steps=1,
    )  # fmt: skip
    with patch.object(StableDiffusionControlNetPipeline, "__call__", recording):
        train(config)
    assert calls == [(2.5, "DDIMScheduler")]
    # a sampler the app does not know is refused before training starts, saying what to set
    (model / "preset.json").write_text(json.dumps({"sampler": "Heun"}))
    with pytest.raises(ValueError, match="Unknown validation sampler 'Heun'.*DDPM"):
        train(replace(config, output_dir=str(tmp_path / "refused")))
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_two_processes_with_accelerate_train_small_scale_then_unlock_and_resume(
    tiny_model_dir, fill50k_dir, tmp_path
):
    """DDP on CPU (gloo): cut links, no_sync accumulation, a base wrapped when it is unlocked."""
    import os
    import subprocess
    import sys

    def launch(processes: int, *extra: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "-m",
            "cnet",
            "train",
            "controlnet",
            "--base",
            str(tiny_model_dir),
            "--data",
            str(fill50k_dir),
            "--output-dir",
            str(tmp_path),
            "--batch-size",
            "2",
            "--gradient-accumulation-steps",
            "2",
            "--validate-every",
            "0",
            "--cpu-threads",
            "1",
            "--small-scale",
            "--unlock-base-at-step",
            "1",
            "--checkpoint-every",
            "1",
            *extra,
        ]
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
        return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)

    first = launch(2, "--max-steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = tmp_path / "checkpoints" / "step-0000002"
    assert sorted(p.name for p in checkpoint.glob("rng-*.pt")) == ["rng-0.pt", "rng-1.pt"]
    assert len(optimizer_groups(checkpoint)) == 2

    wrong = launch(1, "--max-steps", "3", "--resume", "latest")
    assert wrong.returncode != 0 and "--num_processes 2" in wrong.stdout + wrong.stderr

    resumed = launch(2, "--max-steps", "3", "--resume", "latest", "--reconnect-decoder")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((tmp_path / "checkpoints" / "step-0000003" / "state.json").read_text())
    assert state["connect_decoder"] and state["base_unlocked"] and len(state["losses"]) == 3


def test_every_condition_in_turn_trains_one_controlnet_that_a_condition_then_continues(
    tiny_model_dir, tmp_path
):
    from cnet.lowrank import write_lowrank
    from cnet.train.controlnet import train

    shared = train(config(tiny_model_dir, "synth", tmp_path / "all", condition="all"))
    assert len(shared.losses) == 2 and all(np.isfinite(shared.losses))
    tuned = train(
        config(
            tiny_model_dir,
            "synth",
            tmp_path / "depth",
            condition="depth",
            controlnet=str(tmp_path / "all"),  # the run's folder: its export, all/controlnet
        )
    )
    assert len(tuned.losses) == 2 and all(np.isfinite(tuned.losses))
    start = json.loads((tmp_path / "depth" / "training.json").read_text())["config"]["controlnet"]
    assert start == str(shared.controlnet_dir)
    # a fine-tune may also start from one stored as a low-rank difference (as a preset ships it)
    lowrank = tmp_path / "preset" / "depth"
    write_lowrank(lowrank, tuned.controlnet_dir, shared.controlnet_dir, rank=4)
    again = config(
        tiny_model_dir, "synth", tmp_path / "again", condition="depth", controlnet=str(lowrank)
    )
    assert len(train(again).losses) == 2


def test_a_synthetic_run_records_its_maps_versions_and_resumes_only_on_the_same(
    tiny_model_dir, tmp_path, monkeypatch
):
    from cnet.synth import maps
    from cnet.train.controlnet import train
    from cnet.train.lineage import recorded_runs

    monkeypatch.setattr(maps, "MAP_VERSIONS", {"scribble": 2, "depth": 3})
    out = tmp_path / "depth"
    run = config(tiny_model_dir, "synth", out, condition="depth", max_steps=1, checkpoint_every=1)
    train(run)
    assert json.loads((out / "training.json").read_text())["map_versions"] == {"depth": 3}
    assert recorded_runs(out / "controlnet")[-1]["map_versions"] == {"depth": 3}
    run.max_steps, run.resume = 2, "latest"
    monkeypatch.setattr(maps, "MAP_VERSIONS", {"scribble": 2, "depth": 4})
    with pytest.raises(ValueError, match="then {'depth': 3}, now {'depth': 4}.*--output-dir"):
        train(run)
    monkeypatch.setattr(maps, "MAP_VERSIONS", {"scribble": 2, "depth": 3})
    assert len(train(run).losses) == 2
    run.max_steps, run.condition = 3, "scribble"  # a typo'd or changed --condition
    with pytest.raises(
        ValueError, match="on depth maps, and this one names scribble.*--condition de"
    ):
        train(run)
    run.condition, run.data = "depth", str(tmp_path)  # another data source
    with pytest.raises(ValueError, match=f"on --data synth, and this one reads {tmp_path}: give"):
        train(run)
    assert recorded_runs(out / "controlnet")[-1]["condition"] == "depth"
    shared = config(tiny_model_dir, "synth", tmp_path / "all", condition="all", max_steps=1)
    train(shared)
    summary = json.loads((tmp_path / "all" / "training.json").read_text())
    assert summary["map_versions"] == {"scribble": 2, "depth": 3}  # every condition's maps


def test_a_resume_from_another_working_directory_knows_its_data_folder(
    tiny_model_dir, fill50k_dir, tmp_path, monkeypatch
):
    import os

    from cnet.train.controlnet import train

    monkeypatch.chdir(fill50k_dir.parent)
    out = tmp_path / "run"
    run = config(tiny_model_dir, fill50k_dir.name, out, max_steps=1, checkpoint_every=1)
    train(run)
    monkeypatch.chdir(tmp_path)  # the same folder by another relative path
    run.data, run.max_steps, run.resume = os.path.relpath(fill50k_dir), 2, "latest"
    assert len(train(run).losses) == 2
    run.max_steps, run.small_scale = 3, True  # a flag this run cannot take on
    with pytest.raises(ValueError, match="all links connected from its start: --small-scale"):
        train(run)


@pytest.mark.parametrize("condition_zero_conv", [True, False])
def test_the_map_reaches_the_trainable_copy_only_without_the_condition_zero_conv(
    tiny_model_dir, condition_zero_conv
):
    parts = load_base(str(tiny_model_dir))
    controlnet = new_controlnet(parts["unet"], str(tiny_model_dir), condition_zero_conv)
    features = []
    controlnet.mid_block.register_forward_hook(lambda m, i, out: features.append(out))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, parts["unet"].config.cross_attention_dim)
    residuals = []
    for seed in (1, 2):
        control = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            down, mid = controlnet(latents, 10, text, control, return_dict=False)
        residuals += [*down, mid]

    assert all(not r.any() for r in residuals)  # either way the start is exactly the base
    assert torch.equal(features[0], features[1]) == condition_zero_conv


def test_the_control_gain_is_zero_until_the_map_reaches_the_output(tiny_model_dir, fill50k_dir):
    from cnet.train.controlnet import control_gain
    from cnet.train.data import collate, open_dataset

    parts = load_base(str(tiny_model_dir))
    dataset = open_dataset(str(fill50k_dir), 64)
    batches = [collate([dataset[i] for i in range(4)])]

    def gain(condition_zero_conv: bool, output_zero_convs: bool) -> float:
        torch.manual_seed(0)
        controlnet = new_controlnet(parts["unet"], str(tiny_model_dir), condition_zero_conv)
        if not output_zero_convs:
            with torch.no_grad():
                for conv in zero_convolutions(controlnet):
                    conv.weight.normal_(0.0, 0.05)
        return control_gain(models_with(controlnet, parts), batches, connect_decoder=True)

    assert gain(condition_zero_conv=True, output_zero_convs=True) == 0.0  # a fresh ControlNet
    assert gain(condition_zero_conv=True, output_zero_convs=False) == 0.0  # blind to the map
    assert gain(condition_zero_conv=False, output_zero_convs=True) == 0.0  # the base unchanged
    assert gain(condition_zero_conv=False, output_zero_convs=False) != 0.0


def test_the_control_gain_draws_the_same_noise_on_any_device(monkeypatch):
    """Its random streams are CPU generators, so gains measured on a GPU and on a CPU compare."""
    from types import SimpleNamespace

    from cnet.train import controlnet

    seen = []

    def loss(models, batch, generator, prompt_generator, *settings):
        seen.append((generator.device.type, generator.initial_seed(), prompt_generator.device.type))
        return torch.zeros(())

    monkeypatch.setattr(controlnet, "training_loss", loss)
    on_a_gpu = SimpleNamespace(vae=SimpleNamespace(device=torch.device("cuda")))
    batch = {"conditioning_pixel_values": torch.zeros(2, 3, 4, 4)}
    controlnet.control_gain(on_a_gpu, [batch, batch], connect_decoder=True)
    assert seen == [("cpu", 0, "cpu")] * 2 + [("cpu", 1, "cpu")] * 2


def test_bf16_mixed_precision_trains_on_the_cpu(tiny_model_dir, fill50k_dir, tmp_path):
    """The CPU's autocast leaves group norm's parameters uncast: locked models stay fp32 there."""
    from accelerate.state import AcceleratorState

    # accelerate keeps one state per process, fixed by the first Accelerator (fp32 elsewhere)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        run = config(tiny_model_dir, fill50k_dir, tmp_path, max_steps=1, mixed_precision="bf16")
        result = train(run)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert len(result.losses) == 1 and np.isfinite(result.losses[0])


def test_train_flags_read_back_into_each_trainers_config():
    import argparse

    from cnet.train import cli
    from cnet.train.decoder import DecoderConfig

    parser = argparse.ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["controlnet", "--base", "b", "--adam-betas", "0.8", "0.9"])
    config = cli.config_from_args(TrainConfig, args)
    assert config.adam_betas == (0.8, 0.9) and config.base == "b"
    assert cli.config_from_args(TrainConfig, parser.parse_args(["controlnet", "--base", "b"])) == (
        TrainConfig(base="b")
    )
    args = parser.parse_args(["decoder", "--pairs", "10"])
    assert cli.config_from_args(DecoderConfig, args) == DecoderConfig(pairs=10)


def test_latest_never_picks_a_checkpoint_still_being_written(tmp_path):
    from cnet.train.checkpoint import CHECKPOINTS, STATE, resolve_resume

    for name in ("step-0000001", "step-0000002", "step-0000003.partial"):
        (tmp_path / CHECKPOINTS / name).mkdir(parents=True)
        (tmp_path / CHECKPOINTS / name / STATE).write_text("{}")  # written before its rng files
    assert resolve_resume("latest", tmp_path).name == "step-0000002"


@pytest.mark.parametrize(
    "flag",
    ["--checkpoint-every", "--num-validation-images", "--batch-size", "--checkpoints-to-keep"],
)
def test_counts_that_cannot_be_0_are_refused_on_the_command_line(flag, capsys):
    from cnet.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "controlnet", "--base", "x", "--data", "synth", flag, "0"])
    assert f"argument {flag}: expected a whole number of at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--warmup-steps", "-3", "a whole number of at least 0"),
        ("--cooldown-steps", "-3", "a whole number of at least 0"),
        ("--max-steps", "-1", "a whole number of at least 0"),
        ("--validate-every", "-1", "a whole number of at least 0"),
        ("--unlock-base-at-step", "-1", "a whole number of at least 0"),
        ("--max-minutes", "nan", "a number above 0"),
        ("--proportion-empty-prompts", "1.5", "a share from 0 to 1"),
        ("--adam-betas", "0.9 1", "a fraction from 0 to below 1"),
        ("--replay-share", "1", "a fraction from 0 to below 1"),
        ("--cpu-threads", "-1", "a whole number of at least 1"),
    ],
)
def test_numbers_that_mean_nothing_are_refused_on_the_command_line(flag, value, expected, capsys):
    from cnet.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "controlnet", "--base", "x", "--data", "synth", flag, *value.split()])
    bad = value.split()[-1]
    assert f"argument {flag}: expected {expected}, got {bad!r}" in capsys.readouterr().err


def fake_checkpoints(output_dir: Path, *names: str) -> None:
    from cnet.train.checkpoint import CHECKPOINTS, STATE

    for name in names:
        (output_dir / CHECKPOINTS / name).mkdir(parents=True)
        (output_dir / CHECKPOINTS / name / STATE).write_text("{}")


def test_a_run_refuses_to_start_behind_checkpoints_that_are_not_its_past(tmp_path):
    """Pruning would delete them (or its own new ones), and --resume latest continue them."""
    from cnet.train.checkpoint import resolve_resume

    run = tmp_path / "run"
    fake_checkpoints(run, "step-0000002", "step-0000004", "step-0000006")
    with pytest.raises(ValueError, match=r"another run's checkpoints \(3: step-0000002 to step-"):
        resolve_resume(None, run)  # a fresh run starts at 0
    resumed = str(run / "checkpoints" / "step-0000002")
    with pytest.raises(
        ValueError, match=r"past step-0000002, .*\(2: step-0000004 to step-0000006\)"
    ):
        resolve_resume(resumed, run)
    with pytest.raises(ValueError, match="--resume latest, or move them away"):
        resolve_resume(resumed, run)
    assert resolve_resume("latest", run).name == "step-0000006"
    assert resolve_resume(str(run / "checkpoints" / "step-0000006"), run).name == "step-0000006"
    fake_checkpoints(tmp_path / "other", "step-0000001")
    with pytest.raises(ValueError, match="another run's checkpoints"):  # none of them its past
        resolve_resume(str(tmp_path / "other" / "checkpoints" / "step-0000001"), run)
    assert resolve_resume(None, tmp_path / "new") is None


@pytest.mark.parametrize("trainer", ["controlnet", "base", "captioner"])
def test_every_trainer_refuses_a_folder_of_another_run_before_training(
    tiny_model_dir, fill50k_dir, tmp_path, trainer
):
    from cnet.train import base, captioner

    fake_checkpoints(tmp_path, "step-0000003")
    out, data = str(tmp_path), str(fill50k_dir)
    short = dict(output_dir=out, data=data, batch_size=2, checkpoint_every=1, validate_every=0)
    start = {
        "controlnet": lambda: train(config(tiny_model_dir, fill50k_dir, tmp_path)),
        "base": lambda: base.train_base(
            base.BaseTrainConfig(
                architecture="tiny", corpus_examples=8, vae_steps=1, unet_steps=1, **short
            )  # fmt: skip
        ),
        "captioner": lambda: captioner.train(
            captioner.TrainConfig(
                size="tiny", corpus_examples=4, max_steps=1, num_test_scenes=1, **short
            )  # fmt: skip
        ),
    }[trainer]
    with pytest.raises(ValueError, match="another run's checkpoints"):
        start()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000003"]


class OneProcess:
    """What save_checkpoint asks of accelerate's Accelerator, on one process."""

    is_main_process, process_index, scaler = True, 0, None

    def unwrap_model(self, model):
        return model

    def wait_for_everyone(self) -> None:
        pass


def test_pruning_keeps_the_newest_up_to_the_new_checkpoint_and_clears_killed_saves(tmp_path):
    from cnet.train import checkpoint as ckpt

    fake_checkpoints(tmp_path, "step-0000001", "step-0000002", "step-0000009")
    (tmp_path / "checkpoints" / "step-0000005.partial").mkdir()  # a save killed midway
    ckpt.save_checkpoint(
        OneProcess(), ckpt.checkpoint_dir(tmp_path, 3), {}, {}, {"step": 3}, {}, keep=2
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-0000002",
        "step-0000003",
        "step-0000009",  # never this run's to delete
    ]


def test_a_run_killed_while_exporting_leaves_the_last_export_whole(
    tiny_model_dir, fill50k_dir, tmp_path, monkeypatch
):
    """Never new weights beside the old training.json and lineage.json: the export is renamed
    into place whole, and training.json written last."""
    from cnet.train import checkpoint as ckpt
    from cnet.train import controlnet

    def exported() -> tuple:
        from safetensors.torch import load_file

        summary = tmp_path / "training.json"
        return (
            load_file(tmp_path / "controlnet" / "diffusion_pytorch_model.safetensors"),
            json.loads(summary.read_text())["steps"] if summary.is_file() else None,
            json.loads((tmp_path / "controlnet" / "lineage.json").read_text())[-1]["steps"],
        )

    def killed(*args):
        raise SystemExit("killed")

    run = config(tiny_model_dir, fill50k_dir, tmp_path, max_steps=1, checkpoint_every=1)
    train(run)
    weights, _, _ = exported()
    run.max_steps, run.resume = 2, "latest"
    monkeypatch.setattr(controlnet, "device_name", killed)  # after the weights are written
    with pytest.raises(SystemExit):
        train(run)
    now = exported()
    assert all(torch.equal(weights[k], now[0][k]) for k in weights) and now[1:] == (1, 1)
    monkeypatch.undo()
    monkeypatch.setattr(ckpt, "put_in_place", killed)  # as the export is renamed into place
    with pytest.raises(SystemExit):
        train(run)  # resumed at its last step: it only exports
    now = exported()
    assert all(torch.equal(weights[k], now[0][k]) for k in weights)
    assert now[1:] == (None, 1)  # no training.json: the run reads as unfinished
    monkeypatch.undo()
    train(run)
    now = exported()
    assert not all(torch.equal(weights[k], now[0][k]) for k in weights) and now[1:] == (2, 2)
    assert not list(tmp_path.glob("*.partial"))


def test_a_resume_needs_no_start_folder(tiny_model_dir, fill50k_dir, tmp_path):
    """The checkpoint holds the ControlNet and its lineage, as the README says."""
    import shutil

    start = shutil.copytree(tiny_model_dir / "controlnet" / "canny", tmp_path / "start")
    run = config(tiny_model_dir, fill50k_dir, tmp_path / "run", max_steps=1, checkpoint_every=1)
    run.controlnet = str(start)
    train(run)
    shutil.rmtree(start)
    run.max_steps, run.resume = 2, "latest"
    assert len(train(run).losses) == 2


def test_the_record_lists_a_small_scale_stretch_before_the_decoder_was_reconnected(
    tiny_model_dir, fill50k_dir, tmp_path
):
    from cnet.train.lineage import recorded_runs

    run = config(tiny_model_dir, fill50k_dir, tmp_path, max_steps=1, checkpoint_every=1)
    run.small_scale = True
    train(run)
    run.max_steps, run.resume, run.reconnect_decoder = 2, "latest", True
    train(run)
    summary = json.loads((tmp_path / "training.json").read_text())
    assert [(s["from_step"], s["all_links"]) for s in summary["schedules"]] == [
        (0, False),
        (1, True),
    ]
    lineage = recorded_runs(tmp_path / "controlnet")[-1]
    assert lineage["schedules"] == summary["schedules"] and lineage["all_links"]


def test_a_resolution_the_base_cannot_halve_down_is_refused_naming_the_least(
    tiny_model_dir, fill50k_dir, tmp_path
):
    """The tiny base's VAE and UNet scale images down 16 times."""
    with pytest.raises(ValueError, match="multiples of 16 px, the least 16"):
        train(config(tiny_model_dir, fill50k_dir, tmp_path / "a", resolution=24))
    assert not (tmp_path / "a" / "checkpoints").exists()
    run = config(tiny_model_dir, fill50k_dir, tmp_path / "b", resolution=16, batch_size=1)
    assert len(train(run).losses) == 2


def test_a_run_whose_time_box_runs_out_on_its_last_step_has_finished(
    tiny_model_dir, fill50k_dir, tmp_path, capsys
):
    run = config(tiny_model_dir, fill50k_dir, tmp_path, max_steps=1, max_minutes=1e-9)
    assert train(run).step == 1
    assert "time box" not in "".join(capsys.readouterr())


@pytest.mark.parametrize(
    "flags, code, message",
    [
        (
            ["--base", "/nonexistent"],
            1,
            "The base model (--base) is missing: /nonexistent does not",
        ),
        (["--controlnet", "/nonexistent"], 1, "ControlNet is missing: /nonexistent does not exist"),
        (["--output-dir", "{file}/run"], 2, "is a file; choose another --output-dir"),
        (["--validation-images", "{file}.png"], 2, "file.png: no such file; give control map"),
        (  # asked for, though validation is off
            ["--validation-images", "{file}.png", "--validate-every", "0"],
            2,
            "file.png: no such file; give control map",
        ),
    ],
)
def test_cli_names_what_is_missing_or_cannot_be_written(
    tiny_model_dir, fill50k_dir, tmp_path, capsys, flags, code, message
):
    from cnet.__main__ import main

    (tmp_path / "file").write_text("")
    settings = {"--base": str(tiny_model_dir), "--output-dir": str(tmp_path / "run")}
    settings.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    command = ["train", "controlnet", "--data", str(fill50k_dir), "--max-steps", "1"]
    for flag, value in settings.items():
        command += [flag, value.format(file=tmp_path / "file")]
    assert main(command) == code
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: ") and message in last


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 0}, "batch_size (--batch-size) takes a whole number of at least 1, got 0."),
        ({"learning_rate": -1.0}, "learning_rate (--learning-rate) takes a number of at least 0"),
        ({"proportion_empty_prompts": 2.0}, "takes a share from 0 to 1, got 2.0."),
        ({"adam_betas": (0.9, 1.0)}, "adam_betas (--adam-betas) takes a fraction from 0 to bel"),
        ({"max_steps": 2.5}, "max_steps (--max-steps) takes a whole number of at least 0"),
        ({"seed": float("inf")}, "seed (--seed) takes a whole number of at least 0, got inf."),
    ],
)
def test_a_config_made_in_python_is_held_to_the_flags_rules(
    tiny_model_dir, fill50k_dir, tmp_path, overrides, message
):
    with pytest.raises(ValueError, match=re.escape(message)):
        train(config(tiny_model_dir, fill50k_dir, tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_read_only_output_folder_before_training_and_names_a_full_disk(
    tiny_model_dir, fill50k_dir, tmp_path, capsys, monkeypatch
):
    from cnet.__main__ import main
    from cnet.cli import options
    from cnet.train import checkpoint as ckpt

    command = ["train", "controlnet", "--base", str(tiny_model_dir), "--data", str(fill50k_dir),
               "--output-dir", str(tmp_path / "run"), "--max-steps", "1",
               "--validate-every", "0"]  # fmt: skip
    with monkeypatch.context() as read_only:
        read_only.setattr(options.os, "access", lambda path, mode: False)
        assert main(command) == 2
    assert f"{tmp_path} is read-only (or not this user's); choose another --output-dir" in (
        capsys.readouterr().err
    )

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_checkpoint", full)
    assert main(command) == 1
    assert "error: [Errno 28] No space left on device (check that --output-dir can be written" in (
        capsys.readouterr().err
    )


def test_ctrl_c_names_the_last_checkpoint_and_how_to_go_on_not_a_traceback(
    tiny_model_dir, fill50k_dir, tmp_path, capsys, monkeypatch
):
    from cnet.__main__ import main
    from cnet.train import controlnet

    command = ["train", "controlnet", "--base", str(tiny_model_dir), "--data", str(fill50k_dir),
               "--output-dir", str(tmp_path / "run"), "--max-steps", "3",
               "--checkpoint-every", "2", "--validate-every", "0"]  # fmt: skip
    plot = controlnet.plot_losses

    def interrupted_after_step_2(losses, *args, **kwargs):  # plotted after each checkpoint
        plot(losses, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(controlnet, "plot_losses", interrupted_after_step_2)
    assert main(command) == 130
    error = capsys.readouterr().err
    last = tmp_path / "run" / "checkpoints" / "step-0000002"
    assert (
        f"interrupted: the last checkpoint is {last} (the steps after it are lost); run the "
        in (error)
    )
    assert "--resume latest to go on from it." in error and "Traceback" not in error


def test_a_diverging_run_is_one_error_line_naming_its_last_checkpoint(
    tiny_model_dir, fill50k_dir, tmp_path, capsys, monkeypatch
):
    from cnet.__main__ import main
    from cnet.train import controlnet

    command = ["train", "controlnet", "--base", str(tiny_model_dir), "--data", str(fill50k_dir),
               "--output-dir", str(tmp_path / "run"), "--max-steps", "4",
               "--checkpoint-every", "2", "--validate-every", "0"]  # fmt: skip
    loss, calls = controlnet.training_loss, []

    def diverging_at_step_3(*args, **kwargs):
        calls.append(1)
        return loss(*args, **kwargs) * (float("nan") if len(calls) >= 3 else 1.0)

    monkeypatch.setattr(controlnet, "training_loss", diverging_at_step_3)
    assert main(command) == 1
    error = capsys.readouterr().err
    last = tmp_path / "run" / "checkpoints" / "step-0000002"
    assert (
        "error: The loss became nan at step 3; lower --learning-rate. --resume latest goes on"
        in (error)
    )
    assert f"from the last checkpoint, {last}." in error and "Traceback" not in error


def test_each_trainers_help_gives_its_own_defaults_and_no_flag_it_would_ignore(capsys):
    from cnet.__main__ import main

    def help_of(trainer: str) -> str:
        with pytest.raises(SystemExit):
            main(["train", trainer, "--help"])
        return " ".join(capsys.readouterr().out.split())  # argparse wraps lines

    controlnet, base, captioner = (help_of(t) for t in ("controlnet", "base", "captioner"))
    assert "--batch-size N examples per process per micro-step (default: 4)" in controlnet
    assert "--max-steps N train until this optimizer step" in controlnet
    assert "latest to go on) (default: 10000)" in controlnet
    assert "AdamW learning rate of the captioner (default: 0.0005)" in captioner
    assert "(default: True)" in captioner  # --augment: a flag pair's default too
    assert "--condition" in controlnet and "--condition" not in base + captioner  # no maps


def test_every_number_a_trainer_takes_refuses_what_means_nothing():
    """Negative counts and rates, NaN, shares above 1: each flag of a config field is typed."""
    import argparse
    import dataclasses

    from cnet.train import cli
    from cnet.train.base import BaseTrainConfig
    from cnet.train.captioner import TrainConfig as CaptionerConfig
    from cnet.train.decoder import DecoderConfig

    parser = argparse.ArgumentParser()
    cli.configure(parser)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    configs = {
        "controlnet": TrainConfig,
        "base": BaseTrainConfig,
        "captioner": CaptionerConfig,
        "decoder": DecoderConfig,
    }
    numbers = 0
    for command, config_class in configs.items():
        fields = {field.name for field in dataclasses.fields(config_class)}
        for action in commands.choices[command]._actions:
            if action.dest not in fields or action.type in (None, str):
                continue
            assert action.type not in (int, float), f"{command} --{action.dest} is unchecked"
            numbers += 1
            for bad in ("-1", "nan", "x"):
                with pytest.raises(argparse.ArgumentTypeError):
                    action.type(bad)
    assert numbers > 80
    share = cli.number_type("proportion_empty_prompts", float)
    assert share("1") == 1.0 and cli.number_type("eta", float)("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match="share from 0 to 1"):
        share("1.5")
    with pytest.raises(argparse.ArgumentTypeError, match="a number above 0"):
        cli.number_type("learning_rate", float)("0")


@pytest.mark.parametrize(
    ("minutes", "shown"), [(1440, "1440-minute"), (0.0999991, "0.1-minute"), (1e-9, "1e-09-minute")]
)
def test_a_time_box_says_its_budget_as_given(minutes, shown):
    from cnet.train.timebox import TimeBox

    assert f"the {shown} time box (--max-minutes) is spent" in TimeBox(minutes, None).message(3)


@pytest.mark.parametrize(
    ("resume", "advice"),
    [
        (None, "run again with --resume latest to go on."),
        ("runs/x/checkpoints/step-0000010", "run again with --resume latest to go on."),
        ("latest", "run the same command to go on."),  # as `train embedded` runs every stage
    ],
)
def test_a_time_box_says_what_going_on_takes(resume, advice):
    from cnet.train.timebox import TimeBox

    assert TimeBox(5, None, resume).message(3).endswith(advice)
