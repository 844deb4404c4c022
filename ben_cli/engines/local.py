"""The local engine of ``ben erase``: reads, infers and writes with overlap, in this process.

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
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ben_cli.engines import FileResult, Results
from ben_cli.engines.steps import (
    Item,
    failure,
    lowered_batch_size,
    predict_each,
    read_job,
)
from ben_cli.options import OutputOptions, VideoOptions
from ben_cli.output import load_background, write_outputs
from ben_cli.pipeline import Eraser, Prediction
from ben_cli.plan import Job


class BatchRun(Results):
    """One run over ``jobs``; :meth:`execute` fills :attr:`results`, :meth:`summary` reports.

    ``get_eraser`` is called only when some job has work left. ``on_result`` sees
    each result as it comes; ``on_event(name, **info)`` sees "loading", "loaded"
    (``seconds``) and "batch_size" (``old``, ``new``, ``reason``). ``existing``: the
    output files a plan found by listing its output tree once (fsspec URLs); without
    it each output is looked up.
    """

    def __init__(self, jobs: Sequence[Job], get_eraser: Callable[[], Eraser], *, batch_size: int = 1,
                 overwrite: bool = False, workers: int = 2,
                 on_result: Callable[[FileResult], None] | None = None,
                 on_event: Callable[..., None] | None = None, settings: dict[str, Any] | None = None,
                 output: OutputOptions | None = None, existing: Collection[str] | None = None,
                 video: VideoOptions | None = None) -> None:
        super().__init__(jobs, on_result=on_result, on_event=on_event, settings=settings)
        self.get_eraser = get_eraser
        self.batch_size = max(1, batch_size)
        self.overwrite = overwrite
        self.workers = max(1, workers)
        self.existing = existing
        self.output = output or OutputOptions()
        self.video = video
        self.background = load_background(self.output)

    def _execute(self) -> None:
        todo = self.pending(self.overwrite, self.existing)
        if not todo:
            return
        self.on_event("loading")
        t0 = time.perf_counter()
        eraser = self.get_eraser()
        self.load_seconds = time.perf_counter() - t0
        self._loaded_at = time.perf_counter()
        self.settings.update(eraser.settings)
        self.on_event("loaded", seconds=self.load_seconds)
        self._pipeline([job for job in todo if not job.video], eraser)
        for job in todo:
            if job.video:
                self._video(job, eraser)

    def _video(self, job: Job, eraser: Eraser) -> None:
        """One video, streamed through the Eraser; a bad one fails alone."""
        from ben_cli.video import erase_video

        def on_frames(done: int, total: int | None) -> None:
            self.on_event("frames", label=job.label, done=done, total=total)

        try:
            result = erase_video(job.source, job.outputs, eraser, output=self.output, video=self.video,
                                 batch_size=self.batch_size, on_frames=on_frames, background=self.background,
                                 label=job.label)
        except Exception as e:
            reason, tb = failure(e, "processing the video")
            self.record(FileResult(job.label, "failed", error=reason, traceback=tb))
            return
        self.record(FileResult(job.label, "done", [str(p) for p in job.outputs.values()], frames=result.frames))

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
                writes.append((job, writers.submit(write_outputs, job, image, pred, self.output, self.background)))

    def _predict(self, eraser: Eraser, batch: list[Item]) -> list[tuple[Item, Prediction | None, Exception | None]]:
        """Predict a batch; on failure retry its images one by one, so one bad image fails alone."""
        return predict_each(eraser, batch, on_oom=lambda n: self._lower_batch_size(
            eraser, n, f"out of memory at batch size {n}"))

    def _lower_batch_size(self, eraser: Eraser, failed_at: int, reason: str) -> None:
        new = lowered_batch_size(self.batch_size, failed_at)
        if new < self.batch_size:
            old, self.batch_size = self.batch_size, new
            if eraser.compiled:
                eraser.batch_size = new
            self.on_event("batch_size", old=old, new=new, reason=reason)

