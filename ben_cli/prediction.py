"""What the Eraser gives back for one image (:class:`Prediction`), and how a batch's results travel to the
host together: packed as uint8 parts (:func:`result_parts`) for one download, unpacked by :func:`predictions`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ben_cli.compose import alpha_to_uint8
from ben_cli.staging import Download


@dataclass
class Prediction:
    """One image's result at its own size (H, W).

    ``alpha``: uint8 in [0, 255], the refined matte; ``trimap``: uint8 {0, 128, 255}
    or None when not asked for; ``refiner``: the refiner that produced ``alpha``;
    ``foreground``: the cutout's colours (H, W, 3) uint8 with decontamination already done
    (:class:`ben_cli.output.BatchFinisher`), or None (the writer does it).
    """

    alpha: np.ndarray
    trimap: np.ndarray | None = None
    refiner: str = "none"
    foreground: np.ndarray | None = None


@dataclass
class Flight:
    """A batch whose device work is queued (:meth:`ben_cli.pipeline.Eraser.launch`); ``Eraser.collect``
    waits for it once.

    ``rgb``: the batch at the working side on the device (B, 3, S, S) float in [0, 1], kept for the fp32
    rerun of a batch whose fp16 forward overflowed; ``download``: :func:`result_parts` on their way to
    the host."""

    images: Sequence[np.ndarray]
    resized: Sequence[np.ndarray]
    want_trimap: bool
    rgb: torch.Tensor
    download: Download


def result_parts(alphas: Sequence[torch.Tensor], trimap: torch.Tensor | None, sizes: Sequence[tuple[int, int]],
                 overflowed: torch.Tensor | None) -> list[torch.Tensor]:
    """A batch's results as uint8 tensors on its device, for one download.

    Args:
        alphas: per image (1, 1, H, W) float in [0, 1], at each image's size.
        trimap: (B, 1, S, S) uint8 {0, 128, 255} at the working side, or None.
        sizes: each image's (H, W).
        overflowed: () bool, True when the fp16 forward overflowed, or None.

    Returns:
        per image its alpha (H, W) uint8 (``round(p * 255)``), then with ``trimap`` its trimap (H, W)
        (nearest resize); last the overflow flag (1,) uint8.
    """
    parts = []
    for i, (h, w) in enumerate(sizes):
        parts.append(alpha_to_uint8(alphas[i])[0, 0])
        if trimap is not None:
            parts.append(F.interpolate(trimap[i : i + 1].float(), size=(h, w), mode="nearest").to(torch.uint8)[0, 0])
    device = alphas[0].device if alphas else torch.device("cpu")
    flag = overflowed if overflowed is not None else torch.zeros((), dtype=torch.bool, device=device)
    parts.append(flag.view(1).to(torch.uint8))
    return parts


def predictions(arrays: Sequence[np.ndarray], with_trimap: bool, refiner: str) -> list[Prediction]:
    """:func:`result_parts` as host arrays (the flag last, dropped) -> one :class:`Prediction` per image."""
    images = arrays[:-1]
    step = 2 if with_trimap else 1
    return [Prediction(images[i], images[i + 1] if with_trimap else None, refiner)
            for i in range(0, len(images), step)]


__all__ = ["Flight", "Prediction", "predictions", "result_parts"]
