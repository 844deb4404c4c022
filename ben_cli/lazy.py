"""Names imported on first use: ``"package.module:attr"`` strings, the entries of the plain registries
(:data:`ben_cli.models.registry.ARCHS`, :data:`ben_cli.refine.REFINERS`), resolved by one function."""

from __future__ import annotations

import importlib
from typing import Any


def resolve(entry: str) -> Any:
    """``"package.module:attr"`` -> that attribute (its module imported); ``"package.module"`` -> the module.

    Raises ``ModuleNotFoundError`` when the module is missing, ``AttributeError`` when it has no ``attr``.
    """
    module, _, attr = entry.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attr) if attr else loaded


def import_if_present(module: str) -> bool:
    """Import ``module``; False when that module itself does not exist (a missing dependency of it still raises)."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        return False
    return True
