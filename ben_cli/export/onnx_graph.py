"""BEN Base as an ONNX graph with a dynamic batch: export, and its comparison with the PyTorch model.

The graph (the contract :class:`ben_cli.models.onnx_base.OnnxBase` runs):

- input ``image``: uint8 (B, 3, S, S) RGB in [0, 255], B dynamic, S fixed at export (``resolution``);
  the image resized to S x S as ``ben erase`` does (:func:`ben_cli.resize.resize_for_model`);
- inside: ``x = image / 255`` in float32, ``(x - mean) / std`` with the model's constants (ImageNet's
  for BEN2), cast to the graph's precision, BEN Base, the sigmoid in float32;
- output ``prob``: float32 (B, 1, S, S) in [0, 1];
- metadata (:data:`~ben_cli.models.onnx_base.METADATA_KEYS`): model, side, precision, ben version,
  the source checkpoint's file name and sha256, the input and output layout, mean and std.

The network is exported as it is, with torch's dynamo exporter (``torch.onnx.export(dynamo=True)``):
every part of it is already batched and free of data-dependent shapes (the Swin gather plans and
MCLM's position embeddings are built for S by ``BenBase.prepare`` and become constants), so nothing is
rewritten for the export. ``optimize``: onnxscript's optimizer (constant folding, dead nodes), part of
the exporter. ``onnx``, ``onnxscript`` and ``onnxruntime`` are the extra ``ben_cli[onnx]``, imported here
on first use.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ben_cli.errors import BenWarning, OptionError, UsageError, install_hint
from ben_cli.io import file_sha256
from ben_cli.models.onnx_base import INPUT_NAME, OUTPUT_NAME, OnnxBase
from ben_cli.version import __version__

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
DEFAULT_OPSET = 18
MIN_OPSET = 17
MAX_BATCH = 1024  # the batch axis' upper bound declared to the exporter (any batch up to it runs)
INPUT_LAYOUT = "image: uint8 (B, 3, S, S) RGB 0-255, B dynamic, S = ben_resolution; normalisation inside"
OUTPUT_LAYOUT = "prob: float32 (B, 1, S, S) in [0, 1], the sigmoid inside"


class GraphModule(nn.Module):
    """What is exported: uint8 (B, 3, S, S) RGB -> probabilities (B, 1, S, S) float32, around ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # float32 whatever the model's precision; named apart from the network's values (an initializer
        # "mean" beside a node output "mean" breaks the graph's single assignment without the optimizer)
        self.register_buffer("image_mean", torch.tensor(model.config.mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(model.config.std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32) / 255.0
        x = (x - self.image_mean) / self.image_std
        return torch.sigmoid(self.model(x.to(self.model.dtype)).float())


@dataclass(frozen=True)
class ExportResult:
    """One export: where, how long (seconds), how large (bytes), how many nodes, the metadata and the opset."""

    path: Path
    seconds: float
    size: int
    nodes: int
    metadata: dict[str, str]
    opset: int  # the graph's opset as written (the exporter keeps 18 where it cannot convert to a lower one)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"ben export onnx needs {module}, which is not installed: {install_hint('onnx')}") from None


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """``logger``'s warnings off for the block (onnxscript's optimizer warns once per node it does not fold)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def check_export_options(resolution: int, precision: str, opset: int) -> None:
    """OptionError for a side, precision or opset this export cannot make."""
    from ben_cli.options import check_resolution

    check_resolution(resolution)
    if precision not in PRECISIONS:
        raise OptionError("precision", f"an ONNX graph is exported in fp32 or fp16, not {precision!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise OptionError("opset", f"must be at least {MIN_OPSET} (torch's exporter writes {DEFAULT_OPSET} and "
                                   f"later, and converts down where it can), got {opset}")


def graph_model(model: nn.Module, resolution: int, precision: str = "fp32") -> GraphModule:
    """``model`` (BEN Base) ready to export: an inference copy in ``precision`` on the CPU, its constants
    for (resolution, resolution) inputs built (:meth:`ben_cli.models.ben.BenBase.prepare`)."""
    from ben_cli.models.replica import inference_copy

    net = inference_copy(model.for_inference(), torch.device("cpu"), PRECISIONS[precision])
    return GraphModule(net.prepare(resolution)).eval()


def export_model(model: nn.Module, path: str | Path, *, resolution: int, precision: str = "fp32",
                 opset: int = DEFAULT_OPSET, metadata: dict[str, str] | None = None,
                 optimize: bool = True) -> ExportResult:
    """Export ``model`` (BEN Base) to the ONNX file ``path`` (one file, weights inside), check it with
    ``onnx.checker`` and return what was written. ``metadata``: extra entries (model name, weights)."""
    check_export_options(resolution, precision, opset)
    onnx = _require("onnx")
    _require("onnxscript")
    path = Path(path)
    start = time.perf_counter()
    graph = graph_model(model, resolution, precision)
    example = torch.randint(0, 256, (2, 3, resolution, resolution), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad(), warnings.catch_warnings(), _quiet("onnxscript"), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes={"image": {0: batch}}, opset_version=opset, dynamo=True,
                                    optimize=optimize, verbose=False)
    config = model.config
    meta = {"ben_model": "custom", "ben_resolution": str(resolution), "ben_precision": precision,
            "ben_version": __version__, "ben_input": INPUT_LAYOUT, "ben_output": OUTPUT_LAYOUT,
            "ben_mean": ",".join(repr(float(v)) for v in config.mean),
            "ben_std": ",".join(repr(float(v)) for v in config.std), **(metadata or {})}
    program.model.metadata_props.update(meta)
    program.model.producer_name, program.model.producer_version = "ben", __version__
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    written = onnx.load(str(path), load_external_data=False)
    got = next((o.version for o in written.opset_import if o.domain in ("", "ai.onnx")), opset)
    if got != opset:
        warnings.warn(f"{{opt:opset}} {opset}: torch's exporter could not convert the graph to it and wrote "
                      f"opset {got}", BenWarning, stacklevel=2)
    return ExportResult(path, time.perf_counter() - start, path.stat().st_size, len(written.graph.node), meta, got)


def load_base(weights: Path | None, model: str, model_given: bool) -> tuple[nn.Module, Path, str]:
    """The BEN Base network of a checkpoint ``ben`` loads (found as ``ben erase`` finds it), the file,
    and its registry name (``custom`` for a config no registry model has)."""
    from ben_cli.checkpoints.load import build_from_checkpoint, read_checkpoint
    from ben_cli.checkpoints.weights import find_weights
    from ben_cli.errors import CheckpointError
    from ben_cli.models.registry import MODELS

    path = find_weights(weights, model=model)
    ckpt = read_checkpoint(path)
    if ckpt.arch != "base":
        raise CheckpointError(f"{path}: holds a {ckpt.arch!r} network; ben export onnx exports BEN Base")
    net = build_from_checkpoint(ckpt, model, str(path), expect_model=model if model_given else None)
    name = next((n for n, e in MODELS.items() if e.config == net.config), "custom")
    return net, path, name


def export_checkpoint(out: str | Path, *, weights: Path | None = None, model: str = "ben2-base",
                      model_given: bool = False, resolution: int = 1024, precision: str = "fp32",
                      opset: int = DEFAULT_OPSET, optimize: bool = True) -> tuple[ExportResult, nn.Module]:
    """``ben export onnx``: the checkpoint's BEN Base to ``out``; returns the result and the network (float32)."""
    check_export_options(resolution, precision, opset)
    if Path(out).suffix != ".onnx":
        raise UsageError(f"OUT must end in .onnx: {out}")
    net, path, name = load_base(weights, model, model_given)
    meta = {"ben_model": name, "ben_weights": path.name, "ben_weights_sha256": file_sha256(path)}
    return export_model(net, out, resolution=resolution, precision=precision, opset=opset, metadata=meta,
                        optimize=optimize), net


@dataclass(frozen=True)
class Comparison:
    """The graph against the PyTorch model: the worst |p_onnx - p_torch| over every pixel, per batch size."""

    worst: float
    by_batch: dict[int, float]
    images: int


def check_images(sources: Sequence[str | Path], side: int, count: int = 3, seed: int = 0) -> np.ndarray:
    """(N, 3, side, side) uint8: the given images resized as ``ben erase`` does, or ``count`` generated ones
    (smooth random colour fields with a few sharp disks: soft and hard edges)."""
    from ben_cli.io.read import read_image
    from ben_cli.resize import resize_for_model

    if sources:
        return np.stack([resize_for_model(read_image(s).rgb, side).transpose(2, 0, 1) for s in sources])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    out = []
    for _ in range(count):
        img = np.stack([np.sin(rng.uniform(1, 9) * xx + rng.uniform(1, 9) * yy + rng.uniform(0, 6))
                        for _ in range(3)]) * 80 + 128
        for _ in range(3):
            (cy, cx), r = rng.uniform(0.2, 0.8, 2), rng.uniform(0.05, 0.25)
            img[:, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, (3, 1))
        out.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
    return np.stack(out)


def compare(graph_path: str | Path, model: nn.Module, images: np.ndarray,
            batches: Sequence[int] = (1, 3)) -> Comparison:
    """Run ``images`` (N, 3, S, S) uint8 through the graph in batches of each size of ``batches`` (one
    session) and through ``model`` in float32 (one batch), and return the worst difference of the
    probabilities."""
    base = OnnxBase.load(graph_path)
    if images.shape[-1] != base.resolution:
        raise OptionError("resolution", f"the graph takes {base.resolution}x{base.resolution} inputs, "
                                        f"the images are {images.shape[-1]}x{images.shape[-2]}")
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    with torch.no_grad():
        reference = graph_model(model, base.resolution, "fp32")(tensor)
    by_batch = {}
    for b in batches:
        parts = [base.probabilities(tensor[i : i + b]) for i in range(0, len(tensor), b)]
        by_batch[b] = float((torch.cat(parts) - reference).abs().max())
    return Comparison(max(by_batch.values()), by_batch, len(tensor))


__all__ = ["DEFAULT_OPSET", "Comparison", "ExportResult", "GraphModule", "check_images", "compare",
           "export_checkpoint", "export_model", "file_sha256", "graph_model", "load_base"]
