"""Model registry: plain dicts of architectures and of named models.

- ``ARCHS`` maps an architecture name (``"base"``, later ``"refiner"``) to its
  config class and builder; checkpoints store the name, so a file alone
  rebuilds its network (:func:`ben_cli.checkpoints.load.build_from_checkpoint`).
- ``MODELS`` maps a model name (``ben2-base``, ``ben-base``, ``tiny``) to a
  config plus its official checkpoint file name, source repository and
  preprocessing constants (in the config).

Importing this module does not import torch: builders and model classes of
the built-in architectures are imported on first use.

:func:`parameters_on_meta` builds a network without initialising its
parameters, for loading a checkpoint into it (random init of the ~95M
parameters of BEN Base costs seconds).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ben_cli.config import BenConfig, SwinConfig
from ben_cli.errors import UsageError

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
        if isinstance(self.model_cls, type):
            return self.model_cls
        module, _, qualname = self.model_cls.partition(":")
        return getattr(importlib.import_module(module), qualname)

    def config_from_dict(self, d: dict[str, Any]) -> Any:
        """The config stored in a checkpoint -> a config object (ValueError on unknown keys)."""
        return self.config_cls.from_dict(d)


ARCHS: dict[str, Arch] = {}

# Architectures defined outside this module register themselves when their
# module is imported; a checkpoint naming one of them imports it on demand.
ARCH_MODULES: dict[str, str] = {"refiner": "ben_cli.models.refiner"}


def register_arch(name: str, config_cls: type, build: Callable[[Any], nn.Module], model_cls: type | str) -> Arch:
    """Add (or replace) an architecture; call it at the bottom of the model's module.

    ``config_cls`` must provide ``to_dict()`` and ``from_dict(d)``; ``build(config)``
    returns a randomly initialised model.
    """
    arch = Arch(name, config_cls, build, model_cls)
    ARCHS[name] = arch
    return arch


def get_arch(name: str) -> Arch:
    """The architecture ``name`` (importing its module when known); UnknownArchError otherwise."""
    if name not in ARCHS and name in ARCH_MODULES:
        try:
            importlib.import_module(ARCH_MODULES[name])
        except ModuleNotFoundError as e:
            if e.name != ARCH_MODULES[name]:
                raise
    try:
        return ARCHS[name]
    except KeyError:
        raise UnknownArchError(f"unknown arch {name!r} (this version knows: {', '.join(ARCHS)})") from None


def arch_of(model: nn.Module) -> str:
    """The registered architecture name of ``model`` (by its class; a torch.compile wrapper is unwrapped)."""
    model = getattr(model, "_orig_mod", model)
    archs = list(ARCHS.values())
    for exact in (True, False):
        for arch in archs:
            cls = arch.model_class()
            if (type(model) is cls) if exact else isinstance(model, cls):
                return arch.name
    raise UnknownArchError(f"{type(model).__name__} is not a registered architecture "
                           f"(known: {', '.join(ARCHS)})")


def arch_for_config(config: Any) -> Arch:
    """The architecture whose config class ``config`` is an instance of."""
    for arch in ARCHS.values():
        if type(config) is arch.config_cls:
            return arch
    raise UnknownArchError(f"{type(config).__name__} is not the config of a registered architecture")


def _build_base(config: BenConfig) -> nn.Module:
    from ben_cli.models.ben import BenBase

    return BenBase(config)


register_arch("base", BenConfig, _build_base, "ben_cli.models.ben:BenBase")


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

    ``empty=True``: parameters uninitialised on the meta device (see :func:`parameters_on_meta`),
    to be filled with ``load_state_dict(..., assign=True)``.
    """
    cfg = get_entry(name_or_config).config if isinstance(name_or_config, str) else name_or_config
    arch = arch_for_config(cfg)
    if not empty:
        return arch.build(cfg)
    with parameters_on_meta():
        return arch.build(cfg)


# --------------------------------------------------------------------------- building without initialising

_META = threading.local()  # .depth > 0 in a thread inside parameters_on_meta()
_PATCH_LOCK = threading.Lock()
_patch: dict[str, Any] = {"users": 0, "original": None}


def _register_parameter(self: nn.Module, name: str, param: Any) -> None:
    """``nn.Module.register_parameter`` that, inside :func:`parameters_on_meta` in this thread, registers
    an empty meta-device twin of a plain ``nn.Parameter`` instead of the parameter."""
    import torch

    if (param is not None and getattr(_META, "depth", 0) > 0 and type(param) is torch.nn.Parameter
            and not param.is_meta):
        param = torch.nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
    _patch["original"](self, name, param)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build networks in this block without initialising their parameters.

    Every plain ``nn.Parameter`` registered in this thread while the block runs is
    replaced by an empty one on the meta device, so the initialisers that follow
    in the constructors cost almost nothing. Buffers are untouched: the ones computed at
    construction (Swin's relative position index and shift masks, normalisation
    constants) are real and correct. Fill the parameters with
    ``model.load_state_dict(state_dict, strict=True, assign=True)``. Other threads
    build as usual meanwhile.
    """
    from torch import nn

    with _PATCH_LOCK:
        if _patch["users"] == 0:
            # Kept after the block too: another thread may still be inside a call of the patched method.
            _patch["original"] = nn.Module.register_parameter
            nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign]
        _patch["users"] += 1
    _META.depth = getattr(_META, "depth", 0) + 1
    try:
        yield
    finally:
        _META.depth -= 1
        with _PATCH_LOCK:
            _patch["users"] -= 1
            if _patch["users"] == 0:
                nn.Module.register_parameter = _patch["original"]  # type: ignore[method-assign]
