"""Training the refiner network on a frozen BEN Base (``ben train refiner``).

One step: cached base probability -> confidence trimap (paper Algorithms 1-2) ->
refiner -> alpha (not clamped in the band; the trimap's 0/1 outside it, as the
``net`` refine stage imposes them) -> loss on the gray band. The loop (optimiser,
schedule, DDP, logs, plots, checkpoints, exact resume, signals) is
:func:`ben_cli.train.loop.train`, shared with ``ben train base``.

**Base predictions are cached on disk**, so the frozen base runs once per image,
not once per epoch: ``CACHE/base-<checkpoint sha256[:12]>-<side>-<dtype>/<image
sha256[:24]>.npy`` holds the base logits (float16, side x side) of the image
resized to the working side with Lanczos, exactly what ``ben erase`` feeds the
refiner. The key is the image file's content, the base checkpoint file's
content, the side and the compute dtype, so another run (``--cache DIR``
shared between runs), a resumed run, or a renamed image reuses the file, and a
different base or side never does. Float16 logits keep the probability within
1e-4 of the float32 one where the trimap thresholds are (|logit| < 3.5). The
validation images are cached the same way. Under ``torchrun`` the ranks share
the images still missing and wait for each other. ``--predictions NAME`` takes
the base's probability maps from ``DIR/NAME/`` instead (any segmenter's, or a
benchmark's simulated ones), converted into ``CACHE/predictions-<side>/``.

**Zoomed crops** (``--zoom-prob``): a share of the samples is a working-side
window at the image's own resolution with the cached probability upsampled,
which is what ``ben erase`` refines for images larger than the working side.

**Augmentation** is done after the cache, at the working side: one affine map
(MVANet's flip, centred crop of 1-30 pixels per axis resized back, rotation with
p = 0.2) resamples the image, the cached probability and the mask together
(bilinear; corners become black, background and 0), then the colour jitter
touches the image alone. A function of (seed, draw): resume stays exact.

**The loss**, on the gray band of the trimap only (the known pixels are the
trimap's 0/1, not the refiner's), per image then averaged over the batch:

``L = l1 * mean_band |a - g| + lap * sum_k mean_band_k |Lap_k(a - g)|``

with ``Lap_k`` the band-pass levels k = 0..4 of a Laplacian pyramid (5x5
binomial kernel) and ``band_k`` the band max-pooled to level k. Why this pair:
L1 fits the value of every band pixel but tolerates blur (a smeared hair strand
costs little area, so little L1); the Laplacian pyramid compares the error's
detail at every scale, from single-pixel strands (level 0) to wide soft
transitions (level 4), which is what the gradient and connectivity errors of
matting benchmarks punish. It is linear, so it is taken of the error directly,
and it is the detail term of the matting networks BEN cites (ViTMatte trains
with L1 + Laplacian; FBA Matting too). A Sobel gradient loss sees only the
finest scale and is noisier. The alpha is compared unclamped (the network adds
a linear correction to the probability), so no gradient ever vanishes.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ben_cli.errors import CheckpointError, UsageError
from ben_cli.train.config import TrainConfig, _typed, resolve_config
from ben_cli.train.data import (
    CROP_BORDER,
    ROTATE_MAX,
    ROTATE_PROB,
    BadPair,
    SamplePair,
    color_jitter,
    sample_rng,
)
from ben_cli.train.loop import Runtime, StepHook, TrainResult, broadcast_object, gather_objects, train
from ben_cli.train.loss import LossOutput

CACHE_DIR = "cache"  # inside the run folder, unless --cache says otherwise
REFINER_METRICS = ("sad", "mse", "grad", "mae")
"""Validation errors in the gray band (lower is better); ``best_metric`` is one of them."""
REFINER_LR = {"refiner": 5e-4, "tiny": 1e-3}
FINE_TUNE_LR = 1e-4


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RefinerLossConfig:
    """Weights of the refiner's loss: ``l1`` on alpha and ``lap`` on the Laplacian pyramid of the
    error (``lap_levels`` band-pass levels), both over the gray band."""

    l1: float = 1.0
    lap: float = 1.0
    lap_levels: int = 5


@dataclass(frozen=True)
class RefinerTrainConfig(TrainConfig):
    """:class:`TrainConfig` for ``ben train refiner``: ``model`` names a refiner configuration
    (``refiner``, ``tiny``), ``init`` a refiner checkpoint to fine-tune; ``base_weights`` is the
    frozen base (``None``: the default model's file, searched like ``ben erase``'s); ``cache`` the
    folder of cached base predictions (``None``: ``RUN/cache``); ``zoom_prob`` the share of
    samples cut at the image's own resolution (:func:`zoomed_crop`); ``predictions`` the name
    of a folder beside ``im/`` and ``gt/`` (in ``data`` and ``val``) holding the base's
    probability maps, used instead of running a base (:func:`prediction_logits`)."""

    model: str = "refiner"
    pretrained_backbone: str = ""
    best_metric: str = "sad"
    loss: RefinerLossConfig = field(default_factory=RefinerLossConfig)  # type: ignore[assignment]
    base_weights: str | None = None
    cache: str | None = None
    zoom_prob: float = 0.5
    predictions: str | None = None

    def resolved(self) -> RefinerTrainConfig:
        """Validated copy with ``lr`` (5e-4; 1e-3 for tiny; 1e-4 with ``init``) and ``warmup_steps`` filled in."""
        lr = self.lr if self.lr is not None else (FINE_TUNE_LR if self.init else REFINER_LR.get(self.model, 5e-4))
        return TrainConfig.resolved(replace(self, lr=lr))  # type: ignore[return-value]

    def check(self) -> None:
        """The base checks on everything shared, and the refiner's models, metrics and options."""
        from ben_cli.models.refiner import REFINER_MODELS

        if self.model not in REFINER_MODELS:
            raise UsageError(f"model (--model): unknown refiner model {self.model!r}; "
                             f"known: {', '.join(REFINER_MODELS)}")
        if self.best_metric not in REFINER_METRICS:
            raise UsageError(f"best_metric: unknown metric {self.best_metric!r}; known: {', '.join(REFINER_METRICS)}")
        if self.backbone_weights or self.grad_checkpoint:
            raise UsageError("backbone_weights and grad_checkpoint are options of `ben train base` only")
        if self.predictions and self.base_weights:
            raise UsageError("--predictions and --base-weights exclude each other (the predictions replace the base)")
        if not 0 <= self.zoom_prob <= 1:
            raise UsageError(f"zoom_prob (--zoom-prob): must be in [0, 1], got {self.zoom_prob}")
        if self.loss.lap_levels < 1 or self.loss.l1 < 0 or self.loss.lap < 0:
            raise UsageError("[loss]: lap_levels must be at least 1, l1 and lap not negative")
        TrainConfig.check(replace(self, model="tiny", best_metric="mae"))  # the shared range checks

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RefinerTrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys and wrong types are a UsageError naming ``source``."""
        d = dict(d)
        loss = _typed(RefinerLossConfig, d.pop("loss", {}) or {}, f"{source} [loss]")
        return cls(loss=RefinerLossConfig(**loss), **_typed(cls, d, source))

    def updated(self, overrides: dict[str, Any], source: str = "options") -> RefinerTrainConfig:
        """A copy with ``overrides`` applied (``loss`` may be a partial dict)."""
        merged = self.to_dict()
        for key, value in overrides.items():
            merged[key] = {**merged["loss"], **value} if key == "loss" and isinstance(value, dict) else value
        return type(self).from_dict(merged, source)


def resolve_refiner_config(options: dict[str, Any], *, config_file: str | os.PathLike[str] | None = None,
                           resume: str | os.PathLike[str] | None = None) -> RefinerTrainConfig:
    """:func:`ben_cli.train.config.resolve_config` for the refiner (same precedence)."""
    cfg = resolve_config(options, config_file=config_file, resume=resume, defaults=RefinerTrainConfig())
    return cfg  # type: ignore[return-value]


# --------------------------------------------------------------------------- the loss


def _binomial(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur ([1, 4, 6, 4, 1] / 16 per axis), reflected borders; (B, 1, H, W) -> same."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16
    small = min(x.shape[-2:]) < 3  # too small to reflect by 2: replicate
    x = F.pad(x, (2, 2, 2, 2), mode="replicate" if small else "reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5))
    return F.conv2d(x, k.view(1, 1, 5, 1))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The ``levels`` band-pass levels of ``x`` (B, 1, H, W): ``G_k - up(G_{k+1})`` with
    ``G_{k+1} = blur(G_k)[::2, ::2]``, ``up`` bilinear; level k is about H / 2^k high. The low-pass
    residual is left out (the L1 term holds the value)."""
    out, g = [], x
    for _ in range(levels):
        down = _binomial(g)[..., ::2, ::2]
        out.append(g - F.interpolate(down, size=g.shape[-2:], mode="bilinear", align_corners=False))
        g = down
    return out


def band_mean(x: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Per image mean of ``|x|`` over the ``band`` pixels (0 for an empty band); (B, 1, H, W) -> (B,)."""
    n = band.sum(dim=(1, 2, 3))
    return (x.abs() * band).sum(dim=(1, 2, 3)) / n.clamp_min(1.0)


class RefinerOutputs(NamedTuple):
    """The refiner's alpha, not clamped (B, 1, S, S), and the trimap it was given (B, 1, S, S) uint8."""

    alpha: torch.Tensor
    trimap: torch.Tensor


def known_alpha(alpha: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """The refiner's alpha in the gray band (not clamped: the loss keeps its gradient everywhere), the
    trimap's 0/1 elsewhere; float32, differentiable in the band."""
    return torch.where(trimap == 128, alpha.float(), trimap.float() / 255.0)


class RefinerLoss:
    """``loss(outputs, gt)``: :class:`RefinerOutputs` and the ground truth (B, 1, S, S) in [0, 1] ->
    :class:`LossOutput` with ``total = l1 * L1 + lap * Lap`` and ``parts = {"l1", "lap"}`` (unweighted)."""

    def __init__(self, cfg: RefinerLossConfig | None = None) -> None:
        self.cfg = cfg or RefinerLossConfig()

    def __call__(self, outputs: RefinerOutputs, gt: torch.Tensor) -> LossOutput:
        alpha = known_alpha(outputs.alpha, outputs.trimap)
        band = (outputs.trimap == 128).float()
        err = alpha - gt.float()
        l1 = band_mean(err, band).mean()
        lap = err.new_zeros(())
        mask = band
        for k, level in enumerate(laplacian_pyramid(err, self.cfg.lap_levels)):
            if k:
                mask = F.max_pool2d(mask, 2, ceil_mode=True)[..., : level.shape[-2], : level.shape[-1]]
            lap = lap + band_mean(level, mask).mean()
        total = self.cfg.l1 * l1 + self.cfg.lap * lap
        return LossOutput(total, {"l1": l1, "lap": lap}, [])


# --------------------------------------------------------------------------- the base cache


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def resize_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """(H, W) uint8 -> (side, side) uint8, bilinear (as ``ben train base``)."""
    from PIL import Image

    if mask.shape == (side, side):
        return mask
    return np.array(Image.fromarray(mask).resize((side, side), Image.Resampling.BILINEAR))


def load_base(weights: str | None, device: torch.device) -> tuple[nn.Module, Path]:
    """The frozen base (eval, no DropPath, no gradients) on ``device``, from ``weights`` or the
    default model's file (searched, and downloaded when missing, as ``ben erase`` does)."""
    from ben_cli.checkpoints.load import build_from_checkpoint, read_checkpoint
    from ben_cli.checkpoints.weights import find_weights

    path = find_weights(weights)
    ckpt = read_checkpoint(path)
    if ckpt.arch != "base":
        raise CheckpointError(f"{path}: --base-weights needs a BEN Base checkpoint, not a {ckpt.arch!r} one")
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
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()
        if tell is not None:
            tell(f"cached {done} base prediction(s) in {time.perf_counter() - t0:.1f} s")
    if rt.distributed:
        import torch.distributed as dist

        dist.barrier()
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
        raise UsageError(f"{folder}: no such folder (--predictions {name}: the base's probability maps, "
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


# --------------------------------------------------------------------------- data


def augment_affine(rng: np.random.Generator, side: int) -> torch.Tensor:
    """MVANet's geometric augmentation as one (2, 3) ``affine_grid`` matrix at a square side:
    horizontal flip (p = 0.5), a centred crop removing 1-30 pixels per axis (resized back), and with
    p = 0.2 a rotation by an integer angle in [-15, 15) degrees. Draws from ``rng`` in that order."""
    flip = rng.random() < 0.5
    cw = int(rng.integers(side - CROP_BORDER, side)) if side > CROP_BORDER else side
    ch = int(rng.integers(side - CROP_BORDER, side)) if side > CROP_BORDER else side
    angle = math.radians(int(rng.integers(-ROTATE_MAX, ROTATE_MAX))) if rng.random() < ROTATE_PROB else 0.0
    # output -> input: undo the rotation, then the crop (a zoom), then the flip
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    zoom = np.diag([cw / side, ch / side])
    mirror = np.diag([-1.0 if flip else 1.0, 1.0])
    theta = np.zeros((2, 3))
    theta[:, :2] = mirror @ zoom @ rot
    return torch.from_numpy(theta).float()


def augment_sample(rgb: np.ndarray, mask: np.ndarray, prob: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment a training sample at its side S: (S, S, 3) uint8, (S, S) uint8, (S, S) float32 in [0, 1]
    -> the same, moved together by :func:`augment_affine` (bilinear, zeros outside), the colour
    jitter of ``ben train base`` on the image alone."""
    from PIL import Image

    side = rgb.shape[0]
    stack = torch.cat([torch.tensor(rgb).permute(2, 0, 1).float() / 255.0,
                       torch.tensor(mask)[None].float() / 255.0, torch.tensor(prob)[None].float()])
    grid = F.affine_grid(augment_affine(rng, side)[None], [1, 5, side, side], align_corners=False)
    moved = F.grid_sample(stack[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    to_u8 = lambda t: t.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)  # noqa: E731
    img = color_jitter(Image.fromarray(to_u8(moved[:3]).permute(1, 2, 0).numpy()), rng)
    return np.array(img.convert("RGB")), to_u8(moved[3]).numpy(), moved[4].clamp(0, 1).numpy()


def zoomed_crop(rgb: np.ndarray, mask: np.ndarray, prob: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A working-side crop at the image's own resolution, as ``ben erase`` refines large images.

    The base probability (S, S) is upsampled bilinearly to the image's size (H, W) >= (S, S)
    (:func:`ben_cli.compose.resize_alpha`, as the full-resolution refinement does), and an S x S
    window is cut from the image, the mask and that probability, centred (within the image) on a
    pixel drawn among those with a probability in (0.03, 0.97), or anywhere when there is none.
    Returns (S, S, 3) uint8, (S, S) uint8, (S, S) float32.
    """
    from ben_cli.compose import resize_alpha

    side = prob.shape[0]
    height, width = rgb.shape[:2]
    unsure = np.flatnonzero((prob > 0.03) & (prob < 0.97))
    if unsure.size:
        cy, cx = divmod(int(unsure[rng.integers(unsure.size)]), side)
        cy, cx = (cy + 0.5) * height / side, (cx + 0.5) * width / side
    else:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    y0 = int(np.clip(round(cy - side / 2), 0, height - side))
    x0 = int(np.clip(round(cx - side / 2), 0, width - side))
    full = resize_alpha(torch.from_numpy(prob)[None, None], (height, width))[0, 0]
    window = (slice(y0, y0 + side), slice(x0, x0 + side))
    return rgb[window], mask[window], full[window].numpy()


class RefinerDataset:
    """Map-style dataset: image, mask and cached base probability at the working side.

    ``dataset[(index, draw)]`` -> ``{"image": uint8 (3, S, S), "mask": uint8 (1, S, S),
    "prob": float32 (1, S, S) in [0, 1], "index": int}``; ``draw`` seeds the augmentation
    (:class:`~ben_cli.train.data.StreamSampler`), a plain ``int`` key means none.
    """

    def __init__(self, pairs: Sequence[SamplePair], cache_paths: Sequence[Path], resolution: int, *,
                 augment: bool = True, seed: int = 0, zoom_prob: float = 0.0) -> None:
        if not pairs or len(pairs) != len(cache_paths):
            raise UsageError("no usable training pairs")
        self.pairs, self.cache_paths = list(pairs), list(cache_paths)
        self.resolution, self.augment, self.seed, self.zoom_prob = resolution, augment, seed, zoom_prob

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, draw: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image (S, S, 3) uint8, mask (S, S) uint8, prob (S, S) float32) of pair ``index``.

        With a ``draw``: a zoomed crop with probability ``zoom_prob`` (when the image is at least
        S x S), then the augmentation when ``augment``; both drawn from ``(seed, draw)``.
        """
        from ben_cli.io import read_gray, read_image
        from ben_cli.resize import resize_for_model

        pair, side = self.pairs[index], self.resolution
        logits = read_cached_logits(self.cache_paths[index])
        if logits.shape != (side, side):
            raise UsageError(f"{self.cache_paths[index]}: cached logits are {logits.shape}, not {side}x{side}")
        prob = torch.from_numpy(logits.astype(np.float32)).sigmoid_().numpy()
        rgb, mask = read_image(pair.image).rgb, read_gray(pair.mask)
        rng = sample_rng(self.seed, draw) if draw is not None else None
        if (rng is not None and self.zoom_prob > 0 and min(rgb.shape[:2]) >= side
                and rng.random() < self.zoom_prob):
            rgb, mask, prob = zoomed_crop(rgb, mask, prob, rng)
        else:
            rgb, mask = resize_for_model(rgb, side), resize_mask(mask, side)
        if rng is not None and self.augment:
            rgb, mask, prob = augment_sample(rgb, mask, prob, rng)
        return rgb, mask, prob

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, draw = (key, None) if isinstance(key, int) else (int(key[0]), int(key[1]))
        rgb, mask, prob = self.load(index, draw)
        return {
            "image": torch.tensor(rgb).permute(2, 0, 1).contiguous(),
            "mask": torch.tensor(mask)[None],
            "prob": torch.tensor(prob, dtype=torch.float32)[None],
            "index": index,
        }


def refiner_forward(net: nn.Module, batch: Mapping[str, torch.Tensor]) -> RefinerOutputs:
    """Trimap of the batch's probability, then the refiner: the training step's forward pass."""
    from ben_cli.refine import trimap_from_prob

    prob = batch["prob"].float()
    trimap = trimap_from_prob(prob)
    return RefinerOutputs(net(batch["image"].float() / 255.0, prob, trimap), trimap)


# --------------------------------------------------------------------------- validation


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


# --------------------------------------------------------------------------- entry point


def _initialise(model: nn.Module, path: str) -> str:
    from ben_cli.checkpoints.load import load_state_dict_strict, read_checkpoint

    ckpt = read_checkpoint(path)
    if ckpt.arch != "refiner":
        raise CheckpointError(f"{path}: --init needs a refiner checkpoint, not a {ckpt.arch!r} one")
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
                        raise UsageError(f"{message}\n(--strict: add the predictions or remove the pairs)")
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
    from ben_cli.train.loop import main_rank_say, require_run_folders, setup_runtime, teardown_runtime

    cfg = cfg.resolved()
    require_run_folders(cfg.data, cfg.out, "a folder with im/ and gt/: images and their alpha mattes or masks")
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
    "BaseCache",
    "RefinerDataset",
    "RefinerLoss",
    "RefinerLossConfig",
    "RefinerOutputs",
    "RefinerTrainConfig",
    "RefinerValidator",
    "augment_sample",
    "fill_cache",
    "laplacian_pyramid",
    "resolve_refiner_config",
    "train_refiner",
]
