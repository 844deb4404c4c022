"""Where files live: local paths, and fsspec URLs (``s3://``, ``gs://``, ``file://``, ``memory://``, ...).

A location is a local path (``str`` or :class:`~pathlib.Path`, handled by the
standard library) or a URL, a string that starts with a scheme and ``://``
(or an fsspec chain such as ``simplecache::s3://...``), handled by fsspec. A
``file://`` URL is the local disk reached through fsspec, so it runs exactly
the code object stores run. fsspec and its backends are imported on first use
and are optional: ``pip install "ben_cli[s3]"`` (s3fs), ``"ben_cli[gcs]"`` (gcsfs),
``"ben_cli[azure]"`` (adlfs). A missing backend is a :class:`~ben_cli.errors.UsageError`
that names the extra.

Writes are atomic everywhere: on the local disk a hidden temp file is renamed
into place (:func:`ben_cli.io.write.atomic_write_bytes`); on object stores (and
``memory://``) one put is atomic by itself; other fsspec file systems (sftp,
...) get a hidden temp file and a move.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ben_cli.errors import UsageError, install_hint

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+(://|::)")
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure",
           "adl": "azure"}
_BUCKETED = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})  # a path's first part is a bucket
_ONE_PUT_IS_ATOMIC = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "oss", "memory"})


def is_url(location: object) -> bool:
    """True for a string that fsspec should open (``s3://b/k``, ``file:///tmp/x``, ``simplecache::s3://...``)."""
    return isinstance(location, str) and _URL_RE.match(location) is not None


def url_fs(url: str) -> tuple[Any, str]:
    """(fsspec file system, path in it without the protocol) of ``url``.

    Raises :class:`UsageError` when fsspec, or the backend of the URL's scheme, is
    not installed (naming the extra to install), or the scheme is unknown.
    """
    scheme = url.split("://", 1)[0].split("::", 1)[0].lower()
    try:
        import fsspec
    except ImportError:
        hint = install_hint(_EXTRAS[scheme]) if scheme in _EXTRAS else "pip install fsspec"
        raise UsageError(f"{scheme}:// paths need fsspec: {hint}") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError:
        extra = _EXTRAS.get(scheme)
        hint = install_hint(extra) if extra else "install the fsspec backend of that scheme"
        raise UsageError(f"{scheme}:// paths need their fsspec backend: {hint}") from None
    except ValueError as e:
        raise UsageError(f"cannot open {url}: {e}") from None


def protocol(fs: Any) -> str:
    """The first protocol name of a file system (``s3``, ``gcs``, ``file``, ``memory``)."""
    p = fs.protocol
    return p if isinstance(p, str) else p[0]


def is_local_fs(fs: Any) -> bool:
    """True when ``fs`` is the local disk (``file://`` URLs)."""
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def join_url(base: str, relative: str | PurePosixPath) -> str:
    """``base`` + ``/`` + a relative POSIX path (``s3://b/out`` + ``x/a.png`` -> ``s3://b/out/x/a.png``)."""
    rel = str(relative)
    return base if rel in ("", ".") else base.rstrip("/") + "/" + rel


def read_url_bytes(url: str) -> bytes:
    """The whole content of the file at ``url`` (FileNotFoundError, PermissionError, OSError as open() raises)."""
    fs, path = url_fs(url)
    if fs.isdir(path):
        raise IsADirectoryError(path)
    return fs.cat_file(path)


def is_file(location: str | os.PathLike[str]) -> bool:
    """True when the local path or URL names an existing file."""
    if is_url(location):
        fs, path = url_fs(str(location))
        return bool(fs.isfile(path))
    return os.path.isfile(location)


def write_url_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` all at once (see the module docstring); the local disk is handled by the caller."""
    fs, path = url_fs(url)
    if protocol(fs) in _ONE_PUT_IS_ATOMIC:
        fs.pipe_file(path, data)
        return
    parent, _, name = path.rstrip("/").rpartition("/")
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{name[:40]}.ben-{secrets.token_hex(4)}.tmp" if parent else f".{name[:40]}.ben-tmp"
    try:
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):  # the temp file may never have been written
            fs.rm_file(tmp)
        raise


@dataclass(frozen=True)
class Place:
    """A folder or file opened with fsspec: its file system, its path there and the URL as the user wrote it."""

    fs: Any
    path: str  # without the protocol: "bucket/photos", "/tmp/photos"
    url: str  # as given, without a trailing slash: "s3://bucket/photos"

    @classmethod
    def of(cls, url: str) -> Place:
        fs, path = url_fs(url)
        return cls(fs, path.rstrip("/") or path, url.rstrip("/") or url)

    @property
    def protocol(self) -> str:
        return protocol(self.fs)

    @property
    def name(self) -> str:
        """The last part of the path (a bucket root gives the bucket's name)."""
        return PurePosixPath(self.path).name or self.path.strip("/")

    def exists(self) -> bool:
        with self.denied():
            return bool(self.fs.exists(self.path))

    def is_file(self) -> bool:
        with self.denied():
            return bool(self.fs.isfile(self.path))

    def is_dir(self) -> bool:
        with self.denied():
            return bool(self.fs.isdir(self.path))

    def missing_bucket(self) -> str | None:
        """The bucket (container) of this object-store place when it does not exist; None otherwise."""
        if self.protocol not in _BUCKETED:
            return None
        bucket = self.path.lstrip("/").split("/", 1)[0]
        with self.denied():
            return None if not bucket or self.fs.exists(bucket) else bucket

    @contextlib.contextmanager
    def denied(self) -> Iterator[None]:
        """A store's refusal (wrong or missing credentials, no permission) as one :class:`UsageError` naming
        this place."""
        try:
            yield
        except PermissionError as e:
            reason = str(e).strip() or "permission denied"
            raise UsageError(f"{self.url}: access denied ({reason}); check the credentials for {self.protocol}:// "
                             "(for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or a profile)") from None

    def relative(self, path: str) -> PurePosixPath | None:
        """``path`` (of this file system) relative to this place, or None when it lies elsewhere."""
        root = self.path.rstrip("/") + "/"
        return PurePosixPath(path[len(root):]) if path.startswith(root) else None

    def contains(self, other: Place) -> bool:
        """True when ``other`` is this place or lies inside it (same file system)."""
        if other.protocol != self.protocol:
            return False
        return other.path == self.path or self.relative(other.path) is not None

    def files(self) -> list[str]:
        """Every file below this place, recursively (paths of its file system); [] when there is none."""
        if not self.exists():
            return []
        with self.denied():
            return list(self.fs.find(self.path, withdirs=False))

    def heads(self, paths: list[str], size: int) -> list[bytes | None]:
        """The first ``size`` bytes of each file, fetched together; None for a file that cannot be read."""
        if not paths:
            return []
        got = self.fs.cat_ranges(paths, [0] * len(paths), [size] * len(paths), on_error="return")
        return [g if isinstance(g, bytes) else None for g in got]


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a local file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
