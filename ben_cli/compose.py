"""Alpha mattes to pictures: resizing, 8-bit alpha, cutouts, backgrounds. Pure, batched.

The foreground colour of soft edges is :mod:`ben_cli.foreground` (re-exported here).

What the official BEN2 code does (``BEN2.py``, ``BEN_Base.inference`` with
``refine_foreground=False``, the path for plain cutouts):

1. ``F.interpolate(mask, size=(H, W), mode="bilinear")`` of the float sigmoid
   map (1024x1024) to the original size: align_corners=False, no antialias
   (``postprocess_image``; its ``h, w = image.size`` swaps the names but not the sizes);
2. a min-max stretch of each map, ``(x - min) / (max - min)``;
3. ``(x * 255).astype(np.uint8)``: truncation;
4. ``PIL.Image.resize(original_image.size)``: a no-op, the mask already has that size;
5. ``original_image.putalpha(mask)``: original colours everywhere, even where
   the alpha is 0.

(With ``refine_foreground=True`` it differs: the 1024x1024 mask is truncated
to 8 bits first and resized by PIL's default filter, bicubic.)

Here :func:`resize_alpha` is step 1 (same call, so the same numbers, then a
clamp to [0, 1]); :func:`stretch_alpha` is step 2 and :func:`alpha_to_uint8`
with ``rounding="truncate"`` is step 3, for those who want the official
output bit for bit. The defaults are the plain choices: no stretch (it turns
an image with no confident foreground into a full-contrast guess) and
rounding to nearest. Resizing the float map, rather than an 8-bit one, keeps
the soft edges as smooth as the network made them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ben_cli.foreground import box_blur, decontaminate, estimate_foreground
from ben_cli.tensors import check_image_and_alpha, check_map, check_uint8, check_uint8_maps


def resize_alpha(prob: torch.Tensor, size: tuple[int, int], *, antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of probability maps to ``size = (H, W)``, clamped to [0, 1].

    ``F.interpolate(mode="bilinear", align_corners=False)``, without antialias
    by default, as the official code does (``antialias=True`` smooths strong
    downscaling). To send the images of a batch to different sizes, call it
    once per image with a (1, 1, h, w) slice.

    Args:
        prob: (B, 1, h, w) float in [0, 1].
        size: (H, W), the target height and width.

    Returns:
        (B, 1, H, W), same dtype and device (float16/bfloat16 are resized in float32).
    """
    check_map("prob", prob, 1)
    if not prob.is_floating_point():
        raise TypeError(f"prob must be a floating-point tensor, got {prob.dtype}")
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    if tuple(prob.shape[2:]) == (height, width):
        return prob.clamp(0, 1)
    x = prob.float() if prob.dtype in (torch.float16, torch.bfloat16) else prob
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)
    return x.clamp_(0, 1).to(prob.dtype)


def stretch_alpha(prob: torch.Tensor) -> torch.Tensor:
    """Per-image min-max stretch ``(x - min) / (max - min)``, as the official post-processing.

    Args:
        prob: (B, 1, H, W) float.

    Returns:
        (B, 1, H, W) in [0, 1], same dtype; a constant map is returned unchanged
        (the official code would divide by zero).
    """
    check_map("prob", prob, 1)
    lo = prob.amin(dim=(1, 2, 3), keepdim=True)
    hi = prob.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (prob - lo) / torch.where(span > 0, span, 1), prob)


def alpha_to_uint8(
    prob: torch.Tensor, *, rounding: Literal["nearest", "truncate"] = "nearest"
) -> torch.Tensor:
    """Probabilities in [0, 1] to 8-bit alpha: ``round(p * 255)``.

    ``"nearest"``: ``torch.round`` of ``p * 255`` computed in float32 (float64
    for float64), halves to even. ``"truncate"``: ``floor(p * 255)``, what the
    official code's ``(x * 255).astype(np.uint8)`` does. Values are clamped to
    [0, 1] first; NaN becomes 0.

    Args:
        prob: (..., H, W) float, any shape.

    Returns:
        uint8 in [0, 255], same shape and device.
    """
    if not prob.is_floating_point():
        raise TypeError(f"prob must be a floating-point tensor, got {prob.dtype}")
    if rounding not in ("nearest", "truncate"):
        raise ValueError(f"rounding must be 'nearest' or 'truncate', got {rounding!r}")
    x = prob.float() if prob.dtype in (torch.float16, torch.bfloat16) else prob
    x = torch.nan_to_num(x, nan=0.0).clamp(0, 1) * 255
    if rounding == "nearest":
        x = x.round_()
    return x.to(torch.uint8)  # conversion truncates toward zero, so floor for x >= 0


def cutout(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """RGBA cutout: the original colours with the new alpha (straight, not premultiplied).

    Soft edges keep their full colour (a viewer blends them by alpha); only
    fully transparent pixels get RGB 0, which no viewer shows and which halves
    the PNG size and encoding time.

    Args:
        rgb: (B, 3, H, W) uint8.
        alpha: (B, 1, H, W) uint8, 0 transparent .. 255 opaque.

    Returns:
        (B, 4, H, W) uint8, channels R, G, B, A.
    """
    check_image_and_alpha(rgb, alpha)
    return torch.cat([rgb.masked_fill(alpha == 0, 0), alpha], dim=1)


def composite(
    rgb: torch.Tensor,
    alpha: torch.Tensor,
    background: tuple[int, int, int] | torch.Tensor = (255, 255, 255),
) -> torch.Tensor:
    """Blend images over a background: ``(rgb * a + background * (255 - a)) / 255``, rounded.

    Exact integer arithmetic, rounded to nearest (an exact half cannot occur).

    Args:
        rgb: (B, 3, H, W) uint8.
        alpha: (B, 1, H, W) uint8.
        background: an RGB colour 0..255, or a uint8 tensor broadcastable to
            (B, 3, H, W) (a background image).

    Returns:
        (B, 3, H, W) uint8.
    """
    check_uint8_maps(("rgb", rgb, 3), ("alpha", alpha, 1))
    if isinstance(background, torch.Tensor):
        check_uint8("background", background)
        bg = background.to(device=rgb.device, dtype=torch.int32)
        if bg.dim() == 1:
            bg = bg.view(1, -1, 1, 1)
    else:
        if len(background) != 3 or not all(0 <= int(c) <= 255 for c in background):
            raise ValueError(f"background must be three values in 0..255, got {background}")
        bg = torch.tensor([int(c) for c in background], dtype=torch.int32, device=rgb.device).view(1, 3, 1, 1)
    a = alpha.to(torch.int32)
    blended = rgb.to(torch.int32) * a + bg * (255 - a)
    return ((blended + 127) // 255).to(torch.uint8)


def multiply_alpha(alpha: torch.Tensor, source_alpha: torch.Tensor) -> torch.Tensor:
    """Keep an input's own transparency: ``round(alpha * source_alpha / 255)``.

    A pixel transparent in the input stays transparent in the cutout, whatever
    the model says; an opaque input pixel keeps the model's alpha unchanged.

    Args:
        alpha: (B, 1, H, W) uint8, the model's alpha.
        source_alpha: (B, 1, H, W) uint8, the input image's alpha channel.

    Returns:
        (B, 1, H, W) uint8.
    """
    check_uint8_maps(("alpha", alpha, 1), ("source_alpha", source_alpha, 1))
    product = alpha.to(torch.int32) * source_alpha.to(torch.int32)
    return ((product + 127) // 255).to(torch.uint8)


def cover_resize(background: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an image to cover ``size = (H, W)`` keeping its aspect ratio, then crop the centre.

    Args:
        background: (3, h, w) uint8.
        size: (H, W).

    Returns:
        (3, H, W) uint8 on the same device (bilinear, antialiased when shrinking).
    """
    if background.dim() != 3 or background.shape[0] != 3:
        raise ValueError(f"background must be (3, h, w), got {tuple(background.shape)}")
    check_uint8("background", background)
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    h, w = background.shape[1:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    x = background
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                          antialias=scale < 1)[0].round_().clamp_(0, 255).to(torch.uint8)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return x[:, top : top + height, left : left + width].contiguous()


def threshold_alpha(alpha: torch.Tensor, threshold: float) -> torch.Tensor:
    """Hard mask: 255 where ``alpha > threshold * 255``, else 0.

    Args:
        alpha: uint8 in [0, 255], any shape.
        threshold: t in [0, 1] (0: every pixel not fully transparent becomes opaque).

    Returns:
        uint8 in {0, 255}, same shape and device.
    """
    from ben_cli.errors import OptionError

    check_uint8("alpha", alpha)
    t = float(threshold)
    if not 0 <= t <= 1:
        raise OptionError("threshold", f"must be between 0 and 1, got {threshold}")
    return torch.where(alpha.double() > t * 255, 255, 0).to(torch.uint8)


__all__ = ["alpha_to_uint8", "box_blur", "composite", "cover_resize", "cutout", "decontaminate",
           "estimate_foreground", "multiply_alpha", "resize_alpha", "stretch_alpha", "threshold_alpha"]
