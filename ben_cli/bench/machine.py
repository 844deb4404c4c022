"""The name of the measured machine's device, for the report's settings."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

from ben_cli.device import gpu_name


def device_name(device: torch.device) -> str:
    """The GPU's name, else the CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    name = gpu_name(device)
    if name is not None:
        return name
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


__all__ = ["device_name"]
