"""Matting errors (SAD, MSE, gradient, connectivity) on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ben_cli.refine.metrics import (
    connectivity_error,
    gaussian_derivative_kernels,
    gradient_error,
    matting_errors,
    mse,
    sad,
)


def test_identical_maps_have_no_error() -> None:
    rng = np.random.default_rng(0)
    gt = rng.random((20, 30))
    assert matting_errors(gt, gt) == {"sad": 0.0, "mse": 0.0, "grad": 0.0, "conn": 0.0}


def test_sad_and_mse_count_the_band_only() -> None:
    gt = np.zeros((4, 5))
    alpha = gt.copy()
    alpha[0, :4] = 0.5  # four pixels off by 0.5
    alpha[3, 4] = 1.0  # one pixel off by 1, outside the band
    band = np.zeros((4, 5), bool)
    band[0] = True
    assert sad(alpha, gt, band) == pytest.approx(4 * 0.5 / 1000)
    assert mse(alpha, gt, band) == pytest.approx(4 * 0.25 / 5)
    assert sad(alpha, gt) == pytest.approx(3.0 / 1000)
    assert mse(alpha, gt, np.zeros((4, 5), bool)) == 0.0
    with pytest.raises(ValueError):
        sad(alpha, gt[:3])


def test_gradient_kernels() -> None:
    hx, hy = gaussian_derivative_kernels(1.4)
    assert hx.shape == (9, 9)  # half size ceil(1.4 * sqrt(-2 ln(sqrt(2 pi) 1.4 0.01))) = 4
    assert math.isclose((hx**2).sum(), 1.0) and np.allclose(hy, hx.T)
    assert np.allclose(hx.sum(1), 0) and np.allclose(hx, -hx[:, ::-1])  # odd in x, no response to a constant


def test_gradient_error() -> None:
    ramp = np.tile(np.linspace(0, 1, 32), (32, 1))
    assert gradient_error(ramp + 0.3, ramp) == pytest.approx(0.0, abs=1e-12)  # an offset has the same gradient
    step = np.zeros((32, 32))
    step[:, 16:] = 1
    flat = np.full((32, 32), 0.5)
    band = np.zeros((32, 32), bool)
    band[:, 14:18] = True
    err = gradient_error(flat, step, band)
    assert err > 0
    assert gradient_error(flat, step) > err  # the band holds part of it
    assert gradient_error(step, flat, band) == pytest.approx(err)  # symmetric


def test_connectivity_error_of_a_detached_pixel() -> None:
    gt = np.zeros((9, 9))
    gt[1:4, 1:4] = 1.0
    alpha = gt.copy()
    alpha[7, 7] = 1.0  # an opaque speck not connected to the object
    # The speck leaves the largest component at the first threshold (l = 0), so phi(alpha) = 1 - 1 = 0
    # and phi(gt) = 1 - 0 = 1 there; every pixel of the object stays connected (l = 1, phi = 1 for both).
    assert connectivity_error(alpha, gt) == pytest.approx(1 / 1000)
    band = np.ones((9, 9), bool)
    band[7, 7] = False
    assert connectivity_error(alpha, gt, band) == 0.0
    faint = gt.copy()
    faint[7, 7] = 0.1  # below theta above its level: no penalty
    assert connectivity_error(faint, gt) == 0.0
