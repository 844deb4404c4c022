"""The run driver every batch command shares (``ben erase``, ``ben trimap``, ``ben bench``): checks before the
model loads, planning, the run with its progress bar and signals, the report, the summary and the exit code."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ben_cli.cli import options as opt
from ben_cli.errors import BenError, UsageError

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


@contextlib.contextmanager
def report_fatal(report: Path | None) -> Iterator[None]:
    """The checks before a run: an error that ends it there (exit 2) still writes the ``--report``,
    with the error's one line in ``run.error`` (nothing else to report: no input was processed)."""
    try:
        yield
    except BenError as e:
        if report is not None:
            from ben_cli.engines.results import RunSummary

            write_report(report, RunSummary([], 0, 0.0, error=e.flag_message()), quiet=True)
        raise


def write_report(report: Path, summary: RunSummary, *, quiet: bool = False) -> None:
    """The report file; one that cannot be written is said (unless ``quiet``: the run's error was the
    report path itself), and the run's own outcome stands."""
    import json

    from ben_cli.io import atomic_write_bytes

    try:
        atomic_write_bytes(report, json.dumps(summary.to_json(), indent=2).encode())
    except OSError as e:
        if not quiet:
            opt.print_warning(f"cannot write the report {report} ({e.strerror or e})")


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
             ray: RayOptions | None = None, video: VideoOptions | None = None, one_line: bool = False) -> RunSummary:
    """Run the plan on ``engine`` with a progress display; the report is written however the run ends
    (an error that ends it, such as weights that do not load, in ``run.error``). ``one_line``: the
    summary as one line (pipes, single files) instead of the table."""
    from dataclasses import replace

    from ben_cli.engines import create_run

    console = opt.stderr_console(quiet)
    error = None
    try:
        run = create_run(engine, plan, options, output=output, overwrite=overwrite, workers=workers,
                         settings=base_settings(options), ray=ray, quiet=quiet, video=video)
    except BenError as e:
        if report is not None:
            from ben_cli.engines.results import RunSummary

            write_report(report, RunSummary([], len(plan.jobs), 0.0, settings=base_settings(options),
                                             error=e.flag_message()))
        raise
    try:
        summary = execute_with_progress(run, console, quiet or no_bar)
    except BenError as e:
        error = e.flag_message()
        raise
    finally:
        summary = replace(run.summary(), own_outputs=plan.own_outputs, error=error)
        if report is not None:
            write_report(report, summary)
    if os.environ.get("BEN_DEBUG"):
        for r in summary.results:
            if r.traceback:
                print(r.traceback, file=sys.stderr)
    if summary.interrupted:
        skipped = summary.count("skipped")
        also = f" ({skipped} skipped: outputs exist)" if skipped else ""
        opt.print_error(f"interrupted: {summary.count('done')} of {summary.total} done{also}; run again to resume")
    if summary.other_settings:
        n = summary.other_settings
        opt.print_warning(f"{n} output{'s were' if n > 1 else ' was'} made with other settings; "
                          "--overwrite to redo them")
    if not quiet and one_line:
        opt.print_error(summary_line(summary, title))
    elif not quiet:
        print_summary(console, summary, title)
    return summary


def summary_line(summary: RunSummary, title: str) -> str:
    """The run in one line (for pipes and single files): counts, time, loading time."""
    counts = [f"{summary.count(s)} {s}" for s in ("done", "skipped", "failed") if summary.count(s) or s == "done"]
    frames = f" ({summary.frames} frames)" if summary.frames else ""
    loading = f" (+{summary.load_seconds:.1f} s loading)" if summary.load_seconds else ""
    return f"{title}: {', '.join(counts)}{frames} in {summary.seconds:.1f} s{loading}"


def exit_for(summary: RunSummary) -> None:
    """Exit 130 (Ctrl-C) or 143 (SIGTERM) when interrupted, 1 when some input failed."""
    if summary.interrupted:
        raise typer.Exit(143 if summary.interrupted == "SIGTERM" else 130)
    if summary.count("failed"):
        raise typer.Exit(1)


def execute_with_progress(run, console, no_bar: bool, *, lines: Collection[str] = (),
                          signals: bool = True) -> RunSummary:
    """Execute ``run`` with the progress bar (on a terminal, unless ``no_bar``); a failed file is said in
    one line, and so is a result of the ``lines`` statuses ("done", "skipped") when no bar shows.
    ``signals``: SIGTERM stops the run like Ctrl-C (else the caller's handlers stand)."""
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
        elif r.status in lines and not show_bar:
            say(result_line(r))
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
    in_main = signals and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        with progress:
            return run.execute()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def result_line(r) -> str:
    """A file done or skipped, in one line: ``in/a.jpg -> out/a.png``."""
    if r.status == "skipped":
        return f"{r.input}: skipped (outputs exist)"
    where = f" -> {r.outputs[0]}" if r.outputs else ""
    return f"{r.input}{where}{' (source changed)' if r.redone else ''}"


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
    if summary.frames:
        table.add_row("frames / s", f"{summary.frames_per_second:.2f}")
    if not summary.frames or summary.images_per_second:
        table.add_row("images / s", f"{summary.images_per_second:.2f}")
    # the settings as resolved by the loaded model; before loading (everything skipped) only the version
    keys = ("weights", "model", "resolution", "device", "precision", "refiner", "version") if summary.loaded \
        else ("version",)
    for key in keys:
        value = summary.settings.get(key)
        if value is not None:
            table.add_row(key, str(value), style="dim")
    console.print(table)
