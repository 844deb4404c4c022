"""Resizing images to the model's side: Pillow's Lanczos, as the official pipeline does."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_for_model(rgb: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (side, side, 3) uint8 with Pillow's Lanczos (the official resize)."""
    if rgb.shape[:2] == (side, side):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((side, side), resample=Image.Resampling.LANCZOS))
