"""Training BEN networks: the paper's loss, data, the shared loop (``ben train``).

- :mod:`ben_cli.train.config`: :class:`TrainConfig` (frozen; TOML in and out) and ``lr_at``;
- :mod:`ben_cli.train.loss`: StructureLoss and the combined loss of section 3.2;
- :mod:`ben_cli.train.data`: image/mask pairs, augmentation, the resumable sample order;
- :mod:`ben_cli.train.loop`: the loop shared by every network (DDP, resume, checkpoints, log);
- :mod:`ben_cli.train.base`: BEN Base (initialisation, validation, ``train_base``).

Imports nothing heavy at package import; import the submodules.
"""

from __future__ import annotations

__all__ = ["base", "config", "data", "loop", "loss"]
