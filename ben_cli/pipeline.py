"""The Eraser: BEN Base -> confidence trimap -> refiner, on batches of images.

Owns the model, the device and the dtype. Images in and out are numpy arrays
(uint8 RGB, any size); everything between runs batched on the device:
resize to the model side (Lanczos, as the official pipeline), normalise,
forward, sigmoid, bring the alpha back to each image's own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ben_cli.compose import alpha_to_uint8, resize_alpha
from ben_cli.config import TrimapConfig
from ben_cli.device import inference_context, resolve_device, resolve_dtype
from ben_cli.errors import UsageError
from ben_cli.trimap import confidence_trimap

REFINERS = ("auto", "net", "matting", "none")


def resize_for_model(rgb: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (side, side, 3) uint8 with Pillow's Lanczos (the official resize)."""
    if rgb.shape[:2] == (side, side):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((side, side), resample=Image.Resampling.LANCZOS))


@dataclass
class Prediction:
    """Per-image results at the image's own size: alpha (H, W) uint8, trimap (H, W) uint8 or None."""

    alpha: np.ndarray
    trimap: np.ndarray | None = None


def check_resolution(resolution: int) -> int:
    if resolution < 256 or resolution % 128:
        raise UsageError(f"--resolution must be a multiple of 128 and at least 256, got {resolution}")
    return resolution


def check_refiner(refiner: str, refiner_weights: str | Path | None = None) -> str:
    """The refiner to use; only ``none`` exists until the refiner lands (``auto`` means none)."""
    if refiner not in REFINERS:
        raise UsageError(f"unknown refiner {refiner!r} (use {', '.join(REFINERS)})")
    if refiner in ("net", "matting") or refiner_weights is not None:
        raise UsageError(f"refiner {refiner!r} is not available in this version; use --refiner none")
    return "none"


class Eraser:
    """Batched inference: ``predict(images)`` -> one :class:`Prediction` per image."""

    def __init__(self, model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype,
                 resolution: int = 1024, trimap: TrimapConfig | None = None, compile: bool = False,
                 batch_size: int = 1) -> None:
        self.model = model.eval().to(device)
        self.device, self.dtype = device, dtype
        self.resolution = check_resolution(resolution)
        self.trimap_cfg = trimap or TrimapConfig()
        # torch.compile (inductor) fuses the elementwise work; it compiles once per
        # batch shape, so batches are padded to ``batch_size`` when it is on.
        self.batch_size = batch_size
        self.compiled = compile
        self._forward = torch.compile(self.model, dynamic=False) if compile else self.model

    @classmethod
    def from_options(cls, weights: str | Path | None = None, *, device: str = "auto", precision: str = "auto",
                     resolution: int = 1024, batch_size: int = 1, refiner: str = "none",
                     refiner_weights: str | Path | None = None, model: str | None = None,
                     compile: bool = False) -> Eraser:
        """Resolve device, dtype and weights (search/download) and load the model."""
        from ben_cli.checkpoints.load import build_from_checkpoint, read_checkpoint
        from ben_cli.checkpoints.weights import find_weights

        check_resolution(resolution)
        check_refiner(refiner, refiner_weights)
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        dev = resolve_device(device)
        dtype = resolve_dtype(precision, dev)
        path = find_weights(weights)
        net = build_from_checkpoint(read_checkpoint(path), model, str(path))
        return cls(net, device=dev, dtype=dtype, resolution=resolution, compile=compile, batch_size=batch_size)

    def to_batch(self, resized: Sequence[np.ndarray]) -> torch.Tensor:
        """Model-side uint8 images (S, S, 3) -> normalised (B, 3, S, S) float32 on the device."""
        x = torch.from_numpy(np.stack(resized)).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return self.model.normalize(x)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> base logits (B, 1, S, S) float32."""
        n = batch.shape[0]
        if self.compiled and n < self.batch_size:  # keep one shape: no recompilation for the last batch
            batch = torch.cat([batch, batch.new_zeros(self.batch_size - n, *batch.shape[1:])])
        with inference_context(self.device, self.dtype):
            return self._forward(batch)[:n].float()

    def _logits_for(self, images: Sequence[np.ndarray], resized: Sequence[np.ndarray] | None = None
                    ) -> torch.Tensor:
        """Images (H, W, 3) uint8 (or their model-side versions) -> logits (B, 1, S, S) float32."""
        if resized is None:
            resized = [resize_for_model(im, self.resolution) for im in images]
        return self.logits(self.to_batch(resized))

    def predict(self, images: Sequence[np.ndarray], *, resized: Sequence[np.ndarray] | None = None,
                want_trimap: bool = False) -> list[Prediction]:
        """RGB uint8 images (H, W, 3) of any sizes -> alpha (and trimap) at each image's size.

        ``resized``: the same images already at the model side (the batch runner
        resizes in its reader threads).
        """
        if not images:
            return []
        logits = self._logits_for(images, resized)
        prob = torch.sigmoid(logits)
        trimaps = None
        if want_trimap:
            c = self.trimap_cfg
            trimaps = confidence_trimap(logits, min_gray=c.min_gray, t_low=c.t_low, t_high=c.t_high,
                                        t_min=c.t_min, t_max=c.t_max, step=c.step)
        out = []
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            alpha = alpha_to_uint8(resize_alpha(prob[i : i + 1], (h, w)))[0, 0]
            tri = None
            if trimaps is not None:
                tri = torch.nn.functional.interpolate(trimaps[i : i + 1].float(), size=(h, w), mode="nearest")
                tri = tri.to(torch.uint8)[0, 0].cpu().numpy()
            out.append(Prediction(alpha.cpu().numpy(), tri))
        return out

    def predict_alpha(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """RGB uint8 images -> float32 alpha (H, W) in [0, 1] at each image's size (for evaluation)."""
        prob = torch.sigmoid(self._logits_for(images))
        return [resize_alpha(prob[i : i + 1], im.shape[:2])[0, 0].cpu().numpy() for i, im in enumerate(images)]
