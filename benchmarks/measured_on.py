"""The machine and the software a benchmark's table was measured on: one line each, printed
above every table so that a figure copied from it keeps what it depends on."""

from __future__ import annotations

import os
import platform
from importlib import metadata

PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "gradio",
    "controlnet-aux",
    "opencv-python-headless",
    "numpy",
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine()


def machine_line(*details: str) -> str:
    """`machine: <CPU>, N cores, load average L, <details>`."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts = [cpu_name(), f"{os.cpu_count()} cores", f"load average {load:.1f}", *details]
    return "machine: " + ", ".join(parts)


def software_line() -> str:
    """`software: python X, torch Y, ...` for the packages the figures depend on."""
    versions = [f"python {platform.python_version()}"]
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} not installed")
    return "software: " + ", ".join(versions)
