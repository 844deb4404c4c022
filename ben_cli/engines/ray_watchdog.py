"""Noticing that a Ray run makes no progress, and saying which resource it waits for.

Every step of the run reports to one :class:`ProgressLog` actor (no CPU of its own, so it runs
on any node, however full): a read done, a model actor loading or ready, a batch predicted, a
write done. :class:`Watchdog` (a thread of the driver) asks it every few seconds. When nothing
moved for ``limit`` seconds while jobs are left and no model is loading (a first batch counts
as loading, as it may compile; a load gets :data:`LOADING_SECONDS`), it works out what is
missing (:func:`diagnose`) and stops the run the way Ctrl-C does (Ray Data then shuts its
executor down); the engine raises :class:`~ben_cli.errors.StalledError` with that line.

A wait that can end by itself, GPU model actors on a cluster whose autoscaler may add GPU
nodes, is said once with how long it has lasted, and the run goes on waiting.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ben_cli.errors import BenWarning

LOADING_SECONDS = 1800.0
"""How long a model actor may load (its first batch included: a compile) before that counts as no progress."""


class ProgressLog:
    """The run's progress, kept by one Ray actor: counts per stage, models loading, the time of the last event."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.loading = 0
        self.last = time.monotonic()

    def tick(self, stage: str, n: int = 1) -> None:
        """``n`` rows went through ``stage`` ("read", "model", "write") or one actor "started"."""
        self.counts[stage] = self.counts.get(stage, 0) + n
        self.last = time.monotonic()

    def load(self, begins: bool) -> None:
        """A model actor begins loading (its first batch included), or is done with it."""
        self.loading += 1 if begins else -1
        self.last = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        """``counts``, ``loading`` (actors loading now) and ``idle`` (seconds since the last event)."""
        return {"counts": dict(self.counts), "loading": self.loading, "idle": time.monotonic() - self.last}


def progress_log(ray: Any) -> Any:
    """A :class:`ProgressLog` actor for one run, on the driver's node (soft: elsewhere when it cannot), no CPU."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0, max_restarts=-1, scheduling_strategy=here)(ProgressLog).remote()


def tick(log: Any, stage: str, n: int = 1) -> None:
    """Tell the run's :class:`ProgressLog` actor handle ``log`` (None: no log) without waiting for it."""
    if log is not None:
        log.tick.remote(stage, n)


def diagnose(*, rows: int, counts: Mapping[str, int], free: Sequence[Mapping[str, float]], io_cpus: float,
             actor_cpus: float, gpus: float, workers: int) -> str:
    """What the run waits for, in words, from the stage counts and each live node's free resources.

    ``rows``: the jobs of this pass; ``free``: ``{"CPU": c, "GPU": g}`` per live node.
    """
    cpus = ", ".join(f"{node.get('CPU', 0.0):g}" for node in free) or "none"
    free_cpu = max((node.get("CPU", 0.0) for node in free), default=0.0)
    if counts.get("started", 0) == 0:
        if gpus > 0 and max((node.get("GPU", 0.0) for node in free), default=0.0) < gpus:
            total = sum(node.get("GPU", 0.0) for node in free)
            return (f"the model workers need {gpus:g} GPU each and no node has one free "
                    f"(free GPUs: {total:g}; free CPUs by node: {cpus})")
        if free_cpu < actor_cpus:
            return (f"the model workers need {actor_cpus:g} CPU each and no node has that free "
                    f"(free CPUs by node: {cpus})")
    if counts.get("read", 0) < rows and free_cpu < io_cpus:
        return f"no node has {io_cpus:g} CPU free to read the images (free CPUs by node: {cpus})"
    if counts.get("write", 0) < counts.get("model", 0) and free_cpu < io_cpus:
        return f"no node has {io_cpus:g} CPU free to write the outputs (free CPUs by node: {cpus})"
    return (f"Ray Data started no step although the nodes have CPUs free ({cpus}; {workers} model workers of "
            f"{actor_cpus:g} CPU{f' {gpus:g} GPU' if gpus else ''}); run with {{opt:verbose}} to see its stages")


class Watchdog:
    """A driver thread watching ``log`` (a :class:`ProgressLog` actor handle) while a pass of ``rows`` jobs runs.

    ``limit``: seconds without progress before it acts (0: never); ``explain()``: the reason in
    words (:func:`diagnose` with the cluster's state now); ``gpu_wait()``: True while the wait is one
    that can end by itself (then it is said once, and waited out). :meth:`touch` records a result
    reaching the driver. After the run stopped, :attr:`reason` holds the line; None otherwise.
    """

    def __init__(self, ray: Any, log: Any, limit: float, explain: Callable[[dict[str, int]], str],
                 gpu_wait: Callable[[], bool], poll: float = 5.0) -> None:
        self.ray, self.log, self.limit, self.explain, self.gpu_wait = ray, log, limit, explain, gpu_wait
        self.poll = min(poll, max(limit / 4, 0.2)) if limit else poll
        self.reason: str | None = None
        self._last = time.monotonic()
        self._said_wait = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="ben-ray-watchdog", daemon=True)
        self._can_stop = (threading.current_thread() is threading.main_thread()
                          and signal.getsignal(signal.SIGINT) is signal.default_int_handler)

    def __enter__(self) -> Watchdog:
        if self.limit > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done.set()

    def touch(self) -> None:
        self._last = time.monotonic()

    def _watch(self) -> None:
        started = time.monotonic()
        while not self._done.wait(self.poll):
            snap = self._snapshot()
            idle = time.monotonic() - self._last
            limit = self.limit
            if snap is not None:
                idle = min(idle, float(snap["idle"]))
                if snap["loading"] > 0:  # (an actor that died loading never says it is done: hence a bound)
                    limit = max(limit, LOADING_SECONDS)
            if idle < limit:
                continue
            if self.gpu_wait():
                if not self._said_wait:
                    self._said_wait = True
                    warnings.warn(BenWarning(
                        f"waiting for GPU nodes for {time.monotonic() - started:.0f} s: the cluster has no GPU free "
                        "for the model workers (an autoscaler may add them); still waiting"), stacklevel=1)
                continue
            counts = dict(snap["counts"]) if snap else {}
            reason = f"the Ray run made no progress for {idle:.0f} s: {self.explain(counts)}"
            with self._lock:
                if self._done.is_set():
                    return
                self.reason = reason
                if self._can_stop:
                    _thread.interrupt_main(signal.SIGINT)  # Ray Data shuts its executor down on it, as on Ctrl-C
                    return
            warnings.warn(BenWarning(f"{reason} (not stopped: the run is not on the main thread)"), stacklevel=1)
            return

    def _snapshot(self) -> dict[str, Any] | None:
        try:
            return self.ray.get(self.log.snapshot.remote(), timeout=max(self.poll, 10.0))
        except Exception:
            return None  # the log's node is gone, or it is not up yet: the driver's own clock decides
