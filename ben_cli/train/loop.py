"""The training loop shared by ``ben train base`` and ``ben train refiner``.

:func:`train` takes a model, a loss function, a dataset and a
:class:`~ben_cli.train.config.TrainConfig` and runs a straight loop: AdamW with the
pure warm-up + cosine :func:`~ben_cli.train.config.lr_at`, autocast decided once
(bf16/fp16 on CUDA, fp32 elsewhere), gradient accumulation, global-norm clipping,
DistributedDataParallel under ``torchrun``, validation every ``val_every`` steps,
``best``/``last`` checkpoints and exact resume.

Files in the run folder (only rank 0 writes):

- ``config.toml``: the resolved configuration;
- ``log.jsonl``: one row per optimiser step (``kind: "train"``: step, loss, its
  parts, lr, grad_norm, images_per_s, elapsed_s) and one per validation
  (``kind: "val"``: step and the metrics);
- ``last.safetensors`` / ``best.safetensors``: model weights in our checkpoint
  format (config inside: ``ben erase --weights RUN/best.safetensors`` works);
- ``last.state.pt``: optimizer, grad scaler, step, samples seen, per-rank RNG
  states and the best score, for ``--resume`` (read with ``weights_only=True``);
- ``loss.png``: loss curves and validation metrics.

Exact resume: the sample order and augmentations are functions of (seed, draw
number) (:mod:`ben_cli.train.data`), the schedule is a function of the step, and
the weights, optimizer and RNG states are restored bit for bit, so a resumed run
repeats the losses of an uninterrupted one. SIGINT (Ctrl-C) and SIGTERM finish
the current step, save ``last`` and stop with :class:`TrainingStopped`; a second
Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ben_cli.errors import BenError, UsageError
from ben_cli.train.config import TrainConfig, lr_at, save_config
from ben_cli.train.data import StreamSampler
from ben_cli.train.loss import LossOutput

STATE_FORMAT = "ben_cli.train_state"
STATE_VERSION = 1
LAST, BEST, STATE, LOG, PLOT, CONFIG = (
    "last.safetensors", "best.safetensors", "last.state.pt", "log.jsonl", "loss.png", "config.toml",
)
MAX_NONFINITE = 10  # consecutive skipped steps (non-finite gradients) before giving up


class TrainingStopped(BenError):
    """The run was stopped (signal or request) after saving ``last``; ``--resume`` continues it."""

    def __init__(self, step: int, run_dir: Path, signum: int | None) -> None:
        name = signal.Signals(signum).name if signum else "request"
        self.step, self.run_dir, self.signum = step, run_dir, signum
        self.exit_code = 128 + signum if signum else 130
        super().__init__(f"stopped by {name} after step {step}; saved {run_dir / LAST}; "
                         f"continue with --resume {run_dir}")


class TrainingDiverged(BenError):
    """The gradients stayed non-finite for :data:`MAX_NONFINITE` steps in a row."""


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Runtime:
    """This process's place in the job and its device."""

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_runtime(device_spec: str = "auto") -> Runtime:
    """Device for this process; under ``torchrun`` (``WORLD_SIZE`` > 1) also joins the process group.

    Under torchrun each process takes ``cuda:LOCAL_RANK`` (NCCL) when the device is
    ``auto`` or ``cuda`` and CUDA exists, else the CPU (gloo).
    """
    import torch.distributed as dist

    from ben_cli.device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(resolve_device(device_spec))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    spec = device_spec.strip().lower()
    if spec.startswith("cuda:"):
        raise UsageError("under torchrun use --device cuda (or auto): each process takes cuda:LOCAL_RANK")
    if spec in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = resolve_device(spec if spec != "auto" else "cpu")
        if device.type != "cpu":
            raise UsageError(f"distributed training runs on CUDA or the CPU, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=60))
    return Runtime(device, rank, world, local_rank)


def require_run_folders(data: object, out: object, data_hint: str) -> None:
    """UsageError unless a run names its data folder and its run folder (``data_hint``: what
    ``--data`` holds, for the message)."""
    from ben_cli.errors import UsageError

    if not data:
        raise UsageError(f"--data DIR is required ({data_hint})")
    if not out:
        raise UsageError("--out RUN is required (the run folder)")


def main_rank_say(rt: Runtime, say: Callable[[str], None] | None = None) -> Callable[[str], None]:
    """A printer that speaks on rank 0 only: ``say``, by default one ``ben: ...`` line on stderr."""
    import sys

    def tell(message: str) -> None:
        if rt.is_main:
            if say is not None:
                say(message)
            else:
                print(f"ben: {message}", file=sys.stderr, flush=True)

    return tell


def teardown_runtime(rt: Runtime) -> None:
    """Leave the process group (if any)."""
    import torch.distributed as dist

    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(rt: Runtime, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity when not distributed)."""
    if not rt.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(rt: Runtime, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not rt.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * rt.world
    dist.all_gather_object(out, obj)
    return out


def _barrier(rt: Runtime) -> None:
    if rt.distributed:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- signals


class _StopSignals:
    """SIGINT/SIGTERM set a flag that the loop reads after each step; a second Ctrl-C aborts."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.signum: int | None = None
        self.requested = False
        self._say = say
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self._say(f"{signal.Signals(signum).name}: saving after this step (Ctrl-C again to abort without saving)")

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers only from the main thread
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    @property
    def stop(self) -> bool:
        return self.signum is not None or self.requested


def _worker_init(_: int) -> None:
    """DataLoader workers ignore Ctrl-C: the main process stops the run after saving."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------- log and plot


class RunLog:
    """``log.jsonl`` and the rows in memory (rank 0 writes; other ranks keep nothing)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.rows: list[dict[str, Any]] = []

    def restart_at(self, step: int) -> None:
        """Keep the rows up to ``step`` (a crash may have logged steps after the last save)."""
        if not self.enabled or not self.path.is_file():
            return
        from ben_cli.io import atomic_write_bytes

        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and int(row.get("step", -1)) <= step:
                    kept.append(row)
        self.rows = kept
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))

    def append(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def plot_history(path: Path, rows: list[dict[str, Any]], title: str = "") -> None:
    """Draw the loss (and its parts), the learning rate and the validation metrics to ``path``.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ben_cli.io import atomic_write_bytes

    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    if not train:
        return
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3)
    steps = [r["step"] for r in train]
    parts = [k for k in train[-1] if k.startswith("loss")]
    for key in parts:
        values = [r.get(key, math.nan) for r in train]
        line = ax_loss.plot(steps, values, alpha=0.25, linewidth=0.8)[0]
        ax_loss.plot(steps, _ema(values), color=line.get_color(), label=key)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss (EMA and raw)")
    ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_lr.plot(steps, [r["lr"] for r in train], color="tab:gray")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="schedule")
    ax_lr.grid(alpha=0.3)
    if val:
        vsteps = [r["step"] for r in val]
        for key in ("max_f", "weighted_f", "s_measure", "e_measure", "mae"):
            if key in val[-1]:
                ax_val.plot(vsteps, [r.get(key, math.nan) for r in val], marker="o", markersize=3, label=key)
        ax_val.set(xlabel="step", title="validation")
        ax_val.legend(fontsize=8)
    else:
        ax_val.set_axis_off()
        ax_val.text(0.5, 0.5, "no validation set (--val)", ha="center", va="center")
    ax_val.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(Path(path), buf.getvalue())


def _ema(values: list[float], alpha: float = 0.05) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None or not math.isfinite(acc) else (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out


class _Progress:
    """A Rich bar on a terminal (loss, images/s, ETA), else one line every few steps."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.start = enabled, total, 0
        self.every = max(1, min(100, total // 50))
        self.bar: Any = None
        self._t0 = time.perf_counter()

    def begin(self, start: int) -> None:
        """Show the bar from step ``start`` on (messages before this go straight to stderr)."""
        self.start, self._t0 = start, time.perf_counter()
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress, TextColumn

            from ben_cli.progress import progress_columns

            self.bar = Progress(*progress_columns(TextColumn("{task.fields[info]}")),
                                console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("train", total=self.total, completed=start, info="")
            self.bar.start()

    def update(self, step: int, loss: float, ips: float) -> None:
        if not self.enabled:
            return
        info = f"loss {loss:.4f}  {ips:.1f} img/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            done = step - self.start
            rate = done / max(time.perf_counter() - self._t0, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else math.inf
            eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) and eta < 8.64e6 else "?"
            print(f"ben train: step {step}/{self.total}  {info}  eta {eta_s}", file=sys.stderr, flush=True)

    def say(self, message: str) -> None:
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# --------------------------------------------------------------------------- state


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices and kernels only (not on biases,
    norms or Swin's relative position tables)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(("relative_position_bias_table", "absolute_pos_embed")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch RNG states, as tensors (``weights_only`` loadable)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_state(run_dir: Path) -> dict[str, Any]:
    """``RUN/last.state.pt`` (safe load); UsageError when missing or not ours."""
    path = Path(run_dir) / STATE
    if not path.is_file():
        raise UsageError(f"{run_dir}: nothing to resume (no {STATE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{path}: cannot read the training state ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UsageError(f"{path}: not a ben training state")
    return state


def _write_state(path: Path, state: dict[str, Any]) -> None:
    from ben_cli.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


# --------------------------------------------------------------------------- the loop


LossFn = Callable[[Any, dict[str, torch.Tensor]], LossOutput]
ForwardFn = Callable[[nn.Module, dict[str, torch.Tensor]], Any]
Validator = Callable[[nn.Module, Runtime], "dict[str, float] | None"]
StepHook = Callable[[int, nn.Module, dict[str, Any]], "bool | None"]


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run stands."""

    step: int
    run_dir: Path
    best_metric: str
    best_value: float | None
    best_step: int | None


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Any,
    cfg: TrainConfig,
    *,
    forward: ForwardFn,
    rt: Runtime,
    dtype: torch.dtype = torch.float32,
    validate: Validator | None = None,
    resume: bool = False,
    on_step: StepHook | None = None,
    say: Callable[[str], None] | None = None,
    state_extra: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` for ``cfg.max_steps`` optimiser steps, writing to ``cfg.out``.

    Args:
        model: the network (on any device; moved to ``rt.device``), trainable.
        loss_fn: ``loss_fn(outputs, batch) -> LossOutput`` (batch on the device).
        dataset: map-style, ``dataset[(index, draw)]`` -> dict of tensors (see ``PairDataset``).
        cfg: the resolved configuration.
        forward: ``forward(net, batch) -> outputs``; ``net`` may be the DDP wrapper.
        rt: from :func:`setup_runtime`.
        dtype: autocast dtype (fp32: none).
        validate: ``validate(model, rt)`` called on every rank at validation steps;
            returns the metrics on rank 0.
        resume: continue the run in ``cfg.out`` from its ``last`` files.
        on_step: ``on_step(step, model, row)`` on every rank after each step;
            returning True stops the run as a signal would.
        say: where one-line messages go (rank 0 only); default stderr.
        state_extra: JSON-like entries stored in the state file (e.g. a data digest).

    Raises:
        TrainingStopped: after a signal or a hook's request, once ``last`` is saved.
        TrainingDiverged: gradients non-finite for ``MAX_NONFINITE`` steps in a row.
    """
    from ben_cli.checkpoints.load import load_state_dict_strict, read_checkpoint, save_checkpoint
    from ben_cli.device import train_autocast
    from ben_cli.eval.metrics import HIGHER_IS_BETTER

    cfg = cfg.resolved()
    if cfg.out is None:
        raise UsageError("--out: the run folder is required")
    run_dir = Path(cfg.out)
    main = rt.is_main
    progress = _Progress(main, cfg.max_steps)

    def tell(message: str) -> None:
        if main:
            say(message) if say is not None else progress.say(f"ben: {message}")

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(rt.device).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    log = RunLog(run_dir / LOG, main)
    per_step = cfg.batch_size * cfg.grad_accum  # samples per rank and optimiser step
    step, samples_seen = 0, 0
    best_metric = cfg.best_metric if validate is not None else "train_loss"
    higher = HIGHER_IS_BETTER.get(best_metric, False)
    best: dict[str, Any] = {"metric": best_metric, "value": None, "step": None}
    rng_to_restore: dict[str, Any] | None = None

    if resume:
        state = load_state(run_dir)
        ckpt = read_checkpoint(run_dir / LAST)
        if int(ckpt.metadata.get("step", -1)) != int(state["step"]):
            raise UsageError(f"{run_dir}: {LAST} (step {ckpt.metadata.get('step')}) and {STATE} "
                             f"(step {state['step']}) disagree; the last save was interrupted")
        load_state_dict_strict(model, ckpt.state_dict, str(run_dir / LAST))
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, samples_seen = int(state["step"]), int(state["samples_seen"])
        if state.get("best", {}).get("metric") == best_metric:
            best = dict(state["best"])
        rngs = state.get("rng") or []
        if len(rngs) == rt.world:
            rng_to_restore = rngs[rt.rank]
        else:
            tell(f"resuming on {rt.world} process(es) after {len(rngs)}: the sample order is kept, "
                 "but dropout draws differ from an uninterrupted run")
        for key, value in (state_extra or {}).items():
            if key in state.get("extra", {}) and state["extra"][key] != value:
                tell(f"warning: {key} changed since the run started (was {state['extra'][key]}, now {value})")
        old = state.get("config", {})
        changed = [k for k in ("batch_size", "grad_accum", "seed", "resolution", "augment", "lr", "warmup_steps")
                   if k in old and old[k] != cfg.to_dict()[k]]
        if changed:
            tell(f"warning: {', '.join(changed)} changed since the run started: the run will not repeat "
                 "an uninterrupted one exactly")
        log.restart_at(step)
        tell(f"resuming {run_dir} at step {step}/{cfg.max_steps}")
    elif main and any((run_dir / name).exists() for name in (STATE, LAST, LOG)):
        raise UsageError(f"{run_dir} already holds a training run; continue it with --resume {run_dir} "
                         "or choose another --out")
    if main:
        save_config(cfg, run_dir / CONFIG)
    _barrier(rt)
    if step >= cfg.max_steps:
        tell(f"nothing to do: the run is at step {step} and --max-steps is {cfg.max_steps}")
        progress.close()
        return TrainResult(step, run_dir, best_metric, best["value"], best["step"])

    net: nn.Module = model
    if rt.distributed:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # One stream of draws per rank; its position is the samples each rank has consumed
    # (the global count over the world size, which is exact when the world size is unchanged).
    start = -(-samples_seen // rt.world)
    sampler = StreamSampler(len(dataset), seed=cfg.seed, rank=rt.rank, world=rt.world,
                            start=start, stop=start + (cfg.max_steps - step) * per_step)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
        pin_memory=rt.device.type == "cuda", drop_last=False,
        generator=torch.Generator().manual_seed(cfg.seed),  # the global RNG is left alone
        worker_init_fn=_worker_init if cfg.workers else None,
        prefetch_factor=2 if cfg.workers else None,
    )
    batches = iter(loader)
    if rng_to_restore is not None:
        _set_rng_state(rng_to_restore, rt.device)
    elif not resume:
        torch.manual_seed(cfg.seed * 1000 + rt.rank)  # dropout / drop-path draws differ per rank

    params = [p for p in model.parameters() if p.requires_grad]
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    images_per_step = per_step * rt.world
    part_keys: list[str] | None = None
    nonfinite = 0
    window_start = step
    ips_ema: float | None = None
    t_run = time.perf_counter()
    elapsed0 = next((float(r["elapsed_s"]) for r in reversed(log.rows) if "elapsed_s" in r), 0.0)
    progress.begin(step)

    def save_last(at: int) -> None:
        rngs = gather_objects(rt, _rng_state(rt.device))
        if main:
            meta = {"step": at, "kind": "last", "train_config": cfg.to_dict()}
            save_checkpoint(model, run_dir / LAST, metadata=meta)
            _write_state(run_dir / STATE, {
                "format": STATE_FORMAT, "version": STATE_VERSION, "step": at,
                "samples_seen": samples_seen, "world_size": rt.world,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "rng": rngs, "best": best, "config": cfg.to_dict(), "extra": dict(state_extra or {}),
            })
        _barrier(rt)

    def consider_best(at: int, value: float | None, metrics: Mapping[str, Any]) -> None:
        if not main or value is None or not math.isfinite(value):
            return
        old = best["value"]
        if old is None or (value > old if higher else value < old):
            best.update(value=value, step=at)
            meta = {"step": at, "kind": "best", "metric": best_metric, "value": value,
                    "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
                    "train_config": cfg.to_dict()}
            save_checkpoint(model, run_dir / BEST, metadata=meta)
            tell(f"step {at}: new best {best_metric} = {value:.5f} -> {run_dir / BEST}")

    with _StopSignals(tell) as signals:
        try:
            while step < cfg.max_steps:
                t0 = time.perf_counter()
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                acc = torch.zeros((), device=rt.device)
                for micro in range(cfg.grad_accum):
                    batch = _to_device(next(batches), rt.device)
                    sync = micro == cfg.grad_accum - 1 or not rt.distributed
                    with contextlib.nullcontext() if sync else net.no_sync():
                        with train_autocast(rt.device, dtype):
                            outputs = forward(net, batch)
                        out = loss_fn(outputs, batch)
                        scaled = out.total / cfg.grad_accum
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    if part_keys is None:
                        part_keys = list(out.parts)
                    values = torch.stack([out.total.detach().float(), *[out.parts[k].detach().float()
                                                                        for k in part_keys]])
                    acc = acc + values
                if scaler is not None:
                    scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
                finite = bool(torch.isfinite(grad_norm))
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                elif finite:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                samples_seen += images_per_step
                nonfinite = 0 if finite or scaler is not None else nonfinite + 1  # fp16: the scaler adapts

                flag = torch.tensor([1.0 if signals.stop else 0.0], device=acc.device)
                stats = torch.cat([acc / cfg.grad_accum, flag])
                if rt.distributed:
                    import torch.distributed as dist

                    dist.all_reduce(stats)
                    stats[:-1] /= rt.world
                values = stats.tolist()
                stop_all = values[-1] > 0
                dt = time.perf_counter() - t0
                ips = images_per_step / max(dt, 1e-9)
                ips_ema = ips if ips_ema is None else 0.9 * ips_ema + 0.1 * ips
                row: dict[str, Any] = {"kind": "train", "step": step, "loss": values[0]}
                row.update({f"loss_{k}": v for k, v in zip(part_keys or [], values[1:-1])})
                row.update({"lr": lr, "grad_norm": float(grad_norm), "images_per_s": ips,
                            "elapsed_s": elapsed0 + time.perf_counter() - t_run})
                if not finite:
                    row["skipped"] = True
                log.append(row)
                progress.update(step, values[0], ips_ema)
                if on_step is not None and on_step(step, model, row):
                    signals.requested = True
                    stop_all = True
                if nonfinite >= MAX_NONFINITE:
                    raise TrainingDiverged(f"gradients were not finite for {nonfinite} steps in a row "
                                           f"(last at step {step}); lower --lr or use --precision fp32")

                if step % cfg.val_every == 0 or step == cfg.max_steps:
                    if validate is not None:
                        was_training = model.training
                        metrics = validate(model, rt)
                        model.train(was_training)
                        if main and metrics is not None:
                            log.append({"kind": "val", "step": step, **metrics})
                            tell(f"step {step}: validation " + "  ".join(
                                f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
                            consider_best(step, metrics.get(best_metric), metrics)
                    elif main:
                        window = [r["loss"] for r in log.rows
                                  if r.get("kind") == "train" and window_start < r["step"] <= step]
                        if window:
                            consider_best(step, sum(window) / len(window), {"train_loss": sum(window) / len(window)})
                    window_start = step
                    if main:
                        plot_history(run_dir / PLOT, log.rows, str(run_dir))
                if step % cfg.save_every == 0 or step == cfg.max_steps or stop_all:
                    save_last(step)
                if stop_all:
                    if main:
                        plot_history(run_dir / PLOT, log.rows, str(run_dir))
                    raise TrainingStopped(step, run_dir, signals.signum)
        finally:
            progress.close()
    if main:
        plot_history(run_dir / PLOT, log.rows, str(run_dir))
        tell(f"done: {step} steps; {run_dir / LAST}" + (f", best {best_metric} {best['value']:.5f} at step "
                                                         f"{best['step']} in {run_dir / BEST}"
                                                         if best["value"] is not None else ""))
    return TrainResult(step, run_dir, best_metric, best["value"], best["step"])
