"""Planning: which inputs a run reads and where each output goes.

Shared by every engine and by ``ben erase`` and ``ben trimap``: a plan is a list
of :class:`Job` (a source, a label for messages, and a path per output kind), the
output folder, and the notes to show the user (name clashes, empty folders).
Nothing here runs the model or writes an image.

INPUT and OUTPUT may be fsspec URLs (``s3://bucket/photos``, ``file:///data``): such
a plan lists each input tree and the output tree once, names the outputs with the
same function and rule as local folders (:func:`ben_cli.io.name_outputs`), and keeps
the output listing (:attr:`Plan.existing`) so engines skip finished files without
asking the object store about each one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath

from ben_cli.errors import OptionError, UsageError
from ben_cli.io import (
    ANIMATION_EXTS,
    IMAGE_EXTS,
    STDIN_NAME,
    SUFFIX,
    VIDEO_EXTS,
    Pin,
    Place,
    check_kinds,
    existing_outputs,
    find_image_files,
    find_images,
    is_own_output,
    is_url,
    is_video,
    join_url,
    list_outputs,
    name_outputs,
    read_output_pin,
    read_stdin_bytes,
    root_id,
    single_output,
    source_pin,
)
from ben_cli.io.fs import is_local_fs

STDIO = "-"
"""INPUT ``-`` reads standard input, OUTPUT ``-`` writes standard output."""


@dataclass(frozen=True)
class Job:
    """One input and where each requested kind goes.

    ``source`` is the file to read (a path, or an fsspec URL string), or the bytes of
    standard input; ``label`` names the input in messages and reports; ``outputs`` maps
    a kind to a path, an fsspec URL string, or ``"-"`` for standard output.
    """

    label: str
    source: Path | str | bytes
    outputs: dict[str, Path | str]
    video: bool = False  # a video (or an animation with --all-frames): frames in, video or frame folders out
    pin: Pin | None = None  # what each output records of the source (None: its file name alone)
    previous: Pin | None = None  # the record of this input's earlier output, when the plan found one

    @property
    def to_stdout(self) -> bool:
        return STDIO in self.outputs.values()

    @property
    def record(self) -> Pin | str:
        """What each output records of its source (:mod:`ben_cli.io.pin`): the pin, else the file name."""
        return self.pin if self.pin is not None else self.source_name

    @property
    def source_changed(self) -> bool:
        """True when the source's size or modification time differ from its earlier output's record."""
        return self.pin is not None and self.previous is not None and self.pin.changed_since(self.previous)

    @property
    def other_settings(self) -> bool:
        """True when its earlier output records settings other than this run's."""
        return (self.pin is not None and self.previous is not None and None not in (self.pin.settings,
                                                                                     self.previous.settings)
                and self.pin.settings != self.previous.settings)

    @property
    def source_name(self) -> str:
        """The input's file name, recorded in each output (``stdin`` for piped input)."""
        if isinstance(self.source, bytes):
            return "stdin"
        return self.source.name if isinstance(self.source, Path) else PurePosixPath(self.source).name


@dataclass(frozen=True)
class Plan:
    """The jobs of a run, in input order; ``out_root`` is the output folder on this machine (None for a
    file, stdout or an object store). ``existing``: every file the one listing of an fsspec output tree
    found (as the ``str`` of job outputs); None when outputs are looked up one by one (local folders).
    """

    jobs: list[Job]
    out_root: Path | None = None
    notes: list[str] = field(default_factory=list)  # one-line warnings for the user
    existing: frozenset[str] | None = None
    own_outputs: int = 0  # files found among the inputs that are ben's own outputs: never read


def parse_kinds(values: Iterable[str]) -> tuple[str, ...]:
    """``--save`` values (repeated and/or comma-separated) -> ordered unique kinds (default: cutout)."""
    kinds = [k for v in values for k in (s.strip().lower() for s in v.split(",")) if k]
    return check_kinds(kinds) if kinds else ("cutout",)


def names_a_file(output: str | Path) -> bool:
    """True when OUTPUT looks like an image file name (``out.png``) rather than a folder."""
    p = Path(output)
    return p.suffix.lower() in IMAGE_EXTS and not p.is_dir()


def check_output_folder(folder: Path) -> None:
    """UsageError when ``folder`` is a file or lies under one (nothing could be written there)."""
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == folder else f"lies under the file {p}"
                raise UsageError(f"OUTPUT {folder} {what}; give a folder")
            return


def plan_run(inputs: Sequence[str | Path], output: str | Path | None, kinds: Sequence[str], *,
             read_stdin: Callable[[], bytes] = read_stdin_bytes, suffixes: Mapping[str, str] | None = None,
             video: VideoPlan | None = None, settings: str | None = None, only: Collection[Path] | None = None
             ) -> Plan:
    """Plan a run over ``inputs`` (files, folders, or ``["-"]``) into ``output``.

    ``output``: a folder (mirrors a single folder input; several inputs are gathered,
    each folder input under its own name), a ``.png`` file (one input), ``"-"``
    (standard output, one input, one kind) or None (outputs beside each input, as
    ``ben trimap`` does). Output names follow :func:`ben_cli.io.name_outputs`:
    existing outputs keep their names, and a renamed input is listed in ``notes``.
    ``suffixes`` overrides kinds' file suffixes (``{"cutout": ".jpg"}``). ``video``: also take
    video files (and animations with ``all_frames``), named with the video suffixes.
    ``settings``: the settings that shape the outputs (recorded in each; an earlier
    output that records others is reported, :attr:`Job.other_settings`).

    Each job carries its source's record (:attr:`Job.pin`: identity within the inputs,
    size and modification time) and the record of its earlier output
    (:attr:`Job.previous`), so engines redo a changed source. Files that carry ben's
    record are ben's outputs: never inputs (counted in :attr:`Plan.own_outputs`), unless
    a lone file is given. ``only``: plan just these files found in the input folders (a watched
    folder's arrivals), each named among every file of its folder, so with the names a plan of
    the whole inputs gives them.
    Raises :class:`UsageError` for a combination that cannot run.
    """
    kinds = check_kinds(kinds)
    suffixes = {**SUFFIX, **(suffixes or {})}
    if not inputs:
        raise UsageError("no INPUT given")
    to_stdout = output is not None and str(output) == STDIO
    if to_stdout and len(kinds) > 1:
        raise OptionError("save", "only one {flag} kind can be written to OUTPUT '-'", noun="output")
    if any(str(i) == STDIO for i in inputs):
        return _plan_stdin(inputs, output, kinds, read_stdin, suffixes)
    if any(is_url(str(i)) for i in inputs) or (output is not None and is_url(str(output))):
        return _plan_urls([str(i) for i in inputs], output, kinds, suffixes, settings)
    paths = [Path(i) for i in inputs]
    for p in paths:
        if not p.exists():
            raise UsageError(f"input not found: {p}")
    single = len(paths) == 1 and paths[0].is_file()
    single_video = single and video is not None and video.is_video(paths[0])
    if to_stdout:
        if not single:
            raise UsageError("OUTPUT '-' needs a single input image, not a folder or several inputs")
        if single_video:
            raise UsageError("a video cannot go to OUTPUT '-': give a folder or a file name")
        return Plan([Job(str(paths[0]), paths[0], {kinds[0]: STDIO})])
    if single_video and output is not None and Path(output).suffix.lower() in video.file_exts:
        outs = single_output(paths[0], output, kinds, video.suffixes)
        return Plan([_single_job(paths[0], outs, settings, video=True)])
    if single and output is not None and names_a_file(output):
        return Plan([_single_job(paths[0], single_output(paths[0], output, kinds, suffixes), settings)])
    if output is not None:
        out_root = Path(output)
        if names_a_file(out_root):
            raise UsageError(f"OUTPUT must be a folder when INPUT is a folder or several files: {out_root}")
        check_output_folder(out_root)
        for p in paths:
            if p.is_dir() and _same_dir(p, out_root):
                raise UsageError("OUTPUT must not be the INPUT folder (outputs would be read back as inputs)")
    else:
        out_root = None
    entries, pins, notes, own = _gather(paths, out_root, IMAGE_EXTS if video is None else IMAGE_EXTS | video.exts,
                                        None if only is None else {Path(p).parent for p in only})
    groups = [(entries, suffixes, False)]
    if video is not None:
        videos = [e for e in entries if video.is_video(e[0])]
        if videos:
            chosen = {e[0] for e in videos}
            groups = [([e for e in entries if e[0] not in chosen], suffixes, False), (videos, video.suffixes, True)]
    named_jobs: dict[Path, Job] = {}
    for group, group_suffixes, of_videos in groups:
        if out_root is None:  # beside the inputs: an output of this run is never one of its inputs
            group = _drop_own_outputs(group, [group_suffixes[k] for k in kinds])
        # video outputs never share a name with image outputs: each group reads back only its own records
        listed = partial(existing_outputs, defaults={}) if of_videos else existing_outputs
        named = name_outputs(group, kinds, suffixes=group_suffixes, existing=listed, pins=pins)
        for src, path in named.renamed:
            notes.append(f"{src}: name clash in {path.parent}: writing {path.name} (and its other kinds alike) "
                         f"instead of {src.stem}{group_suffixes[kinds[0]]}")
        named_jobs.update((p, Job(str(p), p, dict(outs), video=of_videos, pin=pins[p].with_settings(settings),
                                  previous=named.previous.get(p))) for p, outs in named.paths.items())
    chosen = None if only is None else {Path(p) for p in only}
    jobs = [named_jobs[p] for p in dict.fromkeys(p for p, _ in entries)
            if p in named_jobs and (chosen is None or p in chosen)]
    return Plan(jobs, out_root, notes, own_outputs=own)


def _single_job(src: Path, outputs: Mapping[str, Path], settings: str | None, *, video: bool = False) -> Job:
    """The job of one input file to an OUTPUT file: its record, and its earlier output's when there is one."""
    first = next(iter(outputs.values()))
    previous = read_output_pin(first) if first.exists() else None
    return Job(str(src), src, dict(outputs), video=video, pin=source_pin(src, src.parent).with_settings(settings),
               previous=previous)


def _plan_stdin(inputs: Sequence[str | Path], output: str | Path | None, kinds: tuple[str, ...],
                read_stdin: Callable[[], bytes], suffixes: Mapping[str, str]) -> Plan:
    if len(inputs) > 1:
        raise UsageError("INPUT '-' (standard input) takes one image: it cannot be combined with other inputs")
    if output is not None and is_url(str(output)):
        raise UsageError("with INPUT '-' (standard input) give a local OUTPUT file, or - for standard output")
    if output is None or (str(output) != STDIO and (Path(output).is_dir() or not names_a_file(output))):
        raise UsageError("with INPUT '-' (standard input) give OUTPUT: a .png file, or - for standard output")
    if str(output) == STDIO:
        outputs: dict[str, Path | str] = {kinds[0]: STDIO}
    else:
        outputs = dict(single_output(None, output, kinds, suffixes))
    return Plan([Job(STDIN_NAME, read_stdin(), outputs)])


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _gather(paths: Sequence[Path], out_root: Path | None, exts: Collection[str] = IMAGE_EXTS,
            folders: Collection[Path] | None = None) -> tuple[list[tuple[Path, Path]], dict[Path, Pin], list[str], int]:
    """(input file, its output folder) for every image, each input's record (its root: the folder
    given, or a file's own folder), a notes line for each folder without images, and how many
    files were left out as ben's own outputs (a lone file given is always read). ``folders``: only
    the images found directly in these folders of the folder inputs."""
    entries: list[tuple[Path, Path]] = []
    pins: dict[Path, Pin] = {}
    notes: list[str] = []
    own = 0
    lone = len(paths) == 1 and paths[0].is_file()
    for p in paths:
        if p.is_file():
            if not lone and is_own_output(p):
                own += 1
                continue
            entries.append((p, p.parent if out_root is None else out_root))
            pins.setdefault(p, source_pin(p, p.parent))
            continue
        images = find_images(p, exclude=out_root, exts=exts)
        if not images:
            notes.append(f"{p}: no images found (nothing to do there)")
        if folders is not None:
            images = [img for img in images if img.parent in folders]
        theirs = [img for img in images if not is_own_output(img)]
        own += len(images) - len(theirs)
        top = p if out_root is None else _folder_output(p, out_root, len(paths))
        entries += [(img, top / img.parent.relative_to(p)) for img in theirs]
        for img in theirs:
            pins.setdefault(img, source_pin(img, p))
    return entries, pins, notes, own


@dataclass(frozen=True)
class VideoPlan:
    """What the planner needs to know about videos: which inputs are videos (by their kind,
    :func:`ben_cli.io.is_video`) and their output suffixes (the video package's
    ``video_suffixes``, handed in by the caller)."""

    suffixes: Mapping[str, str]
    all_frames: bool = False

    @property
    def exts(self) -> frozenset[str]:
        """Extensions of the inputs that may be videos (animations too with ``all_frames``)."""
        return VIDEO_EXTS | (ANIMATION_EXTS if self.all_frames else frozenset())

    @property
    def file_exts(self) -> frozenset[str]:
        """Extensions a video OUTPUT file may have."""
        return frozenset("." + s.rsplit(".", 1)[-1] for s in self.suffixes.values() if "." in s)

    def is_video(self, path: Path) -> bool:
        return is_video(path, all_frames=self.all_frames)


def _folder_output(folder: Path, out_root: Path, n_inputs: int) -> Path:
    """Where a folder input's tree goes: OUTPUT itself, or OUTPUT/<folder name> among several inputs."""
    return out_root if n_inputs == 1 else out_root / (folder.resolve().name or "root")


def _drop_own_outputs(entries: list[tuple[Path, Path]], suffixes: Sequence[str]) -> list[tuple[Path, Path]]:
    """Entries without the files that are outputs of other entries (``a.trimap.png`` beside ``a.jpg``)."""
    outputs = {
        os.path.normcase(os.path.abspath(folder / (p.stem + s))) for p, folder in entries for s in suffixes
    }
    return [(p, f) for p, f in entries if os.path.normcase(os.path.abspath(p)) not in outputs]


def _plan_urls(inputs: Sequence[str], output: str | Path | None, kinds: tuple[str, ...],
               suffixes: Mapping[str, str], settings: str | None = None) -> Plan:
    """A plan where some INPUT or OUTPUT is an fsspec URL (local paths among them are opened by fsspec too).

    The layout is the local one (one folder input mirrored into OUTPUT, several gathered,
    files directly in OUTPUT); each input tree and the output tree are listed once.
    """
    if output is None:
        raise UsageError("URL inputs need an OUTPUT folder (a local folder or a URL)")
    places = [Place.of(i) for i in inputs]
    for place in places:
        if not place.exists():
            bucket = place.missing_bucket()
            raise UsageError(f"input not found: {place.url}" + (f" (there is no bucket {bucket})" if bucket else ""))
    single = len(places) == 1 and places[0].is_file()
    if str(output) == STDIO:
        if not single:
            raise UsageError("OUTPUT '-' needs a single input image, not a folder or several inputs")
        return Plan([Job(places[0].url, places[0].url, {kinds[0]: STDIO})])
    out = Place.of(str(output))
    if (bucket := out.missing_bucket()) is not None:
        raise UsageError(f"cannot write to {out.url}: there is no bucket {bucket} (create it first); nothing was done")
    names_file = PurePosixPath(out.path).suffix.lower() in IMAGE_EXTS and not out.is_dir()
    out_root = Path(out.path) if is_local_fs(out.fs) else None
    if single and names_file:
        name = PurePosixPath(out.path).name
        parent = Place(out.fs, str(PurePosixPath(out.path).parent), out.url[: len(out.url) - len(name)].rstrip("/"))
        outs = single_output(None, PurePosixPath(name), kinds, suffixes)
        _refuse_url_overwrites(outs.values(), parent, {(places[0].protocol, places[0].path)})
        return Plan([Job(places[0].url, places[0].url, {k: join_url(parent.url, p) for k, p in outs.items()})])
    if names_file:
        raise UsageError(f"OUTPUT must be a folder when INPUT is a folder or several files: {out.url}")
    if out.is_file():
        raise UsageError(f"OUTPUT {out.url} is a file; give a folder")
    for place in places:
        if place.protocol == out.protocol and place.path == out.path:
            raise UsageError("OUTPUT must not be the INPUT folder (outputs would be read back as inputs)")
    entries: list[tuple[PurePosixPath, PurePosixPath]] = []
    sources: dict[PurePosixPath, str] = {}
    pins: dict[PurePosixPath, Pin] = {}
    in_paths: set[tuple[str, str]] = set()
    notes: list[str] = []
    top = PurePosixPath(".")
    for i, place in enumerate(places):
        key = PurePosixPath(str(i))  # keys of inputs: unique per INPUT argument
        if place.is_file():
            name = PurePosixPath(place.path).name
            entries.append((key / name, top))
            sources[key / name] = place.url
            pins[key / name] = Pin(name, root_id(place.url[: len(place.url) - len(name)].rstrip("/")), name)
            in_paths.add((place.protocol, place.path))
            continue
        images = find_image_files(place, exclude=out)
        if not images:
            notes.append(f"{place.url}: no images found (nothing to do there)")
        folder = top if len(places) == 1 else PurePosixPath(place.name or "root")
        for rel in images:
            entries.append((key / rel, folder / rel.parent))
            sources[key / rel] = join_url(place.url, rel)
            pins[key / rel] = Pin(rel.name, root_id(place.url), rel.as_posix())
            in_paths.add((place.protocol, place.path.rstrip("/") + "/" + str(rel)))
    listing = list_outputs(out, suffixes)
    named = name_outputs(entries, kinds, suffixes=suffixes, existing=listing.sources, pins=pins)
    for key, path in named.renamed:
        notes.append(f"{sources[key]}: name clash in {join_url(out.url, path.parent)}: writing {path.name} (and "
                     f"its other kinds alike) instead of {key.stem}{suffixes[kinds[0]]}")
    jobs = []
    for key, outs in named.paths.items():
        outputs = {kind: join_url(out.url, p) for kind, p in outs.items()}
        _refuse_url_overwrites(outs.values(), out, in_paths)
        jobs.append(Job(sources[key], sources[key], outputs, pin=pins[key].with_settings(settings),
                        previous=named.previous.get(key)))
    existing = frozenset(join_url(out.url, f) for f in listing.files)
    return Plan(jobs, out_root, notes, existing)


def _refuse_url_overwrites(outputs: Iterable[PurePosixPath], out: Place, inputs: set[tuple[str, str]]) -> None:
    """UsageError when an output (a path relative to ``out``) is one of the ``inputs`` ((protocol, path) pairs)."""
    for rel in outputs:
        if (out.protocol, out.path.rstrip("/") + "/" + str(rel)) in inputs:
            raise UsageError(f"output {join_url(out.url, rel)} would overwrite an input; choose another OUTPUT")
