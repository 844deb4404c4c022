"""Evaluate folders of masks: pair files, read them, score them in parallel, report.

- :func:`pair_predictions` pairs a prediction folder with a ground-truth folder
  by stem (the path relative to the folder, without extension; folders are
  walked recursively as :func:`ben_cli.io.find_images` does). A file without a
  partner, or two files with one stem, is a :class:`~ben_cli.errors.PairingError`
  that names the files.
- :func:`evaluate_pairs` reads each pair as ``uint8`` masks
  (:func:`ben_cli.io.read_mask`: the alpha of files that have one, so a cutout
  scores as its alpha mask; gray as stored; colour by luma), resizes the
  prediction to the ground truth's size where they differ (bilinear; the ``ben``
  protocol resizes both to 1024x1024 itself), scores it with the chosen protocol
  across a process pool, and aggregates. A pair that cannot be scored raises
  :class:`~ben_cli.errors.InputError` naming both files; a metric left undefined
  (NaN, possible under ``ben``) is listed by :meth:`Evaluation.undefined`.
- :func:`predict_to_dir` runs an Eraser over image / ground-truth pairs and
  writes its masks as 8-bit PNGs, yielding prediction pairs as it goes, so that
  evaluation overlaps inference.
- :func:`write_csv` and :func:`plot_curves` (:mod:`.report`) write the per-image table and the
  precision-recall / F-threshold figure.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ben_cli.errors import BenWarning, InputError, OptionError, PairingError, UsageError
from ben_cli.eval.metrics import ImageResult, Summary
from ben_cli.eval.report import CSV_KEYS, Evaluation, Pair, plot_curves, summary_dict, write_csv

PROTOCOLS: tuple[str, ...] = ("standard", "ben")
_LISTED = 8  # file names shown in a pairing error before "... and N more"


class AlphaPredictor(Protocol):
    """What :func:`predict_to_dir` needs of an Eraser."""

    def predict_alpha(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 (H, W, 3) RGB images -> float (H, W) alphas in [0, 1], each at its image's size."""
        ...


# --------------------------------------------------------------------------- pairing


def _by_stem(folder: Path, label: str) -> dict[str, Path]:
    from ben_cli import io as bio

    if not folder.is_dir():
        raise UsageError(f"the {label} folder {folder} is not a folder")
    files = bio.find_images(folder)
    groups: dict[str, list[Path]] = {}
    for path in files:
        stem = path.relative_to(folder).with_suffix("").as_posix()
        groups.setdefault(stem, []).append(path)
    clashes = {stem: paths for stem, paths in groups.items() if len(paths) > 1}
    if clashes:
        names = [" and ".join(p.relative_to(folder).as_posix() for p in paths) for paths in clashes.values()]
        raise PairingError(
            f"{len(clashes)} stem(s) in the {label} folder {folder} name several files: " + _listing(names)
        )
    if not groups:
        raise PairingError(f"no images in the {label} folder {folder}")
    return {stem: paths[0] for stem, paths in groups.items()}


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown}, ... and {len(names) - _LISTED} more"


def match_stems(
    first: Path, second: Path, labels: tuple[str, str] = ("prediction", "ground truth"), *,
    skip_unmatched: bool = False,
) -> list[tuple[str, Path, Path]]:
    """``(stem, first_file, second_file)`` for every stem, sorted by stem.

    Raises :class:`PairingError` when a file has no partner (naming the files on
    each side; ``skip_unmatched``: they are skipped instead, listed once in a
    :class:`~ben_cli.errors.BenWarning`) or a stem names several files, and
    :class:`UsageError` when a folder does not exist.
    """
    first, second = Path(first), Path(second)
    a, b = _by_stem(first, labels[0]), _by_stem(second, labels[1])
    parts = []
    for files, other, folder, (label, partner) in (
        (a, b, first, labels),
        (b, a, second, labels[::-1]),
    ):
        alone = sorted(set(files) - set(other))
        if alone:
            names = [files[stem].relative_to(folder).as_posix() for stem in alone]
            parts.append(f"{len(alone)} {label} file(s) in {folder} without a {partner}: {_listing(names)}")
    if parts and not skip_unmatched:
        raise PairingError("; ".join(parts) + " (or pass {opt:skip_unmatched})")
    both = sorted(set(a) & set(b))
    if parts:
        if not both:
            raise PairingError("; ".join(parts))
        warnings.warn(BenWarning("skipped " + "; ".join(parts)), stacklevel=2)
    return [(stem, a[stem], b[stem]) for stem in both]


def pair_predictions(pred_dir: Path, gt_dir: Path, *, skip_unmatched: bool = False) -> list[Pair]:
    """Pair the masks of ``pred_dir`` with those of ``gt_dir`` by stem (see :func:`match_stems`)."""
    return [Pair(stem, p, g) for stem, p, g in match_stems(pred_dir, gt_dir, skip_unmatched=skip_unmatched)]


# --------------------------------------------------------------------------- scoring one pair


def load_pair(pair: Pair, protocol: str = "standard") -> tuple[np.ndarray, np.ndarray, str | None]:
    """Read a pair as uint8 (H, W) masks (:func:`ben_cli.io.read_mask`: alpha where a file has one),
    and how the prediction was resized (None when it has the ground truth's size).

    With the standard protocol the prediction is resized (bilinear) to the
    ground truth's size when they differ; the ``ben`` protocol resizes both itself.
    Raises :class:`InputError` naming an unreadable file.
    """
    import cv2

    from ben_cli.io import read_mask

    pred, gt = read_mask(pair.pred), read_mask(pair.gt)
    if pred.shape == gt.shape:
        return pred, gt, None
    sizes = f"{pred.shape[1]}x{pred.shape[0]} vs ground truth {gt.shape[1]}x{gt.shape[0]}"
    if protocol != "standard":
        return pred, gt, f"{sizes}: both resized to the protocol's square (prediction bilinear, ground truth nearest)"
    pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
    return pred, gt, f"{sizes}: prediction resized bilinearly to the ground truth's size"


def score_arrays(pred: np.ndarray, gt: np.ndarray, protocol: str = "standard") -> ImageResult:
    """Score one uint8 (H, W) pair with ``protocol`` (``"standard"`` or ``"ben"``)."""
    if protocol == "standard":
        from ben_cli.eval.metrics import image_metrics

        return image_metrics(pred, gt)
    if protocol == "ben":
        from ben_cli.eval.protocol_ben import image_metrics as ben_image_metrics

        return ben_image_metrics(pred, gt)
    raise UsageError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")


def evaluate_pair(pair: Pair, protocol: str = "standard") -> ImageResult:
    """Read and score one pair.

    Raises :class:`InputError` naming the unreadable file, or naming both files
    when the pair cannot be scored (shapes or types the metrics refuse).
    """
    pred, gt, resized = load_pair(pair, protocol)
    try:
        return replace(score_arrays(pred, gt, protocol), resized=resized)
    except ValueError as e:
        raise InputError(pair.pred, f"cannot score against the ground truth {pair.gt}: {e}") from None


def aggregate(results: Sequence[ImageResult], protocol: str = "standard") -> Summary:
    """Dataset summary of per-image results under ``protocol``."""
    if protocol == "ben":
        from ben_cli.eval.protocol_ben import aggregate as ben_aggregate

        return ben_aggregate(results)
    from ben_cli.eval.metrics import aggregate as standard_aggregate

    return standard_aggregate(results)


# --------------------------------------------------------------------------- many pairs


def default_workers() -> int:
    """Processes to use by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def evaluate_pairs(
    pairs: Iterable[Pair],
    *,
    protocol: str = "standard",
    workers: int | None = None,
    total: int | None = None,
    progress: bool = True,
    description: str = "evaluating",
) -> Evaluation:
    """Score every pair and aggregate.

    Args:
        pairs: the pairs; may be a generator (consumed as the pool has room).
        protocol: ``"standard"`` (PySODMetrics) or ``"ben"`` (the authors' script).
        workers: processes (default: :func:`default_workers`); 1 runs in this process.
        total: number of pairs, for the progress bar when ``pairs`` has no ``len``.
        progress: draw a progress bar on stderr.
        description: the progress bar's label.

    Raises:
        InputError: a file cannot be read (the first one met).
        PairingError: there are no pairs.
    """
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    if total is None and isinstance(pairs, Sequence):
        total = len(pairs)
    n_workers = workers if workers is not None else default_workers()
    if n_workers < 1:
        raise OptionError("workers", f"{{flag}} must be at least 1, got {n_workers}")
    if total is not None:
        n_workers = max(1, min(n_workers, total))

    done: list[tuple[Pair, ImageResult]] = []
    with _progress_bar(progress, description, total) as advance:
        if n_workers == 1:
            for pair in pairs:
                done.append((pair, evaluate_pair(pair, protocol)))
                advance()
        else:
            done = _evaluate_in_pool(pairs, protocol, n_workers, advance)
    if not done:
        raise PairingError("no image pairs to evaluate")
    done.sort(key=lambda item: item[0].stem)
    images = [r for _, r in done]
    return Evaluation(pairs=[p for p, _ in done], images=images, summary=aggregate(images, protocol))


_PRELOAD = [
    "ben_cli.eval.evaluate",
    "ben_cli.eval.metrics",
    "ben_cli.eval.protocol_ben",
    "ben_cli.io",
    "py_sod_metrics",
    "scipy.ndimage",
]


def _pool_context() -> multiprocessing.context.BaseContext:
    """Start workers from a clean process, never by forking this one.

    The parent may hold torch's threads (model mode) or a progress-bar thread, which
    a plain fork copies mid-state. Where available, a fork server that has imported
    the metric modules once makes every later worker start at once; else spawn.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _evaluate_in_pool(
    pairs: Iterable[Pair], protocol: str, n_workers: int, advance: Callable[[], None]
) -> list[tuple[Pair, ImageResult]]:
    context = _pool_context()
    done: list[tuple[Pair, ImageResult]] = []
    pending: dict[Future[Any], Pair] = {}

    def collect(futures: Iterable[Future[Any]]) -> None:
        for future in futures:
            pair = pending.pop(future)
            done.append((pair, future.result()))  # re-raises a worker's InputError here
            advance()

    pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=context)
    try:
        for pair in pairs:
            pending[pool.submit(evaluate_pair, pair, protocol)] = pair
            if len(pending) >= 2 * n_workers:  # bounded look-ahead keeps memory flat
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                collect(finished)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            collect(finished)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return done


@contextmanager
def _progress_bar(enabled: bool, description: str, total: int | None) -> Iterator[Callable[[], None]]:
    """A Rich progress bar on stderr; gives a no-argument ``advance`` callable."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    from ben_cli.progress import progress_columns

    columns = progress_columns()
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


# --------------------------------------------------------------------------- running a model


def predict_to_dir(
    eraser: AlphaPredictor,
    items: Sequence[tuple[str, Path, Path]],
    out_dir: Path,
    batch_size: int = 4,
) -> Iterator[Pair]:
    """Predict a mask for each ``(stem, image, gt)`` and write it to ``out_dir/<stem>.png``.

    Images go to ``eraser.predict_alpha`` ``batch_size`` at a time; each mask is
    rounded to 8 bits as ``ben erase`` writes alpha masks
    (:func:`ben_cli.compose.alpha_to_uint8` of the float32 alpha) and written
    (8-bit PNG, atomically) before its pair is yielded, so the evaluation of a
    written mask can start while the next batch runs.
    """
    import torch

    from ben_cli.compose import alpha_to_uint8
    from ben_cli.io import read_image, write_png

    out_dir = Path(out_dir)
    step = max(1, batch_size)
    for start in range(0, len(items), step):
        batch = items[start : start + step]
        images = [read_image(image).rgb for _, image, _ in batch]
        alphas = eraser.predict_alpha(images)
        if len(alphas) != len(batch):
            raise RuntimeError(f"the model returned {len(alphas)} masks for {len(batch)} images")
        for (stem, image, gt), alpha, rgb in zip(batch, alphas, images, strict=True):
            mask = alpha_to_uint8(torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32))).numpy()
            if mask.shape != rgb.shape[:2]:
                raise RuntimeError(f"mask of {image} is {mask.shape}, the image {rgb.shape[:2]}")
            path = out_dir / f"{stem}.png"
            write_png(path, mask)
            yield Pair(stem, path, gt)


__all__ = ["CSV_KEYS", "PROTOCOLS", "AlphaPredictor", "Evaluation", "Pair", "aggregate", "default_workers",
           "evaluate_pair", "evaluate_pairs", "load_pair", "match_stems", "pair_predictions", "plot_curves",
           "predict_to_dir", "score_arrays", "summary_dict", "write_csv"]
