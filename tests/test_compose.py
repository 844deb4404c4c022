"""Cutouts, 8-bit alpha, resizing and backgrounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ben_cli.compose import (
    alpha_to_uint8,
    box_blur,
    composite,
    cover_resize,
    cutout,
    decontaminate,
    estimate_foreground,
    resize_alpha,
    stretch_alpha,
    threshold_alpha,
)
from ben_cli.errors import OptionError, UsageError
from ben_cli.options import parse_colour


def _image(batch: int = 2, height: int = 5, width: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), generator=gen, dtype=torch.uint8)


def test_cutout_keeps_colours_at_soft_edges() -> None:
    rgb = _image()
    alpha = torch.tensor([0, 1, 64, 128, 200, 254, 255], dtype=torch.uint8).expand(2, 1, 5, 7).contiguous()
    rgba = cutout(rgb, alpha)
    assert rgba.shape == (2, 4, 5, 7) and rgba.dtype == torch.uint8
    assert torch.equal(rgba[:, 3:], alpha)
    assert torch.equal(rgba[:, :3, :, 1:], rgb[:, :, :, 1:])  # not premultiplied, not darkened
    assert rgba[:, :3, :, 0].eq(0).all()  # fully transparent: colour zeroed


def test_cutout_checks_inputs() -> None:
    rgb = _image()
    with pytest.raises(ValueError):
        cutout(rgb, torch.zeros(2, 1, 5, 6, dtype=torch.uint8))
    with pytest.raises(ValueError):
        cutout(rgb, torch.zeros(1, 1, 5, 7, dtype=torch.uint8))
    with pytest.raises(TypeError):
        cutout(rgb, torch.zeros(2, 1, 5, 7))
    with pytest.raises(ValueError):
        cutout(rgb[:, :2], torch.zeros(2, 1, 5, 7, dtype=torch.uint8))


def test_alpha_to_uint8_rounding() -> None:
    p = torch.tensor([0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255, 0.999 / 255, 0.5, 1.0, -0.2, 1.3, float("nan")])
    assert alpha_to_uint8(p).tolist() == [0, 0, 2, 2, 1, 128, 255, 0, 255, 0]  # halves to even
    assert alpha_to_uint8(p, rounding="truncate").tolist() == [0, 0, 1, 2, 0, 127, 255, 0, 255, 0]
    # truncation is the official (x * 255).astype(np.uint8)
    x = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    official = (x.numpy() * 255).astype(np.uint8)
    assert alpha_to_uint8(x, rounding="truncate").numpy().tolist() == official.tolist()
    half = alpha_to_uint8(torch.tensor([0.5, 1.0], dtype=torch.float16))
    assert half.dtype == torch.uint8 and half.tolist() == [128, 255]
    with pytest.raises(ValueError):
        alpha_to_uint8(p, rounding="floor")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        alpha_to_uint8(torch.zeros(3, dtype=torch.uint8))


@pytest.mark.parametrize("size", [(1024, 1024), (300, 700), (1500, 1100), (1, 1)])
def test_resize_alpha_range_and_size(size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    prob = torch.rand(2, 1, 64, 48, generator=gen)
    prob[:, :, :8] = 1.0
    prob[:, :, -8:] = 0.0
    out = resize_alpha(prob, size)
    assert out.shape == (2, 1, *size) and out.dtype == prob.dtype
    assert out.min() >= 0 and out.max() <= 1


def test_resize_alpha_is_the_official_interpolation() -> None:
    """Same call as BEN2's postprocess_image: bilinear, align_corners=False, no antialias."""
    gen = torch.Generator().manual_seed(0)
    prob = torch.rand(1, 1, 1024, 1024, generator=gen)
    official = F.interpolate(prob, size=[480, 640], mode="bilinear")
    assert torch.equal(resize_alpha(prob, (480, 640)), official.clamp(0, 1))
    assert torch.equal(resize_alpha(prob, (1024, 1024)), prob)
    smooth = resize_alpha(prob, (64, 64), antialias=True)
    assert smooth.std() < resize_alpha(prob, (64, 64)).std()  # averages instead of sampling


def test_resize_alpha_dtypes_and_per_image_sizes() -> None:
    prob = torch.rand(3, 1, 32, 32)
    sizes = [(10, 20), (50, 40), (32, 32)]
    outs = [resize_alpha(prob[i : i + 1], s) for i, s in enumerate(sizes)]
    assert [tuple(o.shape) for o in outs] == [(1, 1, *s) for s in sizes]
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        out = resize_alpha(prob.to(dtype), (40, 40))
        assert out.dtype == dtype and out.shape == (3, 1, 40, 40)
    with pytest.raises(ValueError):
        resize_alpha(prob[:, 0], (10, 10))
    with pytest.raises(ValueError):
        resize_alpha(prob, (0, 10))


def test_stretch_alpha() -> None:
    prob = torch.stack([torch.linspace(0.2, 0.6, 16), torch.full((16,), 0.3)]).view(2, 1, 4, 4)
    out = stretch_alpha(prob)
    assert out[0].min() == 0 and out[0].max() == 1
    assert torch.equal(out[1], prob[1])  # constant map unchanged
    official = (prob[0] - prob[0].min()) / (prob[0].max() - prob[0].min())
    assert torch.equal(out[0], official)


def test_composite() -> None:
    rgb = _image()
    alpha = torch.tensor([0, 1, 64, 128, 200, 254, 255], dtype=torch.uint8).expand(2, 1, 5, 7).contiguous()
    out = composite(rgb, alpha, (10, 20, 30))
    assert out.shape == rgb.shape and out.dtype == torch.uint8
    assert out[:, :, :, 0].tolist() == [[[10] * 5, [20] * 5, [30] * 5]] * 2
    assert torch.equal(out[:, :, :, -1], rgb[:, :, :, -1])
    a = alpha.double() / 255
    want = (rgb.double() * a + torch.tensor([10.0, 20, 30]).view(1, 3, 1, 1) * (1 - a)).round()
    assert torch.equal(out, want.to(torch.uint8))
    white = composite(rgb, alpha)
    assert white[:, :, :, 0].eq(255).all()
    picture = composite(rgb, alpha, _image(seed=1))
    assert torch.equal(picture[:, :, :, 0], _image(seed=1)[:, :, :, 0])
    with pytest.raises(ValueError):
        composite(rgb, alpha, (0, 0, 300))


def _edge_composite(size: int = 64):
    """A textured foreground F over a different textured background B across a soft vertical edge.

    Returns image I = a F + (1 - a) B, F and a as (1, C, H, W) float64 in [0, 1].
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(size, dtype=torch.float64)
    alpha = torch.sigmoid((size / 2 - x) / 3).view(1, 1, 1, size).expand(1, 1, size, size)
    yy = torch.arange(size, dtype=torch.float64).view(size, 1)
    fg = torch.stack([0.8 + 0.1 * torch.sin(yy / 5).expand(size, size), torch.full((size, size), 0.6),
                      torch.full((size, size), 0.2)])[None]
    bg = torch.stack([torch.full((size, size), 0.1), 0.3 + 0.2 * torch.rand(size, size, generator=gen,
                                                                          dtype=torch.float64),
                      torch.full((size, size), 0.9)])[None]
    return alpha * fg + (1 - alpha) * bg, fg, alpha


def test_estimated_foreground_is_closer_to_the_true_colours() -> None:
    image, fg, alpha = _edge_composite()
    soft = ((alpha > 0.02) & (alpha < 0.98)).expand_as(image)
    est = estimate_foreground(image, alpha)
    assert est.shape == image.shape and est.dtype == torch.float32
    raw_err = (image - fg)[soft].abs().mean()
    est_err = (est.double() - fg)[soft].abs().mean()
    assert est_err < 0.5 * raw_err, (raw_err, est_err)
    # weighted by alpha, as the error shows in a new composite
    assert ((est.double() - fg).abs() * alpha)[soft].sum() < 0.5 * ((image - fg).abs() * alpha)[soft].sum()
    batched = estimate_foreground(image.repeat(2, 1, 1, 1), alpha.repeat(2, 1, 1, 1))
    assert torch.equal(batched[1:], est)
    with pytest.raises(ValueError):
        estimate_foreground(image, alpha[..., :-1])


def test_decontaminate_changes_only_semi_transparent_pixels() -> None:
    image, fg, alpha = _edge_composite()
    rgb = (image * 255).round().to(torch.uint8)
    a8 = (alpha * 255).round().to(torch.uint8)
    out = decontaminate(rgb, a8)
    assert out.dtype == torch.uint8 and out.shape == rgb.shape
    hard = ((a8 == 0) | (a8 == 255)).expand_as(rgb)
    assert hard.any() and torch.equal(out[hard], rgb[hard])
    soft = ~hard
    fg8 = (fg * 255).round()
    assert (out[soft].double() - fg8[soft]).abs().mean() < 0.5 * (rgb[soft].double() - fg8[soft]).abs().mean()
    with pytest.raises(TypeError):
        decontaminate(rgb.float(), a8)


def test_decontaminate_by_tiles_is_the_whole_image_estimate() -> None:
    gen = torch.Generator().manual_seed(3)
    rgb = torch.randint(0, 256, (2, 3, 150, 170), generator=gen, dtype=torch.uint8)
    field = F.interpolate(torch.randn(2, 1, 5, 6, generator=gen), size=(150, 170), mode="bicubic")
    alpha = (torch.sigmoid(4 * field) * 255).round().to(torch.uint8)
    alpha[1, :, :, 100:] = 255  # a second image with a different soft region
    whole = estimate_foreground(rgb.float() / 255, alpha.float() / 255, radii=(40, 4))
    want = torch.where((alpha > 0) & (alpha < 255), (whole * 255).round().to(torch.uint8), rgb)
    for tile in (32, 1000):
        got = decontaminate(rgb, alpha, radii=(40, 4), tile=tile)
        assert (got.int() - want.int()).abs().max() <= 1


def test_box_blur_is_a_clipped_window_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 7, 9, generator=gen, dtype=torch.float64)
    out = box_blur(x, 2)
    assert torch.isclose(out[0, 1, 3, 4], x[0, 1, 1:6, 2:7].mean())
    assert torch.isclose(out[0, 0, 0, 8], x[0, 0, 0:3, 6:9].mean())
    assert torch.allclose(box_blur(x, 50), x.mean(dim=(2, 3), keepdim=True).expand_as(x))
    assert torch.equal(box_blur(x, 0), x)


@pytest.mark.parametrize(("text", "rgb"), [("white", (255, 255, 255)), ("#00ff00", (0, 255, 0)),
                                           ("#0F0", (0, 255, 0)), ("0,255,0", (0, 255, 0)),
                                           (" 12, 34 ,56 ", (12, 34, 56)), ("Black", (0, 0, 0))])
def test_parse_colour(text: str, rgb: tuple[int, int, int]) -> None:
    assert parse_colour(text) == rgb


@pytest.mark.parametrize("text", ["", "nocolour", "#12345", "0,255", "0,256,0", "-1,0,0", "#00ff0080", "1.5,2,3"])
def test_parse_colour_rejects(text: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_colour(text)
    assert isinstance(info.value, UsageError) and info.value.param == "background"


def test_cover_resize() -> None:
    bg = torch.arange(2 * 4, dtype=torch.uint8).view(1, 2, 4).expand(3, 2, 4).contiguous()
    out = cover_resize(bg, (4, 4))  # 2x4 -> scaled by 2 to 4x8, centre 4x4 kept
    assert out.shape == (3, 4, 4) and out.dtype == torch.uint8
    big = F.interpolate(bg[None].float(), size=(4, 8), mode="bilinear", align_corners=False)[0].round()
    assert torch.equal(out, big[:, :, 2:6].to(torch.uint8))
    assert torch.equal(cover_resize(bg, (2, 4)), bg)  # already the size
    wide = cover_resize(_image(1, 30, 40)[0], (10, 50))  # shrink and crop
    assert wide.shape == (3, 10, 50)
    tall = cover_resize(_image(1, 30, 40)[0], (90, 20))
    assert tall.shape == (3, 90, 20)
    with pytest.raises(ValueError):
        cover_resize(bg[:2], (4, 4))


def test_threshold_alpha() -> None:
    alpha = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    assert threshold_alpha(alpha, 0.5).tolist() == [0, 0, 0, 255, 255, 255]
    assert threshold_alpha(alpha, 0).tolist() == [0, 255, 255, 255, 255, 255]
    assert threshold_alpha(alpha, 1).tolist() == [0] * 6
    assert set(threshold_alpha(_image(), 0.3).unique().tolist()) <= {0, 255}
    with pytest.raises(OptionError):
        threshold_alpha(alpha, 1.5)
    with pytest.raises(TypeError):
        threshold_alpha(alpha.float(), 0.5)
