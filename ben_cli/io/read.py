"""Reading images: every mode Pillow reads, as ``uint8`` RGB plus an optional ``uint8`` alpha.

16-bit gray is scaled (``round(v / 257)``), never clipped (16-bit colour keeps
Pillow's high byte, within 1 of that); 32-bit and float gray are scaled as
:func:`_to_uint8` says; CMYK and other colour spaces are converted by Pillow
(no ICC colour management); EXIF orientation is applied; animated and
multi-page files give their first frame. An embedded ICC profile that
describes RGB data is kept (:attr:`LoadedImage.icc_profile`), so cutouts can
carry it (:func:`ben_cli.io.write.encode_png`); profiles of CMYK, Lab or gray data
are dropped, since those pixels are converted to RGB without colour management.
HEIC/HEIF needs the ``pillow-heif`` plugin (``pip install "ben_cli[heif]"``),
registered on first use when it is installed. EPS is never opened (it would
run Ghostscript on untrusted input). A file that cannot be used raises
:class:`~ben_cli.errors.InputError` with a one-line reason. Images above
Pillow's decompression-bomb limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``) are
refused; the warning Pillow gives between one and two times that limit, and
Pillow's warnings about corrupt EXIF, are silenced by process-wide filters
that :func:`configure_warnings` installs once (the first read calls it).

A source is a local path, an fsspec URL (``s3://bucket/a.jpg``, read through
:mod:`ben_cli.io.fs`) or the encoded bytes themselves (standard input).

Masks (``ben eval``) are read by :func:`read_mask`: the alpha channel of
images that have one (a cutout scores as its own alpha mask), gray files as
stored, colour files by luma. :func:`read_gray` ignores alpha.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from ben_cli.errors import InputError, install_hint
from ben_cli.io.fs import is_url, read_url_bytes

STDIN_NAME = "<stdin>"

_BLOCKED_FORMATS = frozenset({"EPS"})  # opening EPS runs Ghostscript
_BOMB_RE = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image: colour and source alpha, both ``uint8``, EXIF orientation applied."""

    path: str  # the file, or the name given for bytes ("<stdin>")
    rgb: np.ndarray  # (H, W, 3) uint8 in [0, 255], colour as stored (not composited)
    alpha: np.ndarray | None  # (H, W) uint8 source alpha, None when the image has none
    mode: str  # the Pillow mode of the file ("RGB", "P", "I;16", "CMYK", ...)
    icc_profile: bytes | None = None  # embedded ICC profile of RGB data (for cutouts), else None

    @property
    def size(self) -> tuple[int, int]:
        """``(W, H)`` in pixels."""
        return self.rgb.shape[1], self.rgb.shape[0]


@functools.lru_cache(maxsize=1)
def heif_available() -> bool:
    """Register the ``pillow-heif`` opener (once) and say whether HEIC/HEIF can be read."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


_PIL_MODULES = r"PIL(\.|$)"
_WARNINGS_LOCK = threading.Lock()


@functools.cache
def _our_filters() -> tuple[tuple[object, ...], ...]:
    """Our entries as :data:`warnings.filters` stores them (action, message, category, module, lineno)."""
    return (
        ("ignore", None, Image.DecompressionBombWarning, None, 0),
        ("ignore", None, UserWarning, re.compile(_PIL_MODULES), 0),
    )


def configure_warnings() -> None:
    """Silence Pillow's decompression-bomb warning and its own UserWarnings (corrupt EXIF), once.

    Process-wide filters (``warnings.catch_warnings`` is not thread-safe, and reads
    run in threads). Idempotent and cheap: the filters are added only when they are
    not in :data:`warnings.filters` already, so later calls (every read makes one)
    change nothing and never move a caller's own filters. Checking the list rather
    than a flag keeps this true after ``warnings.catch_warnings`` (pytest wraps each
    test in one) restores an older list. The CLI calls it at start.
    """
    if all(entry in warnings.filters for entry in _our_filters()):
        return
    with _WARNINGS_LOCK:
        if all(entry in warnings.filters for entry in _our_filters()):
            return
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=_PIL_MODULES)


def _open_formats() -> tuple[str, ...]:
    """The Pillow formats we let ``Image.open`` try: all registered ones but EPS."""
    heif_available()
    Image.init()
    return tuple(f for f in Image.ID if f not in _BLOCKED_FORMATS)


def _sniff(head: bytes) -> str | None:
    """The format a file's first bytes announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:2] == b"BM":
        return "BMP"
    if head[4:8] == b"ftyp":
        box = head[8 : max(16, min(len(head), int.from_bytes(head[:4], "big")))]
        if b"avif" in box or b"avis" in box:
            return "AVIF"
        if head[8:12] in _HEIF_BRANDS or any(b in box for b in _HEIF_BRANDS):
            return "HEIF"
    return None


def _unidentified_reason(head: bytes) -> str:
    fmt = _sniff(head)
    if fmt == "HEIF" and not heif_available():
        return f"HEIC/HEIF needs the pillow-heif plugin ({install_hint('heif')})"
    if fmt == "AVIF" and not features.check("avif"):
        return "AVIF is not supported by this Pillow build (needs Pillow 11.3+ with AVIF)"
    if fmt is not None:
        return f"truncated or corrupt {fmt} file"
    return "not an image (cannot identify format)"


def _bomb_reason(error: Exception) -> str:
    found = _BOMB_RE.search(str(error))
    if found is None:
        return "image too large (Pillow's decompression-bomb limit)"
    pixels, limit = (int(g) for g in found.groups())
    return f"image too large: {pixels:,} pixels exceeds the limit of {limit:,} pixels"


def _load_reason(error: Exception) -> str:
    text = str(error).strip()
    if isinstance(error, OSError) and "truncated" in text.lower():
        return "truncated image"
    if isinstance(error, MemoryError):
        return "image too large to decode (out of memory)"
    return f"truncated or corrupt image ({text or type(error).__name__})"


def _read_source(source: str | os.PathLike[str] | bytes, name: str | None) -> tuple[bytes, str]:
    """The encoded bytes of ``source`` and the name to report it by."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or STDIN_NAME
        if len(source) == 0:
            raise InputError(label, "empty input")
        return bytes(source), label
    label = name or str(source)
    try:
        data = read_url_bytes(source) if is_url(source) else Path(source).read_bytes()
    except FileNotFoundError:
        raise InputError(label, "file not found") from None
    except IsADirectoryError:
        raise InputError(label, "is a folder, not an image file") from None
    except PermissionError:
        raise InputError(label, "permission denied") from None
    except OSError as e:
        raise InputError(label, f"cannot read file ({e.strerror or e})") from None
    if not data:
        raise InputError(label, "empty file")
    return data, label


def _decode(data: bytes, label: str) -> Image.Image:
    """Open, fully load (first frame) and EXIF-orient ``data``; every failure is an InputError.

    Only Pillow code runs inside the ``try`` blocks: Pillow may raise nearly anything
    on hostile input.
    """
    configure_warnings()
    try:
        im = Image.open(io.BytesIO(data), formats=_open_formats())
    except Image.DecompressionBombError as e:
        raise InputError(label, _bomb_reason(e)) from None
    except UnidentifiedImageError:
        raise InputError(label, _unidentified_reason(data[:64])) from None
    except Exception as e:  # any decoder failure on a bad header
        raise InputError(label, _load_reason(e)) from None
    try:
        im.load()  # a truncated file often fails only here
    except Image.DecompressionBombError as e:
        raise InputError(label, _bomb_reason(e)) from None
    except Exception as e:
        raise InputError(label, _load_reason(e)) from None
    with contextlib.suppress(Exception):  # unreadable EXIF: keep the stored orientation
        ImageOps.exif_transpose(im, in_place=True)
    return im


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """One gray channel of any Pillow depth to ``uint8``, scaling rather than clipping.

    ``I;16*`` -> round(v / 257). ``I`` (32-bit) holding 0..65535 is read as 16-bit,
    anything else is stretched min..max. ``F`` in [0, 1] is times 255, in [0, 255]
    as is, anything else stretched; NaN is 0.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if mode.startswith("I;16") or array.dtype.kind in "ui":
        wide = array.astype(np.int64)
        lo, hi = (int(wide.min()), int(wide.max())) if wide.size else (0, 0)
        if mode.startswith("I;16") or (lo >= 0 and hi <= 65535):
            return ((wide + 128) // 257).astype(np.uint8)
        return _stretch(wide.astype(np.float64), lo, hi)
    values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(values).astype(np.uint8)
    return _stretch(values, lo, hi)


def _stretch(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _owned(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, writeable array (Pillow hands out read-only buffers)."""
    if array.flags.c_contiguous and array.flags.writeable:
        return array
    return np.array(array, order="C", copy=True)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _rgb_alpha(im: Image.Image, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Split a loaded image into (H, W, 3) uint8 colour and (H, W) uint8 alpha or None."""
    mode = im.mode
    if mode == "RGB":
        return _owned(np.asarray(im)), None
    if mode in ("1", "L") or mode.startswith("I") or mode == "F":
        return _gray_to_rgb(_to_uint8(np.asarray(im), mode)), None
    if mode in ("LA", "La"):
        pixels = np.asarray(im.convert("LA") if mode == "La" else im)
        return _gray_to_rgb(pixels[:, :, 0]), _owned(pixels[:, :, 1])
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or im.has_transparency_data
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    elif mode not in ("RGBA",):
        target = "RGBA" if "A" in mode or "a" in mode else "RGB"
        try:
            im = im.convert(target)
        except ValueError:
            raise InputError(label, f"unsupported image mode {mode}") from None
        mode = im.mode
    pixels = np.asarray(im)
    if mode == "RGB":
        return _owned(pixels), None
    return _owned(pixels[:, :, :3]), _owned(pixels[:, :, 3])


def read_image(source: str | os.PathLike[str] | bytes, *, name: str | None = None) -> LoadedImage:
    """Read one image from a path, an fsspec URL or encoded bytes (stdin).

    Returns RGB ``(H, W, 3)`` and alpha ``(H, W)`` or None, ``uint8``, writeable,
    EXIF orientation applied, first frame. ``name`` labels errors (default: the path,
    or ``"<stdin>"`` for bytes). Raises :class:`InputError` for anything unreadable.
    """
    data, label = _read_source(source, name)
    return _loaded(_decode(data, label), label)


def from_pil(im: Image.Image, *, name: str = "<image>") -> LoadedImage:
    """A Pillow image already in memory as a :class:`LoadedImage` (EXIF orientation applied,
    first frame, every mode), for the Python API. Raises :class:`InputError` for an unusable mode."""
    try:
        im.load()
        oriented = ImageOps.exif_transpose(im)
    except Exception as e:
        raise InputError(name, _load_reason(e)) from None
    return _loaded(oriented if oriented is not None else im, name)


def _loaded(im: Image.Image, label: str) -> LoadedImage:
    rgb, alpha = _rgb_alpha(im, label)
    return LoadedImage(path=label, rgb=rgb, alpha=alpha, mode=im.mode, icc_profile=_rgb_icc_profile(im))


def icc_colour_space(profile: bytes) -> bytes | None:
    """The data colour space of an ICC profile (``b"RGB "``, ``b"GRAY"``, ``b"CMYK"``, ...), None if not a profile."""
    if len(profile) < 128 or profile[36:40] != b"acsp":
        return None
    return bytes(profile[16:20])


def _rgb_icc_profile(im: Image.Image) -> bytes | None:
    """The embedded ICC profile when it describes RGB data, else None.

    Profiles of CMYK, Lab or gray data do not describe the RGB we hand out (Pillow
    converts those without colour management), so they are dropped.
    """
    profile = im.info.get("icc_profile")
    if not isinstance(profile, (bytes, bytearray)) or icc_colour_space(profile) != b"RGB ":
        return None
    return bytes(profile)


def read_gray(path: str | os.PathLike[str] | bytes, *, name: str | None = None) -> np.ndarray:
    """Read a gray map as ``(H, W) uint8``.

    Gray files as stored (16-bit scaled to 8-bit); colour files by luma
    (ITU-R 601, as ``cv2.IMREAD_GRAYSCALE``); alpha is ignored (see
    :func:`read_mask` for evaluation masks). EXIF orientation applied. Raises
    :class:`InputError` for anything unreadable.
    """
    data, label = _read_source(path, name)
    return _gray(_decode(data, label), label)


def read_mask(source: str | os.PathLike[str] | bytes, *, name: str | None = None) -> np.ndarray:
    """Read an evaluation mask (prediction or ground truth) as ``(H, W) uint8``.

    - Images with an alpha channel (RGBA, LA, PA, premultiplied modes) or palette
      / colour-key transparency: their alpha, so a cutout used as a prediction
      scores as its own alpha mask. An alpha that is 255 everywhere carries no
      mask (a mask saved with an unused alpha channel): such files are read as below.
    - Gray files as stored (16-bit scaled to 8-bit), colour files by luma
      (ITU-R 601), as :func:`read_gray`.

    EXIF orientation applied. Raises :class:`InputError` for anything unreadable.
    """
    data, label = _read_source(source, name)
    im = _decode(data, label)
    alpha = _alpha_channel(im)
    if alpha is not None and alpha.size and int(alpha.min()) < 255:
        return alpha
    return _gray(im, label)


def _alpha_channel(im: Image.Image) -> np.ndarray | None:
    """The (H, W) uint8 alpha of a loaded image, or None when it has no transparency."""
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _owned(np.asarray(im.getchannel(len(im.getbands()) - 1)))  # "A", or "a" when premultiplied
    if not im.has_transparency_data:
        return None
    try:  # palette transparency or a tRNS colour key
        return _owned(np.asarray(im.convert("RGBA").getchannel("A")))
    except ValueError:
        return None


def _gray(im: Image.Image, label: str) -> np.ndarray:
    """One gray channel of a loaded image: gray as stored, colour by luma, alpha ignored."""
    mode = im.mode
    if mode in ("1", "L") or mode.startswith("I") or mode == "F":
        return _owned(_to_uint8(np.asarray(im), mode))
    if mode in ("LA", "La"):
        return _owned(np.asarray(im.convert("LA"))[:, :, 0])
    try:
        gray = im.convert("L")
    except ValueError:
        try:
            gray = im.convert("RGB").convert("L")
        except ValueError:
            raise InputError(label, f"unsupported image mode {mode}") from None
    return _owned(np.asarray(gray))


def read_stdin_bytes() -> bytes:
    """All of standard input, as bytes (for ``read_image(data)``)."""
    return sys.stdin.buffer.read()

