"""BLIP captions for the automatic prompt mode.

The engine captions the image made with the default prompt and diffuses again with the caption.
Any BLIP captioning checkpoint works: Salesforce/blip-image-captioning-base for sd15, or the
embedded preset's small captioner, which has the same architecture (BlipForConditionalGeneration
+ BlipProcessor) and is trained on the synthetic world by `python -m cnet train captioner`.

This module also builds such small captioners (the tokenizer is learned from our own corpus) and
scores captions against the prompts of synthetic scenes.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from cnet.imageio import ImageLike, to_rgb_array
from cnet.models import SD15_CAPTIONER, detect_device, hub_offline, offline_variable, run_result

MAX_CAPTION_CHARS = 200  # a caption becomes a prompt: keep it well inside CLIP's 77 tokens

# BERT's special tokens, plus BLIP's "[DEC]": the first token of every caption the decoder writes.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DECODER_BOS = "[DEC]"
# WordPiece falls back to single characters, so any (lower-cased, as BERT does) word tokenizes.
FALLBACK_CHARS = "".join(chr(c) for c in range(33, 127) if not chr(c).isupper())


class CaptionerUnavailable(RuntimeError):
    """The captioner could not be loaded. The message says what is missing and how to get it."""


@dataclass(frozen=True)
class CaptionerConfig:
    """Widths and depths of a small BLIP captioner (ViT image encoder + BERT text decoder)."""

    image_size: int = 128
    patch_size: int = 16
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    max_text_length: int = 48  # tokens, [DEC] and [SEP] included


EMBEDDED = CaptionerConfig()  # 1.7 M parameters: 3.5 MB in fp16
TINY = CaptionerConfig(
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=1,
    vision_heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
    max_text_length=24,
)


def _words(text: str) -> list[str]:
    """Split as BERT's pre-tokenizer does: runs of letters/digits, and single punctuation marks."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def build_tokenizer(corpus: Iterable[str], out_dir: str | Path | None = None):
    """A BERT WordPiece tokenizer whose vocabulary is the corpus' words plus single characters.

    Corpus words are single tokens; any other word still tokenizes, as characters. `[DEC]` is
    the beginning-of-caption token BLIP's decoder expects.
    """
    from transformers import BertTokenizer

    counts = Counter(w for line in corpus for w in _words(line))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    chars = list(FALLBACK_CHARS)
    tokens = [*SPECIAL_TOKENS, DECODER_BOS, *words, *chars, *("##" + c for c in chars)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = BertTokenizer(vocab=vocab, bos_token=DECODER_BOS)
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_captioner(config: CaptionerConfig, tokenizer):
    """A randomly initialised BlipForConditionalGeneration and its BlipProcessor."""
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    blip_config = BlipConfig(
        vision_config={
            "hidden_size": config.vision_width,
            "intermediate_size": 4 * config.vision_width,
            "num_hidden_layers": config.vision_layers,
            "num_attention_heads": config.vision_heads,
            "image_size": config.image_size,
            "patch_size": config.patch_size,
            # BLIP's default (1e-10) is for loading pretrained weights; from scratch it needs more.
            "initializer_range": 0.02,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": config.text_width,
            "intermediate_size": 4 * config.text_width,
            "num_hidden_layers": config.text_layers,
            "num_attention_heads": config.text_heads,
            "max_position_embeddings": config.max_text_length,
            "bos_token_id": tokenizer.bos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "eos_token_id": tokenizer.sep_token_id,
        },
        projection_dim=config.text_width,
        image_text_hidden_size=config.text_width,
    )
    model = BlipForConditionalGeneration(blip_config)
    side = config.image_size
    image_processor = BlipImageProcessor(size={"height": side, "width": side})
    tokenizer.model_max_length = config.max_text_length
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


def save_captioner(model, processor, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a folder that `load_captioner` and `BlipForConditionalGeneration` open.

    `dtype=torch.float16` halves the file; loading casts back to the dtype asked for.
    """
    import copy

    out_dir = Path(out_dir)
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


def clean_caption(text: str, max_chars: int = MAX_CAPTION_CHARS) -> str:
    """Plain text: no special tokens, single spaces, at most `max_chars` (cut at a word break)."""
    text = re.sub(r"\[[A-Z]+\]", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = " ".join(text.split())
    if len(text) > max_chars:
        cut = text[: max_chars + 1].rsplit(" ", 1)[0]
        text = cut if cut else text[:max_chars]
    return text.strip(" ,;:")


class Captioner:
    """Turns images into one plain-text caption each (greedy decoding: deterministic)."""

    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype, source: str):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.source = source

    @torch.no_grad()
    def __call__(self, images: Sequence[ImageLike], max_new_tokens: int = 30) -> list[str]:
        """One caption per image: PIL images, numpy arrays or paths, as `cnet.imageio` reads."""
        if isinstance(images, ImageLike):
            raise TypeError("Give a list of images, e.g. captioner([image]); got one image.")
        if not images:
            return []
        pictures = [Image.fromarray(to_rgb_array(image)) for image in images]
        inputs = self.processor(images=pictures, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        # The decoder cannot look past its position embeddings; [DEC] takes the first one.
        longest = self.model.config.text_config.max_position_embeddings - 1
        tokens = self.model.generate(
            pixel_values=pixel_values,
            max_new_tokens=max(1, min(max_new_tokens, longest)),
            do_sample=False,
            num_beams=1,
        )
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [clean_caption(text) for text in texts]

    def __repr__(self) -> str:
        return f"Captioner({self.source!r}, device={self.device}, dtype={self.dtype})"


_cache: dict[tuple[str, str, str], Captioner] = {}
_cache_lock = threading.Lock()


def _looks_like_hub_id(source: str) -> bool:
    """ "name" or "owner/name", as the hub spells repository ids; anything else is a path."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", source) is not None


def _unavailable_message(source: str, is_dir: bool, reason: str) -> str:
    if is_dir:
        return (
            f"The captioner folder {source} could not be loaded ({reason}). It must hold a BLIP "
            "captioner saved with save_pretrained (config.json, model.safetensors, tokenizer and "
            f"processor files). Train the embedded one with: python -m cnet train captioner "
            f"--output-dir {source}"
        )
    if _looks_like_hub_id(source):
        where = (
            "is not in the local Hugging Face cache, and "
            f"{offline_variable()} forbids downloading it"
            if hub_offline()
            else f"could not be fetched from the Hugging Face hub ({reason})"
        )
        return (
            f"There is no folder {source} here, and as a hub id the captioner {source} {where}. "
            f"Fetch it once with: hf download {source} "
            f"(or pass a local folder; an embedded-size captioner is trained with: "
            f"python -m cnet train captioner --output-dir DIR)"
        )
    return (
        f"No captioner folder at {source}. Train one with: python -m cnet train captioner "
        f"--output-dir {source}  (or use the sd15 captioner: hf download {SD15_CAPTIONER})"
    )


def load_captioner(
    source: str | Path, device: str | None = None, dtype: torch.dtype | None = None
) -> Captioner:
    """Load a BLIP captioner from a local folder (or a training run's output folder, whose
    captioner/ holds it) or a hub id; cached per (source, device, dtype).

    Raises CaptionerUnavailable, with the command that fetches or trains the captioner, when it is
    missing or broken. With HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set, only the local cache is
    consulted.
    """
    path = Path(run_result(str(source), "captioner")).expanduser()
    is_dir = path.is_dir()
    if not is_dir and not _looks_like_hub_id(str(source)):
        raise CaptionerUnavailable(_unavailable_message(str(source), False, "missing"))
    name = str(path.resolve()) if is_dir else str(source)
    device_ = torch.device(device or detect_device())
    if dtype is None:
        dtype = torch.float16 if device_.type == "cuda" else torch.float32
    key = (name, str(device_), str(dtype))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        from transformers import BlipForConditionalGeneration, BlipProcessor

        local_only = is_dir or hub_offline()
        try:
            model = BlipForConditionalGeneration.from_pretrained(
                name, local_files_only=local_only, dtype=dtype
            )
            processor = BlipProcessor.from_pretrained(name, local_files_only=local_only)
        # from_pretrained reports missing, partial and corrupt files through many exception types
        # (OSError, ValueError, safetensors and JSON errors); each one means "no usable captioner".
        except Exception as err:
            reason = " ".join(str(err).split())[:300] or type(err).__name__
            raise CaptionerUnavailable(_unavailable_message(str(source), is_dir, reason)) from err
        captioner = Captioner(model, processor, device_, dtype, source=name)
        _cache[key] = captioner
        return captioner


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


# ---- scoring captions of synthetic scenes -------------------------------------------------------

NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def _vocabulary() -> tuple[list[tuple[str, ...]], dict[str, str]]:
    """Colour phrases (longest first) and noun forms (plural -> singular) of the scene world."""
    from cnet.synth import palette

    colours = {*palette.OBJECT_COLORS, *palette.BACKGROUND_COLORS, *palette.FLOOR_COLORS, "grey"}
    phrases = sorted((tuple(c.split()) for c in colours), key=len, reverse=True)
    nouns = [*palette.SEG_CLASS, "wall", "ground"]
    forms = {n: n for n in nouns}
    forms.update({n + "s": n for n in nouns})
    forms.update({"people": "person", "persons": "person"})
    return phrases, forms


def scene_words(text: str) -> Counter[tuple[str, str]]:
    """The (colour, noun) pairs a text names, with their counts: "two red cubes" -> (red, cube) x2.

    A noun takes the colour phrase just before it ("a light blue background") or, for people,
    just after "in" ("a person in green"); a noun without a colour gets "", a colour without a
    noun is kept as (colour, ""), so stray colour words count as errors. "grey" is "gray".
    """
    phrases, forms = _vocabulary()
    words = ["gray" if w == "grey" else w for w in _words(text) if re.fullmatch(r"\w+", w)]
    items: list[
        tuple[str, str | int]
    ] = []  # ("colour", name) | ("noun", name) | ("count", n) | ...
    i = 0
    while i < len(words):
        phrase = next((p for p in phrases if tuple(words[i : i + len(p)]) == p), None)
        if phrase is not None:
            items.append(("colour", " ".join(phrase)))
            i += len(phrase)
            continue
        word = words[i]
        if word in forms:
            items.append(("noun", forms[word]))
        elif word in NUMBER_WORDS:
            items.append(("count", NUMBER_WORDS[word]))
        else:
            items.append(("word", word))
        i += 1

    found: Counter[tuple[str, str]] = Counter()
    count, colour, i = 1, "", 0
    while i < len(items):
        kind, value = items[i]
        if kind == "colour":
            if colour:
                found[(colour, "")] += 1
            colour = str(value)
        elif kind == "count":
            count = int(value)
        elif kind == "noun":
            after = items[i + 1 : i + 3]
            if (
                not colour
                and len(after) == 2
                and after[0] == ("word", "in")
                and after[1][0] == "colour"
            ):
                colour = str(after[1][1])
                i += 2
            found[(colour, str(value))] += count
            count, colour = 1, ""
        i += 1
    if colour:
        found[(colour, "")] += 1
    return found


def caption_is_correct(caption: str, reference: str) -> bool:
    """True when the caption names exactly the reference's objects, each with its colour."""
    return scene_words(caption) == scene_words(reference)


def caption_accuracy(captions: Sequence[str], references: Sequence[str]) -> float:
    """Share of captions whose object and colour words are all correct."""
    if len(captions) != len(references):
        raise ValueError(f"{len(captions)} captions for {len(references)} references")
    if not captions:
        raise ValueError("no captions to score")
    return sum(map(caption_is_correct, captions, references)) / len(captions)
