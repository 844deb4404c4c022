"""Engines run a plan: the same jobs, the same Eraser, the same writers, in different places.

- ``local`` (:mod:`ben_cli.engines.local`): this process; reader and writer threads
  overlap decoding and writing with the model; several devices run one model replica
  each (:func:`ben_cli.pipeline.load_erasers`), sharing the batches.
- ``ray`` (:mod:`ben_cli.engines.ray`): a Ray cluster, or a Ray runtime started on this
  machine; Ray Data reads and decodes on CPU workers and runs the model in a pool of
  actors (one GPU each on a GPU cluster). Needs ``pip install "ben_cli[ray]"``.

Both are a :class:`Run` (``execute()`` -> :class:`RunSummary` of :class:`FileResult`) made
by :func:`create_run`; both predict with :class:`ben_cli.pipeline.Eraser` through
:func:`ben_cli.engines.steps.predict_each` and read, name and write files with
:mod:`ben_cli.io` and :mod:`ben_cli.output`, so they write the same files. Importing this
package imports neither torch nor Ray.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ben_cli.engines.results import STATUSES, FileResult, Interrupted, Results, Run, RunSummary
from ben_cli.errors import EngineError, OptionError, UsageError, install_hint
from ben_cli.options import RayOptions

if TYPE_CHECKING:
    from ben_cli.options import InferenceOptions, OutputOptions, VideoOptions
    from ben_cli.plan import Plan

ENGINES: tuple[str, ...] = ("local", "ray")
"""The names ``--engine`` takes."""

def check_engine(name: str) -> None:
    """Raise when engine ``name`` cannot run here: an unknown name, or Ray not installed."""
    if name not in ENGINES:
        raise OptionError("engine", f"unknown engine {name!r} (use {', '.join(ENGINES)})")
    if name == "ray" and not (_importable("ray") and _importable("ray.data")):
        raise EngineError(f"{{opt:engine}} ray needs Ray Data: {install_hint('ray')}")


def _importable(module: str) -> bool:
    """True when ``module`` can be found (without importing it, except for its parent package)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def create_run(name: str, plan: Plan, options: InferenceOptions, *, output: OutputOptions | None = None,
               overwrite: bool = False, workers: int | None = None, settings: dict[str, Any] | None = None,
               ray: RayOptions | None = None, quiet: bool = False, video: VideoOptions | None = None,
               loader: Callable[[], Any] | None = None) -> Run:
    """The run of ``plan`` on engine ``name`` with the model of ``options``.

    ``workers``: the local engine's reader and writer threads each (default one per core,
    at most 8), the ray engine's model actors (default one per GPU, else one). When the
    plan listed its output tree (``plan.existing``: an fsspec URL), that listing decides
    what is skipped. ``loader``: the local engine's model, one Eraser or a list (default:
    :func:`ben_cli.pipeline.load_erasers` of ``options``, once some job has work); a watch passes a
    cached one, so that every run of it uses the model loaded once.
    """
    check_engine(name)
    if name == "ray":
        if "," in options.device:
            raise UsageError("{opt:engine} ray places one device in each model actor ({opt:gpus_per_worker}): "
                             "give one device, not a list")
        from ben_cli.engines.ray import RayRun

        return RayRun(plan.jobs, options, output=output, overwrite=overwrite, workers=workers, settings=settings,
                      existing=plan.existing, ray=ray or RayOptions(), quiet=quiet, video=video)
    if ray is not None and ray.stall_timeout is not None:
        raise UsageError("{opt:stall_timeout} needs {opt:engine} ray")
    if ray is not None and ray != RayOptions():
        raise UsageError("--ray-address and --gpus-per-worker need --engine ray")  # tests match this library text
    from ben_cli.engines.local import BatchRun
    from ben_cli.options import default_workers

    def get_eraser():
        from ben_cli.pipeline import load_erasers

        return load_erasers(options)  # one Eraser per device

    return BatchRun(plan.jobs, loader or get_eraser, batch_size=options.batch_size, overwrite=overwrite,
                    workers=workers or default_workers(), settings=settings, output=output, existing=plan.existing,
                    video=video)


__all__ = ["ENGINES", "STATUSES", "FileResult", "Interrupted", "RayOptions", "Results", "Run", "RunSummary",
           "check_engine",
           "create_run"]
