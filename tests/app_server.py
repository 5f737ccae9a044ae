"""Run app.py as a user would, in its own process on a free localhost port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from gradio_client import Client

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 300.0  # seconds; imports alone take a while on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One SSL context for every gradio_client call. gradio_client opens a new httpx client for
    each HTTP call of a request (upload, queue join, message stream, each file download), and
    httpx builds a new context for each unless given one, reading the whole CA bundle even for
    an http:// URL: about 50 ms per call on a busy 2-core machine."""
    return ssl.create_default_context()


def api_client(url: str, download_files: str | Path | Literal[False]) -> Client:
    """A gradio_client Client for the app at `url` that reuses one SSL context."""
    from gradio_client import Client

    return Client(url, verbose=False, download_files=download_files, ssl_verify=ssl_context())


@contextlib.contextmanager
def serve_app(
    *args: str, log_path: Path, timeout: float = START_TIMEOUT, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start `python app.py *args` and yield its URL once it answers; stop it afterwards.

    `env`: extra environment variables for the server (e.g. OMP_NUM_THREADS)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", **(env or {}))
    command = [sys.executable, str(ROOT / "app.py"), "--port", str(port), *args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                state = "exited" if process.poll() is not None else f"not up after {timeout:.0f}s"
                raise RuntimeError(f"app.py {state}; its log:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
