"""The Python API for scripts: ``load_model`` (a checkpoint in eval mode) and ``remove`` (a cutout of one
Pillow image, the model cached between calls). Importing this module imports no torch."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image
    from torch import nn

    from ben_cli.models.ben import BenBase
    from ben_cli.options import InferenceOptions
    from ben_cli.pipeline import Eraser

_LOCK = threading.Lock()


def load_model(path: Any = None, *, model: str | None = None, config: Any = None, device: Any = "cpu") -> BenBase:
    """Load a BEN Base checkpoint (official ``.pth``, ``.safetensors`` or ours) in eval mode.

    ``path=None`` searches the usual places for the file of ``model`` (default
    ``ben2-base``; see ``ben weights``) and downloads the official file if nothing is found.
    """
    from ben_cli.checkpoints.load import load_model as load

    return load(path, model=model, config=config, device=device)


@functools.lru_cache(maxsize=2)
def _eraser(options: InferenceOptions) -> Eraser:
    from ben_cli.pipeline import Eraser

    return Eraser.from_options(options)


def get_eraser(options: InferenceOptions) -> Eraser:
    """The Eraser of ``options``, loaded once per process and options (the two most recent are kept)."""
    with _LOCK:
        return _eraser(options)


@functools.lru_cache(maxsize=2)
def _module_eraser(net: nn.Module, options: InferenceOptions) -> Eraser:
    """An Eraser around a network already loaded (:func:`load_model`): on ``options.device`` (``auto``:
    where the network's weights are), in ``options.precision``, with ``options``' refiner."""
    from ben_cli.device import resolve_device, resolve_dtype
    from ben_cli.eraser_build import build_refiner
    from ben_cli.pipeline import Eraser

    device = next(net.parameters()).device if options.device == "auto" else resolve_device(options.device)
    dtype = resolve_dtype(options.precision.value, device)
    return Eraser(net, device=device, dtype=dtype, resolution=options.resolution, batch_size=1,
                  refiner=build_refiner(options, device))


def remove(image: Image.Image, *, model: str | nn.Module = "ben2-base", weights: str | Path | None = None,
           device: str = "auto", precision: str = "auto", resolution: int = 1024, refiner: str = "auto",
           output: str = "cutout", decontaminate: bool = True, background: str | None = None,
           threshold: float | None = None) -> Image.Image:
    """Remove the background of one Pillow image.

    ``model``: a registry name (its weights found as ``ben erase`` finds them, or ``weights``), or
    a network returned by :func:`load_model` (then ``device="auto"`` is where its weights are).
    ``output="cutout"`` gives an RGBA image (new alpha, the input's own transparency and
    ICC profile kept; semi-transparent pixels decontaminated unless ``decontaminate=False``;
    flattened to RGB on ``background``, a colour or an image file); ``"alpha"`` gives
    the 8-bit matte (mode L, hard with ``threshold``);
    ``"trimap"`` the confidence trimap. Any mode Pillow holds is accepted; EXIF
    orientation is applied. The model is loaded on the first call and reused while
    the options stay the same. Raises the typed errors of :mod:`ben_cli.errors`.
    """
    from PIL import Image

    from ben_cli.errors import OptionError
    from ben_cli.io import from_pil
    from ben_cli.options import InferenceOptions, OutputOptions
    from ben_cli.output import load_background, render

    net = None if isinstance(model, str) else model
    if net is not None and weights is not None:
        raise OptionError("weights", "{flag} names a checkpoint: give it or a loaded model as {opt:model}, not both")
    options = InferenceOptions(model=model if net is None else "ben2-base",
                               weights=None if weights is None else Path(weights), device=device,
                               precision=precision, resolution=resolution, batch_size=1, refiner=refiner)
    if output not in ("cutout", "alpha", "trimap"):
        raise OptionError("output", f"unknown output {output!r} (use cutout, alpha or trimap)")
    finish = OutputOptions(decontaminate=decontaminate, background=background, threshold=threshold)
    loaded = from_pil(image)
    if net is None:
        eraser = get_eraser(options)
    else:
        with _LOCK:
            eraser = _module_eraser(net, options)
    pred = eraser.predict([loaded.rgb], want_trimap=output == "trimap")[0]
    array = render(output, loaded, pred, finish, load_background(finish))
    result = Image.fromarray(array)  # (H, W, 4) -> RGBA, (H, W, 3) -> RGB, (H, W) -> L
    if output == "cutout" and loaded.icc_profile:
        result.info["icc_profile"] = loaded.icc_profile
    return result


def clear_cache() -> None:
    """Forget the cached models (frees their memory)."""
    with _LOCK:
        _eraser.cache_clear()
        _module_eraser.cache_clear()


__all__ = ["clear_cache", "get_eraser", "load_model", "remove"]
