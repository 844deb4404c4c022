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


def check_uint8_maps(*maps: tuple[str, torch.Tensor, int]) -> None:
    """Each ``(name, tensor, channels)`` is (B, channels, H, W) (ValueError), then each is uint8 (TypeError)."""
    for name, x, channels in maps:
        check_map(name, x, channels)
    for name, x, _ in maps:
        check_uint8(name, x)


def check_image_and_alpha(rgb: torch.Tensor, alpha: torch.Tensor) -> None:
    """``rgb`` (B, 3, H, W) and ``alpha`` (B, 1, H, W), both uint8, of one batch and size."""
    check_uint8_maps(("rgb", rgb, 3), ("alpha", alpha, 1))
    if alpha.shape[0] != rgb.shape[0] or alpha.shape[2:] != rgb.shape[2:]:
        raise ValueError(f"alpha {tuple(alpha.shape)} does not match rgb {tuple(rgb.shape)}")
