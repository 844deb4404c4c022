"""What our checkpoint files hold: the format's name and version, its metadata keys, and
:class:`Checkpoint`, a state dict with what its file says about it (see :mod:`ben_cli.checkpoints.load`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

FORMAT = "ben_cli"
FORMAT_VERSION = 2
CONFIG_META_KEY = "ben_cli_config"  # safetensors metadata: the config as JSON (since version 1)
METADATA_META_KEY = "ben_cli_metadata"  # safetensors metadata: the free metadata as JSON (since version 2)
TRAIN_STATE_FORMAT = "ben_cli.train_state"  # a training run's resume state (``last.state.pt``): no weights to run
RUN_CONFIG, RUN_BEST = "config.toml", "best.safetensors"  # what makes a folder a training run, and its weights


@dataclass(frozen=True)
class Checkpoint:
    """A state dict in our layout and what the file says about it.

    ``config``: the stored model config (None for official and bare files);
    ``official``: the tensors were in the official layout (converted on reading);
    ``arch``: architecture name ("base" for files that do not say);
    ``metadata``: free entries saved with the weights (empty when none);
    ``version``: our format version (0: not written by ben, 1: first release).
    """

    state_dict: dict[str, torch.Tensor]
    config: Any = None
    official: bool = False
    arch: str = "base"
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = 0
