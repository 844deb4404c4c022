"""The training loop shared by ``ben train base`` and ``ben train refiner``.

:func:`train` takes a model, a loss function, a dataset and a
:class:`~ben_cli.train.config.TrainConfig` and runs a straight loop: AdamW with the
pure warm-up + cosine :func:`~ben_cli.train.config.lr_at`, autocast decided once
(bf16/fp16 on CUDA, fp32 elsewhere), gradient accumulation, global-norm clipping,
DistributedDataParallel under ``torchrun``, validation every ``val_every`` steps,
``best``/``last`` checkpoints and exact resume.

Files in the run folder (only rank 0 writes): ``config.toml`` (the resolved
configuration), ``log.jsonl`` and ``loss.png`` (:mod:`ben_cli.train.log`),
``last.safetensors``, ``best.safetensors`` and ``last.state.pt``
(:mod:`ben_cli.train.state`).

Exact resume: the sample order and augmentations are functions of (seed, draw
number) (:mod:`ben_cli.train.data`), the schedule is a function of the step, and
the weights, optimizer and RNG states are restored bit for bit, so a resumed run
repeats the losses of an uninterrupted one. SIGINT (Ctrl-C) and SIGTERM finish
the current step, save ``last`` and stop with :class:`TrainingStopped`
(:mod:`ben_cli.train.signals`); a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ben_cli.errors import BenError, OptionError
from ben_cli.train.config import TrainConfig, lr_at, save_config
from ben_cli.train.data import StreamSampler
from ben_cli.train.log import RunLog, plot_history
from ben_cli.train.loss import LossOutput
from ben_cli.train.progress import Progress
from ben_cli.train.runtime import Runtime, all_reduce_mean, barrier, main_rank_say
from ben_cli.train.signals import StopSignals, TrainingStopped, ignore_interrupts_in_worker
from ben_cli.train.state import (
    BEST,
    CONFIG,
    LAST,
    LOG,
    PLOT,
    Best,
    refuse_existing_run,
    restore_run,
    resume_warnings,
    save_best,
    save_last,
)

MAX_NONFINITE = 10  # consecutive skipped steps (non-finite gradients) before giving up

LossFn = Callable[[Any, dict[str, torch.Tensor]], LossOutput]
ForwardFn = Callable[[nn.Module, dict[str, torch.Tensor]], Any]
Validator = Callable[[nn.Module, Runtime], "dict[str, float] | None"]
StepHook = Callable[[int, nn.Module, dict[str, Any]], "bool | None"]


class TrainingDiverged(BenError):
    """The gradients stayed non-finite for :data:`MAX_NONFINITE` steps in a row."""


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run stands."""

    step: int
    run_dir: Path
    best_metric: str
    best_value: float | None
    best_step: int | None


# --------------------------------------------------------------------------- helpers


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


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batches(dataset: Any, cfg: TrainConfig, rt: Runtime, samples_seen: int, steps_left: int) -> Iterator[Any]:
    """The batches of the remaining steps, in the run's fixed order.

    One stream of draws per rank; its position is the samples each rank has consumed (the
    global count over the world size, which is exact when the world size is unchanged).
    """
    start = -(-samples_seen // rt.world)
    sampler = StreamSampler(len(dataset), seed=cfg.seed, rank=rt.rank, world=rt.world,
                            start=start, stop=start + steps_left * cfg.images_per_step)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
        pin_memory=rt.device.type == "cuda", drop_last=False,
        generator=torch.Generator().manual_seed(cfg.seed),  # the global RNG is left alone
        worker_init_fn=ignore_interrupts_in_worker if cfg.workers else None,
        prefetch_factor=2 if cfg.workers else None,
    )
    return iter(loader)


def _accumulate_gradients(net: nn.Module, batches: Iterator[Any], forward: ForwardFn, loss_fn: LossFn,
                          cfg: TrainConfig, rt: Runtime, dtype: torch.dtype,
                          scaler: torch.amp.GradScaler | None) -> tuple[torch.Tensor, list[str]]:
    """Forward and backward ``cfg.grad_accum`` micro-batches (DDP syncs on the last one only).

    Returns the summed ``[total, *parts]`` losses (float32, detached) and the names of the parts.
    """
    from ben_cli.device import train_autocast

    acc = torch.zeros((), device=rt.device)
    keys: list[str] = []
    for micro in range(cfg.grad_accum):
        batch = _to_device(next(batches), rt.device)
        sync = micro == cfg.grad_accum - 1 or not rt.distributed
        with contextlib.nullcontext() if sync else net.no_sync():
            with train_autocast(rt.device, dtype):
                outputs = forward(net, batch)
            out = loss_fn(outputs, batch)
            scaled = out.total / cfg.grad_accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        keys = keys or list(out.parts)
        acc = acc + torch.stack([out.total.detach().float(), *[out.parts[k].detach().float() for k in keys]])
    return acc, keys


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                    params: list[torch.Tensor], clip: float) -> tuple[torch.Tensor, bool]:
    """Clip, step (skipped for non-finite gradients, or left to the fp16 scaler) and clear the
    gradients; returns the global gradient norm and whether it was finite."""
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
    return grad_norm, finite


def _score(model: nn.Module, validate: Validator | None, rt: Runtime, log: RunLog, step: int, since: int,
           best_metric: str, tell: Callable[[str], None]) -> tuple[float | None, Mapping[str, Any]]:
    """The score that decides ``best`` at a validation step: ``validate``'s ``best_metric`` (its
    metrics logged and told), or without a validator the mean training loss since step ``since``.
    Every rank validates; the score is rank 0's (None elsewhere)."""
    if validate is None:
        loss = log.mean_loss(since, step) if rt.is_main else None
        return loss, {"train_loss": loss}
    was_training = model.training
    metrics = validate(model, rt)
    model.train(was_training)
    if not rt.is_main or metrics is None:
        return None, {}
    log.append({"kind": "val", "step": step, **metrics})
    tell(f"step {step}: validation " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics.get(best_metric), metrics


# --------------------------------------------------------------------------- the loop


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
        rt: from :func:`~ben_cli.train.runtime.setup_runtime`.
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
    from ben_cli.eval.metrics import HIGHER_IS_BETTER

    cfg = cfg.resolved()
    if cfg.out is None:
        raise OptionError("out", "the run folder is required")
    run_dir = Path(cfg.out)
    main = rt.is_main
    progress = Progress(main, cfg.max_steps)
    tell = main_rank_say(rt, say if say is not None else lambda message: progress.say(f"ben: {message}"))
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    model = model.to(rt.device).train()
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    log = RunLog(run_dir / LOG, main)
    best_metric = cfg.best_metric if validate is not None else "train_loss"
    higher = HIGHER_IS_BETTER.get(best_metric, False)
    step, samples_seen, best, rng = 0, 0, Best(best_metric), None
    if resume:
        resumed = restore_run(run_dir, model, optimizer, scaler, rt, best_metric)
        step, samples_seen, best, rng = resumed.step, resumed.samples_seen, resumed.best, resumed.rng
        for line in resume_warnings(resumed, cfg, rt, state_extra):
            tell(line)
        log.restart_at(step)
        tell(f"resuming {run_dir} at step {step}/{cfg.max_steps}")
    elif main:
        refuse_existing_run(run_dir)
    if main:
        save_config(cfg, run_dir / CONFIG)
    barrier(rt)
    if step >= cfg.max_steps:
        tell(f"nothing to do: the run is at step {step} and max_steps is {cfg.max_steps}")
        progress.close()
        return TrainResult(step, run_dir, best_metric, best.value, best.step)

    net: nn.Module = model
    if rt.distributed:
        ids = [rt.device.index] if rt.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    batches = _batches(dataset, cfg, rt, samples_seen, cfg.max_steps - step)
    if rng is not None:
        from ben_cli.device import set_rng_state

        set_rng_state(rng, rt.device)
    elif not resume:
        torch.manual_seed(cfg.seed * 1000 + rt.rank)  # dropout / drop-path draws differ per rank

    params = [p for p in model.parameters() if p.requires_grad]
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    images_per_step = cfg.images_per_step * rt.world
    nonfinite, window_start, ips_ema = 0, step, None
    t_run, elapsed0 = time.perf_counter(), log.elapsed_s()
    progress.begin(step)

    with StopSignals(tell) as signals, contextlib.closing(progress):
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses, part_keys = _accumulate_gradients(net, batches, forward, loss_fn, cfg, rt, dtype, scaler)
            grad_norm, finite = _optimizer_step(optimizer, scaler, params, clip)
            step += 1
            samples_seen += images_per_step
            nonfinite = 0 if finite or scaler is not None else nonfinite + 1  # fp16: the scaler adapts

            flag = torch.tensor([1.0 if signals.stop else 0.0], device=losses.device)
            values = all_reduce_mean(rt, torch.cat([losses / cfg.grad_accum, flag]), summed=1).tolist()
            stop_all = values[-1] > 0
            ips = images_per_step / max(time.perf_counter() - t0, 1e-9)
            ips_ema = ips if ips_ema is None else 0.9 * ips_ema + 0.1 * ips
            row: dict[str, Any] = {"kind": "train", "step": step, "loss": values[0]}
            row.update({f"loss_{k}": v for k, v in zip(part_keys, values[1:-1])})
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
                raise TrainingDiverged(f"gradients were not finite for {nonfinite} steps in a row (last at step "
                                       f"{step}); lower the learning rate (lr) or train in fp32 (precision)")

            if step % cfg.val_every == 0 or step == cfg.max_steps:
                value, metrics = _score(model, validate, rt, log, step, window_start, best_metric, tell)
                if main and best.beaten_by(value, higher):
                    best = Best(best_metric, value, step)
                    path = save_best(run_dir, model, cfg, best, metrics)
                    tell(f"step {step}: new best {best_metric} = {value:.5f} -> {path}")
                window_start = step
                if main:
                    plot_history(run_dir / PLOT, log.rows, str(run_dir))
            if step % cfg.save_every == 0 or step == cfg.max_steps or stop_all:
                save_last(run_dir, model, optimizer, scaler, rt, cfg, step=step, samples_seen=samples_seen,
                          best=best, state_extra=state_extra)
            if stop_all:
                if main:
                    plot_history(run_dir / PLOT, log.rows, str(run_dir))
                raise TrainingStopped(step, run_dir, signals.signum)
    if main:
        plot_history(run_dir / PLOT, log.rows, str(run_dir))
        tell(f"done: {step} steps; {run_dir / LAST}" + (f", best {best_metric} {best.value:.5f} at step "
                                                         f"{best.step} in {run_dir / BEST}"
                                                         if best.value is not None else ""))
    return TrainResult(step, run_dir, best_metric, best.value, best.step)


__all__ = [
    "MAX_NONFINITE",
    "TrainResult",
    "TrainingDiverged",
    "TrainingStopped",
    "param_groups",
    "plot_history",
    "train",
    "unwrap",
]
