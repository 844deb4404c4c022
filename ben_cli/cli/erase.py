"""``ben erase INPUT... OUTPUT``: cutouts, alpha masks and trimaps for files, folders and pipes."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ben_cli.cli import options as opt
from ben_cli.errors import UsageError
from ben_cli.options import ImageFormat, OutputOptions, VideoOptions

if TYPE_CHECKING:
    from ben_cli.engines import RayOptions, RunSummary
    from ben_cli.options import InferenceOptions
    from ben_cli.plan import Plan, VideoPlan

SAVE_HELP = ("What to write: cutout (RGBA <stem>.png), alpha (<stem>.alpha.png), trimap (<stem>.trimap.png), "
             "overlay (<stem>.overlay.png, the trimap over the image). Repeat or comma-separate.")
PATHS_HELP = ("Inputs, then OUTPUT. Inputs: image files, folders (walked recursively) or - for stdin. OUTPUT: a "
              "folder (mirrors a single input folder; created if missing), a .png file (one input image), or - for "
              "stdout. Folders and files may be fsspec URLs (s3://bucket/photos, gs://..., file://...).")

Report = Annotated[Path | None, typer.Option("--report", metavar="FILE.json", show_default=False,
                                             help="Write the settings, per-file results and totals as JSON "
                                             "(also when the run is interrupted).")]
_LOOK = "Finishing"
Decontaminate = Annotated[bool, typer.Option("--decontaminate/--no-decontaminate", rich_help_panel=_LOOK,
                                             help="Give semi-transparent cutout pixels their estimated foreground "
                                             "colour, so no halo of the old background shows on a new one.")]
Background = Annotated[str | None, typer.Option("--background", metavar="COLOR|IMAGE", rich_help_panel=_LOOK,
                                                show_default=False,
                                                help="Flatten cutouts onto a colour (white, #00ff00, 0,255,0) or an "
                                                "image (resized to cover).")]


class FileFormat(str, Enum):
    """``--format``: png/jpg/webp for images, webm/mov/mp4 for videos (the other kind keeps its default)."""

    png = "png"
    jpg = "jpg"
    webp = "webp"
    webm = "webm"
    mov = "mov"
    mp4 = "mp4"


Format = Annotated[FileFormat | None, typer.Option("--format", rich_help_panel=_LOOK, show_default=False,
                                                   help="Cutout format. Images: png (default), jpg, webp (these two "
                                                   "need --background). Videos: webm (VP9 with alpha, default), "
                                                   "mov (ProRes 4444), mp4 (H.264, needs --background).")]
_VIDEO = "Video"
AllFrames = Annotated[bool, typer.Option("--all-frames", metavar="", rich_help_panel=_VIDEO,
                                         help="Treat animated GIF/WebP/APNG as videos (default: their first frame).")]
Frames = Annotated[bool, typer.Option("--frames", metavar="", rich_help_panel=_VIDEO,
                                      help="Write one PNG per frame into <stem>/ instead of a video.")]
Smooth = Annotated[int, typer.Option("--smooth", metavar="N", rich_help_panel=_VIDEO,
                                     help="Average the base probability over N neighbouring frames (0: off; less "
                                     "flicker on static shots, trails on moving edges).")]
Crf = Annotated[int | None, typer.Option("--crf", metavar="N", rich_help_panel=_VIDEO, show_default=False,
                                         help="Video quality (VP9 0-63, H.264 0-51; lower is better and larger).")]
Threshold = Annotated[float | None, typer.Option("--threshold", metavar="T", rich_help_panel=_LOOK, show_default=False,
                                                 help="Hard edges: alpha 255 where it is above T (0-1), else 0.")]
PngCompression = Annotated[int | None, typer.Option("--png-compression", metavar="0-9", rich_help_panel=_LOOK,
                                                    show_default=False,
                                                    help="PNG zlib level (default: the fastest; 9 is smallest).")]
Workers = Annotated[int | None, typer.Option("--workers", min=1, metavar="N", show_default=False,
                                             help="local: reader and writer threads each (default: one per CPU "
                                             "core, at most 8). ray: model actors (default: one per GPU of the "
                                             "cluster, else 1).")]
_ENGINE = "Engine"


class EngineName(str, Enum):
    """Where ``ben erase`` runs (:mod:`ben_cli.engines`)."""

    local = "local"
    ray = "ray"


EngineOpt = Annotated[EngineName, typer.Option("--engine", rich_help_panel=_ENGINE,
                                               help="local: this process. ray: a Ray cluster (--ray-address, "
                                               "$RAY_ADDRESS) or a Ray runtime started here; needs "
                                               'pip install "ben_cli\\[ray]".')]  # \\[: not Rich markup
RayAddress = Annotated[str | None, typer.Option("--ray-address", metavar="ADDR", rich_help_panel=_ENGINE,
                                                show_default=False,
                                                help="Ray cluster to join (ray://host:10001, host:6379, auto). "
                                                "Default: $RAY_ADDRESS, else start Ray on this machine.")]
GpusPerWorker = Annotated[float | None, typer.Option("--gpus-per-worker", min=0, metavar="G", rich_help_panel=_ENGINE,
                                                     show_default=False,
                                                     help="GPUs of each ray model actor (default: 1 when the "
                                                     "cluster has GPUs, else 0: the model on the CPU).")]


def erase(
    paths: Annotated[list[str], typer.Argument(metavar="INPUT... OUTPUT", help=PATHS_HELP, show_default=False)],
    save: Annotated[list[str] | None, typer.Option("--save", "-s", metavar="KIND", help=SAVE_HELP,
                                                               show_default=False)] = None,
    model: opt.Model = opt.ModelName("ben2-base"),
    weights: opt.Weights = None,
    resolution: opt.Resolution = 1024,
    batch_size: opt.BatchSize = None,
    device: opt.Device = "auto",
    precision: opt.PrecisionOpt = opt.Precision.auto,
    refiner: opt.RefinerOpt = opt.Refiner.auto,
    refiner_weights: opt.RefinerWeights = None,
    compile: opt.Compile = False,
    autocast: opt.Autocast = False,
    max_refine_side: opt.MaxRefineSide = None,
    decontaminate: Decontaminate = True,
    background: Background = None,
    format: Format = None,
    threshold: Threshold = None,
    png_compression: PngCompression = None,
    overwrite: opt.Overwrite = False,
    report: Report = None,
    workers: Workers = None,
    engine: EngineOpt = EngineName.local,
    ray_address: RayAddress = None,
    gpus_per_worker: GpusPerWorker = None,
    all_frames: AllFrames = False,
    frames: Frames = False,
    smooth: Smooth = 0,
    crf: Crf = None,
    quiet: opt.Quiet = False,
) -> None:
    """Remove the background of images and videos: BEN Base -> confidence trimap -> refiner."""
    from ben_cli.engines import RayOptions, check_engine
    from ben_cli.plan import STDIO, parse_kinds

    if len(paths) < 2:
        raise UsageError("give at least one INPUT and the OUTPUT (ben erase photos/ cutouts/)")
    *inputs, output = paths
    kinds = parse_kinds(save or [])
    options = opt.inference_options(model=model, weights=weights, device=device, precision=precision,
                                    resolution=resolution, batch_size=batch_size, refiner=refiner,
                                    refiner_weights=refiner_weights, compile=compile,
                                    max_refine_side=max_refine_side, autocast=autocast)
    fmt = None if format is None else format.value
    finish = OutputOptions(decontaminate=decontaminate, background=background,
                           format=fmt if fmt in ("png", "jpg", "webp") else ImageFormat.png, threshold=threshold,
                           png_compression=png_compression)
    video = VideoOptions(format=fmt if fmt in ("webm", "mov", "mp4") else "auto", frames=frames,
                         all_frames=all_frames, smooth=smooth, crf=crf)
    check_report_path(report)
    ray = RayOptions(address=ray_address, gpus_per_worker=gpus_per_worker)
    check_engine(engine.value)
    if engine is EngineName.ray and STDIO in (output, *inputs):
        raise UsageError("--engine ray reads and writes files, folders and URLs, not standard input or output")
    if engine is EngineName.local and ray != RayOptions():
        raise UsageError("--ray-address and --gpus-per-worker need --engine ray")
    if output == STDIO:
        refuse_terminal_stdout()
    # exit 2 even when every output already exists; a cluster's devices are the workers', not this machine's
    check_runnable(options, device=engine is EngineName.local or not (ray_address or os.environ.get("RAY_ADDRESS")))
    plan = make_plan(inputs, output, kinds, suffixes={"cutout": finish.cutout_suffix},
                     video=video_plan(video, finish))
    if any(job.video for job in plan.jobs):
        from ben_cli.video import check_video_support

        check_video_support()  # exit 2 naming the extra, before the model loads
    summary = run_plan(plan, options, overwrite=overwrite, workers=workers, report=report, quiet=quiet,
                       no_bar=output == STDIO or engine is EngineName.ray, title="ben erase", output=finish,
                       engine=engine.value, ray=ray, video=video)
    exit_for(summary)


def video_plan(video: VideoOptions, output: OutputOptions) -> VideoPlan | None:
    """What the planner needs to take videos; None when their output names cannot be made (mp4 without a
    background is then refused only if a video is among the inputs)."""
    from ben_cli.errors import OptionError
    from ben_cli.plan import VideoPlan
    from ben_cli.video import video_suffixes

    try:
        return VideoPlan(video_suffixes(video, output), all_frames=video.all_frames)
    except OptionError:
        if video.format.value == "mp4":
            raise
        return None


def make_plan(inputs: list[str], output: str | None, kinds: tuple[str, ...],
              suffixes: dict[str, str] | None = None, video: VideoPlan | None = None) -> Plan:
    """The plan of a run, its notes printed as warnings, stale temp files of killed runs removed."""
    from ben_cli.io import clean_stale_temp_files
    from ben_cli.plan import plan_run

    plan = plan_run(inputs, output, kinds, read_stdin=read_stdin, suffixes=suffixes, video=video)
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
    import sys

    from ben_cli.engines import create_run
    from ben_cli.io import atomic_write_bytes

    console = opt.stderr_console(quiet)
    run = create_run(engine, plan, options, output=output, overwrite=overwrite, workers=workers,
                     settings=base_settings(options), ray=ray, quiet=quiet, video=video)
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
