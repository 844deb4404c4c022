"""``net``: the refiner network (:mod:`ben_cli.models.refiner`) as a refine stage.

``get_refiner("net", weights=PATH, device=...)`` loads a checkpoint written by
``ben train refiner`` (our format: arch ``"refiner"`` and its configuration in
the file) and returns a :class:`NetRefiner`. The weights are searched like the
base's (:func:`ben_cli.checkpoints.weights.find_refiner_weights`); there are no
official refiner weights to download, so without a file this is a
:class:`~ben_cli.errors.WeightsNotFoundError` (exit 2) saying how to train them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ben_cli.errors import CheckpointError
from ben_cli.models.replica import copy_to_device


class NetRefiner:
    """The refiner network behind the :class:`~ben_cli.refine.RefineStage` call.

    Runs the network on its own device under ``inference_mode`` (and autocast to
    ``dtype`` unless fp32), clamps its alpha to [0, 1] and imposes the trimap's
    known pixels; the result goes back to the inputs' device.

    ``full_resolution``: whether the Eraser may refine an image larger than the working
    side at its own resolution (tile by tile). Only a network trained on such crops
    (``ben train refiner --zoom-prob P``, P > 0) has seen them; otherwise it refines at the
    working side and the alpha is upsampled.
    """

    name = "net"
    needs_trimap = True
    halo = None  # the context path attends to the whole input: no finite margin makes a tile exact

    def __init__(self, model: torch.nn.Module, *, dtype: torch.dtype = torch.float32, source: str = "",
                 full_resolution: bool = False) -> None:
        self.model = model.eval()
        self.dtype = dtype
        self.source = source
        self.full_resolution = full_resolution

    @property
    def alignment(self) -> int:
        """Tile corners on multiples of the network's stride keep its downsampling grid."""
        return int(getattr(self.model, "stride", 1))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def replicate(self, device: torch.device) -> NetRefiner:
        """A copy whose network is copied to ``device`` (:meth:`ben_cli.refine.RefineStage.replicate`);
        the same dtype, source and ``full_resolution``."""
        return NetRefiner(copy_to_device(self.model, device), dtype=self.dtype, source=self.source,
                          full_resolution=self.full_resolution)

    def __call__(self, image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor | None) -> torch.Tensor:
        """See :class:`ben_cli.refine.RefineStage`: (B, 3, H, W), (B, 1, H, W), (B, 1, H, W) uint8
        -> alpha (B, 1, H, W) float32 in [0, 1], exactly 0/1 on the trimap's known pixels."""
        from ben_cli.device import inference_context
        from ben_cli.refine import check_inputs, clamp_known

        image, prob, trimap = check_inputs(image, prob, trimap)
        where, device = image.device, self.device
        trimap_d = trimap.to(device)
        with inference_context(device, self.dtype):
            alpha = self.model(image.to(device), prob.to(device), trimap_d)
        return clamp_known(alpha, trimap_d).to(where)


def load_net_refiner(weights: str | Path | None = None, *, device: Any = None,
                     precision: str = "auto") -> NetRefiner:
    """The ``net`` refine stage from a refiner checkpoint.

    Args:
        weights: a checkpoint file or a folder holding one (see
            :func:`~ben_cli.checkpoints.weights.find_refiner_weights`); ``None`` searches
            ``$BEN_REFINER_WEIGHTS``, ``./weights/`` and the cache.
        device: where the network runs (a ``torch.device`` or a spec such as ``"cuda"``; default CPU).
        precision: ``auto`` (fp16 on CUDA and MPS, fp32 on the CPU), ``fp32``, ``fp16`` or ``bf16``.

    Raises:
        WeightsNotFoundError: no weights found (the message says how to train them).
        CheckpointError: the file is not a refiner checkpoint, or does not fit its network.
    """
    from ben_cli.checkpoints.load import build_from_checkpoint, read_checkpoint
    from ben_cli.checkpoints.weights import find_refiner_weights
    from ben_cli.device import resolve_device, resolve_dtype

    path = Path(find_refiner_weights(weights, required=True))  # required: a path or an error
    ckpt = read_checkpoint(path)
    if ckpt.arch != "refiner":
        raise CheckpointError(f"{path}: holds a {ckpt.arch!r} network, not a refiner; pass the checkpoint "
                              "that `ben train refiner` wrote (RUN/best.safetensors)")
    dev = device if isinstance(device, torch.device) else resolve_device(str(device or "cpu"))
    model = build_from_checkpoint(ckpt, source=str(path)).to(dev)
    trained = ckpt.metadata.get("train_config")
    zoom = float(trained.get("zoom_prob", 0) or 0) if isinstance(trained, dict) else 0.0
    return NetRefiner(model, dtype=resolve_dtype(precision, dev), source=str(path), full_resolution=zoom > 0)


__all__ = ["NetRefiner", "load_net_refiner"]
