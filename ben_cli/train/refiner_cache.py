"""The base predictions of ``ben train refiner``, computed once per image and cached on disk.

**Base predictions are cached on disk**, so the frozen base runs once per image,
not once per epoch: ``CACHE/base-<checkpoint sha256[:12]>-<side>-<dtype>/<image
sha256[:24]>.npy`` holds the base logits (float16, side x side) of the image
resized to the working side with Lanczos, exactly what ``ben erase`` feeds the
refiner. The key is the image file's content, the base checkpoint file's
content, the side and the compute dtype, so another run (a ``cache``
folder shared between runs), a resumed run, or a renamed image reuses the file, and a
different base or side never does. Float16 logits keep the probability within
1e-4 of the float32 one where the trimap thresholds are (|logit| < 3.5). The
validation images are cached the same way. Under ``torchrun`` the ranks share
the images still missing and wait for each other. ``--predictions NAME`` takes
the base's probability maps from ``DIR/NAME/`` instead (any segmenter's, or a
benchmark's simulated ones), converted into ``CACHE/predictions-<side>/``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ben_cli.device import release_cached_memory
from ben_cli.errors import CheckpointError, OptionError, UsageError
from ben_cli.train.data import BadPair, SamplePair
from ben_cli.train.runtime import Runtime, barrier


@dataclass(frozen=True)
class BaseCache:
    """Where the base logits of each image live for one base checkpoint, side and dtype."""

    folder: Path

    @classmethod
    def at(cls, root: str | Path, base_digest: str, resolution: int, dtype: torch.dtype) -> BaseCache:
        return cls(Path(root) / f"base-{base_digest[:12]}-{resolution}-{str(dtype).replace('torch.', '')}")

    def path(self, image_digest: str) -> Path:
        """The file of the image whose content hash is ``image_digest``."""
        return self.folder / f"{image_digest[:24]}.npy"


def read_cached_logits(path: Path) -> np.ndarray:
    """(S, S) float16 logits from the cache."""
    return np.load(path, allow_pickle=False)


def _write_npy(path: Path, array: np.ndarray) -> None:
    from ben_cli.io import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def resized_image(pair: SamplePair, side: int) -> np.ndarray:
    """The pair's image as the base sees it: (side, side, 3) uint8, Lanczos (as ``ben erase``)."""
    from ben_cli.io import read_image
    from ben_cli.resize import resize_for_model

    return resize_for_model(read_image(pair.image).rgb, side)


def load_base(weights: str | None, device: torch.device) -> tuple[nn.Module, Path]:
    """The frozen base (eval, no DropPath, no gradients) on ``device``, from ``weights`` or the
    default model's file (searched, and downloaded when missing, as ``ben erase`` does)."""
    from ben_cli.checkpoints.load import build_from_checkpoint, read_checkpoint
    from ben_cli.checkpoints.weights import find_weights

    path = find_weights(weights)
    ckpt = read_checkpoint(path)
    if ckpt.arch != "base":
        raise CheckpointError(f"{path}: the frozen base needs a BEN Base checkpoint, not a {ckpt.arch!r} one")
    model = build_from_checkpoint(ckpt, source=str(path))
    model = model.for_inference() if hasattr(model, "for_inference") else model.eval()
    return model.requires_grad_(False).to(device), path


def base_logits(base: nn.Module, images: Sequence[np.ndarray], device: torch.device,
                dtype: torch.dtype) -> np.ndarray:
    """(S, S, 3) uint8 images -> base logits (B, S, S) float16, computed as ``ben erase`` does."""
    from ben_cli.device import inference_context

    x = torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    with inference_context(device, dtype):
        logits = base(base.normalize(x))
    return logits.float()[:, 0].cpu().numpy().astype(np.float16)


def fill_cache(paths: Sequence[Path], load: Callable[[int], Any],
               predictor: Callable[[], Callable[[list[Any]], Sequence[np.ndarray]]], rt: Runtime, *,
               batch_size: int = 1, workers: int = 1, tell: Callable[[str], None] | None = None) -> int:
    """Write the cache files that are missing; returns how many this rank wrote.

    ``load(i)`` reads what entry ``i`` needs (in ``workers`` threads, ahead of the model);
    ``predictor()`` (called only on a rank with work to do, e.g. to build the base) returns
    ``predict(loaded items) -> (S, S) float16 logits each``. Entries with the same path (the same
    content) are computed once; the missing ones are shared among the ranks (``[rank::world]``),
    and every rank waits for the others.
    """
    todo, seen = [], set()
    for i, p in enumerate(paths):
        if p not in seen and not p.is_file():
            todo.append(i)
        seen.add(p)
    missing = todo[rt.rank :: rt.world]
    done = 0
    if missing:
        predict = predictor()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            chunks = [missing[i : i + batch_size] for i in range(0, len(missing), batch_size)]
            ahead = pool.map(lambda chunk: [load(i) for i in chunk], chunks)
            for chunk, items in zip(chunks, ahead):
                for i, logits in zip(chunk, predict(items)):
                    _write_npy(paths[i], logits)
                done += len(chunk)
        del predict  # frees the base
        release_cached_memory(rt.device)
        if tell is not None:
            tell(f"cached {done} base prediction(s) in {time.perf_counter() - t0:.1f} s")
    barrier(rt)
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise UsageError(f"{len(absent)} cached base prediction(s) missing after caching, e.g. {absent[0]}")
    return done


def prediction_files(root: str | Path, name: str, pairs: Sequence[SamplePair]
                     ) -> tuple[list[SamplePair], list[Path], list[BadPair]]:
    """The given base predictions ``root/name/<stem>.*`` (images or ``.npy``) of ``pairs``.

    Returns the pairs that have exactly one, their files, and the others as bad pairs.
    Raises UsageError when the folder is missing.
    """
    from ben_cli.io import find_images

    folder = Path(root) / name
    if not folder.is_dir():
        raise OptionError("predictions", f"{folder}: no such folder ({{flag}} {name}: the base's probability maps, "
                                         "beside im/ and gt/, with the same stems)")
    found: dict[str, list[Path]] = {}
    for path in [*find_images(folder), *sorted(folder.rglob("*.npy"))]:
        found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    kept, files, bad = [], [], []
    for pair in pairs:
        candidates = found.get(pair.stem, [])
        if len(candidates) == 1:
            kept.append(pair)
            files.append(candidates[0])
        else:
            why = "no prediction" if not candidates else f"{len(candidates)} predictions share the stem"
            bad.append(BadPair(f"{name}/{pair.stem}", why))
    return kept, files, bad


def prediction_logits(path: Path, side: int) -> np.ndarray:
    """A given probability map (8/16-bit gray image, a cutout's alpha, or ``.npy`` floats in [0, 1])
    -> (side, side) float16 logits (resized bilinearly, antialiased when shrinking; clamped to 1e-4)."""
    from ben_cli.io import read_mask

    if path.suffix.lower() == ".npy":
        prob = np.load(path, allow_pickle=False)
        if prob.ndim != 2 or not np.issubdtype(prob.dtype, np.floating):
            raise UsageError(f"{path}: a prediction .npy must be a 2-D float array in [0, 1], got {prob.shape} "
                             f"{prob.dtype}")
        prob = prob.astype(np.float32)
    else:
        prob = read_mask(path).astype(np.float32) / 255.0
    t = torch.from_numpy(prob)[None, None].clamp_(0, 1)
    if t.shape[-2:] != (side, side):
        shrink = max(t.shape[-2:]) > side
        t = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False, antialias=shrink)
    return torch.logit(t[0, 0], eps=1e-4).numpy().astype(np.float16)
