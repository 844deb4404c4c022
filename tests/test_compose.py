"""Cutouts, 8-bit alpha, resizing and backgrounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ben_cli.compose import alpha_to_uint8, composite, cutout, resize_alpha, stretch_alpha


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
