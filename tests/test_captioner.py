"""The captioner loads from a folder or the hub cache, writes plain text, fails with a message."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnet import captioner as cap
from cnet.models import SD15_CAPTIONER

CORPUS = (
    "a red sphere and a blue cube on a white background",
    "a person in green on a gray floor against a light blue background",
)


@pytest.fixture(scope="module")
def tiny_captioner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    tokenizer = cap.build_tokenizer(CORPUS)
    model, processor = cap.build_captioner(cap.TINY, tokenizer)
    return cap.save_captioner(model, processor, tmp_path_factory.mktemp("captioner") / "tiny")


@pytest.fixture(autouse=True)
def fresh_cache():
    cap.clear_cache()
    yield
    cap.clear_cache()


def images(n: int = 2) -> list[Image.Image]:
    colours = [(200, 30, 35), (35, 75, 200), (40, 150, 60)]
    return [Image.new("RGB", (48 + 8 * i, 40), colours[i % 3]) for i in range(n)]


def test_loads_from_folder_and_writes_plain_bounded_text(tiny_captioner_dir):
    captioner = cap.load_captioner(tiny_captioner_dir, device="cpu")
    captions = captioner(images(3), max_new_tokens=12)
    assert len(captions) == 3
    for caption in captions:
        assert isinstance(caption, str)
        assert caption == caption.strip()
        assert "[" not in caption and "\n" not in caption
        assert len(caption) <= cap.MAX_CAPTION_CHARS
    assert captioner([]) == []
    # numpy arrays and paths read as cnet.imageio reads them; one image alone is refused
    (first,) = captioner([np.asarray(images(1)[0])], max_new_tokens=12)
    assert first == captions[0]
    with pytest.raises(TypeError, match=r"Give a list of images, e\.g\. captioner\(\[image\]\)"):
        captioner(images(1)[0])


def test_max_new_tokens_bounds_the_caption(tiny_captioner_dir):
    captioner = cap.load_captioner(tiny_captioner_dir, device="cpu")
    tokens = captioner.model.generate(
        pixel_values=captioner.processor(images=images(1), return_tensors="pt")["pixel_values"],
        max_new_tokens=3,
    )
    assert tokens.shape[1] <= 1 + 3  # [DEC] + new tokens
    (caption,) = captioner(images(1), max_new_tokens=3)
    assert len(caption.split()) <= 3


def test_loaded_captioner_is_cached_per_source_device_dtype(tiny_captioner_dir):
    import torch

    first = cap.load_captioner(tiny_captioner_dir, device="cpu")
    assert cap.load_captioner(str(tiny_captioner_dir), device="cpu") is first
    assert cap.load_captioner(tiny_captioner_dir, device="cpu", dtype=torch.float64) is not first


def test_fp16_storage_loads_as_float32_on_cpu(tiny_captioner_dir, tmp_path):
    import torch

    captioner = cap.load_captioner(tiny_captioner_dir, device="cpu")
    half = cap.save_captioner(
        captioner.model, captioner.processor, tmp_path / "half", dtype=torch.float16
    )
    loaded = cap.load_captioner(half, device="cpu")
    assert loaded.model.dtype == torch.float32
    assert captioner.model.dtype == torch.float32  # saving in fp16 left the original alone
    assert len(loaded(images(1))) == 1  # the default max_new_tokens is longer than TINY allows


def test_missing_folder_names_the_path_and_the_command(tmp_path):
    missing = tmp_path / "no" / "captioner"
    with pytest.raises(cap.CaptionerUnavailable) as info:
        cap.load_captioner(missing)
    message = str(info.value)
    assert str(missing) in message
    assert f"python -m cnet train captioner --output-dir {missing}" in message


def test_the_folder_that_command_writes_loads(tiny_captioner_dir, tmp_path):
    """Training with --output-dir DIR leaves the captioner in DIR/captioner/; DIR loads."""
    run = tmp_path / "model" / "captioner"
    shutil.copytree(tiny_captioner_dir, run / "captioner")
    assert cap.load_captioner(run, device="cpu") is not None


@pytest.mark.parametrize("damage", ["corrupt weights", "no weights", "no config", "bad config"])
def test_broken_folder_is_unavailable_not_a_crash(tiny_captioner_dir, tmp_path, damage):
    broken = Path(shutil.copytree(tiny_captioner_dir, tmp_path / "broken"))
    if damage == "corrupt weights":
        (broken / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    elif damage == "no weights":
        (broken / "model.safetensors").unlink()
    elif damage == "no config":
        (broken / "config.json").unlink()
    else:
        (broken / "config.json").write_text("{ this is not json")
    with pytest.raises(cap.CaptionerUnavailable) as info:
        cap.load_captioner(broken, device="cpu")
    assert str(broken) in str(info.value)
    assert "python -m cnet train captioner" in str(info.value)


@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) every attempt to open a network connection."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_offline_hub_id_not_cached_is_unavailable_without_network(empty_hub_cache, no_network):
    with pytest.raises(cap.CaptionerUnavailable) as info:
        cap.load_captioner(SD15_CAPTIONER, device="cpu")
    assert f"hf download {SD15_CAPTIONER}" in str(info.value)
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert str(info.value).startswith(f"There is no folder {SD15_CAPTIONER} here, and as a hub")
    assert no_network == []


def test_offline_hub_id_loads_from_the_local_cache(tiny_captioner_dir, empty_hub_cache, no_network):
    repo = empty_hub_cache / "models--cnet-test--tiny-blip"
    revision = "0" * 40
    shutil.copytree(tiny_captioner_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    captioner = cap.load_captioner("cnet-test/tiny-blip", device="cpu")
    assert len(captioner(images(1), max_new_tokens=5)) == 1
    assert no_network == []


def test_tokenizer_knows_corpus_words_and_spells_out_any_other_word():
    tokenizer = cap.build_tokenizer(CORPUS)
    known = tokenizer("a light blue sphere", add_special_tokens=False).input_ids
    assert len(known) == 4
    text = "A zebra-crossing, 42 quokkas!"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert len(ids) > len(text.split())  # unknown words fall back to pieces
    decoded = tokenizer.decode(ids)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")
    assert tokenizer.bos_token == cap.DECODER_BOS


def test_clean_caption_strips_special_tokens_and_bounds_length():
    assert cap.clean_caption("[DEC] a red  cube , on [SEP] [PAD]") == "a red cube, on"
    long = " ".join(["word"] * 100)
    cleaned = cap.clean_caption(long, max_chars=50)
    assert len(cleaned) <= 50
    assert cleaned.endswith("word")


# ---- the correctness metric ------------------------------------------------------------------

REFERENCE = "a person in green and a white sphere on a dark floor against a black background"


@pytest.mark.parametrize(
    "caption",
    [
        REFERENCE,
        "a white sphere and a person in green on a dark floor against a black background",
        "A person in green, and a white sphere, on a dark floor against a black background.",
    ],
)
def test_metric_accepts_right_captions(caption):
    assert cap.caption_is_correct(caption, REFERENCE)


@pytest.mark.parametrize(
    "caption",
    [
        "a person in red and a white sphere on a dark floor against a black background",  # colour
        "a person in green and a white cube on a dark floor against a black background",  # object
        "a person in white and a green sphere on a dark floor against a black background",  # swap
        "a white sphere on a dark floor against a black background",  # missing object
        "a person in green, a white sphere and a red cone on a dark floor against a black "
        "background",  # extra object
        "a person in green and a white sphere on a dark floor against a white background",
        "a person in green and a white sphere on a black background",  # floor missing
        "a person in green and a white sphere red on a dark floor against a black background",
        "",
    ],
)
def test_metric_rejects_wrong_captions(caption):
    assert not cap.caption_is_correct(caption, REFERENCE)


def test_metric_reads_counts_plurals_and_multi_word_colours():
    assert cap.caption_is_correct(
        "two red cubes on a grey background", "a red cube and a red cube on a gray background"
    )
    assert not cap.caption_is_correct(
        "a light gray cube on a white background", "a gray cube on a white background"
    )


def test_caption_accuracy_is_the_share_of_correct_captions():
    references = ["a red cube on a white background"] * 4
    captions = [
        "a red cube on a white background",
        "a red cube on a white background",
        "a blue cube on a white background",
        "a red sphere on a white background",
    ]
    assert cap.caption_accuracy(captions, references) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        cap.caption_accuracy(captions[:3], references)
