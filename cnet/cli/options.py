"""Command-line options shared by `python app.py` and `python -m cnet generate`."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def add_performance_flags(parser: argparse.ArgumentParser) -> None:
    """The engine's speed options, as one "performance" group."""
    performance = parser.add_argument_group("performance")
    performance.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch CPU threads (default: $OMP_NUM_THREADS, else one per core)",
    )
    performance.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet and each ControlNet (the first image compiles them, later "
        "ones are faster; needs Triton on CUDA, a C++ compiler on the CPU)",
    )
    performance.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last weights (default: on for CUDA only)",
    )
    performance.add_argument(
        "--cpu-offload",
        action="store_true",
        help="keep each model on the CPU until it runs (GPUs short of memory; slower)",
    )


def performance_settings(args: argparse.Namespace) -> dict:
    """The keyword arguments of `load_engine` that add_performance_flags' flags set."""
    return {
        "threads": args.threads,
        "compile": args.compile,
        "channels_last": args.channels_last,
        "cpu_offload": args.cpu_offload,
    }
