"""The run driver every batch command shares (``ben erase``, ``ben trimap``, ``ben bench``): checks before the
model loads, planning, the run with its progress bar and signals, the report, the summary and the exit code."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ben_cli.cli import options as opt
from ben_cli.errors import UsageError

if TYPE_CHECKING:
    from ben_cli.engines import RayOptions, RunSummary
    from ben_cli.options import InferenceOptions, OutputOptions, VideoOptions
    from ben_cli.plan import Plan, VideoPlan


def make_plan(inputs: list[str], output: str | None, kinds: tuple[str, ...],
              suffixes: dict[str, str] | None = None, video: VideoPlan | None = None,
              options: InferenceOptions | None = None) -> Plan:
    """The plan of a run, its notes printed as warnings, stale temp files of killed runs removed;
    ``options``: the settings recorded in every output (:func:`output_settings`)."""
    from ben_cli.io import clean_stale_temp_files
    from ben_cli.plan import plan_run

    settings = None if options is None else output_settings(options)
    plan = plan_run(inputs, output, kinds, read_stdin=read_stdin, suffixes=suffixes, video=video, settings=settings)
    for note in plan.notes:
        opt.print_warning(note)
    if plan.out_root is not None and plan.out_root.is_dir():
        clean_stale_temp_files(plan.out_root)
    return plan


def check_report_path(report: Path | None) -> None:
    """UsageError up front when the report could not be written."""
    from ben_cli.io import check_output_file

    check_output_file(report, "--report", "run.json")


def refuse_terminal_stdout() -> None:

    if _isatty(sys.stdout):
        raise UsageError("OUTPUT '-' writes PNG data to standard output, which is a terminal: redirect it "
                         "(> out.png) or pipe it")


def read_stdin() -> bytes:
    """All of standard input; refused when it is a terminal (nothing was piped in)."""

    from ben_cli.io import read_stdin_bytes

    if sys.stdin is None or _isatty(sys.stdin):
        raise UsageError("INPUT '-' (standard input) is a terminal: pipe one image in "
                         "(cat photo.jpg | ben erase - out.png)")
    return read_stdin_bytes()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def check_runnable(options: InferenceOptions, *, device: bool = True) -> None:
    """Device and precision available (``device=False``: not checked here, for a cluster's workers),
    an explicit weights file present, refiner weights for ``--refiner net``: else exit 2 before any work."""
    from ben_cli.checkpoints.weights import find_refiner_weights, find_weights
    from ben_cli.device import resolve_devices, resolve_dtype

    if device:
        for each in resolve_devices(options.device):  # one, or a list (one model replica per device)
            resolve_dtype(options.precision.value, each)
    if options.weights is not None:
        find_weights(options.weights, model=options.model, download=False)
    if options.refiner.value in ("net", "auto"):
        find_refiner_weights(options.refiner_weights, required=options.refiner.value == "net")


def output_settings(options: InferenceOptions) -> str:
    """The settings that shape the outputs, as each output records them: the model, its weights (by
    file name), the resolution and the refiner. An earlier output that records others is reported."""
    from ben_cli.checkpoints.weights import find_weights
    from ben_cli.errors import BenError
    from ben_cli.models.registry import MODELS

    entry = MODELS.get(options.model)
    weights = (entry.filename if entry is not None else None) or "default"
    if options.weights is not None:
        try:
            weights = find_weights(options.weights, model=options.model, download=False).name
        except BenError:
            weights = Path(options.weights).name
    refiner = options.refiner.value
    if options.refiner_weights is not None and refiner != "none":
        refiner += f":{Path(options.refiner_weights).name}"
    return f"model={options.model} weights={weights} resolution={options.resolution} refiner={refiner}"


def base_settings(options: InferenceOptions) -> dict:
    """The settings of a run before the model is loaded (the Eraser adds the resolved ones)."""
    from ben_cli.version import __version__

    return {"model": options.model, "weights": None if options.weights is None else str(options.weights),
            "resolution": options.resolution, "device": options.device, "precision": options.precision.value,
            "refiner": options.refiner.value, "version": __version__}


def run_plan(plan: Plan, options: InferenceOptions, *, overwrite: bool, workers: int | None, report: Path | None,
             quiet: bool, no_bar: bool, title: str, output: OutputOptions | None = None, engine: str = "local",
             ray: RayOptions | None = None, video: VideoOptions | None = None) -> RunSummary:
    """Run the plan on ``engine`` with a progress display; the report is written however the run ends."""
    import json
    from dataclasses import replace

    from ben_cli.engines import create_run
    from ben_cli.io import atomic_write_bytes

    console = opt.stderr_console(quiet)
    run = create_run(engine, plan, options, output=output, overwrite=overwrite, workers=workers,
                     settings=base_settings(options), ray=ray, quiet=quiet, video=video)
    try:
        summary = _execute_with_progress(run, console, quiet or no_bar)
    finally:
        summary = replace(run.summary(), own_outputs=plan.own_outputs)
        if report is not None:
            atomic_write_bytes(report, json.dumps(summary.to_json(), indent=2).encode())
    if os.environ.get("BEN_DEBUG"):
        for r in summary.results:
            if r.traceback:
                print(r.traceback, file=sys.stderr)
    if summary.interrupted:
        done = summary.count("done") + summary.count("skipped")
        opt.print_error(f"interrupted: {done} of {summary.total} done; run again to resume")
    if summary.other_settings:
        n = summary.other_settings
        opt.print_warning(f"{n} output{'s were' if n > 1 else ' was'} made with other settings; "
                          "--overwrite to redo them")
    if not quiet:
        print_summary(console, summary, title)
    return summary


def exit_for(summary: RunSummary) -> None:
    """Exit 130 (Ctrl-C) or 143 (SIGTERM) when interrupted, 1 when some input failed."""
    if summary.interrupted:
        raise typer.Exit(143 if summary.interrupted == "SIGTERM" else 130)
    if summary.count("failed"):
        raise typer.Exit(1)


def _execute_with_progress(run, console, no_bar: bool) -> RunSummary:
    import threading
    import time

    from rich.progress import Progress, TextColumn

    from ben_cli.progress import progress_columns

    show_bar = not no_bar and console.is_terminal
    progress = Progress(*progress_columns(TextColumn("{task.fields[rate]}")),
                        console=console, disable=not show_bar, transient=False)
    task = progress.add_task("erase", total=len(run.jobs), rate="")
    clock = {"t0": time.perf_counter(), "done": 0}

    def say(message: str) -> None:
        if show_bar:  # print above the live bar
            progress.console.print(f"ben: {message}", markup=False, soft_wrap=True)
        else:
            opt.print_error(message)

    def on_result(r) -> None:
        if r.status == "failed":
            say(f"{r.input}: {r.error}")
        if r.status == "done":
            clock["done"] += 1
        rate = clock["done"] / max(time.perf_counter() - clock["t0"], 1e-9)
        progress.update(task, advance=1, rate=f"{rate:.2f} img/s" if clock["done"] else "")

    def on_event(name: str, **info) -> None:
        if name == "loading":
            progress.update(task, description="loading model")
        elif name == "loaded":
            clock["t0"] = time.perf_counter()  # the rate excludes loading
            progress.update(task, description="erase")
        elif name == "frames":
            total = f"/{info['total']}" if info.get("total") else ""
            progress.update(task, description=f"{Path(info['label']).name}: frame {info['done']}{total}")
        elif name == "batch_size":
            say(f"warning: {info['reason']}: retrying one image at a time, batch size {info['new']} from now on")

    run.on_result, run.on_event = on_result, on_event
    # A kill stops like Ctrl-C: only complete files remain. Handlers can only be set from the
    # main thread; run elsewhere (main() called from a thread), SIGTERM keeps its handler.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        with progress:
            return run.execute()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _terminate(signum, frame) -> None:
    from ben_cli.engines import Interrupted

    raise Interrupted("SIGTERM")


def print_summary(console, summary: RunSummary, title: str) -> None:
    """The totals and the settings of a run, as a table on stderr."""
    from rich.table import Table

    table = Table(title=title, show_header=False, box=None, pad_edge=False, title_justify="left")
    failed = summary.count("failed")
    table.add_row("done", str(summary.count("done")))
    table.add_row("skipped (outputs exist)", str(summary.count("skipped")))
    if summary.redone:
        table.add_row("redone (source changed)", str(summary.redone))
    if summary.own_outputs:
        table.add_row("skipped (ben's own outputs)", str(summary.own_outputs))
    table.add_row("failed", str(failed), style="red" if failed else None)
    if summary.interrupted:
        table.add_row("not processed", str(summary.total - len(summary.results)))
    table.add_row("time", f"{summary.seconds:.1f} s" + (f" (+{summary.load_seconds:.1f} s loading)"
                                                        if summary.load_seconds else ""))
    table.add_row("images / s", f"{summary.images_per_second:.2f}")
    for key in ("weights", "model", "resolution", "device", "precision", "refiner", "version"):
        value = summary.settings.get(key)
        if value is not None:
            table.add_row(key, str(value), style="dim")
    console.print(table)
