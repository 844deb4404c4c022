"""Conversion between the official BEN/BEN2 checkpoint layout and ours.

Pure functions on state dicts. The official layout (``BEN2_Base.pth``) names
the backbone ``backbone.*`` with Swin's patch merging stored at the *end* of
stage i (``backbone.layers.{i}.downsample``), one LayerNorm per stage output
(``backbone.norm{i}``), fixed ``relative_position_index`` buffers, and the
decoder parts ``output{k}``, ``multifieldcrossatt``, ``dec_blk{k}``,
``conv{k}``, ``sideout{k}``, ``insmask_head``, ``shallow``, ``upsample{k}``,
``output``. Ours uses timm's Swin (merging at the *start* of stage i+1).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

# (official pattern, ours) — applied in order, first match wins.
_RULES: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    (r"^backbone\.norm(\d)\.(.*)$", r"encoder.norms.\1.\2"),
    (r"^backbone\.layers\.(\d)\.downsample\.(.*)$",
     lambda m: f"encoder.swin.layers.{int(m[1]) + 1}.downsample.{m[2]}"),
    (r"^backbone\.(.*)$", r"encoder.swin.\1"),
    (r"^output(\d)\.(.*)$", lambda m: f"decoder.lateral.{int(m[1]) - 1}.{m[2]}"),
    (r"^multifieldcrossatt\.(.*)$", r"decoder.mclm.\1"),
    (r"^dec_blk(\d)\.(.*)$", lambda m: f"decoder.refine.{int(m[1]) - 1}.{m[2]}"),
    (r"^conv(\d)\.(.*)$", lambda m: f"decoder.fuse.{int(m[1]) - 1}.{m[2]}"),
    (r"^sideout(\d)\.(.*)$", lambda m: f"decoder.side.{int(m[1]) - 1}.{m[2]}"),
    (r"^insmask_head\.(.*)$", r"head.mask.\1"),
    (r"^shallow\.(.*)$", r"head.shallow.\1"),
    (r"^upsample(\d)\.(.*)$", r"head.up\1.\2"),
    (r"^output\.(.*)$", r"head.out.\1"),
]

_REVERSE: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    (r"^encoder\.norms\.(\d)\.(.*)$", r"backbone.norm\1.\2"),
    (r"^encoder\.swin\.layers\.(\d)\.downsample\.(.*)$",
     lambda m: f"backbone.layers.{int(m[1]) - 1}.downsample.{m[2]}"),
    (r"^encoder\.swin\.(.*)$", r"backbone.\1"),
    (r"^decoder\.lateral\.(\d)\.(.*)$", lambda m: f"output{int(m[1]) + 1}.{m[2]}"),
    (r"^decoder\.mclm\.(.*)$", r"multifieldcrossatt.\1"),
    (r"^decoder\.refine\.(\d)\.(.*)$", lambda m: f"dec_blk{int(m[1]) + 1}.{m[2]}"),
    (r"^decoder\.fuse\.(\d)\.(.*)$", lambda m: f"conv{int(m[1]) + 1}.{m[2]}"),
    (r"^decoder\.side\.(\d)\.(.*)$", lambda m: f"sideout{int(m[1]) + 1}.{m[2]}"),
    (r"^head\.mask\.(.*)$", r"insmask_head.\1"),
    (r"^head\.shallow\.(.*)$", r"shallow.\1"),
    (r"^head\.up(\d)\.(.*)$", r"upsample\1.\2"),
    (r"^head\.out\.(.*)$", r"output.\1"),
]

OFFICIAL_PREFIXES = ("backbone.", "multifieldcrossatt.", "insmask_head.", "dec_blk")


def _rename(key: str, rules: list[tuple[str, str | Callable[[re.Match[str]], str]]]) -> str:
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return key


def is_official(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True when the keys are in the official BEN/BEN2 layout."""
    return any(k.startswith(OFFICIAL_PREFIXES) for k in state_dict)


def relative_position_index(window: int) -> torch.Tensor:
    """Swin's (window^2, window^2) int64 relative-position index."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def convert_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official layout -> ours. Pure: the input is not modified.

    ``relative_position_index`` buffers are dropped (timm recomputes them); they
    must equal the standard Swin index, otherwise the checkpoint would not compute
    what it was trained to and a ValueError names the first bad one.
    """
    out: dict[str, torch.Tensor] = {}
    expected: dict[int, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("relative_position_index"):
            window = round(value.shape[0] ** 0.5)
            if window not in expected:  # once per window size, not per block
                expected[window] = relative_position_index(window)
            ref = expected[window]
            if value.shape != ref.shape or not torch.equal(value.to(torch.int64), ref):
                raise ValueError(f"{key}: not the standard Swin relative position index")
            continue
        out[_rename(key, _RULES)] = value
    return out


def to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Ours -> the official layout (with the index buffers), e.g. to run the official code."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _rename(key, _REVERSE)
        out[new] = value
        if new.endswith("attn.relative_position_bias_table"):
            window = (round(value.shape[0] ** 0.5) + 1) // 2
            out[new.replace("bias_table", "index")] = relative_position_index(window)
    return out
