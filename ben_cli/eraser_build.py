"""What an :class:`~ben_cli.pipeline.Eraser` is built from, loaded from :class:`InferenceOptions`.

:func:`load_parts` resolves the device and dtype, tunes the CPU allocator or CUDA's math, warns about a slow
precision, starts the CUDA context while the checkpoint is read, finds and reads the weights
and builds the refine stage (:func:`build_refiner`). It returns an :class:`EraserParts`;
:meth:`ben_cli.pipeline.Eraser.from_options` builds the Eraser from it (this module does not
import the pipeline: it sits below it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ben_cli.checkpoints import load as checkpoint_load  # looked up per call: tests patch read_checkpoint
from ben_cli.checkpoints.weights import find_refiner_weights, find_weights
from ben_cli.device import (
    configure_cuda_math,
    init_device_async,
    keep_cpu_memory,
    resolve_device,
    resolve_dtype,
    slow_precision_warning,
    weights_dtype,
)
from ben_cli.errors import BenWarning
from ben_cli.models.registry import MODELS
from ben_cli.options import InferenceOptions
from ben_cli.refine import RefineStage, get_refiner
from ben_cli.version import __version__


@dataclass(frozen=True)
class EraserParts:
    """The loaded model and the Eraser's settings, named as :class:`~ben_cli.pipeline.Eraser` takes them.

    ``model``: the network on ``device``, weights in the dtype kept (``dtype``, or float32 under
    ``autocast``); ``settings``: what the run's report records besides the Eraser's own
    (``model``, ``weights``, ``version``).
    """

    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    resolution: int
    compile: bool
    batch_size: int
    refiner: RefineStage
    max_refine_side: int | None
    settings: dict[str, Any]
    autocast: bool


def resolve_options(options: InferenceOptions | str | Path | None = None, **changes: Any) -> InferenceOptions:
    """``options`` (or a weights path, or the defaults) with ``changes`` applied."""
    if isinstance(options, (str, Path)):
        options, changes = None, {"weights": Path(options), **changes}
    options = options or InferenceOptions()
    return options.replace(**changes) if changes else options


def load_parts(options: InferenceOptions, *, stacklevel: int = 2) -> EraserParts:
    """Resolve device, dtype and weights (search or download) and load the model and the refiner.

    ``stacklevel``: of the slow-precision warning, counted from the caller of this function.
    """
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.precision.value, device)
    if device.type == "cpu":
        keep_cpu_memory()
    configure_cuda_math(device, dtype)  # true fp32, cuDNN benchmark (nothing off CUDA)
    slow = slow_precision_warning(device, dtype)
    if slow:
        warnings.warn(slow, BenWarning, stacklevel=stacklevel + 1)
    warming = init_device_async(device)  # the CUDA context is made while the checkpoint is read
    path = find_weights(options.weights, model=options.model)
    if path.suffix.lower() == ".onnx":
        if warming is not None:
            warming.join()
        return onnx_parts(options, path, device, build_refiner(options, device))
    net = checkpoint_load.build_from_checkpoint(checkpoint_load.read_checkpoint(path), options.model, str(path),
                                                expect_model=options.model if options.model_given else None)
    if warming is not None:
        warming.join()
    net = net.to(device=device, dtype=weights_dtype(dtype, options.autocast))  # ours: cast in place, no copy
    settings = {"model": model_name(net, options.model), "weights": str(path), "version": __version__}
    return EraserParts(model=net, device=device, dtype=dtype, resolution=options.resolution,
                       compile=options.compile, batch_size=options.batch_size_for(device.type),
                       refiner=build_refiner(options, device), max_refine_side=options.max_refine_side,
                       settings=settings, autocast=options.autocast)


def onnx_parts(options: InferenceOptions, path: Path, device: torch.device, refiner: RefineStage) -> EraserParts:
    """The parts of an Eraser whose base is the ONNX graph at ``path`` (:class:`~ben_cli.models.onnx_base.OnnxBase`,
    run by ONNX Runtime; everything after the base as for a checkpoint).

    The graph fixes the side (the default ``resolution`` becomes the graph's; another one given is an
    OptionError) and the precision (fp32 compute around it); ``compile`` and ``autocast`` do not apply.
    """
    from ben_cli.errors import OptionError
    from ben_cli.models.onnx_base import OnnxBase

    if options.compile:
        raise OptionError("compile", "compiles the PyTorch model; an ONNX graph runs in ONNX Runtime as exported")
    if options.autocast:
        raise OptionError("autocast", "applies to the PyTorch model; an ONNX graph runs in its exported precision")
    net = OnnxBase.load(path, device)
    graph = net.config
    if options.resolution_given and options.resolution != graph.resolution:
        raise OptionError("resolution", f"{path.name} is a graph of {graph.resolution}x{graph.resolution} inputs, "
                                        f"not {options.resolution}: leave {{opt:resolution}} out, or export "
                                        f"another with ben export onnx --resolution {options.resolution}")
    if options.precision.value not in ("auto", "fp32", graph.precision):
        raise OptionError("precision", f"{path.name} is an {graph.precision} graph: its precision was fixed "
                                       f"at export (ben export onnx --precision)")
    settings = {"model": graph.model, "weights": str(path), "version": __version__, "runtime": "onnxruntime",
                "graph_precision": graph.precision}
    return EraserParts(model=net, device=device, dtype=torch.float32, resolution=graph.resolution, compile=False,
                       batch_size=options.batch_size_for(device.type), refiner=refiner,
                       max_refine_side=options.max_refine_side, settings=settings, autocast=False)


def build_refiner(options: InferenceOptions, device: torch.device | None = None) -> RefineStage:
    """The refine stage that ``options.refiner`` resolves to.

    ``auto``: the network when its weights are found, else ``matting`` (it beats the
    base probability on every error of ``scripts/bench_refiner.py``). ``net``
    without weights is an error that says how to get them.
    """
    name = options.refiner.value
    if name in ("auto", "net"):
        weights = find_refiner_weights(options.refiner_weights, required=name == "net")
        if weights is not None:
            return get_refiner("net", weights=weights, device=device)
        name = "matting"
    return get_refiner(name, device=device)


def model_name(model: torch.nn.Module, requested: str) -> str:
    """The registry name whose configuration the loaded model has (``custom`` for none)."""
    config = getattr(model, "config", None)
    if config is None or MODELS[requested].config == config:
        return requested
    return next((name for name, entry in MODELS.items() if entry.config == config), "custom")


__all__ = ["EraserParts", "build_refiner", "load_parts", "model_name", "onnx_parts", "resolve_options"]
