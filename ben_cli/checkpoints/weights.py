"""Finding checkpoint files: explicit path, $BEN_WEIGHTS, ./weights/, the user
cache, then a download of the official file from the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

from ben_cli.errors import WeightsNotFoundError
from ben_cli.models.registry import DEFAULT_MODEL, get_entry


def cache_dir() -> Path:
    """User cache folder: $BEN_CACHE_DIR, else $XDG_CACHE_HOME/ben, else ~/.cache/ben."""
    if os.environ.get("BEN_CACHE_DIR"):
        return Path(os.environ["BEN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ben"


def _candidates(filename: str) -> list[tuple[str, Path]]:
    """(where, path) for the official file and its .safetensors conversion, ./weights/ first."""
    names = [filename, f"{Path(filename).stem}.safetensors"]
    return [(where, d / n) for where, d in (("weights/", Path.cwd() / "weights"), ("cache", cache_dir()))
            for n in names]


def search_locations(model: str = DEFAULT_MODEL) -> list[tuple[str, Path]]:
    """(where, path) pairs in search order, for ``ben weights`` and error messages."""
    entry = get_entry(model)
    out: list[tuple[str, Path]] = []
    env = os.environ.get("BEN_WEIGHTS")
    if env:
        out.append(("$BEN_WEIGHTS", Path(env).expanduser()))
    if entry.filename:
        out += _candidates(entry.filename)
    return out


def find_weights(explicit: str | Path | None = None, model: str = DEFAULT_MODEL, *,
                 download: bool = True) -> Path:
    """The checkpoint to use: ``explicit``, $BEN_WEIGHTS, ./weights/, cache, else download.

    Raises WeightsNotFoundError (one line: which file, where to put it).
    """
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"weights file not found: {p}")
        return p
    env = os.environ.get("BEN_WEIGHTS")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"$BEN_WEIGHTS points to a missing file: {p}")
        return p
    entry = get_entry(model)
    if entry.filename is None:
        raise WeightsNotFoundError(f"model {model!r} has no official checkpoint; pass --weights")
    for _, p in _candidates(entry.filename):
        if p.is_file():
            return p
    if download:
        return download_weights(model)
    raise WeightsNotFoundError(_missing_message(entry.filename))


def _missing_message(filename: str) -> str:
    return (f"{filename} not found: put it in ./weights/ or {cache_dir()}, or pass --weights PATH "
            f"(or set $BEN_WEIGHTS)")


def download_weights(model: str = DEFAULT_MODEL) -> Path:
    """Download the official checkpoint into the cache (with a progress bar)."""
    entry = get_entry(model)
    if not (entry.filename and entry.repo_id):
        raise WeightsNotFoundError(f"model {model!r} has no downloadable checkpoint")
    target = cache_dir()
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(entry.repo_id, entry.filename, local_dir=target)
    except Exception as e:
        reason = type(e).__name__
        raise WeightsNotFoundError(
            f"{_missing_message(entry.filename)}; download from {entry.repo_id} failed ({reason})"
        ) from None
    return Path(path)
