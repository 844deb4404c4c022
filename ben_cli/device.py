"""The one module that asks torch which accelerators exist; picks device, dtype and autocast."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import torch

from ben_cli.errors import DeviceUnavailableError, OptionError, UsageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Precision name -> dtype: the one table of them (:func:`dtype_name` reads it backwards)."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"fp16"`` (the names of ``--precision``); other dtypes as torch spells them."""
    return next((name for name, d in DTYPES.items() if d == dtype), str(dtype))


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
    dtype = DTYPES[precision]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceUnavailableError(f"bf16 is not supported on {device}")
    return dtype


@contextlib.contextmanager
def inference_context(device: torch.device, dtype: torch.dtype, autocast: bool = True) -> Iterator[None]:
    """``inference_mode``, plus autocast to ``dtype`` when ``autocast`` and ``dtype`` is not fp32.

    ``autocast=False`` is for a model whose weights are already in ``dtype`` (see
    :func:`weights_dtype`): its input is cast once and no op is wrapped.
    """
    with torch.inference_mode():
        if dtype == torch.float32 or not autocast:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


def weights_dtype(dtype: torch.dtype, autocast: bool) -> torch.dtype:
    """The dtype an inference model's weights are kept in: ``dtype`` itself (cast once at load,
    no per-op copies), or float32 when ``autocast`` runs the ops in ``dtype`` instead."""
    return torch.float32 if autocast else dtype


def cpu_supports(dtype: torch.dtype) -> bool:
    """True when this CPU runs ``dtype`` natively in oneDNN (bf16: AVX512-BF16 or AMX; fp16:
    AVX512-FP16 or AMX-FP16); elsewhere torch falls back to slow reference kernels."""
    if dtype == torch.float32:
        return True
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    try:
        return bool(probe and torch.backends.mkldnn.is_available() and getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # a build without the probe
        return False


def slow_precision_warning(device: torch.device, dtype: torch.dtype) -> str | None:
    """A one-line warning when ``dtype`` on ``device`` is much slower than fp32 (a CPU without
    native kernels for it), else None."""
    if device.type != "cpu" or cpu_supports(dtype):
        return None
    name = dtype_name(dtype)
    return (f"{name} on the CPU without native {name} kernels (this one has none) is many times slower than fp32 "
            "and no more accurate; use {opt:precision} fp32")


class CudaMath(NamedTuple):
    """How CUDA computes for inference; see :func:`cuda_math`."""

    tf32: bool  # fp32 matrix products and convolutions on TF32 tensor cores (10-bit mantissa)
    cudnn_benchmark: bool  # cuDNN times its convolution algorithms once per shape and keeps the fastest


def cuda_math(device: torch.device, dtype: torch.dtype) -> CudaMath | None:
    """The CUDA math settings for inference on ``device`` in ``dtype``; None off CUDA (nothing to set).

    TF32 off, whatever ``dtype``: fp32 promises the official output within 1e-6, and TF32 rounds
    the inputs of every fp32 matrix product and convolution to a 10-bit mantissa (about 1e-3
    relative error each; torch's own default already does so for cuDNN convolutions). It only
    touches fp32 work, which in fp16/bf16 is the fp32 overflow fallback: kept true fp32 too.
    cuDNN benchmark on: input shapes are fixed (one resolution, one batch size), so the one-time
    search per shape pays off; it changes the algorithm, not the precision (results may differ
    in the last bits from another algorithm's, run to run they are the same per choice).
    """
    if device.type != "cuda":
        return None
    return CudaMath(tf32=False, cudnn_benchmark=True)


def configure_cuda_math(device: torch.device, dtype: torch.dtype) -> CudaMath | None:
    """Apply :func:`cuda_math` to this process's torch backends (global flags; nothing off CUDA).

    torch 2.9+ has ``fp32_precision`` (``"ieee"``/``"tf32"``) per backend and refuses mixing it with
    the older ``allow_tf32`` flags, so the newer one is used where it exists. Touches no CUDA context.
    """
    math = cuda_math(device, dtype)
    if math is None:
        return None
    precision = "tf32" if math.tf32 else "ieee"
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        matmul.fp32_precision = precision
        conv.fp32_precision = precision
    else:
        matmul.allow_tf32 = math.tf32
        torch.backends.cudnn.allow_tf32 = math.tf32
    torch.backends.cudnn.benchmark = math.cudnn_benchmark
    return math


COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def configure_compile_cache() -> str:
    """Point torch.compile's on-disk caches at ``<ben cache>/compile`` unless ``$TORCHINDUCTOR_CACHE_DIR``
    is set, and turn on inductor's FX graph cache and the AOTAutograd cache.

    A second run of the same model, shapes, dtype and torch version then loads the compiled
    kernels instead of compiling them (dynamo still traces the model: seconds, not minutes).
    torch writes its own default (``/tmp/torchinductor_<user>``) into the environment when
    ``torch._dynamo`` is imported, so that value counts as unset. Returns the cache folder.
    """
    import os

    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        torch_default = os.path.abspath(default_cache_dir())
    except ImportError:  # another torch layout: only an unset variable is ours to set
        torch_default = None
    current = os.environ.get(COMPILE_CACHE_ENV)
    if not current or os.path.abspath(current) == torch_default:
        from ben_cli.paths import cache_dir

        os.environ[COMPILE_CACHE_ENV] = str(cache_dir() / "compile")
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True  # both are torch's defaults; an explicit =0 in the environment wins
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True
    return os.environ[COMPILE_CACHE_ENV]


def compile_model(model: torch.nn.Module, device: torch.device, *,
                  cuda_graphs: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` an inference model for fixed input shapes, with the on-disk cache on.

    CUDA: mode ``reduce-overhead`` (inductor kernels replayed as CUDA graphs). A CUDA graph's
    outputs live in memory the next call overwrites, so the caller must clone what it keeps
    (:func:`uses_cuda_graphs`). Elsewhere, and with ``cuda_graphs=False`` (a model called from
    threads of its own: torch replays a CUDA graph only on the thread that set up its CUDA-graph
    trees, pytorch/pytorch#123177): the default mode. Shapes are static
    (``dynamic=False``): each batch shape compiles once, so callers pad to one batch size.
    ``fullgraph=True``: a graph break or the recompile limit raises (:func:`compile_fallbacks`)
    rather than running parts eagerly unnoticed.
    """
    configure_compile_cache()
    mode = "reduce-overhead" if cuda_graphs and uses_cuda_graphs(device) else None
    return torch.compile(model, dynamic=False, mode=mode, fullgraph=True)


def allow_recompiles(count: int) -> None:
    """Let dynamo keep at least ``count`` compiled graphs of one function (the model's ``forward``).

    Each replica is a module of its own and adds a graph (two with a stride variant); past the
    limit (8 by default) dynamo would silently run the function eagerly. Raised, never lowered.
    """
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, count)


def compile_disabled() -> bool:
    """True when torch.compile is switched off in this process (``TORCH_COMPILE_DISABLE=1``): a model
    compiled with ``fullgraph=True`` would then raise on its first call, having compiled nothing."""
    import torch._dynamo.config as dynamo_config

    return bool(dynamo_config.disable)


def compile_fallbacks() -> tuple[type[BaseException], ...]:
    """What a compiled model raises instead of running eagerly behind our back (it is compiled with
    ``fullgraph=True``): a graph break, or dynamo's recompile limit reached."""
    from torch._dynamo.exc import FailOnRecompileLimitHit, Unsupported

    return (FailOnRecompileLimitHit, Unsupported)


def uses_cuda_graphs(device: torch.device) -> bool:
    """True when :func:`compile_model` on ``device`` replays CUDA graphs (outputs overwritten by the next call)."""
    return device.type == "cuda"


def mark_compiled_step(device: torch.device) -> None:
    """Tell CUDA-graph trees that a new inference step starts (the previous outputs are no longer read)."""
    if uses_cuda_graphs(device):
        torch.compiler.cudagraph_mark_step_begin()


def resolve_train_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Training compute dtype: ``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere.

    Mixed precision in training is CUDA-only here: fp16/bf16 requested on another
    device is a UsageError (the CPU trains in fp32).
    """
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if device.type != "cuda":
        if precision in ("fp16", "bf16"):
            raise OptionError("precision", f"{{flag}} {precision} trains only on CUDA; use fp32 (or auto) on "
                              f"{device.type}")
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return resolve_dtype(precision, device)


def resolve_train_device(spec: str, local_rank: int) -> torch.device:
    """The device of one ``torchrun`` process: ``cuda:LOCAL_RANK`` (made the current CUDA device)
    when ``spec`` is ``auto`` or ``cuda`` and CUDA exists, else the CPU.

    A ``cuda:N`` spec is an OptionError (each process takes its own GPU), as is any device
    other than CUDA and the CPU (distributed training runs on those two).
    """
    spec = spec.strip().lower()
    if spec.startswith("cuda:"):
        raise OptionError("device", "under torchrun use {flag} cuda (or auto): each process takes cuda:LOCAL_RANK")
    if spec in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    device = resolve_device(spec if spec != "auto" else "cpu")
    if device.type != "cpu":
        raise OptionError("device", f"distributed training runs on CUDA or the CPU, not {device.type}")
    return device


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """This process's torch RNG states as tensors (``weights_only`` loadable): ``{"cpu": ..., "cuda": ...}``,
    ``cuda`` None unless ``device`` is a CUDA device."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: Mapping[str, torch.Tensor | None], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned (the CUDA state only on a CUDA ``device``)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast for a training forward pass (gradients allowed); a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def init_device_async(device: torch.device) -> threading.Thread | None:
    """Start making ``device``'s CUDA context in a background thread; None for other devices.

    Creating the context takes a good part of a second; started before the checkpoint is
    read and the network built, it overlaps with them (join the thread before moving the
    model). An error here is left to show again, with its message, where the model moves.
    """
    if device.type != "cuda":
        return None

    def init() -> None:
        with contextlib.suppress(Exception):
            torch.empty(1, device=device)

    thread = threading.Thread(target=init, name="ben-cuda-init", daemon=True)
    thread.start()
    return thread


@functools.cache
def keep_cpu_memory() -> bool:
    """Stop glibc from returning large freed blocks to the kernel (Linux, once per process).

    The CPU forward allocates and frees tensors of hundreds of MB; by default glibc
    serves each from a fresh ``mmap`` and unmaps it on free, so every forward pays
    millions of page faults (measured: 13 s of system time in a 29 s 1024x1024
    forward, 1 s with this). Raising the mmap and trim thresholds to 1 GiB keeps
    those blocks in the heap for reuse. Returns True when the setting was applied (cached: the
    first call decides).
    """
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
    return mallopt(m_mmap_threshold, 1 << 30) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1


def resolve_devices(spec: str = "auto") -> list[torch.device]:
    """The devices of ``--device``, one model replica each (at least one).

    ``auto`` or ``cuda`` with several visible GPUs: all of them (``cuda:0`` .. ``cuda:N-1``);
    a comma-separated list (``cuda:0,cuda:2``): those, in that order; a list of CPUs
    (``cpu,cpu``): as many replicas on the CPU, which share its cores (for tests and
    experiments). Anything else is ``[resolve_device(spec)]``. A GPU listed twice, an index
    that does not exist, ``auto`` or a bare ``cuda`` inside a list, and a list mixing
    device types are errors that name the device.
    """
    parts = [part.strip().lower() for part in str(spec).split(",")]
    if len(parts) == 1:
        if parts[0] in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        return [resolve_device(parts[0])]
    devices: list[torch.device] = []
    for part in parts:
        if part in ("", "auto", "cuda"):
            what = repr(part) if part else "an empty entry"
            raise UsageError(f"device list {spec!r}: name each device ({what} is not one; use e.g. cuda:0,cuda:1)")
        device = resolve_device(part)
        if devices and device.type != devices[0].type:
            raise UsageError(f"device list {spec!r} mixes {devices[0].type} and {device.type}: use one kind")
        if device.type != "cpu" and device in devices:
            raise UsageError(f"device {part!r} is listed twice in {spec!r}")
        devices.append(device)
    return devices


# --------------------------------------------------------------------------- measuring (ben bench)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA, MPS); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def gpu_name(device: torch.device) -> str | None:
    """The CUDA device's name (``NVIDIA H100 80GB HBM3``); None for any other device."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for :func:`peak_memory_allocated` (CUDA; a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_allocated(device: torch.device) -> int:
    """Bytes: the most torch had allocated on the CUDA device since :func:`reset_peak_memory`
    (weights included); 0 for any other device."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0


def release_cached_memory(device: torch.device) -> None:
    """Hand ``device``'s cached free blocks back to the driver (after an out-of-memory error, or for another
    process); a no-op off CUDA. Runs on ``device`` itself, whichever GPU is current."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.empty_cache()


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` this thread's current CUDA device for the block (a no-op elsewhere)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# --------------------------------------------------------------------------- ordering host and device work


def record_event(device: torch.device) -> torch.cuda.Event | None:
    """A CUDA event recorded on ``device``'s current stream (the work queued so far); None elsewhere,
    where work is done when the call that queued it returns."""
    return torch.cuda.current_stream(device).record_event() if device.type == "cuda" else None


def wait_event(event: torch.cuda.Event | None) -> None:
    """Block this host thread until the work before ``event`` is done (a no-op for None)."""
    if event is not None:
        event.synchronize()


def side_stream(device: torch.device) -> torch.cuda.Stream | None:
    """A CUDA stream of its own on ``device`` (work there overlaps the model's stream); None elsewhere."""
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def on_stream(stream: torch.cuda.Stream | None) -> contextlib.AbstractContextManager:
    """Make ``stream`` the current stream for the block (a no-op for None)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An empty host tensor for copies to and from ``device``: page-locked when it is a CUDA device
    (copies that do not block the host), ordinary memory elsewhere."""
    return torch.empty(shape, dtype=dtype, pin_memory=device.type == "cuda")
