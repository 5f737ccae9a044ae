"""ControlNet Studio: Stable Diffusion + ControlNet, from control maps to images, and training."""

__version__ = "0.1.0"
