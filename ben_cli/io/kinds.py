"""The kinds of files: what an input is (image, video, animation) and what each output kind is called.

Inputs are told apart by extension (any case), which needs no decoder: images
(:data:`IMAGE_EXTS`), videos (:data:`VIDEO_EXTS`), and images that may hold an
animation (:data:`ANIMATION_EXTS`, read as videos only with ``--all-frames`` and
only when :func:`is_animated` says so, which opens the file with Pillow).

Outputs are the ``--save`` kinds (:data:`KINDS`), each written as ``<stem><suffix>``
(:data:`SUFFIX`; ``.jpg`` cutouts and videos give their own suffixes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ben_cli.errors import OptionError

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
"""Extensions (lower case, with the dot) that :func:`~ben_cli.io.find_images` picks up."""

VIDEO_EXTS: frozenset[str] = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"})
"""Extensions (lower case) read as videos; animated GIF/WebP/APNG are videos only with ``all_frames``."""

ANIMATION_EXTS: frozenset[str] = frozenset({".gif", ".webp", ".png", ".apng"})
"""Image extensions that may hold an animation (:func:`is_animated` decides)."""

SUFFIX: dict[str, str] = {
    "cutout": ".png", "alpha": ".alpha.png", "trimap": ".trimap.png", "overlay": ".overlay.png",
}
"""Output file suffix of each ``--save`` kind."""

KINDS: tuple[str, ...] = tuple(SUFFIX)


def is_animated(path: str | Path) -> bool:
    """True for an image file with more than one frame (animated GIF, WebP, APNG); False when unreadable."""
    try:
        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False)) and getattr(im, "n_frames", 1) > 1
    except Exception:
        return False


def is_video(path: str | Path, *, all_frames: bool = False) -> bool:
    """True for a video file by extension; with ``all_frames`` also for an animated GIF/WebP/APNG
    (which opens the file)."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_EXTS:
        return True
    return all_frames and suffix in ANIMATION_EXTS and is_animated(path)


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
