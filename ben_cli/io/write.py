"""Writing: PNG (and JPEG/WebP) encoding, atomic writes on the local disk and through fsspec.

Files are written to a hidden temporary file in the target folder
(``.<name>.ben-<8 hex>.tmp``) and renamed into place with ``os.replace``; on
any exception the temporary file is removed, so an interrupted run leaves
only complete files (a killed process may leave a temp file, which
:func:`clean_stale_temp_files` removes). An fsspec URL target is written as
:mod:`ben_cli.io.fs` says: ``file://`` like a local path, one put on object
stores (atomic there). Inputs are only ever read.
PNGs are encoded by OpenCV (fast compression unless asked otherwise); an
ICC profile is embedded as an ``iCCP`` chunk right after ``IHDR``, and the
input's record as ``iTXt`` chunks (``ben:source``, ``ben:pin``, see :mod:`ben_cli.io.pin`).
:func:`probe_writable` tells before any work whether a folder takes new files.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import secrets
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ben_cli.errors import UsageError
from ben_cli.io.fs import is_local_fs, is_url, url_fs, write_url_bytes
from ben_cli.io.pin import Pin, jpeg_comment, pin_chunks, webp_xmp
from ben_cli.io.read import icc_colour_space

_TEMP_RE = re.compile(r"^\..*\.ben-[0-9a-f]{8}\.tmp$")


def encode_png(array: np.ndarray, *, icc_profile: bytes | None = None, compression: int | None = None,
               source: Pin | str | None = None) -> bytes:
    """PNG bytes of a ``uint8`` image: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA.

    OpenCV's encoder; channels are given in RGB(A) order and swapped to OpenCV's
    BGR(A) here.

    Args:
        array: the pixels, ``uint8``.
        icc_profile: an ICC profile to embed (``iCCP`` chunk, zlib-compressed, right
            after ``IHDR``): an RGB profile for colour arrays, a gray one for (H, W)
            arrays (``LoadedImage.icc_profile`` suits cutouts). None or empty: none.
        compression: zlib level 0 (none) to 9 (smallest), with zlib's default
            strategy; None keeps OpenCV's fast default (level 1, run-length strategy).
        source: the input's record (:class:`~ben_cli.io.Pin`, or its file name alone), in
            ``iTXt`` chunks (``ben:source``, ``ben:pin``) so that later runs keep this
            output's name (:func:`name_outputs`) and tell when its source changed.

    Raises:
        ValueError: a bad array, compression level or profile.
    """
    if compression is not None and (
        isinstance(compression, bool) or not isinstance(compression, int) or not 0 <= compression <= 9
    ):
        raise ValueError(f"PNG compression must be an integer from 0 to 9, got {compression!r}")
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png wants uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        bgr = np.ascontiguousarray(array)
    elif array.ndim == 3 and array.shape[2] == 3:
        bgr = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        bgr = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGBA2BGRA)
    else:
        raise ValueError(f"encode_png wants (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    chunk = _iccp_chunk(bytes(icc_profile), array.ndim == 2) if icc_profile else b""
    if source is not None:
        chunk += b"".join(png_chunk(ctype, body) for ctype, body in pin_chunks(source))
    params = [] if compression is None else [cv2.IMWRITE_PNG_COMPRESSION, compression]
    ok, buffer = cv2.imencode(".png", bgr, params)
    if not ok:
        raise OSError("OpenCV could not encode the PNG")
    data = buffer.tobytes()
    if not chunk:
        return data
    if data[8:16] != b"\x00\x00\x00\x0dIHDR":  # the signature, then IHDR (13 bytes): always, by the PNG spec
        raise OSError("OpenCV wrote a PNG without a leading IHDR chunk")
    return data[:_IHDR_END] + chunk + data[_IHDR_END:]


def encode_image(array: np.ndarray, fmt: str = "png", *, icc_profile: bytes | None = None,
                 compression: int | None = None, quality: int = 95, source: Pin | str | None = None) -> bytes:
    """Bytes of a ``uint8`` image in ``fmt``: ``png`` (:func:`encode_png`), ``jpg`` or ``webp``.

    JPEG and WebP take (H, W) or (H, W, 3) arrays (no alpha) at ``quality`` (1-100),
    with the ICC profile embedded; a JPEG records ``source`` in its comment
    (``ben:source=<name>`` and its pin), a WebP in an XMP packet, as PNGs do in text chunks.
    """
    if fmt == "png":
        return encode_png(array, icc_profile=icc_profile, compression=compression, source=source)
    if fmt not in ("jpg", "webp"):
        raise ValueError(f"unknown image format {fmt!r} (png, jpg or webp)")
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"{fmt} output wants (H, W) or (H, W, 3) uint8, got {array.shape} {array.dtype}")
    options: dict[str, object] = {"quality": int(quality)}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if source is not None and fmt == "jpg":
        options["comment"] = jpeg_comment(source)
    elif source is not None:
        options["xmp"] = webp_xmp(source)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, "JPEG" if fmt == "jpg" else "WEBP", **options)
    return buf.getvalue()


_IHDR_END = 8 + 4 + 4 + 13 + 4  # signature, then IHDR's length, type, data and CRC


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    """A complete PNG chunk: length, type, data, CRC."""
    return len(body).to_bytes(4, "big") + ctype + body + zlib.crc32(ctype + body).to_bytes(4, "big")


@functools.lru_cache(maxsize=8)
def _iccp_chunk(profile: bytes, gray: bool) -> bytes:
    """The complete ``iCCP`` chunk (length, type, data, CRC) of ``profile`` for a gray or colour PNG."""
    space = icc_colour_space(profile)
    if space is None:
        raise ValueError("icc_profile is not an ICC profile (no 'acsp' signature)")
    want = b"GRAY" if gray else b"RGB "
    if space != want:
        kind = "gray" if gray else "colour"
        raise ValueError(f"an ICC profile of {space.decode('latin-1').strip()} data cannot go in a {kind} PNG")
    return png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(profile))  # name, NUL, method 0 (zlib)


def _temp_path(target: Path) -> tuple[int, Path]:
    """Create (exclusively) a hidden temp file next to ``target``; return (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name[:40]}.ben-{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp  # 0o666 & ~umask, like a plain open()
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {target}")


def check_output_file(path: Path | None, flag: str, example: str) -> None:
    """UsageError up front when the file ``path`` of option ``flag`` could not be written: a
    folder, or a path under a file (``example`` is a file name to suggest). None: nothing asked."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name ({example})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {path} lies under the file {parent}")
            break


def probe_writable(folder: Path) -> tuple[Path, OSError] | None:
    """None when new files can be written in ``folder``, else (the folder tried, the error).

    A folder that does not exist yet is created by the writer: its nearest existing
    parent is tried instead. The probe creates and removes a hidden temporary file
    (what :func:`atomic_write_bytes` does), so a read-only mount, missing permissions or an
    immutable folder (``chattr +i``) are all found.
    """
    folder = Path(folder)
    target = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    try:
        fd, tmp = _temp_path(target / "probe")
    except OSError as e:
        return target, e
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError as e:
        return target, e
    return None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` all at once: temp file in the same folder, then ``os.replace``.

    Creates missing parent folders. On any exception (including Ctrl-C) the temp
    file is removed and ``path`` is untouched. ``fsync=True`` also survives power loss.
    ``path`` may be an fsspec URL: ``file://`` is written as a local path, other file
    systems as :func:`ben_cli.io.fs.write_url_bytes` says (one put on object stores).
    """
    if is_url(path):
        fs, local = url_fs(str(path))
        if not is_local_fs(fs):
            write_url_bytes(str(path), data)
            return
        path = local
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_path(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_png(
    path: Path, array: np.ndarray, *, icc_profile: bytes | None = None, compression: int | None = None
) -> None:
    """Encode ``array`` (see :func:`encode_png`, which takes the same keywords) and write it atomically."""
    atomic_write_bytes(Path(path), encode_png(array, icc_profile=icc_profile, compression=compression))


def write_stdout_bytes(data: bytes) -> None:
    """Write ``data`` to standard output (binary) and flush."""
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


def _is_our_temp(name: str) -> bool:
    return _TEMP_RE.match(name) is not None


def clean_stale_temp_files(root: Path, *, min_age_s: float = 60.0) -> list[Path]:
    """Remove our temp files (``.<name>.ben-<8 hex>.tmp``) under ``root`` left by a killed run.

    Only files older than ``min_age_s`` seconds go, so a run writing to the same
    folder at the same time keeps its own. Returns the removed paths.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    for folder, _dirs, files in os.walk(root):
        for fname in files:
            if not _is_our_temp(fname):
                continue
            path = Path(folder) / fname
            try:
                if now - path.lstat().st_mtime >= min_age_s:
                    path.unlink()
                    removed.append(path)
            except OSError:
                continue
    return removed
