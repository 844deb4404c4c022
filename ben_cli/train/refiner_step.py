"""One training step of the refiner: its forward pass and its loss on the gray band.

The forward pass: the batch's cached base probability -> confidence trimap (paper
Algorithms 1-2) -> refiner -> alpha (not clamped in the band; the trimap's 0/1 outside it,
as the ``net`` refine stage imposes them).

**The loss**, on the gray band of the trimap only (the known pixels are the
trimap's 0/1, not the refiner's), per image then averaged over the batch:

``L = l1 * mean_band |a - g| + lap * sum_k mean_band_k |Lap_k(a - g)|``

with ``Lap_k`` the band-pass levels k = 0..4 of a Laplacian pyramid (5x5
binomial kernel) and ``band_k`` the band max-pooled to level k. Why this pair:
L1 fits the value of every band pixel but tolerates blur (a smeared hair strand
costs little area, so little L1); the Laplacian pyramid compares the error's
detail at every scale, from single-pixel strands (level 0) to wide soft
transitions (level 4), which is what the gradient and connectivity errors of
matting benchmarks punish. It is linear, so it is taken of the error directly,
and it is the detail term of the matting networks BEN cites (ViTMatte trains
with L1 + Laplacian; FBA Matting too). A Sobel gradient loss sees only the
finest scale and is noisier. The alpha is compared unclamped (the network adds
a linear correction to the probability), so no gradient ever vanishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ben_cli.train.loss import LossOutput
from ben_cli.train.refiner_config import RefinerLossConfig


def _binomial(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur ([1, 4, 6, 4, 1] / 16 per axis), reflected borders; (B, 1, H, W) -> same."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16
    small = min(x.shape[-2:]) < 3  # too small to reflect by 2: replicate
    x = F.pad(x, (2, 2, 2, 2), mode="replicate" if small else "reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5))
    return F.conv2d(x, k.view(1, 1, 5, 1))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The ``levels`` band-pass levels of ``x`` (B, 1, H, W): ``G_k - up(G_{k+1})`` with
    ``G_{k+1} = blur(G_k)[::2, ::2]``, ``up`` bilinear; level k is about H / 2^k high. The low-pass
    residual is left out (the L1 term holds the value)."""
    out, g = [], x
    for _ in range(levels):
        down = _binomial(g)[..., ::2, ::2]
        out.append(g - F.interpolate(down, size=g.shape[-2:], mode="bilinear", align_corners=False))
        g = down
    return out


def band_mean(x: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Per image mean of ``|x|`` over the ``band`` pixels (0 for an empty band); (B, 1, H, W) -> (B,)."""
    n = band.sum(dim=(1, 2, 3))
    return (x.abs() * band).sum(dim=(1, 2, 3)) / n.clamp_min(1.0)


class RefinerOutputs(NamedTuple):
    """The refiner's alpha, not clamped (B, 1, S, S), and the trimap it was given (B, 1, S, S) uint8."""

    alpha: torch.Tensor
    trimap: torch.Tensor


def known_alpha(alpha: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """The refiner's alpha in the gray band (not clamped: the loss keeps its gradient everywhere), the
    trimap's 0/1 elsewhere; float32, differentiable in the band."""
    return torch.where(trimap == 128, alpha.float(), trimap.float() / 255.0)


class RefinerLoss:
    """``loss(outputs, gt)``: :class:`RefinerOutputs` and the ground truth (B, 1, S, S) in [0, 1] ->
    :class:`LossOutput` with ``total = l1 * L1 + lap * Lap`` and ``parts = {"l1", "lap"}`` (unweighted)."""

    def __init__(self, cfg: RefinerLossConfig | None = None) -> None:
        self.cfg = cfg or RefinerLossConfig()

    def __call__(self, outputs: RefinerOutputs, gt: torch.Tensor) -> LossOutput:
        alpha = known_alpha(outputs.alpha, outputs.trimap)
        band = (outputs.trimap == 128).float()
        err = alpha - gt.float()
        l1 = band_mean(err, band).mean()
        lap = err.new_zeros(())
        mask = band
        for k, level in enumerate(laplacian_pyramid(err, self.cfg.lap_levels)):
            if k:
                mask = F.max_pool2d(mask, 2, ceil_mode=True)[..., : level.shape[-2], : level.shape[-1]]
            lap = lap + band_mean(level, mask).mean()
        total = self.cfg.l1 * l1 + self.cfg.lap * lap
        return LossOutput(total, {"l1": l1, "lap": lap}, [])


def refiner_forward(net: nn.Module, batch: Mapping[str, torch.Tensor]) -> RefinerOutputs:
    """Trimap of the batch's probability, then the refiner: the training step's forward pass."""
    from ben_cli.refine import trimap_from_prob

    prob = batch["prob"].float()
    trimap = trimap_from_prob(prob)
    return RefinerOutputs(net(batch["image"].float() / 255.0, prob, trimap), trimap)
