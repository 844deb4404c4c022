"""BEN Base: Swin encoder on 5 views + multi-view decoder + full-resolution mask head.

The model maps a normalised image batch to mask logits; it never applies the
sigmoid, thresholds or resizes (the pipeline does). Everything is batched: a
batch of N images gives the same result as N single runs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ben_cli.config import BenConfig
from ben_cli.models.decoder import (
    MultiViewDecoder,
    conv_in_gelu,
    image_to_patches,
    patches_to_image,
    resize_as,
    upsample2,
)
from ben_cli.models.encoder import SwinEncoder


class BenTrainOutputs(NamedTuple):
    """Training-mode outputs for the paper's loss (Eq. 2-4), all logits.

    ``side``: s1..s6 = the five local side outputs (coarse to fine) and the final
    output; ``glob``: g1..g5 global-view outputs; ``tokens``: t1..t4 token maps.
    """

    logits: torch.Tensor  # (B, 1, H, W)
    side: list[torch.Tensor]
    glob: list[torch.Tensor]
    tokens: list[torch.Tensor]


class MaskHead(nn.Module):
    """Merges the four local views, adds the global view and a shallow full-resolution
    path, and upsamples x4 to the input size."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mask = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1), nn.InstanceNorm2d(hidden), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.InstanceNorm2d(hidden), nn.GELU(),
            nn.Conv2d(hidden, dim, 3, padding=1),
        )
        self.shallow = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1))
        self.up1 = conv_in_gelu(dim, dim)
        self.up2 = conv_in_gelu(dim, dim)
        self.out = nn.Sequential(nn.Conv2d(dim, 1, 3, padding=1))

    def forward(self, e1: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """e1: (B, 5, C, h, w), image: (B, 3, H, W) normalised, H = 8h -> logits (B, 1, H, W)."""
        x = patches_to_image(e1[:, :4])  # (B, C, 2h, 2w)
        x = self.mask(x + resize_as(e1[:, 4], x))
        shallow = self.shallow(image)
        x = self.up1(upsample2(x + resize_as(shallow, x)))
        x = self.up2(upsample2(x + resize_as(shallow, x)))
        return self.out(x)


class BenBase(nn.Module):
    """BEN Base (paper section 3.1).

    Input: (B, 3, S, S) RGB normalised with ``config.mean``/``config.std``, S a
    multiple of 128, at least 256. Output in eval mode: logits (B, 1, S, S); in
    training mode: :class:`BenTrainOutputs`.
    """

    def __init__(self, config: BenConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = SwinEncoder(config.backbone)
        self.decoder = MultiViewDecoder(
            self.encoder.out_channels, config.dim, config.mclm_pool_ratios, config.mcrm_pool_ratios
        )
        self.head = MaskHead(config.dim, config.head_dim)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> normalised input."""
        return (rgb - self.mean) / self.std

    @staticmethod
    def views(x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B*5, 3, S/2, S/2): 4 quarters then the whole image at half size."""
        _, _, S, W = x.shape
        if S % 128 or W % 128 or S < 256 or W < 256:
            raise ValueError(f"input sides must be multiples of 128 and >= 256, got {S}x{W}")
        glb = F.interpolate(x, scale_factor=0.5, mode="bilinear")
        return torch.cat((image_to_patches(x), glb[:, None]), 1).flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | BenTrainOutputs:
        B = x.shape[0]
        feats = self.encoder(self.views(x))
        dec = self.decoder(feats, B)
        logits = self.head(dec.e1, x)
        if not self.training:
            return logits
        return BenTrainOutputs(logits, [*dec.side, logits], dec.glob, dec.tokens)
