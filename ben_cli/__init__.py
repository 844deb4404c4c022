"""ben: batch background removal with BEN, the Background Erase Network.

Public API (imports torch lazily)::

    from ben_cli import load_model
    model = load_model("BEN2_Base.pth")          # BenBase in eval mode
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ben_cli.models.ben import BenBase


def load_model(path: Any = None, *, config: str | None = None, device: Any = "cpu") -> BenBase:
    """Load a BEN Base checkpoint (official ``.pth``, ``.safetensors`` or ours) in eval mode.

    ``path=None`` searches the usual places (see ``ben weights``) and downloads
    ``BEN2_Base.pth`` if nothing is found.
    """
    from ben_cli.checkpoints.load import load_model as _load

    return _load(path, config=config, device=device)


__all__ = ["__version__", "load_model"]
