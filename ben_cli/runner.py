"""The local engine of ``ben erase``: reads, infers and writes with overlap.

Reader threads decode and resize upcoming images while the model runs on the
current batch; writer threads compose, encode and atomically write the
previous batch's outputs. No single image can stop a run: every failure while
reading, predicting or writing becomes a failed :class:`FileResult` with its
reason, and the run goes on. When the model runs out of memory, the batch is
retried one image at a time and the batch size is lowered for the rest of the
run. Ctrl-C and SIGTERM stop the run between steps; what was done is kept in
:attr:`BatchRun.results`.
"""

from __future__ import annotations

import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ben_cli.compose import cutout, multiply_alpha
from ben_cli.errors import InputError
from ben_cli.io import LoadedImage, atomic_write_bytes, encode_png, read_image, write_stdout_bytes
from ben_cli.pipeline import Eraser, Prediction, resize_for_model
from ben_cli.plan import STDIO, Job
from ben_cli.trimap import trimap_overlay

STATUSES = ("done", "skipped", "failed")
TRIMAP_KINDS = frozenset({"trimap", "overlay"})  # kinds that need the trimap computed


@dataclass
class FileResult:
    """What happened to one input: ``status`` is done, skipped (outputs exist) or failed (``error`` says why)."""

    input: str
    status: str
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = field(default=None, repr=False)  # internal errors only; not in reports


@dataclass
class RunSummary:
    """The results of a run, in input order, with its settings and timings.

    ``seconds`` counts from the end of model loading (so images/s excludes it);
    ``interrupted`` is the signal that stopped the run ("SIGINT", "SIGTERM") or None.
    """

    results: list[FileResult]
    total: int
    seconds: float
    load_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    interrupted: str | None = None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def images_per_second(self) -> float:
        return self.count("done") / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        totals: dict[str, Any] = {s: self.count(s) for s in STATUSES}
        totals.update(seconds=round(self.seconds, 3), images_per_second=round(self.images_per_second, 3))
        run = {"inputs": self.total, "not_processed": self.total - len(self.results),
               "load_seconds": round(self.load_seconds, 3), "interrupted": self.interrupted}
        files = [{k: v for k, v in asdict(r).items() if k != "traceback"} for r in self.results]
        return {"settings": self.settings, "run": run, "totals": totals, "files": files}


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGTERM handler: stops a run like Ctrl-C, remembering the signal."""

    def __init__(self, signal_name: str = "SIGTERM") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def render(kind: str, image: LoadedImage, pred: Prediction) -> np.ndarray:
    """The array written for one output kind (H, W[, 3 or 4]) uint8: RGBA cutout, alpha, trimap, or
    the trimap overlay picture (RGB).

    The input's own transparency is kept: alpha and cutout use model alpha times input alpha.
    """
    if kind in TRIMAP_KINDS:
        if pred.trimap is None:
            raise ValueError("trimap was not computed")
        if kind == "trimap":
            return pred.trimap
        rgb = torch.from_numpy(image.rgb).permute(2, 0, 1)[None]
        return trimap_overlay(rgb, torch.from_numpy(pred.trimap)[None, None])[0].permute(1, 2, 0).contiguous().numpy()
    alpha = torch.from_numpy(pred.alpha)[None, None]
    if image.alpha is not None:
        alpha = multiply_alpha(alpha, torch.from_numpy(image.alpha)[None, None])
    if kind == "alpha":
        return alpha[0, 0].numpy()
    rgb = torch.from_numpy(image.rgb).permute(2, 0, 1)[None]
    return cutout(rgb, alpha)[0].permute(1, 2, 0).contiguous().numpy()


def write_outputs(job: Job, image: LoadedImage, pred: Prediction) -> list[str]:
    """Render, encode and write every output of ``job`` (atomically; ``-`` is stdout)."""
    written = []
    for kind, target in job.outputs.items():
        icc = image.icc_profile if kind == "cutout" else None
        data = encode_png(render(kind, image, pred), icc_profile=icc, source=job.source_name)
        if target == STDIO:
            write_stdout_bytes(data)
        else:
            atomic_write_bytes(Path(target), data)
        written.append(str(target))
    return written


def read_job(job: Job, side: int) -> tuple[LoadedImage, np.ndarray]:
    """Decode a job's image and resize it to the model side."""
    image = read_image(job.source, name=job.label)
    return image, resize_for_model(image.rgb, side)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA/MPS out-of-memory errors and the CPU's MemoryError."""
    oom = getattr(torch, "OutOfMemoryError", ())
    return isinstance(error, MemoryError) or (oom and isinstance(error, oom)) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def failure(error: BaseException, stage: str) -> tuple[str, str | None]:
    """(one-line reason, traceback for internal errors) of a per-file failure in ``stage``."""
    if isinstance(error, InputError):
        return error.reason, None
    if is_out_of_memory(error):
        return f"out of memory while {stage}", None
    if stage == "writing" and isinstance(error, OSError):
        return f"cannot write output ({error.strerror or error})", None
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    reason = f"internal error while {stage}: {type(error).__name__}{': ' + text if text else ''}"
    return reason, "".join(traceback.format_exception(error))


def missing_outputs(job: Job, overwrite: bool) -> Job | None:
    """``job`` with only the outputs still to write, or None when every output exists."""
    if overwrite or job.to_stdout:
        return job
    todo = {k: p for k, p in job.outputs.items() if not Path(p).is_file()}
    if not todo:
        return None
    return job if len(todo) == len(job.outputs) else replace(job, outputs=todo)


Item = tuple[Job, LoadedImage, np.ndarray]


class BatchRun:
    """One run over ``jobs``; :meth:`execute` fills :attr:`results`, :meth:`summary` reports.

    ``get_eraser`` is called only when some job has work left. ``on_result`` sees
    each result as it comes; ``on_event(name, **info)`` sees "loading", "loaded"
    (``seconds``) and "batch_size" (``old``, ``new``, ``reason``).
    """

    def __init__(self, jobs: Sequence[Job], get_eraser: Callable[[], Eraser], *, batch_size: int = 1,
                 overwrite: bool = False, workers: int = 2,
                 on_result: Callable[[FileResult], None] | None = None,
                 on_event: Callable[..., None] | None = None, settings: dict[str, Any] | None = None) -> None:
        self.jobs = list(jobs)
        self.get_eraser = get_eraser
        self.batch_size = max(1, batch_size)
        self.overwrite = overwrite
        self.workers = max(1, workers)
        self.on_result = on_result
        self.on_event = on_event or (lambda name, **info: None)
        self.results: list[FileResult] = []
        self.settings: dict[str, Any] = dict(settings or {})  # completed by the Eraser's own once loaded
        self.interrupted: str | None = None
        self.load_seconds = 0.0
        self._started = time.perf_counter()
        self._loaded_at: float | None = None

    def record(self, result: FileResult) -> None:
        self.results.append(result)
        if self.on_result:
            self.on_result(result)

    def summary(self) -> RunSummary:
        """The results so far, in input order (valid after :meth:`execute` ended in any way)."""
        order = {job.label: i for i, job in enumerate(self.jobs)}
        results = sorted(self.results, key=lambda r: order.get(r.input, len(order)))
        start = self._loaded_at if self._loaded_at is not None else self._started
        return RunSummary(results, len(self.jobs), time.perf_counter() - start, self.load_seconds,
                          dict(self.settings), self.interrupted)

    def execute(self) -> RunSummary:
        """Process every job; returns :meth:`summary`. Ctrl-C/SIGTERM end it early (``interrupted``)."""
        try:
            self._execute()
        except KeyboardInterrupt as e:
            self.interrupted = getattr(e, "signal_name", "SIGINT")
        return self.summary()

    def _execute(self) -> None:
        todo: list[Job] = []
        for job in self.jobs:
            left = missing_outputs(job, self.overwrite)
            if left is None:
                self.record(FileResult(job.label, "skipped", [str(p) for p in job.outputs.values()]))
            else:
                todo.append(left)
        if not todo:
            return
        self.on_event("loading")
        t0 = time.perf_counter()
        eraser = self.get_eraser()
        self.load_seconds = time.perf_counter() - t0
        self._loaded_at = time.perf_counter()
        self.settings.update(eraser.settings)
        self.on_event("loaded", seconds=self.load_seconds)
        self._pipeline(todo, eraser)

    def _pipeline(self, todo: list[Job], eraser: Eraser) -> None:
        side = eraser.resolution
        lookahead = max(2 * self.batch_size, self.workers)
        readers = ThreadPoolExecutor(self.workers, thread_name_prefix="ben-read")
        writers = ThreadPoolExecutor(self.workers, thread_name_prefix="ben-write")
        reads: deque[tuple[Job, Future]] = deque()
        writes: deque[tuple[Job, Future]] = deque()
        queue = iter(todo)

        def fill() -> None:
            while len(reads) < lookahead:
                job = next(queue, None)
                if job is None:
                    return
                reads.append((job, readers.submit(read_job, job, side)))

        def finish_write(job: Job, fut: Future) -> None:
            try:
                self.record(FileResult(job.label, "done", fut.result()))
            except Exception as e:
                reason, tb = failure(e, "writing")
                self.record(FileResult(job.label, "failed", error=reason, traceback=tb))

        def drain(limit: int) -> None:
            while len(writes) > limit:
                finish_write(*writes.popleft())

        try:
            fill()
            batch: list[Item] = []
            while reads:
                job, fut = reads.popleft()
                fill()
                try:
                    image, resized = fut.result()
                except Exception as e:
                    reason, tb = failure(e, "reading")
                    self.record(FileResult(job.label, "failed", error=reason, traceback=tb))
                    continue
                batch.append((job, image, resized))
                if len(batch) >= self.batch_size:
                    self._flush(eraser, batch, writers, writes)
                    batch = []
                    drain(lookahead)
            if batch:
                self._flush(eraser, batch, writers, writes)
            drain(0)
        finally:
            readers.shutdown(wait=True, cancel_futures=True)
            writers.shutdown(wait=True, cancel_futures=True)
            for job, fut in writes:  # interrupted: keep what was written completely
                if fut.done() and not fut.cancelled():
                    finish_write(job, fut)

    def _flush(self, eraser: Eraser, batch: list[Item], writers: ThreadPoolExecutor,
               writes: deque[tuple[Job, Future]]) -> None:
        for item, pred, error in self._predict(eraser, batch):
            job, image, _ = item
            if error is not None:
                reason, tb = failure(error, "running the model")
                self.record(FileResult(job.label, "failed", error=reason, traceback=tb))
            else:
                writes.append((job, writers.submit(write_outputs, job, image, pred)))

    def _predict(self, eraser: Eraser, batch: list[Item]) -> list[tuple[Item, Prediction | None, Exception | None]]:
        """Predict a batch; on failure retry its images one by one, so one bad image fails alone."""
        want_trimap = any(_wants_trimap(item[0]) for item in batch)
        try:
            preds = eraser.predict([b[1].rgb for b in batch], resized=[b[2] for b in batch], want_trimap=want_trimap)
            return [(item, pred, None) for item, pred in zip(batch, preds)]
        except Exception as e:
            if len(batch) == 1:
                return [(batch[0], None, e)]
            if is_out_of_memory(e):
                _free_memory(eraser)
                self._lower_batch_size(eraser, len(batch), f"out of memory at batch size {len(batch)}")
        out: list[tuple[Item, Prediction | None, Exception | None]] = []
        for item in batch:
            try:
                pred = eraser.predict([item[1].rgb], resized=[item[2]], want_trimap=_wants_trimap(item[0]))[0]
                out.append((item, pred, None))
            except Exception as e:
                if is_out_of_memory(e):
                    _free_memory(eraser)
                out.append((item, None, e))
        return out

    def _lower_batch_size(self, eraser: Eraser, failed_at: int, reason: str) -> None:
        new = max(1, min(self.batch_size, failed_at) // 2)
        if new < self.batch_size:
            old, self.batch_size = self.batch_size, new
            if eraser.compiled:
                eraser.batch_size = new
            self.on_event("batch_size", old=old, new=new, reason=reason)


def _wants_trimap(job: Job) -> bool:
    return not TRIMAP_KINDS.isdisjoint(job.outputs)


def _free_memory(eraser: Eraser) -> None:
    if eraser.device.type == "cuda":
        torch.cuda.empty_cache()
