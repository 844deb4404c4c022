"""Batch runner for ``ben erase``: reads, infers and writes with overlap.

Reader threads decode and resize upcoming images while the model runs on the
current batch; writer threads compose, encode and atomically write the
previous batch's outputs. A bad input is reported and skipped; the run goes on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ben_cli.compose import cutout
from ben_cli.errors import InputError
from ben_cli.io import LoadedImage, encode_png, outputs_exist, read_image, write_png, write_stdout_bytes
from ben_cli.pipeline import Eraser, Prediction, resize_for_model

STDOUT = "-"
STDIN = "-"


@dataclass(frozen=True)
class Job:
    """One input: a path (or stdin bytes) and where each requested kind goes ("-" is stdout)."""

    name: str
    outputs: dict[str, Path | str]
    data: bytes | None = None  # stdin content


@dataclass
class FileResult:
    input: str
    status: str  # "done", "skipped" or "failed"
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Summary:
    results: list[FileResult]
    seconds: float

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def images_per_second(self) -> float:
        return self.count("done") / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        totals = {s: self.count(s) for s in ("done", "skipped", "failed")}
        totals.update(seconds=round(self.seconds, 3), images_per_second=round(self.images_per_second, 3))
        return {"totals": totals, "files": [asdict(r) for r in self.results]}


def render(kind: str, image: LoadedImage, pred: Prediction) -> np.ndarray:
    """The array written for one output kind: RGBA cutout, alpha or trimap (H, W[, 4]) uint8."""
    if kind == "alpha":
        return pred.alpha
    if kind == "trimap":
        if pred.trimap is None:
            raise ValueError("trimap was not computed")
        return pred.trimap
    rgb = torch.from_numpy(image.rgb).permute(2, 0, 1)[None]
    rgba = cutout(rgb, torch.from_numpy(pred.alpha)[None, None])
    return rgba[0].permute(1, 2, 0).contiguous().numpy()


def _write(job: Job, image: LoadedImage, pred: Prediction) -> list[str]:
    written = []
    for kind, target in job.outputs.items():
        array = render(kind, image, pred)
        if target == STDOUT:
            write_stdout_bytes(encode_png(array))
        else:
            write_png(Path(target), array)
        written.append(str(target))
    return written


def _read(job: Job, side: int) -> tuple[LoadedImage, np.ndarray]:
    image = read_image(job.data, name=job.name) if job.data is not None else read_image(job.name)
    return image, resize_for_model(image.rgb, side)


def run(jobs: Sequence[Job], get_eraser: Callable[[], Eraser], *, batch_size: int = 1,
        overwrite: bool = False, workers: int = 2, on_result: Callable[[FileResult], None] | None = None,
        ) -> Summary:
    """Process ``jobs`` in batches; the model is loaded (``get_eraser``) only if some job needs it."""
    start = time.perf_counter()
    results: list[FileResult] = []

    def record(r: FileResult) -> None:
        results.append(r)
        if on_result:
            on_result(r)

    todo = []
    for job in jobs:
        stdout = STDOUT in job.outputs.values()
        if not overwrite and not stdout and outputs_exist(Path(p) for p in job.outputs.values()):
            record(FileResult(job.name, "skipped", [str(p) for p in job.outputs.values()]))
        else:
            todo.append(job)
    if not todo:
        return Summary(results, time.perf_counter() - start)

    eraser = get_eraser()
    side = eraser.resolution
    lookahead = max(2 * batch_size, workers)
    readers = ThreadPoolExecutor(max(1, workers), thread_name_prefix="ben-read")
    writers = ThreadPoolExecutor(max(1, workers), thread_name_prefix="ben-write")
    pending_reads: deque[tuple[Job, Future]] = deque()
    pending_writes: deque[tuple[Job, Future]] = deque()
    queue = iter(todo)

    def fill() -> None:
        while len(pending_reads) < lookahead:
            job = next(queue, None)
            if job is None:
                return
            pending_reads.append((job, readers.submit(_read, job, side)))

    def drain_writes(limit: int) -> None:
        while len(pending_writes) > limit:
            job, fut = pending_writes.popleft()
            try:
                record(FileResult(job.name, "done", fut.result()))
            except (InputError, OSError, ValueError) as e:
                reason = e.reason if isinstance(e, InputError) else f"cannot write output ({e})"
                record(FileResult(job.name, "failed", error=reason))

    def flush(batch: list[tuple[Job, LoadedImage, np.ndarray]]) -> None:
        preds = eraser.predict([b[1].rgb for b in batch], resized=[b[2] for b in batch],
                               want_trimap=any("trimap" in b[0].outputs for b in batch))
        for (job, image, _), pred in zip(batch, preds):
            pending_writes.append((job, writers.submit(_write, job, image, pred)))
        drain_writes(lookahead)

    try:
        fill()
        batch: list[tuple[Job, LoadedImage, np.ndarray]] = []
        while pending_reads:
            job, fut = pending_reads.popleft()
            fill()
            try:
                image, resized = fut.result()
            except InputError as e:
                record(FileResult(job.name, "failed", error=e.reason))
                continue
            batch.append((job, image, resized))
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        drain_writes(0)
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)
    order = {job.name: i for i, job in enumerate(jobs)}
    results.sort(key=lambda r: order.get(r.input, len(order)))  # report in input order
    return Summary(results, time.perf_counter() - start)


def expand_kinds(values: Iterable[str]) -> tuple[str, ...]:
    """``--save`` values (repeated and/or comma-separated) -> ordered unique kinds."""
    from ben_cli.errors import UsageError
    from ben_cli.io import KINDS

    kinds: list[str] = []
    for v in values:
        for k in (s.strip().lower() for s in v.split(",")):
            if not k:
                continue
            if k not in KINDS:
                raise UsageError(f"unknown --save kind {k!r} (use {', '.join(KINDS)})")
            if k not in kinds:
                kinds.append(k)
    return tuple(kinds) or ("cutout",)
