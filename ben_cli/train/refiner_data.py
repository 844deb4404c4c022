"""The refiner's training samples: image, mask and cached base probability, augmented together.

**Zoomed crops** (``zoom_prob``): a share of the samples is a working-side
window at the image's own resolution with the cached probability upsampled,
which is what ``ben erase`` refines for images larger than the working side.

**Augmentation** is done after the cache, at the working side: one affine map
(MVANet's flip, centred crop of 1-30 pixels per axis resized back, rotation with
p = 0.2) resamples the image, the cached probability and the mask together
(bilinear; corners become black, background and 0), then the colour jitter
touches the image alone. A function of (seed, draw): resume stays exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ben_cli.errors import UsageError
from ben_cli.train.data import CROP_BORDER, ROTATE_MAX, ROTATE_PROB, SamplePair, color_jitter, sample_rng
from ben_cli.train.refiner_cache import read_cached_logits


def resize_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """(H, W) uint8 -> (side, side) uint8, bilinear (as ``ben train base``)."""
    from PIL import Image

    if mask.shape == (side, side):
        return mask
    return np.array(Image.fromarray(mask).resize((side, side), Image.Resampling.BILINEAR))


def augment_affine(rng: np.random.Generator, side: int) -> torch.Tensor:
    """MVANet's geometric augmentation as one (2, 3) ``affine_grid`` matrix at a square side:
    horizontal flip (p = 0.5), a centred crop removing 1-30 pixels per axis (resized back), and with
    p = 0.2 a rotation by an integer angle in [-15, 15) degrees. Draws from ``rng`` in that order."""
    flip = rng.random() < 0.5
    cw = int(rng.integers(side - CROP_BORDER, side)) if side > CROP_BORDER else side
    ch = int(rng.integers(side - CROP_BORDER, side)) if side > CROP_BORDER else side
    angle = math.radians(int(rng.integers(-ROTATE_MAX, ROTATE_MAX))) if rng.random() < ROTATE_PROB else 0.0
    # output -> input: undo the rotation, then the crop (a zoom), then the flip
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    zoom = np.diag([cw / side, ch / side])
    mirror = np.diag([-1.0 if flip else 1.0, 1.0])
    theta = np.zeros((2, 3))
    theta[:, :2] = mirror @ zoom @ rot
    return torch.from_numpy(theta).float()


def augment_sample(rgb: np.ndarray, mask: np.ndarray, prob: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment a training sample at its side S: (S, S, 3) uint8, (S, S) uint8, (S, S) float32 in [0, 1]
    -> the same, moved together by :func:`augment_affine` (bilinear, zeros outside), the colour
    jitter of ``ben train base`` on the image alone."""
    from PIL import Image

    side = rgb.shape[0]
    stack = torch.cat([torch.tensor(rgb).permute(2, 0, 1).float() / 255.0,
                       torch.tensor(mask)[None].float() / 255.0, torch.tensor(prob)[None].float()])
    grid = F.affine_grid(augment_affine(rng, side)[None], [1, 5, side, side], align_corners=False)
    moved = F.grid_sample(stack[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    to_u8 = lambda t: t.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)  # noqa: E731
    img = color_jitter(Image.fromarray(to_u8(moved[:3]).permute(1, 2, 0).numpy()), rng)
    return np.array(img.convert("RGB")), to_u8(moved[3]).numpy(), moved[4].clamp(0, 1).numpy()


def zoomed_crop(rgb: np.ndarray, mask: np.ndarray, prob: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A working-side crop at the image's own resolution, as ``ben erase`` refines large images.

    The base probability (S, S) is upsampled bilinearly to the image's size (H, W) >= (S, S)
    (:func:`ben_cli.compose.resize_alpha`, as the full-resolution refinement does), and an S x S
    window is cut from the image, the mask and that probability, centred (within the image) on a
    pixel drawn among those with a probability in (0.03, 0.97), or anywhere when there is none.
    Returns (S, S, 3) uint8, (S, S) uint8, (S, S) float32.
    """
    from ben_cli.compose import resize_alpha

    side = prob.shape[0]
    height, width = rgb.shape[:2]
    unsure = np.flatnonzero((prob > 0.03) & (prob < 0.97))
    if unsure.size:
        cy, cx = divmod(int(unsure[rng.integers(unsure.size)]), side)
        cy, cx = (cy + 0.5) * height / side, (cx + 0.5) * width / side
    else:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    y0 = int(np.clip(round(cy - side / 2), 0, height - side))
    x0 = int(np.clip(round(cx - side / 2), 0, width - side))
    full = resize_alpha(torch.from_numpy(prob)[None, None], (height, width))[0, 0]
    window = (slice(y0, y0 + side), slice(x0, x0 + side))
    return rgb[window], mask[window], full[window].numpy()


class RefinerDataset:
    """Map-style dataset: image, mask and cached base probability at the working side.

    ``dataset[(index, draw)]`` -> ``{"image": uint8 (3, S, S), "mask": uint8 (1, S, S),
    "prob": float32 (1, S, S) in [0, 1], "index": int}``; ``draw`` seeds the augmentation
    (:class:`~ben_cli.train.data.StreamSampler`), a plain ``int`` key means none.
    """

    def __init__(self, pairs: Sequence[SamplePair], cache_paths: Sequence[Path], resolution: int, *,
                 augment: bool = True, seed: int = 0, zoom_prob: float = 0.0) -> None:
        if not pairs or len(pairs) != len(cache_paths):
            raise UsageError("no usable training pairs")
        self.pairs, self.cache_paths = list(pairs), list(cache_paths)
        self.resolution, self.augment, self.seed, self.zoom_prob = resolution, augment, seed, zoom_prob

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int, draw: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image (S, S, 3) uint8, mask (S, S) uint8, prob (S, S) float32) of pair ``index``.

        With a ``draw``: a zoomed crop with probability ``zoom_prob`` (when the image is at least
        S x S), then the augmentation when ``augment``; both drawn from ``(seed, draw)``.
        """
        from ben_cli.io import read_gray, read_image
        from ben_cli.resize import resize_for_model

        pair, side = self.pairs[index], self.resolution
        logits = read_cached_logits(self.cache_paths[index])
        if logits.shape != (side, side):
            raise UsageError(f"{self.cache_paths[index]}: cached logits are {logits.shape}, not {side}x{side}")
        prob = torch.from_numpy(logits.astype(np.float32)).sigmoid_().numpy()
        rgb, mask = read_image(pair.image).rgb, read_gray(pair.mask)
        rng = sample_rng(self.seed, draw) if draw is not None else None
        if (rng is not None and self.zoom_prob > 0 and min(rgb.shape[:2]) >= side
                and rng.random() < self.zoom_prob):
            rgb, mask, prob = zoomed_crop(rgb, mask, prob, rng)
        else:
            rgb, mask = resize_for_model(rgb, side), resize_mask(mask, side)
        if rng is not None and self.augment:
            rgb, mask, prob = augment_sample(rgb, mask, prob, rng)
        return rgb, mask, prob

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, draw = (key, None) if isinstance(key, int) else (int(key[0]), int(key[1]))
        rgb, mask, prob = self.load(index, draw)
        return {
            "image": torch.tensor(rgb).permute(2, 0, 1).contiguous(),
            "mask": torch.tensor(mask)[None],
            "prob": torch.tensor(prob, dtype=torch.float32)[None],
            "index": index,
        }
