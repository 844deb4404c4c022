"""BEN Base as an exported ONNX graph, run by ONNX Runtime in the Eraser's place of the network.

The graph's contract (written by :mod:`ben_cli.export.onnx_graph`): input ``image`` uint8
(B, 3, S, S) RGB in [0, 255], batch dynamic, S fixed at export; the normalisation is inside;
output ``prob`` float32 (B, 1, S, S) in [0, 1] (the sigmoid is inside). The graph's metadata
(:data:`METADATA_KEYS`) name the model, the side, the precision and the source checkpoint.

:class:`OnnxBase` fits the :class:`~ben_cli.pipeline.Eraser` without a branch there: its ``config``
declares an identity normalisation (mean 0, std 1: the Eraser hands the RGB in [0, 1] as it is),
and :meth:`OnnxBase.forward` returns the logits of the graph's probabilities (``logit(p)``, which
the Eraser's sigmoid turns back into ``p`` within one float32 rounding), so trimap, refiner and
outputs run as for the PyTorch network. ``onnxruntime`` is the optional extra ``ben_cli[onnx]``,
imported only here, when a graph is opened.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ben_cli.errors import BenWarning, CheckpointError, UsageError, install_hint

INPUT_NAME, OUTPUT_NAME = "image", "prob"
METADATA_KEYS = ("ben_model", "ben_resolution", "ben_precision", "ben_version", "ben_weights",
                 "ben_weights_sha256", "ben_input", "ben_output", "ben_mean", "ben_std")
"""The metadata entries every exported graph carries (strings; ``ben_resolution`` an integer's digits)."""


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a UsageError that names the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"ONNX graphs run with ONNX Runtime, which is not installed: {install_hint('onnx')}") from None
    return onnxruntime


def providers_for(device: torch.device, available: list[str]) -> list[str]:
    """ONNX Runtime's execution providers for ``device``: on CUDA, TensorRT then CUDA where
    ``available`` holds them, then the CPU; elsewhere the CPU alone."""
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if device.type == "cuda" else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


@dataclass(frozen=True)
class GraphContract:
    """What an ONNX graph of BEN Base says about itself, and the normalisation the Eraser applies before it.

    ``mean``/``std``: the identity (the graph normalises inside); ``graph_mean``/``graph_std``: the
    constants inside the graph; ``metadata``: every metadata entry of the file.
    """

    resolution: int
    model: str = "custom"
    precision: str = "fp32"
    graph_mean: tuple[float, ...] = ()
    graph_std: tuple[float, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)


def _floats(text: str | None) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",")) if text else ()


def contract_of(session: Any, path: Path) -> GraphContract:
    """The contract of an open session's graph: CheckpointError when its input and output are not
    ``image`` uint8 (B, 3, S, S) and ``prob`` (B, 1, S, S)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(inputs[0].shape) if len(inputs) == 1 else []
    if (len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(uint8)" or len(shape) != 4
            or shape[1] != 3 or not isinstance(shape[2], int) or shape[2] != shape[3]
            or len(outputs) != 1 or outputs[0].name != OUTPUT_NAME):
        found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise CheckpointError(f"{path}: not a BEN Base graph of `ben export onnx` (it needs one input "
                              f"'{INPUT_NAME}' uint8 (B, 3, S, S) and one output '{OUTPUT_NAME}'; it has {found})")
    meta = dict(session.get_modelmeta().custom_metadata_map)
    return GraphContract(resolution=shape[2], model=meta.get("ben_model", "custom"),
                         precision=meta.get("ben_precision", "fp32"), graph_mean=_floats(meta.get("ben_mean")),
                         graph_std=_floats(meta.get("ben_std")), metadata=meta)


def open_session(path: str | Path, device: torch.device | str = "cpu", threads: int | None = None) -> Any:
    """An ONNX Runtime session of the graph at ``path`` on ``device``'s providers, ``threads`` intra-op
    threads (default: torch's). CheckpointError (one line) for a file that is not an ONNX model."""
    ort = import_onnxruntime()
    path, device = Path(path), torch.device(device)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only: the graph's own warnings are not the user's
    providers = providers_for(device, ort.get_available_providers())
    if device.type == "cuda" and len(providers) == 1:
        warnings.warn(f"the installed onnxruntime has no CUDA provider (onnxruntime-gpu has): {path.name} runs "
                      "on the CPU, the rest of the pipeline on the GPU", BenWarning, stacklevel=3)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... for a damaged or foreign file
        reason = " ".join(str(e).split())[:160]
        raise CheckpointError(f"{path}: not an ONNX model ONNX Runtime can load "
                              f"({type(e).__name__}: {reason})") from None


class OnnxBase(nn.Module):
    """BEN Base run by ONNX Runtime: ``forward(rgb)`` (B, 3, S, S) float in [0, 1] -> logits (B, 1, S, S)
    float32 on ``rgb``'s device.

    The input is rounded back to the uint8 it came from (``Eraser.preprocess`` divides uint8 by 255,
    so this is exact), fed to the graph on the host, and the graph's probabilities come back as
    ``logit(p)``. No parameters: ``.to()`` moves nothing, and copies share the session (ONNX Runtime
    runs one session from several threads).
    """

    def __init__(self, session: Any, contract: GraphContract) -> None:
        super().__init__()
        self.session = session
        self.config = contract

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", threads: int | None = None) -> OnnxBase:
        """Open the graph at ``path`` (:func:`open_session`) and read its contract (:func:`contract_of`)."""
        session = open_session(path, device, threads)
        return cls(session, contract_of(session, Path(path)))

    @property
    def resolution(self) -> int:
        return self.config.resolution

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxBase:
        return type(self)(self.session, self.config)

    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> the graph's ``prob`` (B, 1, S, S) float32 on the host."""
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: image.detach().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        image = rgb.float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return torch.logit(self.probabilities(image)).to(rgb.device)


__all__ = ["INPUT_NAME", "METADATA_KEYS", "OUTPUT_NAME", "GraphContract", "OnnxBase", "contract_of",
           "import_onnxruntime", "open_session", "providers_for"]
