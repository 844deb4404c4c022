"""What the Ray engine runs in Ray's workers: a read task per job, the model actor, a write task per job.

Rows are dicts of bytes and strings (Ray Data keeps them whole): ``i`` (the job's index), ``job``
(the pickled :class:`~ben_cli.plan.Job`), ``data`` (the pickled image, then the image and its
prediction), ``error``/``tb`` (a failure's one line and traceback, carried to the end), ``meta``
(the actor's settings, JSON) and, from the actor on, ``video`` (a finished video's outputs, frames
and crop, JSON; empty for images). The steps are the local engine's
(:func:`~ben_cli.engines.steps.read_job`, :func:`~ben_cli.engines.steps.predict_each`,
:func:`~ben_cli.output.write_outputs`, :func:`~ben_cli.video.erase_video`), so both engines write
the same files.

Videos (``job.video``) are read by the actor that runs them: the read task passes their row on
untouched, the actor decodes, predicts with its own Eraser, encodes and renames into place
(:func:`erase_video`, all or nothing), and the write task passes the finished row on.
"""

from __future__ import annotations

import functools
import json
import pickle
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ben_cli.engines.ray_watchdog import tick
from ben_cli.errors import BenWarning
from ben_cli.options import InferenceOptions, OutputOptions, VideoOptions

if TYPE_CHECKING:
    from ben_cli.pipeline import Eraser
    from ben_cli.plan import Job


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def read_row(row: dict[str, Any], side: int, log: Any = None) -> dict[str, Any]:
    """Read, decode and resize one job (CPU task); a failure becomes the row's reason. A video is
    passed on unread: the actor that runs it reads it. ``log``: the run's
    :class:`~ben_cli.engines.ray_watchdog.ProgressLog` (told of each row, as every step here tells it)."""
    from ben_cli.engines.steps import failure, read_job

    out = {"i": row["i"], "job": row["job"], "data": b"", "error": "", "tb": "", "meta": ""}
    try:
        job = pickle.loads(row["job"])
        if not job.video:
            out["data"] = _dumps(read_job(job, side))
    except Exception as e:
        reason, tb = failure(e, "reading")
        out.update(error=reason, tb=tb or "")
    tick(log, "read")
    return out


class EraseActor:
    """A model actor: one Eraser built when it starts, then batches of rows through it: the images
    of a batch first, in chunks of its batch size, then each video of it whole (:func:`erase_video_row`,
    with ``output`` and ``video``, at the actor's batch size of the moment)."""

    def __init__(self, options: InferenceOptions, build: Callable[[InferenceOptions], Any] | None,
                 threads: int, log: Any = None, output: OutputOptions | None = None,
                 video: VideoOptions | None = None) -> None:
        import torch

        from ben_cli.pipeline import Eraser

        self.log, self.loading = log, log is not None  # loading until its first batch is done (it may compile)
        tick(log, "started")
        if log is not None:
            log.load.remote(True)
        if threads:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        try:
            self.eraser = (build or Eraser.from_options)(options)
        except BaseException:
            self._loaded()
            raise
        self.batch_size = max(1, options.batch_size_for(self.eraser.device.type))
        self.output, self.video = output or OutputOptions(), video
        self.meta = json.dumps({**self.eraser.settings, "load_seconds": time.perf_counter() - t0})

    def _loaded(self) -> None:
        if self.loading:
            self.loading = False
            self.log.load.remote(False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ben_cli.engines.steps import failure, predict_each

        n = len(batch["i"])
        data, error, tb = list(batch["data"]), [str(e) for e in batch["error"]], [str(t) for t in batch["tb"]]
        items, where, videos = [], [], []
        for k in range(n):
            if not error[k]:
                job = pickle.loads(batch["job"][k])
                if job.video:
                    videos.append((k, job))
                    continue
                image, resized = pickle.loads(data[k])
                items.append((job, image, resized))
                where.append(k)
        pos = 0
        while pos < len(items):
            chunk = items[pos : pos + self.batch_size]
            results = predict_each(self.eraser, chunk, self._lower)
            for k, ((_job, image, _resized), pred, err) in zip(where[pos:], results):
                if err is None:
                    data[k] = _dumps((image, pred))
                else:
                    reason, trace = failure(err, "running the model")
                    data[k], error[k], tb[k] = b"", reason, trace or ""
            pos += len(chunk)
            tick(self.log, "model", len(chunk))
        finished = [""] * n
        for k, job in videos:
            finished[k], error[k], tb[k] = erase_video_row(job, self.eraser, self.batch_size, self.output, self.video,
                                                           self.log)
            tick(self.log, "model")
        self._loaded()
        return {"i": batch["i"], "job": batch["job"], "data": _objects(data), "error": _objects(error),
                "tb": _objects(tb), "meta": _objects([self.meta] * n), "video": _objects(finished)}

    def _lower(self, failed_at: int) -> None:
        from ben_cli.engines.steps import lowered_batch_size

        new = lowered_batch_size(self.batch_size, failed_at)
        if new < self.batch_size:
            warnings.warn(f"out of memory at batch size {failed_at}: retrying one image at a time, batch size {new} "
                          "from now on (this worker)", BenWarning, stacklevel=2)
            self.batch_size = new
            if self.eraser.compiled:
                self.eraser.batch_size = new


def erase_video_row(job: Job, eraser: Eraser, batch_size: int, output: OutputOptions,
                    video: VideoOptions | None, log: Any = None) -> tuple[str, str, str]:
    """One video job through ``eraser`` as the local engine runs it (:func:`~ben_cli.video.erase_video`,
    atomic outputs); (its outputs, frames and crop as JSON, "", "") or ("", failure reason, traceback).
    Each batch of frames is progress for the run's ``log`` (a long clip is no stall)."""
    from ben_cli.engines.steps import failure
    from ben_cli.video import erase_video

    try:
        result = erase_video(job.source, job.outputs, eraser, output=output, video=video, batch_size=batch_size,
                             background=_background(output), label=job.label, pin=job.record,
                             on_frames=lambda done, total: tick(log, "frames"))
    except Exception as e:
        reason, trace = failure(e, "processing the video")
        return "", reason, trace or ""
    return json.dumps({"outputs": [str(p) for p in job.outputs.values()], "frames": result.frames,
                       "crop": result.crop}), "", ""


def _objects(values: list[Any]) -> np.ndarray:
    """A 1-D object array (bytes and str stay whole, whatever their lengths)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@functools.lru_cache(maxsize=4)
def _background(output: OutputOptions) -> Any:
    from ben_cli.output import load_background

    return load_background(output)


def write_row(row: dict[str, Any], output: OutputOptions, log: Any = None) -> dict[str, Any]:
    """Render, encode and write one job's outputs (CPU task); a failure becomes the row's reason. A video's
    row (written by its actor) is passed on."""
    from ben_cli.engines.steps import failure
    from ben_cli.output import output_layout, write_outputs

    out = {"i": row["i"], "outputs": "", "crop": "", "frames": "", "error": row["error"], "tb": row["tb"],
           "meta": row["meta"]}
    tick(log, "write")
    if row["error"]:
        return out
    if row.get("video"):  # written by its actor
        done = json.loads(row["video"])
        crop = done["crop"]
        out.update(outputs=json.dumps(done["outputs"]), crop="" if crop is None else json.dumps(crop),
                   frames=str(done["frames"]))
        return out
    try:
        image, pred = pickle.loads(row["data"])
        layout = output_layout(image, pred, output)
        out["outputs"] = json.dumps(write_outputs(pickle.loads(row["job"]), image, pred, output, _background(output),
                                                  layout=layout))
        out["crop"] = "" if layout is None else json.dumps(layout.to_json())
    except Exception as e:
        reason, tb = failure(e, "writing")
        out.update(error=reason, tb=tb or "")
    return out
