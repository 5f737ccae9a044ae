"""What a run writes for a person to look at: the loss curve and validation image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def smooth(values: list[float], window: int) -> np.ndarray:
    """Running mean over the last `window` values (shorter at the start)."""
    v = np.asarray(values, dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(v)])
    starts = np.maximum(np.arange(1, len(v) + 1) - window, 0)
    return (cumulative[1:] - cumulative[starts]) / (np.arange(1, len(v) + 1) - starts)


def plot_losses(curves: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """One panel per curve: the per-step loss (faint) and its running mean, log-scaled y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {name: values for name, values in curves.items() if values}
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(6 * max(len(curves), 1), 4))
    for ax, (name, values) in zip(np.atleast_1d(axes), curves.items(), strict=False):
        steps = np.arange(1, len(values) + 1)
        window = max(1, len(values) // 50)
        ax.plot(steps, values, alpha=0.3, linewidth=0.8, label="per step")
        ax.plot(steps, smooth(values, window), linewidth=1.5, label=f"mean of {window}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"{name} loss")
        if min(values) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(rows: list[list[Image.Image]]) -> Image.Image:
    """Paste rows of equally sized images into one picture."""
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * max(len(r) for r in rows), height * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((width, height)), (x * width, y * height))
    return grid


def tensor_to_image(values, low: float = -1.0, high: float = 1.0) -> Image.Image:
    """A CHW tensor with values in [low, high] as a PIL image."""
    array = (values.detach().float().cpu().clamp(low, high) - low) / (high - low)
    return Image.fromarray((array.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
