"""Argument checks shared by the image math (:mod:`ben_cli.compose`, :mod:`ben_cli.foreground`)."""

from __future__ import annotations

import torch


def check_map(name: str, x: torch.Tensor, channels: int) -> None:
    """ValueError unless ``x`` is (B, ``channels``, H, W)."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be (B, {channels}, H, W), got {tuple(x.shape)}")


def check_uint8(name: str, x: torch.Tensor) -> None:
    """TypeError unless ``x`` is uint8."""
    if x.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8, got {x.dtype}")
