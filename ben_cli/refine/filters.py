"""Local image statistics for the matting methods: box filters and per-pixel 3x3 solves. Pure, batched.

Box filters are separable ``avg_pool2d`` passes: every output is the plain sum
of its window in a fixed order, so a pixel's value does not depend on where
the image was cut (tiles with margins give the same numbers as the whole image),
and there is no running-sum cancellation as with cumulative sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of each (2r+1)x(2r+1) window centred on a pixel, clipped to the image.

    Args:
        x: (B, C, H, W) float.
        radius: r >= 0.

    Returns:
        (B, C, H, W), same dtype and device; near the borders the mean is over
        the pixels of the window that are inside the image.
    """
    if radius == 0:
        return x
    k = 2 * radius + 1
    x = F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)


def box_mean_padded(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum of each (2r+1)x(2r+1) window divided by (2r+1)**2, with zeros outside the image.

    (B, C, H, W) -> (B, C, H, W). The transpose of :func:`box_mean`'s window sum:
    ``box_mean_padded(f)[i] * (2r+1)**2`` is the sum of ``f[k]`` over the windows ``k`` that hold ``i``.
    """
    if radius == 0:
        return x
    k = 2 * radius + 1
    x = F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=True)
    return F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=True)


def window_counts(height: int, width: int, radius: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixels of each clipped window (= windows that hold each pixel), as (1, 1, H, W)."""
    def along(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return (torch.clamp(i + radius, max=n - 1) - torch.clamp(i - radius, min=0) + 1).to(dtype)

    if radius == 0:
        return torch.ones(1, 1, height, width, device=device, dtype=dtype)
    return (along(height).view(-1, 1) * along(width).view(1, -1)).view(1, 1, height, width)


def colour_covariance(image: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window means and covariances of a colour image.

    Args:
        image: (B, 3, H, W) float.

    Returns:
        ``mean`` (B, 3, H, W) and ``cov`` (B, 6, H, W), the entries
        (rr, rg, rb, gg, gb, bb) of each window's 3x3 covariance (biased, 1/n).
    """
    mean = box_mean(image, radius)
    r, g, b = image.unbind(1)
    products = torch.stack([r * r, r * g, r * b, g * g, g * b, b * b], 1)
    second = box_mean(products, radius)
    mr, mg, mb = mean.unbind(1)
    outer = torch.stack([mr * mr, mr * mg, mr * mb, mg * mg, mg * mb, mb * mb], 1)
    return mean, second - outer


def add_diagonal(sym: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor:
    """``sym + value * I`` for (B, 6, H, W) symmetric 3x3 matrices (rr, rg, rb, gg, gb, bb)."""
    out = sym.clone()
    for i in (0, 3, 5):
        out[:, i] += value if isinstance(value, float) else value[:, 0]
    return out


def inverse_sym3(sym: torch.Tensor) -> torch.Tensor:
    """Inverse of symmetric positive-definite 3x3 matrices, by the adjugate.

    Args:
        sym: (B, 6, H, W), entries (a, b, c, d, e, f) of [[a, b, c], [b, d, e], [c, e, f]].

    Returns:
        (B, 6, H, W), the inverse in the same layout.
    """
    a, b, c, d, e, f = sym.unbind(1)
    i_a = d * f - e * e
    i_b = c * e - b * f
    i_c = b * e - c * d
    i_d = a * f - c * c
    i_e = b * c - a * e
    i_f = a * d - b * b
    det = a * i_a + b * i_b + c * i_c
    return torch.stack([i_a, i_b, i_c, i_d, i_e, i_f], 1) / det.unsqueeze(1)


def sym3_matvec(sym: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, 6, H, W) symmetric 3x3 matrices times (B, 3, H, W) vectors, pixel by pixel -> (B, 3, H, W)."""
    a, b, c, d, e, f = sym.unbind(1)
    x, y, z = v.unbind(1)
    return torch.stack([a * x + b * y + c * z, b * x + d * y + e * z, c * x + e * y + f * z], 1)
