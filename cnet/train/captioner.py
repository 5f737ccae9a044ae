"""Train the embedded preset's captioner: a small BLIP that reads a scene back as its prompt.

The model is transformers' BlipForConditionalGeneration (a ViT image encoder and a BERT text
decoder that cross-attends to it), narrowed to cnet.captioner.EMBEDDED, with a WordPiece
tokenizer learned from the training prompts. The objective is BLIP's captioning loss: next-token
cross-entropy on the prompt, starting from the decoder's "[DEC]" token, given the image.
The automatic prompt mode runs it on generated images, which are softer than the renders, so
the training images are blurred, noised and re-lit a little (never re-hued: colours are labels).

On synthetic scenes a second, training-only loss teaches the image encoder shapes: each patch's
token predicts the mix of object kinds under it (a linear head, not shipped). Through the caption
alone a small ViT learnt colours fast but few shapes (each shape word 0.08-0.62 right after 2,200
steps, colour words 0.83-1.0): a caption's few shape words give its patches little signal.

Train:      python -m cnet train captioner --output-dir runs/captioner --max-steps 5000
Resume:     the same command with --resume latest
Measure:    python -m cnet train captioner --evaluate runs/captioner/captioner
The result, <output-dir>/captioner/, is a folder cnet.captioner.load_captioner opens.
Everything a run needs is in TrainConfig; the loop in `train` is the whole story.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from cnet import captioner as cap
from cnet.cli.options import positive_int
from cnet.progress import step_progress
from cnet.synth.sample import KIND_CLASSES
from cnet.synth.splits import split_seeds
from cnet.train import checkpoint as ckpt
from cnet.train.data import (
    SYNTHETIC,
    BatchStream,
    examples_per_step,
    open_dataset,
    prompts_of,
    stream_position,
)
from cnet.train.limits import check_numbers
from cnet.train.report import plot_losses, tensor_to_image
from cnet.train.schedule import diverged, lr_factor, schedule_of, schedules_after_resume
from cnet.train.timebox import TimeBox

SIZES = {"embedded": cap.EMBEDDED, "tiny": cap.TINY}


@dataclass
class TrainConfig:
    output_dir: str = "runs/captioner"
    size: str = "embedded"  # a key of SIZES; ignored when continuing from --init
    init: str | None = None  # continue from this captioner folder (model + processor)
    # data
    data: str = SYNTHETIC  # "synth", a fill50k folder, or an image folder with metadata.jsonl
    synth_length: int = 200_000  # scenes per synthetic epoch
    corpus_examples: int = 5000  # the tokenizer learns its words from these prompts
    num_workers: int = 0
    augment: bool = True
    kind_weight: float = 1.0  # weight of the per-patch object-kind loss (synthetic data only)
    # optimisation (per process; the global batch is batch_size x accumulation x processes)
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    warmup_steps: int = 200
    cooldown_steps: int = 1000  # the learning rate falls linearly to 0 over the last steps
    weight_decay: float = 0.05
    max_grad_norm: float | None = 1.0
    max_steps: int = 5000
    max_minutes: float | None = None  # wall-clock time box (cnet.train.timebox)
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (accelerate)
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 250
    checkpoints_to_keep: int | None = 3
    resume: str | None = None  # "latest" or a checkpoint folder
    validate_every: int = 500  # caption accuracy on validation scenes; 0: never
    num_validation_scenes: int = 100
    num_test_scenes: int = 200  # the final accuracy, on the held-out test scenes


@dataclass
class TrainResult:
    step: int
    losses: list[float]  # one per optimizer step, mean over processes and accumulation
    captioner_dir: Path
    accuracy: float  # on the held-out test scenes (a --data folder: on its own examples)


@dataclass
class CaptionReport:
    accuracy: float  # share of captions whose object and colour words are all correct
    count: int
    mistakes: list[tuple[str, str]]  # (reference prompt, caption)


# ---- data -----------------------------------------------------------------------------------


def blip_pixels(pixel_values: torch.Tensor, processor) -> torch.Tensor:
    """Images in [-1, 1] (the training data's convention) as BLIP's normalised input."""
    images = (pixel_values.float() + 1.0) / 2.0
    size = processor.image_processor.size
    if images.shape[-2:] != (size["height"], size["width"]):
        images = torch.nn.functional.interpolate(
            images, (size["height"], size["width"]), mode="bicubic", antialias=True
        ).clamp(0, 1)
    mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
    return (images - mean) / std


def augment(pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur, noise, brightness and contrast: what separates a generated image from a render."""
    from torchvision.transforms.functional import gaussian_blur

    images = (pixel_values.float() + 1.0) / 2.0
    n = images.shape[0]
    u = torch.rand(n, 5, generator=generator)
    out = []
    for image, (blur, sigma, contrast, brightness, noise) in zip(images, u, strict=True):
        if blur < 0.5:
            image = gaussian_blur(image, kernel_size=5, sigma=0.3 + 1.2 * float(sigma))
        mean = image.mean()
        image = (image - mean) * (0.85 + 0.3 * contrast) + mean + 0.12 * (brightness - 0.5)
        image = image + 0.03 * noise * torch.randn(image.shape, generator=generator)
        out.append(image.clamp(0, 1))
    return torch.stack(out) * 2.0 - 1.0


def caption_targets(tokenizer, prompts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Decoder inputs and labels: "[DEC] words [SEP]", padding ignored by the loss.

    BERT tokenizers start with [CLS]; BLIP's decoder starts from [DEC] (its bos token), which is
    also what generate() feeds it, so training and captioning see the same first token.
    """
    encoded = tokenizer(
        prompts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    input_ids = encoded.input_ids.clone()
    input_ids[:, 0] = tokenizer.bos_token_id
    labels = input_ids.masked_fill(encoded.attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": encoded.attention_mask, "labels": labels}


def caption_forward(
    model, processor, pixel_values: torch.Tensor, prompts: list[str], max_length: int
):
    """BLIP's forward pass on a batch of [-1, 1] images and their prompts: `.loss` is its
    captioning objective, `.last_hidden_state` the image tokens ([CLS] first, then the patches)."""
    device = next(model.parameters()).device
    targets = caption_targets(processor.tokenizer, prompts, max_length)
    return model(
        pixel_values=blip_pixels(pixel_values, processor).to(device),
        **{k: v.to(device) for k, v in targets.items()},
    )


class PatchKindHead(torch.nn.Module):
    """Training only: a linear map from each image patch token to object-kind logits."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = torch.nn.Linear(width, len(KIND_CLASSES))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(image_tokens[:, 1:])  # [CLS] has no place in the image

    def save_pretrained(self, folder: Path, safe_serialization: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), folder / "model.safetensors")


def kind_loss(logits: torch.Tensor, kinds: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cross-entropy of each patch's kind logits against the share of each kind in the patch.

    logits: (batch, patches, classes) in row-major patch order; kinds: (batch, H, W) class indices.
    """
    one_hot = torch.nn.functional.one_hot(kinds.long(), len(KIND_CLASSES)).permute(0, 3, 1, 2)
    shares = torch.nn.functional.avg_pool2d(one_hot.float(), patch_size)
    target = shares.flatten(2).transpose(1, 2).to(logits.device)
    return -(target * logits.log_softmax(-1)).sum(-1).mean()


# ---- evaluation ----------------------------------------------------------------------------


def evaluate_captioner(
    captioner: cap.Captioner,
    count: int = 100,
    data: str = SYNTHETIC,
    split: str = "test",
    batch_size: int = 32,
) -> CaptionReport:
    """Caption `count` held-out scenes; score object and colour words against their prompts."""
    resolution = captioner.processor.image_processor.size["height"]
    dataset = open_dataset(data, resolution, None, max(count, 1), split)  # images: no maps
    count = min(count, len(dataset))
    examples = [dataset[i * len(dataset) // count] for i in range(count)]
    references = [e["prompt"] for e in examples]
    captions: list[str] = []
    for start in range(0, count, batch_size):
        chunk = examples[start : start + batch_size]
        captions += captioner(
            [tensor_to_image(e["pixel_values"]) for e in chunk], max_new_tokens=40
        )
    mistakes = [
        (ref, caption)
        for ref, caption in zip(references, captions, strict=True)
        if not cap.caption_is_correct(caption, ref)
    ]
    return CaptionReport(cap.caption_accuracy(captions, references), count, mistakes)


# ---- the loop ------------------------------------------------------------------------------


def start_model(config: TrainConfig, resume_dir: Path | None, processor_dir: Path):
    """Model and processor: from the checkpoint, from --init's folder, or a new BLIP."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    if resume_dir:
        # from_pretrained, not load_state_dict: it re-ties BLIP's shared word embeddings.
        model = BlipForConditionalGeneration.from_pretrained(
            resume_dir / "captioner", dtype=torch.float32
        )
        return model, BlipProcessor.from_pretrained(processor_dir)
    if config.init:
        model = BlipForConditionalGeneration.from_pretrained(config.init, dtype=torch.float32)
        return model, BlipProcessor.from_pretrained(config.init)
    if config.size not in SIZES:
        raise ValueError(f"--size must be one of {sorted(SIZES)}, got {config.size!r}.")
    size = SIZES[config.size]
    dataset = open_dataset(config.data, size.image_size, None, config.synth_length)
    tokenizer = cap.build_tokenizer(prompts_of(dataset, config.corpus_examples))
    return cap.build_captioner(size, tokenizer)


SCHEDULE_FIELDS = ("learning_rate", "max_steps", "warmup_steps", "cooldown_steps")


def describe_schedules(schedules: list[dict]) -> str:
    return "; ".join(
        f"{s['learning_rate']:g} from step {s['from_step']} (warm-up {s['warmup_steps']}, "
        f"cool-down over the last {s['cooldown_steps']} of {s['max_steps']})"
        for s in schedules
    )


def model_card(
    config: TrainConfig,
    model,
    step: int,
    losses: list[float],
    accuracy: float,
    schedules: list[dict],
    scored: str,
) -> str:
    """`scored`: what `accuracy` was measured on (`scored_on`)."""
    vision, text = model.config.vision_config, model.config.text_config
    params = sum(p.numel() for p in model.parameters())
    return f"""# Embedded captioner (BLIP architecture)

BlipForConditionalGeneration trained from scratch by `python -m cnet train captioner` to caption
the synthetic scene world for the automatic prompt mode. Load with
`cnet.captioner.load_captioner(this_folder)`.

- Vision: ViT, {vision.num_hidden_layers} layers, width {vision.hidden_size},
  {vision.image_size} px input, {vision.patch_size} px patches.
- Text decoder: BERT, {text.num_hidden_layers} layers, width {text.hidden_size},
  {text.vocab_size} WordPiece tokens learned from the training prompts (any word tokenizes).
- Parameters: {params / 1e6:.2f} M (stored in fp16).
- Data: {config.data} (rendered scenes -> their prompts), augmented: {config.augment}.
- Steps: {step}, batch {config.batch_size} x {config.gradient_accumulation_steps}.
- Learning rate (AdamW): {describe_schedules(schedules)}.
- Final loss (mean of the last 100 steps): {np.mean(losses[-100:]) if losses else float("nan"):.4f}
- Caption accuracy (object and colour words all correct) on {scored}: {accuracy:.3f}
"""


def scored_on(data: str, count: int) -> str:
    """What an accuracy on `count` examples of `data` was measured on."""
    if data == SYNTHETIC:
        return f"{count} held-out test scenes"
    return f"{count} examples spread over the training folder {data} (it has no held-out part)"


def check_scene_counts(data: str, counts: dict[str, tuple[str, int]]) -> None:
    """Refuse, before any step, more synthetic scenes than a split holds: {flag: (split,
    count)}."""
    if data != SYNTHETIC:
        return  # a folder's splits are as long as they are: all of it is used
    for flag, (split, count) in counts.items():
        try:
            split_seeds(split, count)
        except ValueError as error:
            raise ValueError(f"{flag} {count}: {error}") from None


def train(config: TrainConfig) -> TrainResult:
    from accelerate import Accelerator

    check_numbers(config)
    check_scene_counts(
        config.data,
        {
            "--num-validation-scenes": ("validation", config.num_validation_scenes),
            "--num-test-scenes": ("test", config.num_test_scenes),
        },
    )
    output_dir = Path(config.output_dir)
    resume_dir = ckpt.resolve_resume(config.resume, output_dir)
    if resume_dir:  # its captioner comes from the checkpoint: --size cannot change it
        then = ckpt.read_state(resume_dir)["config"]
        ckpt.refuse_reshaping(then, asdict(config), ("size",), resume_dir)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    timebox = TimeBox(config.max_minutes, accelerator, config.resume)
    device, rank = accelerator.device, accelerator.process_index
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed + rank)

    # A run writes its processor (tokenizer) once, beside its checkpoints/; they hold only the
    # weights. A resume reads it from the run the checkpoint belongs to.
    processor_dir = output_dir / "processor"
    saved_processor = resume_dir.parent.parent / "processor" if resume_dir else processor_dir
    if resume_dir and not saved_processor.is_dir():
        raise FileNotFoundError(
            f"{saved_processor} is missing: a captioner checkpoint resumes with the processor "
            "its run wrote beside checkpoints/; restore it or start anew."
        )
    model, processor = start_model(config, resume_dir, saved_processor)
    another_run = saved_processor.resolve() != processor_dir.resolve()
    if accelerator.is_main_process and (not resume_dir or another_run):
        processor.save_pretrained(processor_dir)
    resolution = processor.image_processor.size["height"]
    max_length = model.config.text_config.max_position_embeddings
    patch_size = model.config.vision_config.patch_size
    learns_kinds = config.kind_weight > 0 and config.data == SYNTHETIC
    dataset = open_dataset(
        config.data,
        resolution,
        None,  # images only: no control maps
        config.synth_length,
        kinds=learns_kinds,
    )
    model.to(device).train()
    trained = {"captioner": model}
    if learns_kinds:
        trained["kind_head"] = PatchKindHead(model.config.vision_config.hidden_size).to(device)

    optimizer = torch.optim.AdamW(
        [p for m in trained.values() for p in m.parameters()],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    *prepared, optimizer = accelerator.prepare(*trained.values(), optimizer)
    trained = dict(zip(trained, prepared, strict=True))
    model = trained["captioner"]
    generators = {"augment": torch.Generator().manual_seed(config.seed * 1000 + rank)}
    step, losses, kind_losses, accuracies, position = 0, [], [], [], 0
    schedules = [schedule_of(asdict(config), 0, SCHEDULE_FIELDS)]
    if resume_dir:
        # The captioner came in through start_model: here the head, optimizer and random streams.
        heads = {name: m for name, m in trained.items() if name != "captioner"}
        optimizers = {"optimizer": optimizer}
        saved = ckpt.load_checkpoint(accelerator, resume_dir, heads, optimizers, generators)
        step, losses, accuracies = saved["step"], saved["losses"], saved["accuracies"]
        kind_losses = saved.get("kind_losses", [])
        schedules = schedules_after_resume(saved, asdict(config), SCHEDULE_FIELDS)
        per_step = examples_per_step(saved["config"], accelerator.num_processes)
        position = stream_position(saved, per_step)
        accelerator.print(f"Resumed from {resume_dir} at step {step}.")
        if note := ckpt.changes_note(saved["config"], asdict(config)):
            accelerator.print(note)

    batches = BatchStream(
        dataset,
        config.batch_size,
        config.seed,
        start=position,
        process_index=rank,
        num_processes=accelerator.num_processes,
        num_workers=config.num_workers,
    )
    params = sum(p.numel() for p in model.parameters())
    accelerator.print(
        f"Training a {params / 1e6:.2f} M-parameter BLIP captioner on {config.data} "
        f"({len(dataset)} examples, {resolution} px) on {accelerator.num_processes} x {device}"
        + (f", with the patch kind loss x {config.kind_weight}." if learns_kinds else ".")
    )

    def measure(split: str, count: int) -> CaptionReport:
        unwrapped = accelerator.unwrap_model(model)
        live = cap.Captioner(unwrapped, processor, device, torch.float32, source="training")
        report = evaluate_captioner(live, count, config.data, split)
        unwrapped.train()
        return report

    def save(step: int) -> None:
        state = {
            "step": step,
            "losses": losses,
            "kind_losses": kind_losses,
            "accuracies": accuracies,
            "schedules": schedules,
            "stream_position": batches.position,
            "config": asdict(config),
        }
        ckpt.save_checkpoint(
            accelerator,
            ckpt.checkpoint_dir(output_dir, step),
            trained,
            {"optimizer": optimizer},
            state,
            generators,
            keep=config.checkpoints_to_keep,
        )
        if accelerator.is_main_process:
            curves = {"caption": losses, "patch kinds": kind_losses}
            plot_losses(curves, output_dir / "loss.png", "Captioner training")

    progress = step_progress(
        config.max_steps, step, "captioner", not accelerator.is_local_main_process, timebox.deadline
    )
    while step < config.max_steps:
        factor = lr_factor(step, config.max_steps, config.warmup_steps, config.cooldown_steps)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * factor

        step_loss = torch.zeros((), device=device)
        step_kind_loss = torch.zeros((), device=device)
        for micro_step in range(config.gradient_accumulation_steps):
            batch = next(batches)
            pixel_values = batch["pixel_values"]
            if config.augment:
                pixel_values = augment(pixel_values, generators["augment"])
            last = micro_step == config.gradient_accumulation_steps - 1
            # Skip the gradient all-reduce on accumulation micro-steps (no-op on one process).
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                with accelerator.autocast():
                    out = caption_forward(
                        model, processor, pixel_values, batch["prompt"], max_length
                    )
                    loss = out.loss
                    if learns_kinds:
                        logits = trained["kind_head"](out.last_hidden_state)
                        patch_loss = kind_loss(logits, batch["kinds"], patch_size)
                        loss = loss + config.kind_weight * patch_loss
                        step_kind_loss += patch_loss.detach() / config.gradient_accumulation_steps
                accelerator.backward(loss / config.gradient_accumulation_steps)
            step_loss += out.loss.detach() / config.gradient_accumulation_steps
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(
                [p for m in trained.values() for p in m.parameters()], config.max_grad_norm
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        losses.append(accelerator.gather(step_loss[None]).mean().item())
        if learns_kinds:
            kind_losses.append(accelerator.gather(step_kind_loss[None]).mean().item())
        if not math.isfinite(losses[-1]):
            raise diverged("loss", losses[-1], step, "--learning-rate", config.mixed_precision)
        progress.update(1)
        progress.set_postfix(
            loss=f"{losses[-1]:.4f}", **({"kinds": f"{kind_losses[-1]:.3f}"} if kind_losses else {})
        )
        if config.validate_every and step % config.validate_every == 0:
            if accelerator.is_main_process:
                report = measure("validation", config.num_validation_scenes)
                accuracies.append((step, report.accuracy))
                progress.write(f"step {step}: caption accuracy {accuracies[-1][1]:.3f}")
            accelerator.wait_for_everyone()
        stopping = step < config.max_steps and timebox.spent()
        if step % config.checkpoint_every == 0 or step == config.max_steps or stopping:
            save(step)
        if stopping:
            progress.write(timebox.message(step))
            break
    progress.close()

    captioner_dir = output_dir / "captioner"
    accuracy = float("nan")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        report = measure("test", config.num_test_scenes)
        accuracy, scored = report.accuracy, scored_on(config.data, report.count)
        accelerator.print(f"caption accuracy on {scored}: {accuracy:.3f}")
        partial = ckpt.partial_of(captioner_dir)  # renamed into place by commit_export
        shutil.rmtree(partial, ignore_errors=True)  # of an export killed midway
        cap.save_captioner(unwrapped, processor, partial, dtype=torch.float16)
        (partial / "README.md").write_text(
            model_card(config, unwrapped, step, losses, accuracy, schedules, scored)
        )
        summary = {
            "steps": step,
            "final_loss": losses[-1] if losses else None,
            "mean_loss_last_100": float(np.mean(losses[-100:])) if losses else None,
            "validation_accuracies": accuracies,
            "test_accuracy": accuracy,
            "schedules": schedules,
            "config": asdict(config),
        }
        ckpt.commit_export(output_dir, summary, [captioner_dir])
    accelerator.wait_for_everyone()
    return TrainResult(step, losses, captioner_dir, accuracy)


# ---- command line --------------------------------------------------------------------------


HELP = {  # over cnet.train.cli's
    "output_dir": "where checkpoints, loss.png, processor/ and the result captioner/ go",
    "size": f"architecture of a new captioner: {' or '.join(SIZES)} (cnet.captioner)",
    "init": "continue training this captioner folder instead of a new one",
    "augment": "blur, noise and re-light training images (never re-hue them)",
    "kind_weight": "weight of the training-only loss that teaches the image encoder object kinds "
    "patch by patch (synthetic data; 0: caption loss only)",
    "cooldown_steps": "the learning rate falls linearly to 0 over these last steps",
    "learning_rate": "AdamW learning rate of the captioner",
    "seed": "seed of every random stream (data order, augmentation)",
    "num_validation_scenes": "validation scenes of the caption accuracy at each --validate-every",
    "validate_every": "caption accuracy on validation scenes (a --data folder: its own examples) "
    "every N steps (0: never)",
    "num_test_scenes": "held-out test scenes for the final accuracy (a --data folder: as many of "
    "its own examples, spread over it)",
}


def configure(parser: argparse.ArgumentParser) -> None:
    """`python -m cnet train captioner`: one flag per TrainConfig field, plus --evaluate."""
    from cnet.train.cli import HELP as TRAINER_HELP
    from cnet.train.cli import add_config_flags

    add_config_flags(parser, TrainConfig, {**TRAINER_HELP, **HELP})
    parser.add_argument(
        "--evaluate",
        metavar="CAPTIONER",
        help="do not train: measure this captioner (folder or hub id) on held-out test scenes",
    )
    parser.add_argument(
        "--scenes", type=positive_int, default=200, help="test scenes for --evaluate"
    )
    parser.add_argument(
        "--cpu-threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (on a shared machine, fewer is often faster)",
    )


def run(args: argparse.Namespace) -> int:
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    if args.evaluate:
        try:
            check_scene_counts(args.data, {"--scenes": ("test", args.scenes)})
            captioner = cap.load_captioner(args.evaluate)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except cap.CaptionerUnavailable as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        report = evaluate_captioner(captioner, args.scenes, args.data, "test")
        print(f"caption accuracy: {report.accuracy:.3f} on {scored_on(args.data, report.count)}")
        for reference, caption in report.mistakes[:10]:
            print(f"  expected:  {reference}\n  captioned: {caption}")
        return 0
    from cnet.train.cli import config_from_args

    config = config_from_args(TrainConfig, args)
    try:
        result = train(config)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full or read-only disk
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Captioner saved to {result.captioner_dir} (caption accuracy {result.accuracy:.3f})")
    return 0
