"""The training data layer: fill50k and metadata.jsonl readers, the resumable batch order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnet.train.data import BatchStream, StepBatches, fill50k, metadata_folder, open_dataset

RED, WHITE = (200, 30, 35), (255, 255, 255)


def solid(path: Path, color, size=(80, 64)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path.name


def write_fill50k(root: Path, n: int = 3) -> Path:
    lines = []
    for i in range(n):
        solid(root / "source" / f"{i}.png", WHITE)
        solid(root / "target" / f"{i}.png", RED)
        lines.append({"source": f"source/{i}.png", "target": f"target/{i}.png", "prompt": f"p{i}"})
    (root / "prompt.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return root


def test_fill50k_reads_target_as_image_and_source_as_control(tmp_path):
    dataset = fill50k(write_fill50k(tmp_path), resolution=32)
    assert len(dataset) == 3
    example = dataset[1]
    assert example["prompt"] == "p1"
    image, control = example["pixel_values"], example["conditioning_pixel_values"]
    assert image.shape == control.shape == (3, 32, 32)
    # The image is the red target in [-1, 1]; the control map is the white source in [0, 1].
    expected = torch.tensor(RED, dtype=torch.float32) / 255 * 2 - 1
    assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=1e-3)
    assert torch.allclose(control, torch.ones_like(control))


def test_fill50k_names_a_line_without_its_keys_and_images_that_are_not_there(tmp_path):
    root = write_fill50k(tmp_path)
    lines = (root / "prompt.json").read_text().splitlines()
    (root / "prompt.json").write_text("\n".join([*lines, '{"source": "s.png"}']) + "\n")
    with pytest.raises(ValueError, match=r"prompt.json line 4: each line needs 'source', 'target'"):
        fill50k(root, 32)
    (root / "prompt.json").write_text("\n".join([*lines, "not json"]) + "\n")
    with pytest.raises(ValueError, match="prompt.json line 4 is not JSON"):
        fill50k(root, 32)
    (root / "prompt.json").write_text("\n".join(lines) + "\n")
    (root / "target" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match="lists 1 image.*not there, e.g. target/1.png"):
        fill50k(root, 32)


def test_metadata_folder_accepts_file_name_and_names_missing_keys(tmp_path):
    solid(tmp_path / "a.png", RED, (64, 64))
    solid(tmp_path / "a_cond.png", WHITE, (64, 64))
    rows = [{"file_name": "a.png", "conditioning_image": "a_cond.png", "text": "a red square"}]
    (tmp_path / "metadata.jsonl").write_text(json.dumps(rows[0]) + "\n")
    example = metadata_folder(tmp_path, 16)[0]
    assert example["prompt"] == "a red square"
    assert example["pixel_values"].shape == (3, 16, 16)

    (tmp_path / "metadata.jsonl").write_text(json.dumps({"image": "a.png"}) + "\n")
    with pytest.raises(ValueError, match="conditioning_image"):
        metadata_folder(tmp_path, 16)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"image": "a.png", "conditioning_image": "a_cond.png", "prompt": "x"}, "each line needs"),
        ({"image": "a.png", "conditioning_image": "a_cond.png", "text": None}, "'text' must be t"),
        ({"file_name": 3, "conditioning_image": "a_cond.png", "text": "x"}, "'file_name' must be"),
    ],
)
def test_a_metadata_line_without_text_or_with_a_value_that_is_not_text_is_named(
    tmp_path, line, message
):
    solid(tmp_path / "a.png", RED, (64, 64))
    solid(tmp_path / "a_cond.png", WHITE, (64, 64))
    (tmp_path / "metadata.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match=f"metadata.jsonl line 1: {message}"):
        metadata_folder(tmp_path, 16)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"source": "source/0.png"}]\n', "starts a JSON array; it holds one JSON object a line"),
        ('\n[{"source": "source/0.png"}]\n', "starts a JSON array"),
        (
            '{"source": "source/0.png",\n',
            r"line 1 is not JSON \(Expecting property name [^(]*, at its end\)\.$",
        ),
        ('{"prompt": "caf\xe9"}\n'.encode("latin-1"), "is not UTF-8 text"),
    ],
)
def test_an_index_file_that_is_not_json_lines_says_what_it_holds(tmp_path, text, message):
    write_fill50k(tmp_path)
    index = tmp_path / "prompt.json"
    index.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message):
        fill50k(tmp_path, 32)


def test_an_index_file_with_a_byte_order_mark_reads_as_utf_8(tmp_path):
    root = write_fill50k(tmp_path)
    index = root / "prompt.json"
    index.write_bytes(b"\xef\xbb\xbf" + index.read_bytes().replace(b"\n", b"\r\n"))
    assert [fill50k(root, 32)[i]["prompt"] for i in range(3)] == ["p0", "p1", "p2"]


def test_an_image_that_is_not_an_image_is_refused_before_training(tmp_path):
    root = write_fill50k(tmp_path)
    (root / "target" / "2.png").write_bytes(b"")
    with pytest.raises(ValueError, match="lists 1 file.* not readable images, e.g. .*target/2.png"):
        fill50k(root, 32)


def test_a_map_of_another_shape_than_its_image_is_refused_and_a_rounded_one_is_aligned(tmp_path):
    root = write_fill50k(tmp_path)  # 80x64 images and maps
    solid(root / "source" / "1.png", WHITE, (40, 80))  # upright: another picture
    with pytest.raises(ValueError, match=r"1 map\(s\) of another shape.*source/1.png 40x80 for"):
        fill50k(root, 32)
    # what the detectors make of an 80x64 image (sides rounded to 64: cnet.imageio.target_size)
    solid(root / "source" / "1.png", WHITE, (64, 64))
    assert len(fill50k(root, 32)) == 3
    # A map made at a rounded size (82x64 for an 80x64 image) covers the same picture: scaled to
    # the image's size before both are cropped, its left edge stays on the image's.
    image = np.zeros((64, 80, 3), np.uint8)
    image[:, :20] = RED
    control = np.zeros((64, 82, 3), np.uint8)
    control[:, :20] = WHITE  # 20 of 82 columns: 19.5 of the image's 80
    Image.fromarray(image).save(root / "target" / "1.png")
    Image.fromarray(control).save(root / "source" / "1.png")
    example = fill50k(root, 64)[1]
    image_edge = (example["pixel_values"][0, 32] > 0).float().sum()
    map_edge = (example["conditioning_pixel_values"][0, 32] > 0.5).float().sum()
    assert image_edge == map_edge == 12  # 20 columns of 80 lie left of the centre square's 8


def test_images_are_read_as_the_app_reads_uploads_16_bit_maps_and_turned_photos(tmp_path):
    root = write_fill50k(tmp_path, n=1)  # 80x64
    depth = np.tile(np.linspace(0, 65535, 80, dtype=np.uint16), (64, 1))  # 16-bit grey ramp
    Image.fromarray(depth).save(root / "source" / "0.png")
    upright = np.zeros((64, 80, 3), np.uint8)
    upright[:, :40] = RED  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter: a viewer turns it back
    turned = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    turned.save(root / "target" / "0.jpg", exif=exif, quality=95)
    lines = [{"source": "source/0.png", "target": "target/0.jpg", "prompt": "p"}]
    (root / "prompt.json").write_text(json.dumps(lines[0]) + "\n")
    example = fill50k(root, 64)[0]
    ramp = example["conditioning_pixel_values"][0, 32]
    assert ramp[0] < 0.2 and ramp[-1] > 0.8  # not clipped to white from the first tenth on
    image = (example["pixel_values"] + 1) / 2
    assert image[0, 32, :20].mean() > 0.7 and image[0, 32, -20:].mean() < 0.1  # red on the left


def test_a_turned_photo_pairs_with_its_map_as_the_map_was_made(tmp_path):
    """A phone photo stored on its side with an EXIF orientation: a map made from it as viewers
    show it (cnet detect, the app) pairs with it upright; a map made from its stored pixels (tools
    that ignore EXIF, as diffusers' data sets) pairs with the stored pixels."""
    root = tmp_path / "data"
    upright = np.zeros((64, 96, 3), np.uint8)
    upright[:, :48] = RED  # red on the left, as a viewer shows it
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 64 wide, 96 high
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer turns it a quarter back
    (root / "images").mkdir(parents=True)
    stored.save(root / "images" / "photo.jpg", exif=exif, quality=95)
    Image.fromarray(upright).save(root / "upright_map.png")
    stored.save(root / "stored_map.png")
    lines = [{"image": "images/photo.jpg", "conditioning_image": name, "text": "p"}
             for name in ("upright_map.png", "stored_map.png")]  # fmt: skip
    (root / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dataset = metadata_folder(root, 32)
    for example in (dataset[0], dataset[1]):
        image = (example["pixel_values"] + 1) / 2
        control = example["conditioning_pixel_values"]
        red_image, red_map = image[0] > 0.5, control[0] > 0.5
        assert (red_image == red_map).float().mean() > 0.95  # the same part is red in both


def test_open_dataset_detects_layout_and_explains_unknown_folders(tmp_path):
    assert len(open_dataset(str(write_fill50k(tmp_path / "fill")), 16)) == 3
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        open_dataset(str(tmp_path), 16)
    with pytest.raises(FileNotFoundError, match=f"is an index file: give the folder .*{tmp_path}"):
        open_dataset(str(tmp_path / "fill" / "prompt.json"), 16)
    with pytest.raises(FileNotFoundError, match="nothere: no such folder"):
        open_dataset(str(tmp_path / "nothere"), 16)
    (tmp_path / "fill" / "metadata.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds both prompt.json .* and metadata.jsonl"):
        open_dataset(str(tmp_path / "fill"), 16)


def test_square_crop_keeps_the_centre(tmp_path):
    # A 96x32 image: black | red | black thirds; the centre square is all red.
    array = np.zeros((32, 96, 3), dtype=np.uint8)
    array[:, 32:64] = RED
    Image.fromarray(array).save(tmp_path / "wide.png")
    from cnet.train.data import load_square

    crop = np.asarray(load_square(tmp_path / "wide.png", 32))
    assert crop.shape == (32, 32, 3)
    assert np.abs(crop[:, 2:-2].astype(int) - RED).max() <= 2


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_batch_order_restarts_exactly_at_any_example_whatever_the_batch_size():
    full = take(iter(StepBatches(10, 3, seed=7)), 12)  # crosses several epochs
    resumed = take(iter(StepBatches(10, 3, seed=7, start=15)), 7)
    assert resumed == full[5:]
    assert take(iter(StepBatches(10, 3, seed=8)), 12) != full
    smaller = take(iter(StepBatches(10, 2, seed=7, start=15)), 3)
    assert sum(smaller, []) == sum(full[5:7], [])  # the same examples, two at a time


def test_a_batch_stream_says_where_the_next_batch_begins(tmp_path):
    dataset = fill50k(write_fill50k(tmp_path, 6), 16)
    stream = BatchStream(dataset, 2, seed=0, num_processes=3)  # this process's third of each
    next(stream), next(stream)
    assert stream.position == 2 * 2 * 3


def test_batch_order_visits_every_example_once_per_epoch_across_processes():
    n, batch, world = 12, 2, 3
    shares = [take(iter(StepBatches(n, batch, 0, 0, p, world)), 2) for p in range(world)]
    epoch = [i for share in shares for b in share for i in b]
    assert sorted(epoch) == list(range(n))


def test_batch_stream_collates_tensors_and_prompts(tmp_path):
    dataset = fill50k(write_fill50k(tmp_path, 4), 16)
    batch = next(BatchStream(dataset, batch_size=2, seed=0))
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert batch["conditioning_pixel_values"].shape == (2, 3, 16, 16)
    assert len(batch["prompt"]) == 2 and all(p.startswith("p") for p in batch["prompt"])


def test_synthetic_source_gives_the_same_example_format():
    pytest.importorskip("cnet.synth.dataset", reason="the synthetic world (#4) has not landed")
    dataset = open_dataset("synth", 64, "canny", length=4)
    example = dataset[0]
    assert example["pixel_values"].shape == example["conditioning_pixel_values"].shape
    assert example["pixel_values"].min() >= -1 and example["pixel_values"].max() <= 1
    assert example["conditioning_pixel_values"].min() >= 0
    assert isinstance(example["prompt"], str) and example["prompt"]


def test_every_condition_takes_the_conditions_in_turn_on_the_same_scenes():
    from cnet.synth.dataset import SynthDataset
    from cnet.synth.sample import CONDITION_KEYS

    mixed = open_dataset("synth", 64, "all", length=9)
    assert len(mixed) == 9
    for index in (0, 3, 8):
        key = CONDITION_KEYS[index % len(CONDITION_KEYS)]
        alone = SynthDataset("train", 64, key, 9)[index]
        example = mixed[index]
        assert example["prompt"] == alone["prompt"]
        assert torch.equal(example["pixel_values"], alone["pixel_values"])
        assert torch.equal(example["conditioning_pixel_values"], alone["conditioning_pixel_values"])


def test_a_replay_share_spreads_the_other_conditions_maps_through_one_conditions_scenes():
    from cnet.synth.dataset import SynthDataset
    from cnet.synth.sample import CONDITION_KEYS

    mixed = open_dataset("synth", 64, "scribble", length=40, replay_share=0.25)
    picked = [mixed.condition_of(i) for i in range(40)]
    assert picked.count("scribble") == 30
    assert all(key != "scribble" for key in picked[3::4])  # evenly spread: every fourth
    assert picked[3::4][:6] == [key for key in CONDITION_KEYS if key != "scribble"]
    replayed, alone = mixed[3], SynthDataset("train", 64, picked[3], 40)[3]
    assert torch.equal(replayed["conditioning_pixel_values"], alone["conditioning_pixel_values"])
    assert replayed["prompt"] == alone["prompt"]


@pytest.mark.parametrize(
    ("source", "condition", "share", "message"),
    [
        ("synth", "all", 0.25, "one --condition"),
        ("synth", None, 0.25, "one --condition"),
        ("folder", "canny", 0.25, "--data synth"),
        ("synth", "canny", 1.0, "from 0 to below 1"),
    ],
)
def test_a_replay_share_needs_one_synthetic_condition_and_a_fraction(
    source, condition, share, message
):
    with pytest.raises(ValueError, match=message):
        open_dataset(source, 64, condition, length=4, replay_share=share)
