"""Watching a drop folder (``ben erase IN OUT --watch``): after the first run over what is there, the
images that arrive under IN run in batches through the model loaded once, until Ctrl-C or SIGTERM.

:func:`watch` takes the files :class:`~ben_cli.io.watch.Arrivals` names, lets
:class:`~ben_cli.io.watch.Settling` decide when each is complete, and hands them to ``run_batch``
(the CLI plans them as a run over IN would, so they get the same names, and runs them on the local
engine with the loaded model) in batches of at most the batch size: a batch starts once it is
full, once no other file is still settling, or ``max_wait`` seconds after its first file was ready.
:class:`Tally` keeps the results of the whole watch (the first run and every batch), one entry per
input (its latest: a file replaced by a newer version is done again), for the report and the summary.
:class:`Stop` is what the CLI's signal handlers call: a signal between batches stops the watch at
once; one during a batch lets that batch finish (a second stops it too, keeping complete files).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ben_cli.engines.results import FileResult, Interrupted, RunSummary

if TYPE_CHECKING:
    from ben_cli.io.watch import Arrivals, Settling


class Stop:
    """What Ctrl-C and SIGTERM do while watching; the CLI's handlers call :meth:`request`.

    ``busy``: a batch is running (set by :func:`watch`); ``requested``: the signal that asked
    to stop once it ends; ``closing``: the watch is ending, signals are ignored.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.busy = False
        self.closing = False

    def request(self, signal_name: str) -> None:
        """Stop after the batch running, or now (raises :class:`Interrupted`) when none runs or a signal came before."""
        if self.closing:
            return
        if self.busy and self.requested is None:
            self.requested = signal_name
            return
        raise Interrupted(signal_name)


class Tally:
    """The results of a watch, one entry per input (the latest), in the order they were last processed."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.results: dict[str, FileResult] = {}
        self.left = 0  # inputs of the last run not processed (it was interrupted)
        self.settings: dict[str, Any] = dict(settings or {})
        self.load_seconds = 0.0
        self.other_settings = 0
        self.own_outputs = 0
        self.loaded = False
        self.seconds = 0.0  # spent in runs, loading not counted (the waits between them neither)

    def add(self, summary: RunSummary, *, own_outputs: int = 0) -> None:
        """The results of one run (the first, or a batch's)."""
        for r in summary.results:
            self.results.pop(r.input, None)
            self.results[r.input] = r
        self.left = summary.total - len(summary.results)
        self.load_seconds += summary.load_seconds
        self.seconds += summary.seconds
        self.other_settings += summary.other_settings
        self.own_outputs += own_outputs
        if summary.loaded:
            self.settings.update(summary.settings)
            self.loaded = True

    def loaded_now(self, settings: dict[str, Any], seconds: float) -> None:
        """The model was loaded outside a run (the watch loads it before the first arrival)."""
        self.settings.update(settings)
        self.load_seconds += seconds
        self.loaded = True

    def summary(self, interrupted: str | None = None, error: str | None = None) -> RunSummary:
        """Everything so far; ``seconds`` is the time spent processing (so images/s is the rate while busy)."""
        results = list(self.results.values())
        return RunSummary(results, len(results) + self.left, self.seconds, self.load_seconds, dict(self.settings),
                          interrupted, self.other_settings, self.own_outputs, error, self.loaded)


def watch(arrivals: Arrivals, settling: Settling, run_batch: Callable[[list[Path]], str | None], *,
          batch_size: int, stop: Stop, max_wait: float = 0.5, clock: Callable[[], float] = time.monotonic) -> str:
    """Run the files that arrive, in batches of at most ``batch_size``, until a signal; returns its name.

    ``run_batch(paths)`` plans and runs one batch (the files complete, in the order they were
    ready) and returns the signal that interrupted it, or None. A signal between batches stops at
    once; one during a batch (``stop.busy``) once it ends (:class:`Stop`).
    """
    ready: dict[Path, None] = {}
    first_ready = 0.0
    batch_size = max(1, batch_size)
    try:
        while True:
            busy = settling.pending or ready
            arrivals.wait(settling.interval if busy else 1.0)
            settling.add(arrivals.take())
            fresh = settling.ready()
            if fresh and not ready:
                first_ready = clock()
            ready.update((p, None) for p in fresh)
            if not ready:
                continue
            if len(ready) < batch_size and settling.pending and clock() - first_ready < max_wait:
                continue
            batch = list(ready)[:batch_size]
            for p in batch:
                del ready[p]
            first_ready = clock()
            stop.busy = True
            try:
                interrupted = run_batch(batch)
            finally:
                stop.busy = False
            if interrupted or stop.requested:
                return interrupted or stop.requested or "SIGINT"
    except KeyboardInterrupt as e:
        return getattr(e, "signal_name", "SIGINT")
