"""The normalisation constants a network keeps as non-persistent buffers ``mean`` and ``std`` (1, 3, 1, 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def register_mean_std(module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """Give ``module`` buffers ``mean`` and ``std`` of shape (1, 3, 1, 1), kept out of its checkpoints."""
    module.register_buffer("mean", torch.empty(1, 3, 1, 1), persistent=False)
    module.register_buffer("std", torch.empty(1, 3, 1, 1), persistent=False)
    fill_mean_std(module, mean, std)


def fill_mean_std(module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """Write ``mean`` and ``std`` into the module's buffers in place (where they live: CPU, GPU or meta)."""
    with torch.no_grad():
        module.get_buffer("mean").copy_(torch.tensor(mean).view(1, 3, 1, 1))
        module.get_buffer("std").copy_(torch.tensor(std).view(1, 3, 1, 1))
