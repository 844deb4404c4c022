"""User folders: where ben keeps downloaded weights, converted checkpoints and compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """User cache folder: $BEN_CACHE_DIR, else $XDG_CACHE_HOME/ben, else ~/.cache/ben."""
    if os.environ.get("BEN_CACHE_DIR"):
        return Path(os.environ["BEN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ben"


def weights_dir() -> Path:
    """The project-local weights folder searched before the cache: ``./weights``."""
    return Path.cwd() / "weights"
