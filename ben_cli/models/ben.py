"""BEN Base: Swin encoder on 5 views + multi-view decoder + full-resolution mask head.

The model maps a normalised image batch to mask logits; it never applies the
sigmoid, thresholds or resizes (the pipeline does). Everything is batched: a
batch of N images gives the same result as N single runs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from ben_cli.config import BenConfig
from ben_cli.models.decoder import (
    MultiViewDecoder,
    conv_in_gelu,
    image_to_patches,
    patches_to_image,
    resize_as,
)
from ben_cli.models.encoder import SwinEncoder
from ben_cli.models.normalise import fill_mean_std, register_mean_std


class BenTrainOutputs(NamedTuple):
    """Training-mode outputs for the paper's loss (Eq. 2-4), all logits.

    ``side``: s1..s6 = the five local side outputs (coarse to fine) and the final
    output; ``glob``: g1..g5 global-view outputs; ``tokens``: t1..t4 token maps.
    """

    logits: torch.Tensor  # (B, 1, H, W)
    side: list[torch.Tensor]
    glob: list[torch.Tensor]
    tokens: list[torch.Tensor]


def _fold(k: torch.Tensor, dim: int, phase: int) -> torch.Tensor:
    """Fold 3 taps along ``dim`` into the 2 that one output phase of a nearest-x2 input sees:
    phase 0 reads rows (i-1, i) with taps (k0, k1+k2); phase 1 reads (i, i+1) with (k0+k1, k2)."""
    k0, k1, k2 = k.unbind(dim)
    return torch.stack((k0, k1 + k2) if phase == 0 else (k0 + k1, k2), dim)


def _phase_kernels(w: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) -> (4*O, C, 2, 2): one 2x2 kernel per output phase (a, b), row-major."""
    return torch.cat([_fold(_fold(w, 2, a), 3, b) for a in (0, 1) for b in (0, 1)])


def conv3x3_after_up2(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(nearest_upsample_x2(x))`` for a 3x3, padding-1 conv, computed on ``x``.

    Output pixel (2i+a, 2j+b) sees a 2x2 neighbourhood of ``x`` with summed taps,
    so one 2x2 conv with 4*O channels over the padded ``x`` gives all four phases
    (16 instead of 36 multiply-adds per 2x2 output block, and the upsampled map
    is never built). Same result up to float rounding (~1e-7 relative).
    x: (B, C, h, w) -> (B, O, 2h, 2w), contiguous.

    Phase (a, b) is the crop ``[a : a+h, b : b+w]`` of its channels, so the four crops
    interleave as one strided view of the conv output (the phase and the row offset share
    a stride) and one copy lays them out. ``F.pixel_shuffle`` needs all four phases on one
    grid: it would shuffle the (h+1, w+1) output and crop one pixel off each border, a
    second full copy (measured on the CPU, B=1, O=128, h=w=256, the layout step alone:
    pixel_shuffle and crop 236 ms, made contiguous 356 ms, four stride-2 scatters 182 ms,
    this copy 148 ms).
    """
    (B, _, h, w), out_ch = x.shape, conv.out_channels
    bias = conv.bias.repeat(4) if conv.bias is not None else None
    full = F.conv2d(F.pad(x, (1, 1, 1, 1)), _phase_kernels(conv.weight), bias)  # (B, 2*2*O, h+1, w+1)
    s_batch, s_chan, s_row, s_col = full.stride()
    s_a, s_b = 2 * out_ch * s_chan, out_ch * s_chan  # channel (2a + b) * O + o holds phase (a, b)
    # [n, o, i, a, j, b] = full[n, (2a + b) * O + o, i + a, j + b] (the storage offset stays full's)
    phases = full.as_strided((B, out_ch, h, 2, w, 2), (s_batch, s_chan, s_row, s_a + s_row, s_col, s_b + s_col))
    return phases.contiguous().view(B, out_ch, 2 * h, 2 * w)


def conv3x3_to_one_channel(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A padding-1 3x3 conv with one output channel, as a 9-channel 1x1 conv
    (one GEMM) plus nine shifted sums: oneDNN is slow with a single output channel.

    The nine taps are summed in float32 whatever the input dtype, so a half-precision
    model returns float32 logits (the sum is not rounded to 8 or 11 bits, and no separate
    cast is needed).
    x: (B, C, H, W) -> (B, 1, H, W) float32.
    """
    B, C, H, W = x.shape
    taps = F.pad(F.conv2d(x, conv.weight[0].permute(1, 2, 0).reshape(9, C, 1, 1)), (1, 1, 1, 1))
    out = conv.bias.float().view(1, 1, 1, 1).expand(B, 1, H, W).clone()
    for k in range(9):
        ky, kx = divmod(k, 3)
        out += taps[:, k : k + 1, ky : ky + H, kx : kx + W]
    return out


def conv3x3_then_downscale(x: torch.Tensor, conv: nn.Conv2d, factor: int) -> torch.Tensor:
    """``bilinear_resize(conv(x), size / factor)`` (align_corners=False) for factor 2 or 4.

    Such a resize averages output pixels (f*i + f/2 - 1, f*i + f/2) in each axis
    with weights 1/2, so it equals a stride-f conv of the 2x2 box-filtered,
    zero-padded input: the full-resolution conv output is never built.
    x: (B, C, H, W) -> (B, O, H/f, W/f).
    """
    xp = F.pad(x, (1, 1, 1, 1))
    box = 0.25 * (xp[:, :, :-1, :-1] + xp[:, :, 1:, :-1] + xp[:, :, :-1, 1:] + xp[:, :, 1:, 1:])
    off = factor // 2 - 1
    return F.conv2d(box[:, :, off:, off:], conv.weight, conv.bias, stride=factor)


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
        """e1: (B, 5, C, h, w), image: (B, 3, H, W) normalised, H = 8h -> logits (B, 1, H, W).

        Computes ``up(x) = up_block(upsample2(x + resize(shallow(image), x)))`` twice,
        in the exact reformulations above.
        """
        x = patches_to_image(e1[:, :4])  # (B, C, 2h, 2w) = H/4
        x = self.mask(x + resize_as(e1[:, 4], x))
        for up, factor in ((self.up1, 4), (self.up2, 2)):
            x = x + conv3x3_then_downscale(image, self.shallow[0], factor)
            x = up[2](up[1](conv3x3_after_up2(x, up[0])))
        return conv3x3_to_one_channel(x, self.out[0])


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
        register_mean_std(self, config.mean, config.std)

    def init_non_persistent_buffers(self) -> None:
        """Fill the buffers no checkpoint holds (the config's normalisation constants), in place."""
        fill_mean_std(self, self.config.mean, self.config.std)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype: float32, or float16/bfloat16 for a model cast once for inference."""
        return self.head.out[0].weight.dtype

    def prepare(self, side: int, dtypes: tuple[torch.dtype, ...] = ()) -> BenBase:
        """Build the input-independent constants for (B, 3, side, side) inputs now, on the model's
        device: every Swin block's gather plan and shift mask, and MCLM's position embeddings.

        A forward builds them on first use anyway; built here, before ``torch.compile``, the traced
        graph only reads them (no CPU work and host-to-device copies in each call, which would also
        keep CUDA graphs off). ``dtypes``: the activation dtypes to build for (default: the weights'
        dtype; under autocast pass both float32 and the autocast dtype). Returns ``self``.
        """
        if side % 128 or side < 256:
            raise ValueError(f"input sides must be multiples of 128 and >= 256, got {side}")
        device = self.device
        for dtype in dict.fromkeys(dtypes or (self.dtype,)):
            grid = self.encoder.prepare(side // 2, device, dtype)
            self.decoder.mclm.positions(grid, grid, self.config.dim, device, dtype)
        return self

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> normalised input."""
        return (rgb - self.mean) / self.std

    def for_inference(self) -> BenBase:
        """Make this model an inference model, in place: eval mode, and every
        stochastic-depth ``DropPath`` replaced by ``nn.Identity``; returns ``self``.

        In eval mode a DropPath is already the identity, so outputs do not change
        (bit for bit); without them ``torch.compile`` has no per-block drop rate to
        guard on. Training needs the DropPaths: build a fresh model to train.
        """
        for module in self.modules():
            for name, child in module.named_children():
                if isinstance(child, DropPath):
                    setattr(module, name, nn.Identity())
        return self.eval()

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
