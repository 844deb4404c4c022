"""``ben bench``: time each stage of ``ben erase``, the whole path, start-up and an official-style path.

The table goes to stderr (like every ``ben`` display), so ``--json -`` leaves stdout
to the JSON alone. The measuring is :func:`ben_cli.bench.run_bench`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ben_cli.cli import options as opt
from ben_cli.errors import UsageError

if TYPE_CHECKING:
    from ben_cli.bench import BenchReport

_BENCH = "Benchmark"
BatchSizes = Annotated[list[str] | None, typer.Option(
    "--batch-size", "-b", metavar="N[,N...]", show_default=False, rich_help_panel=opt._MODEL,
    help="Batch sizes to measure, one table column each: comma-separated or repeated (1,8,16). "
    "Default: the device's (8 on CUDA, 1 on the CPU).")]
Images = Annotated[int | None, typer.Option(
    "--images", metavar="N", show_default=False, rich_help_panel=_BENCH,
    help="Generate N synthetic photo-like JPEGs (default: 64 on CUDA, else 4); with --input, take at most N "
    "images of the folder (default: all).")]
Size = Annotated[str | None, typer.Option(
    "--size", metavar="WxH", show_default=False, rich_help_panel=_BENCH,
    help="Size of the generated images (default 1500x1000).")]
Input = Annotated[Path | None, typer.Option(
    "--input", metavar="FOLDER", show_default=False, rich_help_panel=_BENCH,
    help="Measure on the images of FOLDER (walked recursively) instead of generated ones.")]
Repeats = Annotated[int | None, typer.Option("--repeats", metavar="N", rich_help_panel=_BENCH, show_default=False,
                                             help="Timed passes over the images; the median is reported "
                                             "(default: 3 on CUDA, else 1).")]
Warmup = Annotated[int, typer.Option("--warmup", metavar="N", rich_help_panel=_BENCH,
                                     help="Untimed passes over one batch before each measurement.")]
JsonOut = Annotated[Path | None, typer.Option(
    "--json", metavar="PATH", show_default=False, rich_help_panel=_BENCH,
    help="Also write the numbers as JSON to PATH, or - for stdout (the table stays on stderr).")]
Official = Annotated[bool, typer.Option(
    "--official/--no-official", rich_help_panel=_BENCH,
    help="Also time an official-style path in this process (per image: Pillow Lanczos resize, batch 1, "
    "fp16 autocast on CUDA, fp32 elsewhere) and report each speed-up as a ratio to it.")]
StartupOpt = Annotated[bool, typer.Option(
    "--startup/--no-startup", rich_help_panel=_BENCH,
    help="Also time 'ben erase' on one image in a fresh process (start-up to first output).")]
Workers = Annotated[int | None, typer.Option(
    "--workers", metavar="N", show_default=False, rich_help_panel=_BENCH,
    help="Reader and writer threads of the erase path (default: one per core, at most 8).")]


def bench(
    model: opt.Model = opt.ModelName("ben2-base"),
    weights: opt.Weights = None,
    resolution: opt.Resolution = 1024,
    batch_size: BatchSizes = None,
    device: opt.Device = "auto",
    precision: opt.PrecisionOpt = opt.Precision.auto,
    refiner: opt.RefinerOpt = opt.Refiner.auto,
    refiner_weights: opt.RefinerWeights = None,
    compile: opt.Compile = False,
    autocast: opt.Autocast = False,
    max_refine_side: opt.MaxRefineSide = None,
    images: Images = None,
    size: Size = None,
    input: Input = None,
    repeats: Repeats = None,
    warmup: Warmup = 1,
    workers: Workers = None,
    json_path: JsonOut = None,
    official: Official = True,
    startup: StartupOpt = True,
    quiet: opt.Quiet = False,
) -> None:
    """Measure ben erase here: each stage, the whole path, memory, start-up, and an official-style path."""
    from ben_cli.bench import BenchOptions, check_json_path, parse_batch_sizes, parse_size, run_bench
    from ben_cli.cli.driver import check_runnable

    sizes = parse_batch_sizes(batch_size) if batch_size else ()  # none given: the device's default
    if input is not None and size is not None:
        raise UsageError("--size sets the generated images; it cannot be combined with --input")
    bench_options = BenchOptions(batch_sizes=sizes, images=images, input=input, repeats=repeats, warmup=warmup,
                                 official=official, startup=startup, workers=workers,
                                 **({} if size is None else {"size": parse_size(size)}))
    options = opt.inference_options(model=model, weights=weights, device=device, precision=precision,
                                    resolution=resolution, batch_size=sizes[0] if sizes else None,
                                    refiner=refiner,
                                    refiner_weights=refiner_weights, compile=compile,
                                    max_refine_side=max_refine_side, autocast=autocast)
    check_json_path(json_path)
    check_runnable(options)
    console = opt.stderr_console(quiet)
    try:
        with console.status("ben bench") as status, _sigterm_interrupts():
            report = run_bench(options, bench_options, on_step=lambda step: status.update(f"ben bench: {step}"))
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the temporary files are gone already
        if getattr(e, "signal_name", "SIGINT") == "SIGTERM":
            opt.print_error("interrupted")
            raise typer.Exit(143) from None
        raise typer.Exit(130) from None  # the root handler says "interrupted"
    for line in report_header(report):
        console.print(line, markup=False, highlight=False)
    console.print(report_table(report))
    for line in report_lines(report):
        console.print(line, markup=False, highlight=False)
    if json_path is not None:
        _write_json(json_path, report)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the benchmark like Ctrl-C (temporary files removed, exit 143)."""
    import signal
    import threading

    from ben_cli.engines import Interrupted

    def stop(signum, frame) -> None:
        raise Interrupted("SIGTERM")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _write_json(path: Path, report: BenchReport) -> None:
    if str(path) == "-":
        import sys

        sys.stdout.write(report.dumps() + "\n")
        sys.stdout.flush()
        return
    from ben_cli.io import atomic_write_bytes

    atomic_write_bytes(path, (report.dumps() + "\n").encode())


def _ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def _rate(per_s: float) -> str:
    return f"{per_s:.2f}" if per_s < 10 else f"{per_s:.1f}" if per_s < 1000 else f"{per_s:,.0f}"


def _bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def report_table(report: BenchReport):
    """The report as a Rich table: one column per batch size, ms/image and images/s per stage."""
    from rich.table import Table

    from ben_cli.bench import STAGES

    s = report.settings
    table = Table(title="ms/image and images/s per stage; one column per batch size", title_justify="left")
    table.add_column("batch size", style="bold")
    for row in report.rows:
        table.add_column(str(row.batch_size), justify="right")

    def cells(measure) -> str:
        return f"{_ms(measure.ms_per_image)} ms  {_rate(measure.images_per_s)}/s"

    for name in STAGES:
        table.add_row(name, *(cells(r.stages[name]) for r in report.rows))
    table.add_row("sum of stages", *(f"{_ms(r.stages_ms_per_image)} ms" for r in report.rows), style="dim")
    table.add_row("erase path", *(cells(r.erase) for r in report.rows), style="bold", end_section=False)
    table.add_row("latency, 1 image", *(f"{_ms(r.latency_ms)} ms" for r in report.rows))
    memory = {"cuda_max_allocated": "peak memory (CUDA)"}.get(s["memory_kind"], "peak RSS (process)")
    table.add_row(memory, *(_bytes(r.peak_memory_bytes) for r in report.rows))
    if report.official is not None:
        ratios = [report.vs_official(r) or {} for r in report.rows]
        table.add_row("erase path vs official-style", *(f"{x['erase']:.2f}x" for x in ratios), style="bold")
        table.add_row("base vs official forward", *(f"{x['base']:.2f}x" for x in ratios))
    return table


def report_header(report: BenchReport) -> list[str]:
    """The lines above the table: the device and the settings measured."""
    s = report.settings
    precision = s["precision"] + (" autocast" if s.get("autocast") else "")
    return [f"ben bench: {s['device_name']} ({s['device']}), torch {s['torch']}, ben {s['version']}",
            f"model {s['model']}, {precision}, refiner {s['refiner']}, {s['resolution']} px"
            f"{', compiled' if s['compile'] else ''}; {s['images']} images ({s['image_size']})",
            f"median of {s['repeats']} after {s['warmup']} warm-up; threads: torch {s['threads']}, "
            f"readers/writers {s['workers']}"]


def report_lines(report: BenchReport) -> list[str]:
    """The lines under the table: loading, the official-style path and start-up."""
    lines = [f"model loaded in {report.load_seconds:.2f} s ({report.settings['weights']})"]
    off = report.official
    if off is not None:
        lines.append(f"official-style ({off.precision}, batch 1): {_ms(off.total.ms_per_image)} ms/image, "
                     f"{_rate(off.total.images_per_s)} images/s; forward alone {_ms(off.model.ms_per_image)} ms")
    up = report.startup
    if up is not None:
        split = ""
        if up.load_s is not None:
            split = (f" (start+imports {up.import_s:.2f}, loading {up.load_s:.2f}, "
                     f"first image {up.first_image_s:.2f})")
        lines.append(f"start-up of ben erase on one image: first output {up.first_output_s:.2f} s{split}; "
                     f"exit {up.exit_s:.2f} s")
    return lines


def register(app: typer.Typer) -> None:
    app.command("bench", cls=opt.Command)(bench)
