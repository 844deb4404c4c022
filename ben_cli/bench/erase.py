"""The whole ``ben erase`` path timed: the local engine over the images (:func:`erase_pass`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ben_cli.bench.report import BenchError
from ben_cli.engines import Interrupted
from ben_cli.engines.local import BatchRun
from ben_cli.pipeline import Eraser
from ben_cli.plan import plan_run


def erase_pass(eraser: Eraser, paths: Sequence[Path], batch_size: int, out_dir: Path, workers: int) -> float:
    """Seconds of the local engine of ``ben erase`` over ``paths`` (cutouts into ``out_dir``) with the
    loaded ``eraser``; raises :class:`BenchError` when an image fails."""
    jobs = plan_run([str(p) for p in paths], out_dir, ("cutout",)).jobs
    run = BatchRun(jobs, lambda: eraser, batch_size=batch_size, overwrite=True, workers=workers)
    t = time.perf_counter()
    summary = run.execute()
    seconds = time.perf_counter() - t
    if summary.interrupted:
        raise Interrupted(summary.interrupted)
    failed = [r for r in summary.results if r.status != "done"]
    if failed:
        raise BenchError(f"the erase path failed on {failed[0].input}: {failed[0].error}")
    return seconds


__all__ = ["erase_pass"]
