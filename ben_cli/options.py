"""Inference options: one frozen, validated object that every command builds once.

Validation here is syntax and range only (no torch import): whether a device
exists is decided by :mod:`ben_cli.device` when the :class:`~ben_cli.pipeline.Eraser`
is built. Errors name the parameter (``resolution``); the CLI adds the flag
(``--resolution``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from ben_cli.errors import OptionError


class Precision(str, Enum):
    """Compute precision; ``auto`` is fp16 on CUDA and MPS, fp32 on the CPU."""

    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Refiner(str, Enum):
    """Which refiner re-estimates the gray band of the confidence trimap."""

    auto = "auto"
    net = "net"
    matting = "matting"
    none = "none"


AVAILABLE_REFINERS: frozenset[Refiner] = frozenset({Refiner.auto, Refiner.none})
"""Refiners this version can run (``auto`` resolves to the best available one)."""

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _enum(cls: type[Enum], value: object, param: str):
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise OptionError(param, f"unknown {param} {value!r} (use {choices})") from None


def check_resolution(resolution: int) -> int:
    """The model side: a multiple of 128, at least 256."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 256 or resolution % 128:
        raise OptionError("resolution", f"must be a multiple of 128 and at least 256, got {resolution}")
    return resolution


def cpu_count() -> int:
    """CPU cores this process may use (affinity where the OS has it, else the core count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Reader and writer threads each: one per core, at most 8."""
    return min(8, cpu_count())


@dataclass(frozen=True)
class InferenceOptions:
    """What the model step of ``ben erase``, ``ben trimap`` and ``ben eval --data`` runs with.

    Built once per command; ``__post_init__`` validates and normalises every
    field, so an instance is always valid. ``weights=None`` searches for the
    file of ``model`` (see ``ben weights``).
    """

    model: str = "ben2-base"
    weights: Path | None = None
    device: str = "auto"
    precision: Precision = Precision.auto
    resolution: int = 1024
    batch_size: int = 4
    refiner: Refiner = Refiner.auto
    refiner_weights: Path | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        from ben_cli.models.registry import MODELS

        set_ = object.__setattr__
        if self.model not in MODELS:
            raise OptionError("model", f"unknown model {self.model!r} (use {', '.join(MODELS)})")
        set_(self, "precision", _enum(Precision, self.precision, "precision"))
        set_(self, "refiner", _enum(Refiner, self.refiner, "refiner"))
        check_resolution(self.resolution)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise OptionError("batch_size", f"must be at least 1, got {self.batch_size}")
        device = str(self.device).strip().lower()
        if not _DEVICE_RE.match(device):
            raise OptionError("device", f"unknown device {self.device!r} (use auto, cpu, cuda, cuda:N or mps)")
        set_(self, "device", device)
        for name in ("weights", "refiner_weights"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                set_(self, name, Path(value))
        if self.refiner not in AVAILABLE_REFINERS:
            raise OptionError("refiner", f"{self.refiner.value!r} is not available in this version (use auto or none)")
        if self.refiner_weights is not None:
            raise OptionError("refiner_weights", "no refiner network exists in this version")

    def replace(self, **changes) -> InferenceOptions:
        """A validated copy with ``changes`` applied."""
        return replace(self, **changes)

    def resolved_refiner(self) -> str:
        """The refiner that runs: ``auto`` is the best one available (``none`` in this version)."""
        return Refiner.none.value if self.refiner is Refiner.auto else self.refiner.value
