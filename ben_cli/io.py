"""The file layer: find images, read them, name the outputs, write them atomically.

This is the only module that touches image files (numpy, Pillow and OpenCV only,
no torch).

Reading
    Every mode Pillow reads comes back as ``uint8`` RGB plus an optional ``uint8``
    alpha: 16-bit gray is scaled (``round(v / 257)``), never clipped (16-bit colour
    keeps Pillow's high byte, within 1 of that); 32-bit and float gray are scaled as
    :func:`_to_uint8` says; CMYK and other colour spaces are converted by Pillow
    (no ICC colour management); EXIF orientation is applied; animated and
    multi-page files give their first frame. An embedded ICC profile that
    describes RGB data is kept (:attr:`LoadedImage.icc_profile`), so cutouts can
    carry it (:func:`encode_png`); profiles of CMYK, Lab or gray data are dropped,
    since those pixels are converted to RGB without colour management.
    HEIC/HEIF needs the ``pillow-heif`` plugin (``pip install pillow-heif``),
    registered on first use when it is installed. EPS is never opened (it would
    run Ghostscript on untrusted input). A file that cannot be used raises
    :class:`~ben_cli.errors.InputError` with a one-line reason. Images above
    Pillow's decompression-bomb limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``) are
    refused; the warning Pillow gives between one and two times that limit, and
    Pillow's warnings about corrupt EXIF, are silenced by process-wide filters
    that :func:`configure_warnings` installs once (the first read calls it).

    Masks (``ben eval``) are read by :func:`read_mask`: the alpha channel of
    images that have one (a cutout scores as its own alpha mask), gray files as
    stored, colour files by luma. :func:`read_gray` ignores alpha.

Finding
    Folders are walked recursively; files are chosen by extension
    (:data:`IMAGE_EXTS`, any case). Hidden files and folders (names starting
    with ``.``: our temp files, ``.git``, macOS ``._x.jpg``) are skipped, as is
    the output folder when it lies inside the input folder. Symlinked folders
    are followed, each real folder at most once (no loops).

Output names
    Each input gets ``<stem><suffix>`` in the output folder that mirrors its
    folder under the input root: ``.png`` (cutout), ``.alpha.png``,
    ``.trimap.png``, ``.overlay.png``. **Collision rule:** when two inputs of one
    output folder would write the same file name (compared ignoring case, over
    every kind whether requested or not), each of them keeps its extension in the
    output name: ``a.jpg`` and ``a.png`` give ``a.jpg.png`` and ``a.png.png``,
    while a lone ``b.jpg`` gives ``b.png``, and ``x/a.jpg`` and ``y/a.jpg``
    (different folders) give ``x/a.png`` and ``y/a.png``. Names that still
    collide (they differ only in case) get ``~1``, ``~2``, ... in sorted order.
    The rule reads only the list of inputs, never the order of processing or
    ``--save``. An output that would replace an input is refused.

    **Names never change between runs** (cron jobs): every PNG ``ben`` writes
    records its source's file name (an ``iTXt`` chunk ``ben:source``). When a
    folder is planned again (:func:`name_outputs`), an input whose earlier output
    is there keeps that name, and the name of an output whose source is another
    file (present or not) is never given to a new input: a lone ``a.jpg`` gives
    ``a.png``; add ``a.png`` later and ``a.jpg`` keeps ``a.png`` while the newcomer
    gets ``a.png.png``, and the plan says so. Outputs without the record (written
    by the first release, or by another tool) are treated as before.

    A file OUTPUT (one input) must end in ``.png``. With one kind the file is
    written exactly there; with several, OUTPUT without ``.png`` is the stem:
    ``out.png`` gives ``out.png`` (cutout), ``out.alpha.png``, ``out.trimap.png``.

Writing
    Files are written to a hidden temporary file in the target folder
    (``.<name>.ben-<8 hex>.tmp``) and renamed into place with ``os.replace``; on
    any exception the temporary file is removed, so an interrupted run leaves
    only complete files (a killed process may leave a temp file, which
    :func:`clean_stale_temp_files` removes). Inputs are only ever read.
    PNGs are encoded by OpenCV (fast compression unless asked otherwise); an
    ICC profile is embedded as an ``iCCP`` chunk right after ``IHDR``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import secrets
import sys
import threading
import time
import warnings
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from ben_cli.errors import InputError, OptionError, UsageError

IMAGE_EXTS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif",
        ".png", ".apng",
        ".webp",
        ".tif", ".tiff",
        ".bmp", ".dib",
        ".gif",
        ".heic", ".heif", ".hif", ".avif",
        ".jp2", ".j2k", ".jpx",
        ".pbm", ".pgm", ".ppm", ".pnm",
        ".tga",
    }
)  # fmt: skip
"""Extensions (lower case, with the dot) that :func:`find_images` picks up."""

SUFFIX: dict[str, str] = {
    "cutout": ".png", "alpha": ".alpha.png", "trimap": ".trimap.png", "overlay": ".overlay.png",
}
"""Output file suffix of each ``--save`` kind."""

KINDS: tuple[str, ...] = tuple(SUFFIX)

STDIN_NAME = "<stdin>"

_BLOCKED_FORMATS = frozenset({"EPS"})  # opening EPS runs Ghostscript
_TEMP_RE = re.compile(r"^\..*\.ben-[0-9a-f]{8}\.tmp$")
_BOMB_RE = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


# --------------------------------------------------------------------------- reading


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
        return "HEIC/HEIF needs the pillow-heif plugin (pip install pillow-heif)"
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
        data = Path(source).read_bytes()
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
    """Read one image from a path or from encoded bytes (stdin).

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


# --------------------------------------------------------------------------- finding


def _is_our_temp(name: str) -> bool:
    return _TEMP_RE.match(name) is not None


def find_images(root: Path, *, exclude: Path | None = None) -> list[Path]:
    """Image files under ``root``, recursively, sorted by their path relative to ``root``.

    Chosen by extension (any case); hidden files and folders are skipped, and so is
    the ``exclude`` folder (the output folder) unless it is ``root`` itself.
    Symlinked folders are followed once each; unreadable subfolders are skipped.
    ``root`` being a file gives ``[root]``. Raises :class:`UsageError` when ``root``
    does not exist or cannot be listed.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise UsageError(f"input not found: {root}")
    excluded: tuple[int, int] | None = None
    if exclude is not None:
        try:
            st = Path(exclude).stat()
            excluded = (st.st_dev, st.st_ino)
        except OSError:
            excluded = None  # not created yet: nothing to skip
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack: list[Path] = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen or (key == excluded and folder is not root):
            continue
        seen.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if folder is root:
                raise UsageError(f"cannot list the input folder {root}: {e.strerror or e}") from None
            continue
        subfolders: list[Path] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    subfolders.append(Path(entry.path))
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS:
                    found.append(Path(entry.path))
            except OSError:
                continue
        stack.extend(reversed(subfolders))  # depth-first in name order: deterministic
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found


# --------------------------------------------------------------------------- output names


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """Output kinds, validated and without repeats, in the order given."""
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in SUFFIX]
    if unknown:
        raise OptionError("save", f"unknown {{flag}} kind {unknown[0]!r} (use {', '.join(SUFFIX)})", noun="output")
    if not kinds:
        raise OptionError("save", "no output kind requested")
    return tuple(dict.fromkeys(kinds))


def _relative(folder: Path, in_root: Path) -> Path:
    """``folder`` relative to ``in_root`` (resolving both when they are spelled differently)."""
    try:
        return folder.relative_to(in_root)
    except ValueError:
        try:
            return folder.resolve().relative_to(in_root.resolve())
        except ValueError:
            raise ValueError(f"{folder} is not inside the input root {in_root}") from None


def _output_bases(entries: Sequence[tuple[str, str]], reserved: Iterable[tuple[str, str]] = ()) -> list[str]:
    """The name each input's outputs start with, by the collision rule (module docstring).

    ``entries[i]`` is input i's (output folder relative to OUTPUT, file name).
    ``reserved`` holds (folder, base) pairs already owned by other sources (outputs
    of an earlier run): a name that would clash with one of them is treated like a
    clash between two inputs.
    """
    split = [os.path.splitext(name) for _folder, name in entries]
    base = [stem for stem, _ext in split]
    folders = [folder.casefold() for folder, _name in entries]
    suffixes = tuple(SUFFIX.values())
    taken: dict[tuple[str, str], int] = {}
    for folder, stem in reserved:
        for suffix in suffixes:
            taken[folder.casefold(), stem.casefold() + suffix] = -1
    counter = 0
    for _ in range(2 * len(entries) + len(taken) + 3):
        owners: dict[tuple[str, str], list[int]] = defaultdict(list)
        for key, owner in taken.items():
            owners[key].append(owner)
        for i, stem in enumerate(base):
            folded = stem.casefold()
            for suffix in suffixes:
                owners[folders[i], folded + suffix].append(i)
        clashing = sorted(
            {i for group in owners.values() if len(group) > 1 for i in group if i >= 0}, key=entries.__getitem__
        )
        if not clashing:
            return base
        promote = [i for i in clashing if split[i][1] and base[i] == split[i][0]]
        if promote:
            for i in promote:
                base[i] = entries[i][1]
            continue
        for i in clashing:  # names equal but for case, or owned by earlier outputs: number them
            counter += 1
            base[i] = f"{entries[i][1]}~{counter}"
    raise RuntimeError("output names did not converge")  # unreachable: the counter makes names unique


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_overwrites(plan: dict[Path, dict[str, Path]]) -> None:
    """Raise UsageError when an output path is one of the inputs (folders compared resolved).

    Names equal but for case count when the file system says they are the same file.
    """
    real_in = {parent: os.path.realpath(parent) for parent in {p.parent for p in plan}}
    out_folders = {o.parent for outs in plan.values() for o in outs.values()}
    real_out = {folder: os.path.realpath(folder) for folder in out_folders}
    if not {r.casefold() for r in real_in.values()} & {r.casefold() for r in real_out.values()}:
        return  # no output folder is an input folder: the usual case
    inputs_here: dict[str, dict[str, Path]] = defaultdict(dict)
    for p in plan:
        inputs_here[real_in[p.parent].casefold()][p.name.casefold()] = p
    for outs in plan.values():
        for out in outs.values():
            out_folder = real_out[out.parent]
            victim = inputs_here.get(out_folder.casefold(), {}).get(out.name.casefold())
            if victim is None:
                continue
            exact = real_in[victim.parent] == out_folder and victim.name == out.name
            if exact or _same_file(out, victim):
                raise UsageError(f"output {out} would overwrite the input {victim}; choose another OUTPUT")


@dataclass(frozen=True)
class NamedOutputs:
    """Output paths of each input, and the inputs whose name changed because of a clash."""

    paths: dict[Path, dict[str, Path]]  # {input: {kind: path}}
    renamed: list[tuple[Path, Path]]  # (input, its cutout-kind path) for inputs not named <stem>


def plan_outputs(
    inputs: Sequence[Path], in_root: Path | None, out_root: Path, kinds: Sequence[str]
) -> dict[Path, dict[str, Path]]:
    """Output path of each requested kind for each input: ``{input: {kind: path}}``.

    Mirrors each input's folder relative to ``in_root`` under ``out_root``
    (``in_root=None``: all outputs directly in ``out_root``), naming files by the
    collision rule of the module docstring. Existing outputs are not looked at (see
    :func:`name_outputs`). Raises :class:`UsageError` for an unknown kind or when an
    output would replace an input.
    """
    out_root = Path(out_root)
    root = None if in_root is None else Path(in_root)
    paths = list(dict.fromkeys(p if isinstance(p, Path) else Path(p) for p in inputs))
    folders: dict[Path, Path] = {}
    for p in paths:
        if p.parent not in folders:
            folders[p.parent] = out_root if root is None else out_root / _relative(p.parent, root)
    return name_outputs([(p, folders[p.parent]) for p in paths], kinds, keep_existing=False).paths


def name_outputs(entries: Sequence[tuple[Path, Path]], kinds: Sequence[str], *,
                 keep_existing: bool = True) -> NamedOutputs:
    """Name the outputs of ``entries``, each (input file, the folder its outputs go to).

    Files are named by the collision rule of the module docstring. With
    ``keep_existing``, outputs already in those folders keep their names: each PNG
    that ``ben`` writes records its source's file name (:func:`read_output_source`),
    an input whose earlier output is found keeps that name, and a name owned by
    another source (present or not) is never given to a new input, which gets the
    next name of the rule instead (listed in ``renamed``). Raises
    :class:`UsageError` for an unknown kind or when an output would replace an input.
    """
    wanted = check_kinds(kinds)
    entries = list(dict.fromkeys((Path(p), Path(f)) for p, f in entries))
    folder_ids = {folder: str(i) for i, folder in enumerate(dict.fromkeys(f for _, f in entries))}
    pinned: dict[int, str] = {}
    reserved: list[tuple[str, str]] = []
    if keep_existing:
        by_folder: dict[Path, list[int]] = defaultdict(list)
        for i, (_p, folder) in enumerate(entries):
            by_folder[folder].append(i)
        for folder, members in by_folder.items():
            names = {entries[i][0].name: i for i in members}
            for base, source in _existing_outputs(folder).items():
                owner = names.get(source)
                if owner is not None and owner not in pinned:
                    pinned[owner] = base
                elif owner is None or pinned.get(owner) != base:
                    reserved.append((folder_ids[folder], base))
        reserved += [(folder_ids[entries[i][1]], b) for i, b in pinned.items()]
    free = [i for i in range(len(entries)) if i not in pinned]
    bases = dict(pinned)
    chosen = _output_bases([(folder_ids[entries[i][1]], entries[i][0].name) for i in free], reserved)
    bases.update(zip(free, chosen, strict=True))
    paths = {p: {kind: folder / (bases[i] + SUFFIX[kind]) for kind in wanted}
             for i, (p, folder) in enumerate(entries)}
    renamed = [(p, folder / (bases[i] + SUFFIX["cutout"])) for i, (p, folder) in enumerate(entries)
               if i not in pinned and bases[i] != os.path.splitext(p.name)[0]]
    _refuse_overwrites(paths)
    return NamedOutputs(paths, renamed)


_SOURCE_KEY = b"ben:source"


def _existing_outputs(folder: Path) -> dict[str, str]:
    """``{base: source file name}`` of the PNGs that ``ben`` wrote in ``folder`` (one listing)."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.name.lower().endswith(".png") and not e.name.startswith(".")]
    except OSError:
        return {}
    found: dict[str, str] = {}
    for name in sorted(names):
        base = _strip_suffix(name)
        if base in found:
            continue
        source = read_output_source(folder / name)
        if source is not None:
            found[base] = source
    return found


def _strip_suffix(name: str) -> str:
    """The base of an output file name: ``a.alpha.png`` -> ``a``, ``a.png`` -> ``a``."""
    lower = name.lower()
    for suffix in sorted(SUFFIX.values(), key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_output_source(path: Path) -> str | None:
    """The source file name recorded in a PNG written by ``ben`` (its ``ben:source`` text chunk), or None.

    Reads only the chunks before the image data.
    """
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
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
    except OSError:
        return None
    return None


def source_chunk(source_name: str) -> tuple[bytes, bytes]:
    """The (type, data) of the iTXt chunk that records an output's source file name."""
    return b"iTXt", _SOURCE_KEY + b"\0\0\0\0\0" + source_name.encode("utf-8")


def single_output(input_path: str | Path | None, output_arg: str | Path, kinds: Sequence[str]) -> dict[str, Path]:
    """Output paths when OUTPUT names a file: ``{kind: path}``.

    OUTPUT must end in ``.png``. One kind: exactly OUTPUT. Several: OUTPUT without
    ``.png`` is the stem, so ``out.png`` gives ``out.png`` (cutout),
    ``out.alpha.png`` and ``out.trimap.png``. Raises :class:`UsageError` for another
    extension or when OUTPUT is the input file (``input_path=None``: standard input, no such check).
    """
    wanted = check_kinds(kinds)
    out = Path(output_arg)
    if out.suffix.lower() != ".png":
        raise UsageError(f"the output file {out} must end in .png (or name a folder)")
    if len(wanted) == 1:
        outputs = {wanted[0]: out}
    else:
        stem = out.name[: -len(out.suffix)]
        outputs = {kind: out.with_name(stem + SUFFIX[kind]) for kind in wanted}
    if input_path is not None and str(input_path) != "-":
        refuse_overwriting_input(outputs.values(), Path(input_path))
    return outputs


def refuse_overwriting_input(outputs: Iterable[Path], src: Path) -> None:
    """Raise UsageError when any output path is the input file (same path or same file)."""
    for path in outputs:
        if path.resolve() == src.resolve() or _same_file(path, src):
            raise UsageError(f"output {path} would overwrite the input {src}")


def outputs_exist(paths: Iterable[Path]) -> bool:
    """True when every path is an existing file (and there is at least one)."""
    paths = list(paths)
    return bool(paths) and all(Path(p).is_file() for p in paths)


# --------------------------------------------------------------------------- writing


def encode_png(array: np.ndarray, *, icc_profile: bytes | None = None, compression: int | None = None,
               source: str | None = None) -> bytes:
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
        source: the input's file name, recorded in an ``iTXt`` chunk (``ben:source``)
            so that later runs keep this output's name (:func:`name_outputs`).

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
        chunk += png_chunk(*source_chunk(source))
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


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` all at once: temp file in the same folder, then ``os.replace``.

    Creates missing parent folders. On any exception (including Ctrl-C) the temp
    file is removed and ``path`` is untouched. ``fsync=True`` also survives power loss.
    """
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
