"""Is one evaluated model better than another? Paired differences on the same held-out scenes.

`python -m cnet eval` writes every scene's figures to `scenes.json`. Two evaluations of the same
test scenes pair up scene by scene, so what the scenes themselves make easy or hard cancels out,
and a bootstrap over the scenes gives each mean difference a 95 % interval. A change whose
interval holds 0 is within the noise of 100 scenes: "the evaluation improves" means an interval
above 0.

    python -m cnet compare outputs/eval-old outputs/eval-new
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnet.cli.options import output_file
from cnet.evaluate import COLUMNS, SCENES_FILE

FIGURES = {
    **COLUMNS,
    "shown_iou": "shown objects' IoU",
    "shown_color_accuracy": "shown objects' colour",
    "caption_names_first_pass": "caption names first pass",
    "second_pass_follows_caption": "second pass follows caption",
}
MEAN_ROW = "mean of the conditions"
RESAMPLES = 10_000
SCENES_KEYS = ("sampling", "seeds", "figures")  # what every scenes.json holds


@dataclass(frozen=True)
class Change:
    old: float
    new: float
    low: float  # the 95 % interval of new - old
    high: float
    scenes: int

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "within noise"


# What a model folder, a pipeline or a training run holds, and an evaluation does not.
MODEL_FILES = ("preset.json", "model_index.json", "training.json", "config.json")


def load_scenes(folder: Path) -> dict:
    path = Path(folder) / SCENES_FILE
    again = f"evaluate that model again with `python -m cnet eval --out {folder}`"
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give an evaluation's --out folder.")
    kept = Path(folder) / "eval"  # where a packed preset keeps the evaluation its cards quote
    if not path.is_file() and (kept / SCENES_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} is a model folder: give the evaluation it keeps, {kept}."
        )
    if not path.is_file() and any((Path(folder) / name).is_file() for name in MODEL_FILES):
        raise FileNotFoundError(
            f"{folder} holds a model or a training run, not an evaluation: give an evaluation's "
            "folder (python -m cnet eval --model-dir MODEL --out DIR writes one)."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {SCENES_FILE}: {again} (older evaluations did not write one)."
        )
    try:
        run = json.loads(path.read_text())
    except ValueError as error:  # not JSON, or not UTF-8 text
        raise ValueError(f"{path} is not readable JSON ({error}); {again}.") from None
    if problem := damage(run):
        raise ValueError(f"{path} is damaged: {problem}; {again}.")
    return run


def damage(run: object) -> str | None:
    """What keeps `run` from being a whole scenes.json (cut short, edited by hand), or None."""
    if not isinstance(run, dict):
        return "not a JSON object"
    if missing := [key for key in SCENES_KEYS if key not in run]:
        return f"no {missing[0]!r} key"
    if not isinstance(run["seeds"], list) or not all(isinstance(s, int) for s in run["seeds"]):
        return "its seeds are not a list of whole numbers"
    if not isinstance(run["sampling"], dict):
        return "its sampling is not an object (size, steps, cfg)"
    for key in ("scenes_with", "map_versions"):
        if not isinstance(run.get(key, {}), dict):
            return f"its {key} is not an object of conditions"
    if not isinstance(run["figures"], dict):
        return "its figures are not an object of conditions"
    for condition, settings in run["figures"].items():
        if not isinstance(settings, dict):
            return f"{condition}: not an object of settings"
        for setting, figures in settings.items():
            if not isinstance(figures, dict):
                return f"{condition}, {setting}: not an object of figures"
            for name, values in figures.items():
                if not isinstance(values, list) or not all(
                    value is None or isinstance(value, int | float) for value in values
                ):
                    return f"{condition}, {setting}: {name} is not a list of numbers"
                if len(values) != len(run["seeds"]):
                    return (
                        f"{condition}, {setting}: {len(values)} values of {name} for "
                        f"{len(run['seeds'])} scenes"
                    )
    return None


def paired_change(old: np.ndarray, new: np.ndarray, seed: int = 0) -> Change | None:
    """Means and the bootstrap interval of the mean difference over the pairs where both runs
    have a figure (NaN: none, as for a scene with no shown object); None when no pair does."""
    both = ~(np.isnan(old) | np.isnan(new))
    old, new = old[both], new[both]
    if not len(old):
        return None
    differences = new - old
    picks = np.random.default_rng(seed).integers(0, len(differences), (RESAMPLES, len(differences)))
    low, high = np.percentile(differences[picks].mean(axis=1), [2.5, 97.5])
    return Change(float(old.mean()), float(new.mean()), float(low), float(high), len(old))


def aligned(run: dict, seeds: list[int], condition: str, setting: str, name: str) -> np.ndarray:
    """One figure of one row, in the order of `seeds`, NaN where the scene has none (and for a
    figure the run's version of the eval did not write)."""
    values = run["figures"][condition][setting].get(name, [None] * len(run["seeds"]))
    by_seed = dict(zip(run["seeds"], values, strict=True))
    return np.array([np.nan if by_seed[s] is None else by_seed[s] for s in seeds], np.float64)


def mean_over_conditions(rows: list[np.ndarray]) -> np.ndarray:
    """Per scene, the mean of the conditions that have the figure there (NaN where none has)."""
    stacked = np.stack(rows)
    counts = (~np.isnan(stacked)).sum(axis=0)
    sums = np.nansum(stacked, axis=0)
    return np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)


def tested_on(run: dict, condition: str) -> tuple[list[str] | None, int]:
    """What an evaluation (its scenes.json) tested `condition` on: the kinds each scene was made
    to hold (None: the seeds' own scenes) and the version of the map drawn; evaluations from
    before either was recorded name neither."""
    versions = run.get("map_versions", {})
    return run.get("scenes_with", {}).get(condition), versions.get(condition, 1)


def other_scenes(old: dict, new: dict) -> list[str]:
    """The conditions both runs scored but on different scenes or maps of the same seeds (pose,
    from before its test scenes each held a person; scribble, from before its maps drew the
    horizon): their figures do not pair."""
    shared = [c for c in new["figures"] if c in old["figures"]]
    return [c for c in shared if tested_on(old, c) != tested_on(new, c)]


def one_run_only(old: dict, new: dict) -> list[str]:
    """The rows ("condition, setting") only one of the runs scored, each named with its run."""
    rows = []
    for name, this, other in (("old", old, new), ("new", new, old)):
        rows += [
            f"{condition} {setting} ({name} only)"
            for condition, settings in this["figures"].items()
            for setting in settings
            if setting not in other["figures"].get(condition, {})
        ]
    return rows


def compare(old: dict, new: dict) -> dict[tuple[str, str, str], Change]:
    """{(condition, setting, figure): Change} for every row both runs have, on the scenes both
    scored, in the new run's order; after each setting's conditions, the mean of the conditions
    (averaged within each scene, so the bootstrap resamples scenes, not condition-scene pairs
    that share one). Conditions scored on `other_scenes` are left out."""
    scored = set(old["seeds"])
    seeds = [seed for seed in new["seeds"] if seed in scored]
    if not seeds:
        raise ValueError(
            "The two evaluations share no scene: run both with the same --split and --scenes."
        )
    apart = other_scenes(old, new)
    rows = [
        (condition, setting)
        for condition, settings in new["figures"].items()
        for setting in settings
        if setting in old["figures"].get(condition, {}) and condition not in apart
    ]
    changes: dict[tuple[str, str, str], Change] = {}
    for setting in dict.fromkeys(setting for _, setting in rows):
        conditions = [condition for condition, s in rows if s == setting]
        sides = {
            (c, name): (
                aligned(old, seeds, c, setting, name),
                aligned(new, seeds, c, setting, name),
            )
            for c in conditions
            for name in FIGURES
        }
        for (condition, name), (before, after) in sides.items():
            if change := paired_change(before, after):
                changes[condition, setting, name] = change
        for name in COLUMNS if len(conditions) > 1 else ():
            before, after = (
                mean_over_conditions([sides[c, name][side] for c in conditions]) for side in (0, 1)
            )
            if change := paired_change(before, after):
                changes[MEAN_ROW, setting, name] = change
    return changes


def format_comparison(changes: dict[tuple[str, str, str], Change]) -> str:
    lines = [
        "| condition | setting | figure | old | new | change | 95 % interval | scenes | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (condition, setting, name), c in changes.items():
        lines.append(
            f"| {condition} | {setting} | {FIGURES[name]} | {c.old:.3f} | {c.new:.3f} | "
            f"{c.new - c.old:+.3f} | {c.low:+.3f} … {c.high:+.3f} | {c.scenes} | {c.verdict} |"
        )
    return "\n".join(lines)


def sampling_line(label: str, run: dict) -> str:
    s = run["sampling"]
    # Evaluations from before the sampler was recorded all used DDPM; None: the preset's default.
    sampler = s.get("sampler", "DDPM") or "the preset's default sampler"
    cfg = s.get("cfg", "?")  # "?": a key edited out of the file
    if cfg is None:
        cfg = "the preset's default"
    elif isinstance(cfg, int | float):
        cfg = f"{cfg:g}"
    return (
        f"{label}: {len(run['seeds'])} scenes, {s.get('size', '?')} px, {s.get('steps', '?')} "
        f"steps of {sampler}, CFG {cfg}"
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", type=Path, help="an evaluation's output folder (`cnet eval --out`)")
    parser.add_argument("new", type=Path, help="another, of the same test scenes")
    parser.add_argument(
        "--out",
        type=output_file,
        default=None,
        help="also write the table to this file (a folder: to comparison.md in it)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        old, new = load_scenes(args.old), load_scenes(args.new)
        changes = compare(old, new)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = "\n".join(
        [
            sampling_line(f"old ({args.old})", old),
            sampling_line(f"new ({args.new})", new),
            "",
            "new - old on the same scenes; 95 % bootstrap interval of the mean difference:",
            "",
            format_comparison(changes),
        ]
    )
    if apart := other_scenes(old, new):
        text += f"\n\nLeft out, scored on other scenes or maps by the two runs: {', '.join(apart)}."
    if lone := one_run_only(old, new):
        text += f"\n\nScored by one run only, so not compared: {', '.join(lone)}."
    print(text)
    if args.out:
        out = args.out / "comparison.md" if args.out.is_dir() else args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0
