"""The embedded preset's recipe: every model it ships, trained in order, resumable, then packed.

    python -m cnet train embedded --runs runs/embedded                  # train or resume
    python -m cnet train embedded --runs runs/embedded --only captioner  # one stage (a 2nd core)
    python -m cnet train embedded --runs runs/embedded --pack assets/embedded

Each stage is one of the trainers (`cnet.train.base`, `.controlnet`, `.captioner`) with the
settings below, writing checkpoints under `<runs>/<stage>/` and resuming from the newest one, so
running the same command again after an interruption loses at most `checkpoint_every` steps.
`--pack` copies the finished models into the layout `--model-dir` reads, weights in float16, with a
model card per model, and refuses to go over the weights budget. A condition's own ControlNet
ships as a low-rank difference from the shared one (`controlnet/all`, `cnet.lowrank`); a condition
whose fine-tune has not finished is served by the shared one itself (named in preset.json), so a
preset can ship before every fine-tune is done, and gain them one by one:

    python -m cnet train embedded --install runs/embedded/controlnet-canny --pack assets/embedded

(`cnet.train.install`; the same flag takes a `cnet train decoder` run, or a `cnet eval` of the
preset, whose figures the cards then quote.)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cnet.cli.options import non_negative_int, positive_int, positive_number
from cnet.lowrank import is_lowrank, lowrank_settings, lowrank_start, write_lowrank
from cnet.synth.examples import write_examples
from cnet.synth.maps import map_versions_text
from cnet.synth.sample import CONDITION_KEYS
from cnet.train.data import EVERY_CONDITION
from cnet.train.lineage import LINEAGE_FILE, continues, last_gain, models_record, recorded_runs
from cnet.train.schedule import lr_factor

WEIGHTS_BUDGET_BYTES = 80 * 1000**2  # everything under assets/, git history included
SHARED = "controlnet-all"  # the stage every condition's ControlNet starts from
SHARED_FOLDER = "all"  # its folder under controlnet/ when it serves conditions itself
STEPS_FILE = "steps.json"  # in the runs folder: the steps each stage trains to
# A condition's ControlNet keeps its fine-tune's change at this rank (0.48 M numbers of 2.50 M):
# normal's kept +0.015 of its +0.020 validation IoU at rank 16, +0.012 at rank 8 (README).
LOWRANK_RANK = 16
# The packed preset's default guidance scale. The paper's 9.0 suits SD 1.5; this recipe's small
# models follow map and prompt best at 2.0 (chosen on validation scenes, see the training log).
PRESET_CFG = 2.0


@dataclass(frozen=True)
class Steps:
    vae: int = 8_000
    unet: int = 8_000
    shared: int = 6_000  # the ControlNet that reads every condition
    controlnet: int = 1_100  # each condition's fine-tune of it (normal's shipped one: 1,100)
    # 0.795 of test captions right after 6,000 steps, 0.915 after 14,000, 0.960 after 19,000
    # (the shipped one)
    captioner: int = 19_000


@dataclass
class Stage:
    name: str
    config: object  # the trainer's config dataclass
    train: Callable[[object], object]
    result: Path  # the folder the trainer leaves when it has finished
    target_steps: dict[str, int] | int
    needs: tuple[str, ...] = ()  # stages that must have finished first
    ships_as: str | None = None  # its folder in the packed preset; None: an intermediate model

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir)

    def finished(self) -> bool:
        summary = self.run_dir / "training.json"
        if not (self.result.is_dir() and summary.is_file()):
            return False
        done = json.loads(summary.read_text())["steps"]
        if isinstance(self.target_steps, int):
            return done >= self.target_steps
        return all(done.get(phase, 0) >= n for phase, n in self.target_steps.items())


def recipe_steps(runs: Path, given: dict[str, int]) -> Steps:
    """Each stage's steps: as given now, else as last given for this runs folder, else the
    defaults. A stage counts as finished only at its steps, so a folder trained to other lengths
    must not need them repeated on every later command (`remember_steps`)."""
    path = runs / STEPS_FILE
    known = set(vars(Steps()))
    last = json.loads(path.read_text()) if path.is_file() else {}
    return Steps(**{name: n for name, n in {**last, **given}.items() if name in known})


def remember_steps(runs: Path, steps: Steps) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    (runs / STEPS_FILE).write_text(json.dumps(vars(steps), indent=2) + "\n")


def stages(
    runs: Path, steps: Steps = Steps(), vae_init: str | None = None, base_init: str | None = None
) -> dict[str, Stage]:
    """The recipe, in training order: the base first, since every ControlNet locks it; then one
    ControlNet on every condition in turn, the start of each condition's own ControlNet.

    `vae_init`: a trained VAE folder the base's VAE phase fine-tunes instead of starting afresh;
    `base_init`: a trained base pipeline folder the whole base starts from.
    """
    from cnet.train import captioner
    from cnet.train.base import BaseTrainConfig, train_base
    from cnet.train.controlnet import TrainConfig, train

    base = BaseTrainConfig(
        output_dir=str(runs / "base"),
        batch_size=16,
        vae_steps=steps.vae,
        vae_init=vae_init,
        base_init=base_init,
        unet_steps=steps.unet,
        checkpoint_every=100,
        validate_every=500,
        validation_guidance_scale=PRESET_CFG,
        resume="latest",
    )
    recipe = {
        "base": Stage(
            "base",
            base,
            train_base,
            runs / "base" / "base",
            {"vae": steps.vae, "unet": steps.unet},
            ships_as="base",
        )
    }

    def controlnet(
        name: str, condition: str, max_steps: int, start: Path | None, batch_size: int
    ) -> Stage:
        config = TrainConfig(
            output_dir=str(runs / name),
            base=str(runs / "base" / "base"),
            controlnet=str(start) if start else None,
            condition=condition,
            batch_size=batch_size,
            # From scratch on a small base, 1e-4 converges in thousands of steps; the paper's
            # 1e-5 is for fine-tuning Stable Diffusion's copy.
            learning_rate=1e-4,
            max_steps=max_steps,
            # a fine-tune's rate falls to 0 over its run, as the shared start's last stretch did
            warmup_steps=50 if start else 0,
            cooldown_steps=max_steps if start else 0,
            checkpoint_every=100,
            validate_every=500,
            validation_guidance_scale=PRESET_CFG,
            resume="latest",
        )
        needs = ("base", "controlnet-all") if start else ("base",)
        ships_as = f"controlnet/{condition}" if start else None
        return Stage(name, config, train, runs / name / "controlnet", max_steps, needs, ships_as)

    # Learning to steer the locked UNet at all needs batch 64: at batch 8 the zero convolutions'
    # gradients are as inconsistent as noise, and no control appeared by step 3,000 (README).
    # 6,000 steps of batch 64 took about 9 minutes on one H200; each condition then adapts at
    # batch 64 too (normal's 1,100 steps: 61 minutes on 2 CPU cores, IoU +0.021 on test scenes).
    recipe[SHARED] = controlnet(SHARED, EVERY_CONDITION, steps.shared, None, batch_size=64)
    for key in CONDITION_KEYS:
        name = f"controlnet-{key}"
        recipe[name] = controlnet(name, key, steps.controlnet, recipe[SHARED].result, 64)
    config = captioner.TrainConfig(
        output_dir=str(runs / "captioner"),
        max_steps=steps.captioner,
        cooldown_steps=steps.captioner // 10,
        checkpoint_every=100,
        validate_every=600,
        resume="latest",
    )
    recipe["captioner"] = Stage(
        "captioner",
        config,
        captioner.train,
        Path(config.output_dir) / "captioner",
        steps.captioner,
        ships_as="captioner",
    )
    return recipe


def reopened_stages(
    recipe: dict[str, Stage], runs: Path, given: dict[str, int], args: argparse.Namespace
) -> list[str]:
    """The stages finished at the step counts this runs folder had, that the counts given now
    make unfinished (one --controlnet-steps counts for all seven fine-tunes)."""
    if not given:
        return []
    before = stages(runs, recipe_steps(runs, {}), args.vae_init, args.base_init)
    return [name for name, stage in recipe.items() if before[name].finished() > stage.finished()]


def train_command(stage: Stage) -> str:
    return f"python -m cnet train embedded --runs {stage.run_dir.parent} --only {stage.name}"


def reopened_note(recipe: dict[str, Stage], reopened: list[str]) -> str:
    """What training the reopened stages on does to the rest, for --pack."""
    lines = [
        f"note: the new step counts reopen {', '.join(reopened)}, finished at the earlier ones: "
        "each trains on to its new count when its stage runs."
    ]
    made_from = {"base": "trained on the base", SHARED: f"fine-tuned from {SHARED}"}
    for start, how in made_from.items():
        if start in reopened:
            later = [n for n, s in recipe.items() if start in s.needs and s.run_dir.is_dir()]
            if later:
                lines.append(
                    f"  Once {start} trains on, --pack refuses what was {how} before it "
                    f"({', '.join(later)}) until each is trained again."
                )
    fine_tunes = [n for n in reopened if n.startswith("controlnet-") and n != SHARED]
    if fine_tunes:
        lines.append(
            f"  Until {', '.join(fine_tunes)} train on, --pack serves their conditions with "
            "the shared ControlNet."
        )
    return "\n".join(lines)


def check_needs(recipe: dict[str, Stage], only: list[str] | None) -> None:
    """Refuse, before anything trains, an --only stage whose needs are neither finished nor among
    the stages this command trains (before it: the recipe's order)."""
    for name in only or ():
        for need in recipe[name].needs:
            if need not in only and not recipe[need].finished():
                raise FileNotFoundError(
                    f"{name} needs the finished {need} ({recipe[need].result}); train it first: "
                    f"{train_command(recipe[need])}"
                )


def train_all(
    recipe: dict[str, Stage], only: list[str] | None = None, max_minutes: float | None = None
) -> bool:
    """Train the unfinished stages in order; False when the time box ended the run first."""
    check_needs(recipe, only)
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    for name, stage in recipe.items():
        if only and name not in only:
            continue
        if stage.finished():
            print(f"{name}: finished ({stage.result})")
            continue
        config = stage.config
        if deadline is not None:
            left = (deadline - time.monotonic()) / 60
            if left <= 0:
                print(f"The time box is spent before {name}; run the same command to go on.")
                return False
            config = replace(config, max_minutes=left)
        print(f"{name}: training in {stage.run_dir}")
        stage.train(config)
        if deadline is not None and not stage.finished():  # its time box stopped it
            print(f"{name} stopped by the time box; run the same command to go on.")
            return False
    return True


# ---- packing ---------------------------------------------------------------------------------


def to_float16(folder: Path) -> None:
    """Rewrite every floating-point tensor of every .safetensors file under `folder` as fp16
    (a file already all fp16 is left as it is).

    Loading casts back: diffusers and transformers copy stored tensors into the dtype asked for.
    """
    import torch
    from safetensors.torch import load_file, save_file

    for path in folder.rglob("*.safetensors"):
        tensors = load_file(path)
        if all(v.dtype == torch.float16 for v in tensors.values() if v.is_floating_point()):
            continue
        half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(half, path, metadata={"format": "pt"})


def drop_local_paths(folder: Path) -> None:
    """Remove `_name_or_path` from the configs: a model started from a local folder records that
    folder, which means nothing on a user's machine."""
    for path in folder.rglob("config.json"):
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def parameter_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in folder.rglob("*.safetensors"):
        with safe_open(path, "pt") as tensors:
            names = tensors.keys()  # a safe_open handle is not iterable
            total += sum(math.prod(tensors.get_slice(name).get_shape()) for name in names)
    return total


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def metrics_table(metrics: dict, condition: str) -> str:
    """The rows of `python -m cnet eval`'s results.json for one condition, as Markdown."""
    from cnet.evaluate import table_head, table_row

    rows = metrics.get(condition)
    if not rows:
        return "Not evaluated yet: run `python -m cnet eval --model-dir <this preset>`."
    lines = table_head("setting")
    lines += [table_row(setting, figures=row) for setting, row in rows.items()]
    return "\n".join(lines)


def frame_weighting(frame_weight: float) -> str:
    from cnet.train.base import FRAME_WIDTH

    return f"the outer {FRAME_WIDTH} px weighing {1 + frame_weight:g}x"


def base_card(stage: Stage, folder: Path) -> str:
    summary = json.loads((stage.run_dir / "training.json").read_text())
    arch = json.loads((folder / "architecture.json").read_text())
    config, loss = summary["config"], summary["final_loss"]
    crop = config["vae_crop_size"]
    crops = f"random {crop} px crops" if crop else "whole images"
    weight, margin = config.get("vae_object_weight", 0.0), config.get("vae_object_margin", 0)
    weighting = f"objects and {margin} px around them weigh {1 + weight:g}x" if weight else "even"
    if config.get("vae_frame_weight"):
        frame = frame_weighting(config["vae_frame_weight"])
        weighting = frame if weighting == "even" else f"{weighting}, {frame}"
    start = ""
    if config.get("vae_init") or config.get("base_init"):
        start = " fine-tuning an earlier VAE"
    if config.get("vae_decoder_only"):
        start += "'s decoder alone (its encoder, so the UNet's latents, unchanged)"
    vae = (
        f"{summary['steps']['vae']} steps{start}, batch "
        f"{config['vae_batch_size'] or config['batch_size']}, {crops}, L1 ({weighting}) + "
        f"{config['kl_weight']} x KL; final loss {loss['vae']:.4f}"
        if summary["steps"]["vae"]
        else "kept from the earlier base"
    )
    schedule = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    objective = {"epsilon": "noise", "v_prediction": "v"}[schedule["prediction_type"]]
    if schedule.get("rescale_betas_zero_snr"):
        objective += " prediction at zero terminal SNR"
    else:
        objective += " prediction, SD 1.5's noise schedule"
    if summary["steps"]["unet"]:
        if config.get("base_init"):
            objective += ", continuing an earlier base"
        mean = (summary.get("mean_loss_last_100") or {}).get("unet")
        unet_loss = f"{loss['unet']:.4f}"
        if mean:
            unet_loss += f" (mean of the last 100 steps {mean:.4f})"
        unet = (
            f"{summary['steps']['unet']} steps, batch {config['batch_size']}, {objective},\n  "
            f"{empty_prompts(config)}; final loss {unet_loss}"
        )
    else:
        unet = f"kept from the earlier base ({objective})"
    sizes = ", ".join(
        f"{part} {parameter_count(folder / part) / 1e6:.2f} M"
        for part in ("vae", "text_encoder", "unet")
    )
    return f"""# Embedded base model

A Stable Diffusion-architecture text-to-image model (diffusers `StableDiffusionPipeline` folder)
trained from scratch by ControlNet Studio on its synthetic scenes (`cnet/synth`, train split:
seeds 0 to 899,999, rendered on the fly at {arch["sample_size"]} px). The ControlNets beside it
lock it.

- Architecture: VAE {arch["vae_channels"]} channels, {arch["latent_channels"]} latent channels;
  UNet {arch["unet_channels"]} channels with cross-attention; CLIP text encoder
  {arch["text_layers"]} layers of width {arch["text_width"]}; tokenizer learnt from the prompts.
- Parameters: {sizes} (stored in float16).
- VAE: {vae} (README: training history).
- UNet + text encoder: {unet}.
- Latent scaling factor {summary["scaling_factor"]:.5f}.
{lineage_lines(recorded_runs(folder))}
It knows only the synthetic world: 1-3 spheres, cubes, cylinders, cones, pyramids and people in
named colours, on a plain background or a floor.
"""


def empty_prompts(settings: dict) -> str:
    """The prompt dropout of a run's config or lineage entry, as the cards say it."""
    text = f"{settings['proportion_empty_prompts']:.0%} empty prompts"
    if settings.get("default_prompt_share"):
        text += f" ({settings['default_prompt_share']:.0%} of them the default prompt)"
    return text


def replayed_maps(settings: dict) -> str:
    """A fine-tune's replay of the other conditions' maps (its config or lineage entry), as the
    cards say it; "" when it had none."""
    share = settings.get("replay_share")
    return f" ({share:.0%} of the examples another condition's map, in turn)" if share else ""


def describe_schedules(summary: dict) -> str:
    """The batch and learning rate, or those of each stretch of a run resumed with new ones; and
    where a run stopped short of its cool-down's end (a time box), the rate it stopped at."""
    schedules = summary.get("schedules") or [{"from_step": 0, **summary["config"]}]

    def settings(s: dict) -> str:
        accumulation = s.get("gradient_accumulation_steps", 1)
        batch = f"{s['batch_size']} x {accumulation}" if accumulation > 1 else s["batch_size"]
        cooldown = s.get("cooldown_steps")
        falling = f" falling to 0 over the last {cooldown} steps" if cooldown else ""
        small = ", middle block only (small-scale)" if s.get("all_links") is False else ""
        return f"batch {batch}, AdamW learning rate {s['learning_rate']:g}{falling}{small}"

    if len(schedules) == 1:
        text = settings(schedules[0])
    else:
        text = "; ".join(f"{settings(s)} from step {s['from_step']}" for s in schedules)
    last, steps = schedules[-1], summary["steps"]
    # Lineage entries name the planned length themselves; a training.json keeps it in its config.
    planned = summary.get("max_steps") or summary.get("config", {}).get("max_steps")
    if last.get("cooldown_steps") and planned and steps < planned:
        factor = lr_factor(steps - 1, planned, last.get("warmup_steps", 0), last["cooldown_steps"])
        text += f" (stopped at step {steps} of {planned}, at {factor:.0%} of the peak rate)"
    return text


def describe_run(run: dict) -> str:
    """One run of a model's lineage.json, as its card lists it."""
    if run["trainer"] == "controlnet":
        text = f"{run['steps']} steps on {run['condition']} maps"
        if drawn := map_versions_text(run.get("map_versions", {}), run["condition"]):
            text += f" ({drawn})"
        text += f"{replayed_maps(run)}, "
        text += f"{describe_schedules(run)}, "
        text += empty_prompts(run)
        if not run["all_links"]:
            text += ", middle block only"
        if run["base_unlocked"]:
            text += ", base unlocked"
        if run["control_gain"]:
            gain = run["control_gain"]
            text += f"; control gain {gain['value']:.4f} at step {gain['step']}"
    elif run["trainer"] == "base":
        steps, phases = run["steps"], []
        if steps["vae"]:
            part = "its decoder" if run["vae_decoder_only"] else "VAE"
            phases.append(
                f"{part} {steps['vae']} steps at batch {run['vae_batch_size']}, "
                f"learning rate {run['vae_learning_rate']:g}"
            )
            if run.get("vae_frame_weight"):
                phases[-1] += f", {frame_weighting(run['vae_frame_weight'])}"
        if steps["unet"]:
            schedule = "zero terminal SNR" if run["zero_terminal_snr"] else "SD 1.5's schedule"
            phases.append(
                f"UNet + text encoder {steps['unet']} steps at batch {run['batch_size']}, "
                f"learning rates {run['unet_learning_rate']:g} / "
                f"{run['text_encoder_learning_rate']:g}, {schedule}, {empty_prompts(run)}"
            )
        text = "; ".join(phases) or "no steps"
        if run["cooldown_steps"]:
            text += f", each phase cooling down over its last {run['cooldown_steps']} steps"
    elif run["trainer"] == "decoder":
        text = (
            f"its decoder {run['steps']} steps at batch {run['batch_size']}, half of each batch "
            f"latents the preset sampled for {run['pairs']} training scenes, learning rate "
            f"{run['learning_rate']:g}"
        )
        if run["frame_weight"]:
            text += f", {frame_weighting(run['frame_weight'])}"
        if run["cooldown_steps"]:
            text += f", cooling down over its last {run['cooldown_steps']} steps"
    else:
        return "an earlier model whose training is not recorded here"
    if run.get("device"):
        text += f"; {run['device']}"
    return text


def lineage_lines(runs: list[dict]) -> str:
    """A card's list of the runs behind its weights, when there was more than one."""
    if len(runs) < 2:
        return ""
    items = "".join(f"  {i}. {describe_run(run)}.\n" for i, run in enumerate(runs, 1))
    return f"- Every run behind these weights, oldest first:\n{items}"


def controlnet_card(
    run_dir: Path, folder: Path, resolution: int, metrics: dict, serves: list[str]
) -> str:
    """The card of a condition's ControlNet, or of the shared one for the conditions it serves;
    `run_dir`: the training run that made it (its training.json)."""
    summary = json.loads((run_dir / "training.json").read_text())
    config = summary["config"]
    shared = config["condition"] == EVERY_CONDITION
    start = ""
    if config["controlnet"]:
        start = (
            "continuing an earlier shared ControlNet's weights, "
            if shared
            else "from the ControlNet trained on every condition in turn (the shared start), then "
        )
    if shared:
        title = "every condition (shared)"
        maps = "the control maps of every condition in turn"
        use = shared_use(serves)
    else:
        title, use = serves[0], ""
        maps = f"their `{serves[0]}` control maps{replayed_maps(config)}"
    data = f"{resolution} px, train split"
    if drawn := map_versions_text(summary.get("map_versions", {}), config["condition"]):
        data += f"; {drawn}"
    size = f"{parameter_count(folder) / 1e6:.2f} M (stored in float16)"
    if is_lowrank(folder):
        lowrank = lowrank_settings(folder)
        size = (
            f"{parameter_count(lowrank_start(folder)) / 1e6:.2f} M, stored as the "
            f"rank-{lowrank['rank']} difference from the shared ControlNet "
            f"(`{lowrank['starts_from']}`, `cnet/lowrank.py`): "
            f"{parameter_count(folder) / 1e6:.2f} M numbers in float16"
        )
    from cnet.train.controlnet import GAIN_EXAMPLES

    gain = last_gain(summary.get("control_gains") or {})
    notes = ""
    if gain:
        notes += (
            "- Control gain (the loss with the maps swapped round the batch minus the loss with "
            f"the true maps, {GAIN_EXAMPLES} held-out examples): {gain['value']:.4f} at step "
            f"{gain['step']}.\n"
        )
    if "device" in summary:
        notes += f"- Trained on {summary['device']}.\n"
    notes += lineage_lines(recorded_runs(folder))
    return f"""# Embedded ControlNet: {title}

{use}The trainable copy of the embedded base's UNet encoder and middle block, joined to the locked
base by zero convolutions (diffusers `ControlNetModel`), trained by ControlNet Studio on synthetic
scenes with {maps} ({data}).

- Parameters: {size}.
- Training: {start}{summary["steps"]} steps, {describe_schedules(summary)},
  {empty_prompts(config)}; final loss
  {summary["final_loss"]:.4f} (mean of the last 100 steps {summary["mean_loss_last_100"]:.4f}).
{notes}
{figures(metrics, serves)}"""


def shared_use(serves: list[str]) -> str:
    """The shared ControlNet card's first paragraph."""
    if serves:
        until = "its own fine-tune ships" if len(serves) == 1 else "their own fine-tunes ship"
        served = f"It serves {', '.join(serves)} until {until}"
    else:
        served = "It serves no condition itself"
    return f"{served}; each condition's own ControlNet is a fine-tune of it.\n\n"


FIGURES_HEADING = "## Held-out test scenes"
KEPT_TABLE = "the first line of the preset's `eval/table.md`"


def figures(metrics: dict, serves: list[str]) -> str:
    """A ControlNet card's last section: the evaluation of the conditions it serves."""
    tables = "\n\n".join(
        (f"### {key}\n\n" if len(serves) > 1 else "") + metrics_table(metrics, key)
        for key in serves
    )
    tables = tables or "Every condition has its own ControlNet: their cards give the figures."
    # Which scenes and sampling: the evaluation kept beside the cards says (its first line), not a
    # claim here, which a short trial evaluation would make false.
    source = "; its scenes and sampling: " + KEPT_TABLE if any(map(metrics.get, serves)) else ""
    return f"""{FIGURES_HEADING} (`python -m cnet eval`{source})

{tables}
"""


def card_with_figures(card: str, metrics: dict, serves: list[str]) -> str:
    """A ControlNet's card (as `controlnet_card` wrote it) with its figures of `serves` rewritten
    from `metrics`, what it says of its training kept."""
    return card[: card.index(FIGURES_HEADING)] + figures(metrics, serves)


def shared_card_serving(card: str, serves: list[str], metrics: dict) -> str:
    """The shared ControlNet's card now serving `serves`: its first paragraph and figures
    rewritten."""
    title, _, body = card.split("\n\n", 2)
    return card_with_figures(f"{title}\n\n{shared_use(serves)}{body}", metrics, serves)


# A packed preset keeps the evaluation its cards quote: the reference the next model is compared
# with (`python -m cnet compare assets/embedded/eval outputs/eval`).
EVALUATION_FOLDER = "eval"


def keep_evaluation(source: Path, target: Path) -> None:
    from cnet.evaluate import REPORT_FILES

    target.mkdir()
    for name in REPORT_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, target / name)


def write_condition_controlnet(target: Path, tuned: Path, shared: Path) -> None:
    """A condition's fine-tune, stored as its low-rank difference from the shared ControlNet it
    started from (`shared`: a folder of the preset being written; the caller has checked that
    `tuned` continues it, lineage.continues)."""
    write_lowrank(target, tuned, shared, LOWRANK_RANK)
    shutil.copy(tuned / LINEAGE_FILE, target / LINEAGE_FILE)


def check_budget(size: int) -> None:
    """Refuse a packed preset of `size` bytes over the weights budget."""
    if size > WEIGHTS_BUDGET_BYTES:
        raise ValueError(
            f"The packed preset is {size / 1e6:.1f} MB, over the "
            f"{WEIGHTS_BUDGET_BYTES / 1e6:.0f} MB weights budget; narrow the architecture "
            "(cnet/architecture.py) and retrain."
        )


def swap_in(staging: Path, target: Path, size: int) -> None:
    """Put the folder `staging` in place of `target`, unless `size` (the packed preset's bytes
    once it is there) goes over the weights budget: then `staging` is removed and nothing moves."""
    try:
        check_budget(size)
    except ValueError:
        shutil.rmtree(staging)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def read_metrics(path: Path) -> dict:
    """`cnet eval`'s results.json: {condition: {prompt mode: figures}}."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable results.json of cnet eval ({error})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path} is not a results.json of cnet eval (no rows by condition)")
    return metrics


def check_evaluated(
    metrics_path: Path, model_dir: Path, replaced: Mapping[str, Path] | None = None
) -> list[str]:
    """Refuse the evaluation in `metrics_path`'s folder when it records other models than the
    preset in `model_dir` holds once the folders in `replaced` ({"base" or a condition: the
    folder whose lineage takes its place}) are in. Returns the conditions it cannot check: rows
    from an evaluation made before `cnet eval` recorded its models, or of models without a
    record of their runs (`lineage.json`)."""
    from cnet.comparison import load_scenes
    from cnet.evaluate import SCENES_FILE, model_differences
    from cnet.models import preset_from_dir

    folder, replaced = metrics_path.parent, replaced or {}
    scenes = load_scenes(folder) if (folder / SCENES_FILE).is_file() else {}
    made_by = scenes.get("models", {})
    preset = preset_from_dir(model_dir, device="cpu")
    size = scenes.get("sampling", {}).get("size", preset.resolution)
    if size != preset.resolution:  # another model's evaluation, or not as the preset samples
        raise ValueError(
            f"{folder} sampled {size} px images and {model_dir} makes {preset.resolution} px "
            "ones: evaluate the preset as it will ship (python -m cnet eval --model-dir "
            "PRESET, without --size)"
        )
    sources = {c: replaced.get(c) or preset.controlnet_source(c) for c in made_by}
    now = models_record(replaced.get("base", preset.base), sources)
    for condition, recorded in made_by.items():
        if differ := model_differences(recorded, now[condition]):
            held = "will hold with this run in it" if replaced else "holds"
            raise ValueError(
                f"{folder} evaluated {condition} with another {' and '.join(differ)} than "
                f"{model_dir} {held}: evaluate the preset as it will ship (install into a copy, "
                f"then python -m cnet eval --model-dir COPY; README, The embedded model)"
            )
    unknown = {c for c, recorded in made_by.items() if None in recorded.values()}
    return [c for c in read_metrics(metrics_path) if c not in made_by or c in unknown]


def check_packable(recipe: dict[str, Stage]) -> None:
    base = recipe["base"]
    if not base.finished():
        raise FileNotFoundError(
            f"The base is not trained yet ({base.result}); nothing to pack. Run "
            f"python -m cnet train embedded --runs {base.run_dir.parent}"
        )


def pack(recipe: dict[str, Stage], out: Path, metrics_path: Path | None = None) -> list[str]:
    """Copy the finished models to `out` in the embedded layout, with the evaluation in
    `metrics_path`'s folder when given; returns what is missing."""
    check_packable(recipe)
    metrics = read_metrics(metrics_path) if metrics_path else {}
    staging = out.with_name(out.name + ".packing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        missing = pack_into(staging, recipe, metrics, metrics_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, out, folder_bytes(staging))
    return missing


def check_same_base(stage: Stage, base: Stage) -> None:
    """Refuse a ControlNet trained on an earlier state of the base (trained again since): it
    would steer a UNet it never saw. Runs from before the base was recorded pass."""
    summary = json.loads((stage.run_dir / "training.json").read_text())
    if "base_lineage" in summary and summary["base_lineage"] != recorded_runs(base.result):
        raise ValueError(
            f"{stage.result} was trained on an earlier base than the one in {base.result} "
            f"(trained again since): remove {stage.run_dir} (and the fine-tunes of it) and train "
            f"it again: {train_command(stage)}"
        )


def pack_into(
    staging: Path, recipe: dict[str, Stage], metrics: dict, metrics_path: Path | None
) -> list[str]:
    """pack()'s work, in the empty folder `staging`; returns what is missing."""
    base = recipe["base"]
    resolution = json.loads((base.result / "architecture.json").read_text())["sample_size"]
    # sampled in the app as it was trained and evaluated: without the SD 1.5 words it never saw
    settings: dict = {
        "name": "embedded",
        "resolution": resolution,
        "cfg": PRESET_CFG,
        "added_prompt": "",
        "negative_prompt": "",
    }
    shared = staging / "controlnet" / SHARED_FOLDER
    if recipe[SHARED].finished():  # it serves the unfinished conditions and starts the others
        shutil.copytree(recipe[SHARED].result, shared)
        to_float16(shared)  # the others' differences are from the weights it ships with
    missing, shared_serves = [], []
    for name, stage in recipe.items():
        if name.startswith("controlnet-") and stage.finished():
            check_same_base(stage, base)
        if stage.ships_as is None:
            continue
        if not stage.finished():
            if not name.startswith("controlnet-"):
                missing.append(name)
            elif shared.is_dir():
                shared_serves.append(stage.config.condition)
            else:  # the fine-tunes start from it: it is the stage to finish first
                missing.append(SHARED)
            continue
        target = staging / stage.ships_as
        if name == "base":
            shutil.copytree(stage.result, target)
            (target / "README.md").write_text(base_card(stage, target))
        elif name == "captioner":  # its trainer writes its own card
            shutil.copytree(stage.result, target)
        elif shared.is_dir():
            if not continues(stage.result, recipe[SHARED].result):
                raise ValueError(
                    f"{stage.result} was fine-tuned from an earlier {SHARED} than the one in "
                    f"{recipe[SHARED].result} (trained again since): remove {stage.run_dir} and "
                    f"train it again: {train_command(stage)}"
                )
            write_condition_controlnet(target, stage.result, shared)
            condition = stage.config.condition
            card = controlnet_card(stage.run_dir, target, resolution, metrics, [condition])
            (target / "README.md").write_text(card)
        else:
            missing.append(SHARED)
    if shared.is_dir():
        card = controlnet_card(recipe[SHARED].run_dir, shared, resolution, metrics, shared_serves)
        (shared / "README.md").write_text(card)
    if shared_serves:
        settings["controlnets"] = {key: SHARED_FOLDER for key in shared_serves}
    settings.update(write_examples(staging, resolution))  # its own scenes under each tab
    (staging / "preset.json").write_text(json.dumps(settings, indent=2) + "\n")
    if metrics_path:
        if unchecked := check_evaluated(metrics_path, staging):
            print(
                f"note: {metrics_path.parent} does not record which models made its rows for "
                f"{', '.join(unchecked)}; the cards quote them unchecked."
            )
        keep_evaluation(metrics_path.parent, staging / EVALUATION_FOLDER)
    to_float16(staging)
    drop_local_paths(staging)
    return list(dict.fromkeys(missing))  # a missing shared ControlNet is named once


# ---- command line ----------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = Steps()
    parser.add_argument(
        "--runs",
        default="runs/embedded",
        help="checkpoints of every stage (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="STAGE",
        help=f"train only these stages (base, captioner, {SHARED}: the shared ControlNet, "
        f"controlnet-<condition>: {', '.join(CONDITION_KEYS)})",
    )
    for name, value in vars(defaults).items():
        parser.add_argument(
            f"--{name}-steps",
            type=non_negative_int,
            default=None,
            help=f"optimizer steps (default: as last given for --runs, else {value})",
        )
    parser.add_argument(
        "--vae-init",
        metavar="DIR",
        help="fine-tune this trained VAE (an AutoencoderKL folder, fewer latent channels allowed) "
        "in the base's VAE phase instead of training one from scratch",
    )
    parser.add_argument(
        "--base-init",
        metavar="DIR",
        help="start the whole base from this trained base pipeline folder (with --vae-steps 0: "
        "keep its VAE), e.g. to continue it on a new noise schedule in a new --runs folder",
    )
    parser.add_argument(
        "--pack", metavar="DIR", help="do not train: copy the finished models here (fp16)"
    )
    parser.add_argument(
        "--install",
        metavar="RUN",
        help="do not train: add this finished run to the preset packed in --pack: a condition "
        "fine-tune (the --output-dir of a `cnet train controlnet` run from the preset's shared "
        "ControlNet; stored as a low-rank difference from it) or a decoder (`cnet train decoder` "
        "run on the preset; it replaces base/vae) or an evaluation (a `cnet eval` --out folder of "
        "the preset: it replaces the one kept in eval/, and the cards quote it)",
    )
    parser.add_argument("--metrics", help="results.json of `python -m cnet eval`, for the cards")
    parser.add_argument(
        "--max-minutes",
        type=positive_number,
        default=None,
        help="stop cleanly after this many minutes of training, within whichever stage is "
        "running (checkpoint and export); the same command goes on from there",
    )
    parser.add_argument("--cpu-threads", type=positive_int, default=None, help="torch CPU threads")


def check_pack_target(out: Path, runs: Path, metrics: Path | None) -> None:
    """Refuse a --pack folder whose replacement would lose files: the training runs (or a
    folder holding them), a folder of other files that is no packed preset, or a preset's kept
    evaluation when no --metrics replaces it."""
    if out.resolve() == runs.resolve() or out.resolve() in runs.resolve().parents:
        raise ValueError(
            f"--pack {out} holds the training runs in {runs}, which packing would replace; "
            "pack into another folder, e.g. outputs/candidate"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--pack {out} is a file; give a new folder or a packed preset")
    if out.exists() and any(out.iterdir()) and not (out / "preset.json").is_file():
        raise ValueError(
            f"--pack {out} holds other files and no preset.json; packing replaces the whole "
            "folder, so give a new folder or a packed preset"
        )
    from cnet.evaluate import RESULTS_FILE

    kept = out / EVALUATION_FOLDER
    if kept.is_dir() and metrics is None:  # the reference the next candidate is compared with
        raise ValueError(
            f"--pack {out} keeps an evaluation in {kept}, which packing would drop: give "
            f"--metrics {kept / RESULTS_FILE} to keep it (the cards quote it), or remove {kept} "
            "if it no longer describes these models"
        )


def run(args: argparse.Namespace) -> int:
    import torch

    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    metrics = Path(args.metrics) if args.metrics else None
    try:
        return run_command(args, metrics)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a read-only or full disk
        print(f"error: {error}", file=sys.stderr)
        return 1


def refuse_dropped_flags(args: argparse.Namespace) -> None:
    """Flags the chosen mode would ignore are refused, not dropped without a word."""
    if args.pack:
        for flag, value in (("--only", args.only), ("--max-minutes", args.max_minutes)):
            if value is not None:
                raise ValueError(f"{flag} is for training; --pack trains nothing: leave it out")
    elif args.metrics:
        raise ValueError("--metrics is for --pack DIR (the cards quote it); training reads none")


def run_command(args: argparse.Namespace, metrics: Path | None) -> int:
    if args.install and not args.pack:
        print(
            "error: --install needs --pack DIR, the packed preset to add the run to",
            file=sys.stderr,
        )
        return 2
    refuse_dropped_flags(args)
    if args.install:
        from cnet.train.install import install

        what = install(Path(args.install), Path(args.pack), metrics)
        print(f"Installed {what}; the preset is {folder_bytes(Path(args.pack)) / 1e6:.1f} MB.")
        return 0
    given = {name: getattr(args, f"{name}_steps") for name in vars(Steps())}
    given = {name: value for name, value in given.items() if value is not None}
    names = list(stages(Path(args.runs)))  # checked before any steps are remembered
    if unknown := sorted(set(args.only or ()) - set(names)):
        print(
            f"error: unknown stage {', '.join(unknown)}; choose from {', '.join(names)}",
            file=sys.stderr,
        )
        return 2
    if args.pack:
        check_pack_target(Path(args.pack), Path(args.runs), metrics)
    steps = recipe_steps(Path(args.runs), given)
    recipe = stages(Path(args.runs), steps, args.vae_init, args.base_init)
    # a refused command remembers nothing
    if args.pack:
        check_packable(recipe)
    else:
        from cnet.train.base import check_starts

        check_needs(recipe, args.only)
        check_starts(recipe["base"].config)
    reopened = reopened_stages(recipe, Path(args.runs), given, args)  # before they are remembered
    if given or not args.pack:
        remember_steps(Path(args.runs), steps)
    print("Steps: " + ", ".join(f"{name} {n}" for name, n in vars(steps).items()))
    if reopened:
        print(reopened_note(recipe, reopened))
    if not args.pack:
        train_all(recipe, args.only, args.max_minutes)
        return 0
    missing = pack(recipe, Path(args.pack), metrics)
    print(f"Packed into {args.pack} ({folder_bytes(Path(args.pack)) / 1e6:.1f} MB).")
    shared = json.loads((Path(args.pack) / "preset.json").read_text()).get("controlnets")
    if shared:
        print(f"Served by the shared ControlNet until their own finish: {', '.join(shared)}.")
    if missing:
        print(f"Not finished, so not packed: {', '.join(missing)}.")
    if SHARED in missing:
        print(
            f"warning: no condition has a ControlNet until {SHARED} finishes: the app will show "
            "control maps and say what is missing at Run."
        )
    return 0
