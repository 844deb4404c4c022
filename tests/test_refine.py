"""Refiners: the interface, the training-free methods, the script function, full-resolution tiles."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ben_cli.config import TrimapConfig
from ben_cli.errors import OptionError
from ben_cli.refine import (
    LAZY_REFINERS,
    REFINERS,
    NoRefiner,
    available_refiners,
    clamp_known,
    get_refiner,
    refine,
    register_refiner,
    trimap_from_prob,
)
from ben_cli.refine.filters import box_mean, inverse_sym3, window_counts
from ben_cli.refine.guided import GuidedFilterRefiner, guided_filter
from ben_cli.refine.matting import MattingLaplacian, solve_band
from ben_cli.refine.tiles import refine_full_resolution, refine_tiled
from ben_cli.trimap import confidence_trimap

TORCH_METHODS = ["matting", "matting-gf", "matting-cg"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _random_case(batch: int = 2, height: int = 37, width: int = 53, seed: int = 0):
    """Random image, a smooth probability with a soft edge, and its trimap."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=gen)
    field = F.interpolate(torch.randn(batch, 1, 4, 5, generator=gen), size=(height, width), mode="bicubic")
    prob = torch.sigmoid(3 * field)
    return image, prob, trimap_from_prob(prob)


def soft_edge(size: int = 96, shift: float = 3.0, blur: float = 4.0, seed: int = 0):
    """Two flat colours across a wavy soft edge: image (H, W, 3) uint8, true alpha, and a base
    probability whose edge is shifted by ``shift`` pixels and ``blur`` times wider."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    edge = size / 2 + 6 * np.sin(yy / size * 2 * np.pi)  # x position of the edge in each row
    alpha = 1 / (1 + np.exp(-(edge - xx) / 0.7))
    fg, bg = np.array([0.9, 0.3, 0.2]), np.array([0.1, 0.5, 0.8])
    rng = np.random.default_rng(seed)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg + rng.normal(0, 0.01, (size, size, 3))
    image_u8 = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    prob = 1 / (1 + np.exp(-(edge + shift - xx) / (0.7 * blur)))
    return image_u8, alpha.astype(np.float32), prob.astype(np.float32)


# --------------------------------------------------------------------------- the interface


@pytest.mark.parametrize("name", TORCH_METHODS)
def test_known_pixels_are_exact_and_shapes(name: str) -> None:
    image, prob, trimap = _random_case()
    assert (trimap == 0).any() and (trimap == 255).any() and (trimap == 128).any()
    refiner = get_refiner(name)
    assert refiner.needs_trimap and refiner.name == name
    alpha = refiner(image, prob, trimap)
    assert alpha.shape == prob.shape and alpha.dtype == torch.float32 and alpha.device == prob.device
    assert alpha[trimap == 255].eq(1).all() and alpha[trimap == 0].eq(0).all()
    gray = alpha[trimap == 128]
    assert gray.min() >= 0 and gray.max() <= 1
    assert not torch.equal(gray, prob[trimap == 128])  # the method did something in the band
    half = refiner(image.half(), prob.half(), trimap)  # float16 inputs are computed in float32
    assert half.dtype == torch.float32 and half[trimap == 255].eq(1).all()


def test_none_is_the_base_probability() -> None:
    image, prob, _ = _random_case()
    none = get_refiner("none")
    assert isinstance(none, NoRefiner) and not none.needs_trimap
    assert none(image, prob, None) is prob


@pytest.mark.parametrize("name", TORCH_METHODS)
def test_batched_equals_one_by_one(name: str) -> None:
    image, prob, trimap = _random_case(batch=3, seed=1)
    refiner = get_refiner(name)
    batched = refiner(image, prob, trimap)
    for i in range(3):
        single = refiner(image[i : i + 1], prob[i : i + 1], trimap[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single, atol=1e-6, rtol=0)


def test_clamp_known() -> None:
    trimap = torch.tensor([0, 128, 255, 128, 128], dtype=torch.uint8).view(1, 1, 1, 5)
    alpha = torch.tensor([0.7, 0.4, 0.2, -0.5, float("nan")], dtype=torch.float64).view(1, 1, 1, 5)
    out = clamp_known(alpha, trimap)
    assert out.dtype == torch.float32 and out.flatten().tolist() == pytest.approx([0.0, 0.4, 1.0, 0.0, 0.0])


def test_inputs_are_checked() -> None:
    image, prob, trimap = _random_case()
    refiner = get_refiner("matting")
    with pytest.raises(ValueError):
        refiner(image[:, :2], prob, trimap)
    with pytest.raises(ValueError):
        refiner(image, prob[:1], trimap)
    with pytest.raises(TypeError):
        refiner(image, prob, trimap.float())
    with pytest.raises(ValueError):
        refiner(image, prob, None)


def test_registry(monkeypatch, tmp_path) -> None:
    assert {"none", "matting", "matting-gf", "matting-cg", "matting-cf", "net"} <= set(available_refiners())
    assert get_refiner(" Matting ").name == "matting"
    assert get_refiner("matting-gf", radius=3).radius == 3
    with pytest.raises(OptionError, match="unknown"):
        get_refiner("magic")
    with pytest.raises(OptionError, match="weights"):
        get_refiner("matting", weights="x.safetensors")
    with pytest.raises(OptionError, match="option"):
        get_refiner("matting", window=3)
    with pytest.raises(OptionError, match="option"):
        get_refiner("matting", radius=0)
    # a lazily imported module registers itself on first request (the hook for "net")
    (tmp_path / "fake_refiner_mod.py").write_text(textwrap.dedent("""
        from ben_cli.refine import NoRefiner, register_refiner

        class Fake(NoRefiner):
            name = "fake"

        register_refiner("fake", lambda *, weights=None, device=None, **kw: Fake())
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(LAZY_REFINERS, "fake", "fake_refiner_mod")
    monkeypatch.delitem(REFINERS, "fake", raising=False)
    monkeypatch.delitem(sys.modules, "fake_refiner_mod", raising=False)
    assert get_refiner("fake").name == "fake"
    assert "fake_refiner_mod" in sys.modules
    monkeypatch.setitem(LAZY_REFINERS, "ghost", "no_such_module_xyz")
    with pytest.raises(OptionError, match="unavailable"):
        get_refiner("ghost")
    register_refiner("fake2", lambda *, weights=None, device=None, **kw: NoRefiner())
    try:
        assert isinstance(get_refiner("fake2"), NoRefiner)
    finally:
        REFINERS.pop("fake2")


def test_trimap_from_prob_is_the_trimap_of_the_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 40, 30, generator=gen) * 4
    assert torch.equal(trimap_from_prob(torch.sigmoid(logits)), confidence_trimap(logits))
    config = TrimapConfig(min_gray=500)
    assert torch.equal(trimap_from_prob(torch.sigmoid(logits), config), confidence_trimap(logits, config))


# --------------------------------------------------------------------------- the script function


@pytest.mark.parametrize("method", ["matting", "matting-cg"])
def test_refine_improves_a_soft_edge(method: str) -> None:
    image, alpha, prob = soft_edge()
    out = refine(image, prob, method=method)
    assert out.shape == prob.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    trimap = trimap_from_prob(torch.from_numpy(prob)[None, None])[0, 0].numpy()
    assert np.all(out[trimap == 255] == 1) and np.all(out[trimap == 0] == 0)
    before, after = np.abs(prob - alpha).sum(), np.abs(out - alpha).sum()
    assert after < 0.6 * before, (before, after)
    assert np.array_equal(refine(image, prob, method="none"), prob)


def test_refine_checks_its_arguments() -> None:
    image, _, prob = soft_edge(size=32)
    with pytest.raises(ValueError):
        refine(image[..., :2], prob)
    with pytest.raises(ValueError):
        refine(image, prob[:-1])
    with pytest.raises(ValueError):
        refine(image.astype(np.float32), prob)


# --------------------------------------------------------------------------- the methods


def _dense_laplacian(image: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Levin et al.'s matting Laplacian built entry by entry from its definition (windows clipped)."""
    _, height, width = image.shape
    n = height * width
    lap = torch.zeros(n, n, dtype=torch.float64)
    colours = image.reshape(3, -1).T.double()
    for cy in range(height):
        for cx in range(width):
            ys = range(max(0, cy - radius), min(height, cy + radius + 1))
            xs = range(max(0, cx - radius), min(width, cx + radius + 1))
            idx = torch.tensor([y * width + x for y in ys for x in xs])
            c = colours[idx]
            mu = c.mean(0)
            cov = (c - mu).T @ (c - mu) / len(idx)
            inv = torch.linalg.inv(cov + eps / len(idx) * torch.eye(3, dtype=torch.float64))
            d = c - mu
            block = torch.eye(len(idx), dtype=torch.float64) - (1 + d @ inv @ d.T) / len(idx)
            lap[idx.unsqueeze(1), idx.unsqueeze(0)] += block
    return lap


def test_matrix_free_laplacian_is_levins() -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 6, 7, generator=gen, dtype=torch.float64)
    x = torch.rand(1, 1, 6, 7, generator=gen, dtype=torch.float64)
    lap = _dense_laplacian(image[0], 1, 1e-3)
    op = MattingLaplacian.of(image, 1, 1e-3)
    torch.testing.assert_close(op(x).flatten() * 9, lap @ x.flatten(), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(lap, lap.T)
    assert torch.linalg.eigvalsh(lap).min() > -1e-9  # positive semi-definite


def test_conjugate_gradients_reach_the_direct_solution() -> None:
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 8, 9, generator=gen, dtype=torch.float64)
    prob = torch.rand(1, 1, 8, 9, generator=gen, dtype=torch.float64)
    band = torch.zeros(1, 1, 8, 9, dtype=torch.bool)
    band[..., 2:6, 2:7] = True
    known = (torch.rand(1, 1, 8, 9, generator=gen) > 0.5).double()
    lam, eps = 0.05, 1e-3
    a = _dense_laplacian(image[0], 1, eps) / 9 + lam * torch.eye(72, dtype=torch.float64)
    u, k = band.flatten(), ~band.flatten()
    rhs = lam * prob.flatten()[u] - a[u][:, k] @ known.flatten()[k]
    want = torch.linalg.solve(a[u][:, u], rhs)
    got = solve_band(MattingLaplacian.of(image, 1, eps), prob, known, band, lam, iterations=60)
    torch.testing.assert_close(got.flatten()[u], want, atol=1e-8, rtol=0)
    assert torch.equal(got.flatten()[k], known.flatten()[k])


def test_box_mean_and_inverse() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    out = box_mean(x, 2)
    assert torch.isclose(out[0, 1, 4, 5], x[0, 1, 2:7, 3:8].mean())
    assert torch.isclose(out[1, 2, 0, 0], x[1, 2, :3, :3].mean())  # clipped at the corner
    assert window_counts(9, 11, 2)[0, 0, 0, 0] == 9 and window_counts(9, 11, 2)[0, 0, 4, 5] == 25
    m = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64)
    spd = m @ m.transpose(1, 2) + 0.1 * torch.eye(3, dtype=torch.float64)
    packed = spd[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]].T.reshape(1, 6, 2, 2)
    inv = inverse_sym3(packed).reshape(6, 4).T
    want = torch.linalg.inv(spd)[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    torch.testing.assert_close(inv, want)


def test_guided_filter_limits() -> None:
    gen = torch.Generator().manual_seed(0)
    src = torch.rand(1, 1, 20, 24, generator=gen, dtype=torch.float64)
    flat = torch.full((1, 3, 20, 24), 0.5, dtype=torch.float64)  # no colour information: a double box blur
    torch.testing.assert_close(guided_filter(flat, src, 2, 1e-3), box_mean(box_mean(src, 2), 2))
    # the map is a channel of its guide: exactly linear in the colour, so (nearly) reproduced
    guide = torch.cat([src, torch.rand(1, 2, 20, 24, generator=gen, dtype=torch.float64)], 1)
    assert (guided_filter(guide, src, 2, 1e-7) - src).abs().max() < 1e-4
    assert (guided_filter(guide, src, 2, 1e-1) - src).abs().max() > 1e-2  # a strong ridge smooths


def test_guided_refiner_scales_with_the_map() -> None:
    refiner = GuidedFilterRefiner(radius=16, subsample=4)
    big = refiner.scaled(3.0)
    assert (big.radius, big.subsample, big.eps) == (48, 12, refiner.eps)
    assert refiner.scaled(1.0) is refiner and big.halo > refiner.halo


# --------------------------------------------------------------------------- full resolution, tiles


class _Spy:
    """A local refiner that records the size of every call."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []
        self.name, self.needs_trimap = inner.name, True
        self.halo, self.alignment = inner.halo, inner.alignment

    def __call__(self, image, prob, trimap):
        self.calls.append(tuple(image.shape[2:]))
        return self.inner(image, prob, trimap)


@pytest.mark.parametrize(("options", "tol"), [({}, 1e-6), ({"radius": 5, "subsample": 1}, 1e-6),
                                              ({"radius": 7, "subsample": 3}, 1e-5)])
def test_tiled_equals_untiled(options: dict, tol: float) -> None:
    image, prob, trimap = _random_case(batch=1, height=203, width=171, seed=3)
    refiner = get_refiner("matting", **options)
    whole = refiner(image, prob, trimap)
    spy = _Spy(refiner)
    tiled = refine_tiled((image * 255).round().to(torch.uint8), prob, trimap, spy, tile=48)
    whole_u8 = refiner((image * 255).round() / 255, prob, trimap)
    assert (tiled - whole_u8).abs().max() <= tol
    assert (whole - whole_u8).abs().max() < 0.05  # (the uint8 image is the one that is tiled)
    # one tile at a time, each at most its core plus the halo on both sides, only tiles with gray pixels
    cores = [(y, x) for y in range(0, 203, 48 // refiner.alignment * refiner.alignment)
             for x in range(0, 171, 48 // refiner.alignment * refiner.alignment)]
    assert 0 < len(spy.calls) <= len(cores)
    limit = 48 + 2 * refiner.halo + refiner.alignment
    assert all(h <= limit and w <= limit for h, w in spy.calls)


def test_tiles_without_gray_are_skipped() -> None:
    image = torch.rand(1, 3, 64, 64)
    prob = torch.zeros(1, 1, 64, 64)
    prob[..., :10, :10] = 0.5  # one gray patch in the first tile
    trimap = trimap_from_prob(prob, TrimapConfig(min_gray=0))
    spy = _Spy(get_refiner("matting", radius=2, subsample=1))
    alpha = refine_tiled(image, prob, trimap, spy, tile=32)
    assert len(spy.calls) == 1
    assert alpha[..., 32:, :].eq(0).all()


def test_full_resolution_sharpens_an_upsampled_edge() -> None:
    image, alpha, _ = soft_edge(size=192, seed=2)
    low = F.interpolate(torch.from_numpy(alpha)[None, None], size=(48, 48), mode="area")
    low = torch.sigmoid((torch.logit(low.clamp(1e-4, 1 - 1e-4)) + 0.5) / 2)  # a soft, shifted base
    upsampled = F.interpolate(low, size=(192, 192), mode="bilinear", align_corners=False)[0, 0].numpy()
    out = refine_full_resolution(torch.from_numpy(image), low, get_refiner("matting"), tile=64)
    assert out.shape == (1, 1, 192, 192) and out.dtype == torch.float32
    full_trimap = trimap_from_prob(torch.from_numpy(upsampled)[None, None])
    assert out[full_trimap == 255].eq(1).all() and out[full_trimap == 0].eq(0).all()
    err_up = np.abs(upsampled - alpha).sum()
    err_out = np.abs(out[0, 0].numpy() - alpha).sum()
    assert err_out < 0.6 * err_up, (err_up, err_out)
    capped = refine_full_resolution(torch.from_numpy(image), low, get_refiner("matting"), max_side=96)
    assert capped.shape == (1, 1, 192, 192)
    assert np.abs(capped[0, 0].numpy() - alpha).sum() < err_up
    chw = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255  # float (1, 3, H, W) accepted too
    assert (refine_full_resolution(chw, low, get_refiner("matting"), tile=64) - out).abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    image, prob, trimap = _random_case()
    for name in TORCH_METHODS:
        refiner = get_refiner(name)
        cpu = refiner(image, prob, trimap)
        gpu = refiner(image.cuda(), prob.cuda(), trimap.cuda())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_pymatting_closed_form() -> None:
    """pymatting (optional; its first import compiles for ~30 s): the same Laplacian, and matting-cf works."""
    pymatting = pytest.importorskip("pymatting")
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 12, 14, generator=gen, dtype=torch.float64)
    x = torch.rand(1, 1, 12, 14, generator=gen, dtype=torch.float64)
    lap = pymatting.cf_laplacian(image[0].permute(1, 2, 0).numpy(), epsilon=1e-5, radius=1)
    ours = MattingLaplacian.of(image, 1, 1e-5)(x)[0, 0].numpy() * 9
    theirs = (lap @ x.flatten().numpy()).reshape(12, 14)
    np.testing.assert_allclose(ours[2:-2, 2:-2], theirs[2:-2, 2:-2], atol=1e-9)  # same windows inside
    image_u8, alpha, prob = soft_edge(size=64)
    out = refine(image_u8, prob, method="matting-cf")
    trimap = trimap_from_prob(torch.from_numpy(prob)[None, None])[0, 0].numpy()
    assert np.all(out[trimap == 255] == 1) and np.all(out[trimap == 0] == 0)
    assert np.abs(out - alpha).sum() < 0.6 * np.abs(prob - alpha).sum()


def test_ben_cli_refine_is_the_function() -> None:
    """``ben_cli.refine`` is the plain function :func:`refine`, also after the package is imported by name."""
    import importlib
    import inspect

    import ben_cli

    package = importlib.import_module("ben_cli.refine")
    assert ben_cli.refine is refine is package.refine and inspect.isfunction(ben_cli.refine)
    image, _, prob = soft_edge(size=32)
    assert np.array_equal(ben_cli.refine(image, prob), refine(image, prob))
    assert np.array_equal(ben_cli.refine(image, prob, "none"), prob)
    assert list(inspect.signature(ben_cli.refine).parameters)[:4] == ["image", "prob", "method", "weights"]
