"""``ben erase INPUT... OUTPUT``: cutouts, alpha masks and trimaps for files, folders and pipes."""

from __future__ import annotations

import os
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ben_cli.cli import options as opt
from ben_cli.cli.driver import (
    check_report_path,
    check_runnable,
    exit_for,
    make_plan,
    output_settings,
    refuse_terminal_stdout,
    report_fatal,
    run_plan,
)
from ben_cli.cli.watching import DEFAULT_SETTLE, check_watch, watch_folder
from ben_cli.errors import UsageError
from ben_cli.options import ImageFormat, OutputOptions, VideoOptions

if TYPE_CHECKING:
    from ben_cli.engines import RunSummary
    from ben_cli.options import InferenceOptions
    from ben_cli.plan import Plan, VideoPlan

SAVE_HELP = ("What to write: cutout (RGBA <stem>.png), alpha (<stem>.alpha.png), trimap (<stem>.trimap.png), "
             "overlay (<stem>.overlay.png, the trimap over the image). Repeat or comma-separate. \\[default: cutout]")
PATHS_HELP = ("Inputs, then OUTPUT. Inputs: image files, folders (walked recursively) or - for stdin. OUTPUT: a "
              "folder (mirrors a single input folder; created if missing), a .png file (one input image), or - for "
              "stdout. Folders and files may be fsspec URLs (s3://bucket/photos, gs://..., file://...).")

Report = Annotated[Path | None, typer.Option("--report", metavar="FILE.json", show_default=False,
                                             help="Write the settings, per-file results and totals as JSON "
                                             "(also when the run is interrupted).")]
_LOOK = "Finishing"
NoDecontaminate = Annotated[bool, typer.Option("--no-decontaminate", metavar="", rich_help_panel=_LOOK,
                                               help="Keep the image's colours in semi-transparent cutout pixels. By "
                                               "default they get their estimated foreground colour, so no halo of "
                                               "the old background shows on a new one.")]
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


Format = Annotated[FileFormat | None, typer.Option("--format", metavar="FMT", rich_help_panel=_LOOK,
                                                   show_default=False,
                                                   help="Cutout format. Images: png (default), jpg, webp (these two "
                                                   "need --background). Videos: webm (VP9 with alpha, default), "
                                                   "mov (ProRes 4444), mp4 (H.264, needs --background).")]
_CROP = "Crop and canvas"
Crop = Annotated[bool, typer.Option("--crop", metavar="", rich_help_panel=_CROP,
                                    help="Trim every output (cutout, alpha, trimap, overlay, --background renders) "
                                    "to the subject's bounding box. An image without a subject fails. The report "
                                    "records each file's box (left, top, right, bottom) in the original's pixels. "
                                    "Videos: one box for the whole clip (the union over its frames).")]
CropThreshold = Annotated[float, typer.Option("--crop-threshold", metavar="T", rich_help_panel=_CROP,
                                              help="A pixel is subject when its alpha is at least T (0-1), so a "
                                              "faint haze does not widen the box.")]
MarginOpt = Annotated[str, typer.Option("--margin", metavar="N|N%", rich_help_panel=_CROP,
                                        help="Space around the subject: N pixels, or N% of the box's longer side "
                                        "(clamped to the image). With a canvas it is kept free inside it.")]
Canvas = Annotated[str | None, typer.Option("--canvas", metavar="WxH", rich_help_panel=_CROP, show_default=False,
                                            help="Centre the cropped subject on a WxH canvas (implies --crop), "
                                            "scaled down to fit inside the margin; the rest transparent or the "
                                            "--background.")]
Square = Annotated[bool, typer.Option("--square", metavar="", rich_help_panel=_CROP,
                                      help="Centre it on a square canvas of the box's longer side plus the "
                                      "margins (implies --crop; never scaled).")]
Upscale = Annotated[bool, typer.Option("--upscale", metavar="", rich_help_panel=_CROP,
                                       help="Let --canvas scale a small subject up to fit (default: only down).")]
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
                                                "Default: $RAY_ADDRESS, else the Ray running on this machine, "
                                                "else start one here (local: always start one).")]
GpusPerWorker = Annotated[float | None, typer.Option("--gpus-per-worker", min=0, metavar="G", rich_help_panel=_ENGINE,
                                                     show_default=False,
                                                     help="GPUs of each ray model actor (default: 1 when the "
                                                     "cluster has GPUs, else 0: the model on the CPU).")]
StallTimeout = Annotated[float | None, typer.Option("--stall-timeout", min=0, metavar="S", rich_help_panel=_ENGINE,
                                                    show_default=False,
                                                    help="ray: stop when nothing moved for S seconds (no read, "
                                                    "batch, write or model loading anywhere), saying which "
                                                    "resource is missing (default 300; 0: wait forever).")]
_WATCH = "Watch"
Watch = Annotated[bool, typer.Option("--watch", metavar="", rich_help_panel=_WATCH,
                                     help="After the run, keep watching the INPUT folder (recursively) and process "
                                     "each image that arrives or changes once it is complete, until Ctrl-C or "
                                     "SIGTERM. One INPUT folder and an OUTPUT folder.")]
Settle = Annotated[float | None, typer.Option("--settle", min=0, metavar="S", rich_help_panel=_WATCH,
                                              show_default=False,
                                              help="--watch: seconds a new file's size and time must stay "
                                              "unchanged before it is read (it must also decode). \\[default: 1]")]
Poll = Annotated[bool, typer.Option("--poll", metavar="", rich_help_panel=_WATCH,
                                    help="--watch: look for changes by polling (network mounts, where file "
                                    "system events do not arrive).")]


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
    no_decontaminate: NoDecontaminate = False,
    background: Background = None,
    format: Format = None,
    threshold: Threshold = None,
    png_compression: PngCompression = None,
    crop: Crop = False,
    crop_threshold: CropThreshold = 0.05,
    margin: MarginOpt = "0",
    canvas: Canvas = None,
    square: Square = False,
    upscale: Upscale = False,
    overwrite: opt.Overwrite = False,
    report: Report = None,
    workers: Workers = None,
    engine: EngineOpt = EngineName.local,
    ray_address: RayAddress = None,
    gpus_per_worker: GpusPerWorker = None,
    stall_timeout: StallTimeout = None,
    all_frames: AllFrames = False,
    frames: Frames = False,
    smooth: Smooth = 0,
    crf: Crf = None,
    watch: Watch = False,
    settle: Settle = None,
    poll: Poll = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
) -> None:
    """Remove the background of images and videos: BEN Base -> confidence trimap -> refiner."""
    from ben_cli.engines import RayOptions, check_engine
    from ben_cli.plan import STDIO, parse_kinds

    with report_fatal(report):  # exit 2 before any work: the report says why
        if len(paths) < 2:
            raise UsageError("give at least one INPUT and the OUTPUT (ben erase photos/ cutouts/)")
        *inputs, output = paths
        kinds = parse_kinds(save or [])
        options = opt.inference_options(model=model, weights=weights, device=device, precision=precision,
                                        resolution=resolution, batch_size=batch_size, refiner=refiner,
                                        refiner_weights=refiner_weights, compile=compile,
                                        max_refine_side=max_refine_side, autocast=autocast)
        fmt = None if format is None else format.value
        finish = OutputOptions(decontaminate=not no_decontaminate, background=background,
                               format=fmt if fmt in ("png", "jpg", "webp") else ImageFormat.png, threshold=threshold,
                               png_compression=png_compression, crop=crop, crop_threshold=crop_threshold,
                               margin=margin, canvas=canvas, square=square, upscale=upscale)
        video = VideoOptions(format=fmt if fmt in ("webm", "mov", "mp4") else "auto", frames=frames,
                             all_frames=all_frames, smooth=smooth, crf=crf)
        check_report_path(report)
        ray = RayOptions(address=ray_address, gpus_per_worker=gpus_per_worker, stall_timeout=stall_timeout)
        check_engine(engine.value)
        if engine is EngineName.ray and STDIO in (output, *inputs):
            raise UsageError("--engine ray reads and writes files, folders and URLs, not standard input or output")
        if engine is EngineName.local and stall_timeout is not None:
            raise UsageError("--stall-timeout needs --engine ray")
        if engine is EngineName.local and ray != RayOptions():
            raise UsageError("--ray-address and --gpus-per-worker need --engine ray")
        check_watch(inputs, output, watch=watch, settle=settle, poll=poll, ray_engine=engine is EngineName.ray)
        if output == STDIO:
            refuse_terminal_stdout()
        # exit 2 even when every output already exists; a cluster's devices are the workers', not this machine's
        check_runnable(options, device=engine is EngineName.local or not (ray_address or os.environ.get("RAY_ADDRESS")))
        videos = video_plan(video, finish)
        plan = make_plan(inputs, output, kinds, suffixes={"cutout": finish.cutout_suffix}, video=videos,
                         options=options)
        if plan.jobs and all(job.video for job in plan.jobs):
            from ben_cli.video import check_video_support

            check_video_support()  # only videos: exit 2 naming the extra, before the model loads; else each fails alone
    if watch:  # ends by Ctrl-C or SIGTERM: exit 130 or 143
        exit_for(_watch(inputs[0], output, kinds, plan, videos, options, finish, video, settle=settle, poll=poll,
                        overwrite=overwrite, workers=workers, report=report, quiet=quiet))
        return
    summary = run_plan(plan, options, overwrite=overwrite, workers=workers, report=report, quiet=quiet,
                       no_bar=output == STDIO or engine is EngineName.ray, title="ben erase", output=finish,
                       engine=engine.value, ray=replace(ray, verbose=verbose) if engine is EngineName.ray else ray,
                       video=video, one_line=output == STDIO and not verbose)
    exit_for(summary)


def _watch(source: str, output: str, kinds: tuple[str, ...], plan: Plan, videos: VideoPlan | None,
           options: InferenceOptions, finish: OutputOptions, video: VideoOptions, *, settle: float | None,
           **how) -> RunSummary:
    """``--watch``: the first run of ``plan``, then the arrivals, each planned as a run over ``source`` plans it."""
    from functools import partial

    from ben_cli.io import IMAGE_EXTS
    from ben_cli.plan import plan_run

    replan = partial(plan_run, [source], output, kinds, suffixes={"cutout": finish.cutout_suffix}, video=videos,
                     settings=output_settings(options))
    exts = IMAGE_EXTS if videos is None else IMAGE_EXTS | videos.exts
    return watch_folder(plan, lambda paths: replan(only=paths), options, source=Path(source), exts=exts,
                        settle=DEFAULT_SETTLE if settle is None else settle,
                        output=finish, video=video, **how)


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


def register(app: typer.Typer) -> None:
    app.command("erase", cls=opt.Command)(erase)
