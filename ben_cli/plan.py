"""Planning: which inputs a run reads and where each output goes.

Shared by every engine and by ``ben erase`` and ``ben trimap``: a plan is a list
of :class:`Job` (a source, a label for messages, and a path per output kind), the
output folder, and the notes to show the user (name clashes, empty folders).
Nothing here runs the model or writes an image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ben_cli.errors import OptionError, UsageError
from ben_cli.io import (
    IMAGE_EXTS,
    STDIN_NAME,
    SUFFIX,
    check_kinds,
    find_images,
    name_outputs,
    read_stdin_bytes,
    single_output,
)

STDIO = "-"
"""INPUT ``-`` reads standard input, OUTPUT ``-`` writes standard output."""


@dataclass(frozen=True)
class Job:
    """One input and where each requested kind goes.

    ``source`` is the file to read, or the bytes of standard input; ``label`` names
    the input in messages and reports; ``outputs`` maps a kind to a path, or to
    ``"-"`` for standard output.
    """

    label: str
    source: Path | bytes
    outputs: dict[str, Path | str]

    @property
    def to_stdout(self) -> bool:
        return STDIO in self.outputs.values()

    @property
    def source_name(self) -> str:
        """The input's file name, recorded in each output (``stdin`` for piped input)."""
        return "stdin" if isinstance(self.source, bytes) else self.source.name


@dataclass(frozen=True)
class Plan:
    """The jobs of a run, in input order; ``out_root`` is the output folder (None for a file or stdout)."""

    jobs: list[Job]
    out_root: Path | None = None
    notes: list[str] = field(default_factory=list)  # one-line warnings for the user


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
             read_stdin: Callable[[], bytes] = read_stdin_bytes) -> Plan:
    """Plan a run over ``inputs`` (files, folders, or ``["-"]``) into ``output``.

    ``output``: a folder (mirrors a single folder input; several inputs are gathered,
    each folder input under its own name), a ``.png`` file (one input), ``"-"``
    (standard output, one input, one kind) or None (outputs beside each input, as
    ``ben trimap`` does). Output names follow :func:`ben_cli.io.name_outputs`:
    existing outputs keep their names, and a renamed input is listed in ``notes``.
    Raises :class:`UsageError` for a combination that cannot run.
    """
    kinds = check_kinds(kinds)
    if not inputs:
        raise UsageError("no INPUT given")
    to_stdout = output is not None and str(output) == STDIO
    if to_stdout and len(kinds) > 1:
        raise OptionError("save", "only one {flag} kind can be written to OUTPUT '-'", noun="output")
    if any(str(i) == STDIO for i in inputs):
        return _plan_stdin(inputs, output, kinds, read_stdin)
    paths = [Path(i) for i in inputs]
    for p in paths:
        if not p.exists():
            raise UsageError(f"input not found: {p}")
    single = len(paths) == 1 and paths[0].is_file()
    if to_stdout:
        if not single:
            raise UsageError("OUTPUT '-' needs a single input image, not a folder or several inputs")
        return Plan([Job(str(paths[0]), paths[0], {kinds[0]: STDIO})])
    if single and output is not None and names_a_file(output):
        return Plan([Job(str(paths[0]), paths[0], dict(single_output(paths[0], output, kinds)))])
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
    entries, notes = _gather(paths, out_root)
    if out_root is None:  # beside the inputs: an output of this run is never one of its inputs
        entries = _drop_own_outputs(entries, kinds)
    named = name_outputs(entries, kinds)
    for src, path in named.renamed:
        notes.append(f"{src}: name clash in {path.parent}: writing {path.name[: -len(SUFFIX['cutout'])]}"
                     f"{SUFFIX['cutout']} (and other kinds alike) instead of {src.stem}{SUFFIX['cutout']}")
    jobs = [Job(str(p), p, dict(outs)) for p, outs in named.paths.items()]
    return Plan(jobs, out_root, notes)


def _plan_stdin(inputs: Sequence[str | Path], output: str | Path | None, kinds: tuple[str, ...],
                read_stdin: Callable[[], bytes]) -> Plan:
    if len(inputs) > 1:
        raise UsageError("INPUT '-' (standard input) takes one image: it cannot be combined with other inputs")
    if output is None or (str(output) != STDIO and (Path(output).is_dir() or not names_a_file(output))):
        raise UsageError("with INPUT '-' (standard input) give OUTPUT: a .png file, or - for standard output")
    if str(output) == STDIO:
        outputs: dict[str, Path | str] = {kinds[0]: STDIO}
    else:
        outputs = dict(single_output(None, output, kinds))
    return Plan([Job(STDIN_NAME, read_stdin(), outputs)])


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _gather(paths: Sequence[Path], out_root: Path | None) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(input file, its output folder) for every image; a notes line for each folder without images."""
    entries: list[tuple[Path, Path]] = []
    notes: list[str] = []
    for p in paths:
        if p.is_file():
            entries.append((p, p.parent if out_root is None else out_root))
            continue
        images = find_images(p, exclude=out_root)
        if not images:
            notes.append(f"{p}: no images found (nothing to do there)")
        top = p if out_root is None else _folder_output(p, out_root, len(paths))
        entries += [(img, top / img.parent.relative_to(p)) for img in images]
    return entries, notes


def _folder_output(folder: Path, out_root: Path, n_inputs: int) -> Path:
    """Where a folder input's tree goes: OUTPUT itself, or OUTPUT/<folder name> among several inputs."""
    return out_root if n_inputs == 1 else out_root / (folder.resolve().name or "root")


def _drop_own_outputs(entries: list[tuple[Path, Path]], kinds: tuple[str, ...]) -> list[tuple[Path, Path]]:
    """Entries without the files that are outputs of other entries (``a.trimap.png`` beside ``a.jpg``)."""
    outputs = {
        os.path.normcase(os.path.abspath(folder / (p.stem + SUFFIX[k]))) for p, folder in entries for k in kinds
    }
    return [(p, f) for p, f in entries if os.path.normcase(os.path.abspath(p)) not in outputs]
