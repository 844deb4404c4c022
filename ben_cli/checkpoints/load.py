"""Safe checkpoint reading and strict loading with a readable report (saving: :mod:`.save`).

Accepted files (recognised by their content, whatever their suffix):
- the official ``.pth`` (``{"model_state_dict": ...}``) and bare state dicts,
- ``.safetensors`` with the official keys or ours,
- our own checkpoints, which describe themselves: ``format`` ("ben_cli"),
  ``version`` (:data:`FORMAT_VERSION`), ``arch`` (a key of
  :data:`ben_cli.models.registry.ARCHS`), the model config and free ``metadata``
  (training step, source, metrics, ...), so that the file alone rebuilds the
  model. ``.pth``: one dict ``{"format", "version", "arch", "config",
  "metadata", "model"}``; ``.safetensors``: string metadata entries
  ``format``, ``version``, ``arch``, ``ben_cli_config`` (JSON) and
  ``ben_cli_metadata`` (JSON).

Files of the first release (version 1: ``.safetensors`` with only
``ben_cli_config``; ``.pth`` ``{"format": "ben_cli", "config", "model"}`` plus
any ``extra`` entries) read as arch "base", version 1, their extra entries as
metadata. Official and bare files read as arch "base", version 0.

Only safe loaders are used: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ben_cli.checkpoints.convert import convert_official, is_official
from ben_cli.checkpoints.format import (
    CONFIG_META_KEY,
    FORMAT,
    FORMAT_VERSION,
    METADATA_META_KEY,
    RUN_BEST,
    TRAIN_STATE_FORMAT,
    Checkpoint,
)
from ben_cli.checkpoints.save import save_checkpoint, storable_metadata
from ben_cli.errors import CheckpointError

_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
_PTH_KEYS = frozenset({"format", "version", "arch", "config", "metadata", "model"})

# --------------------------------------------------------------------------- reading


_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf", "a 7-zip archive"),
    (b"\x89HDF", "an HDF5 file (Keras?)"),
    (b"\x93NUMPY", "a NumPy array file"),
)


def _sniff(path: Path) -> str:
    """'zip', 'pickle' or 'safetensors' by the file's first bytes, else a short description."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) > 8 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    for magic, what in _MAGICS:
        if head.startswith(magic):
            return what
    if head[8:12] in (b"WEBP", b"AVI ", b"WAVE") or head[4:8] == b"ftyp":
        return "an image or media file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised content"
    return "a text file" if all(c.isprintable() or c in "\t\r\n" for c in text) else "unrecognised content"


def _not_a_checkpoint(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a checkpoint ({reason})")


def _torch_load(path: Path, kind: str) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors; zip files are memory-mapped (copy-on-write)."""
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            raise CheckpointError(f"{path}: cannot read checkpoint: damaged or truncated file "
                                  "(its zip directory is unreadable)") from None
        if not any(n.endswith("data.pkl") for n in names):
            raise _not_a_checkpoint(path, "a zip archive without PyTorch data")
        with contextlib.suppress(Exception):  # mapped, not read: a file the cache cannot hold loads fast too
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _load_error(path, e) from None


def _load_error(path: Path, e: Exception) -> CheckpointError:
    """One line for what ``torch.load(weights_only=True)`` refused (its messages span many lines)."""
    text = str(e)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return CheckpointError(
            f"{path}: cannot read checkpoint: it stores Python objects ({refused[1]}) that safe loading "
            "(torch.load(weights_only=True)) refuses; re-save its tensors where you trust the file"
        )
    if isinstance(e, EOFError) or "truncated" in text or "central directory" in text or "failed reading" in text:
        return CheckpointError(f"{path}: cannot read checkpoint: damaged or truncated file")
    if "Unsupported operand" in text or isinstance(e, (KeyError, pickle.UnpicklingError)):
        return _not_a_checkpoint(path, "a Python pickle that is not a PyTorch weights file")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return CheckpointError(f"{path}: cannot read checkpoint ({first[:200]})")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint: damaged safetensors file ({first[:200]})") from None


def _unwrap(obj: Any) -> Any:
    """Follow ``model_state_dict`` / ``state_dict`` / ``model`` wrappers down to the tensors."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    return obj


def read_checkpoint(path: str | Path, *, cache: bool | None = None) -> Checkpoint:
    """Read a checkpoint file safely, convert official keys to ours, and parse what it says about itself.

    A pickled file (``.pth``, ``.pt``) is read from its safetensors cache when
    a valid one exists, and cached after it was read otherwise (see
    :mod:`ben_cli.checkpoints.cache`); ``cache=False`` does neither, ``None``
    follows ``$BEN_NO_WEIGHTS_CACHE``. The tensors are then memory-mapped from
    the cache, copy-on-write. Same tensors and metadata either way.

    Raises CheckpointError (one line) for missing, foreign, damaged or unsafe
    files, unknown architectures, newer format versions and bad configs.
    """
    from ben_cli.checkpoints import cache as weights_cache

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    kind = _sniff(path)
    use_cache = kind in ("zip", "pickle") and (weights_cache.enabled() if cache is None else cache)
    source = None
    if use_cache:
        try:
            source = weights_cache.source_of(path)  # before reading: a file changed meanwhile is cached as stale
        except OSError:
            use_cache = False
    if use_cache:
        hit = weights_cache.load(path, source)
        if hit is not None:
            sd, info, _ = hit
            try:
                return _checkpoint(path, sd, info["version"] > 0, info["version"], info["arch"], info["config"],
                                   info["metadata"], official=info["official"])
            except (CheckpointError, KeyError, TypeError):
                pass  # a cache this ben cannot use: read the source, and write the cache again
    raw = _read_file(path, kind)
    ckpt = _checkpoint(path, *raw)
    if use_cache and source is not None:
        info = {"official": ckpt.official, "arch": ckpt.arch, "version": ckpt.version, "config": raw[4],
                "metadata": ckpt.metadata}
        weights_cache.store(path, source, ckpt.state_dict, info)
    return ckpt


_Raw = tuple[Any, bool, Any, Any, Any, Any]  # state dict, ours, version, arch name, config dict, metadata


def _read_file(path: Path, kind: str) -> _Raw:
    """What the file holds, unchecked: (state dict, ours, version, arch name, config dict, metadata)."""
    ours, version, arch_name = False, 0, "base"
    config_dict: Any = None
    metadata: Any = {}
    if kind == "safetensors":
        from ben_cli.checkpoints.cache import info_in_header

        sd, meta = _read_safetensors(path)
        info = info_in_header(meta)  # a cache file named directly: what its source said
        if info is not None:
            version = info.get("version", 0)
            return sd, version != 0, version, info.get("arch", "base"), info.get("config"), info.get("metadata", {})
        if meta.get("format") == FORMAT or CONFIG_META_KEY in meta:
            ours, arch_name = True, meta.get("arch", "base")
            try:
                version = int(meta.get("version", 1))
                config_dict = json.loads(meta[CONFIG_META_KEY]) if CONFIG_META_KEY in meta else None
                metadata = json.loads(meta[METADATA_META_KEY]) if METADATA_META_KEY in meta else {}
            except ValueError as e:
                raise CheckpointError(f"{path}: damaged ben_cli metadata ({e})") from None
    elif kind in ("zip", "pickle"):
        obj = _torch_load(path, kind)
        if isinstance(obj, dict) and obj.get("format") == TRAIN_STATE_FORMAT:
            raise CheckpointError(f"{path}: a training run's resume state (optimizer, step, RNG; no weights to run): "
                                  f"use {path.parent / RUN_BEST} instead (or last.safetensors beside it)")
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            ours, version, arch_name = True, obj.get("version", 1), obj.get("arch", "base")
            config_dict = obj.get("config")
            stored = obj.get("metadata") or {}
            if not isinstance(stored, dict):
                raise CheckpointError(f"{path}: damaged ben_cli metadata (not a dict)")
            metadata = {k: v for k, v in obj.items() if k not in _PTH_KEYS}  # version 1's ``extra`` entries
            metadata.update(stored)
            sd = obj.get("model")
        else:
            sd = _unwrap(obj)
    else:
        raise _not_a_checkpoint(path, kind)
    return sd, ours, version, arch_name, config_dict, metadata


def _checkpoint(path: Path, sd: Any, ours: bool, version: Any, arch_name: Any, config_dict: Any, metadata: Any,
                *, official: bool | None = None) -> Checkpoint:
    """Check what a file holds and make it a Checkpoint; ``official=None``: detect the official layout and convert
    it (a cache holds tensors already converted, and says whether they were)."""
    from ben_cli.models.registry import UnknownArchError, get_arch

    if ours:
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {version!r} is not readable by this ben "
                                  f"(it reads versions 1 to {FORMAT_VERSION}); upgrade ben")
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: damaged ben_cli metadata (not a dict)")
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise _not_a_checkpoint(path, "no state dict of tensors in it")
    try:
        arch = get_arch(str(arch_name))
    except UnknownArchError as e:
        raise CheckpointError(f"{path}: {e}") from None

    if official is None:
        official = arch.name == "base" and is_official(sd)  # the official layout exists only for BEN Base
        if official:
            try:
                sd = convert_official(sd)
            except ValueError as e:
                raise CheckpointError(f"{path}: {e}") from None
    config = None
    if config_dict:
        try:
            config = arch.config_from_dict(config_dict)
        except (TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{path}: bad {arch.name!r} config in the checkpoint ({e})") from None
    return Checkpoint(dict(sd), config, bool(official), arch.name, dict(metadata), int(version))


# --------------------------------------------------------------------------- loading


def state_dict_report(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Lines describing missing, unexpected and mis-shaped tensors (empty when they fit)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"  {k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    lines: list[str] = []
    for title, items in (
        ("missing from the checkpoint", [f"  {k}" for k in missing]),
        ("unexpected in the checkpoint", [f"  {k}" for k in unexpected]),
        ("shape mismatch", shapes),
    ):
        if items:
            lines.append(f"{len(items)} {title}:")
            lines.extend(items[:20])
            if len(items) > 20:
                lines.append(f"  ... and {len(items) - 20} more")
    return lines


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "", *,
                           assign: bool = False) -> None:
    """Load strictly; any mismatch raises CheckpointError with the readable report.

    ``assign=True`` makes the checkpoint's tensors the model's parameters and
    buffers (cast to the model's dtypes where they differ) instead of copying
    them: for a model built on the meta device (``build_model(..., empty=True)``).
    """
    report = state_dict_report(model, state_dict)
    if report:
        where = f"{source}: " if source else ""
        raise CheckpointError(f"{where}checkpoint does not fit the model\n" + "\n".join(report))
    if assign:
        expected = model.state_dict()
        state_dict = {k: v if v.dtype == expected[k].dtype else v.to(expected[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=assign)


def _models_of(config: Any) -> list[str]:
    """The registry names whose config is ``config``."""
    from ben_cli.models.registry import MODELS

    return [name for name, entry in MODELS.items() if entry.config == config]


def _models_that_fit(state_dict: Mapping[str, torch.Tensor], arch: Any, source: str) -> list[str]:
    """The registry models of ``arch`` whose network takes ``state_dict`` as it is (built on the meta
    device: no memory); the one whose official file name ``source`` bears comes first."""
    from ben_cli.models.registry import MODELS

    fits = []
    for name, entry in MODELS.items():
        if type(entry.config) is not arch.config_cls:
            continue
        with torch.device("meta"):
            model = arch.build(entry.config)
        if not state_dict_report(model, state_dict):
            fits.append(name)
    stem = Path(source).stem.lower()
    return sorted(fits, key=lambda n: not (MODELS[n].filename and Path(MODELS[n].filename).stem.lower() == stem))


def _wrong_model(where: str, holds: list[str], asked: str) -> CheckpointError:
    """The file is another registry model's (or a custom network): say which, and what to pass."""
    if not holds:
        return CheckpointError(f"{where}the checkpoint holds its own network (config in the file), not model "
                               f"{asked!r} of {{opt:model}}: drop {{opt:model}} to use the file's network")
    also = f" (or {', '.join(holds[1:])})" if len(holds) > 1 else ""
    return CheckpointError(f"{where}this file is a {holds[0]}{also} checkpoint, not {asked!r}: "
                           f"pass {{opt:model}} {holds[0]}")


def build_from_checkpoint(ckpt: Checkpoint, config: Any = None, source: str = "", *,
                          device: str | torch.device | None = None, expect_model: str | None = None) -> nn.Module:
    """Build the network a checkpoint describes and load it strictly; eval mode.

    The file's own config and arch win. ``config`` (a registry model name or a
    config object) is used only when the file stores no config (official and
    bare files); without either, arch "base" uses the default model's config.
    ``expect_model``: a registry name the user asked for; a file whose config is another network's
    is then a CheckpointError naming both. A file without config whose tensors do not fit the named
    model but another registry model's says which model it is (not the list of mismatches).

    The network is built on the meta device (no random init) and takes the checkpoint's
    tensors as they are (no copy; on ``device`` when given); the buffers no checkpoint holds
    are then computed (:func:`~ben_cli.models.registry.init_non_persistent_buffers`).
    The model's parameters may therefore share memory with ``ckpt.state_dict``.
    """
    from ben_cli.models.registry import (
        DEFAULT_MODEL,
        UnknownArchError,
        arch_for_config,
        get_arch,
        get_entry,
        init_non_persistent_buffers,
    )

    where = f"{source}: " if source else ""
    try:
        arch = get_arch(ckpt.arch)
    except UnknownArchError as e:
        raise CheckpointError(f"{where}{e}") from None
    cfg = ckpt.config
    if cfg is not None and expect_model is not None and get_entry(expect_model).config != cfg:
        raise _wrong_model(where, _models_of(cfg), expect_model)
    chosen: Any = None
    if cfg is None:
        if config is None and arch.name != "base":
            raise CheckpointError(f"{where}the {arch.name!r} checkpoint stores no config; name its model")
        chosen = DEFAULT_MODEL if config is None else config
        cfg = get_entry(chosen).config if isinstance(chosen, str) else chosen
        try:
            cfg_arch = arch_for_config(cfg).name
        except UnknownArchError as e:
            raise CheckpointError(f"{where}{e}") from None
        if cfg_arch != arch.name:
            raise CheckpointError(f"{where}the checkpoint holds a {arch.name!r} network, "
                                  f"not the {cfg_arch!r} network of {chosen if isinstance(chosen, str) else 'config'}")
    state_dict = ckpt.state_dict
    if device is not None:
        state_dict = {k: v.to(device) for k, v in state_dict.items()}
    with torch.device("meta"):
        model = arch.build(cfg)
    if ckpt.config is None and isinstance(chosen, str) and state_dict_report(model, state_dict):
        fits = _models_that_fit(state_dict, arch, source)
        if fits:
            raise _wrong_model(where, fits, chosen)
    load_state_dict_strict(model, state_dict, source, assign=True)
    if not init_non_persistent_buffers(model):  # a module that cannot rebuild its buffers: build the slow way
        model = arch.build(cfg)
        load_state_dict_strict(model, state_dict, source)
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_model(path: str | Path | None = None, *, model: str | None = None, config: Any = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """One-line loader: ``load_model("BEN2_Base.pth")`` -> the network in eval mode on ``device``.

    ``path`` may be a file or a folder; ``None`` searches the usual places for
    ``model``'s official file (default ben2-base) and downloads it if missing.
    ``config`` (a model name or config) is used for files that store none; it
    defaults to ``model``.
    """
    from ben_cli.checkpoints.weights import find_weights
    from ben_cli.models.registry import DEFAULT_MODEL

    path = find_weights(path, model or DEFAULT_MODEL)
    return build_from_checkpoint(read_checkpoint(path), config if config is not None else model, str(path),
                                 device=device)


__all__ = ["CONFIG_META_KEY", "FORMAT", "FORMAT_VERSION", "METADATA_META_KEY", "Checkpoint", "build_from_checkpoint",
           "load_model", "load_state_dict_strict", "read_checkpoint", "save_checkpoint", "state_dict_report",
           "storable_metadata"]
