"""Train the embedded preset's base model from scratch: the SD 1.5 families, small.

Three parts, as Stable Diffusion 1.5 has, trained in two phases on the same data:
1. the VAE (8x down-sampling): reconstruction (L1) plus a small KL term, as SD's autoencoder
   without its perceptual and adversarial terms, which flat-shaded synthetic scenes do not need.
   On synthetic scenes the objects' pixels, and a margin around them, weigh more
   (`vae_object_weight`, `vae_object_margin`): objects are a small share of each image, and an
   even L1 let the VAE turn purple grey and yellow orange. Then the
   latent scaling factor is measured (1 / std of the latents);
2. the UNet with cross-attention, and with it the CLIP text encoder: SD borrows a text encoder
   trained contrastively on web captions; we have no such corpus, so the text encoder learns
   through the diffusion loss itself (prompts dropped 10 % of the time for classifier-free
   guidance). The tokenizer is a byte-level BPE learned from the data's prompts, so any word
   still tokenizes.
The result is one diffusers pipeline folder (`<output_dir>/base/`, model_index.json) that
StableDiffusionControlNetPipeline.from_pretrained opens, ready for `cnet train controlnet`.

Run:  python -m cnet train base --output-dir runs/base   (resume: add --resume latest)
"""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnet.engine import DEFAULT_PROMPT, make_scheduler
from cnet.progress import step_progress
from cnet.synth.sample import KIND_CLASSES
from cnet.train import checkpoint as ckpt
from cnet.train.controlnet import (
    device_name,
    diffusion_target,
    drop_prompts,
    lock,
    locked_dtype,
    place,
    tokenize,
)
from cnet.train.data import SYNTHETIC, BatchStream, open_dataset, prompts_of, stream_position
from cnet.train.limits import check_numbers
from cnet.train.lineage import read_lineage, run_record, write_lineage
from cnet.train.report import image_grid, plot_losses, tensor_to_image
from cnet.train.sampling import sampled_like_the_app
from cnet.train.schedule import diverged, lr_factor
from cnet.train.timebox import TimeBox

PHASES = ("vae", "unet")
# Fixed phrases the app adds to prompts: learned as merges, they cost few tokens.
APP_PHRASES = (
    DEFAULT_PROMPT,
    "best quality, extremely detailed",
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality",
)


@dataclass
class BaseTrainConfig:
    output_dir: str = "runs/base"
    architecture: str = "small"  # "small" | "tiny": the widths in cnet.architecture
    # data
    data: str = SYNTHETIC  # "synth", a fill50k folder, or an image folder with metadata.jsonl
    synth_length: int = 50_000  # scenes per synthetic epoch
    corpus: str | None = None  # a text file, one sentence a line, for the tokenizer
    corpus_examples: int = 5_000  # else: this many of the data's prompts
    num_workers: int = 0
    # optimisation (per process)
    batch_size: int = 16
    vae_steps: int = 5_000
    vae_batch_size: int | None = 4  # None: batch_size
    vae_learning_rate: float = 2e-4
    # None: whole images. Crops are cheaper per image, but a small VAE trained on 64 px crops of
    # 128 px scenes reconstructed whole scenes worse (L1 0.125 against 0.093 on crops, colours
    # shifted): its group norms and attention learn the crop's statistics.
    vae_crop_size: int | None = None
    vae_object_weight: float = 4.0  # extra L1 weight of object pixels (synthetic data only)
    # ... and of the background this many pixels around them: weighting the object alone made
    # its colour bleed outwards (edge errors outside it cost less), fattening every object.
    vae_object_margin: int = 3
    # Extra L1 weight of the image's outer FRAME_WIDTH pixels: zero padding leaves a decoder's
    # border its worst-reconstructed part (an earlier embedded decoder's outer pixels erred twice
    # as much as its inside).
    vae_frame_weight: float = 0.0
    vae_init: str | None = None  # start the VAE from this trained AutoencoderKL folder
    # Train the decoder alone, the encoder frozen: the latents stay those a trained UNet and its
    # ControlNets learnt, so a sharper decoder drops into a finished base (as SD's ft-MSE VAE).
    vae_decoder_only: bool = False
    # Start every part (VAE, tokenizer, text encoder, UNet) from this trained base pipeline folder:
    # a new noise schedule or a longer run without repeating the VAE phase (--vae-steps 0).
    base_init: str | None = None
    zero_terminal_snr: bool = True  # False: SD 1.5's schedule (cnet.architecture.noise_schedule)
    kl_weight: float = 1e-6
    unet_steps: int = 30_000
    unet_learning_rate: float = 2e-4
    text_encoder_learning_rate: float = 1e-4
    proportion_empty_prompts: float = 0.1  # unconditional examples for classifier-free guidance
    default_prompt_share: float = 0.0  # of the dropped prompts: the default prompt instead of ""
    warmup_steps: int = 200
    cooldown_steps: int = 1_000  # each phase's learning rate falls linearly to 0 at its end
    weight_decay: float = 1e-2
    max_grad_norm: float | None = 1.0
    max_minutes: float | None = None  # wall-clock time box over both phases (cnet.train.timebox)
    mixed_precision: str = "no"
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 500
    checkpoints_to_keep: int | None = 2
    resume: str | None = None  # "latest" or a checkpoint folder
    validate_every: int = 1_000  # 0: never
    num_validation_images: int = 4
    validation_inference_steps: int = 20
    validation_guidance_scale: float | None = None  # None: --base-init's (train.sampling)
    validation_sampler: str | None = None  # None: --base-init's, as the guidance scale


class VAEObjective(torch.nn.Module):
    """Encode, sample, decode: forward() returns (reconstruction loss, KL) so DDP can wrap it."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(
        self,
        pixel_values: torch.Tensor,
        generator: torch.Generator,
        weights: torch.Tensor | None = None,
    ):
        """`weights` (batch, 1, H, W): each pixel's share of the L1; None: all pixels alike."""
        posterior = self.vae.encode(pixel_values).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator)).sample
        error = (reconstruction.float() - pixel_values.float()).abs()
        if weights is None:
            return error.mean(), posterior.kl().mean()
        weighted = (error * weights).sum() / (weights.sum() * error.shape[1])
        return weighted, posterior.kl().mean()


FRAME_WIDTH = 4  # pixels; that decoder's border error faded over about this many


def frame_mask(height: int, width: int, device=None) -> torch.Tensor:
    """(1, 1, H, W): 1 on the outer FRAME_WIDTH pixels of the image, else 0."""
    mask = torch.ones(1, 1, height, width, device=device)
    mask[..., FRAME_WIDTH:-FRAME_WIDTH, FRAME_WIDTH:-FRAME_WIDTH] = 0.0
    return mask


def object_weights(kinds: torch.Tensor, object_weight: float, margin: int = 0) -> torch.Tensor:
    """(batch, 1, H, W): 1 + object_weight on objects and `margin` pixels around them, else 1."""
    near_object = (kinds >= KIND_CLASSES.index("floor") + 1).float()[:, None]
    if margin:
        near_object = F.max_pool2d(near_object, 2 * margin + 1, stride=1, padding=margin)
    return 1.0 + object_weight * near_object


def embed_1x1(target: torch.Tensor, trained: torch.Tensor, index: torch.Tensor) -> None:
    """A wider 1x1 conv's weight or bias: the trained one at `index`, the identity elsewhere."""
    target.zero_()
    if target.dim() > 1:
        target[:, :, 0, 0] = torch.eye(target.shape[0])
        target[index[:, None], index] = trained
    else:
        target[index] = trained


NEW_LATENT_LOGVAR = -10.0  # log variance of latent channels a grown VAE adds (std 0.007)


def load_vae_into(vae, source: str | Path) -> None:
    """Start `vae` from the trained AutoencoderKL in `source`, which may have fewer latent channels.

    Where the latent width grows, the trained channels map onto the first ones and the decoder
    starts blind to the new ones (zero weights), so the grown VAE reconstructs exactly as the
    trained one did and learns to use the extra channels from there.
    """
    from diffusers import AutoencoderKL

    trained = AutoencoderKL.from_pretrained(source).state_dict()
    old, new = trained["post_quant_conv.weight"].shape[0], vae.config.latent_channels
    if old > new:
        raise ValueError(f"{source} has {old} latent channels, more than this VAE's {new}.")
    # Encoder outputs are moments: [mean_0..mean_C-1, logvar_0..logvar_C-1].
    moments = torch.cat([torch.arange(old), new + torch.arange(old)])
    state = vae.state_dict()
    for name, value in trained.items():
        target = state[name]
        if target.shape == value.shape:
            target.copy_(value)
        elif name.startswith("encoder.conv_out"):
            target[moments] = value
            # The new channels start near-deterministic: sampled with unit noise, they would
            # carry nothing for the decoder to learn from.
            target[new + old :] = NEW_LATENT_LOGVAR if name.endswith("bias") else 0.0
        elif name.startswith("quant_conv"):
            embed_1x1(target, value, moments)
        elif name.startswith("post_quant_conv"):
            embed_1x1(target, value, torch.arange(old))
        elif name == "decoder.conv_in.weight":
            target.zero_()
            target[:, :old] = value
        else:
            raise ValueError(f"{source} does not match this VAE's architecture ({name}).")
    vae.load_state_dict(state)


def load_base_into(parts: dict, source: str | Path, architecture: str) -> float:
    """Start the VAE, text encoder and UNet from the base pipeline folder `source`, which must
    have this run's `architecture`; returns the latent scaling factor its UNet was trained with."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    classes = {"vae": AutoencoderKL, "text_encoder": CLIPTextModel, "unet": UNet2DConditionModel}
    for name, cls in classes.items():
        trained = cls.from_pretrained(source, subfolder=name)
        try:
            parts[name].load_state_dict(trained.state_dict())
        except RuntimeError as error:  # torch lists every layer; the first says enough
            lines = [line.strip() for line in str(error).splitlines()]
            first = next((line for line in lines[1:] if line), lines[0])
            first = first if len(first) <= 160 else first[:157] + "..."
            raise ValueError(
                f"--base-init {source}: its {name} is not of the {architecture} architecture "
                f"this run builds ({first})"
            ) from None
        if name == "vae":
            scaling = trained.config.scaling_factor
    return float(scaling)


def vae_trainables(vae, decoder_only: bool) -> list[torch.nn.Parameter]:
    """The VAE's parameters the VAE phase trains; with `decoder_only` the encoder is frozen."""
    if decoder_only:
        for frozen in (vae.encoder, vae.quant_conv):
            if frozen is not None:  # diffusers leaves quant_conv out when use_quant_conv=False
                frozen.requires_grad_(False)
    return [p for p in vae.parameters() if p.requires_grad]


def random_crop(pixels: torch.Tensor, size: int | None, generator: torch.Generator):
    """One random `size` x `size` window per batch (all of it when size is None or too large)."""
    height, width = pixels.shape[-2:]
    if size is None or size >= min(height, width):
        return pixels
    top, left = (
        int(torch.randint(0, extent - size + 1, (), generator=generator, device=generator.device))
        for extent in (height, width)
    )
    return pixels[..., top : top + size, left : left + size]


def vae_loss(
    objective,
    batch,
    generator,
    kl_weight: float,
    crop: int | None = None,
    object_weight: float = 0.0,
    object_margin: int = 0,
    frame_weight: float = 0.0,
):
    pixel_values = batch["pixel_values"].to(generator.device)
    weights = None
    if "kinds" in batch and object_weight:
        weights = object_weights(batch["kinds"].to(generator.device), object_weight, object_margin)
    if frame_weight:
        frame = frame_mask(*pixel_values.shape[2:], device=pixel_values.device)
        weights = (1.0 if weights is None else weights) + frame_weight * frame
    if weights is None:
        pixel_values = random_crop(pixel_values, crop, generator)
    else:  # crop the weights with the pixels: a crop's own edge is no image border
        weights = weights.expand(len(pixel_values), 1, *pixel_values.shape[2:])
        both = random_crop(torch.cat([pixel_values, weights], dim=1), crop, generator)
        pixel_values, weights = both[:, :-1], both[:, -1:]
    reconstruction, kl = objective(pixel_values, generator, weights)
    return reconstruction + kl_weight * kl


def unet_loss(
    parts: dict,
    batch,
    generator,
    prompt_generator,
    proportion_empty: float,
    default_prompt_share: float = 0.0,
):
    """The plain diffusion objective: predict the noise (or v), text through cross-attention."""
    device, vae = generator.device, parts["vae"]
    with torch.no_grad():
        pixel_values = batch["pixel_values"].to(device, vae.dtype)
        latents = vae.encode(pixel_values).latent_dist.sample(generator)
        latents = latents * vae.config.scaling_factor
    prompts = drop_prompts(
        batch["prompt"], proportion_empty, prompt_generator, default_prompt_share
    )
    text = parts["text_encoder"](tokenize(parts["tokenizer"], prompts).to(device))[0]
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    scheduler = parts["scheduler"]
    timesteps = torch.randint(
        0,
        scheduler.config.num_train_timesteps,
        (latents.shape[0],),
        generator=generator,
        device=device,
    )
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = parts["unet"](noisy, timesteps, text, return_dict=False)[0]
    target = diffusion_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float())


@torch.no_grad()
def latent_scaling_factor(vae, dataset, batch_size: int, device, batches: int = 8) -> float:
    """1 / std of the latents, so the UNet sees unit-variance inputs (SD 1.5: 0.18215)."""
    generator = torch.Generator(device).manual_seed(0)
    stream = BatchStream(dataset, batch_size, seed=12345)
    latents = [
        vae.encode(next(stream)["pixel_values"].to(device, vae.dtype)).latent_dist.sample(generator)
        for _ in range(batches)
    ]
    return float(1.0 / torch.cat(latents).float().std())


def build_tokenizer_for(config: BaseTrainConfig, dataset, out_dir: Path):
    from cnet.architecture import build_tokenizer

    if config.corpus:
        sentences = corpus_sentences(config.corpus)
    else:
        sentences = prompts_of(dataset, config.corpus_examples)
    arch = architecture(config.architecture)
    return build_tokenizer(
        [*sentences, *APP_PHRASES], out_dir, arch.tokenizer_merges, arch.max_text_length
    )


def corpus_sentences(path: str) -> list[str]:
    """The --corpus file's sentences, one a line; refused when missing, unreadable or empty (the
    tokenizer would learn no word of the data, and every prompt would split into fragments)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"--corpus {path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--corpus {path} cannot be read as UTF-8 text ({error}).") from None
    sentences = [line for line in lines if line.strip()]
    if not sentences:
        raise ValueError(f"--corpus {path} holds no sentences: give one a line, or leave it out.")
    return sentences


def architecture(name: str):
    from cnet.architecture import SMALL, TINY

    known = {"small": SMALL, "tiny": TINY}
    if name not in known:
        raise ValueError(f"Unknown architecture {name!r}; choose from {', '.join(known)}.")
    return known[name]


@torch.no_grad()
def validate(accelerator, phase: str, parts: dict, examples: list[dict], config, path: Path):
    """VAE phase: rows of (image, reconstruction). UNet phase: rows of (reference, sample)."""
    from diffusers import StableDiffusionPipeline

    vae = accelerator.unwrap_model(parts["vae"])
    images = [tensor_to_image(e["pixel_values"]) for e in examples]
    if phase == "vae":
        pixels = torch.stack([e["pixel_values"] for e in examples]).to(accelerator.device)
        decoded = vae.decode(vae.encode(pixels.to(vae.dtype)).latent_dist.mode()).sample
        samples = [tensor_to_image(d) for d in decoded]
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=accelerator.unwrap_model(parts["text_encoder"]),
            tokenizer=parts["tokenizer"],
            unet=accelerator.unwrap_model(parts["unet"]),
            scheduler=make_scheduler(config.validation_sampler, parts["scheduler"].config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        size = images[0].size[0]
        with accelerator.autocast():
            samples = pipe(
                [e["prompt"] for e in examples],
                height=size,
                width=size,
                num_inference_steps=config.validation_inference_steps,
                guidance_scale=config.validation_guidance_scale,
                generator=torch.Generator(accelerator.device).manual_seed(config.seed),
            ).images
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid([list(pair) for pair in zip(images, samples, strict=True)]).save(path)
    path.with_suffix(".txt").write_text("\n".join(e["prompt"] for e in examples) + "\n")


def phase_batch(config: dict, phase: str) -> int:
    """The batch size of a phase, per process."""
    if phase == "vae" and config.get("vae_batch_size"):
        return config["vae_batch_size"]
    return config["batch_size"]


def save(
    accelerator, config, phase, step, offset, models, optimizer, losses, generators, lineage, stream
) -> None:
    """A checkpoint named by the steps of both phases: `offset` is the VAE phase's length for
    the UNet phase (so "latest" is the newest of either), 0 for the VAE phase; with the phase's
    place in its data `stream`."""
    state = {
        "phase": phase,
        "step": step,
        "step_offset": offset,
        "losses": losses,
        "lineage": lineage,
        "stream_position": stream.position,
        "config": asdict(config),
    }
    if phase == "unet":
        state["scaling_factor"] = models["vae"].config.scaling_factor
    directory = ckpt.checkpoint_dir(config.output_dir, offset + step)
    ckpt.save_checkpoint(
        accelerator,
        directory,
        models,
        {"optimizer": optimizer},
        state,
        generators,
        keep=config.checkpoints_to_keep,
    )
    if accelerator.is_main_process:
        plot_losses(losses, Path(config.output_dir) / "loss.png", "Base model training")


def check_starts(config: BaseTrainConfig) -> None:
    """Refuse --base-init and --vae-init folders that are not there, or both given."""
    starts = {"--base-init": (config.base_init, "a base pipeline folder, as assets/embedded/base")}
    starts["--vae-init"] = (config.vae_init, "a VAE folder, as assets/embedded/base/vae")
    for flag, (folder, wanted) in starts.items():
        if folder and not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder}: no such folder; give {wanted}.")
    if config.base_init and config.vae_init:
        raise ValueError("--base-init already holds a VAE: leave out --vae-init.")


def check_vae_sources(config: BaseTrainConfig, latent_channels: int) -> None:
    """Refuse VAE starts that cannot work, before any data or model is built."""
    from diffusers import AutoencoderKL

    if not (config.vae_decoder_only and config.vae_steps):
        return
    if not (config.base_init or config.vae_init):
        raise ValueError(
            "--vae-decoder-only fine-tunes the decoder of a trained VAE, whose encoder it keeps: "
            "give that VAE with --base-init (or --vae-init)."
        )
    if config.vae_init:
        trained = AutoencoderKL.load_config(config.vae_init)["latent_channels"]
        if trained != latent_channels:
            raise ValueError(
                f"--vae-init has {trained} latent channels and this architecture {latent_channels}:"
                " the new channels need a trainable encoder, so leave out --vae-decoder-only."
            )


def train_base(config: BaseTrainConfig) -> Path | None:
    """Train (or resume) both phases; returns the saved pipeline folder, or None when the time box
    stopped the run before its UNet had trained."""
    from accelerate import Accelerator
    from transformers import CLIPTokenizer

    from cnet.architecture import build_components, save_pipeline_dir

    check_numbers(config)
    check_starts(config)
    if config.corpus:
        corpus_sentences(config.corpus)  # before any model is built
    config = sampled_like_the_app(config, config.base_init)
    output_dir = Path(config.output_dir)
    resume_dir = ckpt.resolve_resume(config.resume, output_dir)
    arch = architecture(config.architecture)
    check_vae_sources(config, arch.latent_channels)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    timebox = TimeBox(config.max_minutes, accelerator, config.resume)
    device, rank = accelerator.device, accelerator.process_index
    random.seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    weight_dtype = locked_dtype(accelerator)
    dataset = open_dataset(
        config.data,
        arch.sample_size,
        None,  # the base never sees a control map: render none
        config.synth_length,
        kinds=config.vae_object_weight > 0,  # for the VAE's object weights (synthetic data)
    )

    # Every process builds the same random initial weights from the same seed.
    tokenizer_dir = output_dir / "tokenizer"
    if accelerator.is_main_process:
        if config.base_init and not resume_dir:  # its text encoder's embeddings index its words
            # a run refused before its first checkpoint may have left another base's here
            shutil.rmtree(tokenizer_dir, ignore_errors=True)
            shutil.copytree(Path(config.base_init) / "tokenizer", tokenizer_dir)
        elif not (tokenizer_dir / "tokenizer_config.json").is_file():
            build_tokenizer_for(config, dataset, tokenizer_dir)
    accelerator.wait_for_everyone()
    torch.manual_seed(config.seed)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    parts = build_components(arch, tokenizer, config.zero_terminal_snr)
    torch.manual_seed(config.seed + rank)

    init_scaling = None
    if config.vae_init and not resume_dir:
        load_vae_into(parts["vae"], config.vae_init)
    if config.base_init and not resume_dir:
        init_scaling = load_base_into(parts, config.base_init, config.architecture)
    saved = ckpt.read_state(resume_dir) if resume_dir else {}
    if saved and saved.get("phase") not in PHASES:
        raise ValueError(
            f"{resume_dir} is not a checkpoint of `cnet train base` (it has no VAE or UNet "
            "phase); resume from one under this run's checkpoints/ folder."
        )
    if saved:
        ckpt.refuse_reshaping(saved["config"], asdict(config), ("architecture",), resume_dir)
        if note := ckpt.changes_note(saved["config"], asdict(config)):
            accelerator.print(note)
    # The VAE phase's length as it ran: a --vae-steps changed on resume in the UNet phase must
    # not rename the UNet checkpoints (older ones would then sort as "latest").
    unet_offset = config.vae_steps
    if saved.get("phase") == "unet":
        unet_offset = saved.get("step_offset", saved["config"]["vae_steps"])
    earlier = saved.get("lineage", read_lineage(config.base_init or config.vae_init))
    losses = saved.get("losses", {phase: [] for phase in PHASES})
    generators = {
        "noise": torch.Generator(device).manual_seed(config.seed * 1000 + rank),
        "prompts": torch.Generator().manual_seed(config.seed * 1000 + rank + 500),
    }
    if config.validate_every and accelerator.is_main_process:
        held_out = (
            open_dataset(
                SYNTHETIC,
                arch.sample_size,
                None,
                config.num_validation_images,
                "validation",
            )
            if config.data == SYNTHETIC
            else dataset
        )
        count = min(config.num_validation_images, len(held_out))
        examples = [held_out[i * len(held_out) // count] for i in range(count)]
    for model in parts.values():
        if isinstance(model, torch.nn.Module):
            place(model, device, torch.float32)

    stopped = False
    # A pipeline whose UNet never trained would load in the app and draw noise: a run stopped in
    # its VAE phase exports none, unless --base-init gave it a UNet (or it trains none).
    unexported = "vae" if config.unet_steps and not config.base_init else None
    for phase_index, phase in enumerate(PHASES):
        if saved and PHASES.index(saved["phase"]) > phase_index:
            continue  # finished before the checkpoint we resume from
        if phase == "vae":
            steps = config.vae_steps
            objective = VAEObjective(parts["vae"])
            objective.train()
            groups = [
                {
                    "params": vae_trainables(parts["vae"], config.vae_decoder_only),
                    "peak_lr": config.vae_learning_rate,
                }
            ]
        else:
            steps = config.unet_steps
            lock(parts["vae"])
            place(parts["vae"], device, weight_dtype)
            parts["unet"].train()
            parts["text_encoder"].train()
            groups = [
                {"params": list(parts["unet"].parameters()), "peak_lr": config.unet_learning_rate},
                {
                    "params": list(parts["text_encoder"].parameters()),
                    "peak_lr": config.text_encoder_learning_rate,
                },
            ]
        optimizer = torch.optim.AdamW(
            groups, lr=groups[0]["peak_lr"], weight_decay=config.weight_decay
        )
        if phase == "vae":
            objective, optimizer = accelerator.prepare(objective, optimizer)
            trained = {"vae": objective}
        else:
            parts["unet"], parts["text_encoder"], optimizer = accelerator.prepare(
                parts["unet"], parts["text_encoder"], optimizer
            )
            trained = {"unet": parts["unet"], "text_encoder": parts["text_encoder"]}

        step, position, processes = 0, 0, accelerator.num_processes
        if saved and saved["phase"] == phase:
            models = {**trained, "vae": parts["vae"]} if phase == "unet" else {"vae": parts["vae"]}
            ckpt.load_checkpoint(
                accelerator, resume_dir, models, {"optimizer": optimizer}, generators
            )
            step = saved["step"]
            position = stream_position(saved, phase_batch(saved["config"], phase) * processes)
            accelerator.print(f"Resumed the {phase} phase from {resume_dir} at step {step}.")
        if phase == "unet":
            if "scaling_factor" in saved:
                scaling = saved["scaling_factor"]
            elif init_scaling is not None:
                scaling = init_scaling
            else:
                scaling = latent_scaling_factor(parts["vae"], dataset, config.batch_size, device)
            parts["vae"].register_to_config(scaling_factor=scaling)
            accelerator.print(f"Latent scaling factor {scaling:.5f}.")
        saved = {}  # resumed: later phases start from their beginning

        batches = BatchStream(
            dataset,
            phase_batch(asdict(config), phase),
            config.seed + phase_index,
            start=position,
            process_index=rank,
            num_processes=accelerator.num_processes,
            num_workers=config.num_workers,
        )

        progress = step_progress(
            steps, step, phase, not accelerator.is_local_main_process, timebox.deadline
        )
        while step < steps:
            factor = lr_factor(step, steps, config.warmup_steps, config.cooldown_steps)
            for group in optimizer.param_groups:
                group["lr"] = group["peak_lr"] * factor
            batch = next(batches)
            with accelerator.autocast():
                if phase == "vae":
                    loss = vae_loss(
                        objective,
                        batch,
                        generators["noise"],
                        config.kl_weight,
                        config.vae_crop_size,
                        config.vae_object_weight,
                        config.vae_object_margin,
                        config.vae_frame_weight,
                    )
                else:
                    loss = unet_loss(
                        parts,
                        batch,
                        generators["noise"],
                        generators["prompts"],
                        config.proportion_empty_prompts,
                        config.default_prompt_share,
                    )
            accelerator.backward(loss)
            if config.max_grad_norm:
                params = [p for group in optimizer.param_groups for p in group["params"]]
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            losses[phase].append(accelerator.gather(loss.detach()[None]).mean().item())
            if not math.isfinite(losses[phase][-1]):
                rates = f"--{phase}-learning-rate" + (
                    " and --text-encoder-learning-rate" if phase == "unet" else ""
                )
                raise diverged(
                    f"{phase} loss", losses[phase][-1], step, rates, config.mixed_precision
                )
            progress.update(1)
            progress.set_postfix(loss=f"{losses[phase][-1]:.4f}")
            # the last step of the last phase finishes the run, whatever the clock says
            stopped = (step < steps or phase != PHASES[-1]) and timebox.spent()
            if step % config.checkpoint_every == 0 or step == steps or stopped:
                models = {"vae": parts["vae"], **(trained if phase == "unet" else {})}
                offset = unet_offset if phase == "unet" else 0
                save(
                    accelerator,
                    config,
                    phase,
                    step,
                    offset,
                    models,
                    optimizer,
                    losses,
                    generators,
                    earlier,
                    batches,
                )
            if config.validate_every and step % config.validate_every == 0:
                if accelerator.is_main_process:
                    path = output_dir / "validation" / f"{phase}-step-{step:07d}.png"
                    validate(accelerator, phase, parts, examples, config, path)
                accelerator.wait_for_everyone()
            if stopped:
                progress.write(timebox.message(step, exported=phase != unexported))
                break
        progress.close()
        if phase == "vae":
            parts["vae"] = accelerator.unwrap_model(objective).vae
        if stopped:
            break

    unet_untrained = stopped and phase == unexported
    base_dir = output_dir / "base"
    if accelerator.is_main_process:
        components = {
            name: accelerator.unwrap_model(part) if isinstance(part, torch.nn.Module) else part
            for name, part in parts.items()
        }
        place(components["vae"], "cpu", torch.float32)
        if unet_untrained:
            accelerator.print(
                "Stopped in the VAE phase, so no pipeline was exported (its UNet has not trained "
                "yet); the same command with --resume latest goes on."
            )
        else:
            shutil.rmtree(ckpt.partial_of(base_dir), ignore_errors=True)  # of a killed export
            save_pipeline_dir(components, ckpt.partial_of(base_dir), arch)
        summary = {
            "final_loss": {
                phase: values[-1] if values else None for phase, values in losses.items()
            },
            "mean_loss_last_100": {
                phase: float(np.mean(values[-100:])) if values else None
                for phase, values in losses.items()
            },
            "steps": {phase: len(values) for phase, values in losses.items()},
            "scaling_factor": None if unet_untrained else components["vae"].config.scaling_factor,
            "device": device_name(accelerator),
            "config": asdict(config),
        }
        if not unet_untrained:
            write_lineage(ckpt.partial_of(base_dir), earlier, lineage_entry(summary))
        ckpt.commit_export(output_dir, summary, [] if unet_untrained else [base_dir])
    accelerator.wait_for_everyone()
    return None if unet_untrained else base_dir


def lineage_entry(summary: dict) -> dict:
    """This run, as the exported base's lineage.json records it."""
    config = summary["config"]
    settings = (
        "vae_decoder_only",
        "vae_frame_weight",
        "vae_learning_rate",
        "batch_size",
        "unet_learning_rate",
        "text_encoder_learning_rate",
        "cooldown_steps",
        "zero_terminal_snr",
        "proportion_empty_prompts",
        "default_prompt_share",
    )
    vae_batch = config["vae_batch_size"] or config["batch_size"]
    return run_record("base", summary, settings, vae_batch_size=vae_batch)
