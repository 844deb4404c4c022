"""ben: batch background removal with BEN, the Background Erase Network.

Public API (torch is imported on first use, not by ``import ben_cli``)::

    import ben_cli
    model = ben_cli.load_model("BEN2_Base.pth")           # BenBase in eval mode, returns logits
    cutout = ben_cli.remove(PIL.Image.open("cat.jpg"))    # RGBA Pillow image; the model is cached
    alpha = ben_cli.refine(rgb, prob, method="matting")   # re-estimate the trimap's gray band (numpy)

This module only re-exports. ``ben_cli.refine`` is the function :func:`ben_cli.refine.refine`;
the package of refiners stays importable by name (``from ben_cli.refine import get_refiner``).
"""

from ben_cli.api import load_model, remove
from ben_cli.refine import refine  # bound after the package ben_cli.refine is imported: the name is the function
from ben_cli.version import __version__

__all__ = ["__version__", "load_model", "refine", "remove"]
