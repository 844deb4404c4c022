"""A copy of a network on another device, for one model replica per device."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
from torch import nn

from ben_cli.models.cache import empty_caches_memo


def copy_to_device(module: nn.Module, device: torch.device) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are copied straight to ``device``
    (no second copy on the source device on the way); its caches of derived constants
    (:func:`ben_cli.models.cache.module_cache`) start empty. ``module`` is left as it is."""
    memo: dict[int, Any] = empty_caches_memo(module)
    for t in itertools.chain(module.parameters(), module.buffers()):
        if id(t) not in memo:
            data = t.detach().to(device, copy=True)
            memo[id(t)] = nn.Parameter(data, t.requires_grad) if isinstance(t, nn.Parameter) else data
    return copy.deepcopy(module, memo)


def inference_copy(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``model`` on ``device`` with its floating-point parameters and buffers in ``dtype``.

    When any of them is in another dtype, a copy is cast (a caller who keeps using its float32
    model is not handed a half-precision one); otherwise the model itself is moved.
    """
    tensors = itertools.chain(model.parameters(), model.buffers())
    if any(t.is_floating_point() and t.dtype != dtype for t in tensors):
        model = copy.deepcopy(model)
    return model.to(device=device, dtype=dtype)


__all__ = ["copy_to_device", "inference_copy"]
