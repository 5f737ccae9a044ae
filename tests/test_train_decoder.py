"""Fine-tuning a preset's VAE decoder on the latents it samples: pairs, training, resume."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from cnet.synth.sample import CONDITION_KEYS
from cnet.train.decoder import DecoderConfig, collect_pairs, pair_plan, train
from cnet.train.embedded import describe_run
from cnet.train.install import base_card_with_decoder, install
from cnet.train.lineage import recorded_runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_workers_share_the_plan_and_every_condition_takes_its_turn():
    whole = pair_plan(300_000, 10)
    assert whole[:8] == [(300_000 + i, CONDITION_KEYS[i % 7]) for i in range(8)]
    shares = [pair_plan(300_000, 10, w, 3) for w in range(3)]
    assert sorted(pair for share in shares for pair in share) == whole


def test_a_pair_holds_the_latent_that_decodes_to_the_engines_image(engine, tmp_path):
    from cnet.engine import GenerationRequest
    from cnet.synth import generate
    from cnet.synth.maps import training_kinds

    plan = pair_plan(300_000, 5)[3:5]  # pose (its scene holds a person), seg
    pairs = collect_pairs(engine, plan, tmp_path / "pairs.pt", 64)
    assert pairs["seeds"] == [300_003, 300_004] and pairs["conditions"] == ["pose", "seg"]
    seed, condition = plan[0]
    sample = generate(seed, 64, [condition], training_kinds(condition))
    assert np.array_equal(pairs["images"][0].numpy(), sample.image)
    request = GenerationRequest(
        control_image=sample.conditions[condition], condition=condition, prompt_mode="user",
        prompt=sample.prompt, added_prompt="", negative_prompt="", resolution=64, seed=seed,
    )  # fmt: skip
    image = np.asarray(engine.generate(request).images[0].convert("RGB"), np.float32)
    vae = engine.pipeline.vae
    with torch.no_grad():
        decoded = vae.decode(pairs["latents"][0][None].to(vae.dtype)).sample[0]
    mine = ((decoded.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    assert np.abs(mine - image).mean() < 1.0  # the latent is stored in float16


def test_training_tunes_only_the_decoder_records_its_run_and_resumes(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from diffusers import AutoencoderKL

    from cnet.train import checkpoint as ckpt

    config = DecoderConfig(
        model_dir=str(tiny_model_dir), output_dir=str(tmp_path / "run"), pairs=4, resolution=64,
        steps=2, batch_size=4, warmup_steps=0, cooldown_steps=0, learning_rate=1e-3,
        checkpoint_every=1,
    )  # fmt: skip
    result = train(config)
    before = AutoencoderKL.from_pretrained(tiny_model_dir / "base" / "vae").state_dict()
    after = AutoencoderKL.from_pretrained(result).state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("decoder.", "post_quant_conv.")) for name in changed)
    summary = json.loads((tmp_path / "run" / "training.json").read_text())
    assert summary["steps"] == 2
    assert set(summary["held_out_l1_after"]) == {"sampled", "encoded"}
    runs = recorded_runs(tmp_path / "run")  # the base's, then this one
    assert runs[-1]["trainer"] == "decoder" and runs[-1]["pairs"] == 4
    assert describe_run(runs[-1]).startswith("its decoder 2 steps at batch 4, half of each batch")

    # More steps: the same command goes on from the checkpoint, sampling no pair again.
    saved = (tmp_path / "run" / "pairs-0-of-1.pt").stat().st_mtime_ns
    train(replace(config, steps=3))
    out = capsys.readouterr().out
    assert "Resuming at step 2" in out
    assert "Settings changed since that checkpoint (was, now): {'steps': (2, 3)}" in out
    assert (tmp_path / "run" / "pairs-0-of-1.pt").stat().st_mtime_ns == saved
    assert json.loads((tmp_path / "run" / "training.json").read_text())["steps"] == 3

    # Killed while putting the export in place: the run reads as unfinished, never new weights
    # beside the old record (or the old ones beside the new).
    def killed(partial, folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "put_in_place", killed)
    with pytest.raises(KeyboardInterrupt):
        train(replace(config, steps=4))
    assert not (tmp_path / "run" / "training.json").exists()


def test_a_checkpoint_or_pairs_made_for_another_base_are_refused_before_a_pair_is_sampled(
    tiny_model_dir, tmp_path, monkeypatch
):
    from cnet.train import decoder

    presets = {name: tmp_path / name for name in ("a", "b", "a-copy")}
    for name, preset in presets.items():
        shutil.copytree(tiny_model_dir, preset)
        base = name[0].upper()  # a and its copy: one base; b: another
        (preset / "base" / "lineage.json").write_text(json.dumps([{"trainer": f"base {base}"}]))
    config = DecoderConfig(
        model_dir=str(presets["a"]), output_dir=str(tmp_path / "run"), pairs=2, resolution=64,
        steps=1, batch_size=2, warmup_steps=0, cooldown_steps=0,
    )  # fmt: skip
    train(config)
    sampled = decoder.sampled_pairs
    monkeypatch.setattr(decoder, "sampled_pairs", lambda c: pytest.fail("sampled for another"))
    made_for = f"made for the base in --model-dir {presets['a']} as it was then, and the base in "
    with pytest.raises(ValueError, match=re.escape(f"{made_for}--model-dir {presets['b']} is")):
        train(replace(config, model_dir=str(presets["b"]), steps=2))
    monkeypatch.setattr(decoder, "sampled_pairs", sampled)
    train(replace(config, model_dir=str(presets["a-copy"]), steps=2))  # the same base goes on
    assert json.loads((tmp_path / "run" / "training.json").read_text())["steps"] == 2

    (tmp_path / "run" / "checkpoint.pt").unlink()  # as if stopped before its first checkpoint
    with pytest.raises(ValueError, match="pairs-0-of-1.pt holds pairs sampled by another base"):
        train(replace(config, model_dir=str(presets["b"]), steps=2))


def test_seeds_outside_the_train_split_and_a_folder_without_a_vae_are_refused(
    tiny_model_dir, tmp_path
):
    with pytest.raises(ValueError, match="train split"):
        train(DecoderConfig(model_dir=str(tiny_model_dir), output_dir=str(tmp_path), pairs=2,
                            first_seed=899_999))  # fmt: skip
    with pytest.raises(ValueError, match="--batch-size 2 or more"):
        train(DecoderConfig(model_dir=str(tiny_model_dir), output_dir=str(tmp_path), batch_size=1))
    with pytest.raises(FileNotFoundError, match="embedded-layout folder"):
        train(DecoderConfig(model_dir=str(tmp_path), output_dir=str(tmp_path / "run")))


def test_an_output_folder_that_cannot_be_written_is_refused_before_sampling_and_a_full_disk_named(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from cnet.__main__ import main
    from cnet.train import decoder

    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"
    command = ["train", "decoder", "--model-dir", str(tiny_model_dir), "--output-dir", str(out)]
    assert main(command) == 2
    assert capsys.readouterr().err.startswith(f"error: Cannot write {out}: {tmp_path / 'file'} is")

    def full(config):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(decoder, "train", full)
    assert main(command) == 1
    assert capsys.readouterr().err.startswith("error: [Errno 28] No space left on device (check")


@pytest.mark.slow  # ~25 s on 2 cores: worker processes each load the model
def test_workers_sample_the_same_pairs_as_one_process_and_keep_each_others(
    tiny_model_dir, tmp_path
):
    from cnet.train.decoder import sampled_pairs

    config = DecoderConfig(model_dir=str(tiny_model_dir), pairs=3, resolution=64)
    alone = sampled_pairs(replace(config, output_dir=str(tmp_path / "alone")))
    shared = sampled_pairs(replace(config, output_dir=str(tmp_path / "shared"), workers=2))
    assert shared["seeds"] == alone["seeds"] == [300_000, 300_001, 300_002]
    assert shared["conditions"] == alone["conditions"]
    for mine, theirs in zip(shared["latents"], alone["latents"], strict=True):
        assert torch.allclose(mine.float(), theirs.float(), atol=1e-2)

    # Another worker count in the same folder samples only the pairs no file holds yet.
    more = sampled_pairs(replace(config, output_dir=str(tmp_path / "shared"), pairs=4))
    assert more["seeds"] == [300_000, 300_001, 300_002, 300_003]
    assert torch.load(tmp_path / "shared" / "pairs-0-of-1.pt")["seeds"] == [300_003]
    assert all(
        torch.equal(a, b) for a, b in zip(more["latents"][:3], shared["latents"], strict=True)
    )


BASE_CARD = """# Embedded base model

What it is.

- Parameters: vae 0.01 M (stored in float16).
- VAE: 3 steps, batch 4, whole images;
  final loss 0.0512 (README: training history).
- UNet + text encoder: 5 steps, batch 4.
- Latent scaling factor 0.61000.

It knows only the synthetic world.
"""


@pytest.fixture(scope="module")
def tuned_decoder(tiny_model_dir, tmp_path_factory):
    """A packed preset (the tiny one, with a base card) and a finished decoder run tuned on it."""
    preset = tmp_path_factory.mktemp("decoder") / "preset"
    shutil.copytree(tiny_model_dir, preset)
    (preset / "base" / "README.md").write_text(BASE_CARD)
    config = DecoderConfig(
        model_dir=str(preset), output_dir=str(preset.with_name("run")), pairs=4, resolution=64,
        steps=2, batch_size=4, warmup_steps=0, cooldown_steps=0, learning_rate=1e-3,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(config)
    torch.set_num_threads(threads)
    return preset, preset.with_name("run")


def test_install_puts_the_tuned_decoder_in_the_preset_with_its_lineage_and_card(
    tuned_decoder, tmp_path, capsys
):
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    from cnet.__main__ import main

    packed, run = tuned_decoder
    preset = tmp_path / "preset"
    shutil.copytree(packed, preset)
    command = ["train", "embedded", "--install", str(run), "--pack", str(preset)]
    evaluation = tmp_path / "eval"  # of the preset on another base (its decoder, say)
    evaluation.mkdir()
    (evaluation / "results.json").write_text(json.dumps({"canny": {"user prompt": {"iou": 0.5}}}))
    made_by = {"canny": {"base": "0123456789abcdef", "controlnet": None}}
    scenes = {"sampling": {}, "seeds": [], "figures": {}, "models": made_by}
    (evaluation / "scenes.json").write_text(json.dumps(scenes))
    assert main([*command, "--metrics", str(evaluation / "results.json")]) == 2
    assert "evaluated canny with another base than" in capsys.readouterr().err
    assert recorded_runs(preset / "base") == recorded_runs(packed / "base")
    assert main(command) == 0
    assert f"Installed the decoder of {run / 'vae'} in {preset / 'base' / 'vae'}" in (
        capsys.readouterr().out
    )
    installed = load_file(preset / "base" / "vae" / "diffusion_pytorch_model.safetensors")
    tuned = AutoencoderKL.from_pretrained(run / "vae").state_dict()
    assert {weight.dtype for weight in installed.values()} == {torch.float16}
    assert all(torch.equal(installed[name], tuned[name].half()) for name in tuned)
    assert recorded_runs(preset / "base") == recorded_runs(run)
    assert not (preset / "base" / "vae.installing").exists()

    card = (preset / "base" / "README.md").read_text()
    summary = json.loads((run / "training.json").read_text())
    after = summary["held_out_l1_after"]["sampled"]
    assert (
        "- VAE: its encoder kept, so the UNet's latents are unchanged; its decoder last tuned"
    ) in card
    assert f"held-out L1 from sampled latents {after:.4f} from" in card
    assert "whole images" not in card  # the VAE line is replaced whole, continuation included
    assert "- UNet + text encoder: 5 steps, batch 4.\n- Latent scaling factor 0.61000.\n" in card
    assert (
        "- Every run behind these weights, oldest first:\n"
        "  1. an earlier model whose training is not recorded here.\n"
        "  2. its decoder 2 steps at batch 4, half of each batch latents the preset sampled for 4 "
    ) in card
    assert card.endswith("; 1 x cpu.\n\nIt knows only the synthetic world.\n")

    # A second decoder tuned on the result adds itself to the list, which is rewritten in place.
    summary["steps"] = 3
    again = base_card_with_decoder(card, summary, [*recorded_runs(run), recorded_runs(run)[-1]])
    assert again.count("- Every run behind these weights") == 1 and "  3. its decoder" in again
    assert again.endswith("\n\nIt knows only the synthetic world.\n")


def test_install_refuses_an_unfinished_decoder_one_of_another_base_and_a_folder_not_packed(
    tuned_decoder, tmp_path
):
    packed, tuned = tuned_decoder
    run = tmp_path / "run"
    shutil.copytree(tuned, run, ignore=shutil.ignore_patterns("*.pt"))
    with pytest.raises(FileNotFoundError, match="holds no base with a VAE"):
        install(run, tmp_path / "not-packed")
    lineage = run / "lineage.json"
    lineage.write_text(json.dumps([{"trainer": "another base"}, recorded_runs(tuned)[-1]]))
    with pytest.raises(ValueError, match="tuned the decoder of another base"):
        install(run, packed)
    summary = json.loads((run / "training.json").read_text())
    summary["config"]["steps"] = 5
    (run / "training.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="stopped at step 2 of 5: finish it first"):
        install(run, packed)
    assert (packed / "base" / "README.md").read_text() == BASE_CARD


def test_an_interrupted_decoder_run_names_its_one_checkpoint_file(tmp_path):
    import argparse

    from cnet.train.cli import interrupted

    args = argparse.Namespace(output_dir=str(tmp_path))  # the decoder resumes by itself
    assert "before the first checkpoint" in interrupted(args)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert f"the last checkpoint is {tmp_path / 'checkpoint.pt'} (the steps" in interrupted(args)
