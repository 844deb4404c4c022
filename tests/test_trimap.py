"""The vectorised confidence trimap equals the plain loop of Algorithms 1 and 2, pixel for pixel.

The property test over random maps is in ``test_trimap_property.py`` (it needs ``hypothesis``, which the
GPU machine lacks: this module collects without it, for ``pytest -m gpu``)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ben_cli.config import TrimapConfig
from ben_cli.trimap import (
    _reference_from_probs,
    _select,
    _tables,
    _trimap_from_probs,
    confidence_trimap,
    default_min_gray,
    probabilities,
    resolve_config,
    threshold_schedule,
    trimap_overlay,
    trimap_reference,
    trimap_thresholds,
)

PAPER = {"t_low": 0.10, "t_high": 0.90, "t_min": 0.03, "t_max": 0.97, "step": 0.001}
def _exact_logits(targets: torch.Tensor) -> torch.Tensor:
    """float32 logits whose float32 sigmoid is exactly one of the targets (searched over nearby floats).

    Not every float32 is a float32 sigmoid output (``1 + exp(-x)`` is coarser
    than the result), so some targets have no logit; they are left out.
    """
    out = []
    for t in targets.tolist():
        x0 = torch.tensor([math.log(t / (1 - t))], dtype=torch.float32)
        cand = (x0.view(torch.int32) + torch.arange(-512, 513, dtype=torch.int32)).view(torch.float32)
        hit = cand[cand.sigmoid() == t]
        if len(hit):
            out.append(hit[len(hit) // 2])
    assert len(out) >= len(targets) // 4
    return torch.stack(out)


def test_logits_exactly_at_thresholds() -> None:
    """Logits whose sigmoid is exactly t_h or t_l (in float32) or one ulp off, through the public API."""
    states = threshold_schedule(**PAPER)
    picks = [states[k] for k in (0, 1, 7, 33, 69, 70)]
    values = torch.tensor([t for s in picks for t in s], dtype=torch.float32)
    up = torch.nextafter(values, torch.ones_like(values))
    targets = torch.cat([values, up, torch.nextafter(values, torch.zeros_like(values))])
    exact = _exact_logits(targets)
    gen = torch.Generator().manual_seed(0)
    hits = 0
    for n_exact in (1, 5, 17, 40):
        for min_gray in (0, 1, 3, 8, 20, 64):
            logits = torch.full((3, 1, 8, 8), 30.0)
            logits[1] = -30.0
            for b in range(3):
                idx = torch.randperm(64, generator=gen)[:n_exact]
                logits[b].view(-1)[idx] = exact[torch.randint(len(exact), (n_exact,), generator=gen)]
            hits += int((probabilities(logits).view(-1, 1) == targets).any(1).sum())
            got = confidence_trimap(logits, min_gray=min_gray)
            assert torch.equal(got, trimap_reference(logits, min_gray=min_gray))
    assert hits > 1000  # the maps really sit on the thresholds


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_logit_dtypes(dtype: torch.dtype, batch: int) -> None:
    gen = torch.Generator().manual_seed(batch)
    for scale in (0.5, 3.0, 8.0, 30.0, 300.0):
        logits = (torch.randn(batch, 1, 32, 24, generator=gen) * scale).to(dtype)
        for min_gray in (None, 0, 50, 300, 768):
            got = confidence_trimap(logits, min_gray=min_gray)
            assert got.shape == (batch, 1, 32, 24) and got.dtype == torch.uint8
            assert torch.equal(got, trimap_reference(logits, min_gray=min_gray))


def test_half_logits_compare_in_float32() -> None:
    """fp16 logits: the sigmoid and the comparisons happen in float32, not in float16."""
    logits = torch.linspace(-4, 4, 4096, dtype=torch.float16).view(1, 1, 64, 64)
    probs = probabilities(logits)
    assert probs.dtype == torch.float32
    low, _, steps = trimap_thresholds(logits, min_gray=0)
    assert low.dtype == torch.float32 and steps.tolist() == [0]
    m = logits.float().sigmoid()
    want = torch.where(m >= 0.9, 255, torch.where(m <= 0.1, 0, 128)).to(torch.uint8)
    assert torch.equal(confidence_trimap(logits, min_gray=0), want)


def test_images_of_a_batch_take_their_own_steps() -> None:
    """One pixel at a known threshold makes an image stop at a known step; the others are confident."""
    states = threshold_schedule(**PAPER)
    assert len(states) == 71 and states[0] == (0.1, 0.9) and states[-1] == (0.03, 0.97)
    probs = torch.zeros(5, 1, 16, 16)
    probs[:, :, 8:] = 1.0
    probs[0, 0, 0, 0] = 0.5  # gray from the start: no step
    probs[1, 0, 0, 0] = states[5][1]  # = t_h at step 5: 255 up to step 5, gray from step 6
    probs[2, 0, 0, 0] = states[23][0]  # = t_l at step 23: 0 up to step 23, gray from step 24
    probs[3, 0, 0, 0] = torch.nextafter(torch.tensor(states[40][1]), torch.tensor(0.0))  # just below t_h(40)
    # probs[4]: all confident, runs to the bounds (step 70)
    got = _trimap_from_probs(probs, TrimapConfig(min_gray=1, **PAPER))
    assert torch.equal(got, _reference_from_probs(probs, TrimapConfig(min_gray=1, **PAPER)))
    assert got[:, 0, 0, 0].tolist() == [128, 128, 128, 128, 0]
    sel = _select(probs, TrimapConfig(min_gray=1, **PAPER))
    assert sel.steps.tolist() == [0, 6, 24, 40, 70]
    want = torch.tensor([states[k] for k in sel.steps.tolist()], dtype=torch.float64).float()
    assert torch.equal(sel.t_low, want[:, 0]) and torch.equal(sel.t_high, want[:, 1])


def test_trimap_thresholds() -> None:
    logits = torch.full((3, 1, 8, 8), 40.0)
    logits[0, 0, 0, 0] = 0.0  # gray at once
    logits[1, 0, 0, 0] = math.log(0.9255 / 0.0745)  # p = 0.9255: gray once t_h passes it
    low, high, steps = trimap_thresholds(logits, min_gray=1)
    assert steps.tolist() == [0, 26, 70]
    assert low.dtype == high.dtype == torch.float32
    assert torch.allclose(low, torch.tensor([0.1, 0.074, 0.03]))
    assert torch.allclose(high, torch.tensor([0.9, 0.926, 0.97]))


def test_min_gray_none_scales_the_paper_value() -> None:
    assert default_min_gray(1024, 1024) == 60_000
    assert default_min_gray(512, 512) == 15_000
    assert default_min_gray(2048, 1024) == 120_000
    assert default_min_gray(128, 128) == 938  # 937.5, half to even
    assert default_min_gray(192, 256) == 2812  # 2812.5, half to even
    assert default_min_gray(100, 100) == 572  # 572.2
    assert default_min_gray(1, 1) == 0
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 128, 128, generator=gen) * 40
    n = default_min_gray(128, 128)
    assert torch.equal(confidence_trimap(logits), confidence_trimap(logits, min_gray=n))
    assert torch.equal(confidence_trimap(logits), trimap_reference(logits))
    steps = trimap_thresholds(logits)[2]
    assert steps.min() > 0 and steps.max() < 70
    assert not torch.equal(steps, trimap_thresholds(logits, min_gray=n + 400)[2])


def test_config_defaults_are_the_papers() -> None:
    """TrimapConfig is the one source of the defaults: the paper's values, used when nothing is passed."""
    assert dataclasses.asdict(TrimapConfig()) == {**PAPER, "min_gray": None}
    assert resolve_config() == TrimapConfig() == resolve_config(None)
    assert TrimapConfig().min_gray_for(1024, 1024) == 60_000
    assert TrimapConfig().min_gray_for(100, 100) == default_min_gray(100, 100) == 572
    assert TrimapConfig(min_gray=7).min_gray_for(1024, 1024) == 7
    assert TrimapConfig(min_gray=0).min_gray_for(5, 5) == 0


def test_config_and_keyword_overrides_agree() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 48, 40, generator=gen) * 6
    custom = TrimapConfig(t_low=0.2, t_high=0.8, t_min=0.05, t_max=0.95, step=0.007, min_gray=900)
    by_config = confidence_trimap(logits, custom)
    assert torch.equal(by_config, confidence_trimap(logits, **dataclasses.asdict(custom)))
    assert torch.equal(by_config, confidence_trimap(logits, TrimapConfig(min_gray=5), **dataclasses.asdict(custom)))
    assert torch.equal(by_config, trimap_reference(logits, config=custom))
    assert not torch.equal(by_config, confidence_trimap(logits))  # the custom thresholds matter here
    steps = trimap_thresholds(logits, custom)[2]
    assert torch.equal(steps, trimap_thresholds(logits, TrimapConfig(min_gray=900), step=0.007, t_low=0.2,
                                                t_high=0.8, t_min=0.05, t_max=0.95)[2])
    with pytest.raises(TypeError, match="t_lo"):
        confidence_trimap(logits, t_lo=0.2)


def test_output_values_shape_device() -> None:
    logits = torch.randn(2, 1, 40, 30) * 5
    got = confidence_trimap(logits, min_gray=200)
    assert got.shape == (2, 1, 40, 30) and got.dtype == torch.uint8 and got.device == logits.device
    assert set(got.unique().tolist()) <= {0, 128, 255}
    assert (got == 128).sum((1, 2, 3)).ge(200).all()


def test_float32_comparison_rounds_the_threshold_to_float32() -> None:
    """torch compares float32 with a Python float in float32: float32(0.9) < 0.9 still counts as >= 0.9."""
    just_below_09 = torch.tensor(0.9, dtype=torch.float32)
    assert just_below_09.item() < 0.9
    assert bool(just_below_09 >= 0.9)
    probs = torch.full((1, 1, 2, 2), just_below_09.item())
    assert _trimap_from_probs(probs, TrimapConfig(min_gray=0, **PAPER)).unique().tolist() == [255]
    exact = _trimap_from_probs(probs.double(), TrimapConfig(min_gray=0, **PAPER))
    assert exact.unique().tolist() == [128]  # float64: exact 0.9


def test_nan_probabilities_are_gray() -> None:
    logits = torch.full((2, 1, 4, 4), 20.0)
    logits[0, 0, 1, 1] = torch.nan
    got = confidence_trimap(logits, min_gray=1)
    assert torch.equal(got, trimap_reference(logits, min_gray=1))
    assert got[0, 0, 1, 1] == 128 and trimap_thresholds(logits, min_gray=1)[2].tolist() == [0, 70]


def test_small_steps_use_the_search_path() -> None:
    assert _tables(0.1, 0.9, 0.0995, 0.9005, 1e-5, torch.float32).bins == 0
    assert _tables(0.1, 0.9, 0.03, 0.97, 0.001, torch.float32).bins == 1024


def test_schedule_is_the_loops_float_arithmetic() -> None:
    states = threshold_schedule(**PAPER)
    t_l, t_h, want = 0.1, 0.9, [(0.1, 0.9)]
    while t_l > 0.03 or t_h < 0.97:
        t_l, t_h = max(t_l - 0.001, 0.03), min(t_h + 0.001, 0.97)
        want.append((t_l, t_h))
    assert states == want
    assert any(h != round(h, 3) for _, h in states)  # accumulated rounding, not k * 0.001


@pytest.mark.parametrize(
    "params",
    [
        {"step": 0.0},
        {"step": -0.001},
        {"step": math.nan},
        {"t_max": math.inf},
        {"step": 1e-20},  # cannot move 0.1 or 0.9: the loop would never end
    ],
)
def test_bad_parameters(params: dict) -> None:
    with pytest.raises(ValueError):
        confidence_trimap(torch.zeros(1, 1, 4, 4), **params)
    with pytest.raises(ValueError):
        trimap_reference(torch.zeros(1, 1, 4, 4), **params)


def test_bad_logits() -> None:
    with pytest.raises(ValueError):
        confidence_trimap(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError):
        confidence_trimap(torch.zeros(4, 4))
    with pytest.raises(TypeError):
        confidence_trimap(torch.zeros(1, 1, 4, 4, dtype=torch.int64))


def test_overlay() -> None:
    rgb = torch.full((2, 3, 4, 4), 200, dtype=torch.uint8)
    trimap = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    trimap[:, :, 1] = 128
    trimap[:, :, 2:] = 255
    out = trimap_overlay(rgb, trimap)
    assert out.shape == rgb.shape and out.dtype == torch.uint8
    assert out[:, :, 0].eq(70).all()  # background darkened: 200 * 0.35
    assert out[:, :, 1].flatten(2).tolist() == [[[228] * 4, [100] * 4, [228] * 4]] * 2  # 50% magenta
    assert torch.equal(out[:, :, 2:], rgb[:, :, 2:])
    out_f = trimap_overlay(rgb.float() / 255, trimap)
    assert out_f.dtype == torch.float32
    assert torch.allclose(out_f * 255, out.float(), atol=0.51)
    with pytest.raises(ValueError):
        trimap_overlay(rgb, trimap[:1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_no_host_sync() -> None:
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.5, 4.0, 20.0, 200.0]).view(4, 1, 1, 1)
    logits = torch.randn(4, 1, 256, 256, generator=gen) * scale
    want = trimap_reference(logits)
    cuda = logits.cuda()
    confidence_trimap(cuda)  # warm up: allocator, table cache
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = confidence_trimap(cuda)
        got_half = confidence_trimap(cuda.half())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got.cpu(), want)
    assert torch.equal(got_half.cpu(), trimap_reference(logits.half()))
