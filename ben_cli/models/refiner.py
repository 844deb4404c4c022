"""BEN Refiner: re-estimates the gray band of the confidence trimap (paper section 3.3).

The official refiner is not public; this network follows the matting method the
paper cites, ViTMatte (Yao et al. 2024): a light *context* path that sees the
whole image at 1/16 scale through global attention, and a high-resolution
*detail* path ("ConvStream") whose features are fused back up to full resolution
("detail capture module"), ending in a full-resolution head.

Inputs at the working resolution: the RGB image, the base probability and the
confidence trimap (one-hot). The network predicts a *residual on the base
probability*: ``alpha = prob + delta``, not clamped. The head's last
convolution starts at zero, so an untrained refiner returns the base
probability exactly, and training only learns corrections. The caller clamps
to [0, 1] and imposes the trimap's known pixels (the refine stage
:mod:`ben_cli.refine.net`, with :func:`ben_cli.refine.clamp_known`), as the
pipeline applies the sigmoid to BEN Base's logits. The output is linear, not a
logit: the training loss (L1 and a Laplacian pyramid on the unclamped values)
never saturates, whereas a sigmoid output trained with L1 drifted to logits in
the thousands and stopped learning.

::

    x = [normalised RGB, prob, trimap one-hot]             (B, 7, H, W)
    detail:  d1 = conv s2 (1/2)  d2 = conv s2 (1/4)  d3 = conv s2 (1/8)
    context: c = embed s2 (1/16) -> depth x [pos-conv, attention (keys/values pooled), MLP]
    fusion:  up(c) + d3 -> up + d2 -> up + d1 -> up + x    (each: bilinear x2, concat, conv 3x3, norm, ReLU)
    head:    conv 3x3, norm, ReLU, conv 1x1 -> delta       (B, 1, H, W)

"norm" is a per-pixel LayerNorm over the channels (:class:`ChannelNorm`,
``config.norm``; it helped the full network and hurt the tiny one, whose 8
channels carry too little to normalise). No normalisation spans pixels or
images (no BatchNorm, GroupNorm or InstanceNorm): the convolutions are local
and only the attention sees the whole image, so a batch of N images gives the
N single results and crops behave like the whole.
Any H, W: the input is padded (replicate) to a multiple of :attr:`Refiner.stride`
and the output cropped back.

The file reads top to bottom: helpers, blocks, the model, configs, entry points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ben_cli.config import IMAGENET_MEAN, IMAGENET_STD, config_kwargs
from ben_cli.models.normalise import fill_mean_std, register_mean_std
from ben_cli.models.registry import Arch

IN_CHANNELS = 7  # RGB, probability, trimap one-hot (background, unknown, foreground)


# --------------------------------------------------------------------------- helpers


def trimap_one_hot(trimap: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, H, W) uint8 {0, 128, 255} -> (B, 3, H, W) ``dtype``: background, unknown, foreground."""
    return torch.cat([trimap == 0, trimap == 128, trimap == 255], 1).to(dtype)


# --------------------------------------------------------------------------- blocks


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map (ConvNeXt's LayerNorm2d):
    keeps activations at one scale without statistics across pixels or images."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def conv_norm_relu(cin: int, cout: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    """3x3 convolution (padding 1), :class:`ChannelNorm` when ``norm`` (then the conv has no bias), ReLU."""
    if not norm:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), ChannelNorm(cout),
                         nn.ReLU(inplace=True))


class DetailStage(nn.Sequential):
    """One ConvStream stage: halves the resolution (3x3 stride 2) then a 3x3 conv, each (normalised and) ReLU'd."""

    def __init__(self, cin: int, cout: int, norm: bool = True) -> None:
        super().__init__(conv_norm_relu(cin, cout, 2, norm), conv_norm_relu(cout, cout, 1, norm))


class ContextBlock(nn.Module):
    """A transformer block on a (B, C, h, w) map: conditional position encoding (depthwise 3x3
    conv, residual), global multi-head attention whose keys and values are average-pooled by
    ``kv_stride`` (spatial-reduction attention, PVT), and an MLP; pre-norm, residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, kv_stride: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"context_dim {dim} is not divisible by context_heads {heads}")
        self.heads, self.kv_stride = heads, kv_stride
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h, w)."""
        x = x + self.pos(x)
        B, C, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        n = self.norm1(t)
        src = n
        if self.kv_stride > 1:
            grid = n.transpose(1, 2).reshape(B, C, h, w)
            src = F.avg_pool2d(grid, self.kv_stride, ceil_mode=True).flatten(2).transpose(1, 2)
        head_dim = C // self.heads
        q = self.q(n).view(B, -1, self.heads, head_dim).transpose(1, 2)
        k, v = self.kv(src).view(B, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, -1, C)
        t = t + self.proj(a)
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(B, C, h, w)


class FusionBlock(nn.Module):
    """Detail capture: upsample the coarser features x2 (bilinear), concatenate the detail
    features of that scale, 3x3 conv, (:class:`ChannelNorm`,) ReLU."""

    def __init__(self, cin: int, cdetail: int, cout: int, norm: bool = True) -> None:
        super().__init__()
        self.conv = conv_norm_relu(cin + cdetail, cout, 1, norm)

    def forward(self, x: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """x (B, Cin, h, w), detail (B, Cd, 2h, 2w) -> (B, Cout, 2h, 2w)."""
        up = F.interpolate(x, size=detail.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([up, detail], 1))


# --------------------------------------------------------------------------- the model


class Refiner(nn.Module):
    """The refiner network.

    ``forward(image, prob, trimap)``: image (B, 3, H, W) RGB float in [0, 1]
    (normalised inside with ``config.mean``/``config.std``), prob (B, 1, H, W)
    float in [0, 1] (the base probability), trimap (B, 1, H, W) uint8
    {0, 128, 255} -> alpha (B, 1, H, W) in the compute dtype, *not* clamped to
    [0, 1]. Only its gray band is meant to be used: the caller clamps it and
    imposes the trimap's known pixels.
    """

    stride = 16
    """Total downsampling of the context path: inputs are padded to a multiple of it."""

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.detail_widths
        if len(d) != 3 or len(config.fuse_widths) != 3:
            raise ValueError("detail_widths and fuse_widths must each have 3 entries (1/2, 1/4, 1/8)")
        norm = config.norm
        self.detail = nn.ModuleList([DetailStage(cin, cout, norm) for cin, cout in zip((IN_CHANNELS, *d[:-1]), d)])
        dim = config.context_dim
        self.embed = nn.Conv2d(d[2], dim, 3, stride=2, padding=1)
        self.context = nn.Sequential(*[
            ContextBlock(dim, config.context_heads, config.mlp_ratio, config.kv_stride)
            for _ in range(config.context_depth)
        ])
        self.context_norm = nn.LayerNorm(dim)
        f = config.fuse_widths
        self.fuse = nn.ModuleList([
            FusionBlock(dim, d[2], f[0], norm),  # 1/16 -> 1/8
            FusionBlock(f[0], d[1], f[1], norm),  # -> 1/4
            FusionBlock(f[1], d[0], f[2], norm),  # -> 1/2
            FusionBlock(f[2], IN_CHANNELS, config.head_width, norm),  # -> full resolution, with the input itself
        ])
        self.head = nn.Sequential(conv_norm_relu(config.head_width, config.head_width, 1, norm),
                                  nn.Conv2d(config.head_width, 1, 1))
        nn.init.zeros_(self.head[-1].weight)  # delta = 0 at start: the untrained refiner is the base exactly
        nn.init.zeros_(self.head[-1].bias)
        register_mean_std(self, config.mean, config.std)

    def init_non_persistent_buffers(self) -> None:
        """Fill the buffers no checkpoint holds (the config's normalisation constants), in place."""
        fill_mean_std(self, self.config.mean, self.config.std)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        H, W = image.shape[-2:]
        dtype = image.dtype if image.is_floating_point() else torch.float32
        x = torch.cat([(image.to(dtype) - self.mean.to(dtype)) / self.std.to(dtype), prob.to(dtype),
                       trimap_one_hot(trimap, dtype)], 1)
        ph, pw = -H % self.stride, -W % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        feats = [x]
        for stage in self.detail:
            feats.append(stage(feats[-1]))
        c = self.context(self.embed(feats[-1]))
        c = self.context_norm(c.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        for block, detail in zip(self.fuse, reversed(feats)):
            c = block(c, detail)
        delta = self.head(c)[..., :H, :W]
        return prob.to(delta.dtype) + delta


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class RefinerConfig:
    """Refiner sizes. ``detail_widths``: ConvStream channels at 1/2, 1/4, 1/8; ``context_dim``,
    ``context_depth``, ``context_heads``: the attention blocks at 1/16 (keys and values pooled
    ``kv_stride`` times more); ``fuse_widths``: fusion channels at 1/8, 1/4, 1/2;
    ``head_width``: channels at full resolution; ``norm``: a :class:`ChannelNorm` after every
    convolution. ``mean``/``std`` normalise RGB in [0, 1]; ``input_size``: the working side
    the weights were trained at."""

    detail_widths: tuple[int, ...] = (32, 48, 96)
    context_dim: int = 192
    context_depth: int = 4
    context_heads: int = 6
    mlp_ratio: float = 2.0
    kv_stride: int = 2
    fuse_widths: tuple[int, ...] = (96, 48, 32)
    head_width: int = 16
    norm: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 1024

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, for storing in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RefinerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        return cls(**config_kwargs(d, cls))


REFINER_MODELS: dict[str, RefinerConfig] = {
    "refiner": RefinerConfig(),
    "tiny": RefinerConfig(detail_widths=(8, 8, 16), context_dim=16, context_depth=1, context_heads=2,
                          fuse_widths=(16, 8, 8), head_width=8, norm=False),
}
"""Named refiner configurations: ``refiner`` (the default), ``tiny`` (tests)."""

DEFAULT_REFINER = "refiner"


# --------------------------------------------------------------------------- entry points


def refiner_config(name_or_config: str | RefinerConfig = DEFAULT_REFINER) -> RefinerConfig:
    """The config of a :data:`REFINER_MODELS` name (or the config itself); UsageError for an unknown name."""
    if isinstance(name_or_config, RefinerConfig):
        return name_or_config
    try:
        return REFINER_MODELS[name_or_config]
    except KeyError:
        from ben_cli.errors import UsageError

        raise UsageError(f"unknown refiner model {name_or_config!r}; known: {', '.join(REFINER_MODELS)}") from None


def build_refiner(name_or_config: str | RefinerConfig = DEFAULT_REFINER) -> Refiner:
    """A randomly initialised refiner (delta head at zero: it returns the base probability)."""
    return Refiner(refiner_config(name_or_config))


ARCH = Arch("refiner", RefinerConfig, build_refiner, Refiner)
"""The ``"refiner"`` architecture, listed by :data:`ben_cli.models.registry.ARCHS`."""
