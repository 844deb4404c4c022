"""Training the refiner network on a frozen BEN Base (``ben train refiner``).

One step: cached base probability -> confidence trimap (paper Algorithms 1-2) ->
refiner -> alpha (not clamped in the band; the trimap's 0/1 outside it, as the
``net`` refine stage imposes them) -> loss on the gray band. The loop (optimiser,
schedule, DDP, logs, plots, checkpoints, exact resume, signals) is
:func:`ben_cli.train.loop.train`, shared with ``ben train base``.

The parts, one module each: :mod:`~ben_cli.train.refiner_config` (the configuration),
:mod:`~ben_cli.train.refiner_cache` (the cached base predictions),
:mod:`~ben_cli.train.refiner_data` (samples, zoomed crops, augmentation),
:mod:`~ben_cli.train.refiner_step` (forward pass and loss) and
:mod:`~ben_cli.train.refiner_validate` (validation). This module finds the data and the
base, fills the cache and starts the loop; it re-exports the parts' public names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ben_cli.errors import CheckpointError, OptionError, UsageError
from ben_cli.io import file_sha256 as file_digest
from ben_cli.train.data import SamplePair
from ben_cli.train.loop import StepHook, TrainResult, train
from ben_cli.train.loss import LossOutput
from ben_cli.train.refiner_cache import (
    BaseCache,
    base_logits,
    fill_cache,
    load_base,
    prediction_files,
    prediction_logits,
    read_cached_logits,
    resized_image,
)
from ben_cli.train.refiner_config import (
    CACHE_DIR,
    REFINER_METRICS,
    RefinerLossConfig,
    RefinerTrainConfig,
    resolve_refiner_config,
)
from ben_cli.train.refiner_data import RefinerDataset, augment_sample, zoomed_crop
from ben_cli.train.refiner_step import RefinerLoss, RefinerOutputs, laplacian_pyramid, refiner_forward
from ben_cli.train.refiner_validate import RefinerValidator
from ben_cli.train.runtime import (
    broadcast_object,
    main_rank_say,
    require_run_folders,
    setup_runtime,
    teardown_runtime,
)


def _initialise(model: nn.Module, path: str) -> str:
    from ben_cli.checkpoints.load import load_state_dict_strict, read_checkpoint
    from ben_cli.checkpoints.weights import checkpoint_path

    path = str(checkpoint_path(path))  # a training run folder: its best.safetensors
    ckpt = read_checkpoint(path)
    if ckpt.arch != "refiner":
        raise CheckpointError(f"{path}: fine-tuning needs a refiner checkpoint, not a {ckpt.arch!r} one")
    load_state_dict_strict(model, ckpt.state_dict, path)
    return f"refiner from {path}"


class _Prepared(NamedTuple):
    """What rank 0 finds before training (sent to every rank)."""

    train: list[SamplePair]
    val: list[SamplePair]
    cache_paths: list[Path]  # training pairs, then validation pairs
    source: str  # where the base predictions come from, for the log
    key: str  # what the cache is keyed on besides the images (stored in the training state)
    data_digest: str
    base_path: Path | None
    prediction_files: list[Path] | None  # with --predictions, per pair as cache_paths


def _prepare(cfg: RefinerTrainConfig, base_dtype: torch.dtype, tell: Callable[[str], None]) -> _Prepared:
    """Scan the data, find the base (or the given predictions) and name every cache file."""
    from ben_cli.checkpoints.weights import find_weights
    from ben_cli.train.base import bad_pairs_message, scan_dataset
    from ben_cli.train.data import PairScan

    scans = [scan_dataset(str(cfg.data), cfg, "training", tell)]
    if cfg.val:
        scans.append(scan_dataset(cfg.val, cfg, "validation", tell))
    root = Path(cfg.cache) if cfg.cache else Path(str(cfg.out)) / CACHE_DIR
    sets: list[list[SamplePair]] = []
    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        if cfg.predictions:
            files: list[Path] = []
            for scan in scans:
                kept, found, bad = prediction_files(scan.root, cfg.predictions, scan.pairs)
                if bad:
                    message = bad_pairs_message(PairScan(scan.root, kept, bad))
                    if cfg.strict:
                        raise OptionError("strict", f"{message}\n({{flag}}: add the predictions or remove the pairs)")
                    tell(f"{message}\nskipping them; {len(kept)} pair(s) left")
                if not kept:
                    raise UsageError(f"{scan.root}: no pair has a prediction in {cfg.predictions}/")
                sets.append(kept)
                files += found
            cache = BaseCache(root / f"predictions-{cfg.resolution}")
            paths = [cache.path(d) for d in pool.map(file_digest, files)]
            return _Prepared(sets[0], sets[1] if len(sets) > 1 else [], paths, f"predictions in {cfg.predictions}/",
                             f"predictions:{cfg.predictions}", scans[0].digest(), None, files)
        sets = [scan.pairs for scan in scans]
        base_path = find_weights(cfg.base_weights)
        base_digest = file_digest(base_path)
        cache = BaseCache.at(root, base_digest, cfg.resolution, base_dtype)
        paths = [cache.path(d) for d in pool.map(lambda p: file_digest(p.image), [p for s in sets for p in s])]
    return _Prepared(sets[0], sets[1] if len(sets) > 1 else [], paths,
                     f"{base_path} (frozen, {str(base_dtype).replace('torch.', '')})", base_digest[:16],
                     scans[0].digest(), base_path, None)


def train_refiner(cfg: RefinerTrainConfig, *, resume: bool = False, on_step: StepHook | None = None,
                  say: Callable[[str], None] | None = None,
                  base_loader: Callable[[str | None, torch.device], tuple[nn.Module, Path]] = load_base
                  ) -> TrainResult:
    """Train the refiner network as ``cfg`` says (``ben train refiner``); see :func:`ben_cli.train.loop.train`.

    ``base_loader(weights, device) -> (base, path)`` builds the frozen base (tests count its calls).
    """
    from ben_cli.device import resolve_dtype, resolve_train_dtype
    from ben_cli.models.refiner import build_refiner, refiner_config

    cfg = cfg.resolved()
    require_run_folders(cfg.data, cfg.out, "a folder with im/ and gt/: images and their alpha mattes or masks")
    if not resume:
        from ben_cli.train.state import refuse_existing_run

        refuse_existing_run(Path(cfg.out))  # before the data scan and the base's predictions
    rt = setup_runtime(cfg.device)
    try:
        dtype = resolve_train_dtype(cfg.precision, rt.device)
        base_dtype = resolve_dtype("auto", rt.device)  # what `ben erase` runs the base in
        tell = main_rank_say(rt, say)

        # Rank 0 scans, hashes and finds the base; a failure there reaches every rank.
        found: Any = None
        if rt.is_main:
            try:
                found = _prepare(cfg, base_dtype, tell)
            except Exception as e:
                found = e
        found = broadcast_object(rt, found)
        if isinstance(found, BaseException):
            raise found
        prep: _Prepared = found
        pairs = prep.train + prep.val
        n_train = len(prep.train)
        unique = set(prep.cache_paths)
        tell(f"{n_train} training pair(s)" + (f", {len(prep.val)} validation pair(s)" if prep.val else "")
             + f"; device {rt.device}, {str(dtype).replace('torch.', '')}, {rt.world} process(es)")
        tell(f"base: {prep.source}; cache {prep.cache_paths[0].parent}: "
             f"{sum(p.is_file() for p in unique)} of {len(unique)} cached")
        side = cfg.resolution
        if prep.prediction_files is not None:
            files = prep.prediction_files
            fill_cache(prep.cache_paths, lambda i: prediction_logits(files[i], side), lambda: lambda items: items, rt,
                       batch_size=cfg.batch_size, workers=max(1, cfg.workers), tell=tell)
        else:
            def predictor() -> Callable[[list[Any]], Sequence[np.ndarray]]:
                base = base_loader(str(prep.base_path), rt.device)[0]
                return lambda images: base_logits(base, images, rt.device, base_dtype)

            fill_cache(prep.cache_paths, lambda i: resized_image(pairs[i], side), predictor, rt,
                       batch_size=cfg.batch_size, workers=max(1, cfg.workers), tell=tell)

        torch.manual_seed(cfg.seed)
        model = build_refiner(replace(refiner_config(cfg.model), input_size=side))  # the side it learns at
        if not resume:
            tell("init: " + (_initialise(model, cfg.init) if cfg.init else "random (the delta head at zero: "
                                                                          "the untrained refiner is the base)"))
        dataset = RefinerDataset(prep.train, prep.cache_paths[:n_train], side, augment=cfg.augment, seed=cfg.seed,
                                 zoom_prob=cfg.zoom_prob)
        validator = None
        if prep.val:
            val_set = RefinerDataset(prep.val, prep.cache_paths[n_train:], side, augment=False)
            validator = RefinerValidator(val_set, dtype, batch_size=cfg.batch_size)
        loss = RefinerLoss(cfg.loss)

        def loss_fn(outputs: RefinerOutputs, batch: dict[str, torch.Tensor]) -> LossOutput:
            return loss(outputs, batch["mask"].float() / 255.0)

        return train(model, loss_fn, dataset, cfg, forward=refiner_forward, rt=rt, dtype=dtype,
                     validate=validator, resume=resume, on_step=on_step, say=say,
                     state_extra={"data": prep.data_digest, "base": prep.key})
    finally:
        teardown_runtime(rt)


__all__ = [
    "REFINER_METRICS",
    "BaseCache",
    "RefinerDataset",
    "RefinerLoss",
    "RefinerLossConfig",
    "RefinerOutputs",
    "RefinerTrainConfig",
    "RefinerValidator",
    "augment_sample",
    "file_digest",
    "fill_cache",
    "laplacian_pyramid",
    "load_base",
    "prediction_logits",
    "read_cached_logits",
    "resolve_refiner_config",
    "train_refiner",
    "zoomed_crop",
]
