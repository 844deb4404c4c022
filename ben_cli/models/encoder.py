"""Swin Transformer encoder of BEN Base, built on timm.

BEN2's Swin differs from timm's stock blocks in one detail: each block pads the
token grid to a multiple of the window *before* the cyclic shift (timm rolls
first, then pads). At 512x512 crops the grid is 128x128, not a multiple of the
12-token window, so the order changes the features. ``PadThenShiftBlock``
overrides timm's attention step to pad first, then roll, with the shift mask
built on the padded grid. Windows stay 12 and shifts 6 in every stage whatever
the input size (``always_partition=True``). Its window attention adds the
relative position bias and the shift mask as one (nW, heads, N, N) bias that
broadcasts over the batch, where timm's expands the mask to every image.

Outputs are the five feature maps BEN's decoder uses: the patch embedding and
the four stage outputs, each stage output with its own LayerNorm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from torch import nn

from ben_cli.config import SwinConfig
from ben_cli.models.cache import module_cache


class Layout(NamedTuple):
    """One block's gather plan for one (H, W, device, dtype); see :func:`window_layout`."""

    fwd: torch.Tensor  # (Hp*Wp,) int64: source row of each window-ordered token in the (H*W + 1) input
    inv: torch.Tensor  # (H*W,) int64: window-order position of each input token
    mask: torch.Tensor | None  # (nW, window_area, window_area) shift mask on the padded grid, None unshifted


class PadThenShiftBlock(SwinTransformerBlock):
    """timm Swin block whose attention step pads to the window multiple, then shifts.

    Padding, the cyclic shift and the window partition are one gather with a
    precomputed index (and the way back one more), instead of six full copies.
    The gather plans and shift masks are cached per block, keyed by (H, W, device, dtype), in a
    cache that is safe to share between threads (:func:`~ben_cli.models.cache.module_cache`).
    """

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        fwd, inv, mask = self.layout(H, W, x.device, x.dtype)
        flat = F.pad(x.reshape(B, H * W, C), (0, 0, 0, 1))  # row H*W is the zero padding
        windows = flat.index_select(1, fwd).view(B, -1, self.window_area, C)
        windows = self.window_attention(windows, mask)
        return windows.view(B, -1, C).index_select(1, inv).view(B, H, W, C)

    def window_attention(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """timm's ``WindowAttention.forward`` (same weights, same ``fused_attn`` switch) on windows
        grouped by image, with the bias broadcast over the batch instead of expanded per image.

        x: (B, nW, N, C) windows; mask: (nW, N, N) of 0 / -100 or None -> (B, nW, N, C).

        The bias, relative position bias plus shift mask, is (nW, heads, N, N): 1/B of timm's
        (B*nW, heads, N, N) per shifted block (about 7 GB written and read per batch of 16 at
        1024x1024 in timm). Its position part is gathered from the parameter table in every call
        (a gather of heads*N*N values and one add), not cached: training changes the table, and a
        cached copy would go stale or hold a graph. Fused: shifted windows go to
        ``scaled_dot_product_attention`` as (B, nW*heads, N, d), so its 4-D kernels take the bias
        as (1, nW*heads, N, N) broadcast over the batch (q, k and v are copied once into that
        layout: 3*N*C values per window against the heads*N*N of an expanded mask).
        """
        attn = self.attn
        B, nW, N, _ = x.shape
        heads = attn.num_heads
        bias = relative_position_bias(attn.relative_position_bias_table, attn.relative_position_index)
        if mask is not None:
            bias = bias + mask[:, None]  # (nW, heads, N, N)
        qkv = attn.qkv(x).view(B, nW, N, 3, heads, -1)
        d = qkv.shape[-1]
        if attn.fused_attn:
            dropout = attn.attn_drop.p if attn.training else 0.0
            if mask is None:  # the (heads, N, N) bias broadcasts over all B*nW windows as it is
                q, k, v = qkv.view(B * nW, N, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
                bias = bias[None]
            else:
                q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, B, nW * heads, N, d).unbind(0)
                bias = bias.view(1, nW * heads, N, N)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout)
            out = out.view(B, nW, heads, N, d)
        else:
            q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, heads, N, d)
            scores = (q * attn.scale) @ k.transpose(-2, -1) + bias
            out = attn.attn_drop(attn.softmax(scores)) @ v
        out = out.transpose(2, 3).reshape(B, nW, N, heads * d)
        return attn.proj_drop(attn.proj(out))

    def layout(self, H: int, W: int, device: torch.device, dtype: torch.dtype) -> Layout:
        """The gather plan for an (H, W) token grid on ``device`` in ``dtype``, from the cache or built once."""
        return module_cache(self, ("layout", H, W, device, dtype), lambda: self._build_layout(H, W, device, dtype))

    def _build_layout(self, H: int, W: int, device: torch.device, dtype: torch.dtype) -> Layout:
        # Ordinary tensors even under torch.inference_mode(): the cache outlives the call, and
        # inference tensors could not be saved for backward when the model trains later.
        with torch.inference_mode(False):
            fwd, inv = window_layout(H, W, self.window_size, tuple(self.shift_size), device)
            mask = None
            if any(self.shift_size):  # timm builds the mask on the grid it is given: the padded one
                Hp, Wp = _padded(H, self.window_size[0]), _padded(W, self.window_size[1])
                mask = self.get_attn_mask(torch.zeros(1, Hp, Wp, 1, device=device, dtype=dtype))
        return Layout(fwd, inv, mask)


def relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Swin's relative position bias of every query/key pair of a window, as timm gathers it.

    table: ((2*Wh-1)*(2*Ww-1), heads); index: (N, N) int64 rows of ``table``, N = Wh*Ww
    -> (heads, N, N) in the table's dtype (differentiable in ``table``).
    """
    N = index.shape[0]
    return table[index.view(-1)].view(N, N, -1).permute(2, 0, 1).contiguous()


def _padded(n: int, window: int) -> int:
    return -(-n // window) * window


def window_layout(H: int, W: int, window: tuple[int, int], shift: tuple[int, int],
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index maps for pad-to-window-multiple, roll by ``-shift``, window partition.

    Returns ``fwd`` (Hp*Wp,): for each token in window order, its source row in
    the flattened (H*W + 1) input whose last row is zero (padding); and ``inv``
    (H*W,): where each input token sits in window order.
    """
    (wh, ww), (sh, sw) = window, shift
    Hp, Wp = _padded(H, wh), _padded(W, ww)
    rows = (torch.arange(Hp) + sh) % Hp  # torch.roll(x, -sh): out[i] = in[(i + sh) % Hp]
    cols = (torch.arange(Wp) + sw) % Wp
    valid = (rows[:, None] < H) & (cols[None, :] < W)
    src = torch.where(valid, rows[:, None] * W + cols[None, :], H * W)
    fwd = src.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1)
    # Every input token appears once in fwd; the padding slots all write slot H*W, which is dropped.
    # (A scatter, not boolean indexing: no data-dependent shape, so torch.compile does not break here.)
    inv = torch.empty(H * W + 1, dtype=torch.long).scatter_(0, fwd, torch.arange(Hp * Wp))[: H * W]
    return fwd.to(device), inv.to(device)


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

    def prepare(self, side: int, device: torch.device, dtype: torch.dtype) -> int:
        """Build every block's gather plan for (side, side) crops on ``device`` for activations in
        ``dtype`` (see :meth:`ben_cli.models.ben.BenBase.prepare`); returns the last stage's grid side."""
        grid = side // self.swin.patch_embed.patch_size[0]
        for stage in self.swin.layers:
            if not isinstance(stage.downsample, nn.Identity):
                grid = -(-grid // 2)  # PatchMerging pads an odd grid
            for block in stage.blocks:
                block.layout(grid, grid, device, dtype)
        return grid

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.swin.patch_embed(x)  # (N, H/4, W/4, C)
        feats = [x.permute(0, 3, 1, 2).contiguous()]
        for stage, norm in zip(self.swin.layers, self.norms):
            x = stage(x)
            feats.append(norm(x).permute(0, 3, 1, 2).contiguous())
        return feats
