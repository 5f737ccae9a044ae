"""Shared fixtures: an offline environment and a tiny random-weight model in the embedded layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402

CONDITION_KEYS = ("scribble", "canny", "hough", "pose", "seg", "depth", "normal")
TINY_CORPUS = (
    "a red sphere and a blue cube on a white background",
    "a green cylinder, a yellow cone and a person on a grey background",
    "a professional, detailed, high-quality image",
    "best quality, extremely detailed",
)


def build_tiny_model_dir(root: Path, architecture: str = "tiny") -> Path:
    """Write base/ (a diffusers pipeline), controlnet/<key>/ and preset.json under `root`.

    The ControlNets' zero convolutions get small random weights, each condition its own, so a
    test can tell them apart (at true initialisation every ControlNet leaves the base unchanged).
    `architecture="small"` gives the embedded preset's widths (random weights: its speed, not
    its images), for benchmarks.
    """
    import torch

    from cnet.architecture import (
        SMALL,
        TINY,
        build_components,
        build_controlnet,
        build_tokenizer,
        save_pipeline_dir,
    )

    config = {"tiny": TINY, "small": SMALL}[architecture]

    torch.manual_seed(0)
    tokenizer = build_tokenizer(TINY_CORPUS, root / "tokenizer-build", config.tokenizer_merges)
    components = build_components(config, tokenizer)
    save_pipeline_dir(components, root / "base", config)
    for i, key in enumerate(CONDITION_KEYS):
        torch.manual_seed(100 + i)
        controlnet = build_controlnet(components["unet"], config)
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        with torch.no_grad():
            for conv in zero_convs:
                conv.weight.normal_(0.0, 0.05)
        controlnet.save_pretrained(root / "controlnet" / key, safe_serialization=True)
    preset = {"name": architecture, "resolution": config.sample_size}
    (root / "preset.json").write_text(json.dumps(preset))
    return root


def fine_tune_of(start: Path, out: Path, seed: int = 0, rank: int = 2) -> Path:
    """What a fine-tune of the ControlNet folder `start` leaves in `out`: every weight moved, each
    matrix (a conv's kernels flattened) by a change of `rank`, with its lineage continued."""
    import torch
    from diffusers import ControlNetModel

    from cnet.train.lineage import read_lineage, write_lineage

    model = ControlNetModel.from_pretrained(start)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() < 2:
                weight.add_(0.01 * torch.randn(weight.shape, generator=generator))
                continue
            up = torch.randn(weight.shape[0], rank, generator=generator)
            down = torch.randn(rank, weight[0].numel(), generator=generator)
            weight.add_((0.01 * up @ down).reshape(weight.shape))
    model.save_pretrained(out, safe_serialization=True)
    write_lineage(out, read_lineage(start), {"trainer": "a test's stand-in", "seed": seed})
    return out


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster on one thread, and leave the shared cores to others."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    """The engine on the tiny model, loaded. One thread: the model is too small to gain from
    more, and CI machines are shared."""
    from cnet.engine import load_engine

    engine = load_engine(model_dir=str(tiny_model_dir), device="cpu", threads=1)
    engine.load()
    return engine
