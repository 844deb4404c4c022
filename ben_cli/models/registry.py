"""Model registry: plain dicts of architectures and of named models.

- ``ARCHS`` maps an architecture name (``"base"``, ``"refiner"``) to its
  :class:`Arch` (config class and builder), or to the ``"module:attr"`` path of one,
  resolved on first use by :func:`ben_cli.lazy.resolve`; checkpoints store the name, so a
  file alone rebuilds its network (:func:`ben_cli.checkpoints.load.build_from_checkpoint`).
  Nothing registers itself at import time.
- ``MODELS`` maps a model name (``ben2-base``, ``ben-base``, ``tiny``) to a
  config plus its official checkpoint file name, source repository and
  preprocessing constants (in the config).

Importing this module does not import torch: builders and model classes of
the built-in architectures are imported on first use.

``build_model(..., empty=True)`` builds a network on the meta device (no memory, no random
init: random init of the ~95M parameters of BEN Base costs seconds), for loading a checkpoint
into it with ``load_state_dict(..., assign=True)``; :func:`init_non_persistent_buffers` then
computes the buffers that checkpoints do not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ben_cli.config import BenConfig, SwinConfig
from ben_cli.errors import UsageError
from ben_cli.lazy import import_if_present, resolve

if TYPE_CHECKING:
    from torch import nn


class UnknownModelError(UsageError, ValueError):
    """A model name the registry does not know (the message lists the known ones)."""


class UnknownArchError(ValueError):
    """An architecture name no module has registered."""


@dataclass(frozen=True)
class Arch:
    """One architecture: its config class (``to_dict``/``from_dict``) and builder.

    ``model_cls`` is the class :func:`build` returns, or ``"module:Class"`` to
    import it only when :func:`arch_of` needs it.
    """

    name: str
    config_cls: type
    build: Callable[[Any], nn.Module]
    model_cls: type | str

    def model_class(self) -> type:
        """The model class (imports it when registered as ``"module:Class"``)."""
        return self.model_cls if isinstance(self.model_cls, type) else resolve(self.model_cls)

    def config_from_dict(self, d: dict[str, Any]) -> Any:
        """The config stored in a checkpoint -> a config object (ValueError on unknown keys)."""
        return self.config_cls.from_dict(d)


def _build_base(config: BenConfig) -> nn.Module:
    from ben_cli.models.ben import BenBase

    return BenBase(config)


ARCHS: dict[str, Arch | str] = {
    "base": Arch("base", BenConfig, _build_base, "ben_cli.models.ben:BenBase"),
    "refiner": "ben_cli.models.refiner:ARCH",
}
"""Architecture name -> :class:`Arch`, or the ``"module:attr"`` path of one (imported on first use)."""

ARCH_MODULES: dict[str, str] = {}
"""Plug-in architectures: name -> a module outside this package that calls :func:`register_arch` when
imported; a checkpoint naming one imports it on demand."""


def register_arch(name: str, config_cls: type, build: Callable[[Any], nn.Module], model_cls: type | str) -> Arch:
    """Add (or replace) an architecture (for plug-ins and tests; the built-in ones are listed in :data:`ARCHS`).

    ``config_cls`` must provide ``to_dict()`` and ``from_dict(d)``; ``build(config)``
    returns a randomly initialised model.
    """
    arch = Arch(name, config_cls, build, model_cls)
    ARCHS[name] = arch
    return arch


def _resolved(name: str) -> Arch:
    entry = ARCHS[name]
    return resolve(entry) if isinstance(entry, str) else entry


def get_arch(name: str) -> Arch:
    """The architecture ``name`` (importing its module when needed); UnknownArchError otherwise."""
    if name not in ARCHS and name in ARCH_MODULES:
        import_if_present(ARCH_MODULES[name])
    if name not in ARCHS:
        raise UnknownArchError(f"unknown arch {name!r} (this version knows: {', '.join(ARCHS)})")
    return _resolved(name)


def arch_of(model: nn.Module) -> str:
    """The registered architecture name of ``model`` (by its class; a torch.compile wrapper is unwrapped)."""
    model = getattr(model, "_orig_mod", model)
    archs = [_resolved(name) for name in list(ARCHS)]
    for exact in (True, False):
        for arch in archs:
            cls = arch.model_class()
            if (type(model) is cls) if exact else isinstance(model, cls):
                return arch.name
    raise UnknownArchError(f"{type(model).__name__} is not a registered architecture "
                           f"(known: {', '.join(ARCHS)})")


def arch_for_config(config: Any) -> Arch:
    """The architecture whose config class ``config`` is an instance of."""
    for name in list(ARCHS):
        arch = _resolved(name)
        if type(config) is arch.config_cls:
            return arch
    raise UnknownArchError(f"{type(config).__name__} is not the config of a registered architecture")


@dataclass(frozen=True)
class ModelEntry:
    """A named model: config, and where its official checkpoint comes from."""

    config: Any  # a config of a registered architecture (BenConfig for "base")
    filename: str | None = None  # official checkpoint file name
    repo_id: str | None = None  # Hugging Face Hub model repository
    description: str = ""

    @property
    def arch(self) -> str:
        """The architecture name of :attr:`config`."""
        return arch_for_config(self.config).name


MODELS: dict[str, ModelEntry] = {
    "ben2-base": ModelEntry(
        BenConfig(), "BEN2_Base.pth", "PramaLLC/BEN2", "BEN2 Base, official public weights (default)"
    ),
    "ben-base": ModelEntry(BenConfig(), "BEN_Base.pth", "PramaLLC/BEN", "BEN Base of the paper"),
    "tiny": ModelEntry(
        BenConfig(
            backbone=SwinConfig(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=12),
            dim=16,
            head_dim=24,
        ),
        description="tiny network of the same architecture, for tests",
    ),
}

DEFAULT_MODEL = "ben2-base"


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; UnknownModelError (a ValueError) lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def build_model(name_or_config: Any = DEFAULT_MODEL, *, empty: bool = False) -> nn.Module:
    """A randomly initialised model from a registry name or a config of any registered architecture.

    ``empty=True``: built on the meta device (parameters and buffers hold no memory and are not
    initialised), to be filled with ``load_state_dict(..., assign=True)`` and then
    :func:`init_non_persistent_buffers`.
    """
    import torch

    cfg = get_entry(name_or_config).config if isinstance(name_or_config, str) else name_or_config
    arch = arch_for_config(cfg)
    if not empty:
        return arch.build(cfg)
    with torch.device("meta"):
        return arch.build(cfg)


def init_non_persistent_buffers(model: nn.Module, device: Any = None) -> bool:
    """Compute the buffers of an empty-built ``model`` that a checkpoint does not hold, in place.

    Every buffer still on the meta device after loading is made real on ``device`` (default: where
    the model's parameters are) and filled by its module's ``init_non_persistent_buffers()`` (the
    method torch-style modules offer for this: timm's Swin attention, BenBase, the refiner).
    Returns False, leaving the model unusable, when a module with a meta buffer has no such method
    or a parameter is still on meta: build that model the usual way instead.
    """
    import torch

    if any(p.is_meta for p in model.parameters()):
        return False
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for module in model.modules():
        meta = [name for name, b in module.named_buffers(recurse=False) if b is not None and b.is_meta]
        if not meta:
            continue
        init = getattr(module, "init_non_persistent_buffers", None)
        if not callable(init):
            return False
        for name in meta:  # strict loading filled every persistent buffer: these are the non-persistent ones
            module.register_buffer(name, torch.empty_like(module.get_buffer(name), device=device), persistent=False)
        init()
    return not any(b.is_meta for b in model.buffers())
