"""Frozen configuration dataclasses.

Model configs are stored inside every checkpoint that ``ben`` writes
(``to_dict``/``from_dict``), so a file alone rebuilds its model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

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
    drop_path_rate: float = 0.2  # stochastic depth in training, as in the official model


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
        backbone = SwinConfig(**_tuples(d.pop("backbone", {}), SwinConfig))
        return cls(backbone=backbone, **_tuples(d, cls))


def _tuples(d: dict[str, Any], cls: type) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@dataclass(frozen=True)
class TrimapConfig:
    """Confidence trimap thresholds (paper section 4.2)."""

    t_low: float = 0.10
    t_high: float = 0.90
    t_min: float = 0.03
    t_max: float = 0.97
    step: float = 0.001
    min_gray: int | None = None  # None: 60,000 at 1024x1024, scaled by area
