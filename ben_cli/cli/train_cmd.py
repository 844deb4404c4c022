"""``ben train``: train BEN networks (``ben train base``; ``refiner`` joins later).

Thin: declares options and calls :func:`ben_cli.train.base.train_base`. Every
option can also come from ``--config FILE.toml`` (keys as in ``RUN/config.toml``);
an option given on the command line wins. Imports torch only inside the command.
Under ``torchrun --nproc-per-node N -m ben_cli train base ...`` it trains with
DistributedDataParallel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

_DATA, _INIT, _OPT, _RUN = "Data", "Initialisation", "Optimisation", "Run"

train_app = typer.Typer(
    name="train",
    help="Train BEN networks on image/mask pairs (one GPU, many under torchrun, or the CPU).",
    no_args_is_help=True,
)


def _path(p: Path | None) -> str | None:
    return None if p is None else os.path.abspath(p)


@train_app.command("base")
def base(
    data: Annotated[Path | None, typer.Option("--data", metavar="DIR", rich_help_panel=_DATA, show_default=False,
                                              help="Training pairs: DIR/im and DIR/gt with the same stems "
                                                   "(e.g. DIS5K/DIS-TR).")] = None,
    out: Annotated[Path | None, typer.Option("--out", metavar="RUN", rich_help_panel=_RUN, show_default=False,
                                             help="Run folder: log.jsonl, config.toml, loss.png, "
                                                  "best/last checkpoints.")] = None,
    val: Annotated[Path | None, typer.Option("--val", metavar="DIR", rich_help_panel=_DATA, show_default=False,
                                             help="Validation pairs (e.g. DIS5K/DIS-VD), scored with ben eval's "
                                                  "metrics every --val-every steps.")] = None,
    init: Annotated[Path | None, typer.Option("--init", metavar="CK", rich_help_panel=_INIT, show_default=False,
                                              help="Start the whole network from a checkpoint (fine-tuning, "
                                                   "e.g. BEN2_Base.pth).")] = None,
    backbone_weights: Annotated[Path | None, typer.Option(
        "--backbone-weights", metavar="PATH", rich_help_panel=_INIT, show_default=False,
        help="Swin weights (timm-format state dict) for offline starts. Default: timm's ImageNet "
             "Swin-B that MVANet starts from, downloaded.")] = None,
    model: Annotated[str | None, typer.Option("--model", rich_help_panel=_INIT, show_default=False,
                                              help="Network configuration: ben2-base (default), ben-base, "
                                                   "tiny (tests).")] = None,
    config: Annotated[Path | None, typer.Option("--config", metavar="FILE.toml", rich_help_panel=_RUN,
                                                show_default=False,
                                                help="Options from a TOML file (command line wins).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", metavar="RUN", rich_help_panel=_RUN, show_default=False,
                                                help="Continue a stopped run exactly where it stopped.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, rich_help_panel=_OPT, show_default=False,
                                                  help="Optimiser steps (default: 100000).")] = None,
    resolution: Annotated[int | None, typer.Option("--resolution", rich_help_panel=_DATA, show_default=False,
                                                   help="Training side, a multiple of 128 (default: 1024).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", min=1, rich_help_panel=_OPT,
                                                   show_default=False,
                                                   help="Images per process and micro-step (default: 1).")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", min=1, rich_help_panel=_OPT, show_default=False,
                                                   help="Micro-steps per optimiser step (default: 1).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", rich_help_panel=_OPT, show_default=False,
                                             help="Peak learning rate of AdamW (default: 1e-4; 1e-5 with --init; "
                                                  "1e-3 for tiny).")] = None,
    warmup_steps: Annotated[int | None, typer.Option("--warmup-steps", min=0, rich_help_panel=_OPT,
                                                     show_default=False,
                                                     help="Linear warm-up steps (default: 5% of --max-steps, "
                                                          "at most 1000), then cosine decay.")] = None,
    min_lr_ratio: Annotated[float | None, typer.Option("--min-lr-ratio", rich_help_panel=_OPT, show_default=False,
                                                       help="Final lr / peak lr (default: 0.01).")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", rich_help_panel=_OPT, show_default=False,
                                                       help="AdamW weight decay (default: 0.01).")] = None,
    grad_clip: Annotated[float | None, typer.Option("--grad-clip", rich_help_panel=_OPT, show_default=False,
                                                    help="Max gradient norm, 0 = off (default: 1.0).")] = None,
    grad_checkpoint: Annotated[bool | None, typer.Option("--grad-checkpoint/--no-grad-checkpoint",
                                                         rich_help_panel=_OPT, show_default=False,
                                                         help="Recompute the Swin stages in the backward pass "
                                                              "(less memory, slower).")] = None,
    device: Annotated[str | None, typer.Option("--device", rich_help_panel=_RUN, show_default=False,
                                               help="auto, cpu, cuda, cuda:N or mps (default: auto).")] = None,
    precision: Annotated[str | None, typer.Option("--precision", rich_help_panel=_RUN, show_default=False,
                                                  help="auto (bf16 on CUDA, fp32 elsewhere), fp32, fp16, "
                                                       "bf16.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", rich_help_panel=_RUN, show_default=False,
                                             help="Seed of the initialisation, data order and augmentation "
                                                  "(default: 0).")] = None,
    strict: Annotated[bool | None, typer.Option("--strict/--no-strict", rich_help_panel=_DATA, show_default=False,
                                                help="Fail on bad pairs (and on missing pretrained weights) "
                                                     "instead of skipping.")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", rich_help_panel=_DATA,
                                                 show_default=False,
                                                 help="MVANet's flips, crops, rotations and colour jitter "
                                                      "(default: on).")] = None,
    val_every: Annotated[int | None, typer.Option("--val-every", min=1, rich_help_panel=_RUN, show_default=False,
                                                  help="Validate (and plot) every N steps (default: 1000).")] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", min=1, rich_help_panel=_RUN, show_default=False,
                                                   help="Save last.* every N steps (default: 500).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, rich_help_panel=_DATA, show_default=False,
                                                help="Data-loading processes (0: in the main process) "
                                                     "(default: 4).")] = None,
) -> None:
    """Train BEN Base with the paper's loss (section 3.2) on DIR/im + DIR/gt pairs."""
    from ben_cli.train.base import train_base
    from ben_cli.train.config import resolve_config

    options: dict[str, Any] = {
        "data": _path(data), "out": _path(out), "val": _path(val), "init": _path(init),
        "backbone_weights": _path(backbone_weights), "model": model, "max_steps": max_steps,
        "resolution": resolution, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr,
        "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio, "weight_decay": weight_decay,
        "grad_clip": grad_clip, "grad_checkpoint": grad_checkpoint, "device": device, "precision": precision,
        "seed": seed, "strict": strict, "augment": augment, "val_every": val_every, "save_every": save_every,
        "workers": workers,
    }
    cfg = resolve_config(options, config_file=config, resume=resume)
    train_base(cfg, resume=resume is not None)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
