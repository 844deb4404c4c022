"""Where this process stands in a training job: its device, rank and world, under ``torchrun`` or alone.

:func:`setup_runtime` joins the process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on
the CPU); the helpers below are identities for a single process, so the loop calls them
unconditionally. Only rank 0 speaks (:func:`main_rank_say`) and writes files.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from ben_cli.errors import OptionError


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
    ``auto`` or ``cuda`` and CUDA exists, else the CPU (gloo); see
    :func:`ben_cli.device.resolve_train_device`.
    """
    import torch.distributed as dist

    from ben_cli.device import resolve_device, resolve_train_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(resolve_device(device_spec))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_train_device(device_spec, local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=60))
    return Runtime(device, rank, world, local_rank)


def teardown_runtime(rt: Runtime) -> None:
    """Leave the process group (if any)."""
    import torch.distributed as dist

    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def require_run_folders(data: object, out: object, data_hint: str) -> None:
    """OptionError unless a run names its data folder and its run folder (``data_hint``: what
    ``data`` holds, for the message)."""
    if not data:
        raise OptionError("data", f"{{flag}} DIR is required ({data_hint})")
    if not out:
        raise OptionError("out", "{flag} RUN is required (the run folder)")


def main_rank_say(rt: Runtime, say: Callable[[str], None] | None = None) -> Callable[[str], None]:
    """A printer that speaks on rank 0 only: ``say``, by default one ``ben: ...`` line on stderr."""

    def tell(message: str) -> None:
        if rt.is_main:
            if say is not None:
                say(message)
            else:
                print(f"ben: {message}", file=sys.stderr, flush=True)

    return tell


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


def all_reduce_mean(rt: Runtime, values: torch.Tensor, summed: int = 0) -> torch.Tensor:
    """``values`` (1-D) averaged over the ranks, except its last ``summed`` entries, which are summed
    (e.g. a stop flag); ``values`` itself when not distributed."""
    if not rt.distributed:
        return values
    import torch.distributed as dist

    dist.all_reduce(values)
    values[: values.numel() - summed] /= rt.world
    return values


def barrier(rt: Runtime) -> None:
    """Wait for every rank (nothing when not distributed)."""
    if rt.distributed:
        import torch.distributed as dist

        dist.barrier()
