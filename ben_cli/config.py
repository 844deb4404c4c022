"""Frozen configuration dataclasses.

Model configs are stored inside every checkpoint that ``ben`` writes
(``to_dict``/``from_dict``), so a file alone rebuilds its model.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from typing import Any, ClassVar

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer backbone sizes (defaults: Swin-B as in BEN2 Base)."""

    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2  # stochastic depth in training, as in the official model (for_inference drops it)


@dataclass(frozen=True)
class BenConfig:
    """BEN Base (MVANet-style) network configuration.

    ``dim`` is the decoder width, ``head_dim`` the hidden width of the mask head.
    Pool ratios are those of the multi-view localisation (MCLM) and refinement
    (MCRM) blocks. ``mean``/``std`` normalise RGB in [0, 1]; ``input_size`` is
    the side the weights were trained at.
    """

    backbone: SwinConfig = field(default_factory=SwinConfig)
    dim: int = 128
    head_dim: int = 384
    mclm_pool_ratios: tuple[int, ...] = (1, 4, 8)
    mcrm_pool_ratios: tuple[int, ...] = (2, 4, 8)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 1024

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, for storing in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        d = dict(d)
        backbone = SwinConfig(**config_kwargs(d.pop("backbone", {}), SwinConfig))
        return cls(backbone=backbone, **config_kwargs(d, cls))


def config_kwargs(d: dict[str, Any], cls: type) -> dict[str, Any]:
    """A config's stored (JSON) fields as ``cls(**kwargs)`` arguments: lists back to tuples; unknown keys
    are a ValueError."""
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@dataclass(frozen=True)
class TrimapConfig:
    """Confidence trimap thresholds (paper section 4.2); the one place their defaults are written.

    ``t_low``/``t_high`` are Algorithm 1's thresholds, widened by ``step`` per
    round of Algorithm 2 up to ``t_min``/``t_max`` while an image has fewer than
    ``min_gray`` gray pixels (``None``: :meth:`min_gray_for` scales the paper's
    60,000 at 1024x1024 by area).
    """

    PAPER_MIN_GRAY: ClassVar[int] = 60_000  # gray pixels wanted at PAPER_SIZE x PAPER_SIZE
    PAPER_SIZE: ClassVar[int] = 1024

    t_low: float = 0.10
    t_high: float = 0.90
    t_min: float = 0.03
    t_max: float = 0.97
    step: float = 0.001
    min_gray: int | None = None

    def min_gray_for(self, height: int, width: int) -> int:
        """``N_min`` for an H x W map: ``min_gray`` if set, else ``PAPER_MIN_GRAY`` scaled by
        ``height * width / PAPER_SIZE**2``, rounded to nearest, halves to even, in exact
        arithmetic (128x128 -> 937.5 -> 938; 192x256 -> 2812.5 -> 2812)."""
        if self.min_gray is not None:
            return operator.index(self.min_gray)
        return round(Fraction(self.PAPER_MIN_GRAY * height * width, self.PAPER_SIZE * self.PAPER_SIZE))
