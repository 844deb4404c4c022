"""Watching a folder for images that arrive (``ben erase IN OUT --watch``): which files, and when each is complete.

:class:`Arrivals` runs a watchdog observer over the folder, recursively (inotify, FSEvents or
ReadDirectoryChanges; with ``poll`` a polling observer, for network mounts where events do not
arrive) and hands out the files that events named: created, modified, closed after writing, or
moved in (a folder moved in is walked). Events only say that something changed; whether a file
is complete is :class:`Settling`'s decision. Ignored, as :func:`~ben_cli.io.find_images` ignores
them: files and folders whose name starts with ``.`` (ben's own temporary files
``.<name>.ben-<hex>.tmp``, rsync's ``.name.XXXXXX``, ``.git``), the output folder when it lies
inside, and every file whose extension is not an input's: so partial downloads too (``a.jpg.part``,
``.crdownload``, ``.tmp``, ``.download``, ``a.jpg~``), until they are renamed to their real name.

:class:`Settling` decides when a file is complete: its size and modification time unchanged for
``settle`` seconds, and then it decodes (:func:`~ben_cli.io.read_image`; videos: the stable size
and time alone). One that does not decode may be still being written (a copy that paused): it is
tried again every ``settle`` seconds while unchanged, and once it has stayed unchanged for
``3 x settle`` (at least 2 s) and still does not decode it is handed out anyway, for the run to
name it as the unreadable file it is. A file is handed out once per version (size and time): it
comes again only when it changes.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from ben_cli.errors import BenError, UsageError

Stamp = tuple[int, int]
"""(size in bytes, modification time in ns) of a file."""


def stamp_of(path: Path) -> Stamp | None:
    """The file's (size, modification time), or None when it is gone or is no file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return st.st_size, st.st_mtime_ns


class Rules:
    """Which paths under ``root`` are inputs: the rules of :func:`~ben_cli.io.find_images` (hidden names,
    the ``exclude`` folder, the extensions ``exts``). Paths are given back under ``root`` as spelled, so
    they match the planner's (an event may name the folder resolved: macOS FSEvents does)."""

    def __init__(self, root: Path, exclude: Path | None, exts: Collection[str]) -> None:
        self.root = Path(root)
        self.real = Path(os.path.realpath(self.root))
        self.exts = frozenset(e.lower() for e in exts)
        self.exclude: tuple[str, ...] | None = None
        if exclude is not None:
            real = Path(os.path.realpath(exclude))
            with contextlib.suppress(ValueError):
                self.exclude = real.relative_to(self.real).parts or None

    def relative(self, path: str | os.PathLike[str]) -> tuple[str, ...] | None:
        """The parts of ``path`` under the root (as given or resolved), or None when it lies elsewhere."""
        p = Path(os.fspath(path))
        for root in (self.root, self.real):
            with contextlib.suppress(ValueError):
                return p.relative_to(root).parts
        if not p.is_absolute():
            return None
        with contextlib.suppress(ValueError, OSError):
            return (*Path(os.path.realpath(p.parent)).relative_to(self.real).parts, p.name)
        return None

    def folder(self, path: str | os.PathLike[str]) -> Path | None:
        """The folder under the root to walk, or None when it is hidden or the output folder."""
        parts = self.relative(path)
        if parts is None or any(part.startswith(".") for part in parts) or self._excluded(parts):
            return None
        return self.root.joinpath(*parts)

    def file(self, path: str | os.PathLike[str]) -> Path | None:
        """The input file ``path`` names (under the root as given), or None when it is not one."""
        parts = self.relative(path)
        if not parts or any(part.startswith(".") for part in parts) or self._excluded(parts[:-1]):
            return None
        if os.path.splitext(parts[-1])[1].lower() not in self.exts:
            return None
        return self.root.joinpath(*parts)

    def _excluded(self, parts: tuple[str, ...]) -> bool:
        return self.exclude is not None and parts[: len(self.exclude)] == self.exclude


class Arrivals:
    """The files events name under a folder (:class:`Rules`), from a watchdog observer on its own thread.

    Use as a context manager (the observer runs inside it). :meth:`wait` blocks until an event
    comes (or ``timeout``); :meth:`take` drains them, as input files (a folder's images walked).
    Raises :class:`UsageError` when the folder cannot be watched (the system's limit of watches:
    ``poll`` then works anywhere).
    """

    def __init__(self, rules: Rules, *, poll: bool = False, poll_interval: float = 1.0) -> None:
        self.rules = rules
        self.poll = poll
        self.poll_interval = poll_interval
        self._events: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()
        self._came = threading.Event()  # set by each event, cleared by take()
        self._observer = None

    def __enter__(self) -> Arrivals:
        from watchdog.events import FileSystemEventHandler

        if self.poll:
            from watchdog.observers.polling import PollingObserver

            observer = PollingObserver(timeout=self.poll_interval)
        else:
            from watchdog.observers import Observer

            observer = Observer()
        events, came = self._events, self._came

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type in ("deleted", "opened", "closed_no_write"):
                    return  # a deleted input leaves its outputs
                path = getattr(event, "dest_path", "") or event.src_path
                events.put((os.fsdecode(path), bool(event.is_directory)))
                came.set()

        try:
            observer.schedule(Handler(), str(self.rules.root), recursive=True)
            observer.start()
        except OSError as e:
            with contextlib.suppress(Exception):
                observer.stop()
            hint = "" if self.poll else "; {opt:poll} watches by polling instead"
            raise UsageError(f"cannot watch {self.rules.root}: {e.strerror or e}{hint}") from None
        self._observer = observer
        return self

    def __exit__(self, *exc: object) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=10)

    def wait(self, timeout: float) -> None:
        """Until an event is queued, or ``timeout`` seconds."""
        self._came.wait(max(timeout, 0.0))

    def existing(self) -> list[Path]:
        """Every input file under the folder now (what a run over it would find)."""
        from ben_cli.io.find import find_images

        out = self.rules.root / Path(*self.rules.exclude) if self.rules.exclude else None
        return [p for img in find_images(self.rules.root, exclude=out, exts=self.rules.exts)
                if (p := self.rules.file(img)) is not None]

    def take(self) -> list[Path]:
        """The input files named by the events so far, each once, in the order they came."""
        from ben_cli.io.find import find_images

        found: dict[Path, None] = {}
        self._came.clear()
        while True:
            try:
                path, is_dir = self._events.get_nowait()
            except queue.Empty:
                return list(found)
            if is_dir or os.path.isdir(path):
                folder = self.rules.folder(path)
                if folder is None:
                    continue
                try:
                    images = find_images(folder, exts=self.rules.exts)
                except BenError:  # gone again
                    continue
                found.update((p, None) for img in images if (p := self.rules.file(img)) is not None)
            elif (p := self.rules.file(path)) is not None:
                found[p] = None


def complete(path: Path, *, all_frames: bool = False) -> bool:
    """True when ``path`` decodes as an image (:func:`~ben_cli.io.read_image`); a video (by its kind,
    :func:`~ben_cli.io.is_video`) is not decoded here: its stable size and time say it is complete."""
    from ben_cli.io.kinds import is_video
    from ben_cli.io.read import read_image

    if is_video(path, all_frames=all_frames):
        return True
    try:
        read_image(path)
    except Exception:  # InputError, or a file that went away
        return False
    return True


@dataclass
class _Candidate:
    stamp: Stamp
    since: float  # when it was first seen with this stamp
    tried: float | None = None  # when it last failed to decode


class Settling:
    """The files not complete yet, and the stamps of those already handed out (module docstring).

    ``settle``: seconds a file's size and time must stay unchanged; ``complete(path)``: the check
    once they have (default: :func:`complete`); ``clock``: seconds, monotonic.
    """

    def __init__(self, settle: float, *, complete: Callable[[Path], bool] = complete,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settle = max(float(settle), 0.0)
        self.give_up = max(3 * self.settle, 2.0)
        self.complete = complete
        self.clock = clock
        self._candidates: dict[Path, _Candidate] = {}
        self._handed: dict[Path, Stamp] = {}

    @property
    def pending(self) -> int:
        """Files seen and not handed out yet."""
        return len(self._candidates)

    @property
    def interval(self) -> float:
        """How often to look at the pending files: a few times per ``settle``."""
        return min(max(self.settle / 3, 0.02), 0.25)

    def handled(self, path: Path, stamp: Stamp | None) -> None:
        """``path`` at ``stamp`` was dealt with already (the first run): it comes again only changed."""
        if stamp is not None:
            self._handed[Path(path)] = stamp

    def add(self, paths: Iterable[Path]) -> None:
        """Files that may have changed (each is looked at from now on until it settles or is gone)."""
        now = self.clock()
        for path in paths:
            path = Path(path)
            stamp = stamp_of(path)
            if stamp is None or self._handed.get(path) == stamp:
                self._candidates.pop(path, None)
                continue
            known = self._candidates.get(path)
            if known is None or known.stamp != stamp:
                self._candidates[path] = _Candidate(stamp, now)

    def ready(self) -> list[Path]:
        """The files complete now, each handed out once per version; in the order they were seen."""
        now = self.clock()
        out: list[Path] = []
        for path, c in list(self._candidates.items()):
            stamp = stamp_of(path)
            if stamp is None or self._handed.get(path) == stamp:
                del self._candidates[path]
                continue
            if stamp != c.stamp:
                self._candidates[path] = _Candidate(stamp, now)
                continue
            if now - c.since < self.settle or (c.tried is not None and now - c.tried < self.settle):
                continue
            if not self.complete(path) and now - c.since < self.give_up:
                c.tried = self.clock()
                continue
            if stamp_of(path) != stamp:  # it changed while being checked
                self._candidates[path] = _Candidate(stamp_of(path) or stamp, self.clock())
                continue
            del self._candidates[path]
            self._handed[path] = stamp
            out.append(path)
        return out
