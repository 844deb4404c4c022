"""Refiners: re-estimate the gray band of the confidence trimap (paper section 3.3). One module per method.

Every refiner is a :class:`RefineStage`: batched tensors in, alpha out, exactly
1 where the trimap is 255 and 0 where it is 0 (:func:`clamp_known`); only the
gray band (128) carries the method's estimate. ``none`` is the exception: it
returns the base probability untouched, so ``--refiner none`` is the base model
alone, as the official code computes it.

================  ===========================================================
``none``          the base probability (:class:`NoRefiner`)
``matting``       the default training-free method (:data:`DEFAULT_MATTING`)
``matting-gf``    colour-guided filter of the probability (:mod:`.guided`)
``matting-cg``    closed-form matting by conjugate gradients on the device (:mod:`.matting`)
``matting-cf``    closed-form matting with pymatting on the CPU (:mod:`.closed_form`; slow)
``net``           the refiner network (:mod:`.net`)
================  ===========================================================

:func:`refine` is the one-call version for scripts (numpy in and out);
:func:`ben_cli.refine.tiles.refine_full_resolution` refines large images tile by tile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ben_cli.errors import OptionError
from ben_cli.lazy import import_if_present, resolve

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ben_cli.config import TrimapConfig


class RefineStage(Protocol):
    """What a refiner offers the Eraser.

    ``name``: what ``--report`` records; ``needs_trimap``: whether the Eraser
    must compute the trimap for it (``none`` does not).
    """

    name: str
    needs_trimap: bool

    def __call__(self, image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor | None) -> torch.Tensor:
        """image (B, 3, H, W) float in [0, 1], prob (B, 1, H, W) float in [0, 1], trimap (B, 1, H, W) uint8
        {0, 128, 255}, all on one device -> alpha (B, 1, H, W) float32 in [0, 1] on that device: 1 where
        the trimap is 255, 0 where it is 0, the method's estimate where it is 128. Any H, W."""
        ...

    def replicate(self, device: torch.device) -> RefineStage:
        """This stage for a model replica on ``device`` (:meth:`ben_cli.pipeline.Eraser.replicate`): a stage
        with weights returns a copy holding them on ``device``; a training-free one returns itself (it
        runs on its inputs' device and holds nothing a call changes)."""
        ...


class NoRefiner:
    """The base probability as the alpha (the trimap is not used, not even to clamp)."""

    name = "none"
    needs_trimap = False
    halo = 0

    def __call__(self, image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor | None) -> torch.Tensor:
        return prob

    def replicate(self, device: torch.device) -> NoRefiner:
        """Itself: nothing to copy (:meth:`RefineStage.replicate`)."""
        return self


# --------------------------------------------------------------------------- helpers shared by the methods


def check_inputs(image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a refiner's inputs; returns ``(image, prob)`` as float32 and the trimap.

    Raises ``ValueError`` for shapes that do not match, ``TypeError`` for a
    non-float image or probability or a non-uint8 trimap.
    """
    import torch

    if trimap is None:
        raise ValueError("this refiner needs the trimap")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    want = (image.shape[0], 1, *image.shape[2:])
    for what, t in (("prob", prob), ("trimap", trimap)):
        if tuple(t.shape) != want:
            raise ValueError(f"{what} must be {want} to match the image, got {tuple(t.shape)}")
    if not image.is_floating_point() or not prob.is_floating_point():
        raise TypeError(f"image and prob must be float tensors, got {image.dtype} and {prob.dtype}")
    if trimap.dtype != torch.uint8:
        raise TypeError(f"trimap must be uint8, got {trimap.dtype}")
    return image.float(), prob.float(), trimap


def clamp_known(alpha: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
    """Alpha with the trimap's known pixels imposed: exactly 1 at 255, exactly 0 at 0.

    Args:
        alpha: (B, 1, H, W) float, the estimate (any range; NaN becomes 0).
        trimap: (B, 1, H, W) uint8 {0, 128, 255}.

    Returns:
        (B, 1, H, W) float32 in [0, 1]; the gray pixels keep ``alpha`` clipped to [0, 1].
    """
    a = alpha.float().nan_to_num(nan=0.0).clamp_(0, 1)
    a = a.masked_fill(trimap == 255, 1.0)
    return a.masked_fill_(trimap == 0, 0.0)


# --------------------------------------------------------------------------- the registry

RefinerFactory = Callable[..., RefineStage]
"""``factory(*, weights=None, device=None, **options) -> RefineStage``."""

DEFAULT_MATTING = "matting-gf"
"""The method behind ``--refiner matting`` (chosen with ``scripts/bench_refiner.py``)."""


def _no_weights(name: str, weights: Any) -> None:
    if weights is not None:
        raise OptionError("refiner_weights", f"the {name!r} refiner takes no weights (only 'net' does)")


def _training_free(path: str, name: str) -> RefinerFactory:
    """Factory of the dataclass at ``path`` (``module:Class``), imported on first use."""

    def factory(*, weights: Any = None, device: Any = None, **options: Any) -> RefineStage:
        del device  # pure tensor math: runs on the inputs' device
        _no_weights(name, weights)
        cls = resolve(path)
        try:
            stage = cls(**options)
        except (TypeError, ValueError) as e:
            raise OptionError("refiner", f"bad option for the {name!r} refiner: {e}") from None
        return dataclasses.replace(stage, name=name)

    return factory


def _none(*, weights: Any = None, device: Any = None, **options: Any) -> RefineStage:
    del device
    _no_weights("none", weights)
    if options:
        raise OptionError("refiner", f"the 'none' refiner takes no options, got {sorted(options)}")
    return NoRefiner()


BUILTIN_REFINERS: dict[str, str] = {
    "matting-gf": "ben_cli.refine.guided:GuidedFilterRefiner",
    "matting-cg": "ben_cli.refine.matting:LaplacianRefiner",
    "matting-cf": "ben_cli.refine.closed_form:PyMattingRefiner",
}
"""The training-free methods, as ``module:Class`` (imported when asked for, so this package needs no torch)."""

REFINERS: dict[str, RefinerFactory | str] = {
    "none": _none,
    "matting": _training_free(BUILTIN_REFINERS[DEFAULT_MATTING], "matting"),
    **{name: _training_free(path, name) for name, path in BUILTIN_REFINERS.items()},
    "net": "ben_cli.refine.net:load_net_refiner",
}
"""Name -> factory, or the ``"module:attr"`` path of one (imported on first request)."""

LAZY_REFINERS: dict[str, str] = {}
"""Plug-in refiners: name -> a module outside this package that calls :func:`register_refiner` when imported."""


def register_refiner(name: str, factory: RefinerFactory) -> None:
    """Make ``get_refiner(name, ...)`` call ``factory(weights=..., device=..., **options)`` (for plug-ins)."""
    REFINERS[name] = factory


def available_refiners() -> list[str]:
    """Every name :func:`get_refiner` accepts (plug-ins included)."""
    return sorted({*REFINERS, *LAZY_REFINERS})


def get_refiner(name: str, *, weights: Any = None, device: Any = None, **options: Any) -> RefineStage:
    """The refine stage called ``name``: ``none``, ``matting`` (the default method), ``matting-gf``,
    ``matting-cg``, ``matting-cf`` or ``net`` (or a plug-in).

    ``weights`` (a path) only for refiners that have weights; ``device`` where
    they live (the training-free ones run wherever their inputs are); ``options``
    are the method's parameters (``radius=8``). Raises :class:`OptionError`
    for an unknown name, weights given to a method without any, or a bad option.
    """
    key = str(name).strip().lower()
    if key not in REFINERS and key in LAZY_REFINERS:
        import_if_present(LAZY_REFINERS[key])
    if key not in REFINERS:
        raise OptionError("refiner", f"unknown or unavailable refiner {name!r} (use {', '.join(sorted(REFINERS))})")
    entry = REFINERS[key]
    factory = resolve(entry) if isinstance(entry, str) else entry
    return factory(weights=weights, device=device, **options)


# --------------------------------------------------------------------------- the one-call version


def trimap_from_prob(prob: torch.Tensor, config: TrimapConfig | None = None) -> torch.Tensor:
    """Confidence trimap (paper Algorithms 1-2) of probabilities, exactly as of the logits they came from.

    Args:
        prob: (B, 1, H, W) float in [0, 1] (float16/bfloat16 are compared in float32).
        config: thresholds; ``None``: the paper's, ``N_min`` scaled to H*W.

    Returns:
        (B, 1, H, W) uint8 {0, 128, 255}: what :func:`ben_cli.trimap.confidence_trimap`
        gives for logits whose sigmoid is ``prob`` (no round trip through a logit).
    """
    import torch

    from ben_cli.config import TrimapConfig
    from ben_cli.trimap import _check_logits, _trimap_from_probs

    _check_logits(prob)
    probs = prob.float() if prob.dtype in (torch.float16, torch.bfloat16) else prob
    return _trimap_from_probs(probs, config or TrimapConfig())


def refine(image: np.ndarray, prob: np.ndarray, method: str = "matting", weights: Any = None,
           *, device: Any = None) -> np.ndarray:
    """Refine one base probability map with the image (the script entry point).

    Builds the confidence trimap of ``prob`` with the paper's parameters
    (``N_min`` = 60,000 scaled to H*W) and runs the refiner ``method``.

    Args:
        image: (H, W, 3) uint8 RGB.
        prob: (H, W) float in [0, 1], the base probability at the image's size.
        method: a :func:`get_refiner` name (``matting``, ``none``, ``net``, ...).
        weights: the refiner's weights (``net`` only).
        device: where to compute (default: CPU).

    Returns:
        (H, W) float32 in [0, 1]: 1 where the trimap is 255, 0 where it is 0 (except ``none``).
    """
    import numpy as np
    import torch

    image = np.asarray(image)
    prob = np.asarray(prob)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    if prob.shape != image.shape[:2]:
        raise ValueError(f"prob must be (H, W) = {image.shape[:2]}, got {prob.shape}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    stage = get_refiner(method, weights=weights, device=dev)
    rgb = torch.from_numpy(np.ascontiguousarray(image)).to(dev).permute(2, 0, 1)[None].float().div_(255)
    p = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32)).to(dev)[None, None]
    with torch.inference_mode():
        trimap = trimap_from_prob(p) if stage.needs_trimap else None
        alpha = stage(rgb, p, trimap)
    return np.array(alpha[0, 0].float().cpu().numpy())  # a copy: "none" returns its input tensor


__all__ = [
    "DEFAULT_MATTING",
    "LAZY_REFINERS",
    "REFINERS",
    "NoRefiner",
    "RefineStage",
    "available_refiners",
    "check_inputs",
    "clamp_known",
    "get_refiner",
    "refine",
    "register_refiner",
    "trimap_from_prob",
]
