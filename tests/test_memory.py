"""Memory stays bounded: the server's resident memory hardly grows over many generations that
cycle through more conditions than the ControlNet cache holds, with a new prompt and seed each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psutil
import pytest
from app_server import api_client, serve_app
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

SERVER_ENV = {"OMP_NUM_THREADS": "1"}
# "none": the upload is the map, so the detectors' own caches stay out of the measurement.
CONDITIONS = ("canny", "depth", "seg", "normal", "hough", "pose")
CACHE = 2  # ControlNets kept; fewer than CONDITIONS, so they are loaded and dropped all along
WARM_UP = len(CONDITIONS)
BOUND_MB = {30: 25, 200: 50}  # resident growth allowed after the warm-up (measured: +1, +3)


def server_process(url: str) -> psutil.Process:
    port = url.rstrip("/").rsplit(":", 1)[1]
    for child in psutil.Process().children(recursive=True):
        if "app.py" in " ".join(child.cmdline()) and port in child.cmdline():
            return child
    raise AssertionError(f"no app.py child process serving port {port}")


def generations(client: Client, image: Path, start: int, count: int) -> None:
    for i in range(start, start + count):
        gallery, _, seed = client.predict(
            image=handle_file(image),
            preprocessor="none",
            prompt=f"a red sphere, take {i}",
            seed=i,
            steps=2,
            resolution=64,
            num_images=1,
            randomize_seed=False,
            api_name=f"/{CONDITIONS[i % len(CONDITIONS)]}",
        )
        assert seed == i and len(gallery) == 2


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("memory-app")
    y, x = np.mgrid[:64, :64]
    image = logs / "map.png"
    Image.fromarray(((x // 8 + y // 8) % 2 * 255).astype(np.uint8)).save(image)
    args = ("--model-dir", str(tiny_model_dir), "--controlnet-cache", str(CACHE))
    with serve_app(*args, log_path=logs / "app.log", env=SERVER_ENV) as url:
        client = api_client(url, str(logs))
        generations(client, image, 0, WARM_UP)
        yield client, server_process(url), image


def grow(served, count: int) -> float:
    client, process, image = served
    before = process.memory_info().rss
    generations(client, image, WARM_UP, count)
    growth = (process.memory_info().rss - before) / 2**20
    print(f"\nresident memory after {count} generations: {growth:+.1f} MB")
    return growth


def test_memory_stays_bounded_over_30_generations(served):
    assert grow(served, 30) < BOUND_MB[30]


@pytest.mark.slow
def test_memory_stays_bounded_over_200_generations(served):
    assert grow(served, 200) < BOUND_MB[200]
