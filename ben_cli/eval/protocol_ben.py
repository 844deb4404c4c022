"""The authors' protocol (``ben eval --protocol ben``): the definitions of ``test.py``.

The BEN repository (PramaLLC/BEN) evaluates with its own script, whose
definitions differ from the standard ones of :mod:`ben_cli.eval.metrics`. This
module restates them, so that numbers can be set beside the paper's tables:

- both maps are resized to 1024x1024 (prediction bilinear, ground truth nearest)
  and scaled to float32 in [0, 1] (``k / 255``); the prediction is not min-max
  normalised and the ground truth is kept soft where a metric uses it raw;
- ``max_f`` is the mean over images of each image's own maximum F (beta^2 = 0.3,
  256 thresholds ``linspace(0, 1, 256)``, ``pred >= t``, epsilon 1e-8);
- ``e_measure`` uses one adaptive threshold, ``min(2 * mean(pred), 1)``, and
  divides the enhanced-alignment sum by ``N``;
- ``s_measure`` uses population standard deviations, a truncated centroid and a
  global SSIM with constants (0.01^2, 0.03^2) per quadrant; it is NaN where the
  script's is (an all-foreground ground truth, a centroid in the first row or
  column) and is never clipped at 0;
- ``weighted_f`` uses beta = 1 and epsilon 1e-6 on the raw prediction;
- ``mae`` and ``dice`` use the soft ground truth and the soft prediction
  (``dice`` with smoothing 1e-5); ``iou`` thresholds both at ``> 0.5`` (smoothing
  1e-5); ``ber`` and ``acc`` threshold the prediction at ``>= 0.5``.

Every metric is averaged over images. Pure numpy / OpenCV / SciPy: arrays in,
floats out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ben_cli.eval.metrics import EXTRA_KEYS, METRIC_KEYS, ImageResult, Summary

SIZE = 1024
"""Side of the square both maps are resized to."""

THRESHOLDS = np.linspace(0.0, 1.0, 256)
"""The F-measure thresholds, ``pred >= t``."""

BETA2 = 0.3
SMOOTH = 1e-5
EPS_F = 1e-8
EPS_WF = 1e-6
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def prepare(pred: np.ndarray, gt: np.ndarray, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Resize a pair as the script does and scale it to [0, 1].

    Args:
        pred: uint8 (H, W) prediction.
        gt: uint8 (H', W') ground truth; its size need not match ``pred``.
        size: side of the square output.

    Returns:
        ``(pred, gt)``, float32 (size, size), values ``k / 255``.
    """
    import cv2

    pred = cv2.resize(pred, (size, size), interpolation=cv2.INTER_LINEAR)
    gt = cv2.resize(gt, (size, size), interpolation=cv2.INTER_NEAREST)
    scale = np.float32(255)
    return pred.astype(np.float32) / scale, gt.astype(np.float32) / scale


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error between the soft prediction and the soft ground truth."""
    return float(np.mean(np.abs(pred.astype(np.float64) - gt.astype(np.float64))))


def soft_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Soft Dice: ``(2 sum(p g) + s) / (sum g + sum p + s)`` on the raw maps, s = 1e-5."""
    p, g = pred.astype(np.float64), gt.astype(np.float64)
    return float((2.0 * np.sum(p * g) + SMOOTH) / (np.sum(g) + np.sum(p) + SMOOTH))


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of ``pred > 0.5`` and ``gt > 0.5`` with smoothing 1e-5 (1.0 when both are empty)."""
    p, g = pred > 0.5, gt > 0.5
    inter = np.count_nonzero(p & g)
    union = np.count_nonzero(p | g)
    return float((inter + SMOOTH) / (union + SMOOTH))


def ber(pred: np.ndarray, gt: np.ndarray) -> float:
    """Balanced error rate of ``pred >= 0.5`` against ``gt > 0.5``.

    A class absent from the ground truth contributes a rate of 0 (the script
    divides by ``count + 1e-8``), so an empty ground truth gives at least 0.5.
    """
    p, g = pred >= 0.5, gt > 0.5
    n_pos = np.count_nonzero(g)
    n_neg = g.size - n_pos
    tp = np.count_nonzero(p & g)
    tn = np.count_nonzero(~p & ~g)
    return float(1.0 - (tp / (n_pos + 1e-8) + tn / (n_neg + 1e-8)) / 2.0)


def accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of pixels where ``pred >= 0.5`` equals ``gt > 0.5``."""
    return float(np.count_nonzero((pred >= 0.5) == (gt > 0.5)) / gt.size)


def f_curves(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F (beta^2 = 0.3) at the 256 thresholds ``pred >= t``.

    Args:
        pred: float (H, W) in [0, 1].
        gt: float (H, W), binarised at ``> 0.5``.

    Returns:
        Three float64 (256,) arrays, index ``k`` for ``t = linspace(0, 1, 256)[k]``.
    """
    g = (gt > 0.5).ravel()
    # Number of thresholds each pixel reaches: pixel i is positive at threshold k iff k < passes[i].
    passes = np.searchsorted(THRESHOLDS, pred.astype(np.float64).ravel(), side="right")
    n = len(THRESHOLDS)
    fg_hist = np.bincount(passes[g], minlength=n + 1)
    all_hist = np.bincount(passes, minlength=n + 1)
    # positives at k = pixels with passes > k = reverse cumulative sum of bins k+1 .. n.
    tp = np.cumsum(fg_hist[::-1])[::-1][1:].astype(np.float64)
    predicted = np.cumsum(all_hist[::-1])[::-1][1:].astype(np.float64)
    fp = predicted - tp
    fn = np.count_nonzero(g) - tp
    precision = tp / (tp + fp + EPS_F)
    recall = tp / (tp + fn + EPS_F)
    f = (1 + BETA2) * precision * recall / (BETA2 * precision + recall + EPS_F)
    return precision, recall, f


def e_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    """Adaptive-threshold E-measure as the script defines it.

    The prediction is binarised at ``min(2 * mean(pred), 1)``; an empty ground
    truth scores the fraction of negative pixels, a full one the fraction of
    positive pixels; otherwise the mean of ``(1 + 2 a b / (a^2 + b^2 + 1e-8))^2 / 4``
    with ``a``, ``b`` the demeaned binary maps.
    """
    g = gt > 0.5
    b = pred >= min(2.0 * float(np.mean(pred, dtype=np.float64)), 1.0)
    n = g.size
    n_gt = np.count_nonzero(g)
    n_pred = np.count_nonzero(b)
    if n_gt == 0:
        return float(1.0 - n_pred / n)
    if n_gt == n:
        return float(n_pred / n)
    mu_b, mu_g = n_pred / n, n_gt / n
    n_bg = np.count_nonzero(b & g)
    # The aligned matrix takes one value per (pred, gt) combination: count each.
    counts = {
        (1, 1): n_bg,
        (1, 0): n_pred - n_bg,
        (0, 1): n_gt - n_bg,
        (0, 0): n - n_pred - n_gt + n_bg,
    }
    total = 0.0
    for (bv, gv), count in counts.items():
        a, c = bv - mu_b, gv - mu_g
        align = 2.0 * a * c / (a * a + c * c + 1e-8)
        total += count * (align + 1.0) ** 2 / 4.0
    return float(total / n)


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """The script's simplified S-measure (NaN in the cases its own is NaN).

    ``alpha * object + (1 - alpha) * region``; ``1 - mean(pred)`` when the
    ground truth is empty.
    """
    g = gt > 0.5
    p = pred.astype(np.float64)
    if not g.any():
        return float(1.0 - p.mean())
    return float(alpha * _object_score(p, g) + (1.0 - alpha) * _region_score(p, g))


def _object_score(pred: np.ndarray, g: np.ndarray) -> float:
    u = np.count_nonzero(g) / g.size
    o_fg = _s_object(pred[g])
    o_bg = _s_object(1.0 - pred[~g])  # NaN for an all-foreground ground truth, as in the script
    return u * o_fg + (1.0 - u) * o_bg


def _s_object(values: np.ndarray) -> float:
    if values.size == 0:
        return float("nan")
    x = float(values.mean())
    sigma = float(values.std())
    return 2.0 * x / (x * x + 1.0 + sigma + 1e-8)


def _region_score(pred: np.ndarray, g: np.ndarray) -> float:
    h, w = g.shape
    rows, cols = np.nonzero(g)
    y = int(rows.sum() / rows.size)
    x = int(cols.sum() / cols.size)
    gf = g.astype(np.float64)
    area = h * w
    quadrants = (
        (slice(0, y), slice(0, x), y * x),
        (slice(0, y), slice(x, w), y * (w - x)),
        (slice(y, h), slice(0, x), (h - y) * x),
        (slice(y, h), slice(x, w), (h - y) * (w - x)),
    )
    return float(sum(_ssim(pred[r, c], gf[r, c]) * (n / area) for r, c, n in quadrants))


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Global SSIM of two regions with constants (0.01^2, 0.03^2); NaN for an empty region."""
    if pred.size == 0:
        return float("nan")
    mu_x, mu_y = pred.mean(), gt.mean()
    var_x, var_y = pred.var(), gt.var()
    cov = np.mean((pred - mu_x) * (gt - mu_y))
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return float(num / (den + 1e-8))


def weighted_f(pred: np.ndarray, gt: np.ndarray, beta: float = 1.0) -> float:
    """Weighted F-measure (Margolin et al.) with the script's beta = 1 and epsilon 1e-6.

    The raw prediction is used (no min-max normalisation); 0 for an empty ground truth.
    """
    from scipy.ndimage import convolve, distance_transform_edt

    g = gt > 0.5
    if not g.any():
        return 0.0
    p = pred.astype(np.float32)
    dist, idx = distance_transform_edt(~g, return_indices=True)
    err = np.abs(p - g.astype(np.float32))
    err_t = err.copy()
    bg = ~g
    err_t[bg] = err_t[idx[0][bg], idx[1][bg]]
    err_a = convolve(err_t, weights=_gauss_kernel(7, 5.0), mode="constant", cval=0.0)
    min_err = np.where(g & (err_a < err), err_a, err)
    importance = np.where(bg, 2.0 - np.exp(np.log(0.5) / 5.0 * dist), 1.0)
    ew = min_err.astype(np.float64) * importance
    tp_w = np.count_nonzero(g) - ew[g].sum()
    fp_w = ew[bg].sum()
    recall = 1.0 - ew[g].mean()
    precision = tp_w / (EPS_WF + tp_w + fp_w)
    return float((1 + beta) * recall * precision / (EPS_WF + recall + beta * precision))


def _gauss_kernel(size: int, sigma: float) -> np.ndarray:
    """Normalised (size, size) Gaussian, as MATLAB's ``fspecial('gaussian')``."""
    half = (size - 1) / 2.0
    y, x = np.ogrid[-half : half + 1, -half : half + 1]
    k = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    k[k < np.finfo(k.dtype).eps * k.max()] = 0
    return k / k.sum()


def image_metrics(pred: np.ndarray, gt: np.ndarray, size: int = SIZE) -> ImageResult:
    """The authors' metrics of one pair.

    Args:
        pred: uint8 (H, W) prediction in [0, 255].
        gt: uint8 (H', W') ground truth in [0, 255]; both are resized to ``size``.
        size: side of the square both maps are resized to (1024 in the script).

    Returns:
        The pair's scores and its precision / recall / F curves (no E curve).
    """
    for name, a in (("prediction", pred), ("ground truth", gt)):
        if a.dtype != np.uint8 or a.ndim != 2 or a.size == 0:
            raise ValueError(f"{name} must be a non-empty uint8 (H, W) array, got {a.dtype} {a.shape}")
    p, g = prepare(pred, gt, size)
    precision, recall, f = f_curves(p, g)
    s = s_measure(p, g)
    scores = {
        "max_f": float(f.max()),
        "weighted_f": weighted_f(p, g),
        "e_measure": e_measure(p, g),
        "s_measure": s,
        "mae": mae(p, g),
        "dice": soft_dice(p, g),
        "iou": iou(p, g),
        "ber": ber(p, g),
        "acc": accuracy(p, g),
        "mean_f": float(f.mean()),
    }
    undefined = {"s_measure": s_measure_nan_reason(g)} if math.isnan(s) else {}
    return ImageResult(scores=scores, precision=precision, recall=recall, fmeasure=f, undefined=undefined)


def s_measure_nan_reason(gt: np.ndarray) -> str:
    """Why the script's S-measure is NaN for this (resized, [0, 1]) ground truth."""
    g = gt > 0.5
    if g.all():
        return "all-foreground ground truth, where the script's S-measure divides 0 by 0"
    return "foreground centroid on the first row or column, where the script's S-measure has an empty quadrant"


def aggregate(results: Sequence[ImageResult]) -> Summary:
    """Average every per-image value over images (``max_f``: the mean of per-image maxima).

    NaN per-image values propagate to the mean, as they do in the script.
    """
    if not results:
        raise ValueError("no image pairs to aggregate")
    metrics = {
        key: float(np.mean(np.asarray([r.scores[key] for r in results], dtype=np.float64)))
        for key in METRIC_KEYS + EXTRA_KEYS
    }

    def mean_curve(curves: list[np.ndarray]) -> np.ndarray:
        return np.mean(np.stack(curves), axis=0)

    return Summary(
        metrics=metrics,
        precision=mean_curve([r.precision for r in results]),
        recall=mean_curve([r.recall for r in results]),
        fmeasure=mean_curve([r.fmeasure for r in results]),
        count=len(results),
        protocol="ben",
    )
