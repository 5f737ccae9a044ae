"""Many users at once: a bounded queue answers "busy" beyond its size, results never cross
between users, and Stop frees the worker for the next request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from app_server import api_client, serve_app
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import QueueError, Status  # noqa: E402

SERVER_ENV = {"OMP_NUM_THREADS": "1"}
MAX_QUEUE = 8
CLIENTS = 50
FAST = dict(steps=2, resolution=64, num_images=1, randomize_seed=False)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    y, x = np.mgrid[:96, :96]
    picture = np.stack([x * 2, y * 2, (x + y)], axis=2).astype(np.uint8)
    picture[30:60, 30:60] = (220, 40, 40)
    path = tmp_path_factory.mktemp("load-inputs") / "scene.png"
    Image.fromarray(picture).save(path)
    return path


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("load-app")
    args = ("--model-dir", str(tiny_model_dir), "--max-queue", str(MAX_QUEUE))
    with serve_app(*args, "--concurrency", "1", log_path=logs / "app.log", env=SERVER_ENV) as url:
        yield url, logs


def parameters(gallery: list[dict]) -> str:
    return Image.open(gallery[1]["image"]).info["parameters"]


@pytest.mark.slow
def test_fifty_concurrent_clients_get_their_own_images_or_a_busy_answer(server, scene):
    url, logs = server
    clients = [api_client(url, str(logs)) for _ in range(CLIENTS)]
    outcomes: dict[int, tuple[str, object]] = {}
    start = threading.Barrier(CLIENTS)

    def user(i: int) -> None:
        start.wait()
        try:
            gallery, _, seed = clients[i].predict(
                image=handle_file(scene),
                prompt=f"user {i} asks for a sphere",
                seed=1000 + i,
                **FAST,
                api_name="/canny",
            )
            outcomes[i] = ("images", (gallery, seed))
        except (QueueError, AppError) as error:
            outcomes[i] = ("busy", str(error))
        except Exception as error:  # anything else fails below, named
            outcomes[i] = ("failed", repr(error))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(CLIENTS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    took = time.monotonic() - began

    assert len(outcomes) == CLIENTS, "some clients never got an answer"
    kinds = [kind for kind, _ in outcomes.values()]
    busy = [detail for kind, detail in outcomes.values() if kind == "busy"]
    assert "failed" not in kinds, [d for k, d in outcomes.values() if k == "failed"]
    assert all("queue is full" in message.lower() for message in busy), busy
    assert busy, f"{CLIENTS} requests at once never filled a queue of {MAX_QUEUE}"
    served = {i: detail for i, (kind, detail) in outcomes.items() if kind == "images"}
    assert served, "nobody got images"
    for i, (gallery, seed) in served.items():
        text = parameters(gallery)
        assert seed == 1000 + i and f"Seed: {1000 + i}," in text
        assert f"user {i} asks" in text.splitlines()[0]
    print(f"\n{len(served)} served, {len(busy)} told busy, in {took:.1f} s")

    gallery, _, _ = clients[0].predict(image=handle_file(scene), **FAST, api_name="/canny")
    assert len(gallery) == 2


def test_stop_frees_the_worker_for_the_next_request(server, scene):
    url, logs = server
    alice = api_client(url, str(logs))
    bob = api_client(url, str(logs))
    long_run = dict(FAST, steps=100, num_images=4, resolution=128)
    job = alice.submit(image=handle_file(scene), **long_run, api_name="/canny")
    deadline = time.monotonic() + 120
    while job.status().code != Status.PROGRESS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.status().code == Status.PROGRESS, "the long run never started sampling"
    alice.predict(api_name="/stop_canny")
    stopped = time.monotonic()
    gallery, _, _ = job.result(timeout=60)
    assert [item["caption"] for item in gallery] == ["control map"]  # stopped: no samples
    gallery, _, _ = bob.predict(image=handle_file(scene), **FAST, seed=3, api_name="/canny")
    assert len(gallery) == 2
    assert time.monotonic() - stopped < 30, "the stopped run kept the worker busy"
