"""Configuration of ``ben train refiner``: :class:`RefinerTrainConfig` and the weights of its loss.

The same precedence as ``ben train base`` (:func:`ben_cli.train.config.resolve_config`): the
defaults below < ``RUN/config.toml`` of a run being resumed < ``--config FILE.toml`` < options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from ben_cli.errors import OptionError, UsageError
from ben_cli.train.config import TrainConfig, _typed, check_shared, resolve_config

CACHE_DIR = "cache"  # inside the run folder, unless the config's cache says otherwise
REFINER_METRICS = ("sad", "mse", "grad", "mae")
"""Validation errors in the gray band (lower is better); ``best_metric`` is one of them."""
REFINER_LR = {"refiner": 5e-4, "tiny": 1e-3}
FINE_TUNE_LR = 1e-4


@dataclass(frozen=True)
class RefinerLossConfig:
    """Weights of the refiner's loss: ``l1`` on alpha and ``lap`` on the Laplacian pyramid of the
    error (``lap_levels`` band-pass levels), both over the gray band."""

    l1: float = 1.0
    lap: float = 1.0
    lap_levels: int = 5


@dataclass(frozen=True)
class RefinerTrainConfig(TrainConfig):
    """:class:`TrainConfig` for ``ben train refiner``: ``model`` names a refiner configuration
    (``refiner``, ``tiny``), ``init`` a refiner checkpoint to fine-tune; ``base_weights`` is the
    frozen base (``None``: the default model's file, searched like ``ben erase``'s); ``cache`` the
    folder of cached base predictions (``None``: ``RUN/cache``); ``zoom_prob`` the share of
    samples cut at the image's own resolution (:func:`zoomed_crop`); ``predictions`` the name
    of a folder beside ``im/`` and ``gt/`` (in ``data`` and ``val``) holding the base's
    probability maps, used instead of running a base (:func:`prediction_logits`)."""

    model: str = "refiner"
    pretrained_backbone: str = ""
    best_metric: str = "sad"
    loss: RefinerLossConfig = field(default_factory=RefinerLossConfig)  # type: ignore[assignment]
    base_weights: str | None = None
    cache: str | None = None
    zoom_prob: float = 0.5
    predictions: str | None = None

    def resolved(self) -> RefinerTrainConfig:
        """Validated copy with ``lr`` (5e-4; 1e-3 for tiny; 1e-4 with ``init``) and ``warmup_steps`` filled in."""
        lr = self.lr if self.lr is not None else (FINE_TUNE_LR if self.init else REFINER_LR.get(self.model, 5e-4))
        return TrainConfig.resolved(replace(self, lr=lr))  # type: ignore[return-value]

    def check(self) -> None:
        """The refiner's models, metrics and options, then :func:`~ben_cli.train.config.check_shared`."""
        from ben_cli.models.refiner import REFINER_MODELS

        if self.model not in REFINER_MODELS:
            raise OptionError("model", f"unknown refiner model {self.model!r}; known: {', '.join(REFINER_MODELS)}")
        if self.best_metric not in REFINER_METRICS:
            raise OptionError("best_metric",
                              f"unknown metric {self.best_metric!r}; known: {', '.join(REFINER_METRICS)}")
        if self.backbone_weights or self.grad_checkpoint:
            raise UsageError("backbone_weights and grad_checkpoint are options of `ben train base` only")
        if self.predictions and self.base_weights:
            raise OptionError("predictions", "{flag} and the base weights exclude each other (the predictions "
                                             "replace the base)")
        if not 0 <= self.zoom_prob <= 1:
            raise OptionError("zoom_prob", f"must be in [0, 1], got {self.zoom_prob}")
        if self.loss.lap_levels < 1 or self.loss.l1 < 0 or self.loss.lap < 0:
            raise UsageError("[loss]: lap_levels must be at least 1, l1 and lap not negative")
        check_shared(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RefinerTrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys and wrong types are a UsageError naming ``source``."""
        d = dict(d)
        loss = _typed(RefinerLossConfig, d.pop("loss", {}) or {}, f"{source} [loss]")
        return cls(loss=RefinerLossConfig(**loss), **_typed(cls, d, source))

    def updated(self, overrides: dict[str, Any], source: str = "options") -> RefinerTrainConfig:
        """A copy with ``overrides`` applied (``loss`` may be a partial dict)."""
        merged = self.to_dict()
        for key, value in overrides.items():
            merged[key] = {**merged["loss"], **value} if key == "loss" and isinstance(value, dict) else value
        return type(self).from_dict(merged, source)


def resolve_refiner_config(options: dict[str, Any], *, config_file: str | os.PathLike[str] | None = None,
                           resume: str | os.PathLike[str] | None = None) -> RefinerTrainConfig:
    """:func:`ben_cli.train.config.resolve_config` for the refiner (same precedence)."""
    cfg = resolve_config(options, config_file=config_file, resume=resume, defaults=RefinerTrainConfig())
    return cfg  # type: ignore[return-value]
