"""The per-file steps every engine runs, so that every engine reads, predicts and fails alike.

:func:`missing_outputs` (skip what exists), :func:`check_writable` (every output folder
takes files, before the model loads), :func:`read_job` (decode and resize to the
model side), :func:`launch_each` and :func:`collect_each` (a batch through the Eraser, queued
and then waited for, so the next batch is staged meanwhile; a failure retried one image at a
time, so one bad image fails alone; :func:`predict_each` does both at once), :func:`failure`
(the one-line reason of a per-file failure). Writing is :func:`ben_cli.output.write_outputs`.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ben_cli.device import device_guard, release_cached_memory
from ben_cli.errors import InputError, UsageError
from ben_cli.io import LoadedImage, is_file, probe_writable, read_image
from ben_cli.output import TRIMAP_KINDS
from ben_cli.pipeline import Eraser, Flight, Prediction
from ben_cli.plan import Job
from ben_cli.resize import resize_for_model

Item = tuple[Job, LoadedImage, np.ndarray]
"""A job, its decoded image and the image at the model side (S, S, 3) uint8."""

Outcome = tuple[Item, Prediction | None, Exception | None]
"""An item and its prediction, or the error that stopped it."""


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
        target = f" {error.filename}" if error.filename else ""
        return f"cannot write{target or ' output'} ({error.strerror or error})", None
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    reason = f"internal error while {stage}: {type(error).__name__}{': ' + text if text else ''}"
    return reason, "".join(traceback.format_exception(error))


def missing_outputs(job: Job, overwrite: bool, existing: Collection[str] | None = None) -> Job | None:
    """``job`` with only the outputs still to write, or None when every output exists.

    ``existing``: the output files found by one listing of the output tree (their
    ``str``), used instead of asking the file system about each output.
    """
    if overwrite or job.to_stdout:
        return job
    if existing is not None:
        todo = {k: p for k, p in job.outputs.items() if str(p) not in existing}
    else:
        todo = {k: p for k, p in job.outputs.items()
                if not (is_file(p) or (job.video and isinstance(p, Path) and p.is_dir()))}  # --frames: folders
    if not todo:
        return None
    return job if len(todo) == len(job.outputs) else replace(job, outputs=todo)


def check_writable(jobs: Sequence[Job]) -> None:
    """Raise :class:`UsageError` naming the first local output folder of ``jobs`` where no file can be
    created (read-only, no permission, immutable), found by creating and removing a temporary file
    there (:func:`ben_cli.io.probe_writable`): called before the model loads, so nothing is run
    for outputs that could not be written. Each folder is tried once; URLs and stdout are not tried."""
    folders = dict.fromkeys(p.parent for job in jobs for p in job.outputs.values() if isinstance(p, Path))
    tried: set[Path] = set()
    for folder in folders:
        target = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        if target in tried:
            continue
        tried.add(target)
        problem = probe_writable(target)
        if problem is not None:
            where, error = problem
            raise UsageError(f"cannot write in the output folder {where} ({error.strerror or error}); "
                             "nothing was done")


def wants_trimap(job: Job) -> bool:
    """True when one of the job's outputs needs the trimap."""
    return not TRIMAP_KINDS.isdisjoint(job.outputs)


@dataclass
class Launched:
    """A batch handed to the device (:func:`launch_each`): its device work queued, or the error that
    stopped it; :func:`collect_each` waits for it."""

    eraser: Eraser
    items: Sequence[Item]
    flight: Flight | None = None
    done: list[Prediction] | None = None  # a stand-in Eraser without ``launch`` answered at once
    error: Exception | None = None


def launch_each(eraser: Eraser, batch: Sequence[Item]) -> Launched:
    """Queue a batch's device work without waiting for it (:meth:`~ben_cli.pipeline.Eraser.launch`), with
    the replica's device current. An error here is kept for :func:`collect_each`, which retries."""
    want_trimap = any(wants_trimap(item[0]) for item in batch)
    images, resized = [b[1].rgb for b in batch], [b[2] for b in batch]
    with device_guard(eraser.device):
        try:
            if isinstance(eraser, Eraser):
                return Launched(eraser, batch, flight=eraser.launch(images, resized=resized, want_trimap=want_trimap))
            return Launched(eraser, batch, done=eraser.predict(images, resized=resized, want_trimap=want_trimap))
        except Exception as e:
            return Launched(eraser, batch, error=e)


def collect_each(launched: Launched, on_oom: Callable[[int], None] | None = None,
                 ) -> list[Outcome]:
    """Wait for a launched batch; on failure retry its images one by one, so one bad image fails alone.

    Returns (item, prediction or None, error or None) per item, in order. When the batch ran
    out of memory, the device cache is freed and ``on_oom(len(batch))`` is called (the caller
    lowers its batch size) before the one-by-one retry. Runs with the replica's device current.
    """
    eraser, batch = launched.eraser, launched.items
    with device_guard(eraser.device):
        error = launched.error
        if error is None:
            try:
                preds = launched.done if launched.flight is None else eraser.collect(launched.flight)
                return [(item, pred, None) for item, pred in zip(batch, preds or [])]
            except Exception as e:
                error = e
        return _one_by_one(eraser, batch, error, on_oom)


def predict_each(eraser: Eraser, batch: Sequence[Item], on_oom: Callable[[int], None] | None = None,
                 ) -> list[Outcome]:
    """Predict a batch now: :func:`collect_each` of :func:`launch_each`.

    All of it runs with the replica's device current (:func:`ben_cli.device.device_guard`): this is
    where every engine's images meet the model, so ``--device cuda:N`` never lands work on ``cuda:0``.
    """
    return collect_each(launch_each(eraser, batch), on_oom)


def _one_by_one(eraser: Eraser, batch: Sequence[Item], error: Exception, on_oom: Callable[[int], None] | None,
                ) -> list[Outcome]:
    """After a batch failed with ``error``: each image alone, so one bad image fails alone."""
    if is_out_of_memory(error):
        free_memory(eraser)
    if len(batch) == 1:
        return [(batch[0], None, error)]
    if is_out_of_memory(error) and on_oom is not None:
        on_oom(len(batch))
    out: list[Outcome] = []
    for item in batch:
        try:
            pred = eraser.predict([item[1].rgb], resized=[item[2]], want_trimap=wants_trimap(item[0]))[0]
            out.append((item, pred, None))
        except Exception as e:
            if is_out_of_memory(e):
                free_memory(eraser)
            out.append((item, None, e))
    return out


def lowered_batch_size(current: int, failed_at: int) -> int:
    """The batch size after running out of memory at ``failed_at`` images: half, at least 1."""
    return max(1, min(current, failed_at) // 2)


def free_memory(eraser: Eraser) -> None:
    """After an out-of-memory error: a compiled Eraser goes on eagerly (:meth:`Eraser.use_eager`: the
    smaller batches that follow would be new shapes to compile, each with its own CUDA-graph pool),
    and the device's cached blocks are returned."""
    eraser.use_eager()
    release_cached_memory(eraser.device)
