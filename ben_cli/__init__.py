"""ben: batch background removal with BEN, the Background Erase Network.

Public API (torch is imported on first use, not by ``import ben_cli``)::

    import ben_cli
    model = ben_cli.load_model("BEN2_Base.pth")           # BenBase in eval mode, returns logits
    cutout = ben_cli.remove(PIL.Image.open("cat.jpg"))    # RGBA Pillow image; the model is cached
    alpha = ben_cli.refine(rgb, prob, method="matting")   # re-estimate the trimap's gray band (numpy)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from PIL import Image

    from ben_cli.models.ben import BenBase


def load_model(path: Any = None, *, model: str | None = None, config: Any = None, device: Any = "cpu") -> BenBase:
    """Load a BEN Base checkpoint (official ``.pth``, ``.safetensors`` or ours) in eval mode.

    ``path=None`` searches the usual places for the file of ``model`` (default
    ``ben2-base``; see ``ben weights``) and downloads the official file if nothing is found.
    """
    from ben_cli.checkpoints.load import load_model as _load

    return _load(path, model=model, config=config, device=device)


def remove(image: Image.Image, *, model: str = "ben2-base", weights: str | Path | None = None,
           device: str = "auto", precision: str = "auto", resolution: int = 1024, refiner: str = "auto",
           output: str = "cutout", decontaminate: bool = True, background: str | None = None,
           threshold: float | None = None) -> Image.Image:
    """Cutout (RGBA) of one Pillow image; see :func:`ben_cli.api.remove`."""
    from ben_cli.api import remove as _remove

    return _remove(image, model=model, weights=weights, device=device, precision=precision,
                   resolution=resolution, refiner=refiner, output=output, decontaminate=decontaminate,
                   background=background, threshold=threshold)


def __getattr__(name: str) -> Any:
    # ``ben_cli.refine`` is the callable package ben_cli/refine/ (``refine(image, prob, method=...)``), imported on
    # first use: a function of that name here would be replaced by the package once it is imported.
    if name == "refine":
        import importlib

        return importlib.import_module("ben_cli.refine")
    raise AttributeError(f"module 'ben_cli' has no attribute {name!r}")


__all__ = ["__version__", "load_model", "refine", "remove"]
