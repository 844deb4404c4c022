"""``ben trimap IMAGE [OUTPUT]``: the confidence trimap (and an overlay picture) of one image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ben_cli.cli import options as opt
from ben_cli.errors import UsageError


def trimap(
    image: Annotated[str, typer.Argument(help="Image file, or - for stdin.")],
    output: Annotated[str | None, typer.Argument(help="Output PNG (default <stem>.trimap.png beside the "
                                                      "image), or - for stdout.", show_default=False)] = None,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write <stem>.overlay.png: the image with "
                                          "the gray band tinted, where the refiner will work.")] = False,
    weights: opt.Weights = None,
    resolution: opt.Resolution = 1024,
    device: opt.Device = "auto",
    precision: opt.Precision = "auto",
) -> None:
    """Run BEN Base and write the confidence trimap (0 background, 128 unknown, 255 foreground)."""
    import torch

    from ben_cli.errors import InputError
    from ben_cli.io import encode_png, read_image, read_stdin_bytes, write_png, write_stdout_bytes
    from ben_cli.pipeline import Eraser, check_resolution
    from ben_cli.trimap import trimap_overlay

    check_resolution(resolution)
    if image == "-":
        if output is None:
            raise UsageError("with IMAGE '-' give OUTPUT (a .png path or -)")
        source: str | bytes = read_stdin_bytes()
        stem_base = Path("stdin.png")
    else:
        source = image
        stem_base = Path(image)
    if output is None:
        out: Path | None = stem_base.with_name(f"{stem_base.stem}.trimap.png")
    elif output == "-":
        out = None
        if overlay:
            raise UsageError("--overlay cannot be combined with OUTPUT '-'")
    else:
        out = Path(output)
        if out.suffix.lower() != ".png":
            raise UsageError(f"OUTPUT must be a .png file: {out}")
    overlay_out = None
    if overlay and out is not None:
        stem = out.name[: -len(".trimap.png")] if out.name.endswith(".trimap.png") else out.stem
        overlay_out = out.with_name(f"{stem}.overlay.png")
    if image != "-":
        _check_input(Path(image), [p for p in (out, overlay_out) if p is not None])
    try:
        loaded = read_image(source, name="<stdin>" if image == "-" else None)
    except InputError as e:
        opt.print_error(str(e))
        raise typer.Exit(1) from None
    eraser = Eraser.from_options(weights, device=device, precision=precision, resolution=resolution)
    tri = eraser.predict([loaded.rgb], want_trimap=True)[0].trimap
    if out is None:
        write_stdout_bytes(encode_png(tri))
        return
    write_png(out, tri)
    if overlay_out is not None:
        rgb = torch.from_numpy(loaded.rgb).permute(2, 0, 1)[None]
        pic = trimap_overlay(rgb, torch.from_numpy(tri)[None, None])[0].permute(1, 2, 0).contiguous().numpy()
        write_png(overlay_out, pic)


def _check_input(image: Path, outputs: list[Path]) -> None:
    """A missing IMAGE is a usage error (as for ``ben erase``); no output may replace it."""
    from ben_cli.io import refuse_overwriting_input

    if not image.exists():
        raise UsageError(f"input not found: {image}")
    refuse_overwriting_input(outputs, image)


def register(app: typer.Typer) -> None:
    app.command("trimap")(trimap)
