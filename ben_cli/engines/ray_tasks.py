"""What the Ray engine runs in Ray's workers: a read task per job, the model actor, a write task per job.

Rows are dicts of bytes and strings (Ray Data keeps them whole): ``i`` (the job's index), ``job``
(the pickled :class:`~ben_cli.plan.Job`), ``data`` (the pickled image, then the image and its
prediction), ``error``/``tb`` (a failure's one line and traceback, carried to the end) and ``meta``
(the actor's settings, JSON). The steps are the local engine's
(:func:`~ben_cli.engines.steps.read_job`, :func:`~ben_cli.engines.steps.predict_each`,
:func:`~ben_cli.output.write_outputs`), so both engines write the same files.
"""

from __future__ import annotations

import functools
import json
import pickle
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ben_cli.engines.ray_watchdog import tick
from ben_cli.errors import BenWarning
from ben_cli.options import InferenceOptions, OutputOptions


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def read_row(row: dict[str, Any], side: int, log: Any = None) -> dict[str, Any]:
    """Read, decode and resize one job (CPU task); a failure becomes the row's reason. ``log``: the run's
    :class:`~ben_cli.engines.ray_watchdog.ProgressLog` (told of each row, as every step here tells it)."""
    from ben_cli.engines.steps import failure, read_job

    out = {"i": row["i"], "job": row["job"], "data": b"", "error": "", "tb": "", "meta": ""}
    try:
        out["data"] = _dumps(read_job(pickle.loads(row["job"]), side))
    except Exception as e:
        reason, tb = failure(e, "reading")
        out.update(error=reason, tb=tb or "")
    tick(log, "read")
    return out


class EraseActor:
    """A model actor: one Eraser built when it starts, then batches of rows through it."""

    def __init__(self, options: InferenceOptions, build: Callable[[InferenceOptions], Any] | None,
                 threads: int, log: Any = None) -> None:
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
        self.meta = json.dumps({**self.eraser.settings, "load_seconds": time.perf_counter() - t0})

    def _loaded(self) -> None:
        if self.loading:
            self.loading = False
            self.log.load.remote(False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ben_cli.engines.steps import failure, predict_each

        n = len(batch["i"])
        data, error, tb = list(batch["data"]), [str(e) for e in batch["error"]], [str(t) for t in batch["tb"]]
        items, where = [], []
        for k in range(n):
            if not error[k]:
                image, resized = pickle.loads(data[k])
                items.append((pickle.loads(batch["job"][k]), image, resized))
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
        self._loaded()
        return {"i": batch["i"], "job": batch["job"], "data": _objects(data), "error": _objects(error),
                "tb": _objects(tb), "meta": _objects([self.meta] * n)}

    def _lower(self, failed_at: int) -> None:
        from ben_cli.engines.steps import lowered_batch_size

        new = lowered_batch_size(self.batch_size, failed_at)
        if new < self.batch_size:
            warnings.warn(f"out of memory at batch size {failed_at}: retrying one image at a time, batch size {new} "
                          "from now on (this worker)", BenWarning, stacklevel=2)
            self.batch_size = new
            if self.eraser.compiled:
                self.eraser.batch_size = new


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
    """Render, encode and write one job's outputs (CPU task); a failure becomes the row's reason."""
    from ben_cli.engines.steps import failure
    from ben_cli.output import output_layout, write_outputs

    out = {"i": row["i"], "outputs": "", "crop": "", "error": row["error"], "tb": row["tb"], "meta": row["meta"]}
    tick(log, "write")
    if row["error"]:
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
