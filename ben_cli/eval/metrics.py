"""The standard protocol: the nine DIS metrics as PySODMetrics defines them.

A thin layer over ``py_sod_metrics`` (PyPI ``pysodmetrics``), the implementation
the DIS literature reports with. :func:`image_metrics` steps fresh evaluators
on one pair and keeps that pair's scores and curves; :func:`aggregate` combines
pairs exactly as the evaluators' ``get_results`` would after stepping them all.

- ``max_f``: maximum over thresholds of the F-measure curve averaged over images
  (beta^2 = 0.3, thresholds 0..255). The curve comes from ``FmeasureV2``'s
  ``FmeasureHandler`` (one histogram pass for F, precision and recall), which
  equals the curve of the older ``Fmeasure`` class; the tests check this.
- ``mean_f``: mean of that curve.
- ``weighted_f``: weighted F-measure (beta = 1), mean over images.
- ``e_measure``: mean of the E-measure curve averaged over images.
- ``s_measure``, ``mae``: mean over images.
- ``dice``, ``iou``, ``ber``, ``acc``: ``FmeasureV2`` at the fixed binary
  threshold (``pred > 0.5`` after PySODMetrics' min-max normalisation),
  computed per image and averaged.

Pure: numpy arrays in, floats out; no disk access, no printing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

METRIC_KEYS: tuple[str, ...] = (
    "max_f",
    "weighted_f",
    "e_measure",
    "s_measure",
    "mae",
    "dice",
    "iou",
    "ber",
    "acc",
)
"""The nine metrics of the paper's Tables 1 and 2, in table order."""

EXTRA_KEYS: tuple[str, ...] = ("mean_f",)
"""Further summary values both protocols report."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "max_f": True,
    "mean_f": True,
    "weighted_f": True,
    "e_measure": True,
    "s_measure": True,
    "mae": False,
    "dice": True,
    "iou": True,
    "ber": False,
    "acc": True,
}

N_THRESHOLDS = 256


@dataclass(frozen=True)
class ImageResult:
    """The metrics of one prediction / ground-truth pair.

    Attributes:
        scores: this image's value of every key in ``METRIC_KEYS + EXTRA_KEYS``
            (``max_f`` and ``mean_f`` are taken over this image's own F curve).
        precision, recall, fmeasure: float64 (256,) curves; index ``k`` is the
            threshold ``pred >= k / 255`` (ascending).
        emeasure: float64 (256,) E-measure curve in the same order, or None
            where the protocol has no curve.
        undefined: why a score is NaN, by key (only the ``ben`` protocol has NaN).
        resized: how a prediction of another size than its ground truth was brought to it
            (None: same size).
    """

    scores: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    fmeasure: np.ndarray
    emeasure: np.ndarray | None = None
    undefined: dict[str, str] = field(default_factory=dict)
    resized: str | None = None


@dataclass(frozen=True)
class Summary:
    """Dataset-level results.

    Attributes:
        metrics: every key in ``METRIC_KEYS + EXTRA_KEYS`` -> float (NaN if undefined).
        precision, recall, fmeasure: float64 (256,) curves averaged over images,
            index ``k`` = threshold ``k / 255``.
        count: number of image pairs.
        protocol: ``"standard"`` or ``"ben"``.
    """

    metrics: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    fmeasure: np.ndarray
    count: int
    protocol: str = "standard"


def check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    """Raise ValueError unless ``pred`` and ``gt`` are uint8 (H, W) arrays of one shape."""
    for name, a in (("prediction", pred), ("ground truth", gt)):
        if a.dtype != np.uint8 or a.ndim != 2:
            raise ValueError(f"{name} must be a uint8 (H, W) array, got {a.dtype} {a.shape}")
        if a.size == 0:
            raise ValueError(f"{name} is empty")
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape}, ground truth {gt.shape}")


def image_metrics(pred: np.ndarray, gt: np.ndarray) -> ImageResult:
    """Standard metrics of one pair.

    Args:
        pred: uint8 (H, W) predicted alpha / saliency in [0, 255].
        gt: uint8 (H, W) ground truth in [0, 255], binarised by PySODMetrics at ``> 128``.

    Returns:
        The pair's scores and its precision / recall / F / E curves (ascending thresholds).
    """
    import py_sod_metrics as psm

    check_pair(pred, gt)

    binary = {"with_dynamic": False, "with_adaptive": False, "with_binary": True, "sample_based": True}
    fm = psm.FmeasureV2(
        metric_handlers={
            "f": psm.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3),
            "p": psm.PrecisionHandler(with_dynamic=True, with_adaptive=False),
            "r": psm.RecallHandler(with_dynamic=True, with_adaptive=False),
            "dice": psm.DICEHandler(**binary),
            "iou": psm.IOUHandler(**binary),
            "ber": psm.BERHandler(**binary),
            "acc": psm.OverallAccuracyHandler(**binary),
        }
    )
    em, sm, wfm, mae = psm.Emeasure(), psm.Smeasure(), psm.WeightedFmeasure(), psm.MAE()
    for evaluator in (fm, em, sm, wfm, mae):
        evaluator.step(pred, gt)

    fr = fm.get_results()
    # PySODMetrics orders curves from threshold 255 down to 0; we keep ascending order.
    f_curve = _ascending(fr["f"]["dynamic"])
    e_curve = _ascending(em.get_results()["em"]["curve"])
    scores = {
        "max_f": float(f_curve.max()),
        "weighted_f": float(wfm.get_results()["wfm"]),
        "e_measure": float(e_curve.mean()),
        "s_measure": float(sm.get_results()["sm"]),
        "mae": float(mae.get_results()["mae"]),
        "dice": float(fr["dice"]["binary"]),
        "iou": float(fr["iou"]["binary"]),
        "ber": float(fr["ber"]["binary"]),
        "acc": float(fr["acc"]["binary"]),
        "mean_f": float(f_curve.mean()),
    }
    return ImageResult(
        scores=scores,
        precision=_ascending(fr["p"]["dynamic"]),
        recall=_ascending(fr["r"]["dynamic"]),
        fmeasure=f_curve,
        emeasure=e_curve,
    )


def aggregate(results: Sequence[ImageResult]) -> Summary:
    """Combine per-image results as PySODMetrics' ``get_results`` does.

    The F and E curves are averaged over images first; ``max_f`` is the maximum
    and ``e_measure`` / ``mean_f`` the mean of the averaged curve. Every other
    metric is the mean of the per-image values.
    """
    if not results:
        raise ValueError("no image pairs to aggregate")
    f_curve = _mean_curve([r.fmeasure for r in results])
    metrics = {key: _mean([r.scores[key] for r in results]) for key in METRIC_KEYS + EXTRA_KEYS}
    metrics["max_f"] = float(f_curve.max())
    metrics["mean_f"] = float(f_curve.mean())
    e_curves = [r.emeasure for r in results if r.emeasure is not None]
    if len(e_curves) == len(results):
        metrics["e_measure"] = float(_mean_curve(e_curves).mean())
    return Summary(
        metrics=metrics,
        precision=_mean_curve([r.precision for r in results]),
        recall=_mean_curve([r.recall for r in results]),
        fmeasure=f_curve,
        count=len(results),
        protocol="standard",
    )


def _ascending(curve: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(curve, dtype=np.float64)[::-1])


def _mean_curve(curves: Sequence[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(curves).astype(np.float64), axis=0)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))
