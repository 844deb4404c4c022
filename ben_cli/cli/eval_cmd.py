"""``ben eval``: score predicted masks against ground truths (standard or the authors' protocol).

Imports only typer and the standard library at import time; numpy, OpenCV,
PySODMetrics and torch load inside the command, so ``ben --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ben_cli.cli import options as opt
from ben_cli.errors import UsageError

if TYPE_CHECKING:
    from ben_cli.eval.evaluate import Evaluation
    from ben_cli.eval.metrics import Summary


class EvalProtocol(str, Enum):
    """Which metric definitions to use."""

    standard = "standard"
    ben = "ben"


_OUT = "Output"

PredDirArg = Annotated[
    Path | None,
    typer.Argument(
        metavar="PRED_DIR",
        help="Folder of predicted masks (any image format, paired by stem).",
        show_default=False,
    ),
]
GtDirArg = Annotated[
    Path | None,
    typer.Argument(metavar="GT_DIR", help="Folder of ground-truth masks.", show_default=False),
]
ProtocolOpt = Annotated[
    EvalProtocol,
    typer.Option(
        "--protocol",
        help="standard: PySODMetrics definitions (DIS literature); "
        "ben: the definitions of the authors' test.py (see docs/EVAL.md).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.", rich_help_panel=_OUT)]
CsvOpt = Annotated[
    Path | None,
    typer.Option("--csv", metavar="FILE", help="Write per-image values to FILE.", rich_help_panel=_OUT),
]
PlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        metavar="FILE.png",
        help="Draw the precision-recall and F-over-threshold curves (.png, .pdf or .svg).",
        rich_help_panel=_OUT,
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="Processes scoring pairs (default: all CPUs).", show_default=False),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        metavar="DIR",
        help="Run the model over DIR/im and evaluate against DIR/gt (e.g. DIS-VD); "
        "the options below apply to this mode.",
    ),
]
SavePredOpt = Annotated[
    Path | None,
    typer.Option(
        "--save-pred",
        metavar="DIR",
        help="Keep the predicted masks as DIR/<stem>.png (8-bit).",
    ),
]


def eval_command(
    pred_dir: PredDirArg = None,
    gt_dir: GtDirArg = None,
    protocol: ProtocolOpt = EvalProtocol.standard,
    json_out: JsonOpt = False,
    csv_file: CsvOpt = None,
    plot: PlotOpt = None,
    workers: WorkersOpt = None,
    quiet: opt.Quiet = False,
    data: DataOpt = None,
    weights: opt.Weights = None,
    refiner: opt.Refiner = "none",
    refiner_weights: opt.RefinerWeights = None,
    save_pred: SavePredOpt = None,
    device: opt.Device = "auto",
    precision: opt.Precision = "auto",
    resolution: opt.Resolution = 1024,
    batch_size: opt.BatchSize = 4,
) -> None:
    """Score masks with the nine metrics of the paper (max F, weighted F, E, S, MAE, Dice, IoU, BER, Acc).

    Either PRED_DIR GT_DIR (masks paired by stem), or --data DIR to run the model
    over DIR/im first. Results: a table on stderr; --json, --csv and --plot on request.
    """
    from ben_cli.eval import evaluate as ev

    model_options = {"weights": weights, "refiner": refiner, "refiner_weights": refiner_weights, "save_pred": save_pred}
    _check_options(pred_dir, gt_dir, data, model_options, plot)
    proto = protocol.value
    if data is None:
        pairs = ev.pair_predictions(pred_dir, gt_dir)  # type: ignore[arg-type]  # checked above
        evaluation = ev.evaluate_pairs(pairs, protocol=proto, workers=workers, progress=not quiet)
    else:
        from ben_cli.pipeline import check_refiner, check_resolution

        check_resolution(resolution)
        check_refiner(refiner, refiner_weights)
        evaluation = _run_model(
            data,
            protocol=proto,
            workers=workers,
            progress=not quiet,
            save_pred=save_pred,
            eraser_options={
                "weights": weights,
                "device": device,
                "precision": precision,
                "resolution": resolution,
                "batch_size": batch_size,
                "refiner": refiner,
                "refiner_weights": refiner_weights,
            },
        )

    if not quiet:
        _print_table(evaluation.summary)
    if csv_file is not None:
        ev.write_csv(csv_file, evaluation)
    if plot is not None:
        ev.plot_curves(plot, evaluation.summary)
    if json_out:
        sys.stdout.write(json.dumps(ev.summary_dict(evaluation.summary)) + "\n")
        sys.stdout.flush()


def _check_options(
    pred_dir: Path | None,
    gt_dir: Path | None,
    data: Path | None,
    model_options: dict[str, Any],
    plot: Path | None,
) -> None:
    """Raise UsageError for a combination of arguments that cannot run."""
    if data is not None:
        if pred_dir is not None or gt_dir is not None:
            raise UsageError("give either PRED_DIR GT_DIR or --data DIR, not both")
        for sub in ("im", "gt"):
            if not (data / sub).is_dir():
                raise UsageError(f"--data {data} must hold the folders im/ and gt/ ({data / sub} is missing)")
    else:
        if pred_dir is None or gt_dir is None:
            raise UsageError("give PRED_DIR and GT_DIR (or --data DIR to run the model over DIR/im)")
        defaults = {"refiner": "none"}
        given = [
            "--" + name.replace("_", "-")
            for name, value in model_options.items()
            if value is not None and value != defaults.get(name)
        ]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --data DIR")
    if plot is not None and plot.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--plot wants a .png, .pdf or .svg file, got {plot.name}")


def _run_model(
    data: Path,
    *,
    protocol: str,
    workers: int | None,
    progress: bool,
    save_pred: Path | None,
    eraser_options: dict[str, Any],
) -> Evaluation:
    """Predict masks for DATA/im with an Eraser and evaluate them against DATA/gt."""
    import tempfile

    from ben_cli.eval import evaluate as ev
    from ben_cli.pipeline import Eraser

    items = ev.match_stems(data / "im", data / "gt", labels=("image", "ground truth"))
    eraser = Eraser.from_options(**eraser_options)
    with tempfile.TemporaryDirectory(prefix="ben-eval-") as tmp:
        out_dir = save_pred if save_pred is not None else Path(tmp)
        preds = ev.predict_to_dir(eraser, items, out_dir, batch_size=eraser_options["batch_size"])
        return ev.evaluate_pairs(
            preds,
            protocol=protocol,
            workers=workers,
            total=len(items),
            progress=progress,
            description="predicting + evaluating",
        )


_LABELS: dict[str, str] = {
    "max_f": "max F-measure",
    "mean_f": "mean F-measure",
    "weighted_f": "weighted F-measure",
    "e_measure": "mean E-measure",
    "s_measure": "S-measure",
    "mae": "MAE",
    "dice": "Dice",
    "iou": "IoU",
    "ber": "BER",
    "acc": "accuracy",
}


_BEN_LABELS: dict[str, str] = {
    "max_f": "max F-measure (mean of per-image max)",
    "mean_f": "mean F-measure",
    "e_measure": "E-measure (adaptive threshold)",
    "s_measure": "S-measure (simplified)",
    "dice": "Dice (soft)",
}


def _print_table(summary: Summary) -> None:
    """The metrics as a Rich table on stderr."""
    from rich.table import Table

    from ben_cli.eval.metrics import EXTRA_KEYS, HIGHER_IS_BETTER, METRIC_KEYS

    table = Table(title=f"ben eval: {summary.count} pairs, protocol {summary.protocol}", title_justify="left")
    table.add_column("metric")
    table.add_column("key", style="dim")
    table.add_column("value", justify="right")
    labels = {**_LABELS, **_BEN_LABELS} if summary.protocol == "ben" else _LABELS
    for key in METRIC_KEYS + EXTRA_KEYS:
        arrow = "↑" if HIGHER_IS_BETTER[key] else "↓"
        table.add_row(f"{labels[key]} {arrow}", key, f"{summary.metrics[key]:.4f}")
    opt.stderr_console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``ben eval`` to the root app."""
    app.command("eval")(eval_command)
