"""Finding inputs, on the local disk and through fsspec.

Folders are walked recursively; files are chosen by extension
(:data:`~ben_cli.io.IMAGE_EXTS`, any case; ``ben erase`` adds videos). Hidden files
and folders (names starting with ``.``: our temp files, ``.git``, macOS
``._x.jpg``) are skipped, as is the output folder when it lies inside the input
folder. Symlinked folders are followed, each real folder at most once (no loops).
Folders given as fsspec URLs are listed by their file system
(:func:`find_image_files`), with the same rules.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from pathlib import Path, PurePosixPath

from ben_cli.errors import UsageError
from ben_cli.io.fs import Place, is_file
from ben_cli.io.kinds import IMAGE_EXTS


def find_images(root: Path, *, exclude: Path | None = None, exts: Collection[str] = IMAGE_EXTS) -> list[Path]:
    """Image files under ``root``, recursively, sorted by their path relative to ``root``.

    Chosen by extension (any case; ``exts``, lower case with the dot, default
    :data:`IMAGE_EXTS`; ``ben erase`` adds videos); hidden files and folders are skipped, and so is
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
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in exts:
                    found.append(Path(entry.path))
            except OSError:
                continue
        stack.extend(reversed(subfolders))  # depth-first in name order: deterministic
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found


def find_image_files(place: Place, *, exclude: Place | None = None) -> list[PurePosixPath]:
    """Image files under a folder behind an fsspec URL, recursively, relative to it and sorted by their parts.

    The rules of :func:`find_images`: chosen by extension (any case), hidden files and
    folders skipped, and so is ``exclude`` (the output folder) when it lies inside
    ``place`` (and is not ``place`` itself). One listing of the file system.
    """
    skip = None
    if exclude is not None and exclude.path != place.path and place.contains(exclude):
        skip = place.relative(exclude.path)
    found: list[PurePosixPath] = []
    for path in place.files():
        rel = place.relative(path)
        if rel is None or any(part.startswith(".") for part in rel.parts):
            continue
        if skip is not None and rel.parts[: len(skip.parts)] == skip.parts:
            continue
        if os.path.splitext(rel.name)[1].lower() in IMAGE_EXTS:
            found.append(rel)
    found.sort(key=lambda p: p.parts)
    return found


def outputs_exist(paths: Iterable[Path | str]) -> bool:
    """True when every path (or fsspec URL) is an existing file (and there is at least one)."""
    paths = list(paths)
    return bool(paths) and all(is_file(p) for p in paths)
