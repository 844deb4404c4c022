"""``ben train``: train BEN networks (``ben train base``, ``ben train refiner``).

Thin: declares options and calls :func:`ben_cli.train.base.train_base` or
:func:`ben_cli.train.refiner.train_refiner`. Every
option can also come from ``--config FILE.toml`` (keys as in ``RUN/config.toml``);
an option given on the command line wins. Imports torch only inside the command.
Under ``torchrun --nproc-per-node N -m ben_cli train base ...`` it trains with
DistributedDataParallel.

Each option is named as its configuration key, so the command passes its options on as they
are (:func:`_options`); the defaults shown in the help are read from the configuration classes.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from ben_cli.cli.options import Command, Group
from ben_cli.train.config import DEFAULT_LR, FINE_TUNE_LR, LR_BY_MODEL, TrainConfig
from ben_cli.train.refiner_config import FINE_TUNE_LR as REFINER_FINE_TUNE_LR
from ben_cli.train.refiner_config import REFINER_LR, RefinerTrainConfig

_DATA, _INIT, _OPT, _RUN = "Data", "Initialisation", "Optimisation", "Run"

train_app = typer.Typer(
    cls=Group,
    name="train",
    help="Train BEN networks on image/mask pairs (one GPU, many under torchrun, or the CPU).",
    no_args_is_help=True,
)


def _default(name: str, config: type = TrainConfig) -> Any:
    """The default of a configuration field, as the help texts show it (booleans as on/off)."""
    value = next(f.default for f in fields(config) if f.name == name)
    return ("on" if value else "off") if isinstance(value, bool) else value


def _lr(value: float) -> str:
    """A learning rate as the help shows it: ``1e-4``."""
    return f"{value:.0e}".replace("e-0", "e-")


def _options(ctx: typer.Context) -> dict[str, Any]:
    """The command's options by configuration key (``None``: not given; paths made absolute),
    without ``--config`` and ``--resume``, which say where the rest of the configuration comes from."""
    params = dict(ctx.params)
    if "no_grad_checkpoint" in params:  # two flags, one key: True, False, or None when neither was given
        on, off = params.pop("grad_checkpoint"), params.pop("no_grad_checkpoint")
        if on and off:
            from ben_cli.errors import UsageError

            raise UsageError("--grad-checkpoint and --no-grad-checkpoint exclude each other")
        params["grad_checkpoint"] = True if on else (False if off else None)
    return {key: os.path.abspath(value) if isinstance(value, Path) else value
            for key, value in params.items() if key not in ("config", "resume")}


# Options shared by every `ben train` command (declared once; each command adds its own).
DataOpt = Annotated[Path | None, typer.Option("--data", metavar="DIR", rich_help_panel=_DATA, show_default=False,
                                              help="Training pairs: DIR/im and DIR/gt with the same stems "
                                                   "(masks, or alpha mattes for the refiner; e.g. DIS5K/DIS-TR).")]
ValOpt = Annotated[Path | None, typer.Option("--val", metavar="DIR", rich_help_panel=_DATA, show_default=False,
                                             help="Validation pairs (e.g. DIS5K/DIS-VD), scored every --val-every "
                                                  "steps: ben eval's metrics for the base, the gray-band matting "
                                                  "errors (SAD, MSE, gradient) against the base alone for the "
                                                  "refiner.")]
InitOpt = Annotated[Path | None, typer.Option("--init", metavar="CK", rich_help_panel=_INIT, show_default=False,
                                              help="Start the whole network from a checkpoint of its kind "
                                                   "(fine-tuning, e.g. BEN2_Base.pth for the base).")]
ModelOpt = Annotated[str | None, typer.Option("--model", rich_help_panel=_INIT, show_default=False,
                                              help=f"Network configuration: {_default('model')} (the base's "
                                                   "default), ben-base, tiny (tests); for the refiner "
                                                   f"{_default('model', RefinerTrainConfig)} (its default) "
                                                   "or tiny.")]
LrOpt = Annotated[float | None, typer.Option("--lr", rich_help_panel=_OPT, show_default=False,
                                             help=f"Peak learning rate of AdamW (default: base {_lr(DEFAULT_LR)}, "
                                                  f"{_lr(FINE_TUNE_LR)} with --init; refiner "
                                                  f"{_lr(REFINER_LR['refiner'])}, {_lr(REFINER_FINE_TUNE_LR)} "
                                                  f"with --init; {_lr(LR_BY_MODEL['tiny'])} for tiny).")]
StrictOpt = Annotated[bool | None, typer.Option("--strict/--no-strict", rich_help_panel=_DATA, show_default=False,
                                                help="Fail on bad pairs instead of skipping them.")]
OutOpt = Annotated[Path | None, typer.Option("--out", metavar="RUN", rich_help_panel=_RUN, show_default=False,
                                             help="Run folder: log.jsonl, config.toml, loss.png, "
                                                  "best/last checkpoints.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", metavar="FILE.toml", rich_help_panel=_RUN,
                                                show_default=False,
                                                help="Options from a TOML file (command line wins).")]
ResumeOpt = Annotated[Path | None, typer.Option("--resume", metavar="RUN", rich_help_panel=_RUN, show_default=False,
                                                help="Continue a stopped run exactly where it stopped.")]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", min=1, rich_help_panel=_OPT, show_default=False,
                                                 help=f"Optimiser steps (default: {_default('max_steps')}).")]
ResolutionOpt = Annotated[int | None, typer.Option("--resolution", rich_help_panel=_DATA, show_default=False,
                                                   help="Training side, a multiple of 128 "
                                                        f"(default: {_default('resolution')}).")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", min=1, rich_help_panel=_OPT,
                                                  show_default=False,
                                                  help="Images per process and micro-step "
                                                       f"(default: {_default('batch_size')}).")]
GradAccumOpt = Annotated[int | None, typer.Option("--grad-accum", min=1, rich_help_panel=_OPT, show_default=False,
                                                  help="Micro-steps per optimiser step "
                                                       f"(default: {_default('grad_accum')}).")]
WarmupOpt = Annotated[int | None, typer.Option("--warmup-steps", min=0, rich_help_panel=_OPT, show_default=False,
                                               help="Linear warm-up steps (default: 5% of --max-steps, "
                                                    "at most 1000), then cosine decay.")]
MinLrRatioOpt = Annotated[float | None, typer.Option("--min-lr-ratio", rich_help_panel=_OPT, show_default=False,
                                                     help="Final lr / peak lr "
                                                          f"(default: {_default('min_lr_ratio')}).")]
WeightDecayOpt = Annotated[float | None, typer.Option("--weight-decay", rich_help_panel=_OPT, show_default=False,
                                                      help="AdamW weight decay "
                                                           f"(default: {_default('weight_decay')}).")]
GradClipOpt = Annotated[float | None, typer.Option("--grad-clip", rich_help_panel=_OPT, show_default=False,
                                                   help="Max gradient norm, 0 = off "
                                                        f"(default: {_default('grad_clip')}).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", rich_help_panel=_RUN, show_default=False,
                                               help="auto, cpu, cuda, cuda:N or mps "
                                                    f"(default: {_default('device')}).")]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", rich_help_panel=_RUN, show_default=False,
                                                  help="auto (bf16 on CUDA, fp32 elsewhere), fp32, fp16, bf16.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", rich_help_panel=_RUN, show_default=False,
                                             help="Seed of the initialisation, data order and augmentation "
                                                  f"(default: {_default('seed')}).")]
AugmentOpt = Annotated[bool | None, typer.Option("--augment/--no-augment", rich_help_panel=_DATA, show_default=False,
                                                 help="MVANet's flips, crops, rotations and colour jitter "
                                                      f"(default: {_default('augment')}).")]
ValEveryOpt = Annotated[int | None, typer.Option("--val-every", min=1, rich_help_panel=_RUN, show_default=False,
                                                 help="Validate (and plot) every N steps "
                                                      f"(default: {_default('val_every')}).")]
SaveEveryOpt = Annotated[int | None, typer.Option("--save-every", min=1, rich_help_panel=_RUN, show_default=False,
                                                  help="Save last.* every N steps "
                                                       f"(default: {_default('save_every')}).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=0, rich_help_panel=_DATA, show_default=False,
                                                help="Data-loading processes (0: in the main process) "
                                                     f"(default: {_default('workers')}).")]


@train_app.command("base", cls=Command)
def base(
    ctx: typer.Context,
    data: DataOpt = None,
    out: OutOpt = None,
    val: ValOpt = None,
    init: InitOpt = None,
    backbone_weights: Annotated[Path | None, typer.Option(
        "--backbone-weights", metavar="PATH", rich_help_panel=_INIT, show_default=False,
        help="Swin weights (timm-format state dict) for offline starts. Default: timm's ImageNet "
             "Swin-B that MVANet starts from, downloaded.")] = None,
    random_init: Annotated[bool | None, typer.Option(
        "--random-init", rich_help_panel=_INIT, show_default=False,
        help="Train the full model from random weights (without it, a start with no pretrained weights "
             "within reach is refused).")] = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    resume: ResumeOpt = None,
    max_steps: MaxStepsOpt = None,
    resolution: ResolutionOpt = None,
    batch_size: BatchSizeOpt = None,
    grad_accum: GradAccumOpt = None,
    lr: LrOpt = None,
    warmup_steps: WarmupOpt = None,
    min_lr_ratio: MinLrRatioOpt = None,
    weight_decay: WeightDecayOpt = None,
    grad_clip: GradClipOpt = None,
    grad_checkpoint: Annotated[bool, typer.Option("--grad-checkpoint", rich_help_panel=_OPT, show_default=False,
                                                  help="Recompute the Swin stages in the backward pass "
                                                       "(less memory, slower).")] = False,
    no_grad_checkpoint: Annotated[bool, typer.Option("--no-grad-checkpoint", rich_help_panel=_OPT,
                                                     show_default=False,
                                                     help="Keep the Swin activations (undoes a config file's "
                                                          "grad_checkpoint).")] = False,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    seed: SeedOpt = None,
    strict: StrictOpt = None,
    augment: AugmentOpt = None,
    val_every: ValEveryOpt = None,
    save_every: SaveEveryOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Train BEN Base with the paper's loss (section 3.2) on DIR/im + DIR/gt pairs."""
    from ben_cli.train.base import train_base
    from ben_cli.train.config import resolve_config

    cfg = resolve_config(_options(ctx), config_file=config, resume=resume)
    train_base(cfg, resume=resume is not None)


@train_app.command("refiner", cls=Command)
def refiner(
    ctx: typer.Context,
    data: DataOpt = None,
    base_weights: Annotated[Path | None, typer.Option(
        "--base-weights", metavar="CK", rich_help_panel=_INIT, show_default=False,
        help="The frozen BEN Base whose predictions are refined (a file or folder; default: BEN2_Base.pth, "
             "searched like ben erase's weights).")] = None,
    out: OutOpt = None,
    val: ValOpt = None,
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
                                                         "larger than --resolution (default: "
                                                         f"{_default('zoom_prob', RefinerTrainConfig)}).")] = None,
    init: InitOpt = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    resume: ResumeOpt = None,
    max_steps: MaxStepsOpt = None,
    resolution: ResolutionOpt = None,
    batch_size: BatchSizeOpt = None,
    grad_accum: GradAccumOpt = None,
    lr: LrOpt = None,
    warmup_steps: WarmupOpt = None,
    min_lr_ratio: MinLrRatioOpt = None,
    weight_decay: WeightDecayOpt = None,
    grad_clip: GradClipOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    seed: SeedOpt = None,
    strict: StrictOpt = None,
    augment: AugmentOpt = None,
    val_every: ValEveryOpt = None,
    save_every: SaveEveryOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Train the refiner network on a frozen BEN Base: base probability -> confidence trimap -> refiner."""
    from ben_cli.train.refiner import resolve_refiner_config, train_refiner

    cfg = resolve_refiner_config(_options(ctx), config_file=config, resume=resume)
    train_refiner(cfg, resume=resume is not None)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
