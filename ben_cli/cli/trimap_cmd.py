"""``ben trimap IMAGE [OUTPUT]``: the confidence trimap (and an overlay picture) of images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ben_cli.cli import options as opt
from ben_cli.errors import UsageError


def trimap(
    image: Annotated[str, typer.Argument(metavar="IMAGE",
                                         help="Image file, folder (walked recursively) or - for stdin.")],
    output: Annotated[str | None, typer.Argument(metavar="OUTPUT",
                                                 help="A .png file (one image), a folder, or - for stdout. "
                                                      "Default: <stem>.trimap.png beside each image.",
                                                 show_default=False)] = None,
    overlay: Annotated[bool, typer.Option("--overlay", metavar="", help="Also write <stem>.overlay.png: the image with "
                                          "the gray band tinted, where the refiner works.")] = False,
    model: opt.Model = opt.ModelName("ben2-base"),
    weights: opt.Weights = None,
    resolution: opt.Resolution = 1024,
    batch_size: opt.BatchSize = None,
    device: opt.Device = "auto",
    precision: opt.PrecisionOpt = opt.Precision.auto,
    autocast: opt.Autocast = False,
    overwrite: opt.Overwrite = False,
    quiet: opt.Quiet = False,
) -> None:
    """Run BEN Base and write the confidence trimap (0 background, 128 unknown, 255 foreground)."""
    from ben_cli.cli.driver import check_runnable, exit_for, make_plan, refuse_terminal_stdout, run_plan
    from ben_cli.plan import STDIO

    kinds = ("trimap", "overlay") if overlay else ("trimap",)
    options = opt.inference_options(model=model, weights=weights, device=device, precision=precision,
                                    resolution=resolution, batch_size=batch_size, refiner="none",
                                    autocast=autocast)
    if image == STDIO and output is None:
        raise UsageError("with IMAGE '-' (standard input) give OUTPUT: a .png file, or - for standard output")
    if output == STDIO:
        if overlay:
            raise UsageError("--overlay cannot be combined with OUTPUT '-' (one PNG on stdout)")
        refuse_terminal_stdout()
    check_runnable(options)
    one_image = image == STDIO or Path(image).is_file()
    if one_image and output not in (None, STDIO) and not Path(output).is_dir():
        if Path(output).suffix.lower() != ".png":
            raise UsageError(f"OUTPUT must be a .png file or a folder: {output}")
        plan = _single(image, Path(output), kinds)
    else:
        plan = make_plan([image], output, kinds, options=options)
    summary = run_plan(plan, options, overwrite=overwrite, workers=None, report=None, quiet=quiet,
                       no_bar=output == STDIO, title="ben trimap", one_line=len(plan.jobs) == 1)
    skipped = [r for r in summary.results if r.status == "skipped"]
    if skipped and len(plan.jobs) == 1:
        opt.print_error(f"{', '.join(skipped[0].outputs)} exists; use --overwrite to replace it")
    exit_for(summary)


def _single(image: str, out: Path, kinds: tuple[str, ...]):
    """One image (or ``-``) to an explicit .png: the trimap exactly there, the overlay beside it as
    <stem>.overlay.png."""
    from ben_cli.cli.driver import read_stdin
    from ben_cli.io import STDIN_NAME, SUFFIX, refuse_overwriting_input
    from ben_cli.plan import STDIO, Job, Plan

    stem = out.name[: -len(SUFFIX["trimap"])] if out.name.endswith(SUFFIX["trimap"]) else out.stem
    outputs: dict[str, Path | str] = {"trimap": out}
    if "overlay" in kinds:
        outputs["overlay"] = out.with_name(stem + SUFFIX["overlay"])
    if image == STDIO:
        return Plan([Job(STDIN_NAME, read_stdin(), outputs)])
    refuse_overwriting_input([Path(p) for p in outputs.values()], Path(image))
    return Plan([Job(image, Path(image), outputs)])


def register(app: typer.Typer) -> None:
    app.command("trimap", cls=opt.Command)(trimap)
