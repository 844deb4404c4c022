"""Safe checkpoint reading, strict loading with a readable report, and saving.

Accepted files:
- the official ``.pth`` (``{"model_state_dict": ...}``) and bare state dicts,
- ``.safetensors`` with the official keys or ours,
- our own checkpoints, which also store the model config (``.pth``:
  ``{"format": "ben_cli", "config": ..., "model": ...}``; ``.safetensors``: the
  config as JSON in the metadata), so that the file alone rebuilds the model.

Only safe loaders are used: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ben_cli.checkpoints.convert import convert_official, is_official
from ben_cli.config import BenConfig
from ben_cli.errors import CheckpointError

CONFIG_META_KEY = "ben_cli_config"
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")


@dataclass(frozen=True)
class Checkpoint:
    """A state dict in our layout and the config stored with it (None for official files)."""

    state_dict: dict[str, torch.Tensor]
    config: BenConfig | None
    official: bool


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file safely and convert it to our key layout."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    config_dict: dict[str, Any] | None = None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            sd: Any = load_file(str(path))
            if CONFIG_META_KEY in meta:
                config_dict = json.loads(meta[CONFIG_META_KEY])
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and obj.get("format") == "ben_cli":
                config_dict = obj.get("config")
            sd = obj
            while isinstance(sd, dict):
                inner = next((sd[k] for k in _WRAPPER_KEYS if isinstance(sd.get(k), dict)), None)
                if inner is None:
                    break
                sd = inner
    except CheckpointError:
        raise
    except Exception as e:  # pickle refusals, truncated files, bad headers
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint ({msg})") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    official = is_official(sd)
    if official:
        try:
            sd = convert_official(sd)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
    config = BenConfig.from_dict(config_dict) if config_dict else None
    return Checkpoint(dict(sd), config, official)


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


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Load strictly; any mismatch raises CheckpointError with the readable report."""
    report = state_dict_report(model, state_dict)
    if report:
        where = f"{source}: " if source else ""
        raise CheckpointError(f"{where}checkpoint does not fit the model\n" + "\n".join(report))
    model.load_state_dict(state_dict, strict=True)


def build_from_checkpoint(ckpt: Checkpoint, config: BenConfig | str | None = None, source: str = ""):
    """Build the model a checkpoint describes (or ``config``) and load it strictly; eval mode."""
    from ben_cli.models.registry import DEFAULT_MODEL, build_model

    cfg = config or ckpt.config or DEFAULT_MODEL
    model = build_model(cfg)
    load_state_dict_strict(model, ckpt.state_dict, source)
    return model.eval()


def load_model(path: str | Path | None = None, *, config: BenConfig | str | None = None,
               device: str | torch.device = "cpu"):
    """One-line loader: ``load_model("BEN2_Base.pth")`` -> BenBase in eval mode on ``device``."""
    from ben_cli.checkpoints.weights import find_weights

    path = find_weights(path)
    model = build_from_checkpoint(read_checkpoint(path), config, str(path))
    return model.to(device)


def save_checkpoint(model: nn.Module, path: str | Path, *, official_keys: bool = False,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write the model's weights and config atomically (``.safetensors`` or ``.pth`` by suffix).

    ``official_keys=True`` writes the official layout (readable by the official code);
    ``extra`` (``.pth`` only) adds entries such as optimizer state or the step.
    """
    from ben_cli.checkpoints.convert import to_official
    from ben_cli.io import atomic_write_bytes

    path = Path(path)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if official_keys:
        sd = to_official(sd)
    config = getattr(model, "config", None)
    cfg_json = json.dumps(config.to_dict()) if config is not None else None
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        data = save(sd, metadata={CONFIG_META_KEY: cfg_json} if cfg_json else None)
    else:
        import io

        obj: dict[str, Any] = {"model_state_dict": sd} if official_keys else {
            "format": "ben_cli", "config": json.loads(cfg_json) if cfg_json else None, "model": sd,
        }
        obj.update(extra or {})
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
    atomic_write_bytes(path, data)
    return path
