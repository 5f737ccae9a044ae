"""The embedded preset's recipe: which stages run, resuming, and packing into the shipped layout."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import fine_tune_of
from safetensors import safe_open

from cnet.synth.examples import write_examples
from cnet.synth.sample import CONDITION_KEYS
from cnet.train import embedded
from cnet.train.base import BaseTrainConfig
from cnet.train.embedded import Steps, pack, shared_use, stages, train_all
from cnet.train.install import install, install_controlnet
from cnet.train.lineage import recorded_runs

STEPS = Steps(vae=3, unet=5, shared=6, controlnet=4, captioner=2)


def finish(stage: embedded.Stage, source: Path, summary: dict) -> None:
    """Leave what a finished trainer leaves: its result folder and training.json."""
    shutil.copytree(source, stage.result)
    (stage.run_dir / "training.json").write_text(json.dumps(summary))


def finish_base(recipe: dict, tiny_model_dir: Path) -> None:
    finish(
        recipe["base"],
        tiny_model_dir / "base",
        {
            "steps": {"vae": STEPS.vae, "unet": STEPS.unet},
            "final_loss": {"vae": 0.0512, "unet": 0.1234},
            "mean_loss_last_100": {"vae": 0.0521, "unet": 0.1456},
            "scaling_factor": 0.61,
            "config": asdict(BaseTrainConfig()),
        },
    )


def finish_controlnet(recipe: dict, tiny_model_dir: Path, key: str, steps: int) -> None:
    """The shared ControlNet, or a condition's fine-tune of it (a stand-in while it has none)."""
    stage, shared = recipe[f"controlnet-{key}"], recipe["controlnet-all"].result
    if key == "all" or not shared.is_dir():
        shutil.copytree(
            tiny_model_dir / "controlnet" / ("canny" if key == "all" else key), stage.result
        )
    else:
        fine_tune_of(shared, stage.result, seed=CONDITION_KEYS.index(key))
    (stage.run_dir / "training.json").write_text(
        json.dumps(
            {
                "steps": steps,
                "final_loss": 0.2,
                "mean_loss_last_100": 0.25,
                "control_gains": {"2": 0.01, str(steps): 0.0456},
                "device": "1 x cpu",
                "config": asdict(stage.config),
            }
        )
    )


@pytest.fixture
def recipe(tmp_path: Path) -> dict:
    return stages(tmp_path / "runs", STEPS)


def test_recipe_has_the_base_every_condition_and_the_captioner(recipe):
    keys = ("scribble", "canny", "hough", "pose", "seg", "depth", "normal")
    conditions = [f"controlnet-{k}" for k in keys]
    assert list(recipe) == ["base", "controlnet-all", *conditions, "captioner"]
    shared = recipe["controlnet-all"]
    assert shared.config.condition == "all" and shared.config.max_steps == STEPS.shared
    assert shared.config.batch_size == 64  # batch 8 learnt no control (README)
    assert shared.config.controlnet is None and shared.ships_as is None
    for key in keys:
        stage = recipe[f"controlnet-{key}"]
        assert stage.config.condition == key
        assert stage.config.base == str(recipe["base"].result)
        assert stage.config.controlnet == str(shared.result)  # fine-tuned from the shared start
        assert stage.config.proportion_empty_prompts == 0.5
        assert stage.config.batch_size == 64  # the shipped normal fine-tune's recipe (README)
        assert stage.config.cooldown_steps == stage.config.max_steps == STEPS.controlnet
        assert stage.needs == ("base", "controlnet-all")
        assert stage.ships_as == f"controlnet/{key}"
    assert all(stage.config.resume == "latest" for stage in recipe.values())
    # validation images sample as the packed preset will (its preset.json's CFG)
    sampled = [recipe["base"], shared, *(recipe[name] for name in conditions)]
    assert {stage.config.validation_guidance_scale for stage in sampled} == {2.0}


def test_finished_needs_the_result_and_every_phase_done(recipe, tiny_model_dir):
    base = recipe["base"]
    assert not base.finished()
    finish_base(recipe, tiny_model_dir)
    assert base.finished()
    summary = json.loads((base.run_dir / "training.json").read_text())
    summary["steps"]["unet"] = STEPS.unet - 1  # interrupted one step short
    (base.run_dir / "training.json").write_text(json.dumps(summary))
    assert not base.finished()


def test_train_all_skips_finished_stages_and_runs_the_rest_in_order(recipe, tiny_model_dir):
    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    finish_controlnet(recipe, tiny_model_dir, "depth", STEPS.controlnet - 1)
    calls = []
    for stage in recipe.values():
        stage.train = lambda config, name=stage.name: calls.append(name)
    train_all(recipe)
    expected = [n for n in recipe if n not in ("base", "controlnet-all", "controlnet-canny")]
    assert calls == expected
    calls.clear()
    train_all(recipe, only=["controlnet-depth", "base"])
    assert calls == ["controlnet-depth"]


def test_a_time_box_spans_the_stages_and_stops_at_the_first_unfinished_one(
    recipe, tiny_model_dir, monkeypatch
):
    clock = [0.0]
    monkeypatch.setattr(embedded.time, "monotonic", lambda: clock[0])
    finish_base(recipe, tiny_model_dir)
    boxes = []

    def shared(config):  # finishes in 20 of the 30 minutes
        boxes.append(config.max_minutes)
        clock[0] += 20 * 60
        finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)

    def scribble(config):  # its own time box ends it one step short
        boxes.append(config.max_minutes)
        clock[0] += config.max_minutes * 60
        finish_controlnet(recipe, tiny_model_dir, "scribble", STEPS.controlnet - 1)

    recipe["controlnet-all"].train, recipe["controlnet-scribble"].train = shared, scribble
    recipe["controlnet-canny"].train = lambda config: pytest.fail("trained after the time box")
    assert train_all(recipe, max_minutes=30) is False
    assert boxes == [30, 10]  # each stage gets what is left
    assert recipe["base"].config.max_minutes is None  # the recipe itself is unchanged


def test_a_spent_time_box_starts_no_further_stage(recipe, tiny_model_dir, monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(embedded.time, "monotonic", lambda: clock[0])
    finish_base(recipe, tiny_model_dir)

    def shared(config):  # finishes as the time box ends
        clock[0] += config.max_minutes * 60
        finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)

    recipe["controlnet-all"].train = shared
    recipe["controlnet-scribble"].train = lambda config: pytest.fail("trained after the time box")
    assert train_all(recipe, max_minutes=30) is False
    assert "spent before controlnet-scribble" in capsys.readouterr().out


def test_a_stage_refuses_to_start_before_what_it_needs(recipe, tiny_model_dir):
    recipe["controlnet-canny"].train = lambda config: pytest.fail("trained too early")
    runs = recipe["base"].run_dir.parent
    with pytest.raises(FileNotFoundError, match=f"embedded --runs {runs} --only base$"):
        train_all(recipe, only=["controlnet-canny"])
    finish_base(recipe, tiny_model_dir)
    with pytest.raises(FileNotFoundError, match="--only controlnet-all"):
        train_all(recipe, only=["controlnet-canny"])


def test_a_runs_folder_remembers_the_steps_it_was_last_given(tmp_path, monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    embedded.configure(parser)
    targets = []

    def record(recipe, only, max_minutes):
        targets.append(recipe["base"].target_steps)
        return True

    monkeypatch.setattr(embedded, "train_all", record)
    runs = str(tmp_path / "runs")
    for flags in (["--vae-steps", "0", "--unet-steps", "30"], [], ["--unet-steps", "40"]):
        assert embedded.run(parser.parse_args(["--runs", runs, *flags])) == 0
    assert targets == [{"vae": 0, "unet": 30}, {"vae": 0, "unet": 30}, {"vae": 0, "unet": 40}]
    assert embedded.run(parser.parse_args(["--runs", str(tmp_path / "new")])) == 0
    assert targets[-1] == {"vae": Steps().vae, "unet": Steps().unet}
    # packing reads the remembered steps and, given none, writes nothing
    packed = tmp_path / "packed-only"
    assert embedded.run(parser.parse_args(["--runs", str(packed), "--pack", str(tmp_path / "p")]))
    assert not packed.exists()
    # nor does a command refused for a stage whose needs are not trained
    monkeypatch.setattr(embedded, "train_all", lambda *args: pytest.fail("trained"))
    early = ["--runs", str(tmp_path / "early"), "--only", "controlnet-canny", "--vae-steps", "5"]
    assert embedded.run(parser.parse_args(early)) == 2
    assert not (tmp_path / "early").exists()


def test_new_step_counts_that_reopen_finished_stages_are_named(
    recipe, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    import argparse

    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    embedded.remember_steps(tmp_path / "runs", STEPS)
    monkeypatch.setattr(embedded, "train_all", lambda *args: True)
    parser = argparse.ArgumentParser()
    embedded.configure(parser)
    more = ["--runs", str(tmp_path / "runs"), "--only", "controlnet-seg"]
    assert embedded.run(parser.parse_args([*more, "--controlnet-steps", "10"])) == 0
    out = capsys.readouterr().out
    assert "note: the new step counts reopen controlnet-canny, finished at the earlier" in out
    assert "Until controlnet-canny train on, --pack serves their conditions with the shared" in out
    assert embedded.run(parser.parse_args(more)) == 0  # the same counts again: nothing reopens
    assert "reopen" not in capsys.readouterr().out
    shared = ["--only", "controlnet-all", "--shared-steps", "7", "--controlnet-steps", "10"]
    assert embedded.run(parser.parse_args([*more[:2], *shared])) == 0
    out = capsys.readouterr().out
    assert "the new step counts reopen controlnet-all, finished at the earlier ones" in out
    assert (
        "Once controlnet-all trains on, --pack refuses what was fine-tuned from controlnet-all "
        "before it (controlnet-canny) until each is trained again." in out
    )
    assert "serves their conditions" not in out  # canny's count is the one it finished at


def test_pack_refuses_without_a_base(recipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="not trained yet"):
        pack(recipe, tmp_path / "preset")
    assert not (tmp_path / "preset").exists()


def test_a_refused_pack_remembers_no_step_count_and_makes_no_folder(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    embedded.configure(parser)
    runs = tmp_path / "typo"
    command = ["--runs", str(runs), "--pack", str(tmp_path / "preset"), "--unet-steps", "5"]
    assert embedded.run(parser.parse_args(command)) == 2
    said = capsys.readouterr()
    assert "The base is not trained yet" in said.err and "Steps:" not in said.out
    assert not runs.exists() and not (tmp_path / "preset").exists()


def test_pack_before_the_shared_controlnet_names_it_not_the_fine_tunes(
    recipe, tiny_model_dir, tmp_path, capsys
):
    import argparse

    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)  # its start is not there
    assert pack(recipe, tmp_path / "preset") == ["controlnet-all", "captioner"]
    assert not (tmp_path / "preset" / "controlnet").exists()

    embedded.remember_steps(tmp_path / "runs", STEPS)
    parser = argparse.ArgumentParser()
    embedded.configure(parser)
    command = ["--runs", str(tmp_path / "runs"), "--pack", str(tmp_path / "again")]
    assert embedded.run(parser.parse_args(command)) == 0
    out = capsys.readouterr().out
    assert "Not finished, so not packed: controlnet-all, captioner." in out
    assert "warning: no condition has a ControlNet until controlnet-all finishes" in out


def test_pack_writes_the_embedded_layout_in_fp16_with_cards(recipe, tiny_model_dir, tmp_path):
    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    finish_controlnet(recipe, tiny_model_dir, "seg", STEPS.controlnet - 1)  # unfinished
    metrics = tmp_path / "results.json"
    row = {"iou": 0.8766, "color_accuracy": 0.5432, "edge_f1": 0.321}
    metrics.write_text(json.dumps({"canny": {"user prompt": row}}))
    (tmp_path / "table.md").write_text("the evaluation's table\n")
    out = tmp_path / "preset"

    missing = pack(recipe, out, metrics)

    assert missing == ["captioner"]  # unfinished conditions are served by the shared ControlNet
    others = ["scribble", "hough", "pose", "seg", "depth", "normal"]
    settings = json.loads((out / "preset.json").read_text())
    examples = {key: settings.pop(key) for key in ("examples", "example_prompts")}
    assert settings == {
        "name": "embedded",
        "resolution": 64,
        "cfg": 2.0,
        "added_prompt": "",  # as it was trained and evaluated
        "negative_prompt": "",
        "controlnets": {key: "all" for key in others},
    }
    assert examples == write_examples(tmp_path / "examples", 64)  # scenes at the preset's size
    assert set(examples["examples"]) == set(CONDITION_KEYS)
    assert (out / "base" / "model_index.json").is_file()
    assert sorted(p.name for p in (out / "controlnet").iterdir()) == ["all", "canny"]
    shared_card = (out / "controlnet" / "all" / "README.md").read_text()
    assert "every condition (shared)" in shared_card
    assert (
        "It serves scribble, hough, pose, seg, depth, normal until their own fine-tunes ship; each "
        "condition's own ControlNet is a fine-tune of it." in shared_card
    )
    assert f"true maps, 64 held-out examples): 0.0456 at step {STEPS.shared}." in shared_card
    assert "Trained on 1 x cpu." in shared_card
    assert "## Held-out test scenes (`python -m cnet eval`)\n" in shared_card  # none evaluated
    for path in out.rglob("*.safetensors"):
        with safe_open(path, "pt") as tensors:
            names = tensors.keys()
            dtypes = {str(tensors.get_tensor(name).dtype) for name in names}
        assert dtypes <= {"torch.float16", "torch.int64"}, (path, dtypes)
    base_card = (out / "base" / "README.md").read_text()
    assert "UNet + text encoder: 5 steps" in base_card
    assert "final loss 0.1234 (mean of the last 100 steps 0.1456)" in base_card
    card = (out / "controlnet" / "canny" / "README.md").read_text()
    assert "the shared start), then 4 steps" in card
    canny = out / "controlnet" / "canny"
    assert sorted(p.name for p in canny.iterdir()) == [
        "README.md",
        "lineage.json",
        "lowrank.json",
        "lowrank.safetensors",
    ]
    parameters = embedded.parameter_count(out / "controlnet" / "all") / 1e6
    assert f"- Parameters: {parameters:.2f} M, stored as the rank-16 difference from the " in card
    assert recorded_runs(canny) == recorded_runs(recipe["controlnet-canny"].result)
    assert "| user prompt | 0.877 | — | 0.543 | 0.321 |" in card  # no shape IoU in these results
    assert "(`python -m cnet eval`; its scenes and sampling: the first line of the preset's" in card
    assert not out.with_name("preset.packing").exists()
    # the evaluation the cards quote travels with them (this one wrote no scenes.json)
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["results.json", "table.md"]


def card_of_one_run(recipe, tiny_model_dir, config, losses: dict, device: str) -> str:
    """The base card of a finished `config` run that trained the parts `losses` names (their final
    losses; a part without one trained no step), with its lineage entry."""
    from cnet.train.base import lineage_entry
    from cnet.train.lineage import LINEAGE_FILE, UNRECORDED

    summary = {
        "steps": {part: 0 if loss is None else 7 for part, loss in losses.items()},
        "final_loss": losses,
        "mean_loss_last_100": losses,
        "scaling_factor": 0.61,
        "device": device,
        "config": asdict(config),
    }
    stage = recipe["base"]
    finish(stage, tiny_model_dir / "base", summary)
    (stage.result / LINEAGE_FILE).write_text(json.dumps([UNRECORDED, lineage_entry(summary)]))
    return embedded.base_card(stage, stage.result)


def test_a_base_card_says_when_only_the_vae_decoder_was_trained(recipe, tiny_model_dir):
    config = BaseTrainConfig(
        base_init="runs/earlier/base", vae_decoder_only=True, unet_steps=0, vae_frame_weight=4.0
    )
    card = card_of_one_run(recipe, tiny_model_dir, config, {"vae": 0.0512, "unet": None}, "1 x cpu")
    assert "VAE: 7 steps fine-tuning an earlier VAE's decoder alone (its encoder" in card
    assert "objects and 3 px around them weigh 5x, the outer 4 px weighing 5x" in card
    assert "final loss 0.0512" in card
    assert "UNet + text encoder: kept from the earlier base (v prediction" in card
    assert "continuing" not in card
    assert (
        "  2. its decoder 7 steps at batch 4, learning rate 0.0002, the outer 4 px weighing 5x"
        in card
    )


def test_a_base_card_names_the_default_prompt_share_of_the_run_and_its_lineage(
    recipe, tiny_model_dir
):
    config = BaseTrainConfig(base_init="runs/earlier/base", vae_steps=0, default_prompt_share=0.5)
    losses = {"vae": None, "unet": 0.2}
    card = card_of_one_run(recipe, tiny_model_dir, config, losses, "1 x NVIDIA H200")
    assert "10% empty prompts (50% of them the default prompt); final loss 0.2000" in card
    assert "  2. UNet + text encoder 7 steps at batch 16" in card
    assert "zero terminal SNR, 10% empty prompts (50% of them the default prompt)" in card


def test_a_shared_controlnet_continued_from_earlier_weights_says_so(
    recipe, tiny_model_dir, tmp_path
):
    finish_base(recipe, tiny_model_dir)
    shared = recipe["controlnet-all"]
    shared.config.controlnet = "runs/earlier/controlnet"  # e.g. a run continued on a lent GPU
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    config_path = shared.result / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "_name_or_path": "/home/me/runs/controlnet"}))

    pack(recipe, tmp_path / "preset")

    packed = json.loads((tmp_path / "preset" / "controlnet" / "all" / "config.json").read_text())
    assert "_name_or_path" not in packed  # a local path means nothing on a user's machine
    assert packed["_class_name"] == config["_class_name"]
    card = (tmp_path / "preset" / "controlnet" / "all" / "README.md").read_text()
    assert "continuing an earlier shared ControlNet's weights, 6 steps" in card
    assert "the shared start" not in card


def test_a_card_lists_every_run_behind_the_weights(recipe, tiny_model_dir, tmp_path):
    from cnet.train.controlnet import lineage_entry
    from cnet.train.lineage import LINEAGE_FILE, UNRECORDED

    finish_base(recipe, tiny_model_dir)
    shared = recipe["controlnet-all"]
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    config = {**asdict(shared.config), "default_prompt_share": 0.5}
    schedule = {"from_step": 0, "learning_rate": 1e-4, "batch_size": 64, "all_links": False}
    run = {
        "steps": 600,
        "schedules": [
            schedule,
            {**schedule, "from_step": 500, "cooldown_steps": 100, "all_links": True},
        ],
        "connect_decoder": True,
        "base_unlocked": False,
        "mean_loss_last_100": 0.19,
        "control_gains": {"500": 0.1, "600": 0.2},
        "device": "1 x NVIDIA H200",
        "config": config,
    }
    lineage = [UNRECORDED, lineage_entry(run)]
    (shared.result / LINEAGE_FILE).write_text(json.dumps(lineage))

    pack(recipe, tmp_path / "preset")

    card = (tmp_path / "preset" / "controlnet" / "all" / "README.md").read_text()
    assert (
        "- Every run behind these weights, oldest first:\n"
        "  1. an earlier model whose training is not recorded here.\n"
        "  2. 600 steps on all maps, batch 64, AdamW learning rate 0.0001, middle block only "
        "(small-scale) from step 0; batch 64, "
        "AdamW learning rate 0.0001 falling to 0 over the last 100 steps from step 500, 50% empty "
        "prompts (50% of them the default prompt); control gain 0.2000 at step 600; "
        "1 x NVIDIA H200.\n"
    ) in card
    assert (tmp_path / "preset" / "controlnet" / "all" / LINEAGE_FILE).is_file()


def four_step_run(config: dict) -> dict:
    """A finished 4-step ControlNet run's training.json, as `lineage_entry` reads it."""
    return {
        "steps": 4,
        "schedules": [{"from_step": 0, "learning_rate": 1e-4, "batch_size": 64}],
        "connect_decoder": True,
        "base_unlocked": False,
        "mean_loss_last_100": 0.19,
        "control_gains": {},
        "device": "1 x cpu",
        "config": config,
    }


def test_a_fine_tune_with_replayed_maps_records_and_names_its_share(recipe):
    from cnet.train.controlnet import lineage_entry

    config = {**asdict(recipe["controlnet-scribble"].config), "replay_share": 0.25}
    run = four_step_run(config)
    entry = lineage_entry(run)
    assert entry["replay_share"] == 0.25
    assert embedded.describe_run(entry).startswith(
        "4 steps on scribble maps (25% of the examples another condition's map, in turn), batch 64"
    )
    without = lineage_entry({**run, "config": {**config, "replay_share": 0.0}})
    assert "replay_share" not in without
    assert embedded.describe_run(without).startswith("4 steps on scribble maps, batch 64")


def test_a_card_names_the_map_versions_a_run_trained_on(recipe, tiny_model_dir, tmp_path):
    from cnet.train.controlnet import lineage_entry

    config = asdict(recipe["controlnet-scribble"].config)
    run = {**four_step_run(config), "map_versions": {"scribble": 2}}
    assert embedded.describe_run(lineage_entry(run)).startswith(
        "4 steps on scribble maps (version 2: the horizon drawn too), batch 64"
    )
    shared = lineage_entry({**run, "config": {**config, "condition": "all"}})
    assert embedded.describe_run(shared).startswith(
        "4 steps on all maps (scribble's version 2: the horizon drawn too), batch 64"
    )
    first_drawn = lineage_entry({**run, "map_versions": {}})
    assert "map_versions" not in first_drawn
    assert embedded.describe_run(first_drawn).startswith("4 steps on scribble maps, batch 64")

    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    finish_controlnet(recipe, tiny_model_dir, "scribble", STEPS.controlnet)
    summary = recipe["controlnet-scribble"].run_dir / "training.json"
    summary.write_text(
        json.dumps({**json.loads(summary.read_text()), "map_versions": {"scribble": 2}})
    )
    pack(recipe, tmp_path / "preset")
    card = (tmp_path / "preset" / "controlnet" / "scribble" / "README.md").read_text()
    assert "their `scribble` control maps (64 px, train split; version 2: the horizon drawn" in card


def test_every_redrawn_map_says_what_changed():
    from cnet.synth.maps import MAP_CHANGES, MAP_VERSIONS

    for condition, version in MAP_VERSIONS.items():
        for drawing in range(2, version + 1):
            assert MAP_CHANGES[condition, drawing], (condition, drawing)


def test_to_float16_halves_wide_floats_and_leaves_fp16_files_alone(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    wide, half = tmp_path / "wide.safetensors", tmp_path / "half.safetensors"
    save_file({"w": torch.ones(2, dtype=torch.float32), "i": torch.arange(2)}, wide)
    save_file({"w": torch.ones(2, dtype=torch.float16)}, half, metadata={"kept": "yes"})

    embedded.to_float16(tmp_path)

    assert {k: v.dtype for k, v in load_file(wide).items()} == {
        "w": torch.float16,
        "i": torch.int64,
    }
    with safe_open(half, "pt") as f:
        assert f.metadata() == {"kept": "yes"}  # not rewritten


def test_pack_refuses_to_go_over_the_weights_budget(recipe, tiny_model_dir, tmp_path, monkeypatch):
    finish_base(recipe, tiny_model_dir)
    monkeypatch.setattr(embedded, "WEIGHTS_BUDGET_BYTES", 1000)
    out = tmp_path / "preset"
    with pytest.raises(ValueError, match="weights budget"):
        pack(recipe, out)
    assert not out.exists() and not out.with_name("preset.packing").exists()


def test_a_packed_preset_loads_and_generates_in_float32(recipe, tiny_model_dir, tmp_path):
    from cnet.engine import GenerationRequest, load_engine

    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    out = tmp_path / "preset"
    pack(recipe, out)

    engine = load_engine(model_dir=str(out), device="cpu", threads=1)
    engine.load()
    control = np.zeros((64, 64, 3), np.uint8)
    control[16:48, 20:44] = 255
    images = {
        key: np.asarray(
            engine.generate(
                GenerationRequest(control, condition=key, steps=2, prompt="a red cube", seed=1)
            ).images[0]
        )
        for key in ("canny", "depth")
    }
    assert images["canny"].shape == (64, 64, 3)
    assert images["canny"].std() > 0
    assert not np.array_equal(images["canny"], images["depth"])  # its own ControlNet, not shared


def test_without_the_shared_controlnet_no_condition_ships(recipe, tiny_model_dir, tmp_path):
    from cnet.engine import GenerationRequest, load_engine
    from cnet.models import ModelMissingError

    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)  # its start not shipped
    out = tmp_path / "preset"

    missing = pack(recipe, out)

    assert "controlnet-all" in missing and "controlnet-canny" not in missing
    assert not (out / "controlnet").exists()
    engine = load_engine(model_dir=str(out), device="cpu", threads=1)
    control = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ModelMissingError, match="canny"):
        engine.generate(GenerationRequest(control, condition="canny", steps=2, prompt="a cube"))


def test_the_shared_controlnet_serves_unfinished_conditions(recipe, tiny_model_dir, tmp_path):
    from cnet.engine import load_engine

    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    out = tmp_path / "preset"
    pack(recipe, out)

    engine = load_engine(model_dir=str(out), device="cpu", threads=1)
    assert engine.preset.controlnet_source("depth") == str(out / "controlnet" / "all")
    assert engine.preset.controlnet_source("canny") == str(out / "controlnet" / "canny")
    assert engine.controlnet("depth") is engine.controlnet("seg")  # loaded once for both
    assert engine.controlnet("depth") is not engine.controlnet("canny")


def test_command_line_names_unknown_stages_and_a_missing_base(tmp_path, capsys):
    from cnet.__main__ import main

    runs = str(tmp_path / "runs")
    assert main(["train", "embedded", "--runs", runs, "--only", "controlnet-sketch"]) == 2
    assert "unknown stage controlnet-sketch" in capsys.readouterr().err
    assert main(["train", "embedded", "--runs", runs, "--pack", str(tmp_path / "out")]) == 2
    assert f"python -m cnet train embedded --runs {runs}" in capsys.readouterr().err


def evaluation(folder: Path, canny_iou: float) -> Path:
    """A results.json of `cnet eval` in `folder`, every condition's row alike but canny's."""
    row = {"iou": 0.5, "color_accuracy": 0.75, "edge_f1": None}
    rows = {key: {"user prompt": row} for key in CONDITION_KEYS}
    rows["canny"] = {"user prompt": {**row, "iou": canny_iou}}
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(rows))
    return folder / "results.json"


def recorded(metrics: Path, model_dir: Path, conditions=CONDITION_KEYS) -> Path:
    """`metrics` with a scenes.json beside it, as `cnet eval` of the preset in `model_dir` writes
    it: which models made each of `conditions`' rows."""
    from cnet.evaluate import evaluated_models
    from cnet.models import preset_from_dir

    made_by = evaluated_models(preset_from_dir(model_dir, device="cpu"), conditions)
    scenes = {"sampling": {}, "seeds": [], "figures": {}, "models": made_by}
    (metrics.parent / "scenes.json").write_text(json.dumps(scenes))
    return metrics


def test_install_and_pack_refuse_an_evaluation_of_other_models(recipe, tiny_model_dir, tmp_path):
    from cnet.train.embedded import check_evaluated
    from cnet.train.install import install_evaluation

    finish_base(recipe, tiny_model_dir)
    (recipe["base"].result / "lineage.json").write_text(json.dumps([{"trainer": "base"}]))
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    (recipe["controlnet-all"].result / "lineage.json").write_text(json.dumps([{"trainer": "all"}]))
    out = tmp_path / "preset"
    pack(recipe, out)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    run = recipe["controlnet-canny"].run_dir
    candidate = tmp_path / "candidate"
    shutil.copytree(out, candidate)
    install(run, candidate)
    stale = recorded(evaluation(tmp_path / "before", canny_iou=0.5), out)  # canny by the shared
    after = recorded(evaluation(tmp_path / "after", canny_iou=0.9), candidate)

    with pytest.raises(ValueError, match="evaluated canny with another ControlNet than .* will"):
        install(run, out, stale)
    assert not (out / "controlnet" / "canny").exists()
    with pytest.raises(ValueError, match=f"evaluated canny with another ControlNet than {out} h"):
        install_evaluation(after, out)
    with pytest.raises(ValueError, match="evaluated canny with another ControlNet"):
        pack(recipe, tmp_path / "repacked", stale)
    with pytest.raises(ValueError, match="evaluated scribble with another base"):
        check_evaluated(after, candidate, {"base": run / "controlnet"})  # as a decoder would

    assert install(run, out, after).startswith("canny's ControlNet in")
    pack(recipe, tmp_path / "repacked", after)
    assert "not checked" not in install_evaluation(after, out)
    recorded(after, candidate, ["canny", "depth"])  # the others kept from an older evaluation
    assert "(not checked to be of this preset's models: scribble, hough, pose, seg, normal)" in (
        install_evaluation(after, out)
    )


def test_pack_refuses_an_evaluation_at_another_size_and_names_rows_of_unrecorded_models(
    recipe, tiny_model_dir, tmp_path, capsys
):
    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    other = evaluation(tmp_path / "other", canny_iou=0.5)  # of the tiny model, which has no record
    unrecorded = {key: {"base": None, "controlnet": None} for key in CONDITION_KEYS}
    scenes = {"sampling": {"size": 32}, "seeds": [], "figures": {}, "models": unrecorded}
    (other.parent / "scenes.json").write_text(json.dumps(scenes))
    with pytest.raises(ValueError, match=f"{other.parent} sampled 32 px images and .* makes 64 px"):
        pack(recipe, tmp_path / "preset", other)
    scenes["sampling"]["size"] = 64
    (other.parent / "scenes.json").write_text(json.dumps(scenes))
    pack(recipe, tmp_path / "preset", other)
    assert (
        f"note: {other.parent} does not record which models made its rows for scribble, canny, "
        in capsys.readouterr().out
    )


def test_install_adds_one_fine_tune_to_a_packed_preset_as_pack_would(
    recipe, tiny_model_dir, tmp_path
):
    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    out = tmp_path / "preset"
    pack(recipe, out, evaluation(tmp_path / "before", canny_iou=0.5))
    assert "canny" in json.loads((out / "preset.json").read_text())["controlnets"]
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    metrics = evaluation(tmp_path / "after", canny_iou=0.9)

    assert install_controlnet(recipe["controlnet-canny"].run_dir, out, metrics) == "canny"

    repacked = tmp_path / "repacked"
    pack(recipe, repacked, metrics)
    for name in ("preset.json", "eval/results.json"):
        assert json.loads((out / name).read_text()) == json.loads((repacked / name).read_text())
    for name in ("README.md", "lineage.json", "lowrank.json", "lowrank.safetensors"):
        path = Path("controlnet") / "canny" / name
        assert (out / path).read_bytes() == (repacked / path).read_bytes(), path
    shared_card = (out / "controlnet" / "all" / "README.md").read_text()
    assert shared_card == (repacked / "controlnet" / "all" / "README.md").read_text()
    assert "It serves scribble, hough, pose" in shared_card and "### canny" not in shared_card
    assert shared_use(["scribble"]).startswith("It serves scribble until its own fine-tune ships;")
    assert "| user prompt | 0.900 |" in (out / "controlnet" / "canny" / "README.md").read_text()
    assert not (out / "controlnet" / "canny.installing").exists()


def test_install_of_an_evaluation_rewrites_every_card_as_pack_would(
    recipe, tiny_model_dir, tmp_path, capsys
):
    from cnet.__main__ import main

    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    out = tmp_path / "preset"
    pack(recipe, out, evaluation(tmp_path / "before", canny_iou=0.5))
    again = evaluation(tmp_path / "again", canny_iou=0.7)
    rows = json.loads(again.read_text())
    rows["scribble"]["user prompt"]["iou"] = 0.6  # served by the shared ControlNet
    again.write_text(json.dumps(rows))

    command = ["train", "embedded", "--install", str(again.parent), "--pack", str(out)]
    assert main([*command, "--metrics", str(tmp_path / "before" / "results.json")]) == 2
    assert "leave out --metrics" in capsys.readouterr().err
    (tmp_path / "canny-alone").mkdir()
    (tmp_path / "canny-alone" / "results.json").write_text(json.dumps({"canny": rows["canny"]}))
    alone = ["train", "embedded", "--install", str(tmp_path / "canny-alone"), "--pack", str(out)]
    assert main(alone) == 2
    assert "has no rows for scribble, hough" in capsys.readouterr().err
    assert main(command) == 0
    assert "quoted by controlnet/all, controlnet/canny" in capsys.readouterr().out

    repacked = tmp_path / "repacked"
    pack(recipe, repacked, again)
    for name in ("all", "canny"):
        card = Path("controlnet") / name / "README.md"
        assert (out / card).read_text() == (repacked / card).read_text(), name
    assert "| user prompt | 0.700 |" in (out / "controlnet" / "canny" / "README.md").read_text()
    assert "| user prompt | 0.600 |" in (out / "controlnet" / "all" / "README.md").read_text()
    assert json.loads((out / "eval" / "results.json").read_text()) == rows


def test_install_refuses_what_is_not_a_finished_fine_tune_of_the_shipped_shared_one(
    recipe, tiny_model_dir, tmp_path
):
    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    out = tmp_path / "preset"
    pack(recipe, out)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    with pytest.raises(FileNotFoundError, match="pack one first"):
        install(recipe["controlnet-canny"].run_dir, tmp_path / "not-packed")
    with pytest.raises(FileNotFoundError, match="no finished run"):
        install(recipe["controlnet-hough"].run_dir, out)
    with pytest.raises(ValueError, match="trained on all maps"):
        install(recipe["controlnet-all"].run_dir, out)
    finish_controlnet(recipe, tiny_model_dir, "depth", STEPS.controlnet - 1)
    with pytest.raises(ValueError, match="stopped at step 3 of 4"):
        install(recipe["controlnet-depth"].run_dir, out)
    finish_controlnet(recipe, tiny_model_dir, "seg", STEPS.controlnet)
    other_start = recipe["controlnet-seg"].result / "lineage.json"
    other_start.write_text(json.dumps([{"trainer": "another shared run"}, {"trainer": "seg"}]))
    with pytest.raises(ValueError, match="not fine-tuned from the shared ControlNet"):
        install(recipe["controlnet-seg"].run_dir, out)
    record = recipe["controlnet-canny"].run_dir / "training.json"
    summary = json.loads(record.read_text())
    summary["config"]["condition"] = None  # a folder's maps, their condition not named
    record.write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="without --condition naming their condition"):
        install(recipe["controlnet-canny"].run_dir, out)
    assert sorted(p.name for p in (out / "controlnet").iterdir()) == ["all"]
    assert not (tmp_path / "not-packed").exists()


def test_install_from_the_command_line(recipe, tiny_model_dir, tmp_path, capsys):
    from cnet.__main__ import main

    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    out = tmp_path / "preset"
    pack(recipe, out)
    finish_controlnet(recipe, tiny_model_dir, "pose", STEPS.controlnet)
    run = str(recipe["controlnet-pose"].run_dir)
    assert main(["train", "embedded", "--install", run]) == 2
    assert "--install needs --pack DIR" in capsys.readouterr().err
    assert main(["train", "embedded", "--install", run, "--pack", str(out)]) == 0
    assert f"Installed pose's ControlNet in {out / 'controlnet' / 'pose'} (rank 16)" in (
        capsys.readouterr().out
    )


def test_pack_refuses_a_folder_whose_files_it_would_lose(recipe, tiny_model_dir, tmp_path, capsys):
    from cnet.__main__ import main

    finish_base(recipe, tiny_model_dir)
    runs = recipe["base"].run_dir.parent
    for out in (runs, runs.parent):  # the runs, or a folder holding them
        assert main(["train", "embedded", "--runs", str(runs), "--pack", str(out)]) == 2
        assert "holds the training runs" in capsys.readouterr().err
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    assert main(["train", "embedded", "--runs", str(runs), "--pack", str(notes)]) == 2
    assert "holds other files and no preset.json" in capsys.readouterr().err
    assert main(["train", "embedded", "--runs", str(runs), "--pack", str(notes / "todo.txt")]) == 2
    assert f"--pack {notes / 'todo.txt'} is a file; give a new folder" in capsys.readouterr().err
    assert (notes / "todo.txt").is_file() and recipe["base"].finished()
    steps = ["--vae-steps", str(STEPS.vae), "--unet-steps", str(STEPS.unet)]
    assert main(["train", "embedded", "--runs", str(runs), *steps, "--pack", str(notes / "..")])
    assert (
        main(["train", "embedded", "--runs", str(runs), *steps, "--pack", str(tmp_path / "new")])
        == 0
    )
    (tmp_path / "new" / "eval").mkdir()  # an evaluation kept with the preset
    capsys.readouterr()
    assert main(["train", "embedded", "--runs", str(runs), "--pack", str(tmp_path / "new")]) == 2
    kept = tmp_path / "new" / "eval"
    assert (
        f"keeps an evaluation in {kept}, which packing would drop: give --metrics "
        f"{kept / 'results.json'} to keep it" in capsys.readouterr().err
    )
    assert kept.is_dir()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pack", "p", "--only", "base"], "--only is for training; --pack trains nothing"),
        (["--pack", "p", "--max-minutes", "5"], "--max-minutes is for training; --pack trains"),
        (["--metrics", "results.json"], "--metrics is for --pack DIR (the cards quote it)"),
    ],
)
def test_flags_the_mode_would_drop_are_refused(tmp_path, flags, message, capsys, monkeypatch):
    from cnet.__main__ import main

    monkeypatch.setattr(embedded, "train_all", lambda *args: pytest.fail("trained"))
    runs = tmp_path / "runs"
    assert main(["train", "embedded", "--runs", str(runs), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not runs.exists()


def test_a_refused_command_changes_nothing(tmp_path, capsys):
    from cnet.__main__ import main

    runs = tmp_path / "runs"
    assert main(["train", "embedded", "--runs", str(runs), "--only", "bogus", "--unet-steps", "7"])
    assert "unknown stage bogus" in capsys.readouterr().err
    assert not (runs / embedded.STEPS_FILE).exists()
    steps = ["--only", "base", "--unet-steps", "7"]
    for starts, message in (
        (["--base-init", str(tmp_path / "nothere")], "nothere: no such folder; give a base"),
        (["--base-init", str(tmp_path), "--vae-init", str(tmp_path)], "leave out --vae-init"),
    ):
        assert main(["train", "embedded", "--runs", str(runs), *steps, *starts]) == 2
        assert message in capsys.readouterr().err
        assert not runs.exists()
    for flag in ("--unet-steps", "--cpu-threads"):
        with pytest.raises(SystemExit):
            main(["train", "embedded", "--runs", str(runs), flag, "-5"])


def test_pack_names_a_fine_tune_of_an_earlier_shared_controlnet(recipe, tiny_model_dir, tmp_path):
    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    shared = recipe["controlnet-all"].result / "lineage.json"  # the shared one trained again
    shared.write_text(json.dumps([*recorded_runs(shared.parent), {"trainer": "controlnet"}]))
    out = tmp_path / "preset"
    with pytest.raises(
        ValueError, match="fine-tuned from an earlier controlnet-all.*--only controlnet-canny"
    ):
        pack(recipe, out)
    assert not out.exists() and not out.with_name("preset.packing").exists()


def test_a_metrics_file_that_is_no_evaluation_is_named(recipe, tiny_model_dir, tmp_path):
    finish_base(recipe, tiny_model_dir)
    broken = tmp_path / "results.json"
    broken.write_text("{'canny': 0.5}")
    with pytest.raises(ValueError, match=f"{broken} is not a readable results.json"):
        pack(recipe, tmp_path / "preset", broken)


def test_install_without_metrics_keeps_quoting_the_kept_evaluation(
    recipe, tiny_model_dir, tmp_path
):
    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    out = tmp_path / "preset"
    pack(recipe, out, evaluation(tmp_path / "before", canny_iou=0.8))
    finish_controlnet(recipe, tiny_model_dir, "canny", STEPS.controlnet)
    install(recipe["controlnet-canny"].run_dir, out)
    shared_card = (out / "controlnet" / "all" / "README.md").read_text()
    assert "Not evaluated yet" not in shared_card and "### depth" in shared_card
    assert "| user prompt | 0.800 |" in (out / "controlnet" / "canny" / "README.md").read_text()


def test_install_refuses_a_decoder_of_a_vae_of_another_shape(recipe, tiny_model_dir, tmp_path):
    finish_base(recipe, tiny_model_dir)
    out = tmp_path / "preset"
    pack(recipe, out)
    run = tmp_path / "decoder"
    shutil.copytree(out / "base" / "vae", run / "vae")
    config = json.loads((run / "vae" / "config.json").read_text())
    config["block_out_channels"] = [2 * n for n in config["block_out_channels"]]
    (run / "vae" / "config.json").write_text(json.dumps(config))
    (run / "training.json").write_text(json.dumps({"steps": 2, "config": {"steps": 2}}))
    earlier = recorded_runs(out / "base") or [{"trainer": "unrecorded"}]
    (run / "lineage.json").write_text(json.dumps([*earlier, {"trainer": "decoder"}]))
    with pytest.raises(ValueError, match="another base.*block_out_channels"):
        install(run, out)


def test_pack_names_a_controlnet_trained_on_an_earlier_base(recipe, tiny_model_dir, tmp_path):
    finish_base(recipe, tiny_model_dir)
    finish_controlnet(recipe, tiny_model_dir, "all", STEPS.shared)
    record = recipe["controlnet-all"].run_dir / "training.json"
    summary = json.loads(record.read_text())
    record.write_text(json.dumps({**summary, "base_lineage": recorded_runs(recipe["base"].result)}))
    pack(recipe, tmp_path / "first")  # trained on this base: packed
    base_record = recipe["base"].result / "lineage.json"  # the base trained again since
    base_record.write_text(json.dumps([{"trainer": "base", "steps": 9}]))
    with pytest.raises(ValueError, match="trained on an earlier base.*--only controlnet-all"):
        pack(recipe, tmp_path / "second")
    assert not (tmp_path / "second").exists()


def test_resuming_the_same_time_boxed_command_reports_no_changed_setting():
    from cnet.train.checkpoint import changes_note

    saved = {"max_minutes": 0.0099994, "resume": None, "learning_rate": 1e-4}
    again = {"max_minutes": 0.0099967, "resume": "latest", "learning_rate": 1e-4}  # what is left
    assert changes_note(saved, again) == ""
    changed = changes_note(saved, {**again, "learning_rate": 1e-5})
    assert (
        changed
        == "Settings changed since that checkpoint (was, now): {'learning_rate': (0.0001, 1e-05)}"
    )


def test_help_says_what_the_command_does_and_where_the_runs_go(capsys):
    from cnet.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "embedded", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the embedded preset: every model, resumable; --pack" in text
    assert "checkpoints of every stage (default: runs/embedded)" in text
