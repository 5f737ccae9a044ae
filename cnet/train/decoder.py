"""Fine-tune a preset's VAE decoder on the latents its UNet samples.

A decoder trained on encoded images meets something else in use: the latents the UNet samples,
whose object edges are softer than an encoder's. Here it also learns from what it is handed:
pairs of (the latent the preset sampled for a training scene, under that scene's control map and
prompt at the preset's settings; the scene's true image). Half of each batch is such pairs, the
other half encoded true images, so reconstructions stay faithful. The encoder stays frozen, so
the UNet's latents keep their meaning.

Train:   python -m cnet train decoder --model-dir assets/embedded --output-dir runs/decoder
         (samples the pairs first, saving as it goes; then trains; the same command goes on
         after an interruption)
Install: python -m cnet train embedded --install runs/decoder --pack assets/embedded
         (<output-dir>/vae/ in float16 replaces <model-dir>/base/vae/, <output-dir>/lineage.json
         the base's lineage.json; the base's card follows)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cnet.synth import generate, split_seeds
from cnet.synth.maps import training_kinds
from cnet.synth.sample import CONDITION_KEYS, condition_sample
from cnet.train.base import frame_mask, object_weights, vae_trainables
from cnet.train.checkpoint import (
    DECODER_CHECKPOINT,
    changes_note,
    check_writable,
    commit_export,
    partial_of,
)
from cnet.train.limits import check_numbers
from cnet.train.lineage import read_lineage, recorded_runs, run_record, write_lineage
from cnet.train.schedule import lr_factor

SAVE_EVERY = 50  # pairs
PAIR_KEYS = ("latents", "images", "seeds", "conditions")  # a pairs file's lists, one item a pair
HELD_OUT_EVERY = 10  # every 10th pair is held out: the fit is measured on them
RESUME_FREE = ("output_dir", "workers", "checkpoint_every")  # may change on resume unremarked


@dataclass
class DecoderConfig:
    model_dir: str = "assets/embedded"
    output_dir: str = "runs/decoder"
    pairs: int = 2_600
    first_seed: int = 300_000
    resolution: int | None = None
    workers: int = 1
    steps: int = 1_500
    batch_size: int = 16
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    cooldown_steps: int = 750
    object_weight: float = 4.0
    object_margin: int = 3
    frame_weight: float = 4.0
    checkpoint_every: int = 100
    seed: int = 0


HELP = {
    "model_dir": "embedded-layout folder: its preset samples the pairs, its base/vae is tuned",
    "output_dir": "where the pairs, the checkpoint, training.json and vae/ go",
    "pairs": "(sampled latent, true image) pairs of training scenes",
    "first_seed": "scene seed of the first pair (train split)",
    "resolution": "image size of the pairs (default: the preset's)",
    "workers": "processes sampling the pairs, each with its own model copy (CPU: one per core)",
    "steps": "optimizer steps",
    "batch_size": "examples a step: half sampled latents, half encoded true images",
    "learning_rate": "AdamW learning rate of the decoder",
    "warmup_steps": "linear warm-up",
    "cooldown_steps": "the learning rate falls linearly to 0 over the last N steps",
    "object_weight": "extra L1 weight of object pixels",
    "object_margin": "pixels around each object that weigh as much as the object",
    "frame_weight": "extra L1 weight of the image's outer 4 pixels",
    "checkpoint_every": "save a checkpoint every N steps (the same command resumes from it)",
    "seed": "seed of batch order",
}


def pair_plan(
    first_seed: int, count: int, worker: int = 0, workers: int = 1
) -> list[tuple[int, str]]:
    """(scene seed, condition) of the pairs this worker samples: pair i is scene first_seed + i
    under condition i mod 7, and worker w of W takes the pairs with i mod W == w."""
    return [
        (first_seed + i, CONDITION_KEYS[i % len(CONDITION_KEYS)])
        for i in range(worker, count, workers)
    ]


def decoder_input(vae):
    """The module whose input is the latent the decoder is handed (post_quant_conv's, when the
    VAE has one)."""
    return vae.post_quant_conv if vae.post_quant_conv is not None else vae.decoder


def collect_pairs(engine, plan: list[tuple[int, str]], path: Path, size: int) -> dict:
    """Sample each planned scene at the engine's preset settings with the scene's own prompt,
    keeping the latent handed to the decoder beside the true image; saved to `path` every
    SAVE_EVERY pairs and continued from what `path` already holds. The file records the base
    that sampled them (its lineage), so pairs of another base are never mixed in."""
    from cnet.engine import GenerationRequest

    base_lineage = recorded_runs(engine.preset.base)
    if path.is_file():
        pairs = torch.load(path)
        check_sampled_by(pairs, path, base_lineage)
    else:
        pairs = {key: [] for key in PAIR_KEYS} | {"base_lineage": base_lineage}
    done = set(pairs["seeds"])
    todo = [(seed, condition) for seed, condition in plan if seed not in done]
    if not todo:
        return pairs
    engine.load()
    handed: list[torch.Tensor] = []
    hook = decoder_input(engine.pipeline.vae).register_forward_pre_hook(
        lambda module, args: handed.append(args[0].detach().to(torch.float16).cpu())
    )
    try:
        for seed, condition in todo:
            sample = condition_sample(seed, size, condition)
            engine.generate(
                GenerationRequest(
                    control_image=sample.conditions[condition],
                    condition=condition,
                    prompt_mode="user",
                    prompt=sample.prompt,
                    added_prompt="",
                    negative_prompt="",
                    resolution=size,
                    seed=seed,
                )
            )
            pairs["latents"].append(handed.pop()[0])
            pairs["images"].append(torch.from_numpy(sample.image))
            pairs["seeds"].append(seed)
            pairs["conditions"].append(condition)
            if len(pairs["seeds"]) % SAVE_EVERY == 0:
                save_whole(pairs, path)
    finally:
        hook.remove()
    save_whole(pairs, path)
    return pairs


def save_whole(state: dict, path: Path) -> None:
    """torch.save through a temporary file, so an interruption never leaves half a file."""
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def _collect_in_worker(config: DecoderConfig, worker: int, todo: list[tuple[int, str]]) -> None:
    from cnet.engine import load_engine

    engine = load_engine(model_dir=config.model_dir, threads=1 if config.workers > 1 else None)
    size = config.resolution or engine.preset.resolution
    collect_pairs(engine, todo, pairs_path(config, worker), size)


def pairs_path(config: DecoderConfig, worker: int) -> Path:
    return Path(config.output_dir) / f"pairs-{worker}-of-{config.workers}.pt"


def check_sampled_by(part: dict, path: Path, base_lineage: list[dict]) -> None:
    """Refuse pairs sampled by another base than the one whose lineage is `base_lineage` (pairs
    from before the base was recorded pass)."""
    if part.get("base_lineage", base_lineage) != base_lineage:
        raise ValueError(
            f"{path} holds pairs sampled by another base than the one in --model-dir (their "
            "base/lineage.json differ): tune this one's decoder in another --output-dir, or go "
            "on with the --model-dir they were sampled with, if that base is still there."
        )


def saved_pairs(folder: Path, base_lineage: list[dict]) -> dict:
    """Every pair saved in `folder` by any number of workers, one per (seed, condition), in seed
    order, all sampled by the base whose lineage is `base_lineage`; "plan" lists those (seed,
    condition)."""
    found: dict[tuple[int, str], dict] = {}
    for path in sorted(folder.glob("pairs-*-of-*.pt")):
        part = torch.load(path)
        check_sampled_by(part, path, base_lineage)
        for i, pair in enumerate(zip(part["seeds"], part["conditions"], strict=True)):
            found.setdefault(pair, {key: part[key][i] for key in PAIR_KEYS})
    plan = sorted(found)
    return {"plan": plan} | {key: [found[pair][key] for pair in plan] for key in PAIR_KEYS}


def sampled_pairs(config: DecoderConfig) -> dict:
    """Every planned pair, sampled by `config.workers` processes (those already saved, by any
    number of workers, kept), in pair order."""
    folder = Path(config.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    base_lineage = recorded_runs(Path(config.model_dir) / "base")
    saved = saved_pairs(folder, base_lineage)
    done = set(saved["plan"])
    jobs: dict[int, list[tuple[int, str]]] = {}  # worker -> the pairs it still has to sample
    for worker in range(config.workers):
        todo = [
            pair
            for pair in pair_plan(config.first_seed, config.pairs, worker, config.workers)
            if pair not in done
        ]
        if todo:
            jobs[worker] = todo
    if len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(len(jobs), mp_context=context) as pool:
            running = [pool.submit(_collect_in_worker, config, w, t) for w, t in jobs.items()]
            for job in running:
                job.result()
    else:
        for worker, todo in jobs.items():
            _collect_in_worker(config, worker, todo)
    if jobs:
        saved = saved_pairs(folder, base_lineage)
    planned = set(pair_plan(config.first_seed, config.pairs))
    keep = [i for i, pair in enumerate(saved.pop("plan")) if pair in planned]
    return {key: [values[i] for i in keep] for key, values in saved.items()}


def weighted_l1(vae, latents, images, weights) -> torch.Tensor:
    error = (vae.decode(latents).sample - images).abs()
    return (error * weights).sum() / (weights.sum() * images.shape[1])


@torch.no_grad()
def held_out_l1(vae, data: dict, index: torch.Tensor) -> dict[str, float]:
    """Weighted L1 of the held-out pairs, decoded from the sampled and from the encoded latents."""
    vae.eval()
    figures = {
        name: weighted_l1(
            vae, data[name][index], data["images"][index], data["weights"][index]
        ).item()
        for name in ("sampled", "encoded")
    }
    vae.train()
    return figures


@torch.no_grad()
def training_data(vae, pairs: dict, config: DecoderConfig, device: str) -> dict[str, torch.Tensor]:
    """Per pair, on `device`: the true image in [-1, 1], its sampled latent, its encoded latent
    (the frozen encoder's mean) and each pixel's weight in the L1."""
    images = torch.stack(pairs["images"]).permute(0, 3, 1, 2).to(device).float() / 127.5 - 1
    kinds = torch.stack(
        [
            torch.from_numpy(generate(seed, images.shape[-1], [], training_kinds(c)).kinds)
            for seed, c in zip(pairs["seeds"], pairs["conditions"], strict=True)
        ]
    ).to(device)
    weights = object_weights(kinds.long(), config.object_weight, config.object_margin)
    return {
        "images": images,
        "sampled": torch.stack(pairs["latents"]).to(device).float(),
        "encoded": torch.cat(
            [vae.encode(images[i : i + 64]).latent_dist.mode() for i in range(0, len(images), 64)]
        ),
        "weights": weights + config.frame_weight * frame_mask(*images.shape[-2:], device=device),
    }


def check_made_for(saved: dict, checkpoint: Path, model_dir: str, base_lineage: list[dict]) -> None:
    """Refuse a checkpoint made for another base than the one in `model_dir`, told apart by the
    base's lineage.json as the checkpoint recorded it (an older checkpoint records none: it
    passes). Its decoder and the pairs beside it came from that base, and the export's
    lineage.json would claim this one's."""
    if saved.get("base_lineage", base_lineage) != base_lineage:
        raise ValueError(
            f"{checkpoint} was made for the base in --model-dir {saved['config']['model_dir']} "
            f"as it was then, and the base in --model-dir {model_dir} is another (their "
            "base/lineage.json differ): tune this one's decoder in another --output-dir, or go "
            "on with the --model-dir the checkpoint was made for, if that base is still there."
        )


def train(config: DecoderConfig) -> Path:
    """Sample the pairs (or read those saved), then fine-tune; returns the saved VAE folder."""
    from diffusers import AutoencoderKL

    check_numbers(config)
    vae_source = Path(config.model_dir) / "base" / "vae"
    if not (vae_source / "config.json").is_file():
        raise FileNotFoundError(
            f"{config.model_dir} has no base/vae/: give --model-dir an embedded-layout folder "
            "(as assets/embedded)."
        )
    last = config.first_seed + config.pairs - 1
    if last not in split_seeds("train"):
        raise ValueError(f"Pair seeds must lie in the train split; {last} does not.")
    if config.pairs < 2 or config.steps < 1 or config.batch_size < 2:
        raise ValueError(
            "Give --pairs 2 or more (every 10th is held out), --steps 1 or more and "
            "--batch-size 2 or more (half sampled latents, half encoded images)."
        )
    check_writable(config.output_dir)
    output_dir = Path(config.output_dir)
    base_lineage = recorded_runs(vae_source.parent)
    checkpoint = output_dir / DECODER_CHECKPOINT
    saved = torch.load(checkpoint) if checkpoint.is_file() else None
    if saved is not None:  # before any pair is sampled for it
        check_made_for(saved, checkpoint, config.model_dir, base_lineage)
    pairs = sampled_pairs(config)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = AutoencoderKL.from_pretrained(vae_source, torch_dtype=torch.float32).to(device)
    params = vae_trainables(vae, decoder_only=True)
    data = training_data(vae, pairs, config, device)
    held = torch.arange(len(data["images"])) % HELD_OUT_EVERY == 0
    train_index, held_index = (
        torch.nonzero(~held)[:, 0].to(device),
        torch.nonzero(held)[:, 0].to(device),
    )

    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(config.seed)
    if saved is not None:
        vae.load_state_dict(saved["vae"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        step, losses, before = saved["step"], saved["losses"], saved["before"]
        print(f"Resuming at step {step}", flush=True)
        if note := changes_note(saved.get("config", {}), asdict(config), RESUME_FREE):
            print(note, flush=True)
    else:
        step, losses, before = 0, [], held_out_l1(vae, data, held_index)
    half = config.batch_size // 2
    started = time.perf_counter()
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * lr_factor(
                step, config.steps, config.warmup_steps, config.cooldown_steps
            )
        picks = train_index[
            torch.randint(len(train_index), (2, half), generator=generator).to(device)
        ]
        latents = torch.cat([data["sampled"][picks[0]], data["encoded"][picks[1]]])
        chosen = picks.flatten()
        loss = weighted_l1(vae, latents, data["images"][chosen], data["weights"][chosen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % config.checkpoint_every == 0 or step == config.steps:
            now = held_out_l1(vae, data, held_index)
            print(
                f"step {step}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f}, held-out L1 "
                f"sampled {now['sampled']:.4f} (from {before['sampled']:.4f}), encoded "
                f"{now['encoded']:.4f} (from {before['encoded']:.4f}), "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
            state = {
                "vae": vae.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "generator": generator.get_state(),
                "losses": losses,
                "before": before,
                "base_lineage": base_lineage,
                "config": asdict(config),
            }
            save_whole(state, checkpoint)

    result = output_dir / "vae"
    shutil.rmtree(partial_of(result), ignore_errors=True)  # of an export killed midway
    vae.save_pretrained(partial_of(result))
    summary = {
        "config": asdict(config),
        "steps": step,
        "final_loss": losses[-1],
        "mean_loss_last_100": sum(losses[-100:]) / len(losses[-100:]),
        "held_out_l1_before": before,
        "held_out_l1_after": held_out_l1(vae, data, held_index),
        "device": f"1 x {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}",
    }
    (output_dir / "training.json").unlink(missing_ok=True)  # unfinished until commit_export
    record = run_record(
        "decoder",
        {**summary, "config": {**summary["config"], "data": "synth"}},
        ("pairs", "batch_size", "learning_rate", "cooldown_steps", "frame_weight"),
    )
    # What base/lineage.json becomes once vae/ replaces base/vae/.
    write_lineage(output_dir, read_lineage(vae_source.parent), record)
    commit_export(output_dir, summary, [result])
    return result


def configure(parser: argparse.ArgumentParser) -> None:
    from cnet.train.cli import add_config_flags

    add_config_flags(parser, DecoderConfig, HELP)


def run(args: argparse.Namespace) -> int:
    from cnet.train.cli import config_from_args

    config = config_from_args(DecoderConfig, args)
    try:
        result = train(config)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(
            f"error: {error} (check that --output-dir can be written and has room)", file=sys.stderr
        )
        return 1
    print(
        f"Decoder saved to {result}; to use it: python -m cnet train embedded --install "
        f"{config.output_dir} --pack {config.model_dir}"
    )
    return 0
