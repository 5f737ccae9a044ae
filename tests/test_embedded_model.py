"""The embedded model as committed in assets/embedded: complete, within budget, and generating."""

from __future__ import annotations

import itertools
import json
import re
import subprocess

import numpy as np
import pytest

from cnet import models
from cnet.engine import GenerationRequest, load_engine
from cnet.synth import CONDITION_KEYS, generate, split_seeds
from cnet.train.embedded import WEIGHTS_BUDGET_BYTES, folder_bytes

EMBEDDED = models.EMBEDDED_DIR
ASSETS = EMBEDDED.parent
README = ASSETS.parent / "README.md"


def test_every_condition_has_a_controlnet_with_a_card():
    preset = models.preset_from_dir(EMBEDDED, name="embedded")
    assert set(preset.controlnets) == set(CONDITION_KEYS)
    shipped = (EMBEDDED / "eval" / "table.md").read_text().splitlines()
    for condition in CONDITION_KEYS:
        card = (models.Path(preset.controlnets[condition]) / "README.md").read_text()
        rows = [f"| {condition} {line}" for line in card.splitlines() if line.startswith("| ")]
        figures = [row for row in rows if row in shipped]  # its measured figures, as shipped
        assert len(figures) == 4, (condition, rows)
    assert "Latent scaling factor" in (EMBEDDED / "base" / "README.md").read_text()


def test_the_weights_and_their_history_fit_the_budget():
    assert folder_bytes(ASSETS) <= WEIGHTS_BUDGET_BYTES
    listing = subprocess.run(
        ["git", "rev-list", "--objects", "--all", "--", str(ASSETS)],
        cwd=ASSETS.parent, capture_output=True, text=True,
    )  # fmt: skip
    if listing.returncode != 0:
        pytest.skip(f"no git history here: {listing.stderr.strip()}")
    objects = "\n".join(line.split()[0] for line in listing.stdout.splitlines())
    sizes = subprocess.run(
        ["git", "cat-file", "--batch-check=%(objecttype) %(objectsize)"],
        cwd=ASSETS.parent, input=objects, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = map(str.split, sizes.stdout.splitlines())
    assert sum(int(size) for kind, size in rows if kind == "blob") <= WEIGHTS_BUDGET_BYTES


def test_the_readme_states_its_size_on_disk():
    stated = re.search(r"The embedded model in `assets/embedded/` \((\d+) MB", README.read_text())
    assert stated, "README.md's opening no longer names the embedded model's size"
    assert int(stated[1]) == round(folder_bytes(EMBEDDED) / 1e6)


def test_the_readme_quotes_the_shipped_evaluation_as_it_is():
    """Rows of the README's tables of figures per condition and setting are the shipped eval's
    table.md rows, and the main table is there whole: a new evaluation updates the README."""
    shipped = (EMBEDDED / "eval" / "table.md").read_text().splitlines()
    settings = {"user prompt", "no prompt", "automatic prompt", "no control"}
    quoted = [
        line
        for line in README.read_text().splitlines()
        if (cells := [cell.strip() for cell in line.strip("|").split("|")])
        and line.startswith("| ")
        and cells[0] in CONDITION_KEYS
        and (cells[1] in settings or all(re.fullmatch(r"[\d.]+", cell) for cell in cells[1:]))
    ]
    assert [line for line in quoted if line not in shipped] == []
    first = shipped.index(next(line for line in shipped if line.startswith("| ")))
    main = list(itertools.takewhile(lambda line: line.startswith("| "), shipped[first + 2 :]))
    assert len(main) == 4 * len(CONDITION_KEYS) and set(main) <= set(quoted)


def test_its_examples_are_held_out_scenes_in_the_form_the_app_reads_and_their_prompts(tmp_path):
    from cnet.conditions import detect
    from cnet.synth.examples import example_scenes, write_examples
    from cnet.synth.scene import sample_scene

    preset = models.preset_from_dir(EMBEDDED, name="embedded")
    made = write_examples(tmp_path, preset.resolution)  # what the code makes now
    assert preset.example_prompts == made["example_prompts"]
    assert set(preset.examples) == set(CONDITION_KEYS)
    scenes = example_scenes(preset.resolution)
    for condition, (example,) in preset.examples.items():
        fresh = tmp_path / made["examples"][condition][0]["file"]
        assert models.Path(example.path).read_bytes() == fresh.read_bytes(), condition
        control = detect(
            condition,
            example.path,
            backend=example.backend,
            detect_resolution=preset.resolution,  # the UI's default for this preset
            image_resolution=preset.resolution,
        )
        assert np.array_equal(control, scenes[condition].conditions[condition]), condition
    seeds = split_seeds("train")[:2000]
    known = {word for seed in seeds for word in sample_scene(seed).prompt.split()}
    for condition, prompt in preset.example_prompts.items():
        assert set(prompt.split()) <= known, (condition, set(prompt.split()) - known)


@pytest.fixture(scope="module")
def engine():
    return load_engine("embedded", device="cpu", threads=1)


def test_it_loads_offline_with_nothing_missing(engine):
    assert engine.missing() == []
    settings = json.loads((EMBEDDED / "preset.json").read_text())
    assert settings["name"] == "embedded" and settings["cfg"] == engine.preset.cfg == 2.0


@pytest.mark.parametrize("condition", CONDITION_KEYS)
def test_each_condition_generates_a_picture(engine, condition):
    seed = next(iter(split_seeds("test", 1)))
    sample = generate(seed, 64, conditions=[condition])
    request = GenerationRequest(
        sample.conditions[condition], condition, prompt=sample.prompt, resolution=64, steps=4
    )
    image = np.asarray(engine.generate(request).images[0])
    assert image.shape == (64, 64, 3) and image.std() > 5  # not a blank or constant image


def test_the_captioner_reads_held_out_scenes_and_drives_the_automatic_mode(engine):
    from cnet.train.captioner import evaluate_captioner

    report = evaluate_captioner(engine.captioner(), 20)
    assert report.accuracy >= 0.85  # 0.960 on 200 test scenes, 0.952 on all 1,000 (README)
    seed = next(iter(split_seeds("test", 1)))
    sample = generate(seed, 64, conditions=["seg"])
    request = GenerationRequest(
        sample.conditions["seg"], "seg", prompt_mode="auto", resolution=64, steps=4
    )
    result = engine.generate(request)
    assert result.caption and result.caption in result.prompt
    assert any(
        noun in result.caption
        for noun in ("cube", "sphere", "cone", "cylinder", "pyramid", "person")
    )
