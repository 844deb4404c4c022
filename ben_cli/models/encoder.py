"""Swin Transformer encoder of BEN Base, built on timm.

BEN2's Swin differs from timm's stock blocks in one detail: each block pads the
token grid to a multiple of the window *before* the cyclic shift (timm rolls
first, then pads). At 512x512 crops the grid is 128x128, not a multiple of the
12-token window, so the order changes the features. ``PadThenShiftBlock``
overrides timm's attention step to pad first, then roll, with the shift mask
built on the padded grid. Windows stay 12 and shifts 6 in every stage whatever
the input size (``always_partition=True``).

Outputs are the five feature maps BEN's decoder uses: the patch embedding and
the four stage outputs, each stage output with its own LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    window_partition,
    window_reverse,
)
from torch import nn

from ben_cli.config import SwinConfig


class PadThenShiftBlock(SwinTransformerBlock):
    """timm Swin block whose attention step pads to the window multiple, then shifts."""

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        _, H, W, C = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - W % ww) % ww, 0, (wh - H % wh) % wh))
        _, Hp, Wp, _ = x.shape
        shift = tuple(self.shift_size)
        mask = None
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
            mask = self._shift_mask(Hp, Wp, x)
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, wh, ww, C), self.window_size, Hp, Wp)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        return x[:, :H, :W, :].contiguous()

    def _shift_mask(self, Hp: int, Wp: int, x: torch.Tensor) -> torch.Tensor:
        """(num_windows, N, N) mask of 0 / -100 for the shifted padded grid, cached per shape."""
        key = (Hp, Wp, x.device, x.dtype)
        cache = self.__dict__.setdefault("_mask_cache", {})
        if key not in cache:
            cache.clear()
            cache[key] = self.get_attn_mask(x)  # timm builds it from x's (padded) H, W
        return cache[key]


class SwinEncoder(nn.Module):
    """Swin backbone returning 5 feature maps.

    Input: (N, 3, H, W) normalised crops, H and W multiples of 32.
    Output: list of 5 tensors (N, C_i, H_i, W_i): patch embedding (C, H/4),
    then stages 1-4 (C, 2C, 4C, 8C at H/4, H/8, H/16, H/32).
    """

    def __init__(self, cfg: SwinConfig, *, fused_attn: bool = True) -> None:
        super().__init__()
        self.swin = SwinTransformer(
            img_size=512,
            patch_size=cfg.patch_size,
            in_chans=3,
            num_classes=0,
            global_pool="",
            embed_dim=cfg.embed_dim,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            window_size=cfg.window_size,
            mlp_ratio=cfg.mlp_ratio,
            drop_path_rate=cfg.drop_path_rate,
            always_partition=True,
            strict_img_size=False,
        )
        self.swin.norm = nn.Identity()  # replaced by one LayerNorm per stage output
        for stage in self.swin.layers:
            for block in stage.blocks:
                block.__class__ = PadThenShiftBlock
                block.attn.fused_attn = fused_attn
        dims = [cfg.embed_dim * 2**i for i in range(len(cfg.depths))]
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.out_channels = [cfg.embed_dim, *dims]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.swin.patch_embed(x)  # (N, H/4, W/4, C)
        feats = [x.permute(0, 3, 1, 2).contiguous()]
        for stage, norm in zip(self.swin.layers, self.norms):
            x = stage(x)
            feats.append(norm(x).permute(0, 3, 1, 2).contiguous())
        return feats
