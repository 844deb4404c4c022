"""What a run of a plan reports: one :class:`FileResult` per input, gathered by :class:`Results` into a
:class:`RunSummary`; :class:`Run` is what every engine offers, :class:`Interrupted` how it stops early."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ben_cli.plan import Job

STATUSES = ("done", "skipped", "failed")


@dataclass
class FileResult:
    """What happened to one input: ``status`` is done, skipped (outputs exist) or failed (``error`` says why);
    ``redone`` says why outputs that existed were made again ("source changed"); ``crop``: with
    ``--crop``, :meth:`ben_cli.crop.Layout.to_json` of its outputs (the crop box in the original's
    coordinates, and the canvas)."""

    input: str
    status: str
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = field(default=None, repr=False)  # internal errors only; not in reports
    frames: int | None = None  # videos: frames written
    redone: str | None = None
    crop: dict[str, Any] | None = None


@dataclass
class RunSummary:
    """The results of a run, in input order, with its settings and timings.

    ``seconds`` counts from the end of model loading (so images/s excludes it);
    ``interrupted`` is the signal that stopped the run ("SIGINT", "SIGTERM") or None; ``error`` the one
    line of the error that ended it (exit 2: weights, device, usage), or None; ``loaded``: the model
    was loaded, so ``settings`` hold what the options resolved to (the device, the weights file);
    ``other_settings``: inputs skipped whose outputs record other settings than this run's;
    ``own_outputs``: files among the inputs left out as ben's own outputs (:attr:`~ben_cli.plan.Plan.own_outputs`).
    """

    results: list[FileResult]
    total: int
    seconds: float
    load_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    interrupted: str | None = None
    other_settings: int = 0
    own_outputs: int = 0
    error: str | None = None
    loaded: bool = False

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def redone(self) -> int:
        """Inputs done again because their source changed since their outputs were made."""
        return sum(r.status == "done" and r.redone is not None for r in self.results)

    @property
    def images_per_second(self) -> float:
        """Images done (videos not counted: see :attr:`frames_per_second`) per second."""
        images = sum(r.status == "done" and r.frames is None for r in self.results)
        return images / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames(self) -> int:
        """Video frames written by the videos done."""
        return sum(r.frames or 0 for r in self.results if r.status == "done")

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        totals: dict[str, Any] = {s: self.count(s) for s in STATUSES}
        totals.update(seconds=round(self.seconds, 3), images_per_second=round(self.images_per_second, 3))
        if any(r.frames is not None for r in self.results):
            totals.update(frames=self.frames, frames_per_second=round(self.frames_per_second, 3))
        run = {"inputs": self.total, "not_processed": self.total - len(self.results),
               "load_seconds": round(self.load_seconds, 3), "interrupted": self.interrupted,
               "redone": self.redone, "other_settings": self.other_settings, "own_outputs": self.own_outputs,
               "error": self.error}
        files = [{k: v for k, v in asdict(r).items()
                  if k != "traceback" and not (k in ("frames", "redone", "crop") and v is None)} for r in self.results]
        return {"settings": self.settings, "run": run, "totals": totals, "files": files}


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGTERM handler: stops a run like Ctrl-C, remembering the signal."""

    def __init__(self, signal_name: str = "SIGTERM") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class Run(Protocol):
    """One run of an engine over a plan's jobs.

    ``on_result`` sees each result as it comes; ``on_event(name, **info)`` sees "loading",
    "loaded" (``seconds``) and, for the local engine, "batch_size" (``old``, ``new``, ``reason``).
    """

    jobs: list[Job]
    on_result: Callable[[FileResult], None] | None
    on_event: Callable[..., None]

    def execute(self) -> RunSummary:
        """Process every job; Ctrl-C/SIGTERM end it early (``interrupted``); returns :meth:`summary`."""
        ...

    def summary(self) -> RunSummary:
        """The results so far, in input order (valid however :meth:`execute` ended)."""
        ...


class Results:
    """What every engine's run keeps: the results as they come, the settings, the timings."""

    def __init__(self, jobs: Sequence[Job], *, on_result: Callable[[FileResult], None] | None = None,
                 on_event: Callable[..., None] | None = None, settings: dict[str, Any] | None = None) -> None:
        self.jobs = list(jobs)
        self.on_result = on_result
        self.on_event = on_event or (lambda name, **info: None)
        self.results: list[FileResult] = []
        self.settings: dict[str, Any] = dict(settings or {})  # completed by the Eraser's own once loaded
        self.interrupted: str | None = None
        self.other_settings = 0  # skipped inputs whose outputs record other settings
        self._redone: set[str] = set()  # labels of inputs whose source changed: their outputs are made again
        self.load_seconds = 0.0
        self._started = time.perf_counter()
        self._loaded_at: float | None = None

    def record(self, result: FileResult) -> None:
        if result.status == "done" and result.input in self._redone:
            result = replace(result, redone="source changed")
        self.results.append(result)
        if self.on_result:
            self.on_result(result)

    def execute(self) -> RunSummary:
        """Process every job (the engine's ``_execute``); Ctrl-C/SIGTERM end it early (``interrupted``)."""
        try:
            self._execute()
        except KeyboardInterrupt as e:
            self.interrupted = getattr(e, "signal_name", "SIGINT")
        return self.summary()

    def _execute(self) -> None:
        raise NotImplementedError

    def pending(self, overwrite: bool, existing: Collection[str] | None) -> list[Job]:
        """The jobs with outputs left to write (only those outputs; every output of a job whose
        source changed since they were made); the others are recorded as skipped. Reads no file:
        the plan read the earlier outputs' records once."""
        from ben_cli.engines.steps import missing_outputs

        todo: list[Job] = []
        for job in self.jobs:
            if not overwrite and not job.to_stdout and job.source_changed:
                self._redone.add(job.label)
                todo.append(job)
                continue
            left = missing_outputs(job, overwrite, existing)
            if left is None:
                self.record(FileResult(job.label, "skipped", [str(p) for p in job.outputs.values()]))
                self.other_settings += job.other_settings
            else:
                todo.append(left)
        return todo

    def summary(self) -> RunSummary:
        """The results so far, in input order (valid after :meth:`execute` ended in any way)."""
        order = {job.label: i for i, job in enumerate(self.jobs)}
        results = sorted(self.results, key=lambda r: order.get(r.input, len(order)))
        start = self._loaded_at if self._loaded_at is not None else self._started
        return RunSummary(results, len(self.jobs), time.perf_counter() - start, self.load_seconds,
                          dict(self.settings), self.interrupted, self.other_settings,
                          loaded=self._loaded_at is not None)
