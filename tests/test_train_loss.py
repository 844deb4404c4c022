"""The paper's loss (section 3.2): each part against hand-computed values, and the 6 + 5 + 4 terms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ben_cli.train.config import LossConfig
from ben_cli.train.loss import (
    SCALES,
    BenLoss,
    gaussian_window,
    pixel_weight,
    ssim,
    ssim_loss,
    structure_loss,
    weighted_bce,
    weighted_iou,
)

LN2 = math.log(2.0)
POOL_AREA = 31 * 31  # avg_pool2d counts the zero padding


def t(values, shape=None) -> torch.Tensor:
    x = torch.tensor(values, dtype=torch.float64)
    return x.view(shape) if shape else x.view(1, 1, 1, -1)


def center_weight() -> float:
    """Centre tap of the normalised 11x11 Gaussian window (sigma 1.5), by hand."""
    s = sum(math.exp(-((k - 5) ** 2) / (2 * 1.5**2)) for k in range(11))
    return (1.0 / s) ** 2


def ssim_one_pixel(a: float, b: float) -> float:
    """SSIM of two 1x1 images with zero padding: every window sum sees only the centre tap g."""
    g, c1, c2 = center_weight(), 0.01**2, 0.03**2
    mx, my = g * a, g * b
    vx, vy, cov = g * a * a - mx * mx, g * b * b - my * my, g * a * b - mx * my
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


# --------------------------------------------------------------------------- parts


def test_pixel_weight_counts_the_padding_of_the_31x31_pool():
    assert torch.equal(pixel_weight(torch.zeros(1, 1, 4, 5)), torch.ones(1, 1, 4, 5))
    # One row [0, 1, 0]: every window covers the three pixels, so the mean is 1/961 everywhere.
    w = pixel_weight(t([0.0, 1.0, 0.0]))
    expected = t([1 + 5 / POOL_AREA, 1 + 5 * (POOL_AREA - 1) / POOL_AREA, 1 + 5 / POOL_AREA])
    torch.testing.assert_close(w, expected)


def test_weighted_bce_by_hand():
    # BCE(0, 1) = ln 2, BCE(ln 3, 0) = ln(1 + 3) = 2 ln 2; weights 1 and 3 -> (ln2 + 6 ln2) / 4.
    got = weighted_bce(t([0.0, math.log(3.0)]), t([1.0, 0.0]), t([1.0, 3.0]))
    torch.testing.assert_close(got, torch.tensor([7 / 4 * LN2], dtype=torch.float64))
    # Default weights on a constant mask are uniform: the plain mean, here ln 2.
    got = weighted_bce(torch.zeros(2, 1, 3, 3), torch.ones(2, 1, 3, 3))
    torch.testing.assert_close(got, torch.full((2,), LN2))


def test_weighted_iou_by_hand():
    # I = 0.5, U = 1.5 * 1 + 0.25 * 3 = 2.25 -> 1 - (0.5 + 1) / (2.25 - 0.5 + 1) = 5/11.
    got = weighted_iou(t([0.5, 0.25]), t([1.0, 0.0]), t([1.0, 3.0]))
    torch.testing.assert_close(got, torch.tensor([5 / 11], dtype=torch.float64))
    # Default weights, 3x3 ones mask, prob 0.5: w = 1 + 5 (1 - 9/961) everywhere.
    w = 1 + 5 * (1 - 9 / POOL_AREA)
    got = weighted_iou(torch.full((1, 1, 3, 3), 0.5, dtype=torch.float64), torch.ones(1, 1, 3, 3, dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([1 - (4.5 * w + 1) / (9 * w + 1)], dtype=torch.float64))
    # A perfect binary prediction: I = sum(w y), U - I = I -> loss 0 exactly.
    y = (torch.rand(1, 1, 8, 8) > 0.5).float()
    assert weighted_iou(y, y).item() == pytest.approx(0.0, abs=1e-7)


def test_gaussian_window():
    w = gaussian_window()
    assert w.shape == (1, 1, 11, 11) and w.dtype == torch.float32
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert w[0, 0, 5, 5].item() == pytest.approx(center_weight(), rel=1e-6)
    torch.testing.assert_close(w, w.transpose(-1, -2))
    torch.testing.assert_close(w, w.flip(-1))


def test_ssim_by_hand():
    got = ssim(t([0.8], (1, 1, 1, 1)), t([0.3], (1, 1, 1, 1)))
    assert got.item() == pytest.approx(ssim_one_pixel(0.8, 0.3), rel=1e-9)
    x = torch.rand(2, 1, 20, 17)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    torch.testing.assert_close(ssim(x, x.flip(0)), ssim(x.flip(0), x))  # symmetric
    # BiRefNet's loss form: (1 - SSIM) / 2
    y = torch.rand(2, 1, 20, 17)
    torch.testing.assert_close(ssim_loss(x, y), (1 - ssim(x, y)) / 2)
    assert ssim_loss(x, y).min() > 0


def test_structure_loss_by_hand_on_one_pixel():
    # logits 0 (prob 0.5) against 1: WBCE = ln 2; w = 1 + 5 * 960/961; WIoU = 1 - (w/2 + 1)/(w + 1).
    w = 1 + 5 * (POOL_AREA - 1) / POOL_AREA
    wiou = 1 - (0.5 * w + 1) / (w + 1)
    expected = 4 * LN2 + 1 * wiou + 2 * (1 - ssim_one_pixel(0.5, 1.0)) / 2
    got = structure_loss(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_structure_loss_is_the_weighted_sum_of_its_parts():
    torch.manual_seed(0)
    p = torch.randn(3, 1, 24, 20) * 3
    y = (torch.rand(3, 1, 24, 20) > 0.6).float()
    q = torch.sigmoid(p)
    expected = (4 * weighted_bce(p, y) + weighted_iou(q, y) + 2 * ssim_loss(q, y)).mean()
    torch.testing.assert_close(structure_loss(p, y), expected)
    only_bce = LossConfig(bce=1.0, iou=0.0, ssim=0.0)
    torch.testing.assert_close(structure_loss(p, y, only_bce), weighted_bce(p, y).mean())
    # fp16/bf16 logits (autocast) are scored in float32
    low = structure_loss(p.bfloat16(), y.bfloat16())
    assert low.dtype == torch.float32 and torch.isfinite(low)
    with pytest.raises(ValueError, match="shape"):
        structure_loss(p, y[:, :, :10])


def test_loss_decreases_towards_the_target():
    y = (torch.rand(1, 1, 32, 32) > 0.5).float()
    near = structure_loss((y * 2 - 1) * 6, y)
    far = structure_loss(-(y * 2 - 1) * 6, y)
    assert near < 0.2 < far


# --------------------------------------------------------------------------- the combined loss


@pytest.fixture(scope="module")
def tiny_outputs(one_torch_thread):
    from ben_cli.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("tiny").train()
    x = torch.randn(2, 3, 256, 256)
    y = torch.zeros(2, 1, 256, 256)
    y[:, :, 40:200, 60:180] = 1.0
    return model(x), y


def test_ben_loss_sees_6_5_4_terms_at_mvanet_scales(tiny_outputs):
    outputs, y = tiny_outputs
    result = BenLoss()(outputs, y)
    groups = [term.group for term in result.terms]
    assert groups == ["local"] * 6 + ["global"] * 5 + ["token"] * 4
    for group, scales in SCALES.items():
        sizes = [term.size for term in result.terms if term.group == group]
        assert sizes == [(int(256 * s), int(256 * s)) for s in scales], group
    # each term is StructureLoss of that output against the ground truth resized (nearest) to it
    maps = [*outputs.side, *outputs.glob, *outputs.tokens]
    for term, p in zip(result.terms, maps, strict=True):
        target = F.interpolate(y, size=p.shape[-2:], mode="nearest")
        torch.testing.assert_close(term.value, structure_loss(p, target))


def test_ben_loss_equals_the_sum_of_its_parts(tiny_outputs):
    outputs, y = tiny_outputs
    result = BenLoss()(outputs, y)
    by_group = {g: sum(t.value for t in result.terms if t.group == g) for g in ("local", "global", "token")}
    for g, value in by_group.items():
        torch.testing.assert_close(result.parts[g], value)
    torch.testing.assert_close(result.total, by_group["local"] + 0.3 * by_group["global"] + 0.3 * by_group["token"])
    weights = LossConfig(local=2.0, glob=0.5, token=0.0)
    other = BenLoss(weights)(outputs, y)
    torch.testing.assert_close(other.total, 2.0 * by_group["local"] + 0.5 * by_group["global"])


def test_ben_loss_token_quirk_feeds_sigmoid_maps_as_logits(tiny_outputs):
    outputs, y = tiny_outputs
    quirk = BenLoss(LossConfig(token_sigmoid_quirk=True))(outputs, y)
    plain = BenLoss()(outputs, y)
    for tq, tp, t_map in zip(quirk.terms[-4:], plain.terms[-4:], outputs.tokens, strict=True):
        target = F.interpolate(y, size=t_map.shape[-2:], mode="nearest")
        torch.testing.assert_close(tq.value, structure_loss(torch.sigmoid(t_map), target))
        assert not torch.allclose(tq.value, tp.value)
    torch.testing.assert_close(quirk.parts["local"], plain.parts["local"])


def test_ben_loss_backpropagates_and_checks_its_inputs(tiny_outputs):
    outputs, y = tiny_outputs
    leaf = [p.detach().requires_grad_() for p in (*outputs.side, *outputs.glob, *outputs.tokens)]
    fake = type(outputs)(leaf[5], leaf[:6], leaf[6:11], leaf[11:])
    BenLoss()(fake, y).total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in leaf)
    with pytest.raises(ValueError, match="expected 6 side outputs"):
        BenLoss()(type(outputs)(leaf[5], leaf[:5], leaf[6:11], leaf[11:]), y)
