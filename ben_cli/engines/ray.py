"""The Ray engine of ``ben erase``: the same jobs on a Ray cluster, or on a Ray runtime started here.

One Ray Data dataset over the jobs still to do::

    jobs -> read, decode, resize (CPU tasks) -> Eraser.predict (a pool of actors, a GPU each on a GPU
         cluster) -> render, encode, write atomically (CPU tasks) -> one result per job, back here

Videos run one per actor task: the actor decodes the clip, batches its frames through its Eraser,
encodes and renames into place (:func:`~ben_cli.video.erase_video`, as the local engine does), so a
folder of clips spreads over the actors (see :meth:`RayRun._run_all`).

Each row carries its pickled :class:`~ben_cli.plan.Job`; what runs in the workers is in
:mod:`~ben_cli.engines.ray_tasks` (the local engine's read, predict and write steps, so both engines
read, compute, name and write the same files; names come from the plan, one listing of OUTPUT), and
where it runs in :mod:`~ben_cli.engines.ray_cluster`. Each actor builds one
:class:`~ben_cli.pipeline.Eraser` with ``Eraser.from_options(options)`` when it starts.

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

import json
import logging
import math
import os
import pickle
import re
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any

from ben_cli.engines.ray_cluster import Layout, connect, free_by_node, plan_layout
from ben_cli.engines.ray_tasks import EraseActor, read_row, write_row
from ben_cli.engines.ray_watchdog import Watchdog, diagnose, progress_log
from ben_cli.engines.results import FileResult, Results
from ben_cli.errors import BenError, EngineError, StalledError
from ben_cli.options import InferenceOptions, OutputOptions, RayOptions, VideoOptions
from ben_cli.plan import Job


class RayRun(Results):
    """One run of ``jobs`` on Ray; :meth:`execute` fills :attr:`results`, :meth:`summary` reports.

    ``options``: the model (every actor builds its Eraser from them with ``build``, by default
    ``Eraser.from_options``; ``build`` must pickle). ``workers``: model actors (default one
    per GPU of the cluster over ``gpus_per_worker``, else one). ``existing``: the output
    files the plan listed (fsspec OUTPUT); without it each output is looked up here.
    ``task_retries``: how often a batch whose worker died is retried. ``video``: how videos are
    written (as for the local engine).
    """

    def __init__(self, jobs: Sequence[Job], options: InferenceOptions, *, output: OutputOptions | None = None,
                 overwrite: bool = False, workers: int | None = None, settings: dict[str, Any] | None = None,
                 existing: Collection[str] | None = None, ray: RayOptions | None = None, quiet: bool = False,
                 build: Callable[[InferenceOptions], Any] | None = None, task_retries: int = 2,
                 on_result: Callable[[FileResult], None] | None = None,
                 on_event: Callable[..., None] | None = None, video: VideoOptions | None = None) -> None:
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
        self.video = video
        self._ray_seconds = 0.0
        self._joined = False
        self._stalled: str | None = None  # the watchdog's line, once it stopped the run

    def _execute(self) -> None:
        todo = self.pending(self.overwrite, self.existing)
        if not todo:
            return  # nothing to do: Ray is not even started
        from ben_cli.engines.steps import check_writable

        check_writable(todo)  # before Ray starts and the model loads
        import ray

        self.on_event("loading")
        t0 = time.perf_counter()
        started_here = connect(self.ray.address, self.quiet, verbose=self.ray.verbose)
        try:
            self._ray_seconds = time.perf_counter() - t0
            self._joined = bool(self.ray.address or os.environ.get("RAY_ADDRESS"))  # it may gain GPU nodes
            layout = plan_layout(ray, self.options, self.ray.gpus_per_worker, self.workers, self._joined)
            self.settings.update(engine="ray", workers=layout.workers, gpus_per_worker=layout.gpus,
                                 cpus_per_worker=layout.actor_cpus, cpus_per_io_task=layout.io_cpus)
            self._run_all(ray, todo, layout)
        except KeyboardInterrupt:
            if self._stalled is not None:  # the watchdog's stop landed after its pass ended
                raise StalledError(self._stalled) from None
            raise
        finally:
            if started_here:
                ray.shutdown()

    def _run_all(self, ray: Any, todo: list[Job], layout: Layout) -> None:
        """Every job once; the jobs of batches whose worker died, again one per batch and one batch at a time
        per actor (nothing else is lost when that file kills its worker again); what is left fails.

        The videos come after the images, in a pass of their own: one video per batch and one batch at a
        time per actor. Ray Data cuts batches by row count, across blocks, so in the images' pass a clip
        would share its batch with images (written only once the clip is done) or with other clips
        (run one after the other on one actor while others wait). Alone, each clip is one task, taken by
        the next free actor. The price: the actors start (and load the model) once more for the videos
        (no more of them than clips).
        A video whose worker died was already alone: it is not run again.
        """
        images = [i for i, job in enumerate(todo) if not job.video]
        videos = [i for i, job in enumerate(todo) if job.video]
        log = progress_log(ray)
        try:
            left = self._pass(todo, images, layout, layout.batch_size, log) if images else []
            if left:
                left = self._pass(todo, left, layout, 1, log)
            if videos:  # no more actors than clips
                left += self._pass(todo, videos, _with_workers(layout, min(layout.workers, len(videos))), 1, log)
        finally:
            ray.kill(log)
        tries = self.task_retries + 1
        for i in left:
            self.record(FileResult(todo[i].label, "failed", error=f"a worker process died on this file ({tries} "
                                   "tries, alone in its batch); see the Ray logs"))

    def _pass(self, todo: list[Job], indices: list[int], layout: Layout, batch_size: int, log: Any) -> list[int]:
        """Run ``todo[i]`` for ``i`` in ``indices`` through the pipeline; the indices that got no result.
        A pass that makes no progress for the stall limit raises :class:`~ben_cli.errors.StalledError`."""
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
        watchdog = Watchdog(ray, log, self.ray.stall_seconds, partial(self._explain, ray, layout, len(rows)),
                            partial(_gpu_wait, ray, layout, self._joined))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # retries only go through ray_remote_args
                ds = ray.data.from_items(rows, **_blocks_arg(ray.data.from_items, blocks))
                ds = ds.map(read_row, fn_kwargs={"side": self.options.resolution, "log": log},
                            num_cpus=layout.io_cpus, **retries)
                ds = ds.map_batches(
                    EraseActor, batch_size=batch_size, batch_format="numpy",
                    fn_constructor_kwargs={"options": layout.options, "build": self.build,
                                           "threads": layout.threads, "log": log, "output": self.output,
                                           "video": self.video},
                    compute=_actor_pool(ActorPoolStrategy, layout.workers, alone=batch_size == 1),
                    num_cpus=layout.actor_cpus,
                    num_gpus=layout.gpus or None, max_restarts=-1, max_task_retries=self.task_retries)
                ds = ds.map(write_row, fn_kwargs={"output": self.output, "log": log}, num_cpus=layout.io_cpus,
                            **retries)
            seen: set[int] = set()
            results = iter(ds.iter_rows())
            try:
                with watchdog:
                    for row in results:
                        watchdog.touch()
                        seen.add(int(row["i"]))
                        self._take(todo[int(row["i"])], row)
            finally:  # stops the dataset's execution now (its actors hold CPUs), also when interrupted
                close = getattr(results, "close", None)
                if close is not None:
                    close()
        except KeyboardInterrupt:
            if watchdog.reason is not None:
                self._stalled = watchdog.reason
                raise StalledError(watchdog.reason) from None
            raise
        except Exception as e:
            raise _as_ben_error(e) from None
        finally:
            context.max_errored_blocks, context.enable_progress_bars = saved
            data_log.setLevel(data_level)
        return [i for i in indices if i not in seen]

    def _explain(self, ray: Any, layout: Layout, rows: int, counts: dict[str, int]) -> str:
        """What a stalled pass waits for (:func:`~ben_cli.engines.ray_watchdog.diagnose`), and that what was
        written stays."""
        reason = diagnose(rows=rows, counts=counts, free=free_by_node(ray), io_cpus=layout.io_cpus,
                          actor_cpus=layout.actor_cpus, gpus=layout.gpus, workers=layout.workers)
        done = sum(r.status == "done" for r in self.results)
        return f"{reason}; stopped, the {done} files done are kept (run again to resume)"

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
            crop, frames = row.get("crop") or "", row.get("frames") or ""
            self.record(FileResult(job.label, "done", json.loads(row["outputs"]),
                                   frames=int(frames) if frames else None, crop=json.loads(crop) if crop else None))


def _with_workers(layout: Layout, workers: int) -> Layout:
    """``layout`` with ``workers`` model actors."""
    import copy

    fewer = copy.copy(layout)
    fewer.workers = workers
    return fewer


def _gpu_wait(ray: Any, layout: Layout, joined: bool) -> bool:
    """True while the model actors wait for GPUs that a joined cluster's autoscaler may add (none up now)."""
    return joined and layout.gpus > 0 and float(ray.cluster_resources().get("GPU", 0.0)) < layout.gpus


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


