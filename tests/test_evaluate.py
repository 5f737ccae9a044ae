import argparse
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cnet.evaluate import (
    caption_agreement,
    ceiling_line,
    color_accuracy,
    edge_f1,
    empty_render,
    empty_scene,
    floor_table,
    foreground_iou,
    format_table,
    mean_scores,
    object_colors,
    reconstructed_scenes,
    reconstructions,
    score,
    shape_iou,
    shown_color_accuracy,
    shown_iou,
)
from cnet.synth import generate, split_seeds
from cnet.synth.palette import OBJECT_COLORS

SEEDS = list(split_seeds("test", 12))


@pytest.fixture(scope="module")
def samples():
    return [generate(seed, 128) for seed in SEEDS]


def test_the_target_itself_scores_high_and_the_empty_scene_scores_zero(samples):
    for sample in samples:
        assert foreground_iou(sample.image, sample) > 0.8
        assert color_accuracy(sample.image, sample) == 1.0
        assert foreground_iou(empty_scene(sample), sample) == 0.0


def test_a_repainted_object_is_read_as_its_new_colour(samples):
    sample = samples[0]
    obj = sample.attributes["objects"][0]
    other = next(c for c in ("blue", "yellow") if c != obj["color"])
    albedo = sample.render.albedo * 255
    shade = sample.image.astype(np.float32).sum(2) / np.maximum(albedo.sum(2), 1e-3)
    repainted = sample.image.copy()
    mask = sample.masks[0]
    painted = shade[mask][:, None] * np.array(OBJECT_COLORS[other], np.float32)
    repainted[mask] = np.clip(painted, 0, 255).astype(np.uint8)
    assert object_colors(repainted, sample)[0] == other
    assert color_accuracy(repainted, sample) < 1.0


def test_caption_agreement_reads_each_objects_colour_against_the_caption(samples):
    for sample in samples:
        assert caption_agreement(sample.image, sample, sample.prompt) == 1.0
        objects = sample.attributes["objects"]
        first = objects[0]
        other = next(c for c in ("blue", "yellow") if c != first["color"])
        # one object's colour word changed: that object no longer agrees, the rest still do
        wrong = sample.prompt.replace(f" {first['color']} ", f" {other} ", 1)
        same_colour = sum(obj["color"] == first["color"] for obj in objects)
        expected = 1 - 1 / len(objects) if same_colour == 1 else None
        agreement = caption_agreement(sample.image, sample, wrong)
        assert agreement < 1.0 if expected is None else agreement == pytest.approx(expected)
        assert caption_agreement(sample.image, sample, "") == 0.0


def test_shape_iou_ignores_a_repainted_background_that_foreground_iou_counts(samples):
    for sample in samples:
        target = foreground_iou(sample.image, sample)
        assert shape_iou(sample.image, sample) == pytest.approx(target)
        assert shape_iou(empty_scene(sample), sample) == 0.0
        regions = empty_render(sample).ids
        repainted = sample.image.copy()
        # every pixel of the wall and floor regions that no object covers, in other colours
        paints = ((40, 200, 90), (230, 120, 20))
        for region, colour in zip(np.unique(regions), paints, strict=False):
            repainted[(regions == region) & ~sample.masks.any(axis=0)] = colour
        assert foreground_iou(repainted, sample) < 0.5
        assert shape_iou(repainted, sample) > 0.8


class IdentityVAE:
    """Encodes an image as itself: its reconstructions are the true images."""

    device, dtype = torch.device("cpu"), torch.float32

    def encode(self, pixels):
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: pixels))

    def decode(self, latents):
        return SimpleNamespace(sample=latents)


def test_an_exact_vae_reconstructs_the_images_and_its_ceiling_is_the_targets(samples):
    images = [sample.image for sample in samples[:3]]
    for image, decoded in zip(
        images, reconstructions(IdentityVAE(), images, batch_size=2), strict=True
    ):
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, image)
    pairs = reconstructed_scenes(IdentityVAE(), SEEDS[:3], 128)
    ceiling = mean_scores([score(image, sample, "") for image, sample in pairs])
    truth = mean_scores([score(sample.image, sample, "") for sample in samples[:3]])
    assert ceiling == truth and ceiling.color_accuracy == 1.0
    with_person = [generate(seed, 128, include=("person",)) for seed in SEEDS]  # pose's scenes
    people = np.mean([shown_iou(sample.image, sample, ("person",)) for sample in with_person])
    engine = SimpleNamespace(pipeline=SimpleNamespace(vae=IdentityVAE()))
    line = ceiling_line(engine, SEEDS, 128, ["canny", "pose"])
    assert line.endswith(
        "; on the objects the pose map shows alone (person, in its test scenes, each with a "
        f"person): foreground IoU {people:.3f}, colour accuracy 1.000"
    )
    assert "shows alone" not in ceiling_line(engine, SEEDS[:3], 128, ["canny"])
    floor = [sample.scene.floor is not None for sample in samples]
    assert any(floor) and not all(floor)  # both kinds among the 12 test scenes
    ious = [foreground_iou(sample.image, sample) for sample in samples]
    on = np.mean([iou for iou, f in zip(ious, floor, strict=True) if f])
    off = np.mean([iou for iou, f in zip(ious, floor, strict=True) if not f])
    assert f"(foreground IoU {on:.3f} with a floor, {off:.3f} without)" in line


def test_the_floor_table_sets_the_scenes_with_a_floor_apart(samples):
    from cnet.evaluate import Scores

    floor = [sample.scene.floor is not None for sample in samples]
    # pose's test scenes, each drawn to hold a person, keep their seed's floor
    assert floor == [generate(seed, 32, [], ("person",)).scene.floor is not None for seed in SEEDS]
    rows = [Scores(1.0 if f else 0.25, 1.0, shape_iou=0.5 if f else 0.75) for f in floor]
    text = floor_table({"seg": {"user prompt": rows}}, SEEDS)
    assert f"in the {sum(floor)} scenes with a floor and the {12 - sum(floor)} without" in text
    assert "| seg | user prompt | 1.000 | 0.250 | 0.500 | 0.750 |" in text
    one_each = floor.index(True), floor.index(False)
    text = floor_table(
        {"seg": {"user prompt": [rows[i] for i in one_each]}}, [SEEDS[i] for i in one_each]
    )
    assert "in the 1 scene with a floor and the 1 without" in text


def test_edge_f1_is_one_on_its_own_edges_and_zero_on_a_blank_image(samples):
    sample = samples[1]
    canny = sample.conditions["canny"]
    assert edge_f1(sample.image, canny) == pytest.approx(1.0)
    assert edge_f1(np.zeros_like(sample.image), canny) == 0.0
    assert score(sample.image, sample, "canny").edge_f1 == pytest.approx(1.0)
    assert score(sample.image, sample, "depth").edge_f1 is None
    as_the_engine_gives_it = Image.fromarray(sample.image)
    assert score(as_the_engine_gives_it, sample, "canny") == score(sample.image, sample, "canny")


def test_hough_lines_of_the_target_are_mostly_found_in_its_edges(samples):
    with_lines = [s for s in samples if s.conditions["hough"].any()]
    assert with_lines
    assert np.mean([edge_f1(s.image, s.conditions["hough"]) for s in with_lines]) > 0.4


def mixed_scene(kind: str):
    """The first test scene with an object of `kind` and another kind, every object in view."""
    return next(
        s
        for s in (generate(seed, 128) for seed in split_seeds("test", 200))
        if {o.kind for o in s.scene.objects} > {kind} and s.masks.any(axis=(1, 2)).all()
    )


def test_a_pose_map_is_scored_on_the_people_alone_the_only_objects_it_shows():
    mixed = mixed_scene("person")
    people = np.array([obj.kind == "person" for obj in mixed.scene.objects])
    only_people = empty_scene(mixed).copy()
    where = mixed.masks[people].any(axis=0)
    only_people[where] = mixed.image[where]
    assert shown_iou(only_people, mixed, ("person",)) > 0.8
    assert shown_iou(mixed.image, mixed, ("person",)) > 0.8  # the others' pixels do not count
    assert foreground_iou(only_people, mixed) < foreground_iou(mixed.image, mixed)
    assert score(only_people, mixed, "pose").shown_iou == shown_iou(only_people, mixed, ("person",))
    assert score(only_people, mixed, "canny").shown_iou is None  # canny shows every object
    nobody = next(
        s
        for s in (generate(seed, 128) for seed in split_seeds("test", 200))
        if all(obj.kind != "person" for obj in s.scene.objects)
    )
    assert shown_iou(nobody.image, nobody, ("person",)) is None
    rows = {"pose": {"user prompt": score(only_people, mixed, "pose")}}
    assert "| pose | person | user prompt | " in format_table(rows)


def test_a_hough_map_is_scored_on_the_objects_with_straight_edges_alone():
    mixed = mixed_scene("sphere")
    spheres = np.array([obj.kind == "sphere" for obj in mixed.scene.objects])
    wrong = mixed.image.copy()  # every sphere painted a colour no prompt names for it
    where = mixed.masks[spheres].any(axis=0)
    wrong[where] = 255 - wrong[where]
    scores = score(wrong, mixed, "hough")
    assert scores.color_accuracy < 1.0
    assert scores.shown_color_accuracy == 1.0
    assert shown_color_accuracy(wrong, mixed, ("sphere",)) < 1.0
    assert score(wrong, mixed, "canny").shown_color_accuracy is None  # canny shows every object
    table = format_table({"hough": {"user prompt": scores}})
    assert f"| user prompt | {scores.shown_iou:.3f} | 1.000 |" in table


def test_mean_and_table():
    rows = mean_scores([score_obj(0.5, 1.0, None), score_obj(1.0, 0.0, 0.5)])
    assert (rows.iou, rows.color_accuracy, rows.edge_f1) == (0.75, 0.5, 0.5)
    text = format_table({"canny": {"user prompt": rows}})
    assert "| canny | user prompt | 0.750 | — | 0.500 | 0.500 |" in text


def score_obj(iou, color, edge):
    from cnet.evaluate import Scores

    return Scores(iou, color, edge)


def eval_args(model_dir, tmp_path, *options: str) -> argparse.Namespace:
    """`cnet eval`'s arguments for 2 scenes at 64 px, 2 steps, into tmp_path/eval."""
    from cnet.evaluate import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    small = ["--scenes", "2", "--size", "64", "--steps", "2", "--out", str(tmp_path / "eval")]
    return parser.parse_args(["--preset", "auto", "--model-dir", str(model_dir), *small, *options])


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"settings": ["user"]}, "Unknown setting 'user'; choose from: user prompt, no prompt"),
        ({"conditions": ["Canny"]}, "Unknown condition 'Canny'; choose from: scribble, canny"),
        ({"conditions": []}, "No condition given"),
        ({"size": 96}, "multiples of"),
    ],
)
def test_evaluate_from_python_refuses_what_it_cannot_score_before_any_image(
    tiny_model_dir, given, message
):
    from cnet.engine import load_engine
    from cnet.evaluate import evaluate

    engine = load_engine(model_dir=str(tiny_model_dir), threads=1)
    engine.generate = None  # any image would fail: refused before
    arguments = {"conditions": "canny", "scenes": 1, "size": 64, "steps": 1, **given}
    with pytest.raises(ValueError, match=message):
        evaluate(engine, **arguments)


def test_evaluate_runs_the_engine_on_test_scenes_and_writes_a_grid(
    tiny_model_dir, tmp_path, capsys
):
    from cnet.engine import load_engine
    from cnet.evaluate import evaluate, mean_table

    engine = load_engine(model_dir=str(tiny_model_dir), threads=1)
    generate = engine.generate
    requests = []
    engine.generate = lambda request: requests.append(request) or generate(request)
    grid = tmp_path / "samples.png"
    per_scene = evaluate(
        engine,
        ["canny", "depth"],
        scenes=2,
        size=64,
        steps=2,
        grid_path=grid,
        cfg=3.0,
        sampler="DDIM",
    )
    assert [len(rows) for rows in per_scene["canny"].values()] == [2, 2, 2]  # one per scene
    table = mean_table(per_scene)
    assert list(table) == ["canny", "depth"]
    assert {(r.cfg, r.sampler, r.steps, r.resolution) for r in requests} == {(3.0, "DDIM", 2, 64)}
    assert {r.seed for r in requests} == set(split_seeds("test", 2))
    # the no-control images of the first condition serve the second
    assert [r.control_strength for r in requests].count(0.0) == 2 and len(requests) == 10
    no_control = table["canny"]["no control"], table["depth"]["no control"]
    assert no_control[0].iou == no_control[1].iou
    # the tiny model has no captioner: the automatic prompt rows are left out, not failed
    assert list(table["canny"]) == ["user prompt", "no prompt", "no control"]
    for rows in table.values():
        for s in rows.values():
            assert 0.0 <= s.iou <= 1.0 and 0.0 <= s.color_accuracy <= 1.0
    assert table["canny"]["user prompt"].edge_f1 is not None
    assert table["depth"]["user prompt"].edge_f1 is None
    assert grid.exists()
    rows = [line for line in capsys.readouterr().out.splitlines() if " scenes in " in line]
    assert len(rows) == 6 and rows[-1].startswith("depth, no control: 2 scenes in ")


@pytest.mark.slow  # ~20 s on 2 cores: worker processes each load the model
def test_processes_share_the_conditions_and_give_the_same_figures(tiny_model_dir, tmp_path):
    from cnet.engine import load_engine
    from cnet.evaluate import evaluate

    options = {"model_dir": str(tiny_model_dir), "threads": 1}
    conditions, settings = ["canny", "depth", "seg"], ["user prompt", "no control"]
    engine = load_engine(**options)
    alone = evaluate(engine, conditions, 2, 64, 2, settings, tmp_path / "1.png")
    shared = evaluate(
        engine,
        conditions,
        2,
        64,
        2,
        settings,
        tmp_path / "2.png",
        workers=2,
        engine_options=options,
    )
    assert shared == alone and list(shared) == conditions
    grids = [cv2.imread(str(tmp_path / name)) for name in ("1.png", "2.png")]
    assert np.array_equal(*grids)  # the rows in the conditions' order


def test_at_strength_0_the_condition_makes_no_difference(tiny_model_dir):
    from cnet.engine import GenerationRequest, load_engine

    engine = load_engine(model_dir=str(tiny_model_dir), threads=1)
    sample = generate(SEEDS[0], 64, conditions=["canny", "depth"])
    images = [
        engine.generate(
            GenerationRequest(sample.conditions[key], key, prompt=sample.prompt, steps=2,
                              resolution=64, control_strength=0.0)
        ).images[0]
        for key in ("canny", "depth")
    ]  # fmt: skip
    assert np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_automatic_prompt_rows_and_caption_accuracy_with_a_captioner(tiny_model_dir, tmp_path):
    import json

    import torch

    from cnet import captioner as cap
    from cnet.evaluate import run

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for part in ("base", "controlnet", "preset.json"):
        (model_dir / part).symlink_to(tiny_model_dir / part)
    torch.manual_seed(0)
    model, processor = cap.build_captioner(cap.TINY, cap.build_tokenizer(["a red sphere"]))
    cap.save_captioner(model, processor, model_dir / "captioner")

    settings = ["--settings", "automatic prompt", "no control"]
    assert run(eval_args(model_dir, tmp_path, "--conditions", "seg", *settings)) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results["seg"]) == ["automatic prompt", "no control"]
    automatic, no_control = results["seg"]["automatic prompt"], results["seg"]["no control"]
    for figure in ("caption_names_first_pass", "second_pass_follows_caption"):
        assert 0.0 <= automatic[figure] <= 1.0 and no_control[figure] is None
    table = (tmp_path / "eval" / "table.md").read_text()
    assert table.startswith(
        "2 held-out test scenes a row, 64 px, 2 steps of DDPM (the preset's default), CFG 9 (the"
    )
    assert "| seg | automatic prompt |" in table
    assert "second pass shows the caption's colours" in table
    assert "Captions with every object and colour word right: " in table
    assert "The VAE's reconstructions of the same scenes' true images" in table
    assert "| seg | automatic prompt | " in table.split("with a floor and the")[1]
    scenes = json.loads((tmp_path / "eval" / "scenes.json").read_text())
    assert scenes["seeds"] == list(split_seeds("test", 2))
    assert scenes["sampling"] == {"size": 64, "steps": 2, "cfg": 9.0, "sampler": "DDPM"}
    per_scene = scenes["figures"]["seg"]["automatic prompt"]["iou"]
    assert np.mean(per_scene) == pytest.approx(automatic["iou"], abs=1e-4)


def test_eval_on_the_validation_split_leaves_the_test_scenes_alone(tiny_model_dir, tmp_path):
    import json

    from cnet.evaluate import run

    options = ["--conditions", "canny", "--settings", "user prompt", "--split", "validation"]
    assert run(eval_args(tiny_model_dir, tmp_path, *options)) == 0
    table = (tmp_path / "eval" / "table.md").read_text()
    assert table.startswith("2 held-out validation scenes a row, 64 px, 2 steps of DDPM")
    scenes = json.loads((tmp_path / "eval" / "scenes.json").read_text())
    assert scenes["seeds"] == list(split_seeds("validation", 2))
    assert not set(scenes["seeds"]) & set(split_seeds("test"))


def test_an_uncontrolled_image_shared_by_conditions_keeps_its_own_caption(monkeypatch):
    from types import SimpleNamespace

    from cnet import evaluate

    # No setting samples the automatic prompt without control yet; one that did would share it.
    monkeypatch.setitem(evaluate.SETTINGS, "automatic prompt, no control", ("auto", 0.0))

    class Engine:
        def generate(self, request):
            image = Image.new("RGB", (64, 64))
            caption = f"scene {request.seed}"
            return SimpleNamespace(images=[image], first_pass_images=[image], caption=caption)

    told = []
    monkeypatch.setattr(
        evaluate,
        "caption_agreement",
        lambda image, sample, caption: told.append((sample.seed, caption)) or 1.0,
    )
    settings, sampling = ["automatic prompt, no control"], evaluate.Sampling(64, 2, 2.0, "DDPM")
    evaluate.score_conditions(Engine(), ["canny", "depth"], [3, 4], settings, sampling)
    assert len(told) == 8 and all(caption == f"scene {seed}" for seed, caption in told)


def test_an_interrupted_eval_leaves_an_earlier_evaluation_whole(tiny_model_dir, tmp_path, capsys):
    from cnet import evaluate

    settings = ["--conditions", "canny", "--settings", "user prompt"]
    assert evaluate.run(eval_args(tiny_model_dir, tmp_path, *settings)) == 0
    out = tmp_path / "eval"
    earlier = {path.name: path.read_bytes() for path in out.iterdir()}
    assert "samples.png" in earlier

    scored = evaluate.evaluate

    def interrupted_after_the_grid(*args, **kwargs):  # Ctrl-C as the table is being made
        scored(*args, **kwargs)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "evaluate", interrupted_after_the_grid)
        assert evaluate.run(eval_args(tiny_model_dir, tmp_path, *settings, "--steps", "3")) == 130
    assert f"interrupted: nothing was written in {out}." in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier

    with pytest.MonkeyPatch.context() as patch:  # into a new folder: none is left behind
        patch.setattr(evaluate, "evaluate", interrupted_after_the_grid)
        assert evaluate.run(eval_args(tiny_model_dir, tmp_path / "new", *settings)) == 130
    assert not (tmp_path / "new").exists()


def test_eval_starts_no_more_processes_than_conditions_and_shares_the_cores_among_them(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from cnet import evaluate

    asked = {}

    def recorded(*args, workers, engine_options, **kwargs):
        asked.update(workers=workers, threads=engine_options["threads"])
        raise KeyboardInterrupt  # nothing to score in this test

    monkeypatch.setattr(evaluate, "evaluate", recorded)
    monkeypatch.setattr(evaluate.os, "cpu_count", lambda: 16)
    options = ["--conditions", "canny", "depth", "--workers", "8"]
    assert evaluate.run(eval_args(tiny_model_dir, tmp_path, *options)) == 130
    assert asked == {"workers": 2, "threads": 8}
    assert "--workers 8: 2 conditions, 2 processes." in capsys.readouterr().out


def test_eval_into_replaces_the_conditions_it_scores_and_keeps_the_others(
    tiny_model_dir, tmp_path, capsys
):
    import json

    from cnet.evaluate import run

    settings = ["--settings", "user prompt", "no control"]
    earlier = tmp_path / "earlier"
    assert run(eval_args(tiny_model_dir, earlier, "--conditions", "canny", "seg", *settings)) == 0
    before = json.loads((earlier / "eval" / "scenes.json").read_text())
    # seg scored again with another model: its rows change, canny's stay
    (earlier / "eval" / "scenes.json").write_text(
        json.dumps({**before, "figures": {**before["figures"], "seg": before["figures"]["canny"]}})
    )
    into = ["--into", str(earlier / "eval")]
    assert run(eval_args(tiny_model_dir, tmp_path, "--conditions", "seg", *settings, *into)) == 0
    merged = json.loads((tmp_path / "eval" / "scenes.json").read_text())
    assert list(merged["figures"]) == ["canny", "seg"]
    assert merged["figures"] == before["figures"]  # seg scored afresh, canny kept
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "| canny | user prompt |" in table and "| seg | no control |" in table
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results) == {"canny", "seg"}

    other = ["--conditions", "seg", "--settings", "user prompt", *into]
    assert run(eval_args(tiny_model_dir, tmp_path / "x", *other)) == 2
    assert "run with --settings naming those" in capsys.readouterr().err
    steps = ["--conditions", "seg", *settings, *into, "--steps", "3"]
    assert run(eval_args(tiny_model_dir, tmp_path / "y", *steps)) == 2
    assert "sampled otherwise (steps 3 here, 2 there); run with the same" in (
        capsys.readouterr().err
    )


def test_pose_is_scored_on_scenes_with_a_person_and_older_pose_rows_are_not_merged(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    import json

    from cnet.engine import Engine
    from cnet.evaluate import run

    requests = []
    generate_image = Engine.generate
    monkeypatch.setattr(
        Engine, "generate", lambda self, r: requests.append(r) or generate_image(self, r)
    )
    settings = ["--settings", "user prompt", "no control"]
    assert run(eval_args(tiny_model_dir, tmp_path, "--conditions", "canny", "pose", *settings)) == 0
    pose = [r for r in requests if r.condition == "pose"]
    # the first test scene holds no one: only its scene made to hold a person draws a skeleton
    assert not generate(SEEDS[0], 64, ["pose"]).conditions["pose"].any()
    assert len(pose) == 4 and all(r.control_image.any() for r in pose)
    assert [r.control_strength for r in pose].count(0.0) == 2  # its own no-control images
    scenes = json.loads((tmp_path / "eval" / "scenes.json").read_text())
    assert scenes["scenes_with"] == {"pose": ["person"]}
    assert None not in scenes["figures"]["pose"]["user prompt"]["shown_iou"]
    assert "(person, in its test scenes, each with a person)" in capsys.readouterr().out

    del scenes["scenes_with"]  # an evaluation from before pose's scenes held a person
    (tmp_path / "eval" / "scenes.json").write_text(json.dumps(scenes))
    into = ["--into", str(tmp_path / "eval")]
    canny = eval_args(tiny_model_dir, tmp_path / "x", "--conditions", "canny", *settings, *into)
    assert run(canny) == 2
    assert "run with --conditions naming pose too" in capsys.readouterr().err
    again = eval_args(tiny_model_dir, tmp_path / "y", "--conditions", "pose", *settings, *into)
    assert run(again) == 0


def test_eval_names_what_is_missing_or_out_of_reach_before_scoring(
    tiny_model_dir, tmp_path, capsys
):
    from cnet.evaluate import configure, run

    (tmp_path / "nothing").mkdir()
    assert run(eval_args(tmp_path / "nothing", tmp_path)) == 1  # as in cnet generate
    assert f"{tmp_path / 'nothing' / 'base'} does not exist" in capsys.readouterr().err
    assert run(eval_args(tiny_model_dir, tmp_path, "--scenes", "1001")) == 2
    assert "The test split holds 1000 scenes; asked for 1001." in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    configure(parser)
    for bad in (["--conditions", "foo"], ["--scenes", "0"], ["--size", "-8"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_eval_samples_at_the_presets_resolution_unless_told(tiny_model_dir, tmp_path):
    from cnet.evaluate import configure, run

    parser = argparse.ArgumentParser()
    configure(parser)
    one = ["--scenes", "1", "--steps", "1", "--conditions", "canny", "--settings", "user prompt"]
    args = parser.parse_args(
        ["--model-dir", str(tiny_model_dir), *one, "--out", str(tmp_path / "eval")]
    )
    assert run(args) == 0
    assert "1 held-out test scenes a row, 64 px" in (tmp_path / "eval" / "table.md").read_text()


@pytest.mark.parametrize("workers", ["0", "-2", "two"])
def test_eval_refuses_a_worker_count_below_one(workers, capsys):
    from cnet.evaluate import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--workers", workers])
    assert "at least 1" in capsys.readouterr().err


def test_into_refuses_rows_of_an_earlier_drawing_of_a_map_unless_scored_again(tmp_path):
    import json

    from cnet.evaluate import Sampling, Scores, earlier_scenes, scene_figures

    sampling = Sampling(size=64, steps=2, cfg=None, sampler=None)
    rows = {c: {"user prompt": [Scores(iou=0.5, color_accuracy=1.0)]} for c in ("seg", "scribble")}
    scenes = scene_figures(rows, SEEDS[:1], sampling, {})
    assert scenes["map_versions"] == {"scribble": 2}  # drawn anew: the horizon too
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "scenes.json").write_text(json.dumps(scenes))
    kept, _ = earlier_scenes(folder, SEEDS[:1], sampling, ["user prompt"])
    assert set(kept) == {"seg", "scribble"}

    del scenes["map_versions"]  # an evaluation from before scribble's maps drew the horizon
    (folder / "scenes.json").write_text(json.dumps(scenes))
    with pytest.raises(ValueError, match="naming scribble too"):
        earlier_scenes(folder, SEEDS[:1], sampling, ["user prompt"])
    assert earlier_scenes(folder, SEEDS[:1], sampling, ["user prompt"], scoring=["scribble"])


def test_eval_records_its_models_and_into_keeps_only_rows_of_the_same_ones(
    tiny_model_dir, tmp_path, capsys
):
    import json
    import shutil

    from cnet.__main__ import main
    from cnet.train.lineage import lineage_digest

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    canny = model / "controlnet" / "canny"
    (canny / "lineage.json").write_text(json.dumps([{"trainer": "first"}]))
    one = ["eval", "--model-dir", str(model), "--scenes", "1", "--steps", "1"]
    one += ["--settings", "user prompt"]
    assert main([*one, "--conditions", "canny", "--out", str(tmp_path / "first")]) == 0
    made_by = json.loads((tmp_path / "first" / "scenes.json").read_text())["models"]
    first = lineage_digest(canny)
    assert made_by == {"canny": {"base": None, "controlnet": first}}

    (canny / "lineage.json").write_text(json.dumps([{"trainer": "second"}]))  # trained again
    into = ["--into", str(tmp_path / "first"), "--out", str(tmp_path / "second")]
    assert main([*one, "--conditions", "depth", *into]) == 2
    assert "scored canny with another ControlNet than the model evaluated now" in (
        capsys.readouterr().err
    )
    assert main([*one, "--conditions", "canny", "depth", *into]) == 0
    made_by = json.loads((tmp_path / "second" / "scenes.json").read_text())["models"]
    assert made_by["canny"]["controlnet"] == lineage_digest(canny) != first
    assert set(made_by) == {"canny", "depth"}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (["--cfg", "0"], "The CFG scale must be between 1.0 and 30.0, got 0.0."),
        (["--steps", "200"], "The steps must be between 1 and 150, got 200."),
        (["--size", "50"], "The resolution must be between 64 and 2048, got 50."),
    ],
)
def test_eval_refuses_sampling_the_engine_would_refuse_before_any_image(
    tiny_model_dir, tmp_path, capsys, setting, message
):
    from cnet.__main__ import main

    out = tmp_path / "eval"
    command = [
        "eval",
        "--model-dir",
        str(tiny_model_dir),
        "--conditions",
        "canny",
        "--out",
        str(out),
    ]
    assert main([*command, *setting]) == 2
    assert f"error: {message} (--size, --steps, --cfg)" in capsys.readouterr().err
    assert not out.exists()


def test_eval_refuses_a_size_the_engine_would_round(tiny_model_dir, tmp_path, capsys):
    from cnet.__main__ import main
    from cnet.models import size_multiple

    multiple = size_multiple(str(tiny_model_dir / "base"))
    out = tmp_path / "eval"
    given = ["--model-dir", str(tiny_model_dir), "--conditions", "canny", "--out", str(out)]
    assert main(["eval", *given, "--size", str(multiple * 3 // 2)]) == 2
    assert (
        f"multiples of {multiple}, and the scenes are drawn at the size its images come out; "
        f"choose {multiple} or {2 * multiple}." in capsys.readouterr().err
    )
    assert not out.exists()
