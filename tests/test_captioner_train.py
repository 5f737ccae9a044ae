"""Training the small BLIP captioner: targets, loss, augmentation, the loop, resume, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnet import captioner as cap
from cnet.train import captioner as train_cap

COLOURS = {
    "red": (200, 30, 35),
    "blue": (35, 75, 200),
    "green": (40, 150, 60),
    "yellow": (235, 205, 40),
}
PROMPTS = [f"a {name} cube on a white background" for name in COLOURS]


def colour_images(size: int = 32) -> torch.Tensor:
    """One [-1, 1] image per colour: a coloured square on white."""
    images = []
    for rgb in COLOURS.values():
        array = np.full((size, size, 3), 245, np.uint8)
        array[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = rgb
        images.append(torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1.0)
    return torch.stack(images)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return ((image.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return cap.build_captioner(cap.TINY, cap.build_tokenizer(PROMPTS))


def test_targets_start_at_dec_end_at_sep_and_ignore_padding(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    targets = train_cap.caption_targets(tok, ["a red cube", "a cube"], max_length=16)
    ids, labels = targets["input_ids"], targets["labels"]
    assert (ids[:, 0] == tok.bos_token_id).all()
    assert ids[0].tolist().count(tok.sep_token_id) == 1
    assert (labels[1, -1] == -100) and (ids[1, -1] == tok.pad_token_id)
    assert (labels[targets["attention_mask"] == 1] >= 0).all()


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tiny):
    model, processor = tiny
    images = colour_images()
    max_length = model.config.text_config.max_position_embeddings
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = train_cap.caption_forward(model, processor, images, PROMPTS, max_length).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_kind_loss_scores_each_patch_against_the_kinds_under_it():
    from cnet.synth.sample import KIND_CLASSES

    sphere = KIND_CLASSES.index("sphere")
    kinds = torch.zeros(1, 4, 4, dtype=torch.uint8)  # 2 x 2 patches of 2 px, all background
    kinds[0, :2, 2:] = sphere  # the whole top-right patch, second in row-major order
    kinds[0, 2, 0] = sphere  # a quarter of the bottom-left patch, third
    shares = torch.zeros(1, 4, len(KIND_CLASSES))
    shares[0, :, 0] = torch.tensor([1.0, 0.0, 0.75, 1.0])
    shares[0, :, sphere] = torch.tensor([0.0, 1.0, 0.25, 0.0])
    best = shares.clamp_min(1e-9).log()  # predicting the shares exactly leaves their entropy
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)) / 4
    assert train_cap.kind_loss(best, kinds, 2).item() == pytest.approx(entropy, rel=1e-4)
    assert train_cap.kind_loss(best.roll(1, 1), kinds, 2) > 5  # patches out of order
    head = train_cap.PatchKindHead(8)
    tokens = torch.randn(3, 1 + 4, 8)  # [CLS] + 4 patches
    assert head(tokens).shape == (3, 4, len(KIND_CLASSES))


def test_blip_pixels_match_the_processor(tiny):
    _, processor = tiny
    images = colour_images()
    pil = [
        Image.fromarray(((x.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()) for x in images
    ]
    expected = processor(images=pil, return_tensors="pt")["pixel_values"]
    assert torch.allclose(train_cap.blip_pixels(images, processor), expected, atol=1e-2)


def test_augmentation_is_reproducible_and_keeps_the_colours():
    images = colour_images()
    first = train_cap.augment(images, torch.Generator().manual_seed(1))
    again = train_cap.augment(images, torch.Generator().manual_seed(1))
    other = train_cap.augment(images, torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == images.shape and first.min() >= -1 and first.max() <= 1
    centre = first[:, :, 14:18, 14:18].mean(dim=(2, 3))  # the square's colour, per image
    assert (centre.argmax(dim=1) == images[:, :, 16, 16].argmax(dim=1)).all()


@pytest.fixture
def caption_folder(tmp_path) -> Path:
    """An image folder with metadata.jsonl, as cnet.train.data reads it."""
    root = tmp_path / "data"
    root.mkdir()
    lines = []
    for i, (image, prompt) in enumerate(zip(colour_images(), PROMPTS, strict=True)):
        array = to_uint8(image)
        Image.fromarray(array).save(root / f"{i}.png")
        Image.fromarray(255 - array).save(root / f"{i}-map.png")
        line = {"image": f"{i}.png", "conditioning_image": f"{i}-map.png", "text": prompt}
        lines.append(json.dumps(line))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def tiny_config(data: Path, out: Path, **changes) -> train_cap.TrainConfig:
    settings = dict(
        output_dir=str(out),
        size="tiny",
        data=str(data),
        batch_size=2,
        learning_rate=3e-3,
        warmup_steps=0,
        cooldown_steps=0,
        max_steps=4,
        checkpoint_every=2,
        validate_every=4,
        num_validation_scenes=4,
        num_test_scenes=4,
        corpus_examples=4,
    )
    settings.update(changes)
    return train_cap.TrainConfig(**settings)


def test_training_writes_a_loadable_captioner_and_resumes_exactly(caption_folder, tmp_path):
    whole = train_cap.train(tiny_config(caption_folder, tmp_path / "whole"))
    out = tmp_path / "whole"
    assert whole.step == 4 and len(whole.losses) == 4
    assert (out / "loss.png").is_file()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002", "step-0000004"]
    assert 0.0 <= whole.accuracy <= 1.0
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == 4 and summary["test_accuracy"] == whole.accuracy
    assert [step for step, _ in summary["validation_accuracies"]] == [4]

    captioner = cap.load_captioner(whole.captioner_dir, device="cpu")
    card = (whole.captioner_dir / "README.md").read_text()
    assert f"4 examples spread over the training folder {caption_folder} (it has no held-" in card
    assert len(captioner([Image.new("RGB", (32, 32), "red")])) == 1

    # A run resumes only where its folder holds no later checkpoint: pruning, or a later
    # --resume latest, would mix the two runs.
    with pytest.raises(ValueError, match="past step-0000002"):
        train_cap.train(
            tiny_config(caption_folder, out, resume=str(out / "checkpoints" / "step-0000002"))
        )
    (out / "checkpoints" / "step-0000004").rename(tmp_path / "step-0000004")
    resumed = train_cap.train(
        tiny_config(
            caption_folder,
            out,
            resume=str(out / "checkpoints" / "step-0000002"),
            checkpoints_to_keep=None,
        )
    )
    assert resumed.losses[:2] == whole.losses[:2]  # the history comes back from the checkpoint
    assert resumed.losses[2:] == pytest.approx(whole.losses[2:], rel=1e-5)

    elsewhere = tmp_path / "elsewhere"  # a checkpoint folder of another run's output
    moved = train_cap.train(
        tiny_config(caption_folder, elsewhere, resume=str(out / "checkpoints" / "step-0000002"))
    )
    assert moved.losses[2:] == pytest.approx(whole.losses[2:], rel=1e-5)
    assert cap.load_captioner(moved.captioner_dir, device="cpu") is not None


def test_a_time_boxed_run_stops_with_a_checkpoint_and_a_measured_export(caption_folder, tmp_path):
    boxed = train_cap.train(
        tiny_config(caption_folder, tmp_path, max_minutes=1e-9, num_test_scenes=50)
    )
    assert boxed.step == 1 and len(boxed.losses) == 1
    card = (boxed.captioner_dir / "README.md").read_text()
    assert f"on {len(COLOURS)} examples spread over the training folder" in card  # not 50
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000001"]
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["steps"] == 1 and summary["test_accuracy"] == boxed.accuracy
    assert cap.load_captioner(boxed.captioner_dir, device="cpu") is not None


def test_a_run_whose_time_box_runs_out_on_its_last_step_has_finished(
    caption_folder, tmp_path, capsys
):
    run = tiny_config(caption_folder, tmp_path, max_steps=1, max_minutes=1e-9, num_test_scenes=1)
    assert train_cap.train(run).step == 1
    assert "time box" not in "".join(capsys.readouterr())


def test_a_run_killed_while_exporting_reads_as_unfinished_and_exports_again(
    caption_folder, tmp_path, monkeypatch
):
    from cnet.train import checkpoint as ckpt

    first = train_cap.train(tiny_config(caption_folder, tmp_path, max_steps=1, num_test_scenes=1))
    weights = (first.captioner_dir / "model.safetensors").read_bytes()
    longer = tiny_config(caption_folder, tmp_path, max_steps=2, resume="latest", num_test_scenes=1)

    put_in_place = ckpt.put_in_place

    def killed_at_the_export(partial, folder):
        if folder == first.captioner_dir:
            raise KeyboardInterrupt
        put_in_place(partial, folder)  # the checkpoint

    monkeypatch.setattr(ckpt, "put_in_place", killed_at_the_export)
    with pytest.raises(KeyboardInterrupt):
        train_cap.train(longer)
    # never the new weights beside the old record: no record, the previous export whole
    assert not (tmp_path / "training.json").exists()
    assert (first.captioner_dir / "model.safetensors").read_bytes() == weights
    monkeypatch.undo()
    assert train_cap.train(longer).step == 2  # --resume latest exports again
    assert json.loads((tmp_path / "training.json").read_text())["steps"] == 2
    assert "- Steps: 2," in (first.captioner_dir / "README.md").read_text()
    assert not list(tmp_path.glob("*.partial"))


def test_a_run_lengthened_with_a_new_rate_lists_both_schedules(caption_folder, tmp_path, capsys):
    train_cap.train(tiny_config(caption_folder, tmp_path, max_steps=2, num_test_scenes=1))
    longer = dict(max_steps=3, learning_rate=1e-3, resume="latest", num_test_scenes=1)
    with pytest.raises(ValueError, match="made with --size tiny, which shapes its weights"):
        train_cap.train(tiny_config(caption_folder, tmp_path, **longer, size="embedded"))
    result = train_cap.train(tiny_config(caption_folder, tmp_path, **longer))
    assert "(was, now): {'learning_rate': (0.003, 0.001), 'max_steps': (2, 3)}" in (
        capsys.readouterr().out
    )
    schedules = json.loads((tmp_path / "training.json").read_text())["schedules"]
    assert [(s["from_step"], s["learning_rate"], s["max_steps"]) for s in schedules] == [
        (0, 3e-3, 2),
        (2, 1e-3, 3),
    ]
    card = (result.captioner_dir / "README.md").read_text()
    first = "0.003 from step 0 (warm-up 0, cool-down over the last 0 of 2)"
    assert f"{first}; 0.001 from step 2 (warm-up 0" in card


def test_synthetic_training_learns_patch_kinds_and_resumes_exactly(tmp_path):
    out = tmp_path / "synth"
    config = tiny_config("synth", out, corpus_examples=20)
    whole = train_cap.train(config)
    kinds = json.loads(next((out / "checkpoints").glob("step-0000004/*.json")).read_text())
    assert len(kinds["kind_losses"]) == 4 and all(np.isfinite(kinds["kind_losses"]))
    assert (out / "checkpoints" / "step-0000002" / "kind_head" / "model.safetensors").is_file()
    assert not (whole.captioner_dir / "kind_head").exists()  # training only: not shipped
    (out / "checkpoints" / "step-0000004").rename(tmp_path / "step-0000004")  # or it is refused
    resumed = train_cap.train(
        tiny_config(
            "synth",
            out,
            corpus_examples=20,
            resume=str(out / "checkpoints" / "step-0000002"),
            checkpoints_to_keep=None,
        )
    )
    assert resumed.losses[2:] == pytest.approx(whole.losses[2:], rel=1e-5)
    assert "4 held-out test scenes" in (whole.captioner_dir / "README.md").read_text()
    plain = train_cap.train(
        tiny_config("synth", tmp_path / "plain", corpus_examples=20, kind_weight=0)
    )
    assert plain.losses[0] == pytest.approx(whole.losses[0], rel=1e-5)  # same start, same data
    assert plain.losses[1:] != pytest.approx(whole.losses[1:], rel=1e-5)


def test_evaluate_scores_captions_against_the_held_out_prompts(caption_folder, tmp_path):
    result = train_cap.train(
        tiny_config(caption_folder, tmp_path / "run", max_steps=2, validate_every=0)
    )
    captioner = cap.load_captioner(result.captioner_dir, device="cpu")
    report = train_cap.evaluate_captioner(captioner, count=4, data=str(caption_folder))
    assert report.count == 4
    assert report.accuracy == pytest.approx(1 - len(report.mistakes) / 4)
    assert {ref for ref, _ in report.mistakes} <= set(PROMPTS)


def test_command_line_flags_and_a_missing_captioner(capsys, tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    train_cap.configure(parser)
    args = parser.parse_args(["--max-steps", "3", "--learning-rate", "1e-3", "--no-augment"])
    assert args.max_steps == 3 and args.learning_rate == 1e-3 and args.augment is False
    assert args.cpu_threads is None and args.resume is None and args.init is None
    assert args.batch_size == train_cap.TrainConfig().batch_size

    missing = tmp_path / "nothing-here"
    assert train_cap.run(parser.parse_args(["--evaluate", str(missing)])) == 1
    assert str(missing) in capsys.readouterr().err


def test_evaluate_reads_the_held_out_synthetic_test_scenes(tiny):
    from cnet.synth.dataset import SynthDataset

    model, processor = tiny
    captioner = cap.Captioner(model, processor, torch.device("cpu"), torch.float32, "tiny")
    report = train_cap.evaluate_captioner(captioner, count=3)
    test_prompts = {SynthDataset("test", 32, None, 3)[i]["prompt"] for i in range(3)}
    assert report.count == 3
    assert {ref for ref, _ in report.mistakes} <= test_prompts
    assert report.accuracy == pytest.approx(1 - len(report.mistakes) / 3)


@pytest.mark.parametrize("flag", ["--cpu-threads", "--scenes"])
def test_counts_below_one_are_refused_on_the_command_line(flag, capsys):
    from cnet.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "captioner", flag, "-1"])
    assert "expected a whole number of at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-test-scenes", "5000"], "--num-test-scenes 5000: The test split holds 1000 scenes"),
        (["--num-validation-scenes", "200000"], "--num-validation-scenes 200000: The validation"),
        (["--evaluate", "anything", "--scenes", "5000"], "--scenes 5000: The test split holds"),
    ],
)
def test_more_scenes_than_a_split_holds_are_refused_before_training(
    tmp_path, capsys, flags, message
):
    from cnet.__main__ import main

    out = tmp_path / "run"
    assert main(["train", "captioner", "--output-dir", str(out), "--max-steps", "1", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
