"""Options shared by several commands, declared once as ``Annotated`` aliases.

Flags that take no value have an empty metavar, so ``--help`` shows no value for them.

Choices are Enums so ``--help`` lists them; values are validated once, by
:class:`ben_cli.options.InferenceOptions`, which each command builds with
:func:`inference_options`.
"""

from __future__ import annotations

import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from ben_cli.models.registry import MODELS
from ben_cli.options import Precision, Refiner


def _usage_piece(piece: str) -> str:
    """typer's ``{INPUT... OUTPUT}...`` for a required argument -> ``INPUT... OUTPUT`` (``{IMAGE}`` -> ``IMAGE``)."""
    m = re.fullmatch(r"\{(.+)\}(\.\.\.)?", piece)
    if m is None:
        return piece
    return m[1] if "..." in m[1] or not m[2] else m[1] + "..."


class _BenHelp:
    """What every ``ben`` command's help shows: no value placeholder after ``-h``/``--help`` or any other
    flag (typer shows ``<bool>``), and required arguments as their names in the usage line."""

    def get_params(self, ctx) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [_usage_piece(p) for p in super().collect_usage_pieces(ctx)]  # type: ignore[misc]


class Command(_BenHelp, TyperCommand):
    """A ``ben`` command (``app.command(name, cls=Command)``)."""


class Group(_BenHelp, TyperGroup):
    """A ``ben`` command group (``typer.Typer(cls=Group)``)."""


ModelName = Enum("ModelName", {name.replace("-", "_"): name for name in MODELS}, type=str)  # type: ignore[misc]
"""The registry's model names, as an Enum for typer."""

_MODEL = "Model"

Model = Annotated[
    ModelName,
    typer.Option("--model", "-m", metavar="NAME", rich_help_panel=_MODEL,
                 help="Network and its official checkpoint: ben2-base (BEN2_Base.pth), ben-base (the paper's "
                 "BEN_Base.pth), tiny (tests)."),
]
Weights = Annotated[
    Path | None,
    typer.Option("--weights", "-w", metavar="PATH", show_default=False, rich_help_panel=_MODEL,
                 help="Checkpoint file (.pth or .safetensors; .onnx: a graph of ben export onnx, run by ONNX Runtime), "
                 "or a folder holding it. Default: $BEN_WEIGHTS, "
                 "./weights/, the cache, else download the model's official file."),
]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE", rich_help_panel=_MODEL,
                                     help="auto, cpu, cuda, cuda:N or mps (a missing device is an error). "
                                     "Several GPUs: cuda (or auto) uses every visible GPU, cuda:0,cuda:2 a subset; "
                                     "one model replica per device.")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", metavar="P", rich_help_panel=_MODEL,
                                                 help="auto, fp32, fp16, bf16. auto: fp16 on CUDA and MPS, fp32 on "
                                                 "the CPU. fp16/bf16 cast the model once; on the CPU bf16 is fast "
                                                 "only with AVX512-BF16 or AMX, fp16 mostly slow (warned).")]
Resolution = Annotated[int, typer.Option("--resolution", metavar="N", rich_help_panel=_MODEL,
                                         help="Model input side: a multiple of 128, at least 256.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", "-b", metavar="N", rich_help_panel=_MODEL,
                                               show_default=False,
                                               help="Images per forward pass (at least 1). Default: 8 on CUDA, "
                                               "4 on MPS, 1 on the CPU (faster there).")]
RefinerOpt = Annotated[Refiner, typer.Option("--refiner", metavar="R", rich_help_panel=_MODEL,
                                             help="What re-estimates the trimap's gray band: auto (the best "
                                             "available), net, matting, none.")]
RefinerWeights = Annotated[Path | None, typer.Option("--refiner-weights", metavar="PATH", show_default=False,
                                                     help="Refiner network checkpoint.", rich_help_panel=_MODEL)]
Compile = Annotated[bool, typer.Option("--compile", metavar="", rich_help_panel=_MODEL,
                                       help="torch.compile the model (CUDA graphs on CUDA): minutes to compile the "
                                       "first time, cached on disk for later runs; for long runs.")]
Autocast = Annotated[bool, typer.Option("--autocast", metavar="", rich_help_panel=_MODEL,
                                        help="With fp16/bf16: keep the weights in fp32 and run under torch.autocast "
                                        "(slower; by default the model is cast to the precision once).")]
MaxRefineSide = Annotated[int | None, typer.Option("--max-refine-side", metavar="N", show_default=False,
                                                   rich_help_panel=_MODEL,
                                                   help="Refine images larger than the model side at full "
                                                   "resolution, up to N pixels on the long side (default: no cap).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar and no summary.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", metavar="",
                                       help="The whole summary table for pipes too (default there: one line), "
                                       "and the engine's own log lines.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", metavar="", help="Redo outputs that already exist.")]


def inference_options(*, model: ModelName | str = "ben2-base", weights: Path | None = None, device: str = "auto",
                      precision: Precision | str = Precision.auto, resolution: int = 1024,
                      batch_size: int | None = None,
                      refiner: Refiner | str = Refiner.auto, refiner_weights: Path | None = None,
                      compile: bool = False, max_refine_side: int | None = None, autocast: bool = False):
    """The validated :class:`~ben_cli.options.InferenceOptions` of a command's flags (``model_given``,
    ``resolution_given``: ``--model``, ``--resolution`` were on the command line)."""
    from ben_cli.options import InferenceOptions

    name = model.value if isinstance(model, Enum) else model
    return InferenceOptions(model=name, weights=weights, device=device, precision=precision,
                            resolution=resolution, batch_size=batch_size, refiner=refiner,
                            refiner_weights=refiner_weights, compile=compile, max_refine_side=max_refine_side,
                            autocast=autocast, model_given=given_on_command_line("model"),
                            resolution_given=given_on_command_line("resolution"))


def given_on_command_line(param: str) -> bool:
    """Whether the running command's ``param`` came from the command line (not its default)."""
    import importlib

    click = typer.Context.__mro__[1].__module__.rsplit(".", 1)[0]  # typer may vendor its own click
    ctx = importlib.import_module(f"{click}.globals").get_current_context(silent=True)
    source = importlib.import_module(f"{click}.core").ParameterSource.COMMANDLINE
    return ctx is not None and ctx.get_parameter_source(param) is source


def stderr_console(quiet: bool = False):
    """A Rich console on stderr (never stdout, which may carry a PNG)."""
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, highlight=False)


def print_error(message: str) -> None:
    """One line on stderr, prefixed like the root error handler."""
    print(f"ben: {message}", file=sys.stderr, flush=True)


def print_warning(message: str) -> None:
    """One warning line on stderr."""
    print(f"ben: warning: {message}", file=sys.stderr, flush=True)
