"""``ben export onnx``: BEN Base as an ONNX graph with a dynamic batch (:mod:`ben_cli.export.onnx_graph`).

Thin: declares the options and calls the library; torch and the ONNX packages are imported inside the command.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ben_cli.cli import options as opt

export_app = typer.Typer(cls=opt.Group, name="export", no_args_is_help=True,
                         help="Export BEN Base for other runtimes (ONNX Runtime, TensorRT, OpenVINO, browsers).")


class GraphPrecision(str, Enum):
    """The precision of an exported graph's weights and activations (its input is uint8, its output float32)."""

    fp32 = "fp32"
    fp16 = "fp16"


Images = Annotated[list[Path] | None, typer.Argument(metavar="IMAGES", show_default=False,
                                                     help="With --check: images to compare on (default: three "
                                                     "generated ones).")]
Check = Annotated[bool, typer.Option("--check", metavar="", help="Then run IMAGES through the graph at batch 1 "
                                     "and 3 (one session) and through the PyTorch model, and print the worst "
                                     "difference of the probabilities.")]
Opset = Annotated[int, typer.Option("--opset", metavar="N", help="ONNX opset of the graph (at least 17).")]
Precision = Annotated[GraphPrecision, typer.Option("--precision", metavar="P", help="fp32 or fp16 (fp16 is for "
                                                   "GPUs: TensorRT, CUDA; on the CPU it runs, slower than fp32).")]
Optimize = Annotated[bool, typer.Option("--optimize/--no-optimize", help="Run onnxscript's optimizer on the graph "
                                        "(constant folding, dead nodes).")]


@export_app.command("onnx", cls=opt.Command)
def onnx(
    out: Annotated[Path, typer.Argument(metavar="OUT.onnx", help="The graph file to write (weights inside).")],
    images: Images = None,
    model: opt.Model = opt.ModelName.ben2_base,  # type: ignore[attr-defined]
    weights: opt.Weights = None,
    resolution: Annotated[int, typer.Option("--resolution", metavar="N", rich_help_panel="Model",
                                            help="The graph's fixed input side S: a multiple of 128, at least "
                                            "256 (the batch is dynamic, the side is not).")] = 1024,
    precision: Precision = GraphPrecision.fp32,
    opset: Opset = 18,
    optimize: Optimize = True,
    check: Check = False,
) -> None:
    """Export BEN Base (not the refiner) of any checkpoint ben loads to one ONNX file.

    Input 'image': uint8 (B, 3, S, S) RGB, B dynamic, S = --resolution; the normalisation inside.
    Output 'prob': float32 (B, 1, S, S) in [0, 1], the sigmoid inside.
    Metadata: model, resolution, precision, ben version, the checkpoint's sha256, the layouts.
    `ben erase --weights OUT.onnx` runs it.
    """
    from ben_cli.errors import UsageError

    if images and not check:
        raise UsageError("IMAGES are what --check compares on: add --check")
    from ben_cli.export.onnx_graph import check_images, compare, export_checkpoint

    result, net = export_checkpoint(out, weights=weights, model=model.value,
                                    model_given=opt.given_on_command_line("model"), resolution=resolution,
                                    precision=precision.value, opset=opset, optimize=optimize)
    meta = result.metadata
    print(f"{result.path}: {meta['ben_model']} {resolution}x{resolution} {precision.value}, opset {result.opset}, "
          f"dynamic batch; {result.size / 2**20:.1f} MiB, {result.nodes} nodes, exported in {result.seconds:.1f} s")
    if check:
        got = compare(result.path, net, check_images([str(p) for p in images or []], resolution))
        batches = ", ".join(f"batch {b}: {d:.3g}" for b, d in got.by_batch.items())
        print(f"check: worst |p_onnx - p_torch| = {got.worst:.3g} over {got.images} images ({batches}; "
              f"PyTorch in fp32)")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
