"""Training configuration: frozen dataclasses, TOML loading and saving, the lr schedule.

Precedence when a run starts: the defaults below < ``RUN/config.toml`` of a run
being resumed < ``--config FILE.toml`` < options given on the command line.
The resolved configuration is written to ``RUN/config.toml`` and stored in every
checkpoint's metadata.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ben_cli.errors import OptionError, UsageError

# The file MVANet loads (swin_base_patch4_window12_384_22kto1k.pth): ImageNet-22k, fine-tuned on 1k.
SWIN_B_PRETRAINED = "swin_base_patch4_window12_384.ms_in22k_ft_in1k"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the paper's loss (section 3.2, Eq. 1 and 5).

    ``token_sigmoid_quirk``: MVANet squashes its token maps with a sigmoid inside
    the model and then feeds them to the with-logits loss (a double sigmoid). Off
    by default: the token maps are treated as logits, as Eq. 4 is written (see
    :mod:`ben_cli.train.loss`). On reproduces MVANet's training code.
    """

    bce: float = 4.0
    iou: float = 1.0
    ssim: float = 2.0
    local: float = 1.0
    glob: float = 0.3
    token: float = 0.3
    token_sigmoid_quirk: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; every field is also a key of ``config.toml``.

    Paths are strings (TOML has no path type); ``None`` means unset and is left out
    of the TOML file. ``lr=None`` resolves to :func:`default_lr`; ``warmup_steps=None``
    to 5% of ``max_steps`` (at most 1000); :meth:`resolved` fills both in.
    """

    model: str = "ben2-base"  # registry name (ben2-base, ben-base, tiny)
    data: str | None = None  # folder with im/ and gt/ (e.g. DIS5K/DIS-TR)
    val: str | None = None  # folder with im/ and gt/ (e.g. DIS5K/DIS-VD)
    out: str | None = None  # the run folder
    init: str | None = None  # whole-network checkpoint to fine-tune (e.g. BEN2_Base.pth)
    backbone_weights: str | None = None  # timm-format Swin state dict, offline
    pretrained_backbone: str = SWIN_B_PRETRAINED  # timm weights tried online when neither of the above; "" = none
    random_init: bool = False  # the Swin-B model from random weights: without it, unreachable pretrained ones stop
    resolution: int = 1024
    batch_size: int = 1  # per process and micro-step
    grad_accum: int = 1
    max_steps: int = 100_000  # optimiser steps
    lr: float | None = None  # None: the model's default, see default_lr()
    min_lr_ratio: float = 0.01  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int | None = None
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    grad_checkpoint: bool = False  # checkpoint the Swin stages (less memory, ~30% slower)
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA (fp16 without bf16 support), fp32 elsewhere
    seed: int = 0
    strict: bool = False  # fail on bad pairs instead of skipping them
    augment: bool = True
    val_every: int = 1000
    save_every: int = 500
    best_metric: str = "max_f"
    workers: int = 4  # DataLoader worker processes (and validation scoring processes)
    loss: LossConfig = field(default_factory=LossConfig)

    @property
    def images_per_step(self) -> int:
        """Images per optimiser step and process."""
        return self.batch_size * self.grad_accum

    def resolved(self) -> TrainConfig:
        """Validated copy with ``warmup_steps`` filled in; UsageError names the bad key."""
        warmup = self.warmup_steps if self.warmup_steps is not None else min(1000, self.max_steps // 20)
        lr = self.lr if self.lr is not None else default_lr(self.model, fine_tune=bool(self.init))
        cfg = replace(self, warmup_steps=warmup, lr=lr)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Range checks (no torch, no file access): the model, :func:`check_shared`, the
        initialisation and the metric; OptionError names the bad key."""
        from ben_cli.eval.metrics import HIGHER_IS_BETTER
        from ben_cli.models.registry import MODELS

        if self.model not in MODELS:
            raise OptionError("model", f"unknown model {self.model!r}; known: {', '.join(MODELS)}")
        check_shared(self)
        if self.init and self.backbone_weights:
            raise OptionError("init", "{flag} and the backbone weights exclude each other (init sets the whole "
                                      "network)")
        if self.random_init and (self.init or self.backbone_weights):
            raise OptionError("random_init", "{flag} excludes {opt:init} and {opt:backbone_weights}")
        if self.best_metric not in HIGHER_IS_BETTER:
            raise OptionError("best_metric",
                              f"unknown metric {self.best_metric!r}; known: {', '.join(HIGHER_IS_BETTER)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists), for TOML and checkpoint metadata."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys and wrong types are a UsageError naming ``source``."""
        d = dict(d)
        loss = _typed(LossConfig, d.pop("loss", {}) or {}, f"{source} [loss]")
        return cls(loss=LossConfig(**loss), **_typed(cls, d, source))

    def updated(self, overrides: dict[str, Any], source: str = "options") -> TrainConfig:
        """A copy with ``overrides`` applied (``loss`` may be a partial dict)."""
        merged = self.to_dict()
        for key, value in overrides.items():
            if key == "loss" and isinstance(value, dict):
                merged["loss"] = {**merged["loss"], **value}
            else:
                merged[key] = value
        return TrainConfig.from_dict(merged, source)


def check_shared(cfg: TrainConfig) -> None:
    """The range checks every trainer's configuration shares (resolution, counts, schedule,
    optimiser, precision); OptionError names the bad key. No torch, no file access."""
    if cfg.resolution < 256 or cfg.resolution % 128:
        raise OptionError("resolution", f"must be a multiple of 128 and at least 256, got {cfg.resolution}")
    for key in ("batch_size", "grad_accum", "max_steps", "val_every", "save_every"):
        if getattr(cfg, key) < 1:
            raise OptionError(key, f"must be at least 1, got {getattr(cfg, key)}")
    if cfg.workers < 0:
        raise OptionError("workers", f"must be at least 0, got {cfg.workers}")
    if cfg.lr is not None and not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise OptionError("lr", f"must be a positive number, got {cfg.lr}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise OptionError("min_lr_ratio", f"must be in [0, 1], got {cfg.min_lr_ratio}")
    if cfg.warmup_steps is not None and cfg.warmup_steps < 0:
        raise OptionError("warmup_steps", f"must be at least 0, got {cfg.warmup_steps}")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0:
        raise OptionError("weight_decay" if cfg.weight_decay < 0 else "grad_clip", "must not be negative")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise OptionError("betas", f"must be two numbers in [0, 1), got {cfg.betas}")
    if cfg.precision not in PRECISIONS:
        raise OptionError("precision", f"unknown precision {cfg.precision!r} (use {', '.join(PRECISIONS)})")


LR_BY_MODEL: dict[str, float] = {"tiny": 1e-3}
"""Peak learning rates of models that differ from the default (the tiny test network trains from scratch)."""
DEFAULT_LR, FINE_TUNE_LR = 1e-4, 1e-5


def default_lr(model: str, *, fine_tune: bool = False) -> float:
    """The peak learning rate used when none is given.

    1e-4 for BEN Base from a pretrained backbone (BiRefNet's AdamW rate on DIS5K),
    1e-5 when fine-tuning a whole trained network (``--init``; MVANet's rate),
    1e-3 for the tiny test network.
    """
    if fine_tune:
        return FINE_TUNE_LR
    return LR_BY_MODEL.get(model, DEFAULT_LR)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine.

    Warm-up: ``lr * (step + 1) / warmup`` for ``step < warmup``; then a half cosine
    from ``lr`` at ``step = warmup`` down to ``lr * min_lr_ratio`` at ``step = max_steps``.
    Pure: the schedule has no state beyond the step.
    """
    peak = cfg.lr if cfg.lr is not None else default_lr(cfg.model, fine_tune=bool(cfg.init))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(1000, cfg.max_steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, cfg.max_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = peak * cfg.min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- TOML


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file into a dict; UsageError for a missing or malformed file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise OptionError("config", "reading {flag} needs Python 3.11+ or the 'tomli' package") from None
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except (OSError, ValueError) as e:  # TOMLDecodeError is a ValueError
        raise UsageError(f"{path}: cannot read TOML ({e})") from None


def load_config(path: str | os.PathLike[str], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the defaults) updated with the keys of a TOML file."""
    return (base or TrainConfig()).updated(load_toml(path), str(path))


def resolve_config(options: dict[str, Any], *, config_file: str | os.PathLike[str] | None = None,
                   resume: str | os.PathLike[str] | None = None, defaults: TrainConfig | None = None) -> TrainConfig:
    """The configuration of a run: defaults < ``RESUME/config.toml`` < ``config_file`` < ``options``.

    ``options`` holds command-line values; ``None`` means "not given". With
    ``resume`` the run folder is ``resume`` (an ``out`` naming another folder is an error).
    ``defaults``: the starting configuration (default ``TrainConfig()``; another trainer
    passes its own subclass, e.g. :class:`~ben_cli.train.refiner.RefinerTrainConfig`).
    """
    cfg = defaults if defaults is not None else TrainConfig()
    if resume is not None:
        saved = Path(resume) / "config.toml"
        if not saved.is_file():
            raise OptionError("resume", f"{{flag}} {resume}: not a run folder (no config.toml)")
        cfg = load_config(saved, cfg)
    if config_file is not None:
        cfg = load_config(config_file, cfg)
    given = {k: v for k, v in options.items() if v is not None}
    if resume is not None:
        out = given.get("out")
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise UsageError("--out must be left out or equal --resume (a resumed run stays in its folder)")
        given["out"] = os.fspath(resume)
    return cfg.updated(given, "options").resolved()


def dumps_toml(cfg: TrainConfig) -> str:
    """The config as TOML: top-level keys, then a ``[loss]`` table; ``None`` values left out."""
    d = cfg.to_dict()
    loss = d.pop("loss")
    lines = ["# ben train: resolved configuration of this run", ""]
    lines += [f"{k} = {_toml_value(v)}" for k, v in d.items() if v is not None]
    lines += ["", "[loss]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in loss.items() if v is not None]
    return "\n".join(lines) + "\n"


def save_config(cfg: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write ``dumps_toml(cfg)`` atomically."""
    from ben_cli.io import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, dumps_toml(cfg).encode("utf-8"))
    return path


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v} to TOML")
        return repr(v)
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ValueError(f"cannot write {type(v).__name__} to TOML")


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


_FLOAT_OK = (int, float)


def _typed(cls: type, d: dict[str, Any], source: str) -> dict[str, Any]:
    """Check keys and value types of ``d`` against the dataclass ``cls``; tuples from lists."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    out: dict[str, Any] = {}
    for key, value in d.items():
        annotation = str(known[key].type)
        if value is None:
            if "None" not in annotation:
                raise UsageError(f"{source}: {key} must be set")
            out[key] = None
            continue
        kind = next((k for k in ("tuple", "str", "bool", "float", "int") if k in annotation), "any")
        ok = {
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, _FLOAT_OK) and not isinstance(value, bool),
            "str": isinstance(value, str | os.PathLike),
            "tuple": isinstance(value, list | tuple),
        }.get(kind, True)
        if not ok:
            raise UsageError(f"{source}: {key} must be of type {kind}, got {value!r}")
        if kind == "float":
            value = float(value)
        elif kind == "str":
            value = os.fspath(value)
        elif kind == "tuple":
            value = tuple(float(x) for x in value)
        out[key] = value
    return out
