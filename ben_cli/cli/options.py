"""Options shared by several commands, declared once as ``Annotated`` aliases."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

Weights = Annotated[
    Path | None,
    typer.Option("--weights", "-w", help="Checkpoint (.pth or .safetensors). Default: $BEN_WEIGHTS, "
                 "./weights/, the cache, else download BEN2_Base.pth.", show_default=False),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Precision = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16.")]
Resolution = Annotated[int, typer.Option("--resolution", help="Model input side, a multiple of 128.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")]
Refiner = Annotated[str, typer.Option("--refiner", help="auto, net, matting or none (only none so far).")]
RefinerWeights = Annotated[Path | None, typer.Option("--refiner-weights", help="Refiner checkpoint.",
                                                     show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary.")]


def stderr_console(quiet: bool = False):
    """A Rich console on stderr (never stdout, which may carry a PNG)."""
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, highlight=False)


def print_error(message: str) -> None:
    """One line on stderr, prefixed like the root error handler."""
    print(f"ben: {message}", file=sys.stderr, flush=True)
