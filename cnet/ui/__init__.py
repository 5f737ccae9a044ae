"""The Gradio user interface: layout in `blocks`, what the events do in `events`."""

from cnet.ui.blocks import build_demo

__all__ = ["build_demo"]
