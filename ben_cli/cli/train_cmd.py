"""``ben train``: train BEN networks (``ben train base``, ``ben train refiner``).

Thin: declares options and calls :func:`ben_cli.train.base.train_base` or
:func:`ben_cli.train.refiner.train_refiner`. Every
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


# Options shared by every `ben train` command (declared once; each command adds its own).
OutOpt = Annotated[Path | None, typer.Option("--out", metavar="RUN", rich_help_panel=_RUN, show_default=False,
                                             help="Run folder: log.jsonl, config.toml, loss.png, "
                                                  "best/last checkpoints.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", metavar="FILE.toml", rich_help_panel=_RUN,
                                                show_default=False,
                                                help="Options from a TOML file (command line wins).")]
ResumeOpt = Annotated[Path | None, typer.Option("--resume", metavar="RUN", rich_help_panel=_RUN, show_default=False,
                                                help="Continue a stopped run exactly where it stopped.")]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", min=1, rich_help_panel=_OPT, show_default=False,
                                                 help="Optimiser steps (default: 100000).")]
ResolutionOpt = Annotated[int | None, typer.Option("--resolution", rich_help_panel=_DATA, show_default=False,
                                                   help="Training side, a multiple of 128 (default: 1024).")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", min=1, rich_help_panel=_OPT,
                                                  show_default=False,
                                                  help="Images per process and micro-step (default: 1).")]
GradAccumOpt = Annotated[int | None, typer.Option("--grad-accum", min=1, rich_help_panel=_OPT, show_default=False,
                                                  help="Micro-steps per optimiser step (default: 1).")]
WarmupOpt = Annotated[int | None, typer.Option("--warmup-steps", min=0, rich_help_panel=_OPT, show_default=False,
                                               help="Linear warm-up steps (default: 5% of --max-steps, "
                                                    "at most 1000), then cosine decay.")]
MinLrRatioOpt = Annotated[float | None, typer.Option("--min-lr-ratio", rich_help_panel=_OPT, show_default=False,
                                                     help="Final lr / peak lr (default: 0.01).")]
WeightDecayOpt = Annotated[float | None, typer.Option("--weight-decay", rich_help_panel=_OPT, show_default=False,
                                                      help="AdamW weight decay (default: 0.01).")]
GradClipOpt = Annotated[float | None, typer.Option("--grad-clip", rich_help_panel=_OPT, show_default=False,
                                                   help="Max gradient norm, 0 = off (default: 1.0).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", rich_help_panel=_RUN, show_default=False,
                                               help="auto, cpu, cuda, cuda:N or mps (default: auto).")]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", rich_help_panel=_RUN, show_default=False,
                                                  help="auto (bf16 on CUDA, fp32 elsewhere), fp32, fp16, bf16.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", rich_help_panel=_RUN, show_default=False,
                                             help="Seed of the initialisation, data order and augmentation "
                                                  "(default: 0).")]
AugmentOpt = Annotated[bool | None, typer.Option("--augment/--no-augment", rich_help_panel=_DATA, show_default=False,
                                                 help="MVANet's flips, crops, rotations and colour jitter "
                                                      "(default: on).")]
ValEveryOpt = Annotated[int | None, typer.Option("--val-every", min=1, rich_help_panel=_RUN, show_default=False,
                                                 help="Validate (and plot) every N steps (default: 1000).")]
SaveEveryOpt = Annotated[int | None, typer.Option("--save-every", min=1, rich_help_panel=_RUN, show_default=False,
                                                  help="Save last.* every N steps (default: 500).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=0, rich_help_panel=_DATA, show_default=False,
                                                help="Data-loading processes (0: in the main process) "
                                                     "(default: 4).")]


@train_app.command("base")
def base(
    data: Annotated[Path | None, typer.Option("--data", metavar="DIR", rich_help_panel=_DATA, show_default=False,
                                              help="Training pairs: DIR/im and DIR/gt with the same stems "
                                                   "(e.g. DIS5K/DIS-TR).")] = None,
    out: OutOpt = None,
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
    config: ConfigOpt = None,
    resume: ResumeOpt = None,
    max_steps: MaxStepsOpt = None,
    resolution: ResolutionOpt = None,
    batch_size: BatchSizeOpt = None,
    grad_accum: GradAccumOpt = None,
    lr: Annotated[float | None, typer.Option("--lr", rich_help_panel=_OPT, show_default=False,
                                             help="Peak learning rate of AdamW (default: 1e-4; 1e-5 with --init; "
                                                  "1e-3 for tiny).")] = None,
    warmup_steps: WarmupOpt = None,
    min_lr_ratio: MinLrRatioOpt = None,
    weight_decay: WeightDecayOpt = None,
    grad_clip: GradClipOpt = None,
    grad_checkpoint: Annotated[bool | None, typer.Option("--grad-checkpoint/--no-grad-checkpoint",
                                                         rich_help_panel=_OPT, show_default=False,
                                                         help="Recompute the Swin stages in the backward pass "
                                                              "(less memory, slower).")] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    seed: SeedOpt = None,
    strict: Annotated[bool | None, typer.Option("--strict/--no-strict", rich_help_panel=_DATA, show_default=False,
                                                help="Fail on bad pairs (and on missing pretrained weights) "
                                                     "instead of skipping.")] = None,
    augment: AugmentOpt = None,
    val_every: ValEveryOpt = None,
    save_every: SaveEveryOpt = None,
    workers: WorkersOpt = None,
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


@train_app.command("refiner")
def refiner(
    data: Annotated[Path | None, typer.Option("--data", metavar="DIR", rich_help_panel=_DATA, show_default=False,
                                              help="Training pairs: DIR/im and DIR/gt (alpha mattes or masks) "
                                                   "with the same stems.")] = None,
    base_weights: Annotated[Path | None, typer.Option(
        "--base-weights", metavar="CK", rich_help_panel=_INIT, show_default=False,
        help="The frozen BEN Base whose predictions are refined (a file or folder; default: BEN2_Base.pth, "
             "searched like ben erase's weights).")] = None,
    out: OutOpt = None,
    val: Annotated[Path | None, typer.Option("--val", metavar="DIR", rich_help_panel=_DATA, show_default=False,
                                             help="Validation pairs, scored every --val-every steps with the "
                                                  "gray-band matting errors (SAD, MSE, gradient) against "
                                                  "the base alone.")] = None,
    predictions: Annotated[str | None, typer.Option(
        "--predictions", metavar="NAME", rich_help_panel=_INIT, show_default=False,
        help="Instead of a base: the folder NAME beside im/ and gt/ (in --data and --val) holds the base's "
             "probability maps with the same stems (gray images, cutouts or .npy), from any segmenter.")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", metavar="DIR", rich_help_panel=_DATA, show_default=False,
                                               help="Where the base predictions are cached (share it between "
                                                    "runs; default: RUN/cache).")] = None,
    zoom_prob: Annotated[float | None, typer.Option("--zoom-prob", min=0.0, max=1.0, rich_help_panel=_DATA,
                                                    show_default=False,
                                                    help="Share of samples cut at the image's own resolution "
                                                         "around the gray band, as ben erase refines images "
                                                         "larger than --resolution (default: 0.5).")] = None,
    init: Annotated[Path | None, typer.Option("--init", metavar="CK", rich_help_panel=_INIT, show_default=False,
                                              help="Start from a refiner checkpoint (fine-tuning).")] = None,
    model: Annotated[str | None, typer.Option("--model", rich_help_panel=_INIT, show_default=False,
                                              help="Refiner configuration: refiner (default), tiny (tests).")] = None,
    config: ConfigOpt = None,
    resume: ResumeOpt = None,
    max_steps: MaxStepsOpt = None,
    resolution: ResolutionOpt = None,
    batch_size: BatchSizeOpt = None,
    grad_accum: GradAccumOpt = None,
    lr: Annotated[float | None, typer.Option("--lr", rich_help_panel=_OPT, show_default=False,
                                             help="Peak learning rate of AdamW (default: 5e-4; 1e-4 with --init; "
                                                  "1e-3 for tiny).")] = None,
    warmup_steps: WarmupOpt = None,
    min_lr_ratio: MinLrRatioOpt = None,
    weight_decay: WeightDecayOpt = None,
    grad_clip: GradClipOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    seed: SeedOpt = None,
    strict: Annotated[bool | None, typer.Option("--strict/--no-strict", rich_help_panel=_DATA, show_default=False,
                                                help="Fail on bad pairs instead of skipping them.")] = None,
    augment: AugmentOpt = None,
    val_every: ValEveryOpt = None,
    save_every: SaveEveryOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Train the refiner network on a frozen BEN Base: base probability -> confidence trimap -> refiner."""
    from ben_cli.train.refiner import resolve_refiner_config, train_refiner

    options: dict[str, Any] = {
        "data": _path(data), "base_weights": _path(base_weights), "out": _path(out), "val": _path(val),
        "predictions": predictions, "cache": _path(cache), "zoom_prob": zoom_prob, "init": _path(init),
        "model": model, "max_steps": max_steps,
        "resolution": resolution, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr,
        "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio, "weight_decay": weight_decay,
        "grad_clip": grad_clip, "device": device, "precision": precision, "seed": seed, "strict": strict,
        "augment": augment, "val_every": val_every, "save_every": save_every, "workers": workers,
    }
    cfg = resolve_refiner_config(options, config_file=config, resume=resume)
    train_refiner(cfg, resume=resume is not None)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
