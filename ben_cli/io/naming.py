"""Naming outputs: the mirrored tree, the collision rule, names kept from earlier runs.

Each input gets ``<stem><suffix>`` in the output folder that mirrors its
folder under the input root: ``.png`` (cutout), ``.alpha.png``,
``.trimap.png``, ``.overlay.png`` (:data:`~ben_cli.io.SUFFIX`). **Collision rule:**
when two inputs of one output folder would write the same file name (compared
ignoring case, over every kind whether requested or not), each of them keeps its
extension in the output name: ``a.jpg`` and ``a.png`` give ``a.jpg.png`` and
``a.png.png``, while a lone ``b.jpg`` gives ``b.png``, and ``x/a.jpg`` and
``y/a.jpg`` (different folders) give ``x/a.png`` and ``y/a.png``. Names that still
collide (they differ only in case, or are equal: ``photos/a.jpg`` and ``photos2/a.jpg``
into one folder) get ``~1``, ``~2``, ... in the order of their paths.
The rule reads only the list of inputs, never the order of processing or
``--save``. An output that would replace an input is refused.

**Names never change between runs** (cron jobs): every output ``ben`` writes
records its source (:mod:`ben_cli.io.pin`): its file name and its identity within
the run's inputs (which input root, and the path under it). When a folder is
planned again (:func:`name_outputs`), an input whose earlier output is there keeps
that name (two inputs of one name each keep their own), and the name of an output
whose source is another file (present or not) is never given to a new input: a
lone ``a.jpg`` gives ``a.png``; add ``a.png`` later and ``a.jpg`` keeps ``a.png``
while the newcomer gets ``a.png.png``, and the plan says so. Outputs of the first
release record a file name alone: an input of that name keeps it when it is the
only one (among several, the one the rule names so). Outputs without a record
(written by another tool) are treated as before. An output tree behind an fsspec
URL is listed once (:func:`~ben_cli.io.list_outputs`) and the same function names
its files.

A file OUTPUT (one input) must end in ``.png``. With one kind the file is
written exactly there; with several, OUTPUT without ``.png`` is the stem:
``out.png`` gives ``out.png`` (cutout), ``out.alpha.png``, ``out.trimap.png``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from ben_cli.errors import UsageError
from ben_cli.io.kinds import SUFFIX, check_kinds
from ben_cli.io.pin import Pin, existing_outputs


def _relative(folder: Path, in_root: Path) -> Path:
    """``folder`` relative to ``in_root`` (resolving both when they are spelled differently)."""
    try:
        return folder.relative_to(in_root)
    except ValueError:
        try:
            return folder.resolve().relative_to(in_root.resolve())
        except ValueError:
            raise ValueError(f"{folder} is not inside the input root {in_root}") from None


def _output_bases(entries: Sequence[tuple[str, ...]], reserved: Iterable[tuple[str, str]] = (),
                  suffixes: Mapping[str, str] = SUFFIX) -> list[str]:
    """The name each input's outputs start with, by the collision rule (module docstring).

    ``entries[i]`` is input i's (output folder relative to OUTPUT, file name[, its path]):
    names equal but for case are numbered in the order of these tuples, so the path
    decides between inputs of one name, whatever their order on the command line.
    ``reserved`` holds (folder, base) pairs already owned by other sources (outputs
    of an earlier run): a name that would clash with one of them is treated like a
    clash between two inputs. ``suffixes``: the file suffix of every kind in this run.
    """
    split = [os.path.splitext(entry[1]) for entry in entries]
    base = [stem for stem, _ext in split]
    folders = [entry[0].casefold() for entry in entries]
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
    previous: dict[Path, Pin] = field(default_factory=dict)  # {input: the record of its earlier output}


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
                 existing: Callable[[PurePath, Mapping[str, str]], Mapping[str, Pin | str]] | None = None,
                 pins: Mapping[PurePath, Pin] | None = None) -> NamedOutputs:
    """Name the outputs of ``entries``, each (input file, the folder its outputs go to).

    Files are named by the collision rule of the module docstring (inputs of one name
    numbered in the order of their paths). With ``keep_existing``, outputs already in
    those folders keep their names: each output that ``ben`` writes records its source
    (:func:`~ben_cli.io.read_output_pin`), an input whose earlier output is found keeps
    that name (:func:`_match_records` says which is whose), and a name owned by another
    source (present or not) is never given to a new input, which gets the next name of
    the rule instead (listed in ``renamed``). ``pins``: each input's identity (its root
    and path, :func:`~ben_cli.io.source_pin`); without one an input is known by its file
    name alone. ``suffixes`` maps each kind to its file suffix (default :data:`SUFFIX`;
    ``.jpg`` cutouts change one). Raises :class:`UsageError` for an unknown kind or when
    an output would replace an input.

    ``existing(folder, suffixes)`` gives ``{base: Pin}`` (or ``{base: file name}``) of the
    outputs already in an output folder: by default the local folder is listed
    (:func:`~ben_cli.io.existing_outputs`); an fsspec tree passes
    :meth:`~ben_cli.io.OutputListing.sources` of its one listing, with pure paths
    (:class:`~pathlib.PurePosixPath` keys relative to its roots) as ``entries``.
    """
    wanted = check_kinds(kinds)
    suffixes = {**SUFFIX, **(suffixes or {})}
    listed = existing or existing_outputs
    entries = list(dict.fromkeys((_as_path(p), _as_path(f)) for p, f in entries))
    known = [(pins or {}).get(p) or Pin(p.name) for p, _f in entries]
    folder_ids = {folder: str(i) for i, folder in enumerate(dict.fromkeys(f for _, f in entries))}
    named = [(folder_ids[f], p.name, str(p)) for p, f in entries]
    # A new input gets the name the rule gives it among all the inputs (as in a first run, whatever
    # was written before), unless that name is taken: then the next name of the rule.
    fresh = _output_bases(named, (), suffixes)
    pinned: dict[int, str] = {}
    previous: dict[PurePath, Pin] = {}
    reserved: list[tuple[str, str]] = []
    if keep_existing:
        roots = {pin.root for pin in known if pin.root is not None}
        by_folder: dict[PurePath, list[int]] = defaultdict(list)
        for i, (_p, folder) in enumerate(entries):
            by_folder[folder].append(i)
        for folder, members in by_folder.items():
            records = {base: Pin(r) if isinstance(r, str) else r for base, r in listed(folder, suffixes).items()}
            kept, others = _match_records(records, members, known, fresh, roots)
            pinned.update(kept)
            previous.update((entries[i][0], records[base]) for i, base in kept.items())
            reserved += [(folder_ids[folder], base) for base in others]
        reserved += [(folder_ids[entries[i][1]], b) for i, b in pinned.items()]
    bases = dict(pinned)
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
    return NamedOutputs(paths, renamed, previous)


def _match_records(records: Mapping[str, Pin], members: Sequence[int], pins: Sequence[Pin],
                   fresh: Sequence[str], roots: Collection[str]) -> tuple[dict[int, str], list[str]]:
    """Which earlier output (by base) each input of one output folder keeps, and the bases left to others.

    ``records``: the folder's earlier outputs; ``members``: the inputs going there (indexes
    into ``pins``, each input's identity, and ``fresh``, the names the rule gives them);
    ``roots``: the input roots of this run. An output is the input's whose identity (root
    and path) it records. An output whose root is none of this run's (one of the first
    release, which records a file name alone, or of a folder since moved) is the input's
    with its path, else with its file name, when one input fits (among several, the one
    the rule gives that name, else none). Every other output's name stays reserved.
    """
    pinned: dict[int, str] = {}
    left = dict(sorted(records.items()))
    by_identity = {(pins[i].root, pins[i].path): i for i in members if pins[i].root is not None}
    for base, record in list(left.items()):
        owner = by_identity.get((record.root, record.path)) if record.root is not None else None
        if owner is not None and owner not in pinned:
            pinned[owner] = base
            del left[base]
    for by_path in (True, False):
        for base, record in list(left.items()):
            if record.root is not None and record.root in roots:
                continue  # its source was one of this run's roots: gone, or not an input this time
            want = record.path if by_path else record.name
            fits = [i for i in members if i not in pinned and want is not None
                    and (pins[i].path if by_path else pins[i].name) == want]
            owner = fits[0] if len(fits) == 1 else next((i for i in fits if fresh[i] == base), None)
            if owner is not None:
                pinned[owner] = base
                del left[base]
    return pinned, list(left)


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
