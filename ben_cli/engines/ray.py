"""The Ray engine of ``ben erase``: the same jobs on a Ray cluster, or on a Ray runtime started here.

One Ray Data dataset over the jobs still to do::

    jobs -> read, decode, resize (CPU tasks) -> Eraser.predict (a pool of actors, a GPU each on a GPU
         cluster) -> render, encode, write atomically (CPU tasks) -> one result per job, back here

Each row carries its pickled :class:`~ben_cli.plan.Job`. The read and write steps are the
local engine's (:func:`~ben_cli.engines.steps.read_job`, :func:`~ben_cli.output.write_outputs`);
each actor builds one :class:`~ben_cli.pipeline.Eraser` with ``Eraser.from_options(options)``
when it starts and predicts with :func:`~ben_cli.engines.steps.predict_each`. So both engines
read, compute, name and write the same files; names come from the plan (one listing of OUTPUT).

Failures. A Python exception for one file (unreadable, model, writing) is caught in its step
and travels with the row as its reason: no worker dies of it. A worker process that dies
(segfault, killed for memory) is restarted by Ray and its batch retried, at most
``task_retries`` times (Ray Data's own default is to retry forever); a batch that still
fails is dropped, its files are run again one per batch so that the file that kills workers
is found, and a file that still kills its worker is reported failed. Ctrl-C and SIGTERM
stop the run: finished files are kept (atomic writes) and the next run skips them.

GPUs. ``gpus_per_worker`` (default: 1 when the cluster has GPUs, else 0) is what each model
actor asks Ray for; with 0 the model runs on the CPU (``device auto`` becomes ``cpu``). GPUs are
never asked of a Ray that has none (Ray would wait for them forever), unless it is a cluster
joined by address, whose autoscaler may add GPU nodes.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pickle
import re
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from ben_cli.engines.results import FileResult, Results
from ben_cli.errors import BenError, BenWarning, EngineError
from ben_cli.options import InferenceOptions, OutputOptions, RayOptions, cpu_count
from ben_cli.plan import Job


class RayRun(Results):
    """One run of ``jobs`` on Ray; :meth:`execute` fills :attr:`results`, :meth:`summary` reports.

    ``options``: the model (every actor builds its Eraser from them with ``build``, by default
    ``Eraser.from_options``; ``build`` must pickle). ``workers``: model actors (default one
    per GPU of the cluster over ``gpus_per_worker``, else one). ``existing``: the output
    files the plan listed (fsspec OUTPUT); without it each output is looked up here.
    ``task_retries``: how often a batch whose worker died is retried.
    """

    def __init__(self, jobs: Sequence[Job], options: InferenceOptions, *, output: OutputOptions | None = None,
                 overwrite: bool = False, workers: int | None = None, settings: dict[str, Any] | None = None,
                 existing: Collection[str] | None = None, ray: RayOptions | None = None, quiet: bool = False,
                 build: Callable[[InferenceOptions], Any] | None = None, task_retries: int = 2,
                 on_result: Callable[[FileResult], None] | None = None,
                 on_event: Callable[..., None] | None = None) -> None:
        from ben_cli.output import load_background

        super().__init__(jobs, on_result=on_result, on_event=on_event, settings=settings)
        self.options = options
        self.output = output or OutputOptions()
        load_background(self.output)  # a bad background image is an error here, before any work
        self.overwrite = overwrite
        self.workers = workers
        self.existing = existing
        self.ray = ray or RayOptions()
        self.quiet = quiet
        self.build = build
        self.task_retries = max(0, task_retries)
        self._ray_seconds = 0.0

    def _execute(self) -> None:
        todo = self.pending(self.overwrite, self.existing)
        if not todo:
            return  # nothing to do: Ray is not even started
        from ben_cli.engines.steps import check_writable

        check_writable(todo)  # before Ray starts and the model loads
        import ray

        self.on_event("loading")
        t0 = time.perf_counter()
        started_here = _connect(self.ray.address, self.quiet, verbose=self.ray.verbose)
        try:
            self._ray_seconds = time.perf_counter() - t0
            joined = bool(self.ray.address or os.environ.get("RAY_ADDRESS"))  # a cluster may gain GPU nodes
            layout = _layout(ray, self.options, self.ray.gpus_per_worker, self.workers, joined)
            self.settings.update(engine="ray", workers=layout.workers, gpus_per_worker=layout.gpus)
            self._run_all(todo, layout)
        finally:
            if started_here:
                ray.shutdown()

    def _run_all(self, todo: list[Job], layout: _Layout) -> None:
        """Every job once; the jobs of batches whose worker died, again one per batch and one batch at a time
        per actor (nothing else is lost when that file kills its worker again); what is left fails."""
        left = self._pass(todo, list(range(len(todo))), layout, layout.batch_size)
        if left:
            left = self._pass(todo, left, layout, 1)
        tries = self.task_retries + 1
        for i in left:
            self.record(FileResult(todo[i].label, "failed", error=f"a worker process died on this file ({tries} "
                                   "tries, alone in its batch); see the Ray logs"))

    def _pass(self, todo: list[Job], indices: list[int], layout: _Layout, batch_size: int) -> list[int]:
        """Run ``todo[i]`` for ``i`` in ``indices`` through the pipeline; the indices that got no result."""
        import ray
        from ray.data import ActorPoolStrategy, DataContext

        rows = [{"i": i, "job": pickle.dumps(todo[i], protocol=pickle.HIGHEST_PROTOCOL)} for i in indices]
        per_block = batch_size if batch_size == 1 else max(batch_size, math.ceil(len(rows) / 10_000))
        blocks = max(1, math.ceil(len(rows) / per_block))
        context = DataContext.get_current()
        saved = (context.max_errored_blocks, context.enable_progress_bars)
        data_log = logging.getLogger("ray.data")  # its INFO lines (plans, execution) only with verbose
        data_level = data_log.level
        if not self.ray.verbose:
            data_log.setLevel(logging.WARNING)
        context.max_errored_blocks = -1  # a batch whose worker kept dying is dropped, not the whole run
        if self.quiet:
            context.enable_progress_bars = False
        retries = {"max_retries": self.task_retries}  # Ray Data's default for a dying worker: retry forever
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # retries only go through ray_remote_args
                ds = ray.data.from_items(rows, **_blocks_arg(ray.data.from_items, blocks))
                ds = ds.map(_read_row, fn_kwargs={"side": self.options.resolution}, num_cpus=1, **retries)
                ds = ds.map_batches(
                    _EraseActor, batch_size=batch_size, batch_format="numpy",
                    fn_constructor_kwargs={"options": layout.options, "build": self.build,
                                           "threads": layout.threads},
                    compute=_actor_pool(ActorPoolStrategy, layout.workers, alone=batch_size == 1),
                    num_cpus=layout.actor_cpus,
                    num_gpus=layout.gpus or None, max_restarts=-1, max_task_retries=self.task_retries)
                ds = ds.map(_write_row, fn_kwargs={"output": self.output}, num_cpus=1, **retries)
            seen: set[int] = set()
            results = iter(ds.iter_rows())
            try:
                for row in results:
                    seen.add(int(row["i"]))
                    self._take(todo[int(row["i"])], row)
            finally:  # stops the dataset's execution now (its actors hold CPUs), also when interrupted
                close = getattr(results, "close", None)
                if close is not None:
                    close()
        except KeyboardInterrupt:
            raise
        except Exception as e:
            raise _as_ben_error(e) from None
        finally:
            context.max_errored_blocks, context.enable_progress_bars = saved
            data_log.setLevel(data_level)
        return [i for i in indices if i not in seen]

    def _take(self, job: Job, row: dict[str, Any]) -> None:
        if row["meta"] and self._loaded_at is None:
            meta = json.loads(row["meta"])
            actor_load = float(meta.pop("load_seconds", 0.0))
            self.load_seconds = self._ray_seconds + actor_load
            self._loaded_at = self._started + self.load_seconds
            self.settings.update({k: v for k, v in meta.items() if v is not None})
            self.on_event("loaded", seconds=self.load_seconds)
        if row["error"]:
            self.record(FileResult(job.label, "failed", error=row["error"], traceback=row["tb"] or None))
        else:
            crop = row.get("crop") or ""
            self.record(FileResult(job.label, "done", json.loads(row["outputs"]),
                                   crop=json.loads(crop) if crop else None))


# --------------------------------------------------------------------------- the cluster


class _Layout:
    """How the model actors are placed: count, GPUs and CPUs each, torch threads, batch size, options."""

    def __init__(self, options: InferenceOptions, workers: int, gpus: float, actor_cpus: float) -> None:
        self.options, self.workers, self.gpus, self.actor_cpus = options, workers, gpus, actor_cpus
        self.threads = 0 if gpus else max(1, int(actor_cpus))
        self.batch_size = options.batch_size_for("cuda" if gpus else "cpu")


_EXISTING = "existing cluster"  # Ray's ValueError when a runtime is asked its size while one already runs here


def _connect(address: str | None, quiet: bool, *, verbose: bool = False) -> bool:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``); else join the Ray already running on this
    machine (said once; ``"local"`` starts a separate one instead), else start a Ray runtime here.

    Ray's INFO lines stay off stderr unless ``verbose``. Returns True when this call started (or
    joined) Ray and must shut it down; False when Ray was already initialised in this process
    (a test, a notebook).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": not quiet,
                              "logging_level": logging.INFO if verbose and not quiet else logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        ray.init(address=address, **kwargs)
        return True
    try:  # sizes are given only to a runtime started here; Ray refuses them for one it would join
        ray.init(address=address, num_cpus=cpu_count(), include_dashboard=False, **kwargs)
    except ValueError as e:
        if address == "local" or _EXISTING not in str(e):
            raise
        warnings.warn(BenWarning("joining the Ray already running on this machine ({opt:ray_address} local "
                                 "starts a separate one)"), stacklevel=2)
        ray.init(address="auto", **kwargs)
    return True


def _layout(ray: Any, options: InferenceOptions, gpus_per_worker: float | None, workers: int | None,
            joined: bool) -> _Layout:
    """Decide GPUs per actor, the actor count, the CPUs each reserves and the device (see module docstring).

    GPUs asked of a Ray without any are an error, unless it is a cluster joined by address
    (its autoscaler may add GPU nodes): Ray would wait for them forever.
    """
    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0.0))
    cluster_cpus = float(resources.get("CPU", 1.0))
    gpus = float(gpus_per_worker) if gpus_per_worker is not None else (1.0 if cluster_gpus > 0 else 0.0)
    if gpus > 0 and cluster_gpus == 0:
        if not joined:
            raise EngineError(
                f"{{opt:gpus_per_worker}} {gpus:g}: Ray finds no GPU on this machine (it would wait for one "
                "forever); use {opt:gpus_per_worker} 0 to run the model on the CPU")
        warnings.warn("the Ray cluster has no GPU now: the model workers wait until GPU nodes join",
                      BenWarning, stacklevel=2)
    if gpus == 0 and options.device == "auto":
        options = options.replace(device="cpu")
    for name in ("weights", "refiner_weights"):  # a file here is the same file for workers started here
        path = getattr(options, name)
        if path is not None and path.exists():
            options = options.replace(**{name: path.resolve()})
    if workers is None:
        workers = max(1, int(cluster_gpus // gpus)) if gpus > 0 and cluster_gpus else 1
    if gpus > 0:
        actor_cpus = 1.0
    else:  # CPU actors share the machine's cores, leaving one for reading and writing
        node_cpus = max((float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")),
                        default=cluster_cpus)
        actor_cpus = max(0.5, min(node_cpus - 1.0, (cluster_cpus - 1.0) / workers))
    return _Layout(options, workers, gpus, actor_cpus)


def _actor_pool(strategy: Any, workers: int, alone: bool) -> Any:
    """The actor pool; ``alone``: one task at a time per actor, so that a crash takes no other file's try with it."""
    return strategy(size=workers, max_tasks_in_flight_per_actor=1) if alone else strategy(size=workers)


def _blocks_arg(from_items: Callable[..., Any], blocks: int) -> dict[str, int]:
    """``override_num_blocks`` (Ray 2.10+) or ``parallelism`` (older) for ``from_items``."""
    import inspect

    name = "override_num_blocks" if "override_num_blocks" in inspect.signature(from_items).parameters else "parallelism"
    return {name: blocks}


def _as_ben_error(error: Exception) -> BenError:
    """The BenError behind a Ray failure, else an EngineError with the reason in one line.

    Ray keeps only the text of an exception raised in an actor's ``__init__`` (a model that
    cannot load on the workers), so its last ``SomeError: reason`` line is the reason.
    """
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BenError):
            return current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line.split(": ", 1)[1] for line in lines if _RAISED_RE.match(line)]
    if getattr(error, "_actor_init_failed", False) or "creation task" in str(error):
        return EngineError(f"the model workers could not start: {raised[-1] if raised else lines[0]}")
    reason = raised[-1] if raised else (lines[0] if lines else "")
    return EngineError(f"the Ray run failed: {type(error).__name__}{': ' + reason if reason else ''}")


_RAISED_RE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt): ")


# --------------------------------------------------------------------------- the steps (run in Ray workers)


def _dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _read_row(row: dict[str, Any], side: int) -> dict[str, Any]:
    """Read, decode and resize one job (CPU task); a failure becomes the row's reason."""
    from ben_cli.engines.steps import failure, read_job

    out = {"i": row["i"], "job": row["job"], "data": b"", "error": "", "tb": "", "meta": ""}
    try:
        out["data"] = _dumps(read_job(pickle.loads(row["job"]), side))
    except Exception as e:
        reason, tb = failure(e, "reading")
        out.update(error=reason, tb=tb or "")
    return out


class _EraseActor:
    """A model actor: one Eraser built when it starts, then batches of rows through it."""

    def __init__(self, options: InferenceOptions, build: Callable[[InferenceOptions], Any] | None,
                 threads: int) -> None:
        import torch

        from ben_cli.pipeline import Eraser

        if threads:
            torch.set_num_threads(threads)
        t0 = time.perf_counter()
        self.eraser = (build or Eraser.from_options)(options)
        self.batch_size = max(1, options.batch_size_for(self.eraser.device.type))
        self.meta = json.dumps({**self.eraser.settings, "load_seconds": time.perf_counter() - t0})

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


def _write_row(row: dict[str, Any], output: OutputOptions) -> dict[str, Any]:
    """Render, encode and write one job's outputs (CPU task); a failure becomes the row's reason."""
    from ben_cli.engines.steps import failure
    from ben_cli.output import output_layout, write_outputs

    out = {"i": row["i"], "outputs": "", "crop": "", "error": row["error"], "tb": row["tb"], "meta": row["meta"]}
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
