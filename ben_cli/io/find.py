"""Finding inputs and naming outputs, on the local disk and through fsspec.

Finding
    Folders are walked recursively; files are chosen by extension
    (:data:`IMAGE_EXTS`, any case). Hidden files and folders (names starting
    with ``.``: our temp files, ``.git``, macOS ``._x.jpg``) are skipped, as is
    the output folder when it lies inside the input folder. Symlinked folders
    are followed, each real folder at most once (no loops). Folders given as
    fsspec URLs are listed by their file system (:func:`find_image_files`), with
    the same rules.

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
    by the first release, or by another tool) are treated as before. An output
    tree behind an fsspec URL is listed once (:func:`list_outputs`) and the same
    function names its files.

    A file OUTPUT (one input) must end in ``.png``. With one kind the file is
    written exactly there; with several, OUTPUT without ``.png`` is the stem:
    ``out.png`` gives ``out.png`` (cutout), ``out.alpha.png``, ``out.trimap.png``.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import BinaryIO

from PIL import Image

from ben_cli.errors import OptionError, UsageError
from ben_cli.io.fs import Place, is_file

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

_HEAD_BYTES = 1 << 16  # what is read of a remote output to find its source record


# --------------------------------------------------------------------------- finding


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


@dataclass(frozen=True)
class OutputListing:
    """One listing of an output tree behind an fsspec URL, paths relative to its root.

    ``files``: every file there (hidden ones aside). ``records``: for each folder,
    ``{base: source file name}`` of the outputs that ``ben`` wrote there (read from
    the first bytes of each, fetched together), what :func:`name_outputs` needs.
    """

    files: frozenset[PurePosixPath]
    records: Mapping[PurePosixPath, Mapping[str, str]]

    def sources(self, folder: PurePath, suffixes: Mapping[str, str] | None = None) -> Mapping[str, str]:
        """``{base: source}`` of the earlier outputs in ``folder`` (the ``existing`` of :func:`name_outputs`)."""
        return self.records.get(PurePosixPath(folder), {})


def list_outputs(place: Place, suffixes: Mapping[str, str] | None = None) -> OutputListing:
    """List the output tree at ``place`` once and read the source record of its outputs.

    A folder holding several kinds of one output is asked for one record (the first
    file in name order, the next only when that one has none), as the local listing does.
    """
    ends = _output_ends({**SUFFIX, **(suffixes or {})})
    files: set[PurePosixPath] = set()
    pending: dict[tuple[PurePosixPath, str], list[str]] = defaultdict(list)
    for path in sorted(place.files()):
        rel = place.relative(path)
        if rel is None or any(part.startswith(".") for part in rel.parts):
            continue
        files.add(rel)
        if rel.name.lower().endswith(ends):
            pending[rel.parent, _strip_suffix(rel.name, ends)].append(path)
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


def _output_bases(entries: Sequence[tuple[str, str]], reserved: Iterable[tuple[str, str]] = (),
                  suffixes: Mapping[str, str] = SUFFIX) -> list[str]:
    """The name each input's outputs start with, by the collision rule (module docstring).

    ``entries[i]`` is input i's (output folder relative to OUTPUT, file name).
    ``reserved`` holds (folder, base) pairs already owned by other sources (outputs
    of an earlier run): a name that would clash with one of them is treated like a
    clash between two inputs. ``suffixes``: the file suffix of every kind in this run.
    """
    split = [os.path.splitext(name) for _folder, name in entries]
    base = [stem for stem, _ext in split]
    folders = [folder.casefold() for folder, _name in entries]
    suffixes = tuple(dict.fromkeys(s.casefold() for s in suffixes.values()))
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


def _name_keys(bases: Iterable[tuple[str, str]], suffixes: Mapping[str, str]) -> set[tuple[str, str]]:
    """The (folder, file name) pairs, folded, that ``(folder, base)`` pairs occupy over every kind's suffix."""
    ends = {s.casefold() for s in suffixes.values()}
    return {(folder.casefold(), base.casefold() + end) for folder, base in bases for end in ends}


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_overwrites(plan: dict[Path, dict[str, Path]]) -> None:
    """Raise UsageError when an output path is one of the inputs (folders compared resolved).

    Names equal but for case count when the file system says they are the same file.
    Pure paths (an fsspec tree's keys) are not looked up: their planner compares URLs.
    """
    if not all(isinstance(p, Path) for p in plan):
        return
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


def _as_path(p: str | os.PathLike[str]) -> PurePath:
    """A path object: pure paths (keys of an fsspec tree) stay pure, anything else is a local Path."""
    return p if isinstance(p, PurePath) else Path(p)


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


def name_outputs(entries: Sequence[tuple[PurePath, PurePath]], kinds: Sequence[str], *,
                 keep_existing: bool = True, suffixes: Mapping[str, str] | None = None,
                 existing: Callable[[PurePath, Mapping[str, str]], Mapping[str, str]] | None = None) -> NamedOutputs:
    """Name the outputs of ``entries``, each (input file, the folder its outputs go to).

    Files are named by the collision rule of the module docstring. With
    ``keep_existing``, outputs already in those folders keep their names: each PNG
    that ``ben`` writes records its source's file name (:func:`read_output_source`),
    an input whose earlier output is found keeps that name, and a name owned by
    another source (present or not) is never given to a new input, which gets the
    next name of the rule instead (listed in ``renamed``). ``suffixes`` maps each kind
    to its file suffix (default :data:`SUFFIX`; ``.jpg`` cutouts change one). Raises
    :class:`UsageError` for an unknown kind or when an output would replace an input.

    ``existing(folder, suffixes)`` gives ``{base: source file name}`` of the outputs
    already in an output folder: by default the local folder is listed; an fsspec
    tree passes :meth:`OutputListing.sources` of its one listing, with pure paths
    (:class:`~pathlib.PurePosixPath` keys relative to its roots) as ``entries``.
    """
    wanted = check_kinds(kinds)
    suffixes = {**SUFFIX, **(suffixes or {})}
    listed = existing or _existing_outputs
    entries = list(dict.fromkeys((_as_path(p), _as_path(f)) for p, f in entries))
    folder_ids = {folder: str(i) for i, folder in enumerate(dict.fromkeys(f for _, f in entries))}
    pinned: dict[int, str] = {}
    reserved: list[tuple[str, str]] = []
    if keep_existing:
        by_folder: dict[Path, list[int]] = defaultdict(list)
        for i, (_p, folder) in enumerate(entries):
            by_folder[folder].append(i)
        for folder, members in by_folder.items():
            names = {entries[i][0].name: i for i in members}
            for base, source in listed(folder, suffixes).items():
                owner = names.get(source)
                if owner is not None and owner not in pinned:
                    pinned[owner] = base
                elif owner is None or pinned.get(owner) != base:
                    reserved.append((folder_ids[folder], base))
        reserved += [(folder_ids[entries[i][1]], b) for i, b in pinned.items()]
    named = [(folder_ids[f], p.name) for p, f in entries]
    bases = dict(pinned)
    # A new input gets the name the rule gives it among all the inputs (as in a first run, whatever
    # was written before), unless that name is taken: then the next name of the rule.
    fresh = _output_bases(named, (), suffixes)
    taken = _name_keys(reserved, suffixes)
    free, clashing = [], []
    for i in range(len(entries)):
        if i not in pinned:
            (clashing if _name_keys([(named[i][0], fresh[i])], suffixes) & taken else free).append(i)
    bases.update((i, fresh[i]) for i in free)
    if clashing:
        others = reserved + [(named[i][0], fresh[i]) for i in free]
        bases.update(zip(clashing, _output_bases([named[i] for i in clashing], others, suffixes), strict=True))
    paths = {p: {kind: folder / (bases[i] + suffixes[kind]) for kind in wanted}
             for i, (p, folder) in enumerate(entries)}
    renamed = [(p, folder / (bases[i] + suffixes[wanted[0]])) for i, (p, folder) in enumerate(entries)
               if i not in pinned and bases[i] != os.path.splitext(p.name)[0]]
    _refuse_overwrites(paths)
    return NamedOutputs(paths, renamed)


_SOURCE_KEY = b"ben:source"


def _existing_outputs(folder: PurePath, suffixes: Mapping[str, str]) -> dict[str, str]:
    """``{base: source file name}`` of the outputs that ``ben`` wrote in the local ``folder`` (one listing)."""
    ends = _output_ends(suffixes)
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.name.lower().endswith(ends) and not e.name.startswith(".")]
    except OSError:
        return {}
    found: dict[str, str] = {}
    for name in sorted(names):
        base = _strip_suffix(name, ends)
        if base in found:
            continue
        source = read_output_source(Path(folder) / name)
        if source is not None:
            found[base] = source
    return found


def _output_ends(suffixes: Mapping[str, str]) -> tuple[str, ...]:
    """The lower-case file endings of every output kind (the default ones and ``suffixes``)."""
    return tuple(dict.fromkeys(s.lower() for s in (*SUFFIX.values(), *suffixes.values())))


def _strip_suffix(name: str, suffixes: Iterable[str]) -> str:
    """The base of an output file name: ``a.alpha.png`` -> ``a``, ``a.png`` -> ``a``."""
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_output_source(path: Path) -> str | None:
    """The source file name recorded in a PNG written by ``ben`` (its ``ben:source`` text chunk), or None.

    Reads only the chunks before the image data. JPEG outputs (``--format jpg``) carry it
    in their comment (``ben:source=<name>``).
    """
    try:
        with open(path, "rb") as f:
            return output_source(f)
    except OSError:
        return None


def output_source(f: BinaryIO | bytes) -> str | None:
    """The ``ben:source`` record of an output file given as an open binary file or its first bytes, or None."""
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


def _jpeg_source(f: BinaryIO) -> str | None:
    try:
        with Image.open(f) as im:
            comment = im.info.get("comment", b"")
    except Exception:
        return None
    text = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
    return text[len("ben:source=") :] if text.startswith("ben:source=") else None


def source_chunk(source_name: str) -> tuple[bytes, bytes]:
    """The (type, data) of the iTXt chunk that records an output's source file name."""
    return b"iTXt", _SOURCE_KEY + b"\0\0\0\0\0" + source_name.encode("utf-8")


def single_output(input_path: str | Path | None, output_arg: str | PurePath, kinds: Sequence[str],
                  suffixes: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Output paths when OUTPUT names a file: ``{kind: path}``.

    OUTPUT must end in the extension of the first kind (``.png``; ``.jpg`` or ``.webp``
    for such cutouts). One kind: exactly OUTPUT. Several: OUTPUT without that
    extension is the stem, so ``out.png`` gives ``out.png`` (cutout),
    ``out.alpha.png`` and ``out.trimap.png``. Raises :class:`UsageError` for another
    extension or when OUTPUT is the input file (``input_path=None``: standard input,
    no such check). A pure path OUTPUT gives pure paths.
    """
    wanted = check_kinds(kinds)
    suffixes = {**SUFFIX, **(suffixes or {})}
    out = _as_path(output_arg)
    ext = "." + suffixes[wanted[0]].rsplit(".", 1)[-1]
    if out.suffix.lower() != ext:
        raise UsageError(f"the output file {out} must end in {ext} (or name a folder)")
    if len(wanted) == 1:
        outputs = {wanted[0]: out}
    else:
        stem = out.name[: -len(out.suffix)]
        outputs = {kind: out.with_name(stem + suffixes[kind]) for kind in wanted}
    if input_path is not None and str(input_path) != "-":
        refuse_overwriting_input(outputs.values(), Path(input_path))
    return outputs


def refuse_overwriting_input(outputs: Iterable[Path], src: Path) -> None:
    """Raise UsageError when any output path is the input file (same path or same file)."""
    for path in outputs:
        if path.resolve() == src.resolve() or _same_file(path, src):
            raise UsageError(f"output {path} would overwrite the input {src}")


def outputs_exist(paths: Iterable[Path | str]) -> bool:
    """True when every path (or fsspec URL) is an existing file (and there is at least one)."""
    paths = list(paths)
    return bool(paths) and all(is_file(p) for p in paths)
