"""Confidence trimap of the paper (section 3.3, Algorithms 1 and 2), pure and batched.

Algorithm 1 labels each pixel of ``M = sigmoid(P)``: 255 where ``M >= t_h``, 0
where ``M <= t_l``, 128 in between. Algorithm 2 widens both thresholds by one
``step`` (clamped to ``t_min``/``t_max``) and relabels, while there are fewer
than ``N_min`` gray pixels and the bounds are not both reached. Each image of
a batch runs its own loop and ends with its own thresholds.

Listing 1 of the paper is not Algorithm 2: as printed, the relabelling and the
recount sit after the loop, so a map that starts short of ``N_min`` always goes
to the bounds; even re-indented, its ``break`` at the bounds skips the last
relabelling, and it counts gray pixels over the whole batch. We follow Algorithm 2.

Exact semantics (shared by :func:`confidence_trimap` and :func:`trimap_reference`):

* Probabilities: ``logits.sigmoid()`` in the logits' dtype for float32/float64;
  float16/bfloat16 logits are converted to float32 first. One call for the
  whole batch (:func:`probabilities`).
* Thresholds are Python floats updated exactly as the loop does
  (``t_l = max(t_l - step, t_min)``, ``t_h = min(t_h + step, t_max)``, so
  ``0.9 + 0.001 + 0.001`` accumulates binary rounding like the loop does), and
  the stopping test ``t_l > t_min or t_h < t_max`` is done on those Python floats.
* Comparisons: torch compares a float32 tensor with a Python float by first
  rounding the float to float32 (round to nearest even); so ``M >= 0.9`` is
  ``M >= float32(0.9)``, which holds for ``M = 0.89999998`` although that is
  below the real 0.9. Float64 probabilities compare with the exact double.
  (With the paper's parameters the float32 values of the accumulated thresholds
  equal those of ``round(t, 3)``; in float64 87 of the 142 differ.)
* ``N_min`` (``min_gray=None``) is ``round(60000 * H * W / 1024**2)`` computed
  exactly, halves to even (:meth:`TrimapConfig.min_gray_for`).
* A NaN probability is gray (both comparisons are false), as in the loop.

:func:`confidence_trimap` computes all steps at once: every threshold the loop
can visit is known in advance, so one pass classifies each pixel against all of
them, a per-image histogram of those classes gives the gray count of every
step, and each image picks its first step with enough gray pixels. No host-device
synchronisation (no ``.item()``, no boolean indexing, host tables copied from
pinned memory without blocking), so that ``torch.cuda.set_sync_debug_mode("error")``
does not trip (``tests/test_trimap.py::test_cuda_no_host_sync``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from functools import lru_cache
from typing import NamedTuple

import torch

from ben_cli.config import TrimapConfig

_MAX_STEPS = 1_000_000  # a schedule longer than this is refused (memory, and surely a mistake)
_MIN_BINS, _MAX_BINS = 1024, 65536  # coarse bins for the classification, powers of two


def default_min_gray(height: int, width: int) -> int:
    """The paper's 60,000 gray pixels at 1024x1024, scaled by ``height * width / 1024**2``
    (:meth:`TrimapConfig.min_gray_for` with ``min_gray=None``)."""
    return TrimapConfig(min_gray=None).min_gray_for(height, width)


def resolve_config(config: TrimapConfig | None = None, **overrides: float | int | None) -> TrimapConfig:
    """``config`` (default :class:`TrimapConfig`) with some fields replaced by keyword.

    Raises ``TypeError`` for a keyword that is not a field of :class:`TrimapConfig`.
    """
    config = TrimapConfig() if config is None else config
    if not overrides:
        return config
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrimapConfig)})
    if unknown:
        raise TypeError(f"unknown trimap parameter(s) {', '.join(unknown)}; TrimapConfig fields only")
    return dataclasses.replace(config, **overrides)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid of ``logits``: float32 for float16/bfloat16/float32 input, float64 for float64.

    Same shape and device; values in [0, 1] (NaN stays NaN).
    """
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits.sigmoid()


def threshold_schedule(
    t_low: float, t_high: float, t_min: float, t_max: float, step: float
) -> list[tuple[float, float]]:
    """Every ``(t_l, t_h)`` the loop of Algorithm 2 can visit, in order, as Python floats.

    Entry 0 is ``(t_low, t_high)``; entry k is the pair after k widenings, computed
    with the loop's own float arithmetic. The last entry is the first pair with
    both bounds reached (``t_l <= t_min and t_h >= t_max``): the loop stops there
    whatever the gray count. Raises ``ValueError`` for a non-positive or
    non-finite parameter, or a step too small to move the thresholds (on which
    the loop itself would never end).
    """
    params = {"t_low": t_low, "t_high": t_high, "t_min": t_min, "t_max": t_max, "step": step}
    for name, value in params.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if not step > 0:
        raise ValueError(f"step must be positive, got {step}")
    t_l, t_h = float(t_low), float(t_high)
    t_min, t_max, step = float(t_min), float(t_max), float(step)
    states = [(t_l, t_h)]
    while t_l > t_min or t_h < t_max:
        t_l = max(t_l - step, t_min)
        t_h = min(t_h + step, t_max)
        if (t_l, t_h) == states[-1]:
            raise ValueError(f"step {step} is too small to move the thresholds {states[-1]}")
        states.append((t_l, t_h))
        if len(states) > _MAX_STEPS:
            raise ValueError(f"more than {_MAX_STEPS} threshold steps; step {step} is too small")
    return states


class _Tables(NamedTuple):
    """Host tables for one schedule and one probability dtype (see :func:`_tables`)."""

    t_low: torch.Tensor  # (K+1,) t_l_k rounded to the probability dtype
    t_high: torch.Tensor  # (K+1,) t_h_k rounded to the probability dtype
    low_class: torch.Tensor  # (K+1,) int64: M <= t_l_k  <=>  class <= low_class[k]
    high_class: torch.Tensor  # (K+1,) int64: M >= t_h_k  <=>  class >  high_class[k]
    bounds: torch.Tensor  # (U,) sorted distinct boundaries u; class = #{u : M > u}, U + 1 = NaN
    bins: int  # R > 0: pixel key = 2 * trunc(M * R) + (M > bin_boundary); 0: key = class
    bin_boundary: torch.Tensor  # (R+2,) the one boundary inside each bin, +inf if none
    key_class: torch.Tensor  # (S,) int64: the class of each key (S = 2R + 4, or U + 2)


@lru_cache(maxsize=64)
def _tables(
    t_low: float, t_high: float, t_min: float, t_max: float, step: float, dtype: torch.dtype
) -> _Tables:
    """Classification tables of a schedule for probabilities of ``dtype`` (float32 or float64).

    The loop's tests ``M <= t_l`` and ``M >= t_h`` become strict tests ``M > u``:
    ``u = t_l`` for the first and ``u = nextafter(t_h, -inf)`` for the second
    (in ``dtype``, for finite floats ``M >= t`` iff ``M > nextafter(t, -inf)``).
    With the distinct boundaries ``u`` sorted, a pixel's class is the number of
    boundaries below it, 0..U; class U + 1 is NaN. Every test of every step is
    then a comparison of the class with an index.

    To find the class without a binary search, ``M`` in [0, 1] goes to the bin
    ``trunc(M * R)``, 0..R (exact for a power of two R, and monotone; NaN goes
    to bin R + 1). R is the smallest power of two from 1024 that puts no two
    boundaries in one bin, so one comparison with the bin's boundary finishes
    the job: key ``2 * bin + (M > bin_boundary[bin])``, class ``key_class[key]``.
    ``bins == 0`` means no such R up to 65536 (thresholds closer than 2**-16):
    the caller then finds the class with ``torch.searchsorted``.
    """
    states = threshold_schedule(t_low, t_high, t_min, t_max, step)
    lows = torch.tensor([s[0] for s in states], dtype=torch.float64).to(dtype)
    highs = torch.tensor([s[1] for s in states], dtype=torch.float64).to(dtype)
    below_highs = torch.nextafter(highs, torch.tensor(-math.inf, dtype=dtype))
    low_list, below_list = lows.tolist(), below_highs.tolist()
    bounds = sorted(set(low_list) | set(below_list))
    index = {u: i for i, u in enumerate(bounds)}
    nan_class = len(bounds) + 1

    bins = _MIN_BINS
    while bins <= _MAX_BINS:
        # The bin of u, exactly as the device computes trunc(M * R): u * R is exact.
        which = [math.trunc(u * bins) for u in bounds]
        inside = [w for w in which if 0 <= w <= bins]
        if len(inside) == len(set(inside)):
            break
        bins *= 2
    else:
        bins = 0
    if bins:
        boundary = [math.inf] * (bins + 2)  # M > inf is false (and NaN > anything is false)
        starts = [0] * (bins + 1)  # starts[b]: boundaries whose first bin entirely above them is b
        for u, w in zip(bounds, which, strict=True):
            if 0 <= w <= bins:
                boundary[w] = u
            if w < bins:
                starts[max(w + 1, 0)] += 1
        base = [*itertools.accumulate(starts)]  # boundaries below all of bin b
        key_class = [c for b in base for c in (b, min(b + 1, nan_class - 1))] + [nan_class, nan_class]
        bin_boundary = torch.tensor(boundary, dtype=dtype)
    else:
        key_class = list(range(nan_class + 1))
        bin_boundary = torch.empty(0, dtype=dtype)
    return _Tables(
        t_low=lows,
        t_high=highs,
        low_class=torch.tensor([index[u] for u in low_list], dtype=torch.int64),
        high_class=torch.tensor([index[u] for u in below_list], dtype=torch.int64),
        bounds=torch.tensor(bounds, dtype=dtype),
        bins=bins,
        bin_boundary=bin_boundary,
        key_class=torch.tensor(key_class, dtype=torch.int64),
    )


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host table to ``device`` without a synchronising copy (pinned + non_blocking on CUDA)."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be (B, 1, H, W), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")


class _Selection(NamedTuple):
    keys: torch.Tensor  # (B*H*W,) int32 key of each pixel, offset by image: b * S + key
    key_class: torch.Tensor  # (S,) int64 class of each key
    n_classes: int  # U + 2, the last one NaN
    low_class: torch.Tensor  # (B,) int64: M <= t_l  <=>  class <= low_class
    high_class: torch.Tensor  # (B,) int64: M >= t_h  <=>  class > high_class
    t_low: torch.Tensor  # (B,) final t_l in the probability dtype
    t_high: torch.Tensor  # (B,) final t_h in the probability dtype
    steps: torch.Tensor  # (B,) int64 number of widening steps


def _select(probs: torch.Tensor, config: TrimapConfig) -> _Selection:
    """Classify every pixel and pick each image's final step. ``probs``: (B, 1, H, W) float32/64."""
    min_gray = config.min_gray_for(probs.shape[2], probs.shape[3])
    params = (config.t_low, config.t_high, config.t_min, config.t_max, config.step)
    tables = _tables(*map(float, params), probs.dtype)
    device = probs.device
    batch = probs.shape[0]
    flat = probs.reshape(batch, -1)
    n_keys = tables.key_class.numel()
    n_classes = tables.bounds.numel() + 2
    offsets = torch.arange(batch, dtype=torch.int32, device=device).unsqueeze(1) * n_keys
    if tables.bins:
        # trunc(M * R) is exact for M in [0, 1]; NaN goes to the extra bin R + 1. Few fresh
        # buffers: on the CPU, first-touch page faults cost as much as the arithmetic.
        scratch = (flat * tables.bins).nan_to_num_(nan=tables.bins + 1.0)
        keys = scratch.to(torch.int32)  # the bin of each pixel
        boundary = scratch.view(-1)  # reused for the boundary of each pixel's bin
        torch.index_select(_to_device(tables.bin_boundary, device), 0, keys.view(-1), out=boundary)
        above = torch.gt(flat, scratch).to(torch.int32)
        keys.mul_(2).add_(offsets).add_(above)  # b * S + 2 * bin + (M > boundary)
    else:
        classes = torch.searchsorted(_to_device(tables.bounds, device), flat, out_int32=True)
        keys = classes.masked_fill_(torch.isnan(flat), n_classes - 1) + offsets
    keys = keys.view(-1)

    ones = torch.ones(1, dtype=torch.int64, device=device).expand_as(keys)
    key_counts = torch.zeros(batch * n_keys, dtype=torch.int64, device=device).index_add_(0, keys, ones)
    key_class = _to_device(tables.key_class, device)
    counts = torch.zeros(batch, n_classes, dtype=torch.int64, device=device)
    counts.index_add_(1, key_class, key_counts.view(batch, n_keys))
    below = counts.cumsum(1)  # below[:, c]: pixels of class <= c
    low_class = _to_device(tables.low_class, device)
    high_class = _to_device(tables.high_class, device)
    # Gray pixels at step k: low_class[k] < class <= high_class[k], and the NaN ones.
    gray = (below.index_select(1, high_class) - below.index_select(1, low_class)).clamp_(min=0)
    gray += counts[:, -1:]
    enough = gray >= min_gray
    enough[:, -1] = True  # the loop stops at the last step whatever the count
    steps = (~enough).cumprod(1).sum(1)  # the first step with enough gray pixels
    return _Selection(
        keys=keys,
        key_class=key_class,
        n_classes=n_classes,
        low_class=low_class.index_select(0, steps),
        high_class=high_class.index_select(0, steps),
        t_low=_to_device(tables.t_low, device).index_select(0, steps),
        t_high=_to_device(tables.t_high, device).index_select(0, steps),
        steps=steps,
    )


def confidence_trimap(
    logits: torch.Tensor, config: TrimapConfig | None = None, **overrides: float | int | None
) -> torch.Tensor:
    """Confidence trimap of base logits, exactly as Algorithms 1 and 2 (vectorised, batched).

    Args:
        logits: (B, 1, H, W) float base-model logits (any float dtype, any device).
        config: thresholds and ``min_gray`` (``N_min``); ``None``: the paper's
            (:class:`TrimapConfig` defaults; ``min_gray=None`` scales 60,000 at
            1024x1024 by H*W).
        overrides: fields of :class:`TrimapConfig` to replace, by name
            (``min_gray=200``); ``TypeError`` for any other name.

    Returns:
        (B, 1, H, W) uint8 on the logits' device, values in {0, 128, 255}; pixel
        for pixel equal to :func:`trimap_reference` (semantics in the module docstring).
    """
    _check_logits(logits)
    return _trimap_from_probs(probabilities(logits), resolve_config(config, **overrides))


def trimap_thresholds(
    logits: torch.Tensor, config: TrimapConfig | None = None, **overrides: float | int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image's final ``(t_l, t_h)`` and step count, as :func:`confidence_trimap` finds them.

    Same arguments as :func:`confidence_trimap`. Returns three (B,) tensors on the
    logits' device: ``t_l`` and ``t_h`` in the probability dtype (the float32/float64
    values the comparisons use), and the number of widening steps (int64; 0 when
    Algorithm 1's trimap had enough gray).
    """
    _check_logits(logits)
    sel = _select(probabilities(logits), resolve_config(config, **overrides))
    return sel.t_low, sel.t_high, sel.steps


def trimap_reference(
    logits: torch.Tensor, config: TrimapConfig | None = None, **overrides: float | int | None
) -> torch.Tensor:
    """Reference: Algorithms 1 and 2 as a plain loop, image by image (slow; for tests and benchmarks).

    Python-float thresholds, one ``torch.where`` relabelling and one ``.item()``
    count per step. Same arguments, result and semantics as :func:`confidence_trimap`.
    """
    _check_logits(logits)
    return _reference_from_probs(probabilities(logits), resolve_config(config, **overrides))


def _trimap_from_probs(probs: torch.Tensor, config: TrimapConfig) -> torch.Tensor:
    """:func:`confidence_trimap` of probabilities ``probs`` (B, 1, H, W) float32/float64."""
    batch, _, height, width = probs.shape
    sel = _select(probs, config)
    # Label of each class for each image, with the loop's precedence:
    # torch.where(M >= t_h, 255, torch.where(M <= t_l, 0, 128)); the last class (NaN) is gray.
    device = probs.device
    cls = torch.arange(sel.n_classes, device=device)
    labels = torch.full((batch, sel.n_classes), 128, dtype=torch.uint8, device=device)
    labels.masked_fill_(cls <= sel.low_class.unsqueeze(1), 0)
    labels.masked_fill_(cls > sel.high_class.unsqueeze(1), 255)
    labels[:, -1] = 128
    key_labels = labels.index_select(1, sel.key_class).view(-1)  # (B * S,)
    return key_labels.index_select(0, sel.keys).view(batch, 1, height, width)


def _reference_from_probs(probs: torch.Tensor, config: TrimapConfig) -> torch.Tensor:
    """:func:`trimap_reference` of probabilities ``probs`` (B, 1, H, W) float32/float64."""
    _, _, height, width = probs.shape
    n_min = config.min_gray_for(height, width)
    t_min, t_max, step = config.t_min, config.t_max, config.step
    threshold_schedule(config.t_low, config.t_high, t_min, t_max, step)  # the same parameter checks
    out = []
    for m in probs.unbind(0):  # m: (1, H, W), M of one image
        t_l, t_h = config.t_low, config.t_high
        trimap = torch.where(m >= t_h, 255, torch.where(m <= t_l, 0, 128))  # Algorithm 1
        n_g = (trimap == 128).sum().item()
        while n_g < n_min and (t_l > t_min or t_h < t_max):  # Algorithm 2
            t_l = max(t_l - step, t_min)
            t_h = min(t_h + step, t_max)
            trimap = torch.where(m >= t_h, 255, torch.where(m <= t_l, 0, 128))
            n_g = (trimap == 128).sum().item()
        out.append(trimap.to(torch.uint8))
    return torch.stack(out)


def trimap_overlay(
    rgb: torch.Tensor,
    trimap: torch.Tensor,
    *,
    tint: tuple[int, int, int] = (255, 0, 255),
    opacity: float = 0.5,
    dim: float = 0.35,
) -> torch.Tensor:
    """Picture of a trimap over its image: gray band tinted, background darkened, foreground as is.

    Args:
        rgb: (B, 3, H, W) uint8 in [0, 255] or float in [0, 1].
        trimap: (B, 1, H, W) uint8 in {0, 128, 255}.
        tint: colour of the unknown band (0..255 per channel), mixed in at ``opacity``.
        dim: brightness factor of the background (trimap 0).

    Returns:
        (B, 3, H, W) in rgb's dtype and range (uint8 rounded to nearest).
    """
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must be (B, 3, H, W), got {tuple(rgb.shape)}")
    expected = (rgb.shape[0], 1, *rgb.shape[2:])
    if tuple(trimap.shape) != expected:
        raise ValueError(f"trimap must be {expected} to match rgb, got {tuple(trimap.shape)}")
    integer = rgb.dtype == torch.uint8
    x = rgb.float()
    scale = 1.0 if integer else 1.0 / 255.0
    colour = torch.tensor(tint, dtype=torch.float32, device=rgb.device).view(1, 3, 1, 1) * scale
    tinted = x * (1 - opacity) + colour * opacity
    out = torch.where(trimap == 128, tinted, torch.where(trimap == 0, x * dim, x))
    if integer:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(rgb.dtype)
