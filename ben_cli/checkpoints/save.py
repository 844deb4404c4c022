"""Saving checkpoints in our self-describing format (safetensors or ``.pth``), or in the official layout."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ben_cli.checkpoints.format import CONFIG_META_KEY, FORMAT, FORMAT_VERSION, METADATA_META_KEY


def _check_storable(value: Any, where: str, tensors: bool) -> None:
    """Raise ValueError unless ``value`` is JSON-like (plus tensors when ``tensors``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if tensors and isinstance(value, torch.Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_storable(v, f"{where}[{i}]", tensors)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"metadata{where}: keys must be strings, got {k!r}")
            _check_storable(v, f"{where}[{k!r}]", tensors)
        return
    kinds = "JSON types (dict, list, str, int, float, bool, None)" + (" or tensors" if tensors else "")
    raise ValueError(f"metadata{where}: a {type(value).__name__} cannot be stored; use {kinds}")


def storable_metadata(metadata: Mapping[str, Any], suffix: str = ".safetensors") -> tuple[dict[str, Any], list[str]]:
    """Split ``metadata`` into what a ``suffix`` file can store and the names of the rest
    (``.safetensors``: JSON only; ``.pth``: JSON and tensors)."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for k, v in metadata.items():
        try:
            _check_storable({k: v}, "", tensors=suffix != ".safetensors")
            kept[k] = v
        except ValueError:
            dropped.append(k)
    return kept, dropped


def save_checkpoint(model: nn.Module, path: str | Path, *, official_keys: bool = False,
                    metadata: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the model's weights, arch, config and ``metadata`` atomically (``.safetensors`` or ``.pth``).

    ``metadata``: JSON-like values (``.pth`` also accepts tensors), read back as
    :attr:`Checkpoint.metadata`; ValueError names a value that cannot be stored.
    ``extra`` is the first release's name for it (merged, ``metadata`` wins).
    ``official_keys=True`` writes the official key layout (arch "base" only); as
    ``.pth`` it is exactly the official file (``{"model_state_dict": ...}``), so it
    takes no metadata.
    """
    from ben_cli.checkpoints.convert import to_official
    from ben_cli.io import atomic_write_bytes
    from ben_cli.models.registry import arch_of

    path = Path(path)
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    arch = arch_of(model)
    meta = {**(extra or {}), **(metadata or {})}
    safetensors = path.suffix == ".safetensors"
    _check_storable(meta, "", tensors=not safetensors)
    if official_keys and arch != "base":
        raise ValueError(f"the official key layout exists only for arch 'base', not {arch!r}")
    if official_keys and not safetensors and meta:
        raise ValueError("an official-layout .pth holds only model_state_dict; save metadata in .safetensors")
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if official_keys:
        sd = to_official(sd)
    config = getattr(model, "config", None)
    cfg_dict = config.to_dict() if config is not None else None
    if safetensors:
        from safetensors.torch import save

        header = {"format": FORMAT, "version": str(FORMAT_VERSION), "arch": arch}
        if cfg_dict is not None:
            header[CONFIG_META_KEY] = json.dumps(cfg_dict)
        if meta:
            header[METADATA_META_KEY] = json.dumps(meta)
        data = save(sd, metadata=header)
    else:
        import io

        obj: dict[str, Any] = {"model_state_dict": sd} if official_keys else {
            "format": FORMAT, "version": FORMAT_VERSION, "arch": arch,
            "config": json.loads(json.dumps(cfg_dict)) if cfg_dict is not None else None,
            "metadata": meta, "model": sd,
        }
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
    atomic_write_bytes(path, data)
    return path
