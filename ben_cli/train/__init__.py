"""Training BEN networks: the paper's loss, data, the shared loop (``ben train``).

- :mod:`ben_cli.train.config`: :class:`TrainConfig` (frozen; TOML in and out), its shared checks, ``lr_at``;
- :mod:`ben_cli.train.loss`: StructureLoss and the combined loss of section 3.2;
- :mod:`ben_cli.train.data`: image/mask pairs, augmentation, the resumable sample order;
- :mod:`ben_cli.train.loop`: the loop shared by every network, with its parts
  :mod:`~ben_cli.train.runtime` (torchrun/DDP, ranks), :mod:`~ben_cli.train.state`
  (checkpoints, resume state, RNG), :mod:`~ben_cli.train.signals` (SIGINT/SIGTERM),
  :mod:`~ben_cli.train.log` (``log.jsonl``, ``loss.png``) and :mod:`~ben_cli.train.progress`;
- :mod:`ben_cli.train.base`: BEN Base (initialisation, validation, ``train_base``);
- :mod:`ben_cli.train.refiner`: the refiner network (``train_refiner``), with its parts
  ``refiner_config``, ``refiner_cache``, ``refiner_data``, ``refiner_step``, ``refiner_validate``.

Imports nothing heavy at package import; import the submodules.
"""

from __future__ import annotations

__all__ = [
    "base", "config", "data", "log", "loop", "loss", "progress", "refiner", "refiner_cache", "refiner_config",
    "refiner_data", "refiner_step", "refiner_validate", "runtime", "signals", "state",
]
