"""The file layer: find images, read them, name the outputs, write them atomically.

This is the only module that touches image files (numpy, Pillow and OpenCV only,
no torch).

Reading
    Every mode Pillow reads comes back as ``uint8`` RGB plus an optional ``uint8``
    alpha: 16-bit gray is scaled (``round(v / 257)``), never clipped (16-bit colour
    keeps Pillow's high byte, within 1 of that); 32-bit and float gray are scaled as
    :func:`_to_uint8` says; CMYK and other colour spaces are converted by Pillow
    (no ICC colour management); EXIF orientation is applied; animated and
    multi-page files give their first frame.
    HEIC/HEIF needs the ``pillow-heif`` plugin (``pip install 'ben_cli[heif]'``),
    registered on first use when it is installed. EPS is never opened (it would
    run Ghostscript on untrusted input). A file that cannot be used raises
    :class:`~ben_cli.errors.InputError` with a one-line reason. Images above
    Pillow's decompression-bomb limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``) are
    refused; the warning Pillow gives between one and two times that limit is
    silenced.

Finding
    Folders are walked recursively; files are chosen by extension
    (:data:`IMAGE_EXTS`, any case). Hidden files and folders (names starting
    with ``.``: our temp files, ``.git``, macOS ``._x.jpg``) are skipped, as is
    the output folder when it lies inside the input folder. Symlinked folders
    are followed, each real folder at most once (no loops).

Output names
    Each input gets ``<stem><suffix>`` in the output folder that mirrors its
    folder under the input root: ``.png`` (cutout), ``.alpha.png``,
    ``.trimap.png``. **Collision rule:** when two inputs of one output folder
    would write the same file name (compared ignoring case, over every kind
    whether requested or not), each of them keeps its extension in the output
    name: ``a.jpg`` and ``a.png`` give ``a.jpg.png`` and ``a.png.png``, while a
    lone ``b.jpg`` gives ``b.png``, and ``x/a.jpg`` and ``y/a.jpg`` (different
    folders) give ``x/a.png`` and ``y/a.png``. Names that still collide (they
    differ only in case) get ``~1``, ``~2``, ... in sorted order. The rule reads
    only the full list of inputs, so names depend neither on the order of
    processing, nor on which outputs exist, nor on ``--save``. An output that
    would replace an input is refused.

    A file OUTPUT (one input) must end in ``.png``. With one kind the file is
    written exactly there; with several, OUTPUT without ``.png`` is the stem:
    ``out.png`` gives ``out.png`` (cutout), ``out.alpha.png``, ``out.trimap.png``.

Writing
    Files are written to a hidden temporary file in the target folder
    (``.<name>.ben-<8 hex>.tmp``) and renamed into place with ``os.replace``; on
    any exception the temporary file is removed, so an interrupted run leaves
    only complete files (a killed process may leave a temp file, which
    :func:`clean_stale_temp_files` removes). Inputs are only ever read.
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
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from ben_cli.errors import InputError, UsageError

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

SUFFIX: dict[str, str] = {"cutout": ".png", "alpha": ".alpha.png", "trimap": ".trimap.png"}
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


def _quiet_pillow_warnings() -> None:
    """Silence the decompression-bomb warning and Pillow's own UserWarnings (corrupt EXIF).

    Process-wide filters, (re)placed first on every read: ``warnings.catch_warnings``
    is not thread-safe, and reads run in threads.
    """
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")


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
        return "HEIC/HEIF needs the pillow-heif plugin (pip install 'ben_cli[heif]')"
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
    _quiet_pillow_warnings()
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
    im = _decode(data, label)
    mode = im.mode
    rgb, alpha = _rgb_alpha(im, label)
    return LoadedImage(path=label, rgb=rgb, alpha=alpha, mode=mode)


def read_gray(path: str | os.PathLike[str] | bytes, *, name: str | None = None) -> np.ndarray:
    """Read a mask as ``(H, W) uint8`` (evaluation ground truth or prediction).

    Gray files as stored (16-bit scaled to 8-bit); colour files by luma
    (ITU-R 601, as ``cv2.IMREAD_GRAYSCALE``); alpha is ignored. EXIF orientation
    applied. Raises :class:`InputError` for anything unreadable.
    """
    data, label = _read_source(path, name)
    im = _decode(data, label)
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


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in SUFFIX]
    if unknown:
        raise UsageError(f"unknown output kind {unknown[0]!r} (choose from {', '.join(SUFFIX)})")
    if not kinds:
        raise UsageError("no output kind requested")
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


def _output_bases(entries: Sequence[tuple[str, str]]) -> list[str]:
    """The name each input's outputs start with, by the collision rule (module docstring).

    ``entries[i]`` is input i's (output folder relative to OUTPUT, file name).
    """
    split = [os.path.splitext(name) for _folder, name in entries]
    base = [stem for stem, _ext in split]
    folders = [folder.casefold() for folder, _name in entries]
    suffixes = tuple(SUFFIX.values())
    counter = 0
    for _ in range(len(entries) + 3):
        owners: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, stem in enumerate(base):
            folded = stem.casefold()
            for suffix in suffixes:
                owners[folders[i], folded + suffix].append(i)
        clashing = sorted(
            {i for group in owners.values() if len(group) > 1 for i in group}, key=entries.__getitem__
        )
        if not clashing:
            return base
        promote = [i for i in clashing if split[i][1] and base[i] == split[i][0]]
        if promote:
            for i in promote:
                base[i] = entries[i][1]
            continue
        for i in clashing:  # names equal but for case: number them
            counter += 1
            base[i] = f"{entries[i][1]}~{counter}"
    raise RuntimeError("output names did not converge")  # unreachable: the counter makes names unique


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_overwrites(
    plan: dict[Path, dict[str, Path]], rel_of: dict[Path, Path], out_dirs: dict[Path, Path]
) -> None:
    """Raise UsageError when an output path is one of the inputs (folders compared resolved).

    Names equal but for case count when the file system says they are the same file.
    """
    real_in = {parent: os.path.realpath(parent) for parent in {p.parent for p in plan}}
    real_out = {rel: os.path.realpath(folder) for rel, folder in out_dirs.items()}
    if not {r.casefold() for r in real_in.values()} & {r.casefold() for r in real_out.values()}:
        return  # no output folder is an input folder: the usual case
    inputs_here: dict[str, dict[str, Path]] = defaultdict(dict)
    for p in plan:
        inputs_here[real_in[p.parent].casefold()][p.name.casefold()] = p
    for p, outs in plan.items():
        out_folder = real_out[rel_of[p]]
        here = inputs_here.get(out_folder.casefold())
        if not here:
            continue
        for out in outs.values():
            victim = here.get(out.name.casefold())
            if victim is None:
                continue
            exact = real_in[victim.parent] == out_folder and victim.name == out.name
            if exact or _same_file(out, victim):
                raise UsageError(f"output {out} would overwrite the input {victim}; choose another OUTPUT")


def plan_outputs(
    inputs: Sequence[Path], in_root: Path | None, out_root: Path, kinds: Sequence[str]
) -> dict[Path, dict[str, Path]]:
    """Output path of each requested kind for each input: ``{input: {kind: path}}``.

    Mirrors each input's folder relative to ``in_root`` under ``out_root``
    (``in_root=None``: all outputs directly in ``out_root``), naming files by the
    collision rule of the module docstring. Raises :class:`UsageError` for an
    unknown kind or when an output would replace an input.
    """
    wanted = _check_kinds(kinds)
    out_root = Path(out_root)
    root = None if in_root is None else Path(in_root)
    paths = list(dict.fromkeys(p if isinstance(p, Path) else Path(p) for p in inputs))
    rel_dirs: dict[Path, Path] = {}  # input folder -> output folder relative to out_root
    rels: list[Path] = []
    for p in paths:
        parent = p.parent
        if parent not in rel_dirs:
            rel_dirs[parent] = Path() if root is None else _relative(parent, root)
        rels.append(rel_dirs[parent])
    posix = {rel: rel.as_posix() for rel in set(rel_dirs.values())}
    out_dirs = {rel: out_root / rel for rel in posix}
    base = _output_bases([(posix[rel], p.name) for p, rel in zip(paths, rels, strict=True)])
    plan = {
        p: {kind: out_dirs[rel] / (stem + SUFFIX[kind]) for kind in wanted}
        for p, rel, stem in zip(paths, rels, base, strict=True)
    }
    rel_of = dict(zip(paths, rels, strict=True))
    _refuse_overwrites(plan, rel_of, out_dirs)
    return plan


def single_output(input_path: str | Path, output_arg: str | Path, kinds: Sequence[str]) -> dict[str, Path]:
    """Output paths when OUTPUT names a file: ``{kind: path}``.

    OUTPUT must end in ``.png``. One kind: exactly OUTPUT. Several: OUTPUT without
    ``.png`` is the stem, so ``out.png`` gives ``out.png`` (cutout),
    ``out.alpha.png`` and ``out.trimap.png``. Raises :class:`UsageError` for another
    extension or when OUTPUT is the input file.
    """
    wanted = _check_kinds(kinds)
    out = Path(output_arg)
    if out.suffix.lower() != ".png":
        raise UsageError(f"the output file {out} must end in .png (or name a folder)")
    if len(wanted) == 1:
        outputs = {wanted[0]: out}
    else:
        stem = out.name[: -len(out.suffix)]
        outputs = {kind: out.with_name(stem + SUFFIX[kind]) for kind in wanted}
    if str(input_path) != "-":
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


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` image: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA.

    OpenCV's encoder at its default (fast) compression; channels are given in RGB(A)
    order and swapped to OpenCV's BGR(A) here.
    """
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
    ok, buffer = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError("OpenCV could not encode the PNG")
    return buffer.tobytes()


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


def write_png(path: Path, array: np.ndarray) -> None:
    """Encode ``array`` (see :func:`encode_png`) and write it atomically to ``path``."""
    atomic_write_bytes(Path(path), encode_png(array))


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
