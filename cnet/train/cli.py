r"""`python -m cnet train controlnet|base|captioner|decoder|embedded`: config fields are flags.

python -m cnet train controlnet --base assets/embedded --data synth --condition canny
accelerate launch -m cnet train controlnet --data fill50k \
    --base stable-diffusion-v1-5/stable-diffusion-v1-5
python -m cnet train base --output-dir runs/base --resume latest
python -m cnet train decoder --model-dir assets/embedded --output-dir runs/decoder
python -m cnet train embedded --runs runs/embedded
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from cnet.cli.options import checked_number, positive_int
from cnet.engine import SAMPLERS
from cnet.progress import quiet_library_bars
from cnet.train.base import BaseTrainConfig
from cnet.train.controlnet import UNLOCK_CHOICES, TrainConfig
from cnet.train.limits import rule, without_none

HELP = {
    "base": "locked base: a diffusers pipeline folder, a --model-dir folder, or a hub id",
    "output_dir": "where checkpoints, validation grids, loss.png and the result go",
    "controlnet": "start from this ControlNet (a folder, a hub id, a single checkpoint file or a "
    "low-rank difference folder) instead of a copy of the base encoder",
    "data": "'synth' (scenes rendered on the fly), a fill50k folder, or a metadata.jsonl folder",
    "condition": "the maps' condition: which the synthetic world draws (scribble, canny (default), "
    "..., or all: each in turn), or which a --data folder's maps are of (kept in the run's record, "
    "where --install reads it)",
    "replay_share": "of one condition's synthetic examples: the share that shows the other "
    "conditions' maps in turn, so a fine-tune of the shared ControlNet keeps what they taught it",
    "synth_length": "scenes per synthetic epoch",
    "resolution": "training image size, a multiple of how far the base's VAE and UNet scale "
    "images down (default: the base's native size)",
    "proportion_empty_prompts": "share of prompts replaced by '' (the paper: 0.5)",
    "default_prompt_share": "share of those given the app's default prompt instead of '', so "
    "that it means no content (the automatic prompt mode's first pass)",
    "num_workers": "data loader processes",
    "batch_size": "examples per process per micro-step",
    "gradient_accumulation_steps": "micro-steps per optimizer step",
    "learning_rate": "AdamW learning rate of the ControlNet (the paper: 1e-5)",
    "warmup_steps": "linear warm-up, then constant",
    "weight_decay": "AdamW weight decay",
    "adam_betas": "AdamW betas",
    "adam_epsilon": "AdamW epsilon",
    "max_grad_norm": "clip gradients to this norm",
    "max_steps": "train until this optimizer step (raise it and --resume latest to go on)",
    "max_minutes": "stop cleanly after this many minutes: checkpoint and export, as at the last "
    "step (--resume latest goes on)",
    "mixed_precision": "accelerate mixed precision: no, fp16 or bf16",
    "gradient_checkpointing": "trade compute for memory",
    "seed": "seed of every random stream (data order, noise, prompt dropout)",
    "small_scale": "the paper's small-scale mode: only the middle block connected",
    "reconnect_decoder": "with --resume from a small-scale checkpoint: connect all decoder links",
    "unlock_base_at_step": "large-scale mode: unlock the base after this many steps (paper: 50k)",
    "unlock_base": f"which part of the base to unlock: {' or '.join(UNLOCK_CHOICES)}",
    "base_learning_rate": "learning rate of the unlocked base",
    "checkpoint_every": "save a resumable checkpoint every N steps",
    "checkpoints_to_keep": "delete older checkpoints beyond this many",
    "resume": "'latest' (newest checkpoint in --output-dir, if any) or a checkpoint folder (a "
    "run is refused where --output-dir holds checkpoints after the one it starts from)",
    "validate_every": "sample validation images every N steps (0: never)",
    "num_validation_images": "validation examples (held-out scenes with --data synth, else spread "
    "over the training folder)",
    "validation_inference_steps": "sampler steps of validation images",
    "validation_guidance_scale": "classifier-free guidance scale of validation images (default: "
    'the "cfg" of the preset.json beside the base, as in assets/embedded, else the paper\'s 9.0)',
    "validation_sampler": 'sampler of validation images (default: the "sampler" of the '
    "preset.json beside the base, else the paper's DDPM)",
    "validation_prompts": "prompts for the validation images",
    "validation_images": "control maps for the validation images (one prompt each)",
    # base
    "architecture": "model widths from cnet.architecture: small (embedded preset) or tiny",
    "corpus": "text file of sentences to learn the tokenizer from (default: the data's prompts)",
    "corpus_examples": "prompts read from the data to learn the tokenizer",
    "vae_steps": "optimizer steps of the VAE phase",
    "cooldown_steps": "the learning rate falls linearly to 0 over the last N steps (base: of "
    "each phase; 0: no cool-down)",
    "vae_batch_size": "examples per VAE step (default: --batch-size)",
    "vae_learning_rate": "learning rate of the VAE",
    "vae_crop_size": "train the VAE on random crops of this side (at least the image size: whole)",
    "vae_object_weight": "extra L1 weight of object pixels (synthetic scenes; 0: all pixels alike)",
    "vae_object_margin": "pixels around each object that weigh as much as the object",
    "vae_frame_weight": "extra L1 weight of the image's outer 4 pixels (0: none), where a decoder "
    "reconstructs worst",
    "vae_init": "start the VAE from this trained AutoencoderKL folder (it may have fewer latent "
    "channels: they map onto the first ones)",
    "vae_decoder_only": "train only the VAE's decoder (the encoder frozen, so the latents of a "
    "trained UNet stay valid: a sharper decoder for a finished base, with --base-init)",
    "condition_zero_conv": "start the condition encoder's last convolution at zero, as the paper "
    "(--no-condition-zero-conv: random, so the map reaches the trainable copy from step 0)",
    "base_init": "start VAE, tokenizer, text encoder and UNet from this trained base pipeline "
    "folder (same --architecture; add --vae-steps 0 to keep its VAE)",
    "zero_terminal_snr": "noise schedule rescaled to zero terminal SNR, v-prediction (default); "
    "--no-zero-terminal-snr: SD 1.5's schedule, noise prediction",
    "kl_weight": "weight of the VAE's KL term",
    "unet_steps": "optimizer steps of the UNet + text encoder phase",
    "unet_learning_rate": "learning rate of the UNet",
    "text_encoder_learning_rate": "learning rate of the text encoder",
}


CHOICES = {
    "mixed_precision": ("no", "fp16", "bf16"),
    "unlock_base": UNLOCK_CHOICES,
    "validation_sampler": SAMPLERS,
    "architecture": ("small", "tiny"),
}


def number_type(name: str, kind: type) -> Callable[[str], object]:
    """The argparse type of the config field `name`, of type `kind` (as it is, if not a number)."""
    if kind not in (int, float):
        return kind
    return checked_number(kind, *rule(name, kind))


def add_config_flags(
    parser: argparse.ArgumentParser, config_class, help: dict[str, str] = HELP
) -> None:
    """One flag per dataclass field, typed and defaulted from the dataclass itself."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        default = (
            None
            if required
            else (
                field.default_factory() if field.default is dataclasses.MISSING else field.default
            )
        )
        kind = without_none(hints[field.name])
        text = help.get(field.name, "")
        if default is not None and "(default" not in text:
            text += " (default: %(default)s)"
        options: dict = {"help": text.strip(), "dest": field.name}
        if field.name in CHOICES:
            options["choices"] = CHOICES[field.name]
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            args = typing.get_args(kind)
            options.update(nargs=len(args), type=number_type(field.name, args[0]))
        elif typing.get_origin(kind) is list:
            options.update(nargs="+", type=number_type(field.name, typing.get_args(kind)[0]))
        else:
            options["type"] = number_type(field.name, kind)
            if kind is int:
                options["metavar"] = "N"
        if required:
            parser.add_argument(flag, required=True, **options)
        else:
            parser.add_argument(flag, default=default, **options)


def config_from_args(config_class, args: argparse.Namespace):
    """The dataclass `add_config_flags` made the flags of, from the parsed flags (a tuple field's
    values back into a tuple)."""
    hints = typing.get_type_hints(config_class)
    settings = {}
    for field in dataclasses.fields(config_class):
        value = getattr(args, field.name)
        if typing.get_origin(hints[field.name]) is tuple and value is not None:
            value = tuple(value)
        settings[field.name] = value
    return config_class(**settings)


def configure(parser: argparse.ArgumentParser) -> None:
    from cnet.train import captioner, decoder, embedded

    sub = parser.add_subparsers(
        dest="what", metavar="{controlnet,base,captioner,decoder,embedded}", required=True
    )

    def subcommand(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text)  # in the list and its --help

    controlnet = subcommand("controlnet", "train a ControlNet as the paper describes")
    add_config_flags(controlnet, TrainConfig)
    base = subcommand("base", "train the embedded base (VAE, text encoder, UNet)")
    add_config_flags(base, BaseTrainConfig)
    captioner.configure(subcommand("captioner", "train the small BLIP captioner"))
    decoder.configure(
        subcommand("decoder", "fine-tune a preset's VAE decoder on its sampled latents")
    )
    embedded.configure(
        subcommand("embedded", "the embedded preset: every model, resumable; --pack")
    )
    for command in (controlnet, base):
        command.add_argument(
            "--cpu-threads",
            type=positive_int,
            default=None,
            help="torch CPU threads (on a shared machine, fewer is often faster)",
        )


def run(args: argparse.Namespace) -> int:
    quiet_library_bars()
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C: a note, not a traceback from whatever was running
        print(f"\n{interrupted(args)}", file=sys.stderr)
        return 130
    except FloatingPointError as error:  # a diverging run
        last = last_checkpoint(args) if "resume" in args else None
        since = f" --resume latest goes on from the last checkpoint, {last}." if last else ""
        print(f"\nerror: {error}{since}", file=sys.stderr)  # below the progress bar
        return 1


def last_checkpoint(args: argparse.Namespace) -> Path | None:
    """The newest checkpoint of the run `args` name (None: none yet, or train embedded's many)."""
    from cnet.train.checkpoint import DECODER_CHECKPOINT, list_checkpoints

    if "output_dir" not in args:
        return None
    output_dir = Path(args.output_dir)
    decoder = output_dir / DECODER_CHECKPOINT
    return (list_checkpoints(output_dir) or [decoder if decoder.is_file() else None])[-1]


def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted run kept, and how to go on from it."""
    again = "run the same command with --resume latest" if "resume" in args else "run it again"
    if "output_dir" not in args:  # train embedded: each stage resumes by itself
        return f"interrupted: {again} to go on where each stage's last checkpoint left off."
    last = last_checkpoint(args)
    if last is None:
        return f"interrupted before the first checkpoint in {args.output_dir}; {again} to start."
    return (
        f"interrupted: the last checkpoint is {last} (the steps after it are lost); "
        f"{again} to go on from it."
    )


def _run(args: argparse.Namespace) -> int:
    import torch

    from cnet.models import ModelMissingError

    if args.what in ("captioner", "decoder", "embedded"):
        module = importlib.import_module(f"cnet.train.{args.what}")
        return module.run(args)

    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    config = config_from_args(TrainConfig if args.what == "controlnet" else BaseTrainConfig, args)
    try:
        if args.what == "controlnet":
            from cnet.train.controlnet import train

            result = train(config)
            print(f"ControlNet saved to {result.controlnet_dir}")
            if result.base_dir:
                print(f"Jointly trained base saved to {result.base_dir}")
        else:
            from cnet.train.base import train_base

            base_dir = train_base(config)
            if base_dir:
                print(f"Base pipeline saved to {base_dir}")
    except ModelMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"error: {error} (check that --output-dir can be written and has room)", file=sys.stderr
        )
        return 1
    return 0
