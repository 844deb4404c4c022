"""The loss of BEN Base (paper section 3.2, Eq. 1-5).

``StructureLoss(p, y) = 4 * WBCE(p, y) + 1 * WIoU(sigmoid(p), y) + 2 * SSIM_loss(sigmoid(p), y)``

- Pixel weight (MVANet / BiRefNet): ``w = 1 + 5 * |avgpool31(y) - y|`` (stride 1,
  zero padding 15 counted in the average), large near mask edges.
- ``WBCE``: per image ``sum(w * bce_with_logits(p, y)) / sum(w)``.
- ``WIoU``: per image ``1 - (I + 1) / (U - I + 1)`` with ``I = sum(w * q * y)``,
  ``U = sum(w * (q + y))``, ``q = sigmoid(p)``.
- ``SSIM_loss``: BiRefNet's ``1 - (1 + SSIM) / 2 = (1 - SSIM) / 2``, SSIM on an 11x11
  Gaussian window (sigma 1.5), zero padding, ``C1 = 0.01^2``, ``C2 = 0.03^2``, mean
  over the map.
- Each is a mean over the batch.

``L = L_local + 0.3 L_global + 0.3 L_token`` (Eq. 5) sums StructureLoss over the six
local outputs (five side outputs coarse to fine, then the final map), the five
global-view outputs and the four token maps (Eq. 2-4), each against the ground
truth resized (nearest, as MVANet) to that output's size. At an input of side S
the scales are, as in MVANet's ``train.py``: side S/32, S/16, S/8, S/4, S/4, S;
global S/64, S/32, S/16, S/8, S/8; tokens S/16, S/8, S/4, S/4.

Token maps: MVANet applies a sigmoid to its token maps inside the model and then
passes them to this with-logits loss, so the loss sees ``sigmoid(sigmoid(t))``,
which lives in [0.5, 0.73]: the background target 0 is unreachable, the BCE term
never falls below log(1 + e^0.5) ~ 0.97 there, and every gradient is damped by a
further factor of at most 1/4. Our model returns the token maps as logits (the
sigmoid that gates the local features is applied inside MCRM, on the same
logits), so by default the loss treats them as logits, as Eq. 4 is written.
``LossConfig.token_sigmoid_quirk=True`` reproduces MVANet's double sigmoid.

Everything is computed in float32, whatever autocast dtype produced the logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ben_cli.train.config import LossConfig

EDGE_POOL = 31
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2

N_LOCAL, N_GLOBAL, N_TOKEN = 6, 5, 4
SCALES: dict[str, tuple[float, ...]] = {
    "local": (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 4, 1.0),
    "global": (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 8),
    "token": (1 / 16, 1 / 8, 1 / 4, 1 / 4),
}
"""Output side / input side of each term, as in MVANet's ``train.py``."""


def pixel_weight(y: torch.Tensor) -> torch.Tensor:
    """Edge-aware weight ``1 + 5 * |avgpool31(y) - y|``; y: (B, 1, H, W) in [0, 1] -> same shape."""
    pad = EDGE_POOL // 2
    return 1.0 + 5.0 * (F.avg_pool2d(y, EDGE_POOL, stride=1, padding=pad) - y).abs()


def weighted_bce(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted BCE per image: logits, y (B, 1, H, W), y in [0, 1] -> (B,).

    ``weight`` defaults to :func:`pixel_weight` of ``y``.
    """
    w = pixel_weight(y) if weight is None else weight
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (w * bce).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))


def weighted_iou(prob: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted soft IoU loss per image: prob, y (B, 1, H, W) in [0, 1] -> (B,) in [0, 1)."""
    w = pixel_weight(y) if weight is None else weight
    inter = (w * prob * y).sum(dim=(1, 2, 3))
    union = (w * (prob + y)).sum(dim=(1, 2, 3))
    return 1.0 - (inter + 1.0) / (union - inter + 1.0)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 2-D Gaussian window, float32 (1, 1, size, size), the outer product of the 1-D one."""
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).float()[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM per image: x, y (B, 1, H, W) in [0, 1] -> (B,) in [-1, 1].

    Local statistics by convolution with the Gaussian ``window`` (zero padding,
    so the map has the input's size), constants ``C1 = 0.01^2``, ``C2 = 0.03^2``.
    """
    win = (gaussian_window() if window is None else window).to(device=x.device, dtype=x.dtype)
    pad = win.shape[-1] // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, padding=pad)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (num / den).mean(dim=(1, 2, 3))


def ssim_loss(prob: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BiRefNet's SSIM loss ``(1 - SSIM) / 2`` per image: (B, 1, H, W) -> (B,) in [0, 1]."""
    return (1.0 - ssim(prob, y)) / 2.0


def structure_loss(logits: torch.Tensor, y: torch.Tensor, cfg: LossConfig | None = None) -> torch.Tensor:
    """Eq. 1: ``w_bce WBCE(p, y) + w_iou WIoU(s, y) + w_ssim SSIM_loss(s, y)``, s = sigmoid(p).

    logits, y: (B, 1, H, W) (y in [0, 1], same size) -> scalar, the mean over the batch.
    """
    cfg = cfg or LossConfig()
    if logits.shape != y.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(y.shape)} differ in shape")
    p, y = logits.float(), y.float()
    w = pixel_weight(y)
    prob = torch.sigmoid(p)
    per_image = cfg.bce * weighted_bce(p, y, w) + cfg.iou * weighted_iou(prob, y, w)
    if cfg.ssim:
        per_image = per_image + cfg.ssim * ssim_loss(prob, y)
    return per_image.mean()


def resize_target(y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Ground truth (B, 1, H, W) -> (B, 1, h, w) by nearest-neighbour sampling (as MVANet)."""
    size = (int(size[0]), int(size[1]))
    if tuple(y.shape[-2:]) == size:
        return y
    return F.interpolate(y, size=size, mode="nearest")


class LossTerm(NamedTuple):
    """One StructureLoss term: group ("local", "global", "token"), 1-based index, output size, value."""

    group: str
    index: int
    size: tuple[int, int]
    value: torch.Tensor


class LossOutput(NamedTuple):
    """What a training loss returns: the scalar to minimise and named parts for the log."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]
    terms: list[LossTerm]


class BenLoss:
    """Eq. 2-5 on :class:`~ben_cli.models.ben.BenTrainOutputs`.

    ``loss(outputs, y)``: y (B, 1, H, W) float in [0, 1] at the input's size.
    Returns :class:`LossOutput` with ``total = local + 0.3 global + 0.3 token`` and
    ``parts = {"local", "global", "token"}`` (the unweighted sums of Eq. 2-4).
    """

    def __init__(self, cfg: LossConfig | None = None) -> None:
        self.cfg = cfg or LossConfig()

    def __call__(self, outputs, y: torch.Tensor) -> LossOutput:
        side, glob, tokens = list(outputs.side), list(outputs.glob), list(outputs.tokens)
        for name, maps, n in (("side", side, N_LOCAL), ("global", glob, N_GLOBAL), ("token", tokens, N_TOKEN)):
            if len(maps) != n:
                raise ValueError(f"expected {n} {name} outputs, got {len(maps)} (is the model in training mode?)")
        if self.cfg.token_sigmoid_quirk:
            tokens = [torch.sigmoid(t.float()) for t in tokens]
        y = y.float()
        terms: list[LossTerm] = []
        sums: dict[str, torch.Tensor] = {}
        for group, maps in (("local", side), ("global", glob), ("token", tokens)):
            for i, p in enumerate(maps, start=1):
                size = (int(p.shape[-2]), int(p.shape[-1]))
                value = structure_loss(p, resize_target(y, size), self.cfg)
                terms.append(LossTerm(group, i, size, value))
                sums[group] = value if group not in sums else sums[group] + value
        total = self.cfg.local * sums["local"] + self.cfg.glob * sums["global"] + self.cfg.token * sums["token"]
        return LossOutput(total, sums, terms)


__all__ = [
    "SCALES",
    "BenLoss",
    "LossOutput",
    "LossTerm",
    "gaussian_window",
    "pixel_weight",
    "resize_target",
    "ssim",
    "ssim_loss",
    "structure_loss",
    "weighted_bce",
    "weighted_iou",
]
