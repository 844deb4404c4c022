"""The local engine of ``ben erase``: reads, infers and writes with overlap, in this process.

Reader threads decode and resize upcoming images while the model runs on the
current batch; writer threads compose, encode and atomically write the
previous batch's outputs. No single image can stop a run: every failure while
reading, predicting or writing becomes a failed :class:`FileResult` with its
reason, and the run goes on. When the model runs out of memory, the batch is
retried one image at a time and the batch size is lowered for the rest of the
run. Ctrl-C and SIGTERM stop the run between steps; what was done is kept in
:attr:`BatchRun.results`.

Several devices (``--device cuda`` on a machine with several GPUs, ``cuda:0,cuda:2``,
``cpu,cpu``): one model replica per device, each on its own thread, taking the next
batch from one shared queue when it is free; the batch size is lowered per replica.
Ctrl-C and SIGTERM then stop handing out batches and wait for the running ones, whose
outputs are left to the next run. Whatever the number of devices, results are recorded
in input order and every input gets the same output names, so a run's files and report
do not depend on it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ben_cli.engines.results import FileResult, Results
from ben_cli.engines.steps import (
    Item,
    Launched,
    Outcome,
    check_writable,
    collect_each,
    failure,
    launch_each,
    lowered_batch_size,
    read_job,
)
from ben_cli.options import OutputOptions, VideoOptions
from ben_cli.output import (
    BatchFinisher,
    finishing_device,
    load_background,
    output_layout,
    wants_foreground,
    write_outputs,
)
from ben_cli.pipeline import Eraser, Prediction
from ben_cli.plan import Job

if TYPE_CHECKING:
    import torch

    from ben_cli.crop import Layout
    from ben_cli.io import LoadedImage

Pending = tuple[Item, "Future[FileResult]"]
"""An item read and waiting for the model, and the future of its result."""


class BatchRun(Results):
    """One run over ``jobs``; :meth:`execute` fills :attr:`results`, :meth:`summary` reports.

    ``get_eraser`` returns one Eraser, or a list of them (one replica per device, see
    :func:`ben_cli.pipeline.load_erasers`); it is called only when some job has work left.
    ``on_result`` sees each result as it comes, in input order; ``on_event(name, **info)``
    sees "loading", "loaded" (``seconds``) and "batch_size" (``old``, ``new``, ``reason``;
    with several replicas also ``device``), always on the thread that called
    :meth:`execute`. ``existing``: the output files a plan found by listing its output tree
    once (fsspec URLs); without it each output is looked up. Videos run on the first replica.
    """

    def __init__(self, jobs: Sequence[Job], get_eraser: Callable[[], Eraser | Sequence[Eraser]], *,
                 batch_size: int | None = 1, overwrite: bool = False, workers: int = 2,
                 on_result: Callable[[FileResult], None] | None = None,
                 on_event: Callable[..., None] | None = None, settings: dict[str, Any] | None = None,
                 output: OutputOptions | None = None, existing: Collection[str] | None = None,
                 video: VideoOptions | None = None) -> None:
        super().__init__(jobs, on_result=on_result, on_event=on_event, settings=settings)
        self.get_eraser = get_eraser
        # images per batch handed to a replica (the largest replica limit); None: the loaded Eraser's
        self.batch_size = max(1, batch_size or 1)
        self._batch_size_given = batch_size is not None
        self.overwrite = overwrite
        self.workers = max(1, workers)
        self.existing = existing
        self.output = output or OutputOptions()
        self.video = video
        self.background = load_background(self.output)
        self._limits: list[int] = [self.batch_size]  # each replica's batch size, lowered on out of memory
        # each replica's batch in flight: launched on the device, collected once the next one is launched
        self._in_flight: list[tuple[list[Pending], Launched] | None] = [None]
        self._finishers: list[BatchFinisher | None] = [None]  # each replica's batched decontamination
        self._names: list[str] = []  # each replica's name in messages ("" with one replica)
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
        self._stopping = threading.Event()

    def _execute(self) -> None:
        todo = self.pending(self.overwrite, self.existing)
        if not todo:
            return
        check_writable(todo)  # before the model loads
        self.on_event("loading")
        t0 = time.perf_counter()
        loaded = self.get_eraser()
        erasers = list(loaded) if isinstance(loaded, (list, tuple)) else [loaded]
        if not erasers:
            raise ValueError("get_eraser returned no Eraser")
        self.load_seconds = time.perf_counter() - t0
        self._loaded_at = time.perf_counter()
        self.settings.update(erasers[0].settings)
        if len(erasers) > 1:
            self.settings["device"] = ",".join(str(e.device) for e in erasers)
        if not self._batch_size_given:
            self.batch_size = max(1, erasers[0].batch_size)
        self._limits = [self.batch_size] * len(erasers)
        self._in_flight = [None] * len(erasers)
        self._finishers = [None] * len(erasers)
        self._names = replica_names(erasers)
        self.on_event("loaded", seconds=self.load_seconds)
        self._pipeline([job for job in todo if not job.video], erasers)
        for job in todo:
            if job.video:
                self._video(job, erasers[0])

    def _video(self, job: Job, eraser: Eraser) -> None:
        """One video, streamed through the Eraser; a bad one fails alone."""
        from ben_cli.video import erase_video

        def on_frames(done: int, total: int | None) -> None:
            self.on_event("frames", label=job.label, done=done, total=total)

        try:
            result = erase_video(job.source, job.outputs, eraser, output=self.output, video=self.video,
                                 batch_size=self._limits[0], on_frames=on_frames, background=self.background,
                                 label=job.label, pin=job.record)
        except Exception as e:
            reason, tb = failure(e, "processing the video")
            self.record(FileResult(job.label, "failed", error=reason, traceback=tb))
            return
        self.record(FileResult(job.label, "done", [str(p) for p in job.outputs.values()], frames=result.frames,
                               crop=result.crop))

    # ------------------------------------------------------------------ images

    def _pipeline(self, todo: list[Job], erasers: list[Eraser]) -> None:
        """Read ahead, batch in input order, predict, write; record each result in input order.

        One replica predicts on this thread (Ctrl-C stops it mid-batch). Several predict on
        their own threads from a shared queue holding at most one waiting batch per replica;
        this thread reads ahead, hands out batches and records. Memory stays flat: at most
        ``lookahead`` reads, the batches queued and running, and ``window`` unrecorded results.
        """
        if not todo:
            return
        side = erasers[0].resolution
        lookahead = max(2 * self.batch_size, self.workers)
        window = lookahead + 2 * len(erasers) * self.batch_size
        readers = ThreadPoolExecutor(self.workers, thread_name_prefix="ben-read")
        writers = ThreadPoolExecutor(self.workers, thread_name_prefix="ben-write")
        replicas = _Replicas(erasers, lambda i, batch: self._run_batch(i, erasers[i], batch, writers),
                             lambda i: self._settle(i, erasers[i], writers),
                             self._stopping) if len(erasers) > 1 else None
        reads: deque[tuple[Job, Future]] = deque()
        rows: deque[tuple[Job, Future[FileResult]]] = deque()  # every job's result to come, in input order
        jobs = iter(todo)
        self._stopping.clear()

        def fill() -> None:
            while len(reads) < lookahead:
                job = next(jobs, None)
                if job is None:
                    return
                reads.append((job, readers.submit(read_job, job, side)))

        def record_ready(limit: int) -> None:
            """Record the leading results that are done, waiting while more than ``limit`` are left."""
            self._emit_events()
            while rows and (rows[0][1].done() or len(rows) > limit):
                _job, fut = rows.popleft()
                self.record(fut.result())  # re-raises an interrupt raised while predicting on a replica
                self._emit_events()

        def dispatch(batch: list[Pending]) -> None:
            if replicas is None:
                self._run_batch(0, erasers[0], batch, writers)
            else:
                replicas.put(batch)

        try:
            fill()
            batch: list[Pending] = []
            while reads:
                job, read = reads.popleft()
                fill()
                try:
                    image, resized = read.result()
                except Exception as e:
                    reason, tb = failure(e, "reading")
                    rows.append((job, settled(FileResult(job.label, "failed", error=reason, traceback=tb))))
                    continue
                result: Future[FileResult] = Future()
                rows.append((job, result))
                batch.append(((job, image, resized), result))
                if len(batch) >= self.batch_size:
                    dispatch(batch)
                    batch = []
                    record_ready(window)
            if batch:
                dispatch(batch)
            if replicas is None:
                self._settle(0, erasers[0], writers)
            else:
                replicas.finish()
            record_ready(0)
        finally:
            self._stopping.set()  # replicas write nothing more
            if replicas is not None:
                replicas.close()  # waits for the batches running on other threads
            readers.shutdown(wait=True, cancel_futures=True)
            writers.shutdown(wait=True)  # the predictions handed to the writers are written (a batch or two)
            self._emit_events()
            for _job, fut in rows:  # interrupted: keep what was written completely
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self.record(fut.result())

    def _run_batch(self, index: int, eraser: Eraser, batch: list[Pending], writers: ThreadPoolExecutor) -> None:
        """Launch ``batch`` on replica ``index`` in chunks of its batch size; each chunk is launched before
        the one in flight is collected (:meth:`_settle`), so the host stages and uploads batch k+1 while
        the device runs batch k, and waits once per batch. A chunk that failed to launch (out of memory
        shows there) or was answered at once is settled at once: the batch size it lowers applies to
        the next chunk, and nothing finished waits for a later one."""
        pos = 0
        while pos < len(batch):
            chunk = batch[pos : pos + self._limits[index]]
            pos += len(chunk)
            try:
                launched = launch_each(eraser, [item for item, _ in chunk])
            except BaseException as e:  # an interrupt: nothing of this chunk is written, the one before is
                _fail(chunk, e)
                self._settle(index, eraser, writers)
                raise
            self._settle(index, eraser, writers)
            self._in_flight[index] = (chunk, launched)
            if launched.flight is None:
                self._settle(index, eraser, writers)

    def _settle(self, index: int, eraser: Eraser, writers: ThreadPoolExecutor) -> None:
        """Collect replica ``index``'s batch in flight (if any): settle each item's future with its
        failure, or hand its outputs to the writers (which settle it)."""
        held, self._in_flight[index] = self._in_flight[index], None
        if held is None:
            return
        chunk, launched = held
        try:
            outcome = collect_each(launched, on_oom=lambda n: self._lower_batch_size(index, eraser, n))
        except BaseException as e:  # an interrupt while waiting: this batch is left to the next run
            _fail(chunk, e)
            raise
        outcome = self._finish_foregrounds(index, eraser, outcome)
        for (_, result), (item, pred, error) in zip(chunk, outcome):
            job, image, _resized = item
            if self._stopping.is_set():  # interrupted while this batch ran: written by a later run
                result.cancel()
            elif error is not None:
                reason, tb = failure(error, "running the model")
                result.set_result(FileResult(job.label, "failed", error=reason, traceback=tb))
            else:
                write = writers.submit(_write, job, image, pred, self.output, self.background,
                                       finishing_device(eraser.device))
                write.add_done_callback(lambda w, job=job, result=result: _settle_write(job, w, result))

    def _finish_foregrounds(self, index: int, eraser: Eraser, outcome: list[Outcome]) -> list[Outcome]:
        """On an accelerator: the batch's decontaminated cutout colours at once, on the model's thread
        (:class:`ben_cli.output.BatchFinisher`); on the CPU the writers decontaminate in parallel."""
        device = finishing_device(eraser.device)
        wanted = [k for k, (item, _, error) in enumerate(outcome) if error is None
                  and wants_foreground(item[0], self.output)]
        if device is None or not wanted:
            return outcome
        finisher = self._finishers[index] = self._finishers[index] or BatchFinisher(device)
        try:
            preds = finisher.finish([outcome[k][0][1] for k in wanted], [outcome[k][1] for k in wanted], self.output)
        except Exception:  # the writers decontaminate each image (and a bad one fails alone there)
            return outcome
        done = dict(zip(wanted, preds))
        return [(item, done.get(k, pred), error) for k, (item, pred, error) in enumerate(outcome)]

    def _lower_batch_size(self, index: int, eraser: Eraser, failed_at: int) -> None:
        """Replica ``index`` ran out of memory at ``failed_at`` images: halve its batch size."""
        with self._lock:
            old = self._limits[index]
            new = lowered_batch_size(old, failed_at)
            if new >= old:
                return
            self._limits[index] = new
            self.batch_size = max(self._limits)
            if eraser.compiled:
                eraser.batch_size = new
        name = self._names[index] if index < len(self._names) else ""
        info: dict[str, Any] = {"old": old, "new": new,
                                "reason": f"out of memory{' on ' + name if name else ''} at batch size {failed_at}"}
        if name:
            info["device"] = name
        self._events.put(("batch_size", info))

    def _emit_events(self) -> None:
        """Pass the events of the replicas' threads to ``on_event``, on this thread."""
        while True:
            try:
                name, info = self._events.get_nowait()
            except queue.Empty:
                return
            self.on_event(name, **info)


class _Replicas:
    """Model replicas on their own threads, sharing one queue of batches: each takes the next
    batch when it is free. ``run(index, batch)`` predicts a batch on replica ``index``."""

    def __init__(self, erasers: Sequence[Eraser], run: Callable[[int, list[Pending]], None],
                 settle: Callable[[int], None], stopping: threading.Event) -> None:
        self.queue: queue.Queue[list[Pending] | None] = queue.Queue(maxsize=len(erasers))
        self.run, self.settle, self.stopping = run, settle, stopping
        self.closed = False
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._serve, args=(i,), name=f"ben-model-{i}", daemon=True)
                        for i in range(len(erasers))]
        for thread in self.threads:
            thread.start()

    def put(self, batch: list[Pending]) -> None:
        """Queue a batch; waits while every replica is busy and one batch already waits for each."""
        self.queue.put(batch)

    def _next(self, index: int) -> list[Pending] | None:
        """The next batch; when none waits, this replica's batch in flight is collected first (nothing to
        overlap it with, and a result the main thread may be waiting for)."""
        try:
            return self.queue.get_nowait()
        except queue.Empty:
            pass
        try:
            self.settle(index)
        except BaseException as e:  # an interrupt while waiting: stops the run
            self.error = e
        return self.queue.get()

    def _serve(self, index: int) -> None:
        """Run batches until the queue's end; then collect this replica's last batch in flight."""
        while (batch := self._next(index)) is not None:
            if self.error is not None or self.stopping.is_set():
                _fail(batch, self.error)
                continue
            try:
                self.run(index, batch)
            except BaseException as e:  # an interrupt raised in the model: stops the run
                self.error = e
                _fail(batch, e)
        try:
            self.settle(index)
        except BaseException as e:
            self.error = e

    def finish(self) -> None:
        """After the last batch: let every replica run what is queued, collect its batch in flight, and end."""
        if self.closed:
            return
        self.closed = True
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()

    def close(self) -> None:
        """Drop the queued batches and wait for the running ones (they write nothing once stopping); each
        replica collects its last batch in flight. Once: a second call returns at once."""
        if self.closed:
            return
        self.closed = True
        while True:
            try:
                batch = self.queue.get_nowait()
            except queue.Empty:
                break
            if batch is not None:
                _fail(batch, None)
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()


def _fail(batch: list[Pending], error: BaseException | None) -> None:
    """Settle a batch that will not run: with ``error`` (re-raised where it is recorded), or cancelled."""
    for _, result in batch:
        if error is None:
            result.cancel()
        elif not result.done():
            result.set_exception(error)


def _write(job: Job, image: LoadedImage, pred: Prediction, output: OutputOptions, background: torch.Tensor | None,
           device: torch.device | None) -> tuple[list[str], Layout | None]:
    """Write a job's outputs (on a writer thread); the paths written and their crop (for the report)."""
    layout = output_layout(image, pred, output)
    return write_outputs(job, image, pred, output, background, device=device, layout=layout), layout


def _settle_write(job: Job, write: Future, result: Future[FileResult]) -> None:
    """The result of a job once its outputs' write ended (on the writer's thread)."""
    if write.cancelled():
        result.cancel()
        return
    try:
        written, layout = write.result()
        outcome = FileResult(job.label, "done", written, crop=None if layout is None else layout.to_json())
    except Exception as e:
        reason, tb = failure(e, "writing")
        outcome = FileResult(job.label, "failed", error=reason, traceback=tb)
    except BaseException as e:
        result.set_exception(e)
        return
    result.set_result(outcome)


def settled(value: FileResult) -> Future[FileResult]:
    """A future that already holds ``value``."""
    fut: Future[FileResult] = Future()
    fut.set_result(value)
    return fut


def replica_names(erasers: Sequence[Eraser]) -> list[str]:
    """Each replica's name in messages: its device (``cuda:1``; ``cpu #2`` when a device runs
    several); empty with one replica."""
    if len(erasers) < 2:
        return [""] * len(erasers)
    names = [str(e.device) for e in erasers]
    return [n if names.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(names)]

