"""Train a ControlNet as the paper describes, from a laptop CPU to many GPUs.

The method (Zhang, Rao & Agrawala, "Adding Conditional Control to Text-to-Image Diffusion Models"):
- the locked copy F(x; Θ): the base UNet, VAE and text encoder, frozen (no gradients, eval mode,
  never in the optimizer);
- the trainable copy F(x; Θc): `ControlNetModel.from_unet`, the UNet's encoder and middle block;
- zero convolutions Z(·; Θz): 1×1 convs initialised to zero join the two, so at initialisation
  y_c = F(x) + Z(F(x + Z(c))) = F(x) and training starts from the base model's own output;
- the loss: MSE between the added noise and the predicted noise (or v for a v-prediction base);
- 50 % of prompts replaced by "" so the ControlNet learns to read the content from the control map;
- small-scale training: only the middle block connected, decoder links cut (reconnect them when
  continuing from the same checkpoint);
- large-scale training: after N steps the base (its decoder, or all of it) is unlocked and trained
  jointly at a lower learning rate.

Run on one CPU/GPU:            python -m cnet train controlnet --base DIR --data synth
Run on many GPUs:              accelerate launch -m cnet train controlnet --base DIR ...
Everything a run needs is in TrainConfig; the loop in `train` is the whole story.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cnet.engine import DEFAULT_PROMPT, make_scheduler
from cnet.models import check_controlnet_fits, load_controlnet, trained_controlnet
from cnet.progress import step_progress
from cnet.synth.maps import redrawn_maps
from cnet.train import checkpoint as ckpt
from cnet.train.data import (
    SYNTHETIC,
    BatchStream,
    examples_per_step,
    maps_condition,
    open_dataset,
    stream_position,
    synthetic_maps,
)
from cnet.train.limits import check_numbers
from cnet.train.lineage import last_gain, read_lineage, recorded_runs, run_record, write_lineage
from cnet.train.report import image_grid, plot_losses, tensor_to_image
from cnet.train.sampling import sampled_like_the_app
from cnet.train.schedule import diverged, lr_factor, schedule_of, schedules_after_resume
from cnet.train.timebox import TimeBox

UNLOCK_CHOICES = ("decoder", "all")
# What to do about a start (--controlnet) or a checkpoint (--resume) made for another base:
START_ON_THIS_BASE = (
    "Start from a ControlNet trained on this base, or give the base it was trained on."
)
RESUME_ON_ITS_BASE = "Give the base that run trained on (--base)."
# What the model cards list for every stretch of a resumed run (see schedules_after_resume);
# all_links: the decoder links connected (False: small-scale, the middle block only).
SCHEDULE_FIELDS = (
    "learning_rate",
    "batch_size",
    "gradient_accumulation_steps",
    "warmup_steps",
    "cooldown_steps",
    "all_links",
)


@dataclass
class TrainConfig:
    base: str  # the locked model: a diffusers pipeline folder (or hub id), or a --model-dir folder
    output_dir: str = "runs/controlnet"
    controlnet: str | None = None  # continue from this ControlNet (else from the base)
    # data
    data: str = SYNTHETIC  # "synth", a fill50k folder, or an image folder with metadata.jsonl
    # the maps' condition: which the synthetic world draws (canny unless named; "all": each in
    # turn), or which a folder's maps are of (recorded for --install; None: not named)
    condition: str | None = None
    replay_share: float = 0.0  # of one condition's examples: another condition's map, in turn
    synth_length: int = 50_000  # scenes per synthetic epoch
    resolution: int | None = None  # default: the base UNet's native resolution
    proportion_empty_prompts: float = 0.5  # the paper's prompt dropout
    default_prompt_share: float = 0.0  # of the dropped prompts: the default prompt instead of ""
    num_workers: int = 0  # data loader processes
    # optimisation (per process; the global batch is batch_size x accumulation x processes)
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5  # the paper's AdamW learning rate
    warmup_steps: int = 0  # then constant
    # 0: no cool-down, so the schedule never depends on max_steps and a run can be lengthened;
    # N: the rate falls linearly to 0 over the last N steps before max_steps.
    cooldown_steps: int = 0
    weight_decay: float = 1e-2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    max_steps: int = 10_000
    max_minutes: float | None = None  # wall-clock time box (cnet.train.timebox)
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (accelerate)
    gradient_checkpointing: bool = False
    seed: int = 0
    # the paper's two training modes
    small_scale: bool = False  # only the middle block connected
    reconnect_decoder: bool = False  # when resuming a small-scale checkpoint: connect all links
    # The paper's zero convolution where the map enters (False: random; see new_controlnet).
    condition_zero_conv: bool = True
    unlock_base_at_step: int | None = None  # large-scale: unlock the base after this many steps
    unlock_base: str = "decoder"  # "decoder" | "all"
    base_learning_rate: float = 2e-6
    # bookkeeping
    checkpoint_every: int = 500
    checkpoints_to_keep: int | None = 3
    resume: str | None = None  # "latest" or a checkpoint folder
    validate_every: int = 500  # 0: never
    num_validation_images: int = 4
    validation_inference_steps: int = 20
    validation_guidance_scale: float | None = None  # None: the base's (train.sampling)
    validation_sampler: str | None = None  # None: the base's, as the guidance scale
    validation_prompts: list[str] = field(default_factory=list)  # default: the data's own
    validation_images: list[str] = field(default_factory=list)  # control maps; with the prompts


@dataclass
class Models:
    """The locked copy and its tokenizer/scheduler, plus the trainable copy."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    unet: torch.nn.Module
    scheduler: object
    controlnet: torch.nn.Module


@dataclass
class TrainResult:
    step: int
    losses: list[float]  # one per optimizer step, mean over processes and accumulation
    controlnet_dir: Path
    base_dir: Path | None  # the jointly trained base, large-scale mode only


def base_folder(base: str) -> str:
    """Accept the embedded layout (<dir>/base/model_index.json) as well as a pipeline folder."""
    nested = Path(base) / "base"
    return str(nested) if (nested / "model_index.json").is_file() else base


def load_base(base: str) -> dict:
    """The base model's components from a diffusers pipeline folder or hub id."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from cnet.models import missing_weights, model_missing

    base = base_folder(base)
    detail = missing_weights(base, "base")
    if detail:
        raise model_missing(base, "The base model (--base)", detail, "base")
    try:
        return {
            "vae": AutoencoderKL.from_pretrained(base, subfolder="vae"),
            "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
            "tokenizer": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
            "unet": UNet2DConditionModel.from_pretrained(base, subfolder="unet"),
            "scheduler": DDPMScheduler.from_pretrained(base, subfolder="scheduler"),
        }
    except OSError as error:
        raise model_missing(base, "The base model (--base)", str(error), "base") from error


def read_architecture(path: Path):
    """The ModelConfig that cnet.architecture.save_pipeline_dir wrote as architecture.json."""
    from cnet.architecture import ModelConfig

    saved = json.loads(Path(path).read_text())
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def new_controlnet(unet, base: str | None = None, condition_zero_conv: bool = True):
    """The trainable copy of `unet`'s encoder, its zero convolutions at zero.

    A base folder written by cnet.architecture records its widths in architecture.json; the
    condition encoder (the small network that turns a 512 px map into 64 px features) follows it.
    `condition_zero_conv=False` gives the condition encoder's last convolution (the paper's
    Z(c; Θz1)) a random start, so the map reaches the trainable copy from the first step; the
    zero convolutions at the copy's outputs still make the start exactly the base.
    """
    from diffusers import ControlNetModel

    from cnet.architecture import build_controlnet

    spec = Path(base_folder(base)) / "architecture.json" if base else None
    if spec is not None and spec.is_file():
        controlnet = build_controlnet(unet, read_architecture(spec))
    else:
        controlnet = ControlNetModel.from_unet(unet)
    if not condition_zero_conv:
        controlnet.controlnet_cond_embedding.conv_out.reset_parameters()
    return controlnet


def zero_convolutions(controlnet) -> list[torch.nn.Conv2d]:
    """Z(·; Θz) at the trainable copy's outputs: one per encoder level and one for the middle."""
    return [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]


def locked_dtype(accelerator) -> torch.dtype:
    """Storage dtype of the locked models: half precision under mixed precision, as diffusers'
    scripts do, except on the CPU, whose autocast leaves group norm's parameters uncast, so a
    half-precision locked model fails there ("mixed dtype (CPU)"); autocast still runs the
    matrix products in half precision."""
    if accelerator.device.type == "cpu":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )


def check_resolution(resolution: int, vae_config, unet_config) -> None:
    """Refuse a training size the base's VAE and UNet cannot halve down to their last level."""
    factor = 2 ** (len(vae_config.block_out_channels) - 1 + len(unet_config.block_out_channels) - 1)
    if resolution % factor:
        raise ValueError(
            f"--resolution {resolution}: this base's VAE and UNet scale images down {factor} "
            f"times, so it trains on multiples of {factor} px, the least {factor}."
        )


def device_name(accelerator) -> str:
    """What the run trained on, for training.json and the model cards: "1 x NVIDIA H200"."""
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{accelerator.num_processes} x {name}"


def place(model: torch.nn.Module, device, dtype: torch.dtype) -> None:
    model.to(device)
    if model.dtype != dtype:
        model.to(dtype=dtype)


def lock(*models: torch.nn.Module) -> None:
    for model in models:
        model.requires_grad_(False)
        model.eval()


def base_parameters(unet, which: str) -> list[torch.nn.Parameter]:
    """The part of the base that large-scale training unlocks: its decoder, or all of it."""
    if which == "all":
        return list(unet.parameters())
    if which != "decoder":
        raise ValueError(f"unlock_base must be one of {UNLOCK_CHOICES}, got {which!r}.")
    decoder = [unet.up_blocks, unet.conv_norm_out, unet.conv_out]
    return [p for module in decoder if module is not None for p in module.parameters()]


def unlock_base(unet, optimizer, which: str, learning_rate: float) -> None:
    """Large-scale mode: from now on the base trains jointly, in its own lower-LR group."""
    params = base_parameters(unet, which)
    for p in params:
        p.requires_grad_(True)
    unet.train()
    optimizer.add_param_group({"params": params, "lr": learning_rate, "peak_lr": learning_rate})


def drop_prompts(
    prompts: list[str], proportion: float, generator: torch.Generator, default_share: float = 0.0
) -> list[str]:
    """Replace each prompt by "" with probability `proportion` (the paper uses 0.5).

    `default_share` of the dropped ones get the app's default prompt instead of "", so that the
    model learns it as a prompt without content: the automatic mode's first pass uses it.
    """
    keep = torch.rand(len(prompts), generator=generator) >= proportion
    if not default_share:  # draws nothing more, so earlier runs resume exactly
        return [p if k else "" for p, k in zip(prompts, keep.tolist(), strict=True)]
    default = torch.rand(len(prompts), generator=generator) < default_share
    return [
        p if k else DEFAULT_PROMPT if d else ""
        for p, k, d in zip(prompts, keep.tolist(), default.tolist(), strict=True)
    ]


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts,
        max_length=tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    ).input_ids


def cut_decoder_links(down_residuals, mid_residual, connect_decoder: bool):
    """Small-scale mode: the UNet decoder receives nothing from the trainable copy's encoder levels.

    The diffusers UNet takes ControlNet residuals only as a full set, so the cut links carry
    zeros: exactly the base's own skip features, and no gradient to their zero convolutions.
    """
    if connect_decoder:
        return down_residuals, mid_residual
    return [torch.zeros_like(r) for r in down_residuals], mid_residual


def diffusion_target(scheduler, latents, noise, timesteps) -> torch.Tensor:
    """What the base predicts: the noise (SD 1.5) or the velocity (v-prediction bases)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"Cannot train against a base that predicts {prediction_type!r}.")


def training_loss(
    models: Models,
    batch: dict,
    generator: torch.Generator,
    prompt_generator: torch.Generator,
    proportion_empty_prompts: float,
    connect_decoder: bool,
    default_prompt_share: float = 0.0,
) -> torch.Tensor:
    """One ControlNet training objective evaluation on a batch (the paper's Eq. 5).

    The random draws come from `generator`'s device and move to the models': a CPU generator
    gives the same noise on any device (control_gain), one on the models' device is faster."""
    device, dtype = models.vae.device, models.vae.dtype
    pixel_values = batch["pixel_values"].to(device, dtype)
    with torch.no_grad():
        latent_dist = models.vae.encode(pixel_values).latent_dist
        latents = latent_dist.sample(generator) * models.vae.config.scaling_factor
        prompts = drop_prompts(
            batch["prompt"], proportion_empty_prompts, prompt_generator, default_prompt_share
        )
        text = models.text_encoder(tokenize(models.tokenizer, prompts).to(device))[0]
    drawn_on = generator.device
    noise = torch.randn(latents.shape, generator=generator, device=drawn_on, dtype=latents.dtype)
    timesteps = torch.randint(
        0,
        models.scheduler.config.num_train_timesteps,
        (latents.shape[0],),
        generator=generator,
        device=drawn_on,
    )
    noise, timesteps = noise.to(device), timesteps.to(device)
    noisy_latents = models.scheduler.add_noise(latents, noise, timesteps)
    control = batch["conditioning_pixel_values"].to(device)
    down, mid = models.controlnet(
        noisy_latents, timesteps, text, controlnet_cond=control, return_dict=False
    )
    down, mid = cut_decoder_links(down, mid, connect_decoder)
    prediction = models.unet(
        noisy_latents,
        timesteps,
        text,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]
    target = diffusion_target(models.scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float())


def validation_prompts(config: TrainConfig) -> list[str]:
    """The prompts for --validation-images, refused before training when they or the images do
    not match (also where validation is off: the command line asked for them)."""
    prompts = config.validation_prompts or [""] * len(config.validation_images)
    if len(prompts) != len(config.validation_images):
        raise ValueError("Give one validation prompt per validation image (or none).")
    if missing := [p for p in config.validation_images if not Path(p).is_file()]:
        raise FileNotFoundError(
            f"--validation-images {missing[0]}: no such file; give control map images."
        )
    return prompts


def data_source(data: str) -> str:
    """`--data` as a checkpoint records it: a folder by its whole path, so that a resume from
    another working directory is told the same folder from another."""
    return data if data == SYNTHETIC else str(Path(data).resolve())


def check_same_maps(saved: dict, config: TrainConfig, resume_dir: Path) -> None:
    """Refuse a resume on other data or another condition's maps: one ControlNet would learn both
    under the first one's name, and its record would name the last one only."""
    then = saved["config"]
    # an older checkpoint keeps the path as given, read from here
    source = saved.get("data_source") or data_source(then["data"])
    new_run = (
        f"or start a new run in another --output-dir (--controlnet "
        f"{Path(config.output_dir) / 'controlnet'} starts it from this run's export)"
    )
    if source != data_source(config.data):
        raise ValueError(
            f"{resume_dir} was saved by a run on --data {source}, and this one reads "
            f"{config.data}: give --data {source} to go on, {new_run}, which is also the way on "
            "where the same examples have moved."
        )
    was = then.get("condition")
    if was != config.condition:
        named = f"names {config.condition}" if config.condition else "names no --condition"
        raise ValueError(
            f"{resume_dir} was saved by a run on {was or 'unnamed'} maps, and this one {named}: "
            "one ControlNet would learn two kinds of map under one name. Give "
            f"{f'--condition {was}' if was else 'no --condition'} to go on, {new_run}."
        )


def validation_examples(config: TrainConfig, resolution: int, data: Dataset) -> list[tuple]:
    """(control map, prompt, reference image or None) triples shown at every validation: held-out
    scenes, else examples spread over `data`, the training set of another source."""
    from cnet.train.data import load_square

    if config.validation_images:
        prompts = validation_prompts(config)
        return [
            (load_square(Path(p), resolution), prompt, None)
            for p, prompt in zip(config.validation_images, prompts, strict=True)
        ]
    if config.data == SYNTHETIC:  # held-out scenes, never trained on
        length = config.num_validation_images
        dataset = open_dataset(config.data, resolution, config.condition, length, "validation")
    else:
        dataset = data
    count = min(config.num_validation_images, len(dataset))
    examples = []
    for i in range(count):
        example = dataset[i * len(dataset) // count]
        prompt = config.validation_prompts[i] if i < len(config.validation_prompts) else None
        examples.append(
            (
                tensor_to_image(example["conditioning_pixel_values"], 0.0, 1.0),
                example["prompt"] if prompt is None else prompt,
                tensor_to_image(example["pixel_values"]),
            )
        )
    return examples


GAIN_EXAMPLES = 64  # held-out examples the control gain is measured on, in batches of 16


def gain_batches(config: TrainConfig, resolution: int, data: Dataset) -> list[dict]:
    """Fixed examples for control_gain: held-out scenes, or the first of `data`, the training set
    of another source."""
    from cnet.train.data import collate

    if config.data == SYNTHETIC:
        dataset = open_dataset(
            config.data, resolution, config.condition, GAIN_EXAMPLES, "validation"
        )
    else:
        dataset = data
    examples = [dataset[i] for i in range(min(GAIN_EXAMPLES, len(dataset)))]
    return [collate(examples[i : i + 16]) for i in range(0, len(examples), 16)]


@torch.no_grad()
def control_gain(models: Models, batches: list[dict], connect_decoder: bool) -> float:
    """How much the ControlNet uses its maps: the loss with the maps passed round the batch (each
    example gets its neighbour's), minus the loss with its own, on the same noise, timesteps and
    prompts. 0 while it ignores them (at the start, or when it only learnt the data's average);
    positive once it follows them. The loss alone hides this under the noise of its timesteps."""
    gains = []
    for index, batch in enumerate(batches):
        swapped = {
            **batch,
            "conditioning_pixel_values": batch["conditioning_pixel_values"].roll(1, 0),
        }
        losses = [
            training_loss(
                models,
                maps,
                torch.Generator().manual_seed(index),  # the same noise on every device
                torch.Generator().manual_seed(index),
                0.0,
                connect_decoder,
            ).item()
            for maps in (batch, swapped)
        ]
        gains.append(losses[1] - losses[0])
    return float(np.mean(gains))


@torch.no_grad()
def validate(accelerator, models: Models, examples: list[tuple], config: TrainConfig, path: Path):
    """Sample one image per example; save rows of (control map, sample, reference)."""
    from diffusers import StableDiffusionControlNetPipeline

    controlnet = accelerator.unwrap_model(models.controlnet)
    unet = accelerator.unwrap_model(models.unet)
    pipe = StableDiffusionControlNetPipeline(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=models.tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=make_scheduler(config.validation_sampler, models.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    was_training = controlnet.training, unet.training
    controlnet.eval()
    unet.eval()
    size = examples[0][0].size
    with accelerator.autocast():
        images = pipe(
            prompt=[prompt for _, prompt, _ in examples],
            image=[control for control, _, _ in examples],
            height=size[1],
            width=size[0],
            num_inference_steps=config.validation_inference_steps,
            guidance_scale=config.validation_guidance_scale,
            generator=torch.Generator(accelerator.device).manual_seed(config.seed),
        ).images
    controlnet.train(was_training[0])
    unet.train(was_training[1])
    rows = [
        [control, image] + ([reference] if reference is not None else [])
        for (control, _, reference), image in zip(examples, images, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows).save(path)
    (path.with_suffix(".txt")).write_text("\n".join(p for _, p, _ in examples) + "\n")


def export(
    accelerator, models: Models, base_unlocked: bool, output_dir: Path, base: str
) -> list[Path]:
    """The result, each folder written as its checkpoint.partial_of (for commit_export): a
    ControlNetModel folder (and, after large-scale training, the new base)."""
    from diffusers import StableDiffusionPipeline

    folders = [output_dir / "controlnet", *([output_dir / "base"] if base_unlocked else [])]
    for folder in folders:
        shutil.rmtree(ckpt.partial_of(folder), ignore_errors=True)  # of an export killed midway
    accelerator.unwrap_model(models.controlnet).save_pretrained(
        ckpt.partial_of(folders[0]), safe_serialization=True
    )
    if not base_unlocked:
        return folders
    base_dir = ckpt.partial_of(folders[1])
    StableDiffusionPipeline(
        vae=models.vae,
        text_encoder=models.text_encoder,
        tokenizer=models.tokenizer,
        unet=accelerator.unwrap_model(models.unet),
        scheduler=models.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(base_dir, safe_serialization=True)
    spec = Path(base_folder(base)) / "architecture.json"
    if spec.is_file():
        shutil.copy(spec, base_dir / spec.name)
    return folders


def no_sync(accelerator, models: list, skip: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (no-op on one process)."""
    stack = contextlib.ExitStack()
    if skip:
        for model in models:
            stack.enter_context(accelerator.no_sync(model))
    return stack


def train(config: TrainConfig) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from diffusers import ControlNetModel

    check_numbers(config)
    config = sampled_like_the_app(config, base_folder(config.base))
    config = replace(config, condition=maps_condition(config.data, config.condition))
    if config.controlnet:  # a run's folder stands for the ControlNet it exported
        config = replace(config, controlnet=trained_controlnet(config.controlnet))
    if config.validation_images:
        validation_prompts(config)
    output_dir = Path(config.output_dir)
    resume_dir = ckpt.resolve_resume(config.resume, output_dir)
    if config.reconnect_decoder and not resume_dir:
        found = f"{output_dir / ckpt.CHECKPOINTS} holds none" if config.resume else "no --resume"
        raise ValueError(
            "--reconnect-decoder connects the decoder links of a small-scale run where it goes on "
            f"from its checkpoint, and there is no checkpoint to reconnect from ({found}): give "
            "that run's --output-dir with --resume latest, or leave out --reconnect-decoder (and "
            "--small-scale) for a new run with all links connected from the start."
        )
    saved = ckpt.read_state(resume_dir) if resume_dir else {}
    if saved:
        check_same_maps(saved, config, resume_dir)
        # the mode is the run's from its start (--reconnect-decoder alone changes it), and so is
        # its record: "Training ... small-scale" says which it is
        if config.small_scale and not saved["config"]["small_scale"]:
            raise ValueError(
                f"{resume_dir} is of a run with all links connected from its start: "
                "--small-scale starts a new run so; leave it out to go on."
            )
        config = replace(config, small_scale=saved["config"]["small_scale"])
    connect_decoder = (
        saved.get("connect_decoder", not config.small_scale) or config.reconnect_decoder
    )
    base_unlocked = saved.get("base_unlocked", False)
    map_versions = redrawn_maps(synthetic_maps(config.data, config.condition, config.replay_share))
    then = saved.get("map_versions", map_versions)
    if any(then[key] != map_versions[key] for key in then.keys() & map_versions.keys()):
        raise ValueError(
            f"The synthetic maps this run trains on were drawn anew since {resume_dir} was saved "
            f"(versions of the redrawn maps then {saved['map_versions']}, now {map_versions}: "
            "MAP_VERSIONS in cnet/synth/maps.py), and one run would mix both drawings. Start a "
            "new run in another --output-dir (--controlnet starts it from a ControlNet folder, "
            "such as an earlier run's export)."
        )

    # With decoder links cut, the encoder-level zero convs get no gradient: DDP must allow that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=not connect_decoder)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, kwargs_handlers=[ddp])
    timebox = TimeBox(config.max_minutes, accelerator, config.resume)
    device, rank = accelerator.device, accelerator.process_index
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    torch.manual_seed(config.seed + rank)

    # The locked copy and the trainable copy.
    parts = load_base(config.base)
    if resume_dir:  # the checkpoint holds the ControlNet: the start folder may be gone by now
        controlnet = ControlNetModel.from_pretrained(resume_dir / "controlnet")
    elif config.controlnet:  # a folder, hub id, single file or low-rank difference
        controlnet = load_controlnet(config.controlnet, base_folder(config.base), "float32", "cpu")
    else:
        controlnet = new_controlnet(parts["unet"], config.base, config.condition_zero_conv)
    given, fix = (
        (f"--resume {resume_dir}", RESUME_ON_ITS_BASE)
        if resume_dir
        else (f"--controlnet {config.controlnet}", START_ON_THIS_BASE)
    )
    check_controlnet_fits(controlnet.config, parts["unet"].config, given, fix)  # a new one fits
    lock(parts["vae"], parts["text_encoder"], parts["unet"])
    controlnet.train()
    weight_dtype = locked_dtype(accelerator)
    place(parts["vae"], device, weight_dtype)
    place(parts["text_encoder"], device, weight_dtype)
    # A base that will be unlocked keeps fp32 weights: the optimizer updates them in place.
    unlockable = config.unlock_base_at_step is not None
    place(parts["unet"], device, torch.float32 if unlockable else weight_dtype)
    if config.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
        parts["unet"].enable_gradient_checkpointing()
    resolution = config.resolution or parts["unet"].config.sample_size * (
        2 ** (len(parts["vae"].config.block_out_channels) - 1)
    )
    check_resolution(resolution, parts["vae"].config, parts["unet"].config)

    optimizer = torch.optim.AdamW(
        [{"params": list(controlnet.parameters()), "peak_lr": config.learning_rate}],
        lr=config.learning_rate,
        betas=config.adam_betas,
        weight_decay=config.weight_decay,
        eps=config.adam_epsilon,
    )
    controlnet, optimizer = accelerator.prepare(controlnet, optimizer)
    models = Models(controlnet=controlnet, **parts)

    def unlock() -> None:
        unlock_base(models.unet, optimizer, config.unlock_base, config.base_learning_rate)
        models.unet = accelerator.prepare_model(models.unet)

    # Separate random streams, so that nothing else (validation, data workers) can shift them.
    generators = {
        "noise": torch.Generator(device).manual_seed(config.seed * 1000 + rank),
        "prompts": torch.Generator().manual_seed(config.seed * 1000 + rank + 500),
    }
    step, losses, gains, position = 0, [], {}, 0
    settings = {**asdict(config), "all_links": connect_decoder}  # a resume may reconnect them
    schedules = [schedule_of(settings, 0, SCHEDULE_FIELDS)]
    # Read once, at the start: the start folder may be gone (or re-exported) by a resume.
    earlier = saved["lineage"] if "lineage" in saved else read_lineage(config.controlnet)
    if resume_dir:
        if base_unlocked:
            unlock()  # the optimizer state to load has the base's parameter group
        trained = {"controlnet": models.controlnet}
        if base_unlocked:
            trained["unet"] = models.unet
        ckpt.load_checkpoint(accelerator, resume_dir, trained, {"optimizer": optimizer}, generators)
        step, losses = saved["step"], saved["losses"]
        gains = saved.get("control_gains", {})
        schedules = schedules_after_resume(saved, settings, SCHEDULE_FIELDS)
        position = stream_position(
            saved, examples_per_step(saved["config"], accelerator.num_processes)
        )
        accelerator.print(f"Resumed from {resume_dir} at step {step}.")
        if note := ckpt.changes_note(saved["config"], asdict(config), ("controlnet",)):
            accelerator.print(note)
        if config.reconnect_decoder and not saved["connect_decoder"]:
            accelerator.print("Reconnected the decoder links: all encoder levels now injected.")

    dataset = open_dataset(
        config.data,
        resolution,
        config.condition,
        config.synth_length,
        replay_share=config.replay_share,
    )
    batches = BatchStream(
        dataset,
        config.batch_size,
        config.seed,
        start=position,
        process_index=rank,
        num_processes=accelerator.num_processes,
        num_workers=config.num_workers,
    )
    validating = config.validate_every and accelerator.is_main_process
    examples = validation_examples(config, resolution, dataset) if validating else []
    held_out = gain_batches(config, resolution, dataset) if validating else []
    accelerator.print(
        f"Training a ControlNet on {config.data} ({len(dataset)} examples, {resolution}px) on "
        f"{accelerator.num_processes} x {device}, "
        f"{'small-scale (middle block only)' if not connect_decoder else 'all links connected'}."
    )

    def save(step: int) -> None:
        trained = {"controlnet": models.controlnet}
        if base_unlocked:
            trained["unet"] = models.unet
        state = {
            "step": step,
            "losses": losses,
            "control_gains": gains,
            "connect_decoder": connect_decoder,
            "base_unlocked": base_unlocked,
            "schedules": schedules,
            "lineage": earlier,
            "map_versions": map_versions,
            "data_source": data_source(config.data),
            "stream_position": batches.position,
            "config": asdict(config),
        }
        directory = ckpt.checkpoint_dir(output_dir, step)
        ckpt.save_checkpoint(
            accelerator,
            directory,
            trained,
            {"optimizer": optimizer},
            state,
            generators,
            keep=config.checkpoints_to_keep,
        )
        if accelerator.is_main_process:
            plot_losses({"diffusion": losses}, output_dir / "loss.png", "ControlNet training")

    progress = step_progress(
        config.max_steps,
        step,
        "controlnet",
        not accelerator.is_local_main_process,
        timebox.deadline,
    )
    while step < config.max_steps:
        if unlockable and not base_unlocked and step >= config.unlock_base_at_step:
            unlock()
            base_unlocked = True
            accelerator.print(f"Step {step}: unlocked the base ({config.unlock_base}).")
        factor = lr_factor(step, config.max_steps, config.warmup_steps, config.cooldown_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor

        trainable = [models.controlnet] + ([models.unet] if base_unlocked else [])
        step_loss = torch.zeros((), device=device)
        for micro_step in range(config.gradient_accumulation_steps):
            batch = next(batches)
            last = micro_step == config.gradient_accumulation_steps - 1
            with no_sync(accelerator, trainable, skip=not last):
                with accelerator.autocast():
                    loss = training_loss(
                        models,
                        batch,
                        generators["noise"],
                        generators["prompts"],
                        config.proportion_empty_prompts,
                        connect_decoder,
                        config.default_prompt_share,
                    )
                accelerator.backward(loss / config.gradient_accumulation_steps)
            step_loss += loss.detach() / config.gradient_accumulation_steps
        if config.max_grad_norm:
            params = [p for m in trainable for p in m.parameters() if p.requires_grad]
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        losses.append(accelerator.gather(step_loss[None]).mean().item())
        if not math.isfinite(losses[-1]):
            raise diverged("loss", losses[-1], step, "--learning-rate", config.mixed_precision)
        progress.update(1)
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
        if config.validate_every and step % config.validate_every == 0:
            if accelerator.is_main_process:
                path = output_dir / "validation" / f"step-{step:07d}.png"
                validate(accelerator, models, examples, config, path)
                plain = replace(
                    models,
                    controlnet=accelerator.unwrap_model(models.controlnet),
                    unet=accelerator.unwrap_model(models.unet),
                )
                with accelerator.autocast():
                    gains[str(step)] = control_gain(plain, held_out, connect_decoder)
                progress.write(f"Control gain at step {step}: {gains[str(step)]:.5f}")
            accelerator.wait_for_everyone()
        stopping = step < config.max_steps and timebox.spent()
        if step % config.checkpoint_every == 0 or step == config.max_steps or stopping:
            save(step)  # after validating: the checkpoint holds this step's control gain
        if stopping:
            progress.write(timebox.message(step))
            break
    progress.close()

    controlnet_dir = output_dir / "controlnet"
    new_base_dir = output_dir / "base" if base_unlocked else None
    if accelerator.is_main_process:
        folders = export(accelerator, models, base_unlocked, output_dir, config.base)
        summary = {
            "steps": step,
            "final_loss": losses[-1] if losses else None,
            "mean_loss_last_100": float(np.mean(losses[-100:])) if losses else None,
            "control_gains": gains,
            "connect_decoder": connect_decoder,
            "base_unlocked": base_unlocked,
            "device": device_name(accelerator),
            "schedules": schedules,
            "map_versions": map_versions,
            "base_lineage": recorded_runs(base_folder(config.base)),  # which base it steers
            "config": asdict(config),
        }
        write_lineage(ckpt.partial_of(controlnet_dir), earlier, lineage_entry(summary))
        ckpt.commit_export(output_dir, summary, folders)
    accelerator.wait_for_everyone()
    return TrainResult(step, losses, controlnet_dir, new_base_dir)


def lineage_entry(summary: dict) -> dict:
    """This run, as the exported ControlNet's lineage.json records it."""
    replay_share = summary["config"].get("replay_share")
    map_versions = summary.get("map_versions")
    return run_record(
        "controlnet",
        summary,
        ("condition", "proportion_empty_prompts", "default_prompt_share", "max_steps"),
        **({"replay_share": replay_share} if replay_share else {}),
        **({"map_versions": map_versions} if map_versions else {}),
        schedules=summary["schedules"],
        all_links=summary["connect_decoder"],
        base_unlocked=summary["base_unlocked"],
        control_gain=last_gain(summary["control_gains"]),
    )
