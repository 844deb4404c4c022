"""What ``ben bench`` measures: :class:`BenchOptions`, its parsers and the one device measured."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ben_cli.device import resolve_devices
from ben_cli.errors import BenWarning, OptionError
from ben_cli.io import check_output_file
from ben_cli.options import InferenceOptions

DEFAULT_IMAGES = {"cuda": 64, "other": 4}
"""Images generated when ``--images`` is not given: enough batches for a steady rate on a GPU, few on a CPU."""
DEFAULT_REPEATS = {"cuda": 3, "other": 1}
"""Timed passes when ``--repeats`` is not given."""
DEFAULT_SIZE = (1500, 1000)

def parse_batch_sizes(values: Sequence[str | int]) -> tuple[int, ...]:
    """``["1,8", "16"]`` -> ``(1, 8, 16)``: repeated and comma-separated values, in order, duplicates dropped."""
    sizes: list[int] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                n = int(part)
            except ValueError:
                raise OptionError("batch_size", f"must be whole numbers (1,8,16), got {part!r}") from None
            if n < 1:
                raise OptionError("batch_size", f"must be at least 1, got {n}")
            if n not in sizes:
                sizes.append(n)
    if not sizes and values:
        raise OptionError("batch_size", "give at least one batch size (1,8,16)")
    return tuple(sizes)


def parse_size(text: str) -> tuple[int, int]:
    """``"1500x1000"`` -> ``(1500, 1000)`` (width, height), each at least 16 pixels."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise OptionError("size", f"must be WIDTHxHEIGHT (1500x1000), got {text!r}") from None
    if w < 16 or h < 16:
        raise OptionError("size", f"must be at least 16x16 pixels, got {text!r}")
    return w, h


@dataclass(frozen=True)
class BenchOptions:
    """What :func:`run_bench` measures; the model's own settings are an :class:`InferenceOptions`.

    ``batch_sizes``: one row each (empty: the options' ``batch_size``). ``images``: how many
    JPEGs of ``size`` (W, H) to generate (None: :data:`DEFAULT_IMAGES`), or at most how many
    to take from ``input`` (a folder, walked recursively; None: all). ``repeats``: timed
    passes, the median is reported (None: :data:`DEFAULT_REPEATS`); ``warmup``: untimed
    passes first. ``official``: also time the official-style
    path; ``startup``: also time ``ben erase`` on one image in a subprocess. ``workers``:
    reader and writer threads of the erase path (None: one per core, at most 8).
    ``work_dir``: where the images and outputs go (None: a temporary folder, removed after).
    """

    batch_sizes: tuple[int, ...] = ()
    images: int | None = None
    size: tuple[int, int] = DEFAULT_SIZE
    input: Path | None = None
    repeats: int | None = None
    warmup: int = 1
    official: bool = True
    startup: bool = True
    workers: int | None = None
    seed: int = 0
    work_dir: Path | None = None

    def for_device(self, device: torch.device) -> BenchOptions:
        """A copy with ``images`` (when generated) and ``repeats`` defaulted for ``device``."""
        kind = "cuda" if device.type == "cuda" else "other"
        images = self.images if self.images is not None or self.input is not None else DEFAULT_IMAGES[kind]
        repeats = self.repeats if self.repeats is not None else DEFAULT_REPEATS[kind]
        return replace(self, images=images, repeats=repeats)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "batch_sizes", parse_batch_sizes(self.batch_sizes))
        if isinstance(self.size, str):
            set_(self, "size", parse_size(self.size))
        elif len(self.size) != 2 or min(self.size) < 16:
            raise OptionError("size", f"must be (width, height), each at least 16, got {self.size!r}")
        for name, low in (("images", 1), ("repeats", 1), ("warmup", 0), ("workers", 1)):
            value = getattr(self, name)
            if value is None and name in ("images", "repeats", "workers"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OptionError(name, f"must be a whole number of at least {low}, got {value!r}")
        for name in ("input", "work_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                set_(self, name, Path(value))
        if self.input is not None and not self.input.is_dir():
            raise OptionError("input", f"{self.input} is not a folder" if self.input.exists()
                              else f"folder not found: {self.input}")


def single_device(options: InferenceOptions) -> InferenceOptions:
    """``options`` on one device: the first of several (``--device cuda:0,cuda:2``, or ``auto`` on a
    machine with several GPUs), with a warning; ``ben bench`` measures one device."""
    devices = resolve_devices(options.device)
    if len(devices) == 1:
        return options
    warnings.warn(f"ben bench measures one device: {devices[0]} (of {len(devices)} in {{opt:device}} {options.device})",
                  BenWarning, stacklevel=2)
    return options.replace(device=str(devices[0]))


def check_json_path(path: Path | None) -> None:
    """UsageError up front when ``--json PATH`` could not be written (``-`` is stdout)."""
    if path is not None and str(path) != "-":
        check_output_file(path, "{opt:json}", "bench.json")


__all__ = ["DEFAULT_IMAGES", "DEFAULT_REPEATS", "DEFAULT_SIZE", "BenchOptions", "check_json_path",
           "parse_batch_sizes", "parse_size", "single_device"]
