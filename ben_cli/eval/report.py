"""An evaluation's results (:class:`Pair`, :class:`Evaluation`) and their reports: the summary as JSON, the
per-image CSV table, the precision-recall figure."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ben_cli.errors import OptionError
from ben_cli.eval.metrics import EXTRA_KEYS, METRIC_KEYS, ImageResult, Summary

CSV_KEYS: tuple[str, ...] = METRIC_KEYS + EXTRA_KEYS
"""The columns of the per-image table after stem, prediction and ground truth."""


@dataclass(frozen=True)
class Pair:
    """One prediction and its ground truth, matched by ``stem``."""

    stem: str
    pred: Path
    gt: Path


@dataclass(frozen=True)
class Evaluation:
    """Per-image results (in ``pairs`` order, sorted by stem) and their summary."""

    pairs: list[Pair]
    images: list[ImageResult]
    summary: Summary

    def undefined(self) -> dict[str, list[tuple[Pair, str]]]:
        """Metrics that are NaN for some pairs: ``{key: [(pair, reason), ...]}`` in pair order.

        The summary's value of such a key is NaN too (both protocols average with NaN).
        """
        found: dict[str, list[tuple[Pair, str]]] = {}
        for pair, result in zip(self.pairs, self.images, strict=True):
            for key in CSV_KEYS:
                if math.isnan(result.scores[key]):
                    found.setdefault(key, []).append((pair, result.undefined.get(key, "undefined")))
        return found

    def resized(self) -> list[tuple[Pair, str]]:
        """The pairs whose prediction was not the size of its ground truth, with how it was resized."""
        return [(pair, r.resized) for pair, r in zip(self.pairs, self.images, strict=True) if r.resized]




def summary_dict(summary: Summary) -> dict[str, Any]:
    """The JSON object of a summary: protocol, count and every metric (NaN as None)."""
    out: dict[str, Any] = {"protocol": summary.protocol, "count": summary.count}
    for key in CSV_KEYS:
        value = summary.metrics[key]
        out[key] = value if math.isfinite(value) else None
    return out


def write_csv(path: Path, evaluation: Evaluation) -> None:
    """Write one row per pair: stem, the two files and every per-image value.

    Per-image ``max_f`` / ``mean_f`` come from the image's own F curve; under the
    standard protocol the summary's ``max_f`` is the maximum of the curve averaged
    over images, which is not the mean of this column.
    """
    from ben_cli.io import atomic_write_bytes

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["stem", "prediction", "ground_truth", *CSV_KEYS])
    for pair, result in zip(evaluation.pairs, evaluation.images, strict=True):
        values = [f"{result.scores[k]:.8g}" for k in CSV_KEYS]
        writer.writerow([pair.stem, str(pair.pred), str(pair.gt), *values])
    atomic_write_bytes(Path(path), buffer.getvalue().encode("utf-8"))


PLOT_SUFFIXES: frozenset[str] = frozenset({".png", ".pdf", ".svg"})


def plot_curves(path: Path, summary: Summary, title: str | None = None) -> None:
    """Draw the precision-recall curve and the F-measure over thresholds (PNG, PDF or SVG).

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ben_cli.io import atomic_write_bytes

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if "." + fmt not in PLOT_SUFFIXES:
        raise OptionError("plot", f"{{flag}} wants a .png, .pdf or .svg file, got {path.name}")
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_pr, ax_f = fig.subplots(1, 2)

    ax_pr.plot(summary.recall, summary.precision, color="tab:blue")
    best = int(np.argmax(summary.fmeasure))
    ax_pr.plot(
        [summary.recall[best]],
        [summary.precision[best]],
        "o",
        color="tab:red",
        label=f"max F at threshold {best}/255",
    )
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.01), title="precision-recall")
    ax_pr.grid(alpha=0.3)
    ax_pr.legend(loc="lower left")

    thresholds = np.arange(len(summary.fmeasure))
    ax_f.plot(thresholds, summary.fmeasure, color="tab:green", label="mean F over images")
    ax_f.axvline(best, color="tab:red", linestyle=":", linewidth=1)
    ax_f.set(
        xlabel="threshold (pred >= t/255)",
        ylabel="F-measure (beta^2 = 0.3)",
        xlim=(0, 255),
        ylim=(0, 1.01),
        title="F-measure over thresholds",
    )
    ax_f.grid(alpha=0.3)
    ax_f.legend(loc="lower center")

    m = summary.metrics
    fig.suptitle(
        title
        or (f"{summary.count} images, protocol {summary.protocol}: max F {m['max_f']:.4f}, mean F {m['mean_f']:.4f}")
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
