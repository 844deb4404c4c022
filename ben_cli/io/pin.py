"""Pinning: the source file name recorded in every output, and read back so names never change between runs.

Every output ``ben`` writes records its input's file name:

- PNG: an ``iTXt`` chunk with keyword ``ben:source`` (:func:`source_chunk`), before the image data;
- JPEG: the comment ``ben:source=<name>`` (:func:`jpeg_comment`);
- video: the container metadata tag :data:`VIDEO_SOURCE_TAG` (``ben_source``);
- frame folder: its frames, each an image with its own record.

:func:`read_output_source` reads the record back from any of them (one reader for
every output kind; videos need PyAV, imported on first use: without it, or for a
file it cannot read, an output simply has no record). The planner lists the
records of an output folder (:func:`existing_outputs`, or :func:`list_outputs` for
a tree behind an fsspec URL) so that :func:`~ben_cli.io.name_outputs` keeps the
names of earlier outputs (see :mod:`ben_cli.io.naming`).
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import BinaryIO

from PIL import Image

from ben_cli.io.fs import Place
from ben_cli.io.kinds import IMAGE_EXTS, SUFFIX

VIDEO_SOURCE_TAG = "ben_source"
"""Container metadata key holding a video output's source file name (the PNG outputs' ``ben:source``)."""

_SOURCE_KEY = b"ben:source"
_JPEG_PREFIX = "ben:source="
_HEAD_BYTES = 1 << 16  # what is read of a remote output to find its source record


# --------------------------------------------------------------------------- writing the record


def source_chunk(source_name: str) -> tuple[bytes, bytes]:
    """The (type, data) of the PNG iTXt chunk that records an output's source file name."""
    return b"iTXt", _SOURCE_KEY + b"\0\0\0\0\0" + source_name.encode("utf-8")


def jpeg_comment(source_name: str) -> bytes:
    """The JPEG comment that records an output's source file name (``ben:source=<name>``)."""
    return f"{_JPEG_PREFIX}{source_name}".encode()


# --------------------------------------------------------------------------- reading it back


def read_output_source(path: str | os.PathLike[str]) -> str | None:
    """The source file name recorded in an output ``ben`` wrote, of any kind, or None.

    PNG (its ``ben:source`` text chunk; only the chunks before the image data are read)
    and JPEG (its comment); a video (its :data:`VIDEO_SOURCE_TAG` metadata, read with
    PyAV; never tried for an image extension); a frame folder (its first frame's record).
    None for a file without a record, one that cannot be read, or a video when PyAV is
    not installed.
    """
    path = Path(path)
    if path.is_dir():
        first = min((p for p in _entries(path) if p.name.startswith("frame_")), default=None)
        return read_output_source(first) if first is not None else None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(0)
            if _is_image(head):
                return output_source(f)
    except OSError:
        return None
    return None if path.suffix.lower() in IMAGE_EXTS else _video_source(path)


def output_source(f: BinaryIO | bytes) -> str | None:
    """The ``ben:source`` record of an image output (PNG or JPEG) given as an open binary file or its
    first bytes, or None."""
    if isinstance(f, (bytes, bytearray)):
        f = io.BytesIO(f)
    head = f.read(8)
    if head.startswith(b"\xff\xd8"):
        f.seek(0)
        return _jpeg_source(f)
    if head != b"\x89PNG\r\n\x1a\n":
        return None
    for _ in range(64):
        header = f.read(8)
        if len(header) < 8:
            return None
        length, ctype = int.from_bytes(header[:4], "big"), header[4:]
        if ctype in (b"IDAT", b"IEND") or length > 1 << 20:
            return None
        body = f.read(length + 4)[:length]
        if ctype == b"iTXt" and body.startswith(_SOURCE_KEY + b"\0"):
            rest = body[len(_SOURCE_KEY) + 1 :]
            if rest[:2] != b"\0\0":  # compressed text: never written by us
                return None
            _lang, _, rest = rest[2:].partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            return text.decode("utf-8", "replace")
    return None


def _is_image(head: bytes) -> bool:
    return head.startswith(b"\xff\xd8") or head == b"\x89PNG\r\n\x1a\n"


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _jpeg_source(f: BinaryIO) -> str | None:
    try:
        with Image.open(f) as im:
            comment = im.info.get("comment", b"")
    except Exception:
        return None
    text = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
    return text[len(_JPEG_PREFIX) :] if text.startswith(_JPEG_PREFIX) else None


def _video_source(path: Path) -> str | None:
    """The :data:`VIDEO_SOURCE_TAG` of a video container (PyAV, imported here: it is optional), or None."""
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(str(path), "r") as container:
            return next((v for k, v in container.metadata.items() if k.lower() == VIDEO_SOURCE_TAG), None)
    except Exception:  # not a container PyAV reads: no record
        return None


# --------------------------------------------------------------------------- the records of an output folder


def existing_outputs(folder: PurePath, suffixes: Mapping[str, str], *,
                     defaults: Mapping[str, str] = SUFFIX) -> dict[str, str]:
    """``{base: source file name}`` of the outputs that ``ben`` wrote in the local ``folder`` (one listing).

    Files and folders ending in one of ``suffixes`` or ``defaults`` (the image kinds' by
    default, so a ``.png`` cutout of an earlier run counts when this run writes ``.jpg``;
    video outputs pass ``{}``: they never share a name with images) are read with
    :func:`read_output_source`; for each base the first record in name order is kept.
    """
    ends = output_ends(suffixes, defaults)
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.name.lower().endswith(ends) and not e.name.startswith(".")]
    except OSError:
        return {}
    found: dict[str, str] = {}
    for name in sorted(names):
        base = strip_suffix(name, ends)
        if base in found:
            continue
        source = read_output_source(Path(folder) / name)
        if source is not None:
            found[base] = source
    return found


@dataclass(frozen=True)
class OutputListing:
    """One listing of an output tree behind an fsspec URL, paths relative to its root.

    ``files``: every file there (hidden ones aside). ``records``: for each folder,
    ``{base: source file name}`` of the outputs that ``ben`` wrote there (read from
    the first bytes of each, fetched together), what :func:`~ben_cli.io.name_outputs` needs.
    """

    files: frozenset[PurePosixPath]
    records: Mapping[PurePosixPath, Mapping[str, str]]

    def sources(self, folder: PurePath, suffixes: Mapping[str, str] | None = None) -> Mapping[str, str]:
        """``{base: source}`` of the earlier outputs in ``folder`` (the ``existing`` of ``name_outputs``)."""
        return self.records.get(PurePosixPath(folder), {})


def list_outputs(place: Place, suffixes: Mapping[str, str] | None = None) -> OutputListing:
    """List the output tree at ``place`` once and read the source record of its image outputs.

    A folder holding several kinds of one output is asked for one record (the first
    file in name order, the next only when that one has none), as the local listing does.
    """
    ends = output_ends(suffixes or {})
    files: set[PurePosixPath] = set()
    pending: dict[tuple[PurePosixPath, str], list[str]] = defaultdict(list)
    for path in sorted(place.files()):
        rel = place.relative(path)
        if rel is None or any(part.startswith(".") for part in rel.parts):
            continue
        files.add(rel)
        if rel.name.lower().endswith(ends):
            pending[rel.parent, strip_suffix(rel.name, ends)].append(path)
    records: dict[PurePosixPath, dict[str, str]] = defaultdict(dict)
    while pending:
        keys = list(pending)
        heads = place.heads([pending[k][0] for k in keys], _HEAD_BYTES)
        for key, head in zip(keys, heads, strict=True):
            source = output_source(head) if head is not None else None
            if source is not None:
                records[key[0]][key[1]] = source
            if source is not None or len(pending[key]) == 1:
                del pending[key]
            else:
                pending[key].pop(0)
    return OutputListing(frozenset(files), dict(records))


def output_ends(suffixes: Mapping[str, str], defaults: Mapping[str, str] = SUFFIX) -> tuple[str, ...]:
    """The lower-case file endings of every output kind (``defaults``, then ``suffixes``)."""
    return tuple(dict.fromkeys(s.lower() for s in (*defaults.values(), *suffixes.values())))


def strip_suffix(name: str, suffixes: Iterable[str]) -> str:
    """The base of an output file name: ``a.alpha.png`` -> ``a``, ``a.png`` -> ``a`` (suffix ``""``: ``a`` -> ``a``)."""
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: len(name) - len(suffix)]
    return name
