"""``ben weights``: where each model's checkpoint is found, downloads, and conversion to .safetensors."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ben_cli.cli.options import Command, Group, ModelName
from ben_cli.models.registry import DEFAULT_MODEL

weights_app = typer.Typer(cls=Group, help="Find, download and convert checkpoints.", no_args_is_help=False,
                          invoke_without_command=True)

OneModel = Annotated[
    ModelName | None,
    typer.Option("--model", "-m", help="Only this model (default: every model).", show_default=False),
]
DownloadModel = Annotated[ModelName, typer.Option("--model", "-m", help="The model whose official file to fetch.")]


@weights_app.callback()
def weights_main(ctx: typer.Context, model: OneModel = None) -> None:
    """List, for each model, its file, where it is searched and which file would be used."""
    if ctx.invoked_subcommand is None:
        list_weights(model=model)
    elif model is not None:
        from ben_cli.errors import UsageError

        raise UsageError(f"--model goes after the subcommand: ben weights {ctx.invoked_subcommand} -m {model.value}")


@weights_app.command("list", cls=Command)
def list_weights(model: OneModel = None) -> None:
    """For each model: its official file, the search locations in order, and the file that would be used.

    The locations go to stderr. stdout: with --model, the path that would be used;
    otherwise one `MODEL<TAB>PATH` line per model found. Exit 0 when the model
    (with --model) or at least one model is found, 1 when none is. Never downloads.
    """
    from ben_cli.checkpoints.weights import find_weights, search_locations
    from ben_cli.errors import WeightsNotFoundError
    from ben_cli.models.registry import MODELS

    names = [model.value] if model is not None else list(MODELS)
    found: dict[str, Path] = {}
    lines: list[str] = []
    for name in names:
        entry = MODELS[name]
        problem = ""
        try:
            found[name] = find_weights(model=name, download=False)
        except WeightsNotFoundError as e:
            problem = str(e)
        used = found.get(name)
        lines.append(f"{name}: {entry.filename} (from {entry.repo_id})" if entry.filename
                     else f"{name}: no official file")
        for i, (where, path) in enumerate(search_locations(name), 1):
            inside = used is not None and path.is_dir() and used.parent == path  # $BEN_WEIGHTS is a folder
            mark = "found" if path.is_file() else (f"found {used.name}" if inside else "")
            if used == path or inside:
                mark += ", used"
            lines.append(f"  {i}. {where:<13} {path}" + (f"  <- {mark}" if mark else ""))
        if used is not None:
            lines.append(f"  uses {used}")
        elif os.environ.get("BEN_WEIGHTS"):
            lines.append(f"  none found: {problem}")
        elif not entry.filename:
            lines.append("  none found; pass --weights PATH (or set $BEN_WEIGHTS)")
        else:
            lines.append(f"  none found; `ben weights download -m {name}` fetches {entry.filename}")
    print("\n".join(lines), file=sys.stderr)
    for name, path in found.items():
        print(path if model is not None else f"{name}\t{path}")
    if not found:
        raise typer.Exit(1)


@weights_app.command("download", cls=Command)
def download(model: DownloadModel = ModelName(DEFAULT_MODEL)) -> None:
    """Download a model's official checkpoint into the cache (prints its path)."""
    from ben_cli.checkpoints.weights import download_weights

    print(download_weights(model.value))


@weights_app.command("convert", cls=Command)
def convert(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="Checkpoint to convert (official .pth, ours, any arch).")],
    dst: Annotated[Path | None, typer.Argument(metavar="DST", help="Output .safetensors (default: beside SRC).",
                                               show_default=False)] = None,
    model: Annotated[ModelName | None, typer.Option("--model", "-m", help="Config for files that store none "
                                                    "(official files; default ben2-base).", show_default=False)] = None,
    official_keys: Annotated[bool, typer.Option("--official-keys", help="Keep the official key names.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace DST if it exists.")] = False,
) -> None:
    """Convert a checkpoint to .safetensors, keeping its arch, config and metadata.

    The weights are loaded strictly into their network first, so a file that
    does not fit its config is reported instead of converted.
    """
    from ben_cli.checkpoints.load import build_from_checkpoint, read_checkpoint, save_checkpoint, storable_metadata
    from ben_cli.errors import UsageError

    dst = dst or src.with_suffix(".safetensors")
    if dst.suffix != ".safetensors":
        raise UsageError(f"DST must end in .safetensors: {dst}")
    if dst.resolve() == src.resolve():
        raise UsageError(f"DST is SRC ({src}); name another .safetensors file")
    if dst.is_dir():
        raise UsageError(f"DST is a folder: {dst}; name a .safetensors file")
    if dst.exists() and not overwrite:
        raise UsageError(f"{dst} exists; pass --overwrite to replace it")
    ckpt = read_checkpoint(src)
    if official_keys and ckpt.arch != "base":
        raise UsageError(f"--official-keys: the official layout exists only for arch 'base', not {ckpt.arch!r}")
    net = build_from_checkpoint(ckpt, model.value if model is not None else None, str(src))
    metadata, dropped = storable_metadata(ckpt.metadata, ".safetensors")
    if dropped:
        print(f"ben: warning: metadata not kept (.safetensors stores JSON only): {', '.join(dropped)}",
              file=sys.stderr)
    print(save_checkpoint(net, dst, official_keys=official_keys, metadata=metadata))


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
