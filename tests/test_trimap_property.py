"""Property test: the vectorised confidence trimap equals the plain loop on random small maps (``hypothesis``).

Apart from ``test_trimap.py`` so that module collects where ``hypothesis`` is missing (the GPU machine runs
``pytest -m gpu`` without it); here the whole module is skipped then.
"""

from __future__ import annotations

import pytest
import torch

from ben_cli.config import TrimapConfig
from ben_cli.trimap import _reference_from_probs, _trimap_from_probs, threshold_schedule

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")
HealthCheck, given, settings = hypothesis.HealthCheck, hypothesis.given, hypothesis.settings

PAPER = {"t_low": 0.10, "t_high": 0.90, "t_min": 0.03, "t_max": 0.97, "step": 0.001}
PARAMS = [
    PAPER,
    {"t_low": 0.2, "t_high": 0.8, "t_min": 0.05, "t_max": 0.95, "step": 0.007},  # bounds overshot, clamped
    {"t_low": 0.1, "t_high": 0.9, "t_min": 0.1, "t_max": 0.9, "step": 0.001},  # no step possible
    {"t_low": 0.3, "t_high": 0.6, "t_min": 0.0, "t_max": 1.0, "step": 0.01},  # bounds at 0 and 1
    {"t_low": 0.1, "t_high": 0.9, "t_min": 0.05, "t_max": 0.99, "step": 0.001},  # t_l stops first
    {"t_low": 0.02, "t_high": 0.9, "t_min": 0.03, "t_max": 0.97, "step": 0.001},  # t_l jumps up to t_min
    {"t_low": 0.6, "t_high": 0.4, "t_min": 0.5, "t_max": 0.5, "step": 0.01},  # crossed: 255 wins
    {"t_low": 0.1, "t_high": 0.9, "t_min": 0.0995, "t_max": 0.9005, "step": 1e-5},  # searchsorted path
]
FLOAT_DTYPES = [torch.float32, torch.float64]


def _pool(params: dict, dtype: torch.dtype) -> torch.Tensor:
    """Probabilities worth testing: every threshold the loop visits (in ``dtype``), its
    neighbours one ulp away, the ends of [0, 1] and a few ordinary values."""
    states = threshold_schedule(**params)
    values = torch.tensor([t for s in states for t in s], dtype=torch.float64).to(dtype)
    up = torch.nextafter(values, torch.ones_like(values) * 2)
    down = torch.nextafter(values, torch.zeros_like(values) - 1)
    extra = torch.tensor([0.0, 1.0, 0.5, 1e-30, 0.25, 0.75, 1 - 1e-7], dtype=dtype)
    return torch.cat([values, up, down, extra]).clamp(0, 1).unique()


def _confident(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    extremes = torch.tensor([0.0, 1.0, 1e-4, 1 - 1e-4, 0.01, 0.99], dtype=dtype)
    return extremes[torch.randint(len(extremes), shape, generator=gen)]


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, dict, int | None]:
    """A batch of small probability maps (each image its own kind), parameters and ``min_gray``."""
    params = draw(st.sampled_from(PARAMS))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    batch = draw(st.integers(1, 4))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    pool = _pool(params, dtype)
    images = []
    for _ in range(batch):
        kind = draw(st.sampled_from(["pool", "confident", "mostly confident", "uniform", "nan"]))
        shape = (1, height, width)
        if kind == "uniform":
            img = torch.rand(shape, generator=gen, dtype=dtype)
        else:
            img = pool[torch.randint(len(pool), shape, generator=gen)]
            if kind != "pool":
                keep = torch.rand(shape, generator=gen) < (0.1 if kind == "mostly confident" else 0.0)
                img = torch.where(keep, img, _confident(shape, gen, dtype))
            if kind == "nan":
                img = torch.where(torch.rand(shape, generator=gen) < 0.2, torch.nan, img)
        images.append(img)
    probs = torch.stack(images)
    min_gray = draw(st.one_of(st.none(), st.integers(0, height * width + 1)))
    return probs, params, min_gray


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_vectorised_equals_reference(case: tuple[torch.Tensor, dict, int | None]) -> None:
    probs, params, min_gray = case
    want = _reference_from_probs(probs, TrimapConfig(min_gray=min_gray, **params))
    got = _trimap_from_probs(probs, TrimapConfig(min_gray=min_gray, **params))
    assert got.dtype == torch.uint8
    assert torch.equal(got, want)
