"""The scene world's ways out: the torch dataset, the two export layouts and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnet.__main__ import main
from cnet.synth.sample import CONDITION_KEYS, generate
from cnet.synth.splits import split_seeds


def test_dataset_items_follow_the_diffusers_layout():
    torch = pytest.importorskip("torch")
    from cnet.synth.dataset import SynthDataset

    data = SynthDataset("validation", size=64, condition="depth", length=4)
    assert len(data) == 4
    item = data[1]
    assert item["seed"] == split_seeds("validation")[1]
    assert item["pixel_values"].shape == (3, 64, 64) and item["pixel_values"].dtype == torch.float32
    assert item["pixel_values"].min() >= -1.0 and item["pixel_values"].max() <= 1.0
    control = item["conditioning_pixel_values"]
    assert control.shape == (3, 64, 64) and control.min() >= 0.0 and control.max() <= 1.0
    expected = generate(item["seed"], 64)
    assert item["prompt"] == expected.prompt
    assert np.allclose(
        control.numpy().transpose(1, 2, 0) * 255, expected.conditions["depth"], atol=1e-3
    )
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=2)))
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and len(batch["prompt"]) == 2
    assert "conditioning_pixel_values" not in SynthDataset("train", 32, condition=None)[0]
    assert "kinds" not in item
    with_kinds = SynthDataset("validation", 64, condition=None, length=4, kinds=True)[1]
    assert np.array_equal(with_kinds["kinds"].numpy(), expected.kinds)
    with pytest.raises(ValueError, match="choose from"):
        SynthDataset("train", condition="sketch")


def test_pose_examples_come_from_scenes_with_a_person():
    from cnet.synth.dataset import SynthDataset
    from cnet.train.data import prompts_of

    data = SynthDataset("train", size=64, condition="pose", length=40)
    assert data.include == ("person",)
    assert all(data[i]["conditioning_pixel_values"].max() > 0 for i in range(len(data)))
    assert prompts_of(data, 5) == [data[i]["prompt"] for i in range(5)]
    assert all("person" in prompt for prompt in prompts_of(data, 40))
    # the scenes of every other map are the seeds' own
    seg = SynthDataset("train", 64, "seg", 3)
    assert seg.include == () and seg[2]["prompt"] == generate(split_seeds("train")[2]).prompt


def test_fill50k_export(tmp_path):
    assert main(["synth", "export", "fill50k", str(tmp_path), "--condition", "scribble",
                 "--count", "3", "--size", "64", "--split", "test"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "prompt.json").read_text().splitlines()]
    assert len(lines) == 3
    for number, line in enumerate(lines):
        seed = split_seeds("test")[number]
        expected = generate(seed, 64, ["scribble"])
        assert line == {"source": f"source/{number}.png", "target": f"target/{number}.png",
                        "prompt": expected.prompt}  # fmt: skip
        assert np.array_equal(np.array(Image.open(tmp_path / line["target"])), expected.image)
        source = np.array(Image.open(tmp_path / line["source"]))
        assert np.array_equal(source, expected.conditions["scribble"])
    attributes = [
        json.loads(line) for line in (tmp_path / "attributes.jsonl").read_text().splitlines()
    ]
    assert [a["seed"] for a in attributes] == list(split_seeds("test", 3))


def test_imagefolder_export(tmp_path):
    assert main(["synth", "export", "imagefolder", str(tmp_path), "--condition", "seg",
                 "--count", "2", "--size", "64", "--start", "5"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert [sorted(line) for line in lines] == [["conditioning_image", "image", "text"]] * 2
    assert lines[0]["text"] == generate(5, 64).prompt
    for line in lines:
        assert Image.open(tmp_path / line["image"]).size == (64, 64)
        assert Image.open(tmp_path / line["conditioning_image"]).mode == "RGB"


def test_an_export_into_an_earlier_ones_folder_leaves_only_its_own_images(tmp_path):
    export = ["synth", "export", "fill50k", str(tmp_path), "--condition", "canny", "--size", "64"]
    (tmp_path / "notes.txt").write_text("mine")
    assert main([*export, "--count", "3"]) == 0
    (tmp_path / "target" / "0007.png").write_bytes(b"a photo of mine")  # no export's name
    assert main([*export, "--count", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "source").iterdir()) == ["0.png", "1.png"]
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["0.png", "0007.png", "1.png"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_export_into_a_folder_of_the_other_layout_is_refused(tmp_path, capsys):
    export = ["synth", "export", "LAYOUT", str(tmp_path), "--condition", "depth", "--size", "64"]
    assert main(export[:2] + ["fill50k"] + export[3:] + ["--count", "1"]) == 0
    assert main(export[:2] + ["imagefolder"] + export[3:] + ["--count", "1"]) == 2
    assert "holds an export of the other layout (prompt.json)" in capsys.readouterr().err
    assert not (tmp_path / "metadata.jsonl").exists() and not (tmp_path / "images").exists()


def test_a_pose_export_holds_people_and_says_how_its_scenes_were_drawn(tmp_path):
    assert main(["synth", "export", "imagefolder", str(tmp_path), "--condition", "pose",
                 "--count", "3", "--size", "64"]) == 0  # fmt: skip
    attributes, lines = (
        [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        for name in ("attributes.jsonl", "metadata.jsonl")
    )
    for line, record in zip(lines, attributes, strict=True):
        assert record["include"] == ["person"] and "person" in line["text"]
        assert np.asarray(Image.open(tmp_path / line["conditioning_image"])).max() > 0


def test_contact_sheet_and_render_commands(tmp_path):
    sheet = tmp_path / "sheet.png"
    assert main(["synth", "contact-sheet", str(sheet), "--count", "2", "--size", "64"]) == 0
    width, height = Image.open(sheet).size
    assert width >= 8 * 64 and height >= 2 * 64
    assert main(["synth", "render", "4", str(tmp_path / "one"), "--size", "64"]) == 0
    names = {p.name for p in (tmp_path / "one").iterdir()}
    assert {"target.png", "canny.png", "normal.png", "attributes.json"} <= names


@pytest.mark.parametrize(
    ("where", "message"),
    [(("--start", "999", "--count", "2"), "1 of them from scene 999 on; asked for 2"),
     (("--start", "-1",), "counted from 0")],
)  # fmt: skip
def test_scenes_outside_the_split_are_refused_before_anything_is_written(
    tmp_path, capsys, where, message
):
    out = tmp_path / "export"
    args = ["synth", "export", "fill50k", str(out), "--condition", "canny", "--split", "test"]
    assert main([*args, *where]) == 2
    assert message in capsys.readouterr().err and not out.exists()
    sheet = ["synth", "contact-sheet", str(tmp_path / "s.png"), "--split", "test", *where]
    assert main(sheet) == 2 and message in capsys.readouterr().err


def test_examples_command_names_its_files_in_the_model_folders_preset(tmp_path, capsys):
    assert main(["synth", "examples", str(tmp_path)]) == 2
    assert "has no preset.json" in capsys.readouterr().err
    (tmp_path / "preset.json").write_text(json.dumps({"name": "mine", "resolution": 64}))
    assert main(["synth", "examples", str(tmp_path)]) == 0
    settings = json.loads((tmp_path / "preset.json").read_text())
    assert settings["name"] == "mine"  # kept
    assert set(settings["examples"]) == set(settings["example_prompts"]) == set(CONDITION_KEYS)
    (canny,) = settings["examples"]["canny"]
    assert canny["backend"] == "canny" and Image.open(tmp_path / canny["file"]).size == (64, 64)
    pose = json.loads((tmp_path / settings["examples"]["pose"][0]["file"]).read_text())
    assert pose["canvas_width"] == 64 and len(pose["people"]) >= 1
    scribble = np.asarray(Image.open(tmp_path / settings["examples"]["scribble"][0]["file"]))
    assert np.median(scribble) == 255  # dark strokes on white paper


def test_examples_take_the_bases_own_size_where_the_preset_names_none(
    tiny_model_dir, tmp_path, capsys
):
    from cnet.models import base_resolution

    (tmp_path / "base").symlink_to(tiny_model_dir / "base")
    (tmp_path / "preset.json").write_text("{")
    assert main(["synth", "examples", str(tmp_path)]) == 2
    assert "preset.json is not valid JSON" in capsys.readouterr().err
    (tmp_path / "preset.json").write_text(json.dumps({"name": "mine"}))
    assert main(["synth", "examples", str(tmp_path)]) == 0
    (canny,) = json.loads((tmp_path / "preset.json").read_text())["examples"]["canny"]
    native = base_resolution(str(tiny_model_dir / "base"))
    assert native != 512 and Image.open(tmp_path / canny["file"]).size == (native, native)


def test_ctrl_c_in_any_command_is_one_line_and_exit_code_130(monkeypatch, capsys):
    from cnet import __main__
    from cnet.synth import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    assert __main__.main(["synth", "export", "--condition", "canny", "fill50k", "out"]) == 130
    assert capsys.readouterr().err == "\ninterrupted.\n"
