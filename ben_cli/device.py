"""The one module that asks torch which accelerators exist; picks device, dtype and autocast."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ben_cli.errors import DeviceUnavailableError, UsageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Asking for a device that is not there is an error, never a silent fallback.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown device {spec!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {spec!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type == "mps":
        if not _mps_available():
            raise DeviceUnavailableError(f"device {spec!r} requested but MPS is not available")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {spec!r} (use auto, cpu, cuda, cuda:N or mps)")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype: ``auto`` is fp16 on CUDA and MPS, fp32 on the CPU."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    dtype = _DTYPES[precision]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceUnavailableError(f"bf16 is not supported on {device}")
    return dtype


@contextlib.contextmanager
def inference_context(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """``inference_mode`` plus autocast to ``dtype`` when it is not fp32."""
    with torch.inference_mode():
        if dtype == torch.float32:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


def resolve_train_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Training compute dtype: ``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere.

    Mixed precision in training is CUDA-only here: fp16/bf16 requested on another
    device is a UsageError (the CPU trains in fp32).
    """
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if device.type != "cuda":
        if precision in ("fp16", "bf16"):
            raise UsageError(f"--precision {precision} trains only on CUDA; use fp32 (or auto) on {device.type}")
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return resolve_dtype(precision, device)


def train_autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast for a training forward pass (gradients allowed); a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


_ALLOCATOR_TUNED = False


def keep_cpu_memory() -> bool:
    """Stop glibc from returning large freed blocks to the kernel (Linux, once per process).

    The CPU forward allocates and frees tensors of hundreds of MB; by default glibc
    serves each from a fresh ``mmap`` and unmaps it on free, so every forward pays
    millions of page faults (measured: 13 s of system time in a 29 s 1024x1024
    forward, 1 s with this). Raising the mmap and trim thresholds to 1 GiB keeps
    those blocks in the heap for reuse. Returns True when the setting was applied.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, ...)
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 1 << 30) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1
    _ALLOCATOR_TUNED = ok
    return ok
