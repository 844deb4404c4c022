"""Alpha mattes to pictures: resizing, 8-bit alpha, cutouts, backgrounds. Pure, batched.

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


def _check_map(name: str, x: torch.Tensor, channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be (B, {channels}, H, W), got {tuple(x.shape)}")


def _check_uint8(name: str, x: torch.Tensor) -> None:
    if x.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8, got {x.dtype}")


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
    _check_map("prob", prob, 1)
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
    _check_map("prob", prob, 1)
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
    _check_map("rgb", rgb, 3)
    _check_map("alpha", alpha, 1)
    _check_uint8("rgb", rgb)
    _check_uint8("alpha", alpha)
    if alpha.shape[0] != rgb.shape[0] or alpha.shape[2:] != rgb.shape[2:]:
        raise ValueError(f"alpha {tuple(alpha.shape)} does not match rgb {tuple(rgb.shape)}")
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
    _check_map("rgb", rgb, 3)
    _check_map("alpha", alpha, 1)
    _check_uint8("rgb", rgb)
    _check_uint8("alpha", alpha)
    if isinstance(background, torch.Tensor):
        _check_uint8("background", background)
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
    _check_map("alpha", alpha, 1)
    _check_map("source_alpha", source_alpha, 1)
    _check_uint8("alpha", alpha)
    _check_uint8("source_alpha", source_alpha)
    product = alpha.to(torch.int32) * source_alpha.to(torch.int32)
    return ((product + 127) // 255).to(torch.uint8)


# --------------------------------------------------------------------------- foreground colour, backgrounds


def box_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over each (2r+1)x(2r+1) window, clipped to the image; cost independent of ``radius``.

    Running sums (cumsum) along each axis, in float32 for float16/bfloat16/float32 input
    (relative error about 1e-6 for values in [0, 1]: for colours, not for exact work).

    Args:
        x: (B, C, H, W) float.
        radius: r >= 0.

    Returns:
        (B, C, H, W), same dtype and device.
    """
    if radius <= 0:
        return x
    y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    for dim in (2, 3):
        n = y.shape[dim]
        r = min(radius, n)
        shape = [1, 1, 1, 1]
        shape[dim] = n
        pad = [0, 0, 0, 0]  # F.pad order: (W left, W right, H top, H bottom)
        side = 0 if dim == 3 else 2
        pad[side], pad[side + 1] = r + 1, r
        c = F.pad(y, pad).cumsum(dim)
        sums = c.narrow(dim, 2 * r + 1, n) - c.narrow(dim, 0, n)
        i = torch.arange(n, device=x.device)
        counts = (torch.clamp(i + r, max=n - 1) - torch.clamp(i - r, min=0) + 1).to(sums.dtype)
        y = sums / counts.view(shape)
    return y.to(x.dtype)


def _cell(radius: int, height: int, width: int) -> int:
    """Side of the coarse grid a blur of ``radius`` runs on: ``radius // 8`` from radius 16, else 1."""
    cell = radius // 8
    return cell if cell >= 2 and min(height, width) >= 2 * cell else 1


def _coarse_means(stats: torch.Tensor, radius: int, cell: int) -> torch.Tensor:
    """Alpha-weighted mean colours on the grid of ``cell``-pooled ``stats``.

    ``stats``: (B, 7, h, w) cells of (a, F a, B (1 - a)); returns (B, 6, h, w), the mean F then the mean B.
    """
    blurred = box_blur(stats, max(1, round(radius / cell)))
    mean_a = blurred[:, :1]
    return torch.cat([blurred[:, 1:4] / (mean_a + 1e-5), blurred[:, 4:] / ((1 - mean_a) + 1e-5)], 1)


def _upsample(means: torch.Tensor, cell: int, height: int, width: int) -> torch.Tensor:
    """Bilinear upsampling by exactly ``cell`` (cell centres at ``(i + 0.5) * cell - 0.5``), cropped."""
    if cell == 1:
        return means
    return F.interpolate(means, scale_factor=float(cell), mode="bilinear", align_corners=False,
                         recompute_scale_factor=False)[..., :height, :width]


def _residual(image: torch.Tensor, alpha: torch.Tensor, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean colours plus the part of the pixel that ``I = a F + (1 - a) B`` leaves unexplained."""
    mean_f, mean_b = means[:, :3], means[:, 3:]
    residual = image - alpha * mean_f - (1 - alpha) * mean_b
    return (mean_f + alpha * residual).clamp_(0, 1), mean_b


def _fuse(image: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, alpha: torch.Tensor, radius: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One blur-fusion pass: local mean colours of F and B weighted by alpha, then the compositing residual.

    Radii of 16 and more are blurred on a grid ``radius // 8`` times coarser (cells averaged, the
    mean colours upsampled bilinearly): they are smooth at that scale, and it is 50-100x cheaper.
    """
    height, width = image.shape[2:]
    cell = _cell(radius, height, width)
    stats = torch.cat([alpha, fg * alpha, bg * (1 - alpha)], 1)
    if cell > 1:
        stats = F.avg_pool2d(stats, cell, ceil_mode=True)
    return _residual(image, alpha, _upsample(_coarse_means(stats, radius, cell), cell, height, width))


def estimate_foreground(image: torch.Tensor, alpha: torch.Tensor, *, radii: tuple[int, ...] = (90, 6)
                        ) -> torch.Tensor:
    """Foreground colours of a matte by blur-fusion (Forte and Pitie 2021, "Approximate Fast
    Foreground Colour Estimation"): pure, batched, any device.

    Each pass estimates local mean foreground and background colours with box
    blurs weighted by alpha and 1 - alpha, then adds back the part of the pixel
    that the compositing equation ``I = a F + (1 - a) B`` leaves unexplained,
    scaled by alpha. The first pass (large radius) starts from the image itself,
    later passes from the previous estimates.

    Args:
        image: (B, 3, H, W) float in [0, 1].
        alpha: (B, 1, H, W) float in [0, 1].
        radii: box radii of the passes, in pixels (default 90 then 6, as in the paper).

    Returns:
        (B, 3, H, W) float32 in [0, 1], the foreground colour of every pixel
        (meaningful where alpha > 0).
    """
    _check_map("image", image, 3)
    _check_map("alpha", alpha, 1)
    if alpha.shape[0] != image.shape[0] or alpha.shape[2:] != image.shape[2:]:
        raise ValueError(f"alpha {tuple(alpha.shape)} does not match image {tuple(image.shape)}")
    if not image.is_floating_point() or not alpha.is_floating_point():
        raise TypeError(f"image and alpha must be float, got {image.dtype} and {alpha.dtype}")
    img = image.float()
    a = alpha.float().clamp(0, 1)
    fg, bg = img, img
    for radius in radii:
        fg, bg = _fuse(img, fg, bg, a, int(radius))
    return fg


def decontaminate(rgb: torch.Tensor, alpha: torch.Tensor, *, radii: tuple[int, ...] = (90, 6),
                  tile: int = 128) -> torch.Tensor:
    """Cutout colours without the old background's halo: semi-transparent pixels get their estimated
    foreground colour (:func:`estimate_foreground`), every other pixel keeps its colour.

    Works in bounded memory and in time proportional to the soft edges: the first
    (large) pass's statistics are pooled band by band on its coarse grid, the
    later passes run only on the tiles that hold semi-transparent pixels, with
    a margin of context, so the colours are those of :func:`estimate_foreground`
    on the whole image (to float rounding).

    Args:
        rgb: (B, 3, H, W) uint8.
        alpha: (B, 1, H, W) uint8.
        radii: as :func:`estimate_foreground` (the later ones below 16 for the same colours).
        tile: side of the tiles of the later passes.

    Returns:
        (B, 3, H, W) uint8; equal to ``rgb`` where alpha is 0 or 255.
    """
    _check_map("rgb", rgb, 3)
    _check_map("alpha", alpha, 1)
    _check_uint8("rgb", rgb)
    _check_uint8("alpha", alpha)
    if alpha.shape[0] != rgb.shape[0] or alpha.shape[2:] != rgb.shape[2:]:
        raise ValueError(f"alpha {tuple(alpha.shape)} does not match rgb {tuple(rgb.shape)}")
    if not radii:
        return rgb.clone()
    height, width = rgb.shape[2:]
    first, rest = int(radii[0]), [int(r) for r in radii[1:]]
    cell = _cell(first, height, width)
    step = max(cell, tile // cell * cell)
    margin = sum(rest) + 2 * cell
    soft = (alpha > 0) & (alpha < 255)
    out = rgb.clone()

    def crop(b: int, y0: int, y1: int, x0: int, x1: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (rgb[b : b + 1, :, y0:y1, x0:x1].float().div_(255),
                alpha[b : b + 1, :, y0:y1, x0:x1].float().div_(255))

    cores = [(y, min(y + step, height), x, min(x + step, width))
             for y in range(0, height, step) for x in range(0, width, step)]
    busy = torch.stack([soft[:, 0, y0:y1, x0:x1].flatten(1).any(1) for y0, y1, x0, x1 in cores], 1).tolist()
    for b in range(rgb.shape[0]):
        if not any(busy[b]):
            continue
        pooled = []  # the first pass's statistics on its grid, one band of rows at a time
        for y in range(0, height, step):
            img, a = crop(b, y, min(y + step, height), 0, width)
            stats = torch.cat([a, img * a, img * (1 - a)], 1)
            pooled.append(F.avg_pool2d(stats, cell, ceil_mode=True) if cell > 1 else stats)
        means = _coarse_means(torch.cat(pooled, 2), first, cell)
        for (y0, y1, x0, x1), has_soft in zip(cores, busy[b]):
            if not has_soft:
                continue
            ys, xs = max(0, (y0 - margin) // cell * cell), max(0, (x0 - margin) // cell * cell)
            ye, xe = min(height, y1 + margin), min(width, x1 + margin)
            img, a = crop(b, ys, ye, xs, xe)
            near = means[..., ys // cell : -(-ye // cell) + 1, xs // cell : -(-xe // cell) + 1]
            fg, bg = _residual(img, a, _upsample(near, cell, ye - ys, xe - xs))
            for radius in rest:
                fg, bg = _fuse(img, fg, bg, a, radius)
            core = fg[..., y0 - ys : y1 - ys, x0 - xs : x1 - xs].mul_(255).round_().to(torch.uint8)
            view = out[b : b + 1, :, y0:y1, x0:x1]
            view.copy_(torch.where(soft[b : b + 1, :, y0:y1, x0:x1], core, view))
    return out


def parse_colour(text: str, *, param: str = "background") -> tuple[int, int, int]:
    """An RGB colour from ``white`` (any CSS colour name), ``#00ff00``, ``#0f0`` or ``0,255,0``.

    Raises :class:`~ben_cli.errors.OptionError` (a ``UsageError``) naming ``param`` for anything else.
    """
    from PIL import ImageColor

    from ben_cli.errors import OptionError

    value = str(text).strip().lower()
    if "," in value:
        parts = [p.strip() for p in value.split(",")]
        if len(parts) == 3 and all(p.isdigit() and int(p) <= 255 for p in parts):
            r, g, b = (int(p) for p in parts)
            return r, g, b
        raise OptionError(param, f"bad colour {text!r}: give three integers 0..255, like 0,255,0")
    try:
        rgb = ImageColor.getrgb(value)
    except ValueError:
        raise OptionError(param, f"bad colour {text!r} (use a name like white, #00ff00 or 0,255,0)") from None
    if len(rgb) != 3:
        raise OptionError(param, f"bad colour {text!r}: give an opaque colour (no alpha)")
    return rgb[0], rgb[1], rgb[2]


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
    _check_uint8("background", background)
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

    _check_uint8("alpha", alpha)
    t = float(threshold)
    if not 0 <= t <= 1:
        raise OptionError("threshold", f"must be between 0 and 1, got {threshold}")
    return torch.where(alpha.double() > t * 255, 255, 0).to(torch.uint8)
