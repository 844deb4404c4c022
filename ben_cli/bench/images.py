"""The images ``ben bench`` runs on: synthetic photo-like JPEGs, or those of a folder that decode."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ben_cli.bench.options import DEFAULT_IMAGES, DEFAULT_SIZE, BenchOptions
from ben_cli.bench.report import BenchError
from ben_cli.errors import BenWarning, InputError
from ben_cli.io import find_images, read_image


def make_images(folder: Path, count: int, size: tuple[int, int] = DEFAULT_SIZE, *, seed: int = 0,
                quality: int = 90) -> list[Path]:
    """Write ``count`` synthetic photo-like JPEGs of ``size`` (W, H) into ``folder``; returns their paths.

    Each is a smooth random background, a subject (an ellipse of another smooth texture)
    and mild sensor noise, so JPEG files and decoding cost about what photos do.
    """
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    paths = []
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        back, subject = _smooth_texture(rng, size, 96), _smooth_texture(rng, size, 24)
        yy, xx = np.ogrid[0:h, 0:w]
        cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
        ry, rx = rng.uniform(0.25, 0.4) * h, rng.uniform(0.15, 0.3) * w
        inside = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0)[..., None]
        pixels = np.where(inside, subject, back) + rng.normal(0.0, 4.0, (h, w, 1)).astype(np.float32)
        path = folder / f"bench_{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=quality)
        paths.append(path)
    return paths


def _smooth_texture(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255]: random colours on a grid ``cells`` pixels apart, bicubic in between."""
    w, h = size
    small = rng.integers(0, 256, (max(2, h // cells), max(2, w // cells), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def usable_images(paths: Sequence[Path], limit: int | None = None) -> list[Path]:
    """The first ``limit`` (None: all) of ``paths`` that decode; each one that does not is warned about."""
    ok: list[Path] = []
    for p in paths:
        if limit is not None and len(ok) >= limit:
            break
        try:
            read_image(p)
        except InputError as e:
            warnings.warn(f"{p}: {e.reason} (left out of the benchmark)", BenWarning, stacklevel=2)
            continue
        ok.append(p)
    return ok


def bench_images(bench: BenchOptions, work: Path) -> list[Path]:
    """The images of ``bench``: generated into ``work/images``, or the usable ones of ``bench.input``
    (:class:`BenchError` when none decodes)."""
    if bench.input is None:
        return make_images(work / "images", bench.images or DEFAULT_IMAGES["other"], bench.size, seed=bench.seed)
    paths = usable_images(find_images(bench.input), bench.images)
    if not paths:
        raise BenchError(f"no usable image in {bench.input}")
    return paths


__all__ = ["bench_images", "make_images", "usable_images"]
