"""``ben erase INPUT... OUTPUT``: cutouts, alpha masks and trimaps for files, folders and pipes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ben_cli.cli import options as opt
from ben_cli.errors import UsageError

if TYPE_CHECKING:
    from ben_cli.options import InferenceOptions
    from ben_cli.plan import Plan
    from ben_cli.runner import RunSummary

SAVE_HELP = ("What to write: cutout (RGBA <stem>.png), alpha (<stem>.alpha.png), trimap (<stem>.trimap.png), "
             "overlay (<stem>.overlay.png, the trimap over the image). Repeat or comma-separate.")
PATHS_HELP = ("Inputs, then OUTPUT. Inputs: image files, folders (walked recursively) or - for stdin. OUTPUT: a "
              "folder (mirrors a single input folder; created if missing), a .png file (one input image), or - for "
              "stdout.")

Report = Annotated[Path | None, typer.Option("--report", metavar="FILE.json", show_default=False,
                                             help="Write the settings, per-file results and totals as JSON "
                                             "(also when the run is interrupted).")]
Workers = Annotated[int | None, typer.Option("--workers", min=1, metavar="N", show_default=False,
                                             help="Reader and writer threads each (default: one per CPU core, "
                                             "at most 8).")]


def erase(
    paths: Annotated[list[str], typer.Argument(metavar="INPUT... OUTPUT", help=PATHS_HELP, show_default=False)],
    save: Annotated[list[str] | None, typer.Option("--save", "-s", metavar="KIND", help=SAVE_HELP,
                                                               show_default=False)] = None,
    model: opt.Model = opt.ModelName("ben2-base"),
    weights: opt.Weights = None,
    resolution: opt.Resolution = 1024,
    batch_size: opt.BatchSize = 4,
    device: opt.Device = "auto",
    precision: opt.PrecisionOpt = opt.Precision.auto,
    refiner: opt.RefinerOpt = opt.Refiner.auto,
    refiner_weights: opt.RefinerWeights = None,
    compile: opt.Compile = False,
    overwrite: opt.Overwrite = False,
    report: Report = None,
    workers: Workers = None,
    quiet: opt.Quiet = False,
) -> None:
    """Remove the background of images: BEN Base -> confidence trimap -> refiner."""
    from ben_cli.plan import STDIO, parse_kinds

    if len(paths) < 2:
        raise UsageError("give at least one INPUT and the OUTPUT (ben erase photos/ cutouts/)")
    *inputs, output = paths
    kinds = parse_kinds(save or [])
    options = opt.inference_options(model=model, weights=weights, device=device, precision=precision,
                                    resolution=resolution, batch_size=batch_size, refiner=refiner,
                                    refiner_weights=refiner_weights, compile=compile)
    check_report_path(report)
    if output == STDIO:
        refuse_terminal_stdout()
    check_runnable(options)  # exit 2 even when every output already exists
    plan = make_plan(inputs, output, kinds)
    summary = run_plan(plan, options, overwrite=overwrite, workers=workers, report=report, quiet=quiet,
                       no_bar=output == STDIO, title="ben erase")
    exit_for(summary)


def make_plan(inputs: list[str], output: str | None, kinds: tuple[str, ...]) -> Plan:
    """The plan of a run, its notes printed as warnings, stale temp files of killed runs removed."""
    from ben_cli.io import clean_stale_temp_files
    from ben_cli.plan import plan_run

    plan = plan_run(inputs, output, kinds, read_stdin=read_stdin)
    for note in plan.notes:
        opt.print_warning(note)
    if plan.out_root is not None and plan.out_root.is_dir():
        clean_stale_temp_files(plan.out_root)
    return plan


def check_report_path(report: Path | None) -> None:
    """UsageError up front when the report could not be written."""
    if report is None:
        return
    if report.is_dir():
        raise UsageError(f"--report {report} is a folder; give a file name (run.json)")
    for parent in report.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--report {report} lies under the file {parent}")
            break


def refuse_terminal_stdout() -> None:
    import sys

    if _isatty(sys.stdout):
        raise UsageError("OUTPUT '-' writes PNG data to standard output, which is a terminal: redirect it "
                         "(> out.png) or pipe it")


def read_stdin() -> bytes:
    """All of standard input; refused when it is a terminal (nothing was piped in)."""
    import sys

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


def check_runnable(options: InferenceOptions) -> None:
    """Device and precision available, an explicit weights file present: else exit 2 before any work."""
    from ben_cli.checkpoints.weights import find_weights
    from ben_cli.device import resolve_device, resolve_dtype

    resolve_dtype(options.precision.value, resolve_device(options.device))
    if options.weights is not None:
        find_weights(options.weights, model=options.model, download=False)


def base_settings(options: InferenceOptions) -> dict:
    """The settings of a run before the model is loaded (the Eraser adds the resolved ones)."""
    from ben_cli import __version__

    return {"model": options.model, "weights": None if options.weights is None else str(options.weights),
            "resolution": options.resolution, "device": options.device, "precision": options.precision.value,
            "refiner": options.resolved_refiner(), "version": __version__}


def run_plan(plan: Plan, options: InferenceOptions, *, overwrite: bool, workers: int | None, report: Path | None,
             quiet: bool, no_bar: bool, title: str) -> RunSummary:
    """Run the plan with a progress display; the report is written however the run ends."""
    import json
    import os
    import sys

    from ben_cli import runner
    from ben_cli.io import atomic_write_bytes
    from ben_cli.options import default_workers

    def get_eraser():
        from ben_cli.pipeline import Eraser

        return Eraser.from_options(options)

    console = opt.stderr_console(quiet)
    run = runner.BatchRun(plan.jobs, get_eraser, batch_size=options.batch_size, overwrite=overwrite,
                          workers=workers or default_workers(), settings=base_settings(options))
    try:
        summary = _execute_with_progress(run, console, quiet or no_bar)
    finally:
        summary = run.summary()
        if report is not None:
            atomic_write_bytes(report, json.dumps(summary.to_json(), indent=2).encode())
    if os.environ.get("BEN_DEBUG"):
        for r in summary.results:
            if r.traceback:
                print(r.traceback, file=sys.stderr)
    if summary.interrupted:
        done = summary.count("done") + summary.count("skipped")
        opt.print_error(f"interrupted: {done} of {summary.total} done; run again to resume")
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
    import signal
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
    from ben_cli.runner import Interrupted

    raise Interrupted("SIGTERM")


def print_summary(console, summary: RunSummary, title: str) -> None:
    """The totals and the settings of a run, as a table on stderr."""
    from rich.table import Table

    table = Table(title=title, show_header=False, box=None, pad_edge=False, title_justify="left")
    failed = summary.count("failed")
    table.add_row("done", str(summary.count("done")))
    table.add_row("skipped (outputs exist)", str(summary.count("skipped")))
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


def register(app: typer.Typer) -> None:
    app.command("erase")(erase)
