"""The standard matting errors, counted over the gray band of a trimap (numpy, float64, CPU).

Definitions of Rhemann et al., "A Perceptually Motivated Online Benchmark for
Image Matting" (CVPR 2009), with the scaling of the Deep Image Matting
benchmark (Xu et al. 2017), alpha in [0, 1]:

* SAD: ``sum |a - g| / 1000``;
* MSE: ``sum (a - g)^2 / n`` over the n band pixels;
* gradient: ``sum (|grad a| - |grad g|)^2 / 1000``, gradients by first-derivative-
  of-Gaussian filters with sigma 1.4 (support ``ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma 0.01)))``,
  each filter scaled to unit L2 norm);
* connectivity: ``sum |phi(a) - phi(g)| / 1000`` with ``phi(x) = 1 - d * [d >= 0.15]``,
  ``d = x - l``, where ``l`` is the last threshold (steps of 0.1) at which the
  pixel still belonged to the largest 4-connected component of ``a >= t and g >= t``
  (1 if it always did).

Each error is summed over the band pixels only (``mask``), the filters and
components see the whole map.
"""

from __future__ import annotations

import math

import numpy as np


def _prepare(alpha: np.ndarray, gt: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, ...]:
    a = np.asarray(alpha, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if a.shape != g.shape or a.ndim != 2:
        raise ValueError(f"alpha and gt must be two (H, W) maps, got {a.shape} and {g.shape}")
    m = np.ones(a.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != a.shape:
        raise ValueError(f"mask must be {a.shape}, got {m.shape}")
    return a, g, m


def sad(alpha: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Sum of absolute differences over ``mask``, divided by 1000. Maps (H, W) in [0, 1]."""
    a, g, m = _prepare(alpha, gt, mask)
    return float(np.abs(a - g)[m].sum() / 1000)


def mse(alpha: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared difference over ``mask`` (0 for an empty mask)."""
    a, g, m = _prepare(alpha, gt, mask)
    n = int(m.sum())
    return float(((a - g) ** 2)[m].sum() / n) if n else 0.0


def gaussian_derivative_kernels(sigma: float = 1.4) -> tuple[np.ndarray, np.ndarray]:
    """The (2h+1, 2h+1) x- and y-derivative-of-Gaussian filters of the gradient error, unit L2 norm."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 1e-2)))
    u = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dgauss = -u * gauss / sigma**2
    hx = gauss[:, None] * dgauss[None, :]  # rows: y (smoothing), columns: x (derivative)
    hx /= math.sqrt((hx**2).sum())
    return hx, hx.T.copy()


def _gradient_magnitude(x: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    hx, hy = gaussian_derivative_kernels(sigma)
    # cv2.filter2D correlates; the sign does not matter for the magnitude. Borders replicated.
    gx = cv2.filter2D(x, cv2.CV_64F, hx, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(x, cv2.CV_64F, hy, borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx**2 + gy**2)


def gradient_error(alpha: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                   sigma: float = 1.4) -> float:
    """Sum over ``mask`` of the squared difference of gradient magnitudes, divided by 1000."""
    a, g, m = _prepare(alpha, gt, mask)
    diff = _gradient_magnitude(a, sigma) - _gradient_magnitude(g, sigma)
    return float((diff**2)[m].sum() / 1000)


def _largest_component(binary: np.ndarray) -> np.ndarray:
    """Boolean map of the largest 4-connected component of ``binary`` (all False if empty)."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=4)
    if n <= 1:
        return np.zeros(binary.shape, bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def connectivity_error(alpha: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                       step: float = 0.1, theta: float = 0.15) -> float:
    """Rhemann et al.'s connectivity error over ``mask``, divided by 1000."""
    a, g, m = _prepare(alpha, gt, mask)
    levels = np.arange(0.0, 1.0 + step / 2, step)
    last = np.full(a.shape, -1.0)
    for k in range(1, len(levels)):
        t = levels[k]
        omega = _largest_component((a >= t) & (g >= t))
        fresh = (last == -1) & ~omega
        last[fresh] = levels[k - 1]
    last[last == -1] = 1.0
    da, dg = a - last, g - last
    phi_a = 1 - da * (da >= theta)
    phi_g = 1 - dg * (dg >= theta)
    return float(np.abs(phi_a - phi_g)[m].sum() / 1000)


def matting_errors(alpha: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """All four errors: ``{"sad", "mse", "grad", "conn"}``."""
    return {
        "sad": sad(alpha, gt, mask),
        "mse": mse(alpha, gt, mask),
        "grad": gradient_error(alpha, gt, mask),
        "conn": connectivity_error(alpha, gt, mask),
    }
