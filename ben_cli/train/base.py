"""Training BEN Base: initialisation, validation and the entry point of ``ben train base``.

Initialisation (one of, printed at start):

- ``--init CK``: the whole network from a checkpoint (official ``BEN2_Base.pth`` or ours), to fine-tune;
- ``--backbone-weights PATH``: the Swin from a timm-format state dict (offline);
- otherwise, for the Swin-B backbone, timm's copy of the weights MVANet starts from
  (``swin_base_patch4_window12_384.ms_in22k_ft_in1k``: ImageNet-22k, fine-tuned on 1k),
  downloaded through timm;
  when they cannot be had (offline), the run refuses to start (exit 2) and says what to pass;
- ``--random-init``: the Swin-B model from random weights, on purpose.

The Swin's per-stage output norms, the decoder and the head always start random
unless ``--init`` is given (MVANet adds the same fresh norms to its backbone).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ben_cli.errors import CheckpointError, OptionError, UsageError
from ben_cli.train.config import TrainConfig
from ben_cli.train.data import BadPair, PairDataset, PairScan, SamplePair, scan_pairs
from ben_cli.train.loop import StepHook, TrainResult, train
from ben_cli.train.loss import BenLoss
from ben_cli.train.runtime import (
    Runtime,
    broadcast_object,
    gather_objects,
    main_rank_say,
    require_run_folders,
    setup_runtime,
    teardown_runtime,
)
from ben_cli.train.state import refuse_existing_run

_DROPPED_PREFIXES = ("head.", "norm.")  # classifier and final norm of a classification Swin
_LISTED = 20  # bad pairs shown before "... and N more"


# --------------------------------------------------------------------------- initialisation


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``), wrappers removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    while isinstance(sd, dict) and len(sd) <= 8:
        inner = next((sd[k] for k in ("model", "state_dict", "model_state_dict") if isinstance(sd.get(k), dict)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return dict(sd)


def swin_state_from_timm(state_dict: Mapping[str, torch.Tensor], swin: nn.Module) -> tuple[dict[str, torch.Tensor],
                                                                                          list[str]]:
    """A timm (or original Microsoft) Swin state dict -> keys of our ``encoder.swin``.

    Pure: strips a ``module.``/``backbone.``/``encoder.swin.`` prefix, applies timm's
    ``checkpoint_filter_fn`` (moves the original layout's patch merging to the next
    stage, drops the fixed index buffers, resizes position tables), and drops the
    classifier and final norm. Returns (state dict, names of dropped keys).
    """
    from timm.models.swin_transformer import checkpoint_filter_fn

    sd = dict(state_dict)
    for prefix in ("module.", "encoder.swin.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    sd = checkpoint_filter_fn(sd, swin)
    dropped = sorted(k for k in sd if k.startswith(_DROPPED_PREFIXES))
    return {k: v for k, v in sd.items() if not k.startswith(_DROPPED_PREFIXES)}, dropped


def load_backbone(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load a timm-format Swin state dict strictly into ``model.encoder.swin``; returns the dropped keys."""
    from ben_cli.checkpoints.load import load_state_dict_strict

    swin = model.encoder.swin
    sd, dropped = swin_state_from_timm(state_dict, swin)
    load_state_dict_strict(swin, sd, source)
    return dropped


def _is_swin_b(model: nn.Module) -> bool:
    from ben_cli.config import SwinConfig

    cfg = model.config.backbone
    default = SwinConfig()
    return (cfg.embed_dim, tuple(cfg.depths), tuple(cfg.num_heads), cfg.window_size, cfg.patch_size) == (
        default.embed_dim, tuple(default.depths), tuple(default.num_heads), default.window_size, default.patch_size)


def initialise(model: nn.Module, cfg: TrainConfig) -> str:
    """Initialise ``model`` as ``cfg`` says; returns a one-line description of what was used."""
    from ben_cli.checkpoints.load import load_state_dict_strict, read_checkpoint
    from ben_cli.checkpoints.weights import checkpoint_path

    if cfg.init:
        path = checkpoint_path(cfg.init)  # a training run folder: its best.safetensors
        ckpt = read_checkpoint(path)
        load_state_dict_strict(model, ckpt.state_dict, str(path))
        kind = "official" if ckpt.official else "ben"
        return f"whole network from {path} ({kind} checkpoint)"
    if cfg.backbone_weights:
        dropped = load_backbone(model, read_state_dict(cfg.backbone_weights), cfg.backbone_weights)
        extra = f"; ignored {', '.join(dropped)}" if dropped else ""
        return f"Swin backbone from {cfg.backbone_weights}{extra}; decoder and head random"
    name = cfg.pretrained_backbone
    if cfg.random_init:
        return "random initialisation, as asked (random_init)"
    if not name:
        return "random initialisation (pretrained_backbone is empty)"
    if not _is_swin_b(model):
        return f"random initialisation ({name} fits only the Swin-B backbone, not model {cfg.model!r})"
    try:
        import timm

        from ben_cli.checkpoints.weights import fail_fast_hub

        with fail_fast_hub():  # offline: one try, not the Hub's retries with their messages
            stock = timm.create_model(name, pretrained=True, num_classes=0)
        sd = stock.state_dict()
    except Exception as e:  # offline, no such tag, hub errors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"could not get the pretrained Swin-B weights {name} through timm ({reason[:160]}): "
                              "pass {opt:init} CK (e.g. BEN2_Base.pth) or {opt:backbone_weights} PATH (a timm "
                              "Swin-B state dict), or {opt:random_init} to train from random weights") from None
    load_backbone(model, sd, f"timm {name}")
    return f"Swin backbone from timm {name} (ImageNet); decoder and head random"


# --------------------------------------------------------------------------- validation


def _score(pred: np.ndarray, gt: np.ndarray) -> Any:
    from ben_cli.eval.evaluate import score_arrays

    return score_arrays(pred, gt, "standard")


def _pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 1:
        return None
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


class BaseValidator:
    """Validation with ``ben eval``'s standard metrics (PySODMetrics), sharded over ranks.

    Each image is resized to the training resolution (Lanczos, as ``ben erase``),
    predicted in eval mode, and its probability resized bilinearly to the ground
    truth's size and rounded to 8 bits, as ``ben eval --data`` does; the scores of
    all ranks are aggregated on rank 0.
    """

    def __init__(self, pairs: Sequence[SamplePair], resolution: int, dtype: torch.dtype, *,
                 batch_size: int = 1, workers: int = 1) -> None:
        self.pairs, self.resolution, self.dtype = list(pairs), resolution, dtype
        self.batch_size, self.workers = max(1, batch_size), workers

    def predict(self, model: nn.Module, images: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
        """RGB uint8 images -> uint8 masks at each image's size."""
        import torch.nn.functional as F

        from ben_cli.device import train_autocast
        from ben_cli.resize import resize_for_model

        x = torch.from_numpy(np.stack([resize_for_model(im, self.resolution) for im in images])).to(device)
        x = model.normalize(x.permute(0, 3, 1, 2).float() / 255.0)
        with torch.no_grad(), train_autocast(device, self.dtype):
            prob = torch.sigmoid(model(x).float())
        out = []
        for i, im in enumerate(images):
            p = F.interpolate(prob[i : i + 1], size=im.shape[:2], mode="bilinear").clamp_(0, 1)
            out.append(torch.round(p * 255.0).to(torch.uint8)[0, 0].cpu().numpy())
        return out

    def __call__(self, model: nn.Module, rt: Runtime) -> dict[str, Any] | None:
        from ben_cli.eval.evaluate import aggregate
        from ben_cli.io import read_gray, read_image

        model.eval()
        shard = self.pairs[rt.rank :: rt.world]
        results: list[tuple[int, Any]] = []
        pool = _pool(self.workers)
        pending: dict[Future[Any], int] = {}

        def collect(futures: Any) -> None:
            for f in futures:
                results.append((pending.pop(f), f.result()))

        try:
            for start in range(0, len(shard), self.batch_size):
                chunk = shard[start : start + self.batch_size]
                images = [read_image(p.image).rgb for p in chunk]
                gts = [read_gray(p.mask) for p in chunk]
                preds = self.predict(model, images, rt.device)
                for k, (pred, gt) in enumerate(zip(preds, gts)):
                    idx = start + k
                    if pool is None:
                        results.append((idx, _score(pred, gt)))
                    else:
                        pending[pool.submit(_score, pred, gt)] = idx
                if pool is not None and len(pending) >= 2 * self.workers:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    collect(done)
            if pool is not None:
                collect(wait(pending)[0])
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        everything = [r for part in gather_objects(rt, results) for r in part]
        if not rt.is_main or not everything:
            return None
        summary = aggregate([r for _, r in everything], "standard")
        metrics: dict[str, Any] = {k: (float(v) if np.isfinite(v) else None) for k, v in summary.metrics.items()}
        metrics["count"] = summary.count
        return metrics


# --------------------------------------------------------------------------- entry point


def bad_pairs_message(scan: PairScan) -> str:
    """Lines listing the bad pairs of a scan (at most ``_LISTED``)."""
    lines = [f"{len(scan.bad)} bad pair(s) in {scan.root}:"]
    lines += [f"  {b.name}: {b.reason}" for b in scan.bad[:_LISTED]]
    if len(scan.bad) > _LISTED:
        lines.append(f"  ... and {len(scan.bad) - _LISTED} more")
    return "\n".join(lines)


def scan_dataset(root: str, cfg: TrainConfig, label: str, tell: Callable[[str], None]) -> PairScan:
    """Scan ``root``; list bad pairs once (rank 0) and skip them, or raise with ``--strict``."""
    scan = scan_pairs(root, workers=max(1, cfg.workers))
    if scan.bad:
        message = bad_pairs_message(scan)
        if cfg.strict:
            raise OptionError("strict", f"{message}\n({{flag}}: fix or remove them, or run without {{flag}} to skip "
                                        "them)")
        tell(f"{message}\nskipping them; {len(scan.pairs)} {label} pair(s) left")
    if not scan.pairs:
        raise UsageError(f"{root}: no usable {label} pairs (images in im/, masks with the same stems in gt/)")
    return scan


def train_base(cfg: TrainConfig, *, resume: bool = False, on_step: StepHook | None = None,
               say: Callable[[str], None] | None = None) -> TrainResult:
    """Train BEN Base as ``cfg`` says (``ben train base``); see :func:`ben_cli.train.loop.train`."""
    from ben_cli.device import resolve_train_dtype
    from ben_cli.models.registry import build_model

    cfg = cfg.resolved()
    require_run_folders(cfg.data, cfg.out, "a folder with im/ and gt/, e.g. DIS5K/DIS-TR")
    if not resume:
        refuse_existing_run(Path(cfg.out))  # before the data scan, which may take minutes
    rt = setup_runtime(cfg.device)
    try:
        dtype = resolve_train_dtype(cfg.precision, rt.device)
        tell = main_rank_say(rt, say)

        # Rank 0 scans (and initialises); a failure there is sent to every rank so none waits forever.
        scanned: Any = None
        if rt.is_main:
            try:
                train_scan = scan_dataset(cfg.data, cfg, "training", tell)
                val_scan = scan_dataset(cfg.val, cfg, "validation", tell) if cfg.val else None
                scanned = (train_scan, val_scan)
            except Exception as e:
                scanned = e
        scanned = broadcast_object(rt, scanned)
        if isinstance(scanned, BaseException):
            raise scanned
        train_scan, val_scan = scanned
        tell(f"{len(train_scan.pairs)} training pair(s)" + (f", {len(val_scan.pairs)} validation pair(s)"
                                                            if val_scan else "") + f"; device {rt.device}, "
             f"{str(dtype).replace('torch.', '')}, {rt.world} process(es)")

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)
        if not resume:
            described: Any = None
            if rt.is_main:  # DDP copies rank 0's weights to the other ranks
                try:
                    described = initialise(model, cfg)
                except Exception as e:
                    described = e
            described = broadcast_object(rt, described)
            if isinstance(described, BaseException):
                raise described
            tell(f"init: {described}")
        if cfg.grad_checkpoint:
            model.encoder.swin.set_grad_checkpointing(True)

        dataset = PairDataset(train_scan.pairs, cfg.resolution, augment=cfg.augment, seed=cfg.seed)
        validator = None
        if val_scan is not None:
            validator = BaseValidator(val_scan.pairs, cfg.resolution, dtype, batch_size=cfg.batch_size,
                                      workers=max(1, cfg.workers))
        loss = BenLoss(cfg.loss)

        def forward(net: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
            return net(model.normalize(batch["image"].float() / 255.0))

        def loss_fn(outputs: Any, batch: dict[str, torch.Tensor]):
            return loss(outputs, batch["mask"].float() / 255.0)

        return train(model, loss_fn, dataset, cfg, forward=forward, rt=rt, dtype=dtype, validate=validator,
                     resume=resume, on_step=on_step, say=say, state_extra={"data": train_scan.digest()})
    finally:
        teardown_runtime(rt)


__all__ = [
    "BadPair",
    "BaseValidator",
    "initialise",
    "load_backbone",
    "read_state_dict",
    "swin_state_from_timm",
    "train_base",
]
