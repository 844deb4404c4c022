"""A run's history: ``log.jsonl`` and the ``loss.png`` drawn from it.

``log.jsonl`` holds one row per optimiser step (``kind: "train"``: step, loss, its parts, lr,
grad_norm, images_per_s, elapsed_s) and one per validation (``kind: "val"``: step and the
metrics). Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any


class RunLog:
    """``log.jsonl`` and the rows in memory (rank 0 writes; other ranks keep nothing)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.rows: list[dict[str, Any]] = []

    def restart_at(self, step: int) -> None:
        """Keep the rows up to ``step`` (a crash may have logged steps after the last save)."""
        if not self.enabled or not self.path.is_file():
            return
        from ben_cli.io import atomic_write_bytes

        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and int(row.get("step", -1)) <= step:
                    kept.append(row)
        self.rows = kept
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))

    def elapsed_s(self) -> float:
        """Training seconds logged so far (0 for a new run): a resumed run's clock continues from there."""
        return next((float(r["elapsed_s"]) for r in reversed(self.rows) if "elapsed_s" in r), 0.0)

    def mean_loss(self, after: int, upto: int) -> float | None:
        """Mean training loss of the steps in ``(after, upto]`` (None when none is logged)."""
        window = [r["loss"] for r in self.rows if r.get("kind") == "train" and after < r["step"] <= upto]
        return sum(window) / len(window) if window else None

    def append(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def plot_history(path: Path, rows: list[dict[str, Any]], title: str = "") -> None:
    """Draw the loss (and its parts), the learning rate and the validation metrics to ``path``.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ben_cli.io import atomic_write_bytes

    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    if not train:
        return
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3)
    steps = [r["step"] for r in train]
    parts = [k for k in train[-1] if k.startswith("loss")]
    for key in parts:
        values = [r.get(key, math.nan) for r in train]
        line = ax_loss.plot(steps, values, alpha=0.25, linewidth=0.8)[0]
        ax_loss.plot(steps, _ema(values), color=line.get_color(), label=key)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss (EMA and raw)")
    ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_lr.plot(steps, [r["lr"] for r in train], color="tab:gray")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule")
    ax_lr.grid(alpha=0.3)
    if val:
        vsteps = [r["step"] for r in val]
        for key in ("max_f", "weighted_f", "s_measure", "e_measure", "mae"):
            if key in val[-1]:
                ax_val.plot(vsteps, [r.get(key, math.nan) for r in val], marker="o", markersize=3, label=key)
        ax_val.set(xlabel="step", title="validation")
        ax_val.legend(fontsize=8)
    else:
        ax_val.set_axis_off()
        ax_val.text(0.5, 0.5, "no validation set (--val)", ha="center", va="center")
    ax_val.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(Path(path), buf.getvalue())


def _ema(values: list[float], alpha: float = 0.05) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None or not math.isfinite(acc) else (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out
