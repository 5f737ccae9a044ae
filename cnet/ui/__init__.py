"""The Gradio user interface: layout in `blocks`, what the events do in `events`."""

from cnet.ui.blocks import CSS, build_demo

__all__ = ["CSS", "build_demo"]
