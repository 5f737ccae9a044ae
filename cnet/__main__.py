"""`python -m cnet <command>` (or `cnet <command>` after `pip install -e .`): each command lives
in its own module, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "generate": ("cnet.cli.generate", "make images from a control map and a prompt"),
    "detect": ("cnet.cli.detect", "turn an image into a control map"),
    "synth": ("cnet.synth.cli", "render, export and preview the synthetic scene world"),
    "train": (
        "cnet.train.cli",
        "train a ControlNet, or a small model's base, captioner and decoder (embedded: all)",
    ),
    "eval": ("cnet.evaluate", "measure control and prompt fidelity on held-out scenes"),
    "compare": ("cnet.comparison", "is one evaluated model better than another, scene by scene"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prog = "python -m cnet" if sys.argv[0].endswith("__main__.py") else "cnet"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage / error and exits
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"{prog} {name}", description=COMMANDS[name][1])
    module.configure(command_parser)
    try:
        return module.run(command_parser.parse_args(argv[1:]))
    except KeyboardInterrupt:  # commands with more to say about what was kept catch it first
        print("\ninterrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
