"""Multi-view decoder of BEN Base (MVANet design with InstanceNorm and GELU).

Layout convention: the 5 views of each image are kept together as
``(B, 5, C, h, w)``: four local quarters in raster order (top-left, top-right,
bottom-left, bottom-right) then the global view. Every block is batched over
images; attention runs with the image batch as the sequence batch dimension.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ben_cli.models.cache import module_cache


def conv_in_gelu(in_dim: int, out_dim: int) -> nn.Sequential:
    """3x3 conv -> InstanceNorm (no affine) -> GELU."""
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, padding=1), nn.InstanceNorm2d(out_dim), nn.GELU())


def image_to_patches(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 2h, 2w) -> (B, 4, C, h, w), quarters in raster order."""
    B, C, H, W = x.shape
    return x.view(B, C, 2, H // 2, 2, W // 2).permute(0, 2, 4, 1, 3, 5).reshape(B, 4, C, H // 2, W // 2)


def patches_to_image(x: torch.Tensor) -> torch.Tensor:
    """(B, 4, C, h, w) -> (B, C, 2h, 2w); inverse of :func:`image_to_patches`."""
    B, _, C, h, w = x.shape
    return x.view(B, 2, 2, C, h, w).permute(0, 3, 1, 4, 2, 5).reshape(B, C, 2 * h, 2 * w)


def resize_as(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to ref's spatial size (align_corners=False, no antialias)."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear")


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def sine_position_embedding(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """DETR-style normalised sine embedding of an h x w grid: (h*w, 1, dim).

    Computed in float32 on the CPU (as the reference does), then cast.
    """
    npf = dim // 2
    ys = torch.arange(1, h + 1, dtype=torch.float32)
    xs = torch.arange(1, w + 1, dtype=torch.float32)
    scale, eps = 2 * math.pi, 1e-6
    ys = (ys - 0.5) / (h + eps) * scale if h else ys
    xs = (xs - 0.5) / (w + eps) * scale if w else xs
    dim_t = 10000 ** (2 * (torch.arange(npf, dtype=torch.float32) // 2) / npf)

    def encode(v: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, npf), sin/cos interleaved
        p = v[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(h, w, npf)
    pos_x = encode(xs)[None, :, :].expand(h, w, npf)
    pos = torch.cat((pos_y, pos_x), dim=2).reshape(h * w, 1, dim)
    return pos.to(device=device, dtype=dtype)


def _seq(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (h*w, B, C)."""
    return x.flatten(2).permute(2, 0, 1)


def _unseq(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(h*w, B, C) -> (B, C, h, w)."""
    return x.permute(1, 2, 0).reshape(x.shape[1], x.shape[2], h, w)


class _MultiViewAttention(nn.Module):
    """Shared parts of MCLM and MCRM: single-head attentions, post-norm FFN, dropouts."""

    def __init__(self, dim: int, num_heads: int, n_attention: int, pool_ratios: tuple[int, ...]) -> None:
        super().__init__()
        self.attention = nn.ModuleList(
            nn.MultiheadAttention(dim, num_heads, dropout=0.1) for _ in range(n_attention)
        )
        self.linear3 = nn.Linear(dim, dim * 2)
        self.linear4 = nn.Linear(dim * 2, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(0.1)
        self.dropout1 = nn.Dropout(0.1)
        self.dropout2 = nn.Dropout(0.1)
        self.pool_ratios = tuple(pool_ratios)

    def _ffn(self, x: torch.Tensor, lin_a: nn.Linear, lin_b: nn.Linear) -> torch.Tensor:
        """x + FFN(x), the FFN being lin_b(dropout(gelu(lin_a(x))))."""
        return x + self.dropout2(lin_b(self.dropout(F.gelu(lin_a(x)))))


class MCLM(_MultiViewAttention):
    """Multi-view complementary localisation: the global view attends to pooled
    local views, then each local view attends to its quarter of the refreshed global view."""

    def __init__(self, dim: int, num_heads: int = 1, pool_ratios: tuple[int, ...] = (1, 4, 8)) -> None:
        super().__init__(dim, num_heads, 5, pool_ratios)
        self.linear1 = nn.Linear(dim, dim * 2)
        self.linear2 = nn.Linear(dim * 2, dim)

    def _pool_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """The pooled grids of the local views: (h/r, w/r) rounded, empty pools dropped (no tokens, no gradient)."""
        sizes = [(round(h / r), round(w / r)) for r in self.pool_ratios]
        return [s for s in sizes if 0 not in s]

    def positions(self, h: int, w: int, dim: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Sine embeddings of the (h, w) global grid (h*w, 1, dim) and of the pooled grids, concatenated
        (L, 1, dim); computed once per (h, w, dim, device, dtype) and cached."""

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.inference_mode(False):  # ordinary tensors: the cache outlives the call
                pools = [sine_position_embedding(ph, pw, dim, device, dtype) for ph, pw in self._pool_sizes(h, w)]
                return sine_position_embedding(h, w, dim, device, dtype), torch.cat(pools, 0)

        return module_cache(self, ("positions", h, w, dim, device, dtype), build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 5, C, h, w) -> (B, 5, C, h, w)."""
        _, _, C, h, w = x.shape
        loc, glb = x[:, :4], x[:, 4]
        merged = patches_to_image(loc)  # (B, C, 2h, 2w)
        kv = torch.cat([_seq(F.adaptive_avg_pool2d(merged, size)) for size in self._pool_sizes(h, w)], 0)  # (L, B, C)
        g_pos, kv_pos = self.positions(h, w, C, x.device, x.dtype)

        g = _seq(glb)  # (hw, B, C)
        g = g + self.dropout1(self.attention[0](g + g_pos, kv + kv_pos, kv, need_weights=False)[0])
        g = self.norm2(self._ffn(self.norm1(g), self.linear1, self.linear2))

        g_quarters = image_to_patches(_unseq(g, h, w))  # (B, 4, C, h/2, w/2)
        locals_out = []
        for i in range(4):
            q, kv_i = _seq(loc[:, i]), _seq(g_quarters[:, i])
            q = q + self.dropout1(self.attention[i + 1](q, kv_i, kv_i, need_weights=False)[0])
            q = self.norm2(self._ffn(self.norm1(q), self.linear3, self.linear4))
            locals_out.append(_unseq(q, h, w))
        return torch.stack([*locals_out, _unseq(g, h, w)], dim=1)


class MCRM(_MultiViewAttention):
    """Multi-view complementary refinement: local views, gated by the global view's
    token map, attend to pooled quarters of the global view; the global view
    then absorbs the refreshed local views."""

    def __init__(self, dim: int, num_heads: int = 1, pool_ratios: tuple[int, ...] = (2, 4, 8)) -> None:
        super().__init__(dim, num_heads, 4, pool_ratios)
        self.sal_conv = nn.Conv2d(dim, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 5, C, h, w) -> (refined (B, 5, C, h, w), token logits (B, 1, 2h, 2w))."""
        B, _, C, h, w = x.shape
        loc, glb = x[:, :4], x[:, 4]
        token_logits = upsample2(self.sal_conv(glb))  # nearest, so sigmoid commutes
        loc = loc * image_to_patches(torch.sigmoid(token_logits))

        glb_q = image_to_patches(glb).flatten(0, 1)  # (B*4, C, h/2, w/2)
        sizes = [(round(h / r), round(w / r)) for r in self.pool_ratios]
        pools = [F.adaptive_avg_pool2d(glb_q, s).flatten(2) for s in sizes if 0 not in s]
        kv_all = torch.cat(pools, 2).view(B, 4, C, -1)  # (B, 4, C, L)

        outs = []
        for i in range(4):
            q, kv = _seq(loc[:, i]), kv_all[:, i].permute(2, 0, 1)
            outs.append(q + self.dropout1(self.attention[i](q, kv, kv, need_weights=False)[0]))
        src = self.norm2(self._ffn(self.norm1(torch.stack(outs, 2)), self.linear3, self.linear4))  # (hw, B, 4, C)
        src = src.permute(1, 2, 3, 0).reshape(B, 4, C, h, w)
        glb = glb + F.interpolate(patches_to_image(src), size=(h, w), mode="nearest")
        return torch.cat((src, glb[:, None]), 1), token_logits


class DecoderOutputs(NamedTuple):
    """Decoder results; the side lists are filled in training mode only."""

    e1: torch.Tensor  # (B, 5, C, h1, w1) finest multi-view features
    side: list[torch.Tensor]  # s5..s1 local side logits merged to (B, 1, 2h, 2w)
    glob: list[torch.Tensor]  # g5..g1 global-view side logits (B, 1, h, w)
    tokens: list[torch.Tensor]  # t4..t1 token-map logits (B, 1, 2h, 2w)


class MultiViewDecoder(nn.Module):
    """Lateral convs, MCLM on the coarsest level, then MCRM + conv on the way up."""

    def __init__(self, in_channels: list[int], dim: int, mclm_pools: tuple[int, ...],
                 mcrm_pools: tuple[int, ...]) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_in_gelu(c, dim) for c in in_channels)  # f0..f4
        self.mclm = MCLM(dim, 1, mclm_pools)
        self.refine = nn.ModuleList(MCRM(dim, 1, mcrm_pools) for _ in range(4))  # levels 1..4
        self.fuse = nn.ModuleList(conv_in_gelu(dim, dim) for _ in range(4))
        self.side = nn.ModuleList(nn.Sequential(nn.Conv2d(dim, 1, 3, padding=1)) for _ in range(5))

    def forward(self, feats: list[torch.Tensor], batch: int) -> DecoderOutputs:
        """feats: 5 maps (B*5, C_i, h_i, w_i), views grouped per image."""

        def views(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, 5, *t.shape[1:])

        def crops(t: torch.Tensor) -> torch.Tensor:
            return t.flatten(0, 1)

        lat = [lateral(f) for lateral, f in zip(self.lateral, feats)]  # e1..e5 as (B*5, C, h, w)
        e5_in = views(lat[4])
        e = [self.mclm(e5_in)]  # e5 as (B, 5, C, h, w)
        tokens = []
        for level in (3, 2, 1, 0):  # e4, e3, e2, e1
            x = lat[level] + resize_as(crops(e[-1]), lat[level])
            x, tok = self.refine[level](views(x))
            e.append(views(self.fuse[level](crops(x))))
            tokens.append(tok)
        side, glob = [], []
        if self.training:
            for k, ek in zip((4, 3, 2, 1, 0), e):  # e5..e1
                s = views(self.side[k](crops(ek)))
                side.append(patches_to_image(s[:, :4]))
                glob.append(s[:, 4])
            glob[0] = self.side[4](e5_in[:, 4])  # g5 is read before MCLM, as in MVANet
        else:
            tokens = []
        return DecoderOutputs(e[-1], side, glob, tokens)
