"""Validation of ``ben train refiner``: gray-band matting errors of the refiner and of the base alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ben_cli.train.refiner_data import RefinerDataset
from ben_cli.train.refiner_step import known_alpha, refiner_forward
from ben_cli.train.runtime import Runtime, gather_objects


def band_errors(alpha: np.ndarray, gt: np.ndarray, band: np.ndarray) -> dict[str, float]:
    """SAD, MSE and gradient errors (:mod:`ben_cli.refine.metrics`) and the mean absolute error over ``band``."""
    from ben_cli.refine.metrics import gradient_error, mse, sad

    n = int(band.sum())
    return {"sad": sad(alpha, gt, band), "mse": mse(alpha, gt, band), "grad": gradient_error(alpha, gt, band),
            "mae": sad(alpha, gt, band) * 1000 / n if n else 0.0}


class RefinerValidator:
    """Gray-band matting errors of the refiner and of ``none`` (the base probability) on the
    validation pairs, at the working side, sharded over ranks; rank 0 gets the means.

    Metrics: ``sad``, ``mse``, ``grad``, ``mae`` of the refiner, and ``none_sad``, ... of the base.
    """

    def __init__(self, dataset: RefinerDataset, dtype: torch.dtype, batch_size: int = 1) -> None:
        self.dataset, self.dtype, self.batch_size = dataset, dtype, max(1, batch_size)

    def __call__(self, model: nn.Module, rt: Runtime) -> dict[str, Any] | None:
        from ben_cli.device import train_autocast

        model.eval()
        shard = list(range(rt.rank, len(self.dataset), rt.world))
        results: list[dict[str, float]] = []
        for start in range(0, len(shard), self.batch_size):
            items = [self.dataset[i] for i in shard[start : start + self.batch_size]]
            batch = {k: torch.stack([it[k] for it in items]).to(rt.device) for k in ("image", "mask", "prob")}
            with torch.no_grad(), train_autocast(rt.device, self.dtype):
                out = refiner_forward(model, batch)
            alpha = known_alpha(out.alpha, out.trimap).clamp(0, 1).cpu().numpy()
            prob, gt = batch["prob"].cpu().numpy(), batch["mask"].float().div(255).cpu().numpy()
            bands = (out.trimap == 128).cpu().numpy()
            for a, p, g, b in zip(alpha[:, 0], prob[:, 0], gt[:, 0], bands[:, 0]):
                mine, none = band_errors(a, g, b), band_errors(p, g, b)
                results.append({**mine, **{f"none_{k}": v for k, v in none.items()}})
        everything = [r for part in gather_objects(rt, results) for r in part]
        if not rt.is_main or not everything:
            return None
        metrics: dict[str, Any] = {k: float(np.mean([r[k] for r in everything])) for k in everything[0]}
        metrics["count"] = len(everything)
        return metrics
