"""``ben eval``: score predicted masks against ground truths (standard or the authors' protocol).

Imports only typer and the standard library at import time; numpy, OpenCV,
PySODMetrics and torch load inside the command, so ``ben --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ben_cli.cli import options as opt
from ben_cli.errors import UsageError
from ben_cli.options import Precision, Refiner

if TYPE_CHECKING:
    from ben_cli.eval.evaluate import Evaluation
    from ben_cli.eval.metrics import Summary
    from ben_cli.options import InferenceOptions


class EvalProtocol(str, Enum):
    """Which metric definitions to use."""

    standard = "standard"
    ben = "ben"


_OUT = "Output"
_MODEL = "Model"  # the panel of the shared model options

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
SkipUnmatchedOpt = Annotated[
    bool,
    typer.Option(
        "--skip-unmatched",
        metavar="",
        help="Skip a prediction without a ground truth (or the reverse), listed once, instead of stopping.",
    ),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        metavar="DIR",
        help="Run the model over DIR/im and evaluate against DIR/gt (e.g. DIS-VD); "
        "the options of this panel apply to this mode only.",
        rich_help_panel=_MODEL,
    ),
]
SavePredOpt = Annotated[
    Path | None,
    typer.Option(
        "--save-pred",
        metavar="DIR",
        help="Keep the predicted masks as DIR/<stem>.png (8-bit).",
        rich_help_panel=_MODEL,
    ),
]


_MODEL_FLAGS: dict[str, str] = {
    "model": "--model",
    "weights": "--weights",
    "device": "--device",
    "precision": "--precision",
    "autocast": "--autocast",
    "resolution": "--resolution",
    "batch_size": "--batch-size",
    "refiner": "--refiner",
    "refiner_weights": "--refiner-weights",
    "save_pred": "--save-pred",
}
"""The parameters that only apply with ``--data``, and their flags."""


def eval_command(
    ctx: typer.Context,
    pred_dir: PredDirArg = None,
    gt_dir: GtDirArg = None,
    protocol: ProtocolOpt = EvalProtocol.standard,
    json_out: JsonOpt = False,
    csv_file: CsvOpt = None,
    plot: PlotOpt = None,
    workers: WorkersOpt = None,
    quiet: opt.Quiet = False,
    skip_unmatched: SkipUnmatchedOpt = False,
    data: DataOpt = None,
    model: opt.Model = opt.ModelName("ben2-base"),
    weights: opt.Weights = None,
    refiner: opt.RefinerOpt = Refiner.auto,
    refiner_weights: opt.RefinerWeights = None,
    save_pred: SavePredOpt = None,
    device: opt.Device = "auto",
    precision: opt.PrecisionOpt = Precision.auto,
    autocast: opt.Autocast = False,
    resolution: opt.Resolution = 1024,
    batch_size: opt.BatchSize = None,
) -> None:
    """Score masks with the paper's nine metrics (max F, weighted F, E, S, MAE, Dice, IoU, BER, Acc), plus mean F.

    Either PRED_DIR GT_DIR (masks paired by stem; a file with an alpha channel is
    read from its alpha), or --data DIR to run the model over DIR/im first.
    Results: a table on stderr; --json, --csv and --plot on request.
    """
    from ben_cli.eval import evaluate as ev

    _check_options(pred_dir, gt_dir, data, _given(ctx, _MODEL_FLAGS), plot)
    proto = protocol.value
    if data is None:
        pairs = ev.pair_predictions(pred_dir, gt_dir, skip_unmatched=skip_unmatched)  # type: ignore[arg-type]
        evaluation = ev.evaluate_pairs(pairs, protocol=proto, workers=workers, progress=not quiet)
    else:
        options = opt.inference_options(
            model=model,
            weights=weights,
            device=device,
            precision=precision,
            resolution=resolution,
            batch_size=batch_size,
            refiner=refiner,
            refiner_weights=refiner_weights,
            autocast=autocast,
        )
        evaluation = _run_model(
            data, options, protocol=proto, workers=workers, progress=not quiet, save_pred=save_pred,
            skip_unmatched=skip_unmatched,
        )

    _warn_resized(evaluation)
    _warn_undefined(evaluation)
    if not quiet:
        _print_table(evaluation.summary)
    if csv_file is not None:
        ev.write_csv(csv_file, evaluation)
    if plot is not None:
        ev.plot_curves(plot, evaluation.summary)
    if json_out:
        sys.stdout.write(json.dumps(ev.summary_dict(evaluation.summary)) + "\n")
        sys.stdout.flush()


def _given(ctx: typer.Context, flags: dict[str, str]) -> list[str]:
    """The flags of ``flags`` set on the command line or from the environment (not defaults)."""
    given = []
    for name, flag in flags.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.append(flag)
    return given


def _check_options(
    pred_dir: Path | None,
    gt_dir: Path | None,
    data: Path | None,
    model_flags: list[str],
    plot: Path | None,
) -> None:
    """Raise UsageError for a combination of arguments that cannot run.

    ``model_flags``: the model flags the user gave, which need ``--data``.
    """
    if data is not None:
        if pred_dir is not None or gt_dir is not None:
            raise UsageError("give either PRED_DIR GT_DIR or --data DIR, not both")
        for sub in ("im", "gt"):
            if not (data / sub).is_dir():
                raise UsageError(f"--data {data} must hold the folders im/ and gt/ ({data / sub} is missing)")
    else:
        if pred_dir is None or gt_dir is None:
            raise UsageError("give PRED_DIR and GT_DIR (or --data DIR to run the model over DIR/im)")
        if model_flags:
            raise UsageError(f"{', '.join(model_flags)} only apply with --data DIR")
    if plot is not None and plot.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"--plot wants a .png, .pdf or .svg file, got {plot.name}")


def _run_model(
    data: Path,
    options: InferenceOptions,
    *,
    protocol: str,
    workers: int | None,
    progress: bool,
    save_pred: Path | None,
    skip_unmatched: bool = False,
) -> Evaluation:
    """Predict masks for DATA/im with an Eraser and evaluate them against DATA/gt."""
    import tempfile

    from ben_cli.eval import evaluate as ev
    from ben_cli.pipeline import Eraser

    items = ev.match_stems(data / "im", data / "gt", labels=("image", "ground truth"), skip_unmatched=skip_unmatched)
    eraser = Eraser.from_options(options)
    with tempfile.TemporaryDirectory(prefix="ben-eval-") as tmp:
        out_dir = save_pred if save_pred is not None else Path(tmp)
        preds = ev.predict_to_dir(eraser, items, out_dir, batch_size=eraser.batch_size)
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
    """The metrics as a Rich table on stderr: the paper's nine, then (below a rule) mean F."""
    from rich.table import Table

    from ben_cli.eval.metrics import EXTRA_KEYS, HIGHER_IS_BETTER, METRIC_KEYS

    title = (
        f"ben eval: {summary.count} pairs, protocol {summary.protocol}: "
        "the paper's nine metrics, plus mean F"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("key", style="dim")
    table.add_column("value", justify="right")
    labels = {**_LABELS, **_BEN_LABELS} if summary.protocol == "ben" else _LABELS
    for keys in (METRIC_KEYS, EXTRA_KEYS):
        if keys is EXTRA_KEYS:
            table.add_section()
        for key in keys:
            arrow = "↑" if HIGHER_IS_BETTER[key] else "↓"
            table.add_row(f"{labels[key]} {arrow}", key, f"{summary.metrics[key]:.4f}")
    opt.stderr_console().print(table)


_LISTED = 8  # files named in one warning line before "... and N more"


def _warn_resized(evaluation: Evaluation) -> None:
    """One warning line for the predictions that were not the size of their ground truth: each file
    and how it was resized (up to :data:`_LISTED`, then the count)."""
    found = evaluation.resized()
    if not found:
        return
    shown = [f"{pair.pred} ({how})" for pair, how in found[:_LISTED]]
    more = f"; ... and {len(found) - _LISTED} more" if len(found) > _LISTED else ""
    opt.print_warning(f"{len(found)} of {len(evaluation.pairs)} predictions are not the size of their ground "
                      f"truth: {'; '.join(shown)}{more}")


def _warn_undefined(evaluation: Evaluation) -> None:
    """One warning line per metric that is NaN for some pairs, naming their ground-truth files."""
    for key, found in evaluation.undefined().items():
        shown = [f"{pair.gt}: {reason}" for pair, reason in found[:_LISTED]]
        more = f"; ... and {len(found) - _LISTED} more (see --csv)" if len(found) > _LISTED else ""
        like = " as in the authors' script" if evaluation.summary.protocol == "ben" else ""
        opt.print_warning(
            f"{key} is NaN for {len(found)} of {len(evaluation.pairs)} pairs, so its mean is NaN{like}; "
            f"{'; '.join(shown)}{more}"
        )


def register(app: typer.Typer) -> None:
    """Add ``ben eval`` to the root app."""
    app.command("eval", cls=opt.Command)(eval_command)
