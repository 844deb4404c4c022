"""Per-module caches of input-independent constants (gather plans, masks, position embeddings).

They depend only on a grid size, a device and a dtype, so each is built once and kept
on the module. Building one inside a compiled graph would put its CPU work (``arange``,
host-to-device copies) into every call, and CUDA graphs refuse graphs with CPU work:
:meth:`ben_cli.models.ben.BenBase.prepare` builds them eagerly before compiling, and the
traced graph only reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from torch import nn

T = TypeVar("T")

CACHE_SIZE = 16  # entries kept per module: (kind, grid size, device, dtype) combinations in use
CACHE_ATTRIBUTE = "_constant_cache"  # the entry of ``module.__dict__`` that holds a module's cache


def module_cache(module: nn.Module, key: Hashable, build: Callable[[], T]) -> T:
    """The constant ``key`` of ``module``, from its cache or built once with ``build()``.

    Thread safety without a lock: a published cache dict is never changed. A miss
    builds the complete entry first, then publishes a new dict (the old entries plus
    this one, the oldest dropped beyond :data:`CACHE_SIZE`) with one attribute
    assignment; a reader holds either the old dict or the new one, both complete. Two
    threads missing at once both build the same entry, and one of the two is kept.
    The cache lives in ``module.__dict__`` (not a buffer): it is never saved, and
    ``module.to(...)`` does not move it (the device and dtype are part of the key).
    """
    cache: dict = module.__dict__.get(CACHE_ATTRIBUTE, {})
    entry = cache.get(key)
    if entry is None:
        entry = build()
        fresh = {k: v for k, v in cache.items() if k != key}
        while len(fresh) >= CACHE_SIZE:
            del fresh[next(iter(fresh))]
        fresh[key] = entry
        module.__dict__[CACHE_ATTRIBUTE] = fresh
    return entry


def empty_caches_memo(module: nn.Module) -> dict[int, Any]:
    """A ``copy.deepcopy`` memo in which the cache of ``module`` and of each of its submodules
    is a fresh empty dict: ``copy.deepcopy(module, empty_caches_memo(module))`` starts with no
    derived constant (none is copied; a copy for another device builds its own there)."""
    return {id(cache): {} for sub in module.modules()
            if (cache := sub.__dict__.get(CACHE_ATTRIBUTE)) is not None}
