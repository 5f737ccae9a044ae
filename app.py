"""ControlNet Studio: the Gradio app. `python app.py --help` lists the options.

The layout lives in cnet/ui (one tab per condition of the registry in cnet/conditions.py);
generation in cnet/engine.py. This file reads the command line, loads the engine and serves.
"""

from __future__ import annotations

import os

# Before Gradio is imported: no analytics, no telemetry, no version check.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from cnet.cli.options import (  # noqa: E402
    add_model_flags,
    add_performance_flags,
    file_size,
    model_settings,
    performance_settings,
    port,
    positive_int,
)

if TYPE_CHECKING:
    from cnet.engine import Engine

log = logging.getLogger("cnet.app")

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "Consolas", "monospace"]
# Gradio's queue looks for new work every millisecond and for progress every 10 ms, even with
# nobody connected: 11.5 % of a core for an idle app on the 2-core VM (1.8 % at 20 ms), taken
# from the other core of a running generation. A wait of 20 ms before a preview or a run starts
# is not seen, nor a progress bar redrawn 20 times a second.
QUEUE_POLL_SECONDS = {"sleep_when_free": 0.02, "progress_update_sleep_when_free": 0.05}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ControlNet Studio: the Gradio app.")
    model = add_model_flags(parser)
    model.add_argument(
        "--controlnet-cache",
        type=positive_int,
        default=3,
        metavar="N",
        help="ControlNets kept loaded at once; the least recently used is dropped (default: 3)",
    )
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (default: 127.0.0.1; 0.0.0.0 to serve your network)",
    )
    server.add_argument("--port", type=port, default=os.environ.get("GRADIO_SERVER_PORT", "7860"))
    server.add_argument(
        "--max-queue",
        type=positive_int,
        default=32,
        help="requests waiting at most; beyond this the app answers that it is busy (default: 32)",
    )
    server.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        help="generations run at the same time, and previews at the same time (default: 1)",
    )
    server.add_argument(
        "--max-file-size",
        type=file_size,
        default="25mb",
        help="largest upload, e.g. 25mb or 1gb (default: 25mb)",
    )
    add_performance_flags(parser)
    return parser.parse_args(argv)


def engine_from(args: argparse.Namespace) -> Engine:
    """The engine the command line asks for (no weights loaded yet)."""
    from cnet.engine import load_engine

    return load_engine(
        controlnet_cache_size=args.controlnet_cache,
        **model_settings(args),
        **performance_settings(args),
    )


def calm_queue(queue: object) -> None:
    """Make Gradio's queue (`demo._queue`, after `demo.queue()`) poll at QUEUE_POLL_SECONDS."""
    for name, seconds in QUEUE_POLL_SECONDS.items():
        if not hasattr(queue, name):  # a Gradio that renamed it: the app works, only busier
            log.warning("Gradio's queue has no %s: the app polls at Gradio's own rate.", name)
            continue
        setattr(queue, name, seconds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    try:
        engine = engine_from(args)
    except ValueError as error:  # e.g. an unknown preset, or --cpu-offload without a GPU
        log.error("%s", error)
        return 2

    import gradio as gr

    from cnet.conditions import CONDITIONS, set_annotators_dir
    from cnet.ui import CSS, build_demo

    if args.annotators_dir:
        set_annotators_dir(args.annotators_dir)
    log.info("model preset %s: %s", engine.preset.name, engine.reason)
    log.info("%s", engine.status())

    demo = build_demo(engine)
    demo.queue(max_size=args.max_queue, default_concurrency_limit=args.concurrency)
    calm_queue(demo._queue)
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            ssr_mode=False,
            mcp_server=False,
            footer_links=["api", "gradio"],
            max_file_size=args.max_file_size,
            # The app's functions raise only gr.Error; this lets Gradio's own request checks (a
            # wrong number of values, a path that was not uploaded) answer with their message.
            show_error=True,
            theme=gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS),
            css=CSS,
            prevent_thread_lock=True,
        )
    except OSError:  # Gradio's own message names launch()'s parameter, not the flag
        log.error(
            "Cannot listen on %s:%s: the port is in use, or not this user's to open; choose "
            "another --port.",
            args.host,
            args.port,
        )
        return 1
    # The UI answers first; the weights (and diffusers' slow import) load behind it, so a
    # person's first Run does not pay for them. Missing weights are left to Run to report.
    if not engine.missing():
        engine.load_in_background([next(iter(CONDITIONS))])
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
