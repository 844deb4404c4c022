"""The peak memory of a block of work (:class:`PeakMemory`): CUDA allocations, or the process's peak RSS."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from ben_cli.device import peak_memory_allocated, reset_peak_memory, synchronize

MEMORY_KINDS = {
    "cuda_max_allocated": "torch.cuda.max_memory_allocated after reset_peak_memory_stats (weights included)",
    "process_peak_rss": "the process's peak RSS (VmHWM, reset through /proc/self/clear_refs before the stages)",
    "process_max_rss": "the process's lifetime peak RSS (getrusage ru_maxrss; it cannot be reset here)",
}
"""How ``peak_memory_bytes`` was measured, by ``settings["memory_kind"]``."""


def _proc_status_kb(key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _maxrss_bytes() -> int:
    import resource  # Unix only: imported when asked for

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


class PeakMemory:
    """The peak memory of a block of work on ``device``; ``kind`` is a key of :data:`MEMORY_KINDS`.

    Both include the weights and whatever the process holds. CUDA: ``max_memory_allocated``
    after ``reset_peak_memory_stats``. CPU on Linux: the process's peak RSS (VmHWM), reset
    through ``/proc/self/clear_refs`` first; elsewhere ``getrusage``'s lifetime peak. Freed CPU
    memory stays in the heap (:func:`ben_cli.device.keep_cpu_memory`), so a CPU peak never
    drops below an earlier batch size's.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else (
            "process_peak_rss" if _can_reset_hwm() else "process_max_rss")
        self.bytes = 0

    @contextlib.contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        if self.kind == "cuda_max_allocated":
            synchronize(self.device)
            reset_peak_memory(self.device)
            yield self
            synchronize(self.device)
            self.bytes = peak_memory_allocated(self.device)
        elif self.kind == "process_peak_rss":
            _reset_hwm()
            yield self
            self.bytes = (_proc_status_kb("VmHWM") or 0) * 1024
        else:
            yield self
            self.bytes = _maxrss_bytes()


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux 4.0+: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _can_reset_hwm() -> bool:
    return _proc_status_kb("VmHWM") is not None and _reset_hwm()


__all__ = ["MEMORY_KINDS", "PeakMemory"]
