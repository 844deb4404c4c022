"""The official-style path: per image, the way the official BEN2 code runs it (:func:`measure_official`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ben_cli.bench.report import Official, median_measure
from ben_cli.device import synchronize
from ben_cli.models.replica import inference_copy
from ben_cli.pipeline import Eraser


def official_image(model: torch.nn.Module, path: Path, out: Path, *, device: torch.device, side: int,
                   mean: torch.Tensor, std: torch.Tensor) -> float:
    """One image the official BEN2 way; returns the seconds of the forward and sigmoid (synchronised).

    Pillow decode and RGB, Lanczos to ``side`` on the CPU, ``ToTensor`` and normalisation
    (fp16 on CUDA, as the official transform), batch 1 under fp16 autocast on CUDA (fp32
    elsewhere), sigmoid, bilinear back to the image's size, min-max stretch to uint8,
    ``putalpha``, Pillow PNG save. ``mean``, ``std``: (3, 1, 1) float32 on the CPU.
    """
    cuda = device.type == "cuda"
    with Image.open(path) as im:
        original = im.convert("RGB")
    w, h = original.size
    small = original.resize((side, side), resample=Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.array(small)).permute(2, 0, 1).float().div_(255.0)
    if cuda:
        x = x.half()
    x = ((x - mean.to(x.dtype)) / std.to(x.dtype)).unsqueeze(0).to(device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
    synchronize(device)
    t = time.perf_counter()
    with torch.inference_mode(), autocast:
        prob = torch.sigmoid(model(x))
    synchronize(device)
    forward = time.perf_counter() - t
    with torch.inference_mode():
        alpha = torch.nn.functional.interpolate(prob.float(), size=(h, w), mode="bilinear")[0, 0]
        lo, hi = alpha.min(), alpha.max()
        alpha = (alpha - lo) / (hi - lo).clamp_min(1e-12)
        mask = (alpha * 255).cpu().numpy().astype(np.uint8)
    original.putalpha(Image.fromarray(mask))
    original.save(out)
    return forward


def official_model(eraser: Eraser) -> torch.nn.Module:
    """The eager fp32 network of ``eraser`` (a copy cast to fp32 when its weights are not fp32)."""
    return inference_copy(eraser.model, eraser.device, torch.float32).eval()


def measure_official(eraser: Eraser, paths: Sequence[Path], out_dir: Path, *, repeats: int, warmup: int) -> Official:
    """The official-style path over ``paths``: median of ``repeats`` passes after ``warmup`` untimed images."""
    model = official_model(eraser)
    device = eraser.device
    mean, std = (t.detach().float().cpu().view(3, 1, 1) for t in (eraser.mean, eraser.std))
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(i: int, p: Path) -> float:
        return official_image(model, p, out_dir / f"{i:04d}.png", device=device, side=eraser.resolution,
                              mean=mean, std=std)

    for i in range(warmup):
        one(i, paths[i % len(paths)])
    totals, forwards = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        forwards.append(sum(one(i, p) for i, p in enumerate(paths)))
        totals.append(time.perf_counter() - t)
    return Official("fp16-autocast" if device.type == "cuda" else "fp32", median_measure(len(paths), totals),
                    median_measure(len(paths), forwards))


__all__ = ["measure_official", "official_image", "official_model"]
