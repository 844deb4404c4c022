"""``ben weights``: list what is found, download the official files, convert .pth to .safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

weights_app = typer.Typer(help="Find, download and convert checkpoints.", no_args_is_help=False,
                          invoke_without_command=True)

ModelName = Annotated[str, typer.Option("--model", "-m", help="ben2-base (BEN2_Base.pth) or ben-base (BEN_Base.pth).")]


@weights_app.callback()
def weights_main(ctx: typer.Context) -> None:
    """List where checkpoints are searched, in order, and which one would be used."""
    if ctx.invoked_subcommand is None:
        list_weights()


@weights_app.command("list")
def list_weights(model: ModelName = "ben2-base") -> None:
    """Where checkpoints are searched (in order) and which one would be used."""
    from rich.console import Console
    from rich.table import Table

    from ben_cli.checkpoints.weights import find_weights, search_locations
    from ben_cli.errors import WeightsNotFoundError
    from ben_cli.models.registry import get_entry

    entry = get_entry(_check_model(model))
    table = Table(title=f"{model}: {entry.filename} (from {entry.repo_id})")
    table.add_column("order")
    table.add_column("where")
    table.add_column("path")
    table.add_column("found")
    for i, (where, path) in enumerate(search_locations(model), 1):
        table.add_row(str(i), where, str(path), "yes" if path.is_file() else "")
    console = Console(stderr=True)
    console.print(table)
    try:
        chosen = find_weights(model=model, download=False)
        print(chosen)
    except WeightsNotFoundError as e:
        console.print(f"none found ({e}); `ben weights download` fetches it", markup=False)


@weights_app.command("download")
def download(model: ModelName = "ben2-base") -> None:
    """Download the official checkpoint into the cache (prints its path)."""
    from ben_cli.checkpoints.weights import download_weights

    print(download_weights(_check_model(model)))


@weights_app.command("convert")
def convert(
    src: Annotated[Path, typer.Argument(help="Checkpoint to convert (.pth, official or ours).")],
    dst: Annotated[Path | None, typer.Argument(help="Output .safetensors (default: beside SRC).",
                                               show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Config for files without one "
                                              "(default ben2-base).")] = None,
    official_keys: Annotated[bool, typer.Option("--official-keys", help="Keep the official key names.")] = False,
) -> None:
    """Convert a checkpoint to .safetensors (verified strictly against the model first)."""
    from ben_cli.checkpoints.load import build_from_checkpoint, read_checkpoint, save_checkpoint
    from ben_cli.errors import UsageError

    dst = dst or src.with_suffix(".safetensors")
    if dst.suffix != ".safetensors":
        raise UsageError(f"DST must end in .safetensors: {dst}")
    if dst.resolve() == src.resolve():
        raise UsageError(f"DST is SRC ({src}); name another .safetensors file")
    net = build_from_checkpoint(read_checkpoint(src), model and _check_model(model), str(src))
    print(save_checkpoint(net, dst, official_keys=official_keys))


def _check_model(name: str) -> str:
    """``name`` when the registry knows it, else a usage error listing the known names."""
    from ben_cli.errors import UsageError
    from ben_cli.models.registry import MODELS

    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return name


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
