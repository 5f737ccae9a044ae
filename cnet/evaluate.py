"""Does a ControlNet follow its control? Scores on held-out synthetic scenes.

For each condition and prompt mode, the engine generates one image per test scene (or validation
scene, to choose settings on) from that scene's control map, and three figures compare it with
the scene's ground truth:

- foreground IoU: pixels that differ from the empty scene (background and floor alone) against
  the union of the objects' masks;
- shape IoU: the same against the image's own background, the empty scene's wall and floor each
  in the median colour the generated image has there. A wrong background colour counts against
  foreground IoU (every background pixel then differs); shape IoU asks only where the objects
  are. It matters most with no prompt, where nothing says what colour the background is;
- colour accuracy: each object's colour, read off the generated image with the scene's own shading
  divided out, against the colour the prompt names;
- edge F1 (canny, hough): Canny edges of the generated image against the control map's lines,
  within a small pixel tolerance.

Control strength 0 gives the same figures without control: the baseline that must be far below.
A second table gives the IoUs apart in the scenes with a floor and in those without.

The automatic prompt mode never sees the scene's prompt, so its colours can only match by chance;
two more figures say whether its two passes agree with each other: the share of objects whose
colour in the first-pass image the caption names (does the captioner read generated images?), and
the share whose colour in the final image the caption names (does the second pass follow it?).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np

from cnet.cli.options import model_folder, nearest_existing, output_folder, positive_int
from cnet.detectors.edges import CannyDetector
from cnet.engine import SAMPLERS
from cnet.imageio import ImageLike, to_rgb_array
from cnet.progress import quiet_library_bars
from cnet.synth import CONDITION_KEYS, Sample, generate, split_seeds
from cnet.synth.maps import MAP_SHOWS_ONLY, redrawn_maps, training_kinds
from cnet.synth.palette import OBJECT_COLORS
from cnet.synth.render import Render, render
from cnet.synth.sample import condition_sample
from cnet.synth.scene import sample_scene

# Largest per-channel difference from the empty scene that still counts as empty. Shading makes
# the dark side of an object close to a dark floor, so this sits low; a 3x3 median removes the
# speckle a sampler leaves in flat areas.
FOREGROUND_THRESHOLD = 20
EDGE_TOLERANCE = 2  # pixels
EDGE_CONDITIONS = ("canny", "hough")
TABLE_FILE = "table.md"
RESULTS_FILE = "results.json"
SCENES_FILE = "scenes.json"  # every scene's figures (`scene_figures`), for `python -m cnet compare`
GRID_FILE = "samples.png"
NEW_GRID_FILE = "samples.new.png"  # until the other files are written beside it
# and which models made each condition's rows ("models", `evaluated_models`)
REPORT_FILES = (TABLE_FILE, RESULTS_FILE, SCENES_FILE)  # what a packed preset keeps of a run
SETTINGS = {  # name -> (prompt mode, control strength)
    "user prompt": ("user", 1.0),
    "no prompt": ("none", 1.0),
    "automatic prompt": ("auto", 1.0),  # default-prompt pass, BLIP caption, second pass
    "no control": ("user", 0.0),
}

_canny = CannyDetector()  # the same edges the canny condition draws its maps with


@dataclass
class Scores:
    iou: float
    color_accuracy: float
    edge_f1: float | None = None
    shape_iou: float | None = None
    caption_names_first_pass: float | None = None  # automatic prompt mode only
    second_pass_follows_caption: float | None = None
    shown_iou: float | None = None  # maps that show only some objects: IoU on those alone
    shown_color_accuracy: float | None = None  # and colour accuracy on those alone


def empty_render(sample: Sample) -> Render:
    """The scene's background and floor with every object taken away."""
    return render(replace(sample.scene, objects=()), sample.image.shape[0])


def empty_scene(sample: Sample) -> np.ndarray:
    return empty_render(sample).rgb


def iou_against(
    generated: np.ndarray, empty: np.ndarray, truth: np.ndarray, ignored: np.ndarray | None = None
) -> float:
    """IoU of the pixels that differ from `empty` with `truth`, the `ignored` pixels left out."""
    difference = np.abs(generated.astype(np.int16) - empty.astype(np.int16))
    predicted = cv2.medianBlur(difference.max(axis=2).astype(np.uint8), 3) > FOREGROUND_THRESHOLD
    if ignored is not None:
        predicted, truth = predicted & ~ignored, truth & ~ignored
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def foreground_iou(generated: np.ndarray, sample: Sample) -> float:
    return iou_against(generated, empty_scene(sample), sample.masks.any(axis=0))


def shown_iou(generated: np.ndarray, sample: Sample, kinds: tuple[str, ...]) -> float | None:
    """Foreground IoU on the objects of `kinds` alone, the other objects' pixels left out: how
    well a map that shows only those places them. None when the scene has none of them in view."""
    shown = np.array([obj.kind in kinds for obj in sample.scene.objects])
    truth = sample.masks[shown].any(axis=0)
    if not truth.any():
        return None
    return iou_against(generated, empty_scene(sample), truth, sample.masks[~shown].any(axis=0))


def shape_iou(generated: np.ndarray, sample: Sample) -> float:
    """Foreground IoU against the empty scene's regions (wall, floor) in the generated image's own
    median colours there. The objects are a minority of each region, so the median is its colour."""
    regions = empty_render(sample).ids
    own = np.empty_like(generated)
    for region in np.unique(regions):
        where = regions == region
        own[where] = np.median(generated[where], axis=0)
    return iou_against(generated, own, sample.masks.any(axis=0))


def nearest_color(rgb: np.ndarray) -> str:
    names = list(OBJECT_COLORS)
    table = np.array([OBJECT_COLORS[n] for n in names], np.float32)
    return names[int(np.linalg.norm(table - rgb, axis=1).argmin())]


def object_colors(generated: np.ndarray, sample: Sample) -> list[str | None]:
    """The palette colour each object shows in `generated` (None where it is hidden).

    Only the pixels of the object's named colour count (a person's skin does not), eroded so a
    boundary that is off by a pixel does not decide, and the scene's Lambert shading (target /
    albedo) is divided out so a shaded red is still red.
    """
    albedo = sample.render.albedo * 255
    shade = sample.image.astype(np.float32).sum(axis=2) / np.maximum(albedo.sum(axis=2), 1e-3)
    found: list[str | None] = []
    for mask, obj in zip(sample.masks, sample.attributes["objects"], strict=True):
        own = mask & np.all(np.abs(albedo - OBJECT_COLORS[obj["color"]]) < 1.0, axis=2)
        inner = cv2.erode(own.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        pixels = inner if inner.sum() >= 4 else own
        if pixels.sum() == 0:
            found.append(None)
            continue
        lit = generated[pixels].astype(np.float32).sum(axis=0) / shade[pixels].sum()
        found.append(nearest_color(lit))
    return found


def color_hits(
    generated: np.ndarray, sample: Sample, kinds: tuple[str, ...] | None = None
) -> list[bool]:
    """Per visible object (of `kinds` alone, if given): does it show the colour the prompt names?"""
    objects = sample.attributes["objects"]
    return [
        seen == obj["color"]
        for seen, obj in zip(object_colors(generated, sample), objects, strict=True)
        if seen is not None and (kinds is None or obj["kind"] in kinds)
    ]


def color_accuracy(generated: np.ndarray, sample: Sample) -> float:
    hits = color_hits(generated, sample)
    return float(np.mean(hits)) if hits else 1.0


def shown_color_accuracy(
    generated: np.ndarray, sample: Sample, kinds: tuple[str, ...]
) -> float | None:
    """Colour accuracy on the objects of `kinds` alone; None when none of them is in view."""
    hits = color_hits(generated, sample, kinds)
    return float(np.mean(hits)) if hits else None


def caption_agreement(generated: np.ndarray, sample: Sample, caption: str) -> float:
    """The share of the objects visible in `generated` whose colour the caption gives an object
    of their kind ("a red cube": a cube that shows red)."""
    from cnet.captioner import scene_words

    named = scene_words(caption)
    kinds = [obj["kind"] for obj in sample.attributes["objects"]]
    pairs = [
        (colour, kind)
        for colour, kind in zip(object_colors(generated, sample), kinds, strict=True)
        if colour is not None
    ]
    return float(np.mean([pair in named for pair in pairs])) if pairs else 1.0


def edge_f1(generated: np.ndarray, control_map: np.ndarray) -> float:
    """F1 of the generated image's Canny edges against the control map's white lines."""
    edges = _canny.detect(generated) > 0
    lines = control_map.max(axis=2) > 127
    if not edges.any() and not lines.any():
        return 1.0
    if not edges.any() or not lines.any():
        return 0.0
    kernel = np.ones((2 * EDGE_TOLERANCE + 1,) * 2, np.uint8)
    near_lines = cv2.dilate(lines.astype(np.uint8), kernel).astype(bool)
    near_edges = cv2.dilate(edges.astype(np.uint8), kernel).astype(bool)
    precision = (edges & near_lines).sum() / edges.sum()
    recall = (lines & near_edges).sum() / lines.sum()
    return float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0


def score(generated: ImageLike, sample: Sample, condition: str) -> Scores:
    """`generated` (an engine's PIL image, or any image `to_rgb_array` reads) against the scene."""
    generated = to_rgb_array(generated)
    edge = (
        edge_f1(generated, sample.conditions[condition]) if condition in EDGE_CONDITIONS else None
    )
    shown = MAP_SHOWS_ONLY.get(condition)
    return Scores(
        foreground_iou(generated, sample),
        color_accuracy(generated, sample),
        edge,
        shape_iou=shape_iou(generated, sample),
        shown_iou=shown_iou(generated, sample, shown) if shown else None,
        shown_color_accuracy=shown_color_accuracy(generated, sample, shown) if shown else None,
    )


# {condition: {setting: [Scores of each scene, in seed order]}}
PerScene = dict[str, dict[str, list[Scores]]]


def mean_scores(scores: Sequence[Scores]) -> Scores:
    def mean(name: str) -> float | None:
        values = [getattr(s, name) for s in scores if getattr(s, name) is not None]
        return float(np.mean(values)) if values else None

    return Scores(**{f.name: mean(f.name) for f in fields(Scores)})


def mean_table(per_scene: PerScene) -> dict[str, dict[str, Scores]]:
    return {c: {name: mean_scores(rows) for name, rows in r.items()} for c, r in per_scene.items()}


def scene_figures(
    per_scene: PerScene, seeds: Sequence[int], sampling: Sampling, models: Mapping[str, dict]
) -> dict:
    """scenes.json: every scene's figures, so two runs on the same scenes can be compared scene
    by scene (`python -m cnet compare`), and the `models` that made them (`evaluated_models`;
    a condition kept from an evaluation that recorded none is left out)."""

    def values(rows: list[Scores], name: str) -> list[float | None]:
        return [None if getattr(s, name) is None else round(getattr(s, name), 4) for s in rows]

    return {
        "sampling": asdict(sampling),
        "seeds": list(seeds),
        **scenes_and_maps(per_scene),
        "models": {c: models[c] for c in per_scene if c in models},
        "figures": {
            condition: {
                setting: {f.name: values(rows, f.name) for f in fields(Scores)}
                for setting, rows in settings.items()
            }
            for condition, settings in per_scene.items()
        },
    }


@dataclass(frozen=True)
class Sampling:
    """How each image is drawn: at `size` px, `steps` steps of `sampler`, guidance `cfg` (None:
    the preset's default, for either)."""

    size: int
    steps: int
    cfg: float | None
    sampler: str | None


def evaluate(
    engine,
    conditions: Iterable[str],
    scenes: int = 100,
    size: int = 128,
    steps: int = 20,
    settings: Iterable[str] = tuple(SETTINGS),
    grid_path: Path | None = None,
    workers: int = 1,
    engine_options: dict | None = None,
    cfg: float | None = None,
    sampler: str | None = None,
    split: str = "test",
) -> PerScene:
    """{condition: {setting: each scene's Scores}} over the first `scenes` scenes of `split` (the
    held-out test scenes; "validation" to choose settings without them), in seed order
    (`mean_table` averages them).

    The automatic prompt row is left out, with a note, when the preset has no working captioner.
    `workers` > 1 shares the conditions among that many processes, each with its own engine,
    `load_engine(**engine_options)`: on a CPU, one thread a process uses the cores best at these
    small sizes. The same images and figures as one process.
    """
    from cnet.models import size_multiple
    from cnet.synth.sample import one_or_many

    conditions, settings = list(one_or_many(conditions)), list(one_or_many(settings))
    for what, names, known in (
        ("condition", conditions, CONDITION_KEYS),
        ("setting", settings, SETTINGS),
    ):
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            given = f"Unknown {what} {unknown[0]!r}" if unknown else f"No {what} given"
            raise ValueError(f"{given}; choose from: {', '.join(known)}.")
    sampling = Sampling(size, steps, cfg, sampler)
    check_sampling(sampling, conditions[0], size_multiple(engine.preset.base))
    settings = usable_settings(engine, settings)
    seeds = split_seeds(split, scenes)
    if workers > 1:
        table, grid_rows = score_in_processes(
            engine_options or {}, conditions, workers, seeds, settings, sampling
        )
    else:
        table, grid_rows = score_conditions(engine, conditions, seeds, settings, sampling)
    if grid_path is not None:
        write_grid(grid_path, [grid_rows[key] for key in conditions if key in grid_rows])
    return table


def usable_settings(engine, settings: Iterable[str]) -> list[str]:
    from cnet.captioner import CaptionerUnavailable

    settings = list(settings)
    if "automatic prompt" in settings:
        try:
            engine.captioner()
        except CaptionerUnavailable as error:
            print(f"Skipping the automatic prompt rows: {error}")
            settings.remove("automatic prompt")
    return settings


def evaluated_models(preset, conditions: Iterable[str]) -> dict[str, dict]:
    """Which base and ControlNet make each condition's images (`models_record`), for the
    conditions `preset` has a ControlNet for: `--install` checks an evaluation is of the
    preset it installs, `--into` that the rows it keeps are of the model evaluated now."""
    from cnet.models import ModelMissingError
    from cnet.train.lineage import models_record

    sources = {}
    for condition in conditions:
        try:
            sources[condition] = preset.controlnet_source(condition)
        except ModelMissingError:
            continue
    return models_record(preset.base, sources)


def scenes_and_maps(conditions: Iterable[str]) -> dict[str, dict]:
    """What scenes.json records of what this version tests each condition on, where it is not the
    seeds' own scenes and first maps: "scenes_with" {condition: the kinds each of its test scenes
    holds one of} and "map_versions" {condition: its map's version}. Figures of other scenes or
    maps do not pair (`cnet.comparison.tested_on` reads it)."""
    conditions = list(conditions)
    return {
        "scenes_with": {c: list(kinds) for c in conditions if (kinds := training_kinds(c))},
        "map_versions": redrawn_maps(conditions),
    }


def score_conditions(
    engine, conditions: list[str], seeds: Sequence[int], settings: list[str], sampling: Sampling
) -> tuple[PerScene, dict[str, np.ndarray]]:
    """Each scene's scores, and per condition a sample-grid row: control map beside its first
    image."""
    from cnet.engine import GenerationRequest, GenerationResult

    table: PerScene = {}
    grid_rows: dict[str, np.ndarray] = {}
    # At strength 0 no ControlNet adds anything, so a scene's image is the same for every
    # condition tested on that scene: generated once, scored against each condition's figures.
    uncontrolled: dict[tuple[str, int, tuple[str, ...]], GenerationResult] = {}
    for condition in conditions:
        table[condition] = {}
        samples = [condition_sample(seed, sampling.size, condition) for seed in seeds]
        kinds = training_kinds(condition)
        for name in settings:
            mode, strength = SETTINGS[name]
            per_scene, started = [], time.perf_counter()
            for sample in samples:
                if strength == 0 and (mode, sample.seed, kinds) in uncontrolled:
                    result = uncontrolled[mode, sample.seed, kinds]
                else:
                    request = GenerationRequest(
                        control_image=sample.conditions[condition],
                        condition=condition,
                        prompt_mode=mode,
                        prompt=sample.prompt,
                        added_prompt="",
                        negative_prompt="",
                        resolution=sampling.size,
                        control_strength=strength,
                        steps=sampling.steps,
                        cfg=sampling.cfg,
                        sampler=sampling.sampler,
                        seed=sample.seed,
                        keep_first_pass=mode == "auto",
                    )
                    result = engine.generate(request)
                    if strength == 0:
                        uncontrolled[mode, sample.seed, kinds] = result
                image = np.asarray(result.images[0].convert("RGB"))
                scores = score(image, sample, condition)
                if mode == "auto":
                    first = np.asarray(result.first_pass_images[0].convert("RGB"))
                    scores.caption_names_first_pass = caption_agreement(
                        first, sample, result.caption
                    )
                    scores.second_pass_follows_caption = caption_agreement(
                        image, sample, result.caption
                    )
                per_scene.append(scores)
                if name == "user prompt" and len(per_scene) == 1:
                    grid_rows[condition] = np.concatenate([sample.conditions[condition], image], 1)
            table[condition][name] = per_scene
            row = mean_scores(per_scene)
            # A full run takes the better part of an hour on a CPU: say where it is.
            print(
                f"{condition}, {name}: {scenes_count(len(per_scene))} in "
                f"{time.perf_counter() - started:.0f} s, IoU {row.iou:.3f}, "
                f"shape IoU {row.shape_iou:.3f}, "
                f"colour {row.color_accuracy:.3f}",
                flush=True,
            )
    return table, grid_rows


def write_grid(path: Path, rows: list[np.ndarray]) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))


def _score_in_worker(
    engine_options: dict, conditions: list[str], seeds: Sequence[int], settings, sampling: Sampling
) -> tuple[dict, dict]:
    from cnet.engine import load_engine

    quiet_library_bars()  # a process of its own
    engine = load_engine(**engine_options)
    return score_conditions(engine, conditions, seeds, settings, sampling)


def score_in_processes(
    engine_options: dict,
    conditions: list[str],
    workers: int,
    seeds: Sequence[int],
    settings: list[str],
    sampling: Sampling,
) -> tuple[PerScene, dict[str, np.ndarray]]:
    """`score_conditions`, the conditions shared among `workers` processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares = [conditions[i::workers] for i in range(workers) if conditions[i::workers]]
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(len(shares), mp_context=context) as pool:
        jobs = [
            pool.submit(_score_in_worker, engine_options, share, seeds, settings, sampling)
            for share in shares
        ]
        parts = [job.result() for job in jobs]
    tables = {key: rows for table, _ in parts for key, rows in table.items()}
    grid_rows = {key: row for _, rows in parts for key, row in rows.items()}
    return {key: tables[key] for key in conditions}, grid_rows


# The table's figures (Scores fields, as in results.json) and their column headings.
COLUMNS = {
    "iou": "foreground IoU",
    "shape_iou": "shape IoU",
    "color_accuracy": "colour accuracy",
    "edge_f1": "edge F1",
}


def table_head(*labels: str) -> list[str]:
    """Markdown heading lines: the given label columns, then COLUMNS."""
    names = [*labels, *COLUMNS.values()]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def table_row(*labels: str, figures: dict) -> str:
    """One Markdown row: the labels, then each of COLUMNS from `figures` ("—" where absent)."""
    cells = [*labels, *(figure(figures.get(name)) for name in COLUMNS)]
    return "| " + " | ".join(cells) + " |"


def figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_table(table: dict[str, dict[str, Scores]]) -> str:
    lines = table_head("condition", "setting")
    for condition, rows in table.items():
        for name, s in rows.items():
            lines.append(table_row(condition, name, figures=asdict(s)))
    agreement = [
        f"| {condition} | {s.caption_names_first_pass:.3f} | {s.second_pass_follows_caption:.3f} |"
        for condition, rows in table.items()
        for s in rows.values()
        if s.caption_names_first_pass is not None
    ]
    shown = [
        f"| {condition} | {', '.join(MAP_SHOWS_ONLY[condition])} | {name} | "
        f"{figure(s.shown_iou)} | {figure(s.shown_color_accuracy)} |"
        for condition, rows in table.items()
        for name, s in rows.items()
        if s.shown_iou is not None
    ]
    if shown:
        lines += [
            "",
            "Maps that show only some objects: foreground IoU and colour accuracy on those alone "
            "(scenes with one in view; the other objects' pixels left out):",
            "",
            "| condition | objects in the map | setting | foreground IoU | colour accuracy |",
            "|---|---|---|---|---|",
            *shown,
        ]
    if agreement:
        lines += [
            "",
            "Automatic prompt mode, colours of the objects against the caption:",
            "",
            "| condition | first pass: caption names its colours | second pass shows the "
            "caption's colours |",
            "|---|---|---|",
            *agreement,
        ]
    return "\n".join(lines)


def with_floor(seeds: Sequence[int]) -> np.ndarray:
    """Which scenes have a floor (the others show the wall alone behind their objects). The
    same for every condition's test scenes: `sample_scene` draws the floor before the objects,
    so a seed's scene made to hold a person (pose's) has its floor."""
    return np.array([sample_scene(seed).floor is not None for seed in seeds], bool)


def floor_apart(scores: Sequence[Scores], floor: np.ndarray) -> tuple[Scores, Scores]:
    """The mean figures of the scenes with a floor, and of those without."""
    return tuple(
        mean_scores([s for s, on in zip(scores, floor, strict=True) if on == group])
        for group in (True, False)
    )


def scenes_count(count: int, kind: str = "") -> str:
    """`count` scenes of the `kind` given, as "1 scene" or "2 test scenes"."""
    return " ".join(filter(None, [str(count), kind, "scene" + "s" * (count != 1)]))


def floor_table(per_scene: PerScene, seeds: Sequence[int]) -> str:
    """Foreground and shape IoU apart in the scenes with a floor and in those without. The floor
    is the one surface whose shade follows the scene's light (which neither prompt nor map gives),
    and the scribble, hough and pose maps do not show where it begins."""
    floor = with_floor(seeds)
    floors, walls = int(floor.sum()), int((~floor).sum())
    lines = [
        f"Foreground IoU and shape IoU in the {scenes_count(floors)} with a floor "
        f"and the {walls} without (the wall alone behind the objects):",
        "",
        "| condition | setting | foreground IoU, floor | without | shape IoU, floor | without |",
        "|---|---|---|---|---|---|",
    ]
    for condition, rows in per_scene.items():
        for name, scores in rows.items():
            apart = floor_apart(scores, floor)
            figures = [figure(s.iou) for s in apart] + [figure(s.shape_iou) for s in apart]
            lines.append(f"| {condition} | {name} | " + " | ".join(figures) + " |")
    return "\n".join(lines)


def reconstructions(vae, images: Sequence[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
    """Each RGB image through the VAE and back (the latents' mean), as the pipeline outputs it."""
    import torch

    from cnet.train.report import tensor_to_image

    out = []
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(np.stack(images[start : start + batch_size]))
        pixels = pixels.permute(0, 3, 1, 2).to(vae.device, vae.dtype) / 127.5 - 1
        with torch.no_grad():
            decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
        out += [np.asarray(tensor_to_image(image)) for image in decoded]
    return out


def reconstructed_scenes(
    vae,
    seeds: Sequence[int],
    size: int,
    conditions: Sequence[str] = (),
    include: tuple[str, ...] = (),
) -> list[tuple[np.ndarray, Sample]]:
    """The scenes of `seeds` (with `conditions`' maps; holding one of `include`'s kinds), each
    beside the VAE's reconstruction of its true image."""
    samples = [generate(seed, size, list(conditions), include) for seed in seeds]
    return list(
        zip(reconstructions(vae, [sample.image for sample in samples]), samples, strict=True)
    )


def ceiling_line(engine, seeds: Sequence[int], size: int, conditions: Sequence[str] = ()) -> str:
    """The figures of the VAE's reconstructions of the scenes' true images: as near as any model
    that draws through this VAE can come to the truth (and, for maps that show only some objects,
    on those alone)."""
    # The partial maps (hough's, pose's) on their own test scenes: one pass through the VAE for
    # each kind of scene, the seeds' own scenes also giving the main figures.
    partial = [condition for condition in conditions if condition in MAP_SHOWS_ONLY]
    groups: dict[tuple[str, ...], list[str]] = {(): []}
    for condition in partial:
        groups.setdefault(training_kinds(condition), []).append(condition)
    ceilings = {}
    for kinds, maps in groups.items():
        pairs = reconstructed_scenes(engine.pipeline.vae, seeds, size, maps, kinds)
        if not kinds:
            main = [score(image, sample, "") for image, sample in pairs]
            floor = np.array([sample.scene.floor is not None for _, sample in pairs], bool)
        for condition in maps:
            ceilings[condition] = mean_scores([score(image, s, condition) for image, s in pairs])
    ceiling = mean_scores(main)
    line = (
        f"The VAE's reconstructions of the same scenes' true images (the ceiling of any model "
        f"drawing through it): foreground IoU {ceiling.iou:.3f}, shape IoU "
        f"{ceiling.shape_iou:.3f}, colour accuracy {ceiling.color_accuracy:.3f}"
    )
    if floor.any() and not floor.all():
        on, off = floor_apart(main, floor)
        line += f" (foreground IoU {on.iou:.3f} with a floor, {off.iou:.3f} without)"
    for condition in partial:
        shown = ceilings[condition]
        line += f"; on the objects the {condition} map shows alone "
        line += f"({', '.join(MAP_SHOWS_ONLY[condition])}"
        if kinds := training_kinds(condition):
            line += f", in its test scenes, each with a {' or '.join(kinds)}"
        line += "): "
        line += f"foreground IoU {figure(shown.shown_iou)}, "
        line += f"colour accuracy {figure(shown.shown_color_accuracy)}"
    return line


def caption_line(engine, scenes: int, split: str = "test") -> str:
    """The captioner's share of fully correct captions on the first `scenes` scenes of `split`."""
    from cnet.captioner import CaptionerUnavailable
    from cnet.train.captioner import evaluate_captioner

    try:
        report = evaluate_captioner(engine.captioner(), scenes, split=split)
    except CaptionerUnavailable as error:
        return f"Captions: not measured ({error})"
    return (
        f"Captions with every object and colour word right: {report.accuracy:.3f} "
        f"({scenes_count(report.count, split)})"
    )


def earlier_scenes(
    folder: Path,
    seeds: Sequence[int],
    sampling: Sampling,
    settings: Sequence[str],
    scoring: Sequence[str] = (),
    models: Mapping[str, dict] | None = None,
) -> tuple[PerScene, dict[str, dict]]:
    """The per-scene figures of an earlier evaluation (its scenes.json) and the models it
    records for them, checked to be of the same scenes, sampling, settings and (where it
    records them) `models` as this one, but for the conditions this one is `scoring` afresh."""
    from cnet.comparison import load_scenes, tested_on

    earlier = load_scenes(folder)

    def described(sampling: dict, seeds: list) -> dict:
        return {**sampling, "scenes": f"{len(seeds)} from seed {seeds[0]}" if seeds else "none"}

    here = described(asdict(sampling), list(seeds))
    there = described(earlier["sampling"], earlier["seeds"])
    if differ := [
        f"{k} {v} here, {there.get(k)} there" for k, v in here.items() if v != there.get(k)
    ]:
        raise ValueError(
            f"{folder} evaluated other scenes or sampled otherwise ({'; '.join(differ)}); run "
            "with the same --split, --scenes, --size, --steps, --cfg and --sampler."
        )
    per_scene: PerScene = {}
    now = scenes_and_maps(earlier["figures"])
    made_by = earlier.get("models", {})
    for condition, rows in earlier["figures"].items():
        kept = condition not in scoring
        if kept and tested_on(now, condition) != tested_on(earlier, condition):
            raise ValueError(
                f"{folder} scored {condition} on other scenes or maps than this version of the "
                f"evaluation does; run with --conditions naming {condition} too."
            )
        recorded = made_by.get(condition) if kept and models is not None else None
        if recorded and (differ := model_differences(recorded, models.get(condition, {}))):
            raise ValueError(
                f"{folder} scored {condition} with another {' and '.join(differ)} than the "
                f"model evaluated now; run with --conditions naming {condition} too."
            )
        if set(rows) != set(settings):
            raise ValueError(
                f"{folder} has the settings {', '.join(rows)} for {condition}; run with "
                f"--settings naming those."
            )
        per_scene[condition] = {
            setting: [
                Scores(**dict(zip(figures, values, strict=True)))
                for values in zip(*figures.values(), strict=True)
            ]
            for setting, figures in rows.items()
        }
    return per_scene, {c: made_by[c] for c in per_scene if c in made_by and c not in scoring}


def model_differences(recorded: Mapping[str, str | None], now: Mapping[str, str | None]) -> list:
    """The parts ("base", "ControlNet") whose record differs between two `evaluated_models`
    entries; a part recorded as None (a folder without lineage) tells nothing."""
    return [
        "ControlNet" if part == "controlnet" else part
        for part in ("base", "controlnet")
        if recorded.get(part) is not None and recorded[part] != now.get(part)
    ]


def check_sampling(sampling: Sampling, condition: str, multiple: int | None) -> None:
    """Refuse sampling settings the engine would refuse, before any image is made, and a size
    it would round (to a `multiple`), as the scenes are drawn at the size given."""
    from cnet.engine import GenerationRequest

    control = np.zeros((sampling.size, sampling.size, 3), np.uint8)
    request = GenerationRequest(
        control, condition, resolution=sampling.size, steps=sampling.steps, cfg=sampling.cfg
    )
    try:
        request.validate()
    except ValueError as error:
        raise ValueError(f"{error} (--size, --steps, --cfg)") from None
    if multiple and sampling.size % multiple:
        below = max(multiple, sampling.size // multiple * multiple)
        raise ValueError(
            f"--size {sampling.size}: this model's images have sides in multiples of {multiple}, "
            f"and the scenes are drawn at the size its images come out; choose {below} or "
            f"{below + multiple}."
        )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir",
        type=model_folder,
        default=None,
        help="embedded-layout folder (default: assets/embedded)",
    )
    parser.add_argument(
        "--preset",
        default="embedded",
        help="used when --model-dir is not given (default: embedded)",
    )
    parser.add_argument(
        "--conditions", nargs="+", default=None, choices=CONDITION_KEYS, help="default: all seven"
    )
    parser.add_argument(
        "--scenes", type=positive_int, default=100, help="scenes per row (default: %(default)s)"
    )
    parser.add_argument(
        "--split",
        choices=("test", "validation"),
        default="test",
        help="test: the held-out evaluation scenes; validation: to choose settings on",
    )
    parser.add_argument(
        "--size", type=positive_int, default=None, help="image side (default: the preset's)"
    )
    parser.add_argument("--steps", type=positive_int, default=20, help="(default: %(default)s)")
    parser.add_argument(
        "--cfg", type=float, default=None, help="guidance scale (default: the preset's)"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the preset's")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(SETTINGS),
        choices=list(SETTINGS),
        help="the table's rows per condition (default: all four)",
    )
    parser.add_argument(
        "--out",
        type=output_folder,
        default=Path("outputs/eval"),
        help="folder for table.md, results.json, scenes.json, samples.png (default: %(default)s)",
    )
    parser.add_argument(
        "--into",
        type=Path,
        default=None,
        help="an earlier evaluation folder of the same scenes and sampling: the conditions "
        "scored now replace their rows there, the others are kept, and the result goes to --out "
        "(a model whose only change is one condition's ControlNet)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes sharing the conditions, each with its own model copy (CPU: one per core; "
        "default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    made_here = first_missing(args.out)
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback from a worker's convolution
        print(f"\ninterrupted: nothing was written in {args.out}.", file=sys.stderr)
        return 130
    finally:  # the new grid replaces the old one only beside the new table
        (args.out / NEW_GRID_FILE).unlink(missing_ok=True)
        if made_here and made_here.is_dir() and not any(p.is_file() for p in made_here.rglob("*")):
            shutil.rmtree(made_here)


def first_missing(folder: Path) -> Path | None:
    """The outermost of `folder` and its parents that is not there yet (None: it is there)."""
    there, folder = nearest_existing(folder), folder.absolute()
    return None if folder == there else there / folder.relative_to(there).parts[0]


def _run(args: argparse.Namespace) -> int:
    from cnet.engine import ModelMissingError, load_engine
    from cnet.models import size_multiple

    try:
        engine = load_engine(args.preset, model_dir=args.model_dir)
        print(engine.status())
        conditions = args.conditions or list(CONDITION_KEYS)
        engine.check_weights(conditions)
        args.size = args.size or engine.preset.resolution
        workers = min(args.workers, len(conditions))  # a process scores whole conditions
        if workers < args.workers:
            print(f"--workers {args.workers}: {len(conditions)} conditions, {workers} processes.")
        threads = max(1, (os.cpu_count() or 1) // workers)
        cfg = engine.preset.cfg if args.cfg is None else args.cfg
        sampler = args.sampler or engine.preset.sampler
        seeds = split_seeds(args.split, args.scenes)
        sampling = Sampling(args.size, args.steps, cfg, sampler)
        check_sampling(sampling, conditions[0], size_multiple(engine.preset.base))
        models = evaluated_models(engine.preset, CONDITION_KEYS)
        earlier, kept_models = (
            ({}, {})
            if args.into is None
            else earlier_scenes(args.into, seeds, sampling, args.settings, conditions, models)
        )
    except ModelMissingError as error:  # exit codes as in cnet generate: 1 missing, 2 bad input
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    grid, new_grid = args.out / GRID_FILE, args.out / NEW_GRID_FILE
    quiet_library_bars()  # where the models load: a refused command imports none
    per_scene = evaluate(
        engine,
        conditions,
        args.scenes,
        args.size,
        args.steps,
        args.settings,
        grid_path=new_grid,
        workers=workers,
        engine_options={"preset": args.preset, "model_dir": args.model_dir, "threads": threads},
        cfg=cfg,
        sampler=sampler,
        split=args.split,
    )
    made_by = {**kept_models, **{c: models[c] for c in per_scene if c in models}}
    if earlier:
        per_scene = {**earlier, **per_scene}  # the order of the earlier table
        conditions = list(per_scene)
    table = mean_table(per_scene)
    sampler_from = "the preset's default" if args.sampler is None else "--sampler"
    cfg_from = "the preset's default" if args.cfg is None else "--cfg"
    text = (
        f"{args.scenes} held-out {args.split} scenes a row, {args.size} px, {args.steps} steps of "
        f"{sampler} ({sampler_from}), CFG {cfg:g} ({cfg_from})\n\n"
        + format_table(table)
        + "\n\n"
        + floor_table(per_scene, seeds)
        + "\n\n"
        + ceiling_line(engine, seeds, args.size, conditions)
    )
    if "automatic prompt" in args.settings:
        text += "\n\n" + caption_line(engine, args.scenes, args.split)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / TABLE_FILE).write_text(text + "\n")
    results = {c: {n: asdict(s) for n, s in rows.items()} for c, rows in table.items()}
    (args.out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    figures = scene_figures(per_scene, seeds, sampling, made_by)
    (args.out / SCENES_FILE).write_text(json.dumps(figures))
    if new_grid.is_file():
        new_grid.replace(grid)
    else:  # drawn only when a user-prompt row is scored; an earlier one shows other rows
        grid.unlink(missing_ok=True)
    written = [TABLE_FILE, RESULTS_FILE, SCENES_FILE] + [grid.name] * grid.is_file()
    print(f"Wrote {', '.join(written)} in {args.out}")
    return 0
