"""Pinning: what every output records of its source, read back so that names never change between runs.

Every output ``ben`` writes records its source (a :class:`Pin`): the input's file
name, as the first release did, and since then the source's identity within the
run's inputs (which input root, and the path relative to it), its size and
modification time, and the settings that shaped the output:

- PNG: ``iTXt`` chunks ``ben:source`` (the file name) and ``ben:pin`` (the rest, JSON),
  before the image data (:func:`pin_chunks`);
- JPEG: the comment ``ben:source=<name>``, then ``\\nben:pin=<JSON>`` (:func:`jpeg_comment`);
- WebP: the same text as the attribute ``ben:record`` of a small XMP packet (:func:`webp_xmp`);
- video: the container metadata tags :data:`VIDEO_SOURCE_TAG` (``ben_source``) and
  :data:`VIDEO_PIN_TAG` (``ben_pin``);
- frame folder: its frames, each an image with its own record.

:func:`read_output_pin` reads the record back from any of them (one reader for every
output kind; only the start of an image is read; videos need PyAV, imported on first
use: without it, or for a file it cannot read, an output simply has no record), and
:func:`read_output_source` its file name. An output of the first release reads as a
:class:`Pin` with its name alone. The planner lists the records of an output folder
(:func:`existing_outputs`, or :func:`list_outputs` for a tree behind an fsspec URL) so
that :func:`~ben_cli.io.name_outputs` keeps the names of earlier outputs (see
:mod:`ben_cli.io.naming`) and the engines tell a changed source from a finished one.
A root is recorded as a digest of its resolved path (or URL), never the path itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import BinaryIO
from xml.sax.saxutils import escape, unescape

from ben_cli.io.fs import Place
from ben_cli.io.kinds import IMAGE_EXTS, SUFFIX, VIDEO_EXTS

VIDEO_SOURCE_TAG = "ben_source"
"""Container metadata key holding a video output's source file name (the PNG outputs' ``ben:source``)."""
VIDEO_PIN_TAG = "ben_pin"
"""Container metadata key holding the rest of a video output's :class:`Pin` (JSON, as ``ben:pin``)."""

_SOURCE_KEY = b"ben:source"
_PIN_KEY = b"ben:pin"
_JPEG_PREFIX = "ben:source="
_JPEG_PIN = "\nben:pin="
_HEAD_BYTES = 1 << 16  # what is read of a remote output to find its source record
_RECORDING_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp"})  # the image files ben writes a record in


@dataclass(frozen=True)
class Pin:
    """What an output records of its source.

    ``name``: the source's file name (all the first release recorded). ``root``: which
    input root the source was found under (:func:`root_id`); ``path``: its path relative
    to that root, ``/``-separated; together they tell apart two inputs of one output
    folder that share a name. ``size`` and ``mtime_ns``: the source's when the output
    was made (a changed source is made again). ``settings``: the settings that shaped
    the output (:func:`~ben_cli.plan.plan_run` ``settings``). None: not known.
    """

    name: str
    root: str | None = None
    path: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    settings: str | None = None

    @property
    def stamp(self) -> tuple[int, int] | None:
        """(size, modification time in ns) of the source, or None when not recorded."""
        return None if self.size is None or self.mtime_ns is None else (self.size, self.mtime_ns)

    def changed_since(self, earlier: Pin) -> bool:
        """True when this source's size or modification time differ from the ``earlier`` record's
        (False when either is unknown: an output of the first release is kept)."""
        return self.stamp is not None and earlier.stamp is not None and self.stamp != earlier.stamp

    def with_settings(self, settings: str | None) -> Pin:
        return dataclasses.replace(self, settings=settings)

    def to_json(self) -> str:
        """Everything but the name, compact (what ``ben:pin`` holds)."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "name" and v is not None}
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def parse(cls, name: str, text: str | None) -> Pin:
        """The pin of a source ``name`` from its ``ben:pin`` JSON (None or unreadable: the name alone)."""
        if not text:
            return cls(name)
        try:
            data = json.loads(text)
        except ValueError:
            return cls(name)
        if not isinstance(data, dict):
            return cls(name)

        def pick(key: str, kind: type) -> object:
            value = data.get(key)
            return value if isinstance(value, kind) and not isinstance(value, bool) else None

        return cls(name, pick("root", str), pick("path", str), pick("size", int), pick("mtime_ns", int),
                   pick("settings", str))


def root_id(root: str) -> str:
    """The recorded identity of an input root: a digest of its resolved path or URL (``root``)."""
    return hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def source_pin(path: Path, root: Path) -> Pin:
    """The :class:`Pin` of the local input ``path`` found under the input root ``root`` (its folder
    for a file given by name): identity, size and modification time (unknown when it cannot be stat'ed)."""
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.name
    try:
        st = os.stat(path)
        size, mtime = st.st_size, st.st_mtime_ns
    except OSError:
        size = mtime = None
    return Pin(path.name, root_id(os.path.realpath(root)), rel, size, mtime)


def _as_pin(source: Pin | str) -> Pin:
    return source if isinstance(source, Pin) else Pin(source)


# --------------------------------------------------------------------------- writing the record


def source_chunk(source_name: str) -> tuple[bytes, bytes]:
    """The (type, data) of the PNG iTXt chunk that records an output's source file name."""
    return b"iTXt", _SOURCE_KEY + b"\0\0\0\0\0" + source_name.encode("utf-8", "surrogateescape")


def pin_chunks(source: Pin | str) -> list[tuple[bytes, bytes]]:
    """The (type, data) of the PNG iTXt chunks that record ``source``: its name, then the rest of
    its pin (none for a bare name)."""
    pin = _as_pin(source)
    chunks = [source_chunk(pin.name)]
    rest = pin.to_json()
    if rest != "{}":
        chunks.append((b"iTXt", _PIN_KEY + b"\0\0\0\0\0" + rest.encode("utf-8", "surrogateescape")))
    return chunks


def jpeg_comment(source: Pin | str) -> bytes:
    """The JPEG comment that records an output's source (``ben:source=<name>``, then its pin)."""
    pin = _as_pin(source)
    rest = pin.to_json()
    text = _JPEG_PREFIX + pin.name + ("" if rest == "{}" else _JPEG_PIN + rest)
    return text.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- reading it back


_XMP_OPEN = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
_XMP_RECORD = ' ben:record="'


def webp_xmp(source: Pin | str) -> bytes:
    """The XMP packet that records a WebP output's source: :func:`jpeg_comment`'s text, XML-escaped, as the
    ``ben:record`` attribute of one ``rdf:Description``."""
    text = escape(jpeg_comment(source).decode("utf-8", "surrogateescape"), {'"': "&quot;", "\n": "&#10;"})
    return (_XMP_OPEN + '<rdf:Description xmlns:ben="https://github.com/ben-cli/xmp/1.0/"' + _XMP_RECORD + text
            + '"/></rdf:RDF></x:xmpmeta>').encode("utf-8", "surrogateescape")


def read_output_pin(path: str | os.PathLike[str]) -> Pin | None:
    """The :class:`Pin` recorded in an output ``ben`` wrote, of any kind, or None.

    PNG (its ``ben:source`` and ``ben:pin`` text chunks; only the chunks before the image
    data are read) and JPEG (its comment; only the segments before the image data); a
    video (its metadata, read with PyAV; never tried for an image extension); a frame
    folder (its first frame's record). None for a file without a record, one that cannot
    be read, or a video when PyAV is not installed.
    """
    path = Path(path)
    if path.is_dir():
        first = min((p for p in _entries(path) if p.name.startswith("frame_")), default=None)
        return read_output_pin(first) if first is not None else None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(0)
            if _is_image(head):
                return output_pin(f)
    except OSError:
        return None
    return None if path.suffix.lower() in IMAGE_EXTS else _video_pin(path)


def read_output_source(path: str | os.PathLike[str]) -> str | None:
    """The source file name recorded in an output ``ben`` wrote (:func:`read_output_pin`), or None."""
    pin = read_output_pin(path)
    return None if pin is None else pin.name


def is_own_output(path: str | os.PathLike[str]) -> bool:
    """True when the file ``path`` carries ben's source record: an output of ben, never an input.

    Only files of the kinds ben records its source in are opened (PNG, JPEG, videos), and
    only their start is read (a video's metadata, with PyAV when it is installed).
    """
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in _RECORDING_EXTS and ext not in VIDEO_EXTS:
        return False
    return read_output_pin(path) is not None


def output_pin(f: BinaryIO | bytes) -> Pin | None:
    """The :class:`Pin` of an image output (PNG, JPEG or WebP) given as an open binary file or its first
    bytes, or None."""
    if isinstance(f, (bytes, bytearray)):
        f = io.BytesIO(f)
    head = f.read(8)
    if head.startswith(b"\xff\xd8"):
        f.seek(2)
        return _jpeg_pin(f)
    if head.startswith(b"RIFF"):
        return _webp_pin(f)
    if head != b"\x89PNG\r\n\x1a\n":
        return None
    name: str | None = None
    rest: str | None = None
    for _ in range(64):
        header = f.read(8)
        if len(header) < 8:
            break
        length, ctype = int.from_bytes(header[:4], "big"), header[4:]
        if ctype in (b"IDAT", b"IEND") or length > 1 << 20:
            break
        body = f.read(length + 4)[:length]
        if ctype != b"iTXt":
            continue
        key, _, value = body.partition(b"\0")
        if key in (_SOURCE_KEY, _PIN_KEY):
            text = _itxt_text(value)
            if key == _SOURCE_KEY:
                name = text
            else:
                rest = text
            if name is not None and rest is not None:
                break
    return None if name is None else Pin.parse(name, rest)


def output_source(f: BinaryIO | bytes) -> str | None:
    """The ``ben:source`` file name of an image output (PNG or JPEG) given as an open binary file or its
    first bytes, or None."""
    pin = output_pin(f)
    return None if pin is None else pin.name


def _itxt_text(value: bytes) -> str | None:
    """The text of an iTXt chunk after its keyword; None when compressed (never written by us)."""
    if value[:2] != b"\0\0":
        return None
    _lang, _, rest = value[2:].partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    return text.decode("utf-8", "surrogateescape")


def _is_image(head: bytes) -> bool:
    return head.startswith((b"\xff\xd8", b"RIFF")) or head == b"\x89PNG\r\n\x1a\n"


def _webp_pin(f: BinaryIO) -> Pin | None:
    """The record in the XMP chunk of a WebP file whose first 8 bytes were read: the chunks are walked
    (the image data skipped, not read), only the XMP chunk is read whole."""
    if f.read(4) != b"WEBP":
        return None
    for _ in range(64):
        header = f.read(8)
        if len(header) < 8:
            return None
        size = int.from_bytes(header[4:], "little")
        if header[:4] != b"XMP ":
            f.seek(size + (size & 1), 1)
            continue
        text = f.read(min(size, 1 << 20)).decode("utf-8", "surrogateescape")
        start = text.find(_XMP_RECORD)
        if start < 0:
            return None
        record = unescape(text[start + len(_XMP_RECORD) : text.find('"', start + len(_XMP_RECORD))],
                          {"&quot;": '"', "&#10;": "\n"})
        if not record.startswith(_JPEG_PREFIX):
            return None
        name, _, rest = record[len(_JPEG_PREFIX):].partition(_JPEG_PIN)
        return Pin.parse(name, rest)
    return None


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _jpeg_pin(f: BinaryIO) -> Pin | None:
    """The record in the comment of a JPEG whose start of image was read: the segments before the
    image data are walked, only a comment is read whole."""
    for _ in range(256):
        if f.read(1) != b"\xff":
            return None
        code = f.read(1)
        while code == b"\xff":  # fill bytes
            code = f.read(1)
        if not code or code in (b"\xda", b"\xd9"):  # start of scan, end of image: no comment before them
            return None
        if code == b"\x01" or b"\xd0" <= code <= b"\xd7":  # markers without a length
            continue
        size = int.from_bytes(f.read(2), "big")
        if size < 2:
            return None
        if code != b"\xfe":
            f.seek(size - 2, 1)
            continue
        text = f.read(size - 2).decode("utf-8", "surrogateescape")
        if text.startswith(_JPEG_PREFIX):
            name, _, rest = text[len(_JPEG_PREFIX):].partition(_JPEG_PIN)
            return Pin.parse(name, rest)
    return None


def _video_pin(path: Path) -> Pin | None:
    """The :class:`Pin` in a video container's metadata (PyAV, imported here: it is optional), or None."""
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(str(path), "r") as container:
            tags = {k.lower(): v for k, v in container.metadata.items()}
    except Exception:  # not a container PyAV reads: no record
        return None
    name = tags.get(VIDEO_SOURCE_TAG)
    return None if name is None else Pin.parse(name, tags.get(VIDEO_PIN_TAG))


# --------------------------------------------------------------------------- the records of an output folder


def existing_outputs(folder: PurePath, suffixes: Mapping[str, str], *,
                     defaults: Mapping[str, str] = SUFFIX) -> dict[str, Pin]:
    """``{base: Pin}`` of the outputs that ``ben`` wrote in the local ``folder`` (one listing).

    Files and folders ending in one of ``suffixes`` or ``defaults`` (the image kinds' by
    default, so a ``.png`` cutout of an earlier run counts when this run writes ``.jpg``;
    video outputs pass ``{}``: they never share a name with images) are read with
    :func:`read_output_pin`; for each base the first record in name order is kept.
    """
    ends = output_ends(suffixes, defaults)
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.name.lower().endswith(ends) and not e.name.startswith(".")]
    except OSError:
        return {}
    found: dict[str, Pin] = {}
    for name in sorted(names):
        base = strip_suffix(name, ends)
        if base in found:
            continue
        pin = read_output_pin(Path(folder) / name)
        if pin is not None:
            found[base] = pin
    return found


@dataclass(frozen=True)
class OutputListing:
    """One listing of an output tree behind an fsspec URL, paths relative to its root.

    ``files``: every file there (hidden ones aside). ``records``: for each folder,
    ``{base: Pin}`` of the outputs that ``ben`` wrote there (read from the first bytes
    of each, fetched together), what :func:`~ben_cli.io.name_outputs` needs.
    """

    files: frozenset[PurePosixPath]
    records: Mapping[PurePosixPath, Mapping[str, Pin]]

    def sources(self, folder: PurePath, suffixes: Mapping[str, str] | None = None) -> Mapping[str, Pin]:
        """``{base: Pin}`` of the earlier outputs in ``folder`` (the ``existing`` of ``name_outputs``)."""
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
    records: dict[PurePosixPath, dict[str, Pin]] = defaultdict(dict)
    while pending:
        keys = list(pending)
        heads = place.heads([pending[k][0] for k in keys], _HEAD_BYTES)
        for key, head in zip(keys, heads, strict=True):
            pin = output_pin(head) if head is not None else None
            if pin is not None:
                records[key[0]][key[1]] = pin
            if pin is not None or len(pending[key]) == 1:
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
