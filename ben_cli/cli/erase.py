"""``ben erase INPUT OUTPUT``: cutouts, alpha masks and trimaps for files, folders and pipes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from ben_cli.cli import options as opt
from ben_cli.errors import UsageError

SAVE_HELP = ("What to write: cutout (RGBA <stem>.png), alpha (<stem>.alpha.png), trimap (<stem>.trimap.png). "
             "Repeat or comma-separate.")


def erase(
    input: Annotated[str, typer.Argument(help="Image file, folder (walked recursively) or - for stdin.")],
    output: Annotated[str, typer.Argument(help="Folder (mirrors the input tree), a .png file, or - for stdout.")],
    save: Annotated[list[str] | None, typer.Option("--save", "-s", help=SAVE_HELP)] = None,
    weights: opt.Weights = None,
    resolution: opt.Resolution = 1024,
    batch_size: opt.BatchSize = 4,
    device: opt.Device = "auto",
    precision: opt.Precision = "auto",
    refiner: opt.Refiner = "auto",
    refiner_weights: opt.RefinerWeights = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo outputs that already exist.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write per-file results and totals as JSON.",
                                                show_default=False)] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Reader and writer threads each "
                                                "(default: one per CPU core, at most 8).", show_default=False)] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model: minutes to compile, "
                                          "then faster; for long runs.")] = False,
    quiet: opt.Quiet = False,
) -> None:
    """Remove the background of images: BEN Base -> confidence trimap -> refiner."""
    from ben_cli import runner
    from ben_cli.io import clean_stale_temp_files
    from ben_cli.pipeline import check_refiner, check_resolution

    kinds = runner.expand_kinds(save or [])
    check_resolution(resolution)
    check_refiner(refiner, refiner_weights)
    _check_runnable(device, precision, weights)  # exit 2 even when every output already exists
    jobs, out_root = _plan(input, output, kinds)
    if out_root is not None and out_root.is_dir():
        clean_stale_temp_files(out_root)

    def get_eraser():
        from ben_cli.pipeline import Eraser

        return Eraser.from_options(weights, device=device, precision=precision, resolution=resolution,
                                   batch_size=batch_size, refiner=refiner, refiner_weights=refiner_weights,
                                   compile=compile)

    to_stdout = output == runner.STDOUT
    console = opt.stderr_console(quiet)
    workers = workers or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    summary = _run_with_progress(jobs, get_eraser, batch_size, overwrite, workers, console, quiet or to_stdout)
    if report is not None:
        from ben_cli.io import atomic_write_bytes

        atomic_write_bytes(report, json.dumps(summary.to_json(), indent=2).encode())
    if not quiet:
        _print_summary(console, summary)
    if summary.count("failed"):
        raise typer.Exit(1)


def _check_runnable(device: str, precision: str, weights: Path | None) -> None:
    from ben_cli.checkpoints.weights import find_weights
    from ben_cli.device import resolve_device, resolve_dtype

    resolve_dtype(precision, resolve_device(device))
    if weights is not None:
        find_weights(weights)


def _plan(input: str, output: str, kinds: tuple[str, ...]):
    """Jobs and the output root folder (None for stdout / single file)."""
    from ben_cli import runner
    from ben_cli.io import IMAGE_EXTS, find_images, plan_outputs, read_stdin_bytes, single_output

    to_stdout = output == runner.STDOUT
    names_a_file = Path(output).suffix.lower() in IMAGE_EXTS and not Path(output).is_dir()  # out.jpg: no folder
    if to_stdout and len(kinds) > 1:
        raise UsageError("with OUTPUT '-' only one --save kind can be written")
    if input == runner.STDIN:
        data = read_stdin_bytes()
        if to_stdout:
            return [runner.Job("<stdin>", {kinds[0]: runner.STDOUT}, data)], None
        if Path(output).is_dir():
            raise UsageError("with INPUT '-' OUTPUT must be '-' or a .png file")
        return [runner.Job("<stdin>", dict(single_output("stdin.png", output, kinds)), data)], None
    src = Path(input)
    if not src.exists():
        raise UsageError(f"input not found: {src}")
    if src.is_file():
        if to_stdout:
            return [runner.Job(str(src), {kinds[0]: runner.STDOUT})], None
        if names_a_file:  # single_output refuses anything but .png
            return [runner.Job(str(src), dict(single_output(src, output, kinds)))], None
        out_root = Path(output)
        plan = plan_outputs([src], src.parent, out_root, kinds)
        return [runner.Job(str(p), dict(o)) for p, o in plan.items()], out_root
    if to_stdout:
        raise UsageError("OUTPUT '-' needs a single input image, not a folder")
    out_root = Path(output)
    if (out_root.exists() and not out_root.is_dir()) or names_a_file:
        raise UsageError(f"OUTPUT must be a folder when INPUT is a folder: {out_root}")
    if out_root.resolve() == src.resolve():
        raise UsageError("OUTPUT must not be the INPUT folder (outputs would be read back as inputs)")
    images = find_images(src, exclude=out_root)
    plan = plan_outputs(images, src, out_root, kinds)
    return [runner.Job(str(p), dict(o)) for p, o in plan.items()], out_root


def _run_with_progress(jobs, get_eraser, batch_size, overwrite, workers, console, no_bar):
    from rich.progress import Progress, TextColumn

    from ben_cli import runner
    from ben_cli.progress import progress_columns

    show_bar = not no_bar and console.is_terminal
    progress = Progress(*progress_columns(TextColumn("{task.fields[rate]}")),
                        console=console, disable=not show_bar, transient=False)
    task = progress.add_task("erase", total=len(jobs), rate="")
    done = [0]
    t0 = time.perf_counter()

    def on_result(r: runner.FileResult) -> None:
        if r.status == "failed":
            if show_bar:  # print above the live bar
                progress.console.print(f"ben: {r.input}: {r.error}", markup=False, soft_wrap=True)
            else:
                opt.print_error(f"{r.input}: {r.error}")
        if r.status == "done":
            done[0] += 1
        rate = done[0] / max(time.perf_counter() - t0, 1e-9)
        progress.update(task, advance=1, rate=f"{rate:.2f} img/s")

    # A kill stops like Ctrl-C: only complete files remain. Handlers can only be set from the
    # main thread; run elsewhere (main() called from a thread), SIGTERM keeps its handler.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        with progress:
            return runner.run(jobs, get_eraser, batch_size=batch_size, overwrite=overwrite,
                              workers=workers, on_result=on_result)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_summary(console, summary) -> None:
    from rich.table import Table

    table = Table(title="ben erase", show_header=False, box=None, pad_edge=False)
    table.add_row("done", str(summary.count("done")))
    table.add_row("skipped (outputs exist)", str(summary.count("skipped")))
    table.add_row("failed", str(summary.count("failed")), style="red" if summary.count("failed") else None)
    table.add_row("time", f"{summary.seconds:.1f} s")
    table.add_row("images / s", f"{summary.images_per_second:.2f}")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("erase")(erase)

