"""The run folder's checkpoints and resume state: what ``last``/``best`` hold and how a run continues.

``last.safetensors`` / ``best.safetensors`` hold the model weights in our checkpoint format
(config inside: ``ben erase --weights RUN/best.safetensors`` works); ``last.state.pt`` holds
the optimizer, grad scaler, step, samples seen, per-rank RNG states and the best score (read
with ``weights_only=True``). Exact resume restores all of them bit for bit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ben_cli.checkpoints.format import TRAIN_STATE_FORMAT
from ben_cli.errors import OptionError, UsageError
from ben_cli.train.config import TrainConfig
from ben_cli.train.runtime import Runtime, barrier, gather_objects

STATE_FORMAT = TRAIN_STATE_FORMAT
STATE_VERSION = 1
LAST, BEST, STATE, LOG, PLOT, CONFIG = (
    "last.safetensors", "best.safetensors", "last.state.pt", "log.jsonl", "loss.png", "config.toml",
)
RESUME_SENSITIVE = ("batch_size", "grad_accum", "seed", "resolution", "augment", "lr", "warmup_steps")
"""Config keys whose change makes a resumed run differ from an uninterrupted one."""


@dataclass(frozen=True)
class Best:
    """The best score so far of ``metric`` (``None`` before the first) and its step."""

    metric: str
    value: float | None = None
    step: int | None = None

    def beaten_by(self, value: float | None, higher_is_better: bool) -> bool:
        """True when ``value`` (finite) is better than the best so far (or the first)."""
        if value is None or not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if higher_is_better else value < self.value


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run continues: its counters, best score and this rank's RNG state
    (``None`` when the world size changed: the draws cannot be restored per rank)."""

    step: int
    samples_seen: int
    best: Best
    rng: Mapping[str, Any] | None
    state: Mapping[str, Any]


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


def write_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` to ``path`` atomically."""
    from ben_cli.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def refuse_existing_run(run_dir: Path) -> None:
    """OptionError when ``run_dir`` already holds a run (a new run would overwrite it)."""
    if any((run_dir / name).exists() for name in (STATE, LAST, LOG)):
        raise OptionError("resume", f"{run_dir} already holds a training run; continue it with {{flag}} {run_dir} "
                                    "or choose another run folder")


def restore_run(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler | None, rt: Runtime, best_metric: str) -> Resumed:
    """Load ``last`` into ``model``, ``optimizer`` and ``scaler``; the counters to continue from.

    The best score is kept when it is of ``best_metric`` (else it starts over).
    """
    from ben_cli.checkpoints.load import load_state_dict_strict, read_checkpoint

    state = load_state(run_dir)
    ckpt = read_checkpoint(run_dir / LAST)
    if int(ckpt.metadata.get("step", -1)) != int(state["step"]):
        raise UsageError(f"{run_dir}: {LAST} (step {ckpt.metadata.get('step')}) and {STATE} "
                         f"(step {state['step']}) disagree; the last save was interrupted")
    load_state_dict_strict(model, ckpt.state_dict, str(run_dir / LAST))
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    saved_best = state.get("best", {})
    best = Best(**saved_best) if saved_best.get("metric") == best_metric else Best(best_metric)
    rngs = state.get("rng") or []
    rng = rngs[rt.rank] if len(rngs) == rt.world else None
    return Resumed(int(state["step"]), int(state["samples_seen"]), best, rng, state)


def resume_warnings(resumed: Resumed, cfg: TrainConfig, rt: Runtime,
                    state_extra: Mapping[str, Any] | None) -> list[str]:
    """What differs between the run as it started and as it resumes (one line each)."""
    state, lines = resumed.state, []
    if resumed.rng is None:
        lines.append(f"resuming on {rt.world} process(es) after {len(state.get('rng') or [])}: the sample order is "
                     "kept, but dropout draws differ from an uninterrupted run")
    for key, value in (state_extra or {}).items():
        if key in state.get("extra", {}) and state["extra"][key] != value:
            lines.append(f"warning: {key} changed since the run started (was {state['extra'][key]}, now {value})")
    old, now = state.get("config", {}), cfg.to_dict()
    changed = [k for k in RESUME_SENSITIVE if k in old and old[k] != now[k]]
    if changed:
        lines.append(f"warning: {', '.join(changed)} changed since the run started: the run will not repeat "
                     "an uninterrupted one exactly")
    return lines


def save_last(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None, rt: Runtime, cfg: TrainConfig, *, step: int,
              samples_seen: int, best: Best, state_extra: Mapping[str, Any] | None) -> None:
    """Save ``last.safetensors`` and ``last.state.pt`` (every rank's RNG state; rank 0 writes); all ranks wait."""
    from ben_cli.checkpoints.load import save_checkpoint
    from ben_cli.device import rng_state

    rngs = gather_objects(rt, rng_state(rt.device))
    if rt.is_main:
        meta = {"step": step, "kind": "last", "train_config": cfg.to_dict()}
        save_checkpoint(model, run_dir / LAST, metadata=meta)
        write_state(run_dir / STATE, {
            "format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
            "samples_seen": samples_seen, "world_size": rt.world,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "rng": rngs, "best": asdict(best), "config": cfg.to_dict(), "extra": dict(state_extra or {}),
        })
    barrier(rt)


def save_best(run_dir: Path, model: nn.Module, cfg: TrainConfig, best: Best, metrics: Mapping[str, Any]) -> Path:
    """Write ``best.safetensors`` for ``best`` (its metrics in the metadata); returns its path."""
    from ben_cli.checkpoints.load import save_checkpoint

    meta = {"step": best.step, "kind": "best", "metric": best.metric, "value": best.value,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
            "train_config": cfg.to_dict()}
    save_checkpoint(model, run_dir / BEST, metadata=meta)
    return run_dir / BEST
