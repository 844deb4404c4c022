"""``ben bench``'s whole run (:func:`run_bench`): load once, one row per batch size, then the
official-style path and the start-up probe."""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ben_cli.bench.erase import erase_pass
from ben_cli.bench.images import bench_images
from ben_cli.bench.machine import device_name
from ben_cli.bench.memory import PeakMemory
from ben_cli.bench.official import measure_official
from ben_cli.bench.options import BenchOptions, single_device
from ben_cli.bench.report import BatchRow, BenchReport, median_measure
from ben_cli.bench.stages import STAGES, stage_pass
from ben_cli.bench.startup import measure_startup
from ben_cli.device import release_cached_memory, resolve_device
from ben_cli.options import InferenceOptions, default_workers
from ben_cli.pipeline import Eraser
from ben_cli.version import __version__


@dataclass
class _Context:
    """What :func:`run_bench` passes between its steps."""

    options: InferenceOptions
    bench: BenchOptions
    paths: list[Path]
    work: Path
    workers: int
    say: Callable[[str], None]


def _row(eraser: Eraser, ctx: _Context, batch_size: int) -> BatchRow:
    bench, paths, work = ctx.bench, ctx.paths, ctx.work
    eraser.batch_size = batch_size  # compiled models pad each batch to it (one shape)
    stage_dir, erase_dir = work / f"stages_b{batch_size}", work / f"erase_b{batch_size}"
    stage_dir.mkdir(parents=True, exist_ok=True)
    ctx.say(f"batch {batch_size}: stages")
    for _ in range(bench.warmup):
        stage_pass(eraser, paths[:batch_size], batch_size, stage_dir)
    memory = PeakMemory(eraser.device)
    passes = [stage_pass(eraser, paths, batch_size, stage_dir, memory if i == 0 else None)
              for i in range(bench.repeats)]
    stages = {name: median_measure(len(paths), [p[name] for p in passes]) for name in STAGES}
    ctx.say(f"batch {batch_size}: erase path")
    if bench.warmup:
        erase_pass(eraser, paths[:batch_size], batch_size, work / "erase_warmup", ctx.workers)
    erase = median_measure(len(paths), [erase_pass(eraser, paths, batch_size, erase_dir, ctx.workers)
                                         for _ in range(bench.repeats)])
    latency = statistics.median(erase_pass(eraser, paths[:1], batch_size, work / "latency", ctx.workers)
                                for _ in range(bench.repeats))
    return BatchRow(batch_size, stages, erase, 1000.0 * latency, memory.bytes)


def run_bench(options: InferenceOptions | None = None, bench: BenchOptions | None = None, *,
              on_step: Callable[[str], None] | None = None) -> BenchReport:
    """Measure ``ben erase`` with ``options``' model on this machine (see the module docstring).

    ``on_step(message)`` hears each step as it starts (for a progress display).
    Raises :class:`BenError` subclasses for what cannot run (device, weights, images).
    """
    options = options or InferenceOptions()
    measured = single_device(options)
    bench = (bench or BenchOptions()).for_device(resolve_device(measured.device))
    batch_sizes = bench.batch_sizes or (options.batch_size_for(resolve_device(measured.device).type),)
    say = on_step or (lambda message: None)
    with contextlib.ExitStack() as stack:
        if bench.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ben-bench-")))
        else:
            work = bench.work_dir
            work.mkdir(parents=True, exist_ok=True)
        say("preparing images")
        paths = bench_images(bench, work)
        ctx = _Context(options, bench, paths, work, bench.workers or default_workers(), say)
        say("loading the model")
        t = time.perf_counter()
        eraser = Eraser.from_options(measured.replace(batch_size=batch_sizes[0]))
        load_seconds = time.perf_counter() - t
        device, resolved = eraser.device, dict(eraser.settings)
        rows = [_row(eraser, ctx, b) for b in batch_sizes]
        official = None
        if bench.official:
            say("official-style path")
            official = measure_official(eraser, paths, work / "official", repeats=bench.repeats, warmup=bench.warmup)
        del eraser
        release_cached_memory(device)  # leave the device to the start-up run
        startup = None
        if bench.startup:
            say("start-up of ben erase (subprocess)")
            startup = measure_startup(options.replace(batch_size=batch_sizes[0]), paths[0], work / "startup")
        settings = {
            "model": resolved.get("model", options.model), "weights": resolved.get("weights"),
            "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "version": __version__, "precision": resolved.get("precision"),
            "autocast": bool(resolved.get("autocast", False)), "refiner": resolved.get("refiner"),
            "resolution": options.resolution, "compile": options.compile, "batch_sizes": list(batch_sizes),
            "images": len(paths),
            "image_size": "folder" if bench.input is not None else f"{bench.size[0]}x{bench.size[1]}",
            "input": None if bench.input is None else str(bench.input), "repeats": bench.repeats,
            "warmup": bench.warmup, "workers": ctx.workers, "threads": torch.get_num_threads(),
            "memory_kind": PeakMemory(device).kind,
        }
    return BenchReport(settings, load_seconds, rows, official, startup)


__all__ = ["run_bench"]
