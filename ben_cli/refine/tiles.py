"""Refinement at the original resolution, tile by tile, in bounded memory.

For an image larger than the working resolution: the base probability is
upsampled bilinearly to the image's size, the confidence trimap is built there
(``N_min`` scaled to the image's area), and the refiner runs only on the tiles
that hold gray pixels, each with a margin of context (the refiner's ``halo``)
so that a local method gives the same values as on the whole image. The other
tiles are the trimap's 0 and 1. ``max_side`` caps the cost: the image is
refined at a size whose long side is ``max_side`` and the alpha upsampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ben_cli.compose import resize_alpha
from ben_cli.config import TrimapConfig
from ben_cli.refine import RefineStage, trimap_from_prob

DEFAULT_MARGIN = 64
"""Context (pixels at the working scale) for refiners without a finite ``halo`` (approximate there)."""


def _as_image(image: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) or (1, 3, H, W), uint8 or float -> (1, 3, H, W) in its own dtype (no copy when possible)."""
    if image.dim() == 3 and image.shape[2] == 3:
        image = image.permute(2, 0, 1).unsqueeze(0)
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"image must be (H, W, 3) or (1, 3, H, W), got {tuple(image.shape)}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise TypeError(f"image must be uint8 or float, got {image.dtype}")
    return image


def _to_float(crop: torch.Tensor) -> torch.Tensor:
    """A crop of the image as float32 in [0, 1]."""
    return crop.float().div_(255.0) if crop.dtype == torch.uint8 else crop.float()


def tile_grid(height: int, width: int, tile: int, alignment: int = 1) -> list[tuple[int, int, int, int]]:
    """Cores ``(y0, y1, x0, x1)`` of the tiles covering an H x W map; corners multiples of ``alignment``."""
    step = max(alignment, (max(1, tile) // alignment) * alignment)
    return [(y, min(y + step, height), x, min(x + step, width))
            for y in range(0, height, step) for x in range(0, width, step)]


def refine_tiled(image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor, refiner: RefineStage, *,
                 tile: int = 1024, margin: int | None = None) -> torch.Tensor:
    """Run ``refiner`` on the tiles of one image that hold gray pixels, one tile at a time.

    Args:
        image: (1, 3, H, W) uint8 or float in [0, 1].
        prob: (1, 1, H, W) float in [0, 1].
        trimap: (1, 1, H, W) uint8 {0, 128, 255}.
        refiner: any :class:`RefineStage`; its ``halo`` (context pixels) and
            ``alignment`` (grid) attributes are used when it has them.
        tile: side of a tile's core (rounded down to the alignment).
        margin: context around each core; default the refiner's ``halo``
            (exact), else :data:`DEFAULT_MARGIN` (approximate).

    Returns:
        (1, 1, H, W) float32: the trimap's 0/1, and the refiner's values in the tiles with gray pixels.
    """
    image = _as_image(image)
    _, _, height, width = image.shape
    if tuple(prob.shape) != (1, 1, height, width) or tuple(trimap.shape) != (1, 1, height, width):
        raise ValueError(f"prob and trimap must be (1, 1, {height}, {width}), got {tuple(prob.shape)} "
                         f"and {tuple(trimap.shape)}")
    halo = getattr(refiner, "halo", None)
    pad = margin if margin is not None else (halo if halo is not None else DEFAULT_MARGIN)
    align = max(1, int(getattr(refiner, "alignment", 1)))
    cores = tile_grid(height, width, tile, align)
    gray = trimap == 128
    busy = torch.stack([gray[..., y0:y1, x0:x1].any() for y0, y1, x0, x1 in cores]).tolist()  # one host sync
    alpha = trimap.float().div_(255.0)
    for (y0, y1, x0, x1), has_gray in zip(cores, busy):
        if not has_gray:
            continue
        ys, xs = max(0, (y0 - pad) // align * align), max(0, (x0 - pad) // align * align)
        ye, xe = min(height, y1 + pad), min(width, x1 + pad)
        out = refiner(_to_float(image[..., ys:ye, xs:xe]), prob[..., ys:ye, xs:xe].float(),
                      trimap[..., ys:ye, xs:xe])
        alpha[..., y0:y1, x0:x1] = out[..., y0 - ys : y1 - ys, x0 - xs : x1 - xs]
    return alpha


def refine_full_resolution(image: torch.Tensor, prob_lowres: torch.Tensor, refiner: RefineStage, *,
                           tile: int = 1024, max_side: int | None = None,
                           trimap_config: TrimapConfig | None = None) -> torch.Tensor:
    """Alpha at the image's own size from a base probability at the working resolution.

    Args:
        image: (H, W, 3) or (1, 3, H, W), uint8 RGB or float in [0, 1], the original image.
        prob_lowres: (1, 1, h, w) float in [0, 1], the base probability (any h, w).
        refiner: the refine stage; one with ``scaled(factor)`` is adapted to the
            upsampling factor (its windows grow with it).
        tile: tile side for :func:`refine_tiled`.
        max_side: refine at most at this long side (the image is downscaled with
            antialiasing, the alpha upsampled bilinearly); ``None``: no cap.
        trimap_config: trimap thresholds (default: the paper's, ``N_min`` scaled to the area).

    Returns:
        (1, 1, H, W) float32 in [0, 1] on the image's device. Without ``max_side``
        capping, exactly 1 where the full-size trimap is 255 and 0 where it is 0.
    """
    image = _as_image(image)
    if prob_lowres.dim() != 4 or prob_lowres.shape[:2] != (1, 1):
        raise ValueError(f"prob_lowres must be (1, 1, h, w), got {tuple(prob_lowres.shape)}")
    _, _, height, width = image.shape
    work_h, work_w = height, width
    if max_side is not None and max(height, width) > max_side:
        if max_side < 1:
            raise ValueError(f"max_side must be positive, got {max_side}")
        scale = max_side / max(height, width)
        work_h, work_w = max(1, round(height * scale)), max(1, round(width * scale))
        image = F.interpolate(_to_float(image), size=(work_h, work_w), mode="bilinear", align_corners=False,
                              antialias=True).clamp_(0, 1)
    prob = resize_alpha(prob_lowres.float().to(image.device), (work_h, work_w))
    trimap = trimap_from_prob(prob, trimap_config)
    factor = max(work_h / prob_lowres.shape[2], work_w / prob_lowres.shape[3])
    scaled = getattr(refiner, "scaled", None)
    stage = scaled(factor) if callable(scaled) and factor > 1 else refiner
    alpha = refine_tiled(image, prob, trimap, stage, tile=tile)
    if (work_h, work_w) != (height, width):
        alpha = resize_alpha(alpha, (height, width))
    return alpha


__all__ = ["DEFAULT_MARGIN", "refine_full_resolution", "refine_tiled", "tile_grid"]
