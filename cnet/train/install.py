"""One finished run or evaluation into a packed embedded preset, as `--pack` would have written it.

    python -m cnet train embedded --install runs/embedded/controlnet-canny --pack assets/embedded
    python -m cnet train embedded --install runs/decoder --pack assets/embedded
    python -m cnet train embedded --install outputs/eval --pack assets/embedded

A condition's fine-tune of the preset's shared ControlNet goes in as its low-rank difference from
that one, with its card, and preset.json and the shared card stop naming the condition. A decoder
tuned on the preset (`cnet train decoder --model-dir` it) replaces `base/vae/`; the base's
lineage.json and card follow. Either way the preset is refused when it would go over the weights
budget, and `--metrics` keeps the evaluation the cards quote. An evaluation of the preset
(`cnet eval --out` folder) replaces the one it keeps, and every ControlNet card quotes its figures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cnet.evaluate import RESULTS_FILE
from cnet.synth.sample import CONDITION_KEYS
from cnet.train.embedded import (
    EVALUATION_FOLDER,
    LOWRANK_RANK,
    SHARED_FOLDER,
    card_with_figures,
    check_evaluated,
    controlnet_card,
    folder_bytes,
    keep_evaluation,
    lineage_lines,
    read_metrics,
    shared_card_serving,
    swap_in,
    to_float16,
    write_condition_controlnet,
)
from cnet.train.lineage import LINEAGE_FILE, continues, recorded_runs

# What a decoder must share with the VAE it replaces (lineage alone cannot tell two bases apart
# when neither records one)
VAE_SHAPE = ("block_out_channels", "latent_channels", "layers_per_block", "in_channels")
RUN_HINT = (
    "give the --output-dir of a `python -m cnet train controlnet` or `train decoder` run, or of "
    "a `python -m cnet eval` of the preset"
)


def install(run_dir: Path, out: Path, metrics_path: Path | None = None) -> str:
    """Add the finished run (or the evaluation) in `run_dir` to the preset packed in `out`;
    returns what went where."""
    if (run_dir / RESULTS_FILE).is_file() and not (run_dir / "training.json").is_file():
        if metrics_path and metrics_path.resolve() != (run_dir / RESULTS_FILE).resolve():
            raise ValueError(
                f"{run_dir} is an evaluation, which brings its own figures: leave out --metrics"
            )
        cards = install_evaluation(run_dir / RESULTS_FILE, out)
        return f"the evaluation of {run_dir} in {out / EVALUATION_FOLDER}, quoted by {cards}"
    kept = out / EVALUATION_FOLDER / RESULTS_FILE
    metrics_path = metrics_path or (kept if kept.is_file() else None)  # the cards keep quoting it
    if (run_dir / "vae").is_dir():
        install_decoder(run_dir, out, metrics_path)
        return f"the decoder of {run_dir / 'vae'} in {out / 'base' / 'vae'}"
    condition = install_controlnet(run_dir, out, metrics_path)
    return f"{condition}'s ControlNet in {out / 'controlnet' / condition} (rank {LOWRANK_RANK})"


def finished_summary(run_dir: Path, result: str, planned_key: str) -> dict:
    """The training.json of a run that has saved `result` and trained every planned step."""
    summary_path = run_dir / "training.json"
    if not (summary_path.is_file() and (run_dir / result).is_dir()):
        raise FileNotFoundError(
            f"{run_dir} holds no finished run (training.json and {result}/): {RUN_HINT}"
        )
    summary = json.loads(summary_path.read_text())
    planned = summary["config"][planned_key]
    if summary["steps"] < planned:
        raise ValueError(
            f"{run_dir} stopped at step {summary['steps']} of {planned}: finish it first (its "
            "command again; a ControlNet run with --resume latest)"
        )
    return summary


def install_folder(staging: Path, target: Path, out: Path) -> None:
    """Put `staging` (a folder inside the preset `out`) in place of `target` in it, within the
    weights budget."""
    replaced = folder_bytes(target) if target.is_dir() else 0
    swap_in(staging, target, folder_bytes(out) - replaced)


def is_new_evaluation(out: Path, metrics_path: Path | None) -> bool:
    """Whether `metrics_path` is another evaluation than the one the preset in `out` keeps."""
    kept = (out / EVALUATION_FOLDER).resolve()
    return metrics_path is not None and metrics_path.parent.resolve() != kept


def replace_evaluation(out: Path, metrics_path: Path | None) -> None:
    if is_new_evaluation(out, metrics_path):
        evaluation = out / EVALUATION_FOLDER
        shutil.rmtree(evaluation, ignore_errors=True)
        keep_evaluation(metrics_path.parent, evaluation)


def shared_serves(controlnets: dict[str, str]) -> list[str]:
    """The conditions a preset.json's "controlnets" sends to the shared ControlNet."""
    return [key for key, folder in controlnets.items() if folder == SHARED_FOLDER]


def install_evaluation(metrics_path: Path, out: Path) -> str:
    """`cnet eval`'s results.json of the preset packed in `out` in place of the evaluation it
    keeps, and every ControlNet card's figures rewritten from it; returns the cards' folders."""
    preset_path = out / "preset.json"
    if not preset_path.is_file():
        raise FileNotFoundError(
            f"{out} is not a packed preset (no preset.json); pack one first: python -m cnet "
            f"train embedded --pack {out}"
        )
    metrics = read_metrics(metrics_path)
    unchecked = check_evaluated(metrics_path, out)
    serves = shared_serves(json.loads(preset_path.read_text()).get("controlnets", {}))
    cards = sorted((out / "controlnet").glob("*/README.md"))
    quoted = serves + [card.parent.name for card in cards if card.parent.name != SHARED_FOLDER]
    if missing := [condition for condition in quoted if condition not in metrics]:
        raise ValueError(
            f"{metrics_path} has no rows for {', '.join(missing)}, whose cards quote them: "
            f"evaluate those too, or merge with the kept evaluation (python -m cnet eval "
            f"--into {out / EVALUATION_FOLDER} ...)"
        )
    for card in cards:
        name, text = card.parent.name, card.read_text()
        if name == SHARED_FOLDER:
            card.write_text(shared_card_serving(text, serves, metrics))
        else:
            card.write_text(card_with_figures(text, metrics, [name]))
    replace_evaluation(out, metrics_path)
    quoted_by = ", ".join(f"controlnet/{card.parent.name}" for card in cards) or "no card"
    if unchecked:  # rows kept (--into) from an evaluation older than its record of the models
        quoted_by += f" (not checked to be of this preset's models: {', '.join(unchecked)})"
    return quoted_by


def install_controlnet(run_dir: Path, out: Path, metrics_path: Path | None = None) -> str:
    """A condition's fine-tune (a `cnet train controlnet` run folder) as its low-rank difference
    from the preset's shared ControlNet, with its card; preset.json, the shared card and the
    evaluation updated. Returns the condition."""
    summary = finished_summary(run_dir, "controlnet", "max_steps")
    condition = summary["config"]["condition"]
    if condition is None:
        raise ValueError(
            f"{run_dir} trained on a folder's maps without --condition naming their condition, "
            "so --install cannot tell where it goes: train it with --condition (e.g. "
            "--condition depth)"
        )
    if condition not in CONDITION_KEYS:
        raise ValueError(
            f"{run_dir} trained on {condition} maps; --install takes one condition's fine-tune "
            f"({', '.join(CONDITION_KEYS)})"
        )
    shared, preset_path = out / "controlnet" / SHARED_FOLDER, out / "preset.json"
    if not (preset_path.is_file() and (shared / "config.json").is_file()):
        raise FileNotFoundError(
            f"{out} is not a packed preset with a shared ControlNet in {shared}; pack one first: "
            f"python -m cnet train embedded --pack {out}"
        )
    metrics = read_metrics(metrics_path) if metrics_path else {}
    settings = json.loads(preset_path.read_text())
    target = out / "controlnet" / condition
    staging = target.with_name(condition + ".installing")
    shutil.rmtree(staging, ignore_errors=True)
    tuned = run_dir / "controlnet"
    if not continues(tuned, shared):
        raise ValueError(
            f"{tuned} was not fine-tuned from the shared ControlNet in {shared} (its lineage.json "
            f"does not continue that one's): fine-tune it from there, e.g. python -m cnet train "
            f"controlnet --controlnet {shared} --condition <condition> (README, The embedded model)"
        )
    if is_new_evaluation(out, metrics_path):
        check_evaluated(metrics_path, out, {condition: tuned})
    write_condition_controlnet(staging, tuned, shared)
    to_float16(staging)
    card = controlnet_card(run_dir, staging, settings["resolution"], metrics, [condition])
    (staging / "README.md").write_text(card)
    install_folder(staging, target, out)

    served = dict(settings.get("controlnets", {}))
    served.pop(condition, None)  # controlnet/<condition>/ is where a preset looks first
    if served:
        settings["controlnets"] = served
    else:
        settings.pop("controlnets", None)
    preset_path.write_text(json.dumps(settings, indent=2) + "\n")
    shared_card = shared / "README.md"
    if shared_card.is_file():
        card = shared_card_serving(shared_card.read_text(), shared_serves(served), metrics)
        shared_card.write_text(card)
    replace_evaluation(out, metrics_path)
    return condition


def install_decoder(run_dir: Path, out: Path, metrics_path: Path | None = None) -> None:
    """A decoder tuned on this preset (a `cnet train decoder` run folder) in place of
    `base/vae/`, in float16, with the base's lineage.json and card following it."""
    summary = finished_summary(run_dir, "vae", "steps")
    base = out / "base"
    if not (base / "vae" / "config.json").is_file():
        raise FileNotFoundError(
            f"{out} holds no base with a VAE in {base / 'vae'}; pack one first: python -m cnet "
            f"train embedded --pack {out}"
        )
    shapes = [
        json.loads((folder / "config.json").read_text())
        for folder in (run_dir / "vae", base / "vae")
    ]
    differ = [key for key in VAE_SHAPE if shapes[0].get(key) != shapes[1].get(key)]
    if not continues(run_dir, base) or differ:
        raise ValueError(
            f"{run_dir} tuned the decoder of another base (its lineage.json does not continue "
            f"{base}'s{'; its VAE differs in ' + ', '.join(differ) if differ else ''}): tune "
            f"this one's, python -m cnet train decoder --model-dir {out}"
        )
    if is_new_evaluation(out, metrics_path):
        check_evaluated(metrics_path, out, {"base": run_dir})
    staging = base / "vae.installing"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run_dir / "vae", staging)
    to_float16(staging)
    install_folder(staging, base / "vae", out)
    shutil.copy(run_dir / LINEAGE_FILE, base / LINEAGE_FILE)
    card = base / "README.md"
    if card.is_file():
        card.write_text(base_card_with_decoder(card.read_text(), summary, recorded_runs(run_dir)))
    replace_evaluation(out, metrics_path)


def base_card_with_decoder(card: str, summary: dict, runs: list[dict]) -> str:
    """The base's card (as `--pack` wrote it) once a decoder run, the last of `runs`, replaced its
    VAE's decoder: its VAE line and its list of runs rewritten, the rest kept."""
    before, after = summary["held_out_l1_before"], summary["held_out_l1_after"]
    vae = (
        f"- VAE: its encoder kept, so the UNet's latents are unchanged; its decoder last tuned "
        f"{summary['steps']} steps on the latents this preset samples and on encoded images "
        f"(run {len(runs)} below, `cnet train decoder`): held-out L1 from sampled latents "
        f"{after['sampled']:.4f} from {before['sampled']:.4f}, from encoded ones "
        f"{after['encoded']:.4f} from {before['encoded']:.4f}; mean loss of the last 100 steps "
        f"{summary['mean_loss_last_100']:.4f}.\n"
    )
    lines = card.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith("- VAE:"))
    end = next(i for i in range(first + 1, len(lines)) if lines[i].startswith("- "))
    lines[first:end] = [vae]
    card = "".join(lines)
    listed = card.find("- Every run behind these weights")
    if listed < 0:  # a base of one run: the list goes before the closing paragraph
        listed = card.index("\n\n", card.index("- Latent scaling factor")) + 1
        return card[:listed] + lineage_lines(runs) + card[listed:]
    return card[:listed] + lineage_lines(runs) + card[card.index("\n\n", listed) + 1 :]
