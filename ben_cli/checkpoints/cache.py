"""A safetensors copy of each pickled checkpoint, so that later runs map the weights instead of unpickling them.

The first :func:`ben_cli.checkpoints.load.read_checkpoint` of a ``.pth``/``.pt``
file writes what it read (the tensors in our layout, contiguous, their dtypes
kept, and what the file says about itself) to ``<file name>.cache.safetensors``
beside it: ``BEN2_Base.pth`` -> ``BEN2_Base.pth.cache.safetensors``. The full
name keeps ``x.pt`` and ``x.pth`` apart, and the file sorts next to its source,
so the space it takes is in plain sight. Later reads map the cache (safetensors,
memory-mapped, copy-on-write) and never unpickle the source.

- The cache's header records its source: resolved path, size and ``mtime_ns``,
  taken before the source was read, and a CRC-32 of its own tensors' bytes (in
  key order), checked when it is opened: about 0.2 s for BEN2 Base's 380 MB,
  pages the model reads anyway. Any difference (a source changed, bytes of the
  cache flipped), a damaged or truncated cache, or another cache version: the
  cache is ignored and written again.
- Written atomically (a hidden temporary file, flushed to disk, then renamed).
  When the source's folder is not writable, the cache goes to
  ``cache_dir()/converted/<hash of the resolved path>-<name>.cache.safetensors``;
  when that fails too, the checkpoint is read without a cache. Caching never
  raises.
- ``$BEN_NO_WEIGHTS_CACHE=1`` turns it off (neither read nor written).
- Cache files are never taken for checkpoints of their own when a folder is
  searched (:func:`is_cache_file`).

Only this module reads and writes cache files; it knows nothing of checkpoint
formats: ``info`` is an opaque JSON-able dict kept for the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CACHE_SUFFIX = ".cache.safetensors"
DISABLE_ENV = "BEN_NO_WEIGHTS_CACHE"
CACHE_VERSION = 2  # 2: with the tensors' CRC-32 (version 1 caches are rebuilt once)
_HEADER_KEY = "ben_cli_cache"  # safetensors metadata entry: JSON {"cache_version", "source", "crc32", "info"}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """What identifies a source file's content: resolved path, size in bytes, modification time (ns)."""

    path: str
    size: int
    mtime_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}


def enabled() -> bool:
    """False when ``$BEN_NO_WEIGHTS_CACHE`` is set to anything but ``""``, ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("", "0", "false", "no", "off")


def is_cache_file(path: str | os.PathLike[str]) -> bool:
    """True for a file named like a cache (``*.cache.safetensors``, any case)."""
    return Path(path).name.lower().endswith(CACHE_SUFFIX)


def source_of(path: str | os.PathLike[str]) -> Source:
    """The identity of ``path`` now (OSError when it cannot be stat'ed)."""
    resolved = Path(path).resolve()
    st = resolved.stat()
    return Source(str(resolved), st.st_size, st.st_mtime_ns)


def cache_paths(path: str | os.PathLike[str]) -> list[Path]:
    """Where the cache of ``path`` may be, in the order tried: beside the (resolved) file, then the user cache."""
    from ben_cli.paths import cache_dir

    resolved = Path(path).resolve()
    key = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:16]
    return [resolved.with_name(resolved.name + CACHE_SUFFIX),
            cache_dir() / "converted" / f"{key}-{resolved.name}{CACHE_SUFFIX}"]


def load(path: str | os.PathLike[str], source: Source | None = None
         ) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path] | None:
    """(tensors, info, cache path) from a valid cache of ``path``, or None (no cache, stale or damaged).

    The tensors are memory-mapped from the cache file (copy-on-write: changing
    them never changes the file). ``source``: the identity to check against
    (default: :func:`source_of` now).
    """
    try:
        source = source or source_of(path)
        candidates = cache_paths(path)
    except (OSError, RuntimeError, ValueError):
        return None
    for cached in candidates:
        got = _load_valid(cached, source)
        if got is not None:
            return got[0], got[1], cached
    return None


def _load_valid(cached: Path, source: Source) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    from safetensors import safe_open

    try:
        if not cached.is_file():
            return None
        with safe_open(str(cached), framework="pt") as f:
            header = json.loads((f.metadata() or {})[_HEADER_KEY])
            if (not isinstance(header, dict) or header.get("cache_version") != CACHE_VERSION
                    or header.get("source") != source.to_dict() or not isinstance(header.get("info"), dict)):
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
        if header.get("crc32") != checksum(tensors):
            _log.debug("ignoring weights cache %s: its tensors' checksum differs", cached)
            return None
    except Exception as e:  # damaged, truncated, unreadable: rebuilt by the caller
        _log.debug("ignoring weights cache %s: %s", cached, e)
        return None
    if not tensors:
        return None
    return tensors, header["info"]


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """The CRC-32 of the tensors' bytes, in key order (8 hex digits): a flipped byte changes it."""
    import zlib

    import torch

    crc = 0
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        crc = zlib.crc32(key.encode(), crc)
        if t.numel():
            crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def info_in_header(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The caller's ``info`` from a safetensors header, when the file is a cache (whatever its source now)."""
    try:
        header = json.loads(metadata[_HEADER_KEY])
        return header["info"] if isinstance(header["info"], dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def store(path: str | os.PathLike[str], source: Source, tensors: dict[str, torch.Tensor],
          info: dict[str, Any]) -> Path | None:
    """Write the cache of ``path`` (beside it, else in the user cache); its path, or None when nowhere worked.

    ``source``: the identity of ``path`` taken *before* it was read, so that a
    file changed while it was read is cached as stale. ``info`` must survive a
    JSON round trip unchanged (else nothing is written). Never raises an
    Exception (Ctrl-C still interrupts, leaving no temporary file).
    """
    try:
        if json.loads(json.dumps(info, allow_nan=False)) != info:
            return None
        flat = _storable(tensors)
        header = {_HEADER_KEY: json.dumps({"cache_version": CACHE_VERSION, "source": source.to_dict(),
                                           "crc32": checksum(flat), "info": info})}
        candidates = cache_paths(path)
        mode = os.stat(path).st_mode & 0o666  # as readable as its source
    except Exception as e:
        _log.debug("not caching %s: %s", path, e)
        return None
    for cached in candidates:
        try:
            _write_atomically(cached, flat, header, mode)
            return cached
        except Exception as e:  # read-only folder, full disk, ...: try the next place
            _log.debug("cannot write weights cache %s: %s", cached, e)
    return None


def _storable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory with another (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        storage = v.untyped_storage()
        if storage.nbytes() and storage.data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


def _write_atomically(target: Path, tensors: dict[str, torch.Tensor], header: dict[str, str], mode: int) -> None:
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:60]}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        with open(tmp, "r+b") as f:  # on disk before the rename: a power cut never leaves a valid-looking cache
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

