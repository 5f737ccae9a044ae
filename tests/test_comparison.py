"""`python -m cnet compare`: paired differences of two evaluations on the same scenes."""

import json

import numpy as np
import pytest

from cnet.comparison import MEAN_ROW, compare, format_comparison, run


def evaluation(figures: dict, seeds=range(100)) -> dict:
    """A scenes.json: {condition: {setting: {figure: per-scene values}}}."""
    return {"sampling": {"size": 128, "steps": 20, "cfg": 2.0}, "seeds": list(seeds),
            "figures": figures}  # fmt: skip


def test_a_clear_gain_is_higher_and_the_same_figures_are_within_noise():
    rng = np.random.default_rng(1)
    before = rng.uniform(0.3, 0.9, 100)
    after = before + 0.05 + rng.normal(0, 0.02, 100)
    old = evaluation({"seg": {"user prompt": {"iou": list(before)}}})
    new = evaluation({"seg": {"user prompt": {"iou": list(after)}}})
    gain = compare(old, new)["seg", "user prompt", "iou"]
    assert gain.verdict == "higher" and 0.04 < gain.low < gain.new - gain.old < gain.high < 0.06
    assert gain.old == pytest.approx(before.mean()) and gain.scenes == 100
    assert compare(new, old)["seg", "user prompt", "iou"].verdict == "lower"
    same = compare(old, old)["seg", "user prompt", "iou"]
    assert same.verdict == "within noise" and same.low == same.high == 0.0


def test_noise_alone_stays_within_noise():
    rng = np.random.default_rng(2)
    old, new = (
        evaluation({"canny": {"user prompt": {"iou": list(rng.uniform(0.3, 0.9, 100))}}})
        for _ in range(2)
    )
    change = compare(old, new)["canny", "user prompt", "iou"]
    assert change.verdict == "within noise" and change.low < 0 < change.high


def test_scenes_pair_by_seed_and_a_missing_figure_drops_its_scene():
    old = evaluation({"pose": {"user prompt": {"shown_iou": [0.1, None, 0.3, 0.5]}}}, [7, 8, 9, 10])
    new = evaluation({"pose": {"user prompt": {"shown_iou": [0.6, 0.2, 0.9, None]}}}, [9, 8, 7, 11])
    change = compare(old, new)["pose", "user prompt", "shown_iou"]
    # seeds 7 and 9 pair (8 has no old figure; 10 and 11 are in one run only)
    assert (
        change.scenes == 2
        and change.old == pytest.approx(0.2)
        and change.new == pytest.approx(0.75)
    )


def test_the_mean_of_the_conditions_averages_each_scene_first():
    def run(ious: tuple[float, float], canny_edges: float) -> dict:
        edges = {"canny": [canny_edges] * 100, "depth": [None] * 100}
        return evaluation(
            {
                c: {"user prompt": {"iou": [iou] * 100, "edge_f1": edges[c]}}
                for c, iou in zip(("canny", "depth"), ious, strict=True)
            }
        )

    old, new = run((0.2, 0.2), 0.5), run((0.4, 0.3), 0.7)
    changes = compare(old, new)
    mean = changes[MEAN_ROW, "user prompt", "iou"]
    assert mean.old == pytest.approx(0.2) and mean.new == pytest.approx(0.35)
    assert changes[MEAN_ROW, "user prompt", "edge_f1"].new == pytest.approx(0.7)  # canny alone
    assert list(changes)[-1][0] == MEAN_ROW
    table = format_comparison(changes)
    assert "| canny | user prompt | foreground IoU | 0.200 | 0.400 | +0.200 |" in table
    assert table.count("| higher |") == 5  # canny IoU and edges, depth IoU, both means


def test_compare_reads_two_output_folders_and_says_what_to_do_without_scenes_json(tmp_path, capsys):
    import argparse

    for name, value in (("old", 0.2), ("new", 0.4)):
        (tmp_path / name).mkdir()
        figures = {"seg": {"no prompt": {"iou": [value] * 50, "shape_iou": [0.7] * 50}}}
        written = evaluation(figures, range(50))
        if name == "new":  # the old one is from before scenes.json recorded the sampler
            written["sampling"]["sampler"] = "DDIM"
        (tmp_path / name / "scenes.json").write_text(json.dumps(written))
    args = argparse.Namespace(old=tmp_path / "old", new=tmp_path / "new", out=tmp_path / "c.md")
    assert run(args) == 0
    text = (tmp_path / "c.md").read_text()
    assert text.startswith(
        f"old ({tmp_path / 'old'}): 50 scenes, 128 px, 20 steps of DDPM, CFG 2\n"
        f"new ({tmp_path / 'new'}): 50 scenes, 128 px, 20 steps of DDIM, CFG 2\n"
    )
    assert "| seg | no prompt | foreground IoU | 0.200 | 0.400 | +0.200 |" in text
    assert "| seg | no prompt | shape IoU | 0.700 | 0.700 | +0.000 |" in text
    args.out = tmp_path / "old"  # a folder: the table goes into it
    assert run(args) == 0
    assert (tmp_path / "old" / "comparison.md").read_text() == text
    args.old = tmp_path / "nothing"
    assert run(args) == 1
    assert f"error: {args.old} is not a folder; give an evaluation's" in capsys.readouterr().err
    args.old = tmp_path / "empty"
    args.old.mkdir()
    assert run(args) == 1
    assert "python -m cnet eval --out" in capsys.readouterr().err
    for marker in ("training.json", "preset.json"):  # a training run, then a model folder
        (args.old / marker).write_text("{}")
        assert run(args) == 1
        assert "holds a model or a training run, not an evaluation: give an evaluation's" in (
            capsys.readouterr().err
        )
    (args.old / "eval").mkdir()
    (args.old / "eval" / "scenes.json").write_text("{}")
    assert run(args) == 1
    assert f"give the evaluation it keeps, {args.old / 'eval'}." in capsys.readouterr().err


def test_a_condition_scored_on_other_scenes_is_left_out_and_named(tmp_path):
    import argparse

    figures = {c: {"user prompt": {"iou": [0.5] * 100}} for c in ("seg", "pose")}
    before = evaluation(figures)  # pose on the seeds' own scenes, as evaluations once did
    after = {**evaluation(figures), "scenes_with": {"pose": ["person"]}}
    assert {c for c, _, _ in compare(before, after)} == {"seg"}
    assert {c for c, _, _ in compare(after, after)} == {"seg", "pose", MEAN_ROW}
    for name, written in (("old", before), ("new", after)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scenes.json").write_text(json.dumps(written))
    args = argparse.Namespace(old=tmp_path / "old", new=tmp_path / "new", out=tmp_path / "c.md")
    assert run(args) == 0
    text = (tmp_path / "c.md").read_text()
    assert text.endswith("Left out, scored on other scenes or maps by the two runs: pose.\n")


def test_a_condition_scored_on_another_drawing_of_its_map_is_left_out():
    figures = {c: {"user prompt": {"iou": [0.5] * 100}} for c in ("seg", "scribble")}
    before = evaluation(figures)  # scribble's first maps, as evaluations once recorded them
    after = {**evaluation(figures), "map_versions": {"scribble": 2}}
    assert {c for c, _, _ in compare(before, after)} == {"seg"}
    assert {c for c, _, _ in compare(after, after)} == {"seg", "scribble", MEAN_ROW}
    assert (
        compare(before, {**after, "map_versions": {"scribble": 1}}).keys()
        == compare(before, before).keys()
    )


def test_every_figure_the_eval_writes_is_compared():
    from dataclasses import fields

    from cnet.comparison import FIGURES
    from cnet.evaluate import Scores

    assert set(FIGURES) == {f.name for f in fields(Scores)}


def write_runs(folder, old: dict, new: dict | str):
    """Write two evaluations' scenes.json (`new` as text: the file's exact content) and return
    `cnet compare`'s arguments for them."""
    import argparse

    for name, written in (("old", old), ("new", new)):
        (folder / name).mkdir()
        text = written if isinstance(written, str) else json.dumps(written)
        (folder / name / "scenes.json").write_text(text)
    return argparse.Namespace(old=folder / "old", new=folder / "new", out=None)


def test_sampling_left_to_the_preset_is_shown_as_its_default(tmp_path, capsys):
    figures = {"seg": {"user prompt": {"iou": [0.5] * 100}}}
    preset_default = evaluation(figures)  # Sampling(cfg=None, sampler=None): evaluate()'s defaults
    preset_default["sampling"].update(cfg=None, sampler=None)
    assert run(write_runs(tmp_path, evaluation(figures), preset_default)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("100 scenes, 128 px, 20 steps of DDPM, CFG 2")
    assert lines[1].endswith(
        "100 scenes, 128 px, 20 steps of the preset's default sampler, CFG the preset's default"
    )


WHOLE = evaluation({"canny": {"user prompt": {"iou": [0.5] * 100}}})
DAMAGED = {  # what a damaged scenes.json holds -> what the message says of it
    "cut short": ('{"sampling": {"size": 128', "is not readable JSON (Expecting ',' delimiter"),
    "a figure list shorter than its seeds": (
        json.dumps({**WHOLE, "figures": {"canny": {"user prompt": {"iou": [0.5] * 99}}}}),
        "is damaged: canny, user prompt: 99 values of iou for 100 scenes",
    ),
    "no sampling": (
        json.dumps({key: value for key, value in WHOLE.items() if key != "sampling"}),
        "is damaged: no 'sampling' key",
    ),
    "sampling edited into a number": (
        json.dumps({**WHOLE, "sampling": 128}),
        "is damaged: its sampling is not an object (size, steps, cfg)",
    ),
    "figures edited into a list": (
        json.dumps({**WHOLE, "figures": []}),
        "is damaged: its figures are not an object of conditions",
    ),
    "a number where a list of values goes": (
        json.dumps({**WHOLE, "figures": {"canny": {"user prompt": {"iou": 0.5}}}}),
        "is damaged: canny, user prompt: iou is not a list of numbers",
    ),
}


@pytest.mark.parametrize(("text", "problem"), DAMAGED.values(), ids=DAMAGED)
def test_a_damaged_scenes_json_is_named_in_one_line(tmp_path, capsys, text, problem):
    args = write_runs(tmp_path, WHOLE, text)
    assert run(args) == 1
    message = capsys.readouterr().err
    assert message.startswith(f"error: {args.new / 'scenes.json'} {problem}")
    assert message.endswith(f"`python -m cnet eval --out {args.new}`.\n")
    assert message.count("\n") == 1


def test_rows_only_one_run_scored_are_named_under_the_table(tmp_path, capsys):
    row = {"iou": [0.5] * 100}
    old = evaluation(
        {"seg": {"user prompt": row, "no control": row}, "depth": {"user prompt": row}}
    )
    new = evaluation({"seg": {"user prompt": row}, "canny": {"user prompt": row}})
    assert run(write_runs(tmp_path, old, new)) == 0
    assert capsys.readouterr().out.endswith(
        "Scored by one run only, so not compared: seg no control (old only), depth user prompt "
        "(old only), canny user prompt (new only).\n"
    )
