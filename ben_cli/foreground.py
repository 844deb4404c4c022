"""The foreground colour of semi-transparent pixels: cutouts without the old background's halo. Pure, batched.

:func:`estimate_foreground` is blur-fusion (local mean colours by alpha-weighted box blurs, at
decreasing radii); :func:`decontaminate` applies it to a cutout in bounded memory, only where
the alpha is soft; :func:`decontaminate_many` does it for a batch of images of different sizes
at once (one host sync, the soft tiles of every image stacked).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ben_cli.tensors import check_image_and_alpha, check_map


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
    check_map("image", image, 3)
    check_map("alpha", alpha, 1)
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
    on the whole image (to float rounding). :func:`decontaminate_many` of the batch's images.

    Args:
        rgb: (B, 3, H, W) uint8.
        alpha: (B, 1, H, W) uint8.
        radii: as :func:`estimate_foreground` (the later ones below 16 for the same colours).
        tile: side of the tiles of the later passes.

    Returns:
        (B, 3, H, W) uint8; equal to ``rgb`` where alpha is 0 or 255.
    """
    check_image_and_alpha(rgb, alpha)
    return torch.cat(decontaminate_many(list(rgb.split(1)), list(alpha.split(1)), radii=radii, tile=tile,
                                        stack=1 if rgb.device.type == "cpu" else None))


@dataclass(frozen=True)
class _Tile:
    """One soft tile of one image: its core (y0, y1, x0, x1), written back, inside its crop with context."""

    image: int
    core: tuple[int, int, int, int]
    crop: tuple[int, int, int, int]
    means: torch.Tensor  # the first pass's mean colours on the cells under the crop (1, 6, h, w)


def decontaminate_many(rgbs: Sequence[torch.Tensor], alphas: Sequence[torch.Tensor], *,
                       radii: tuple[int, ...] = (90, 6), tile: int = 128, stack: int | None = None
                       ) -> list[torch.Tensor]:
    """:func:`decontaminate` of images of different sizes at once: one host sync for the whole batch
    (which tiles hold soft pixels), and the later passes run on the soft tiles of every image together,
    stacked by crop shape (``stack``), so on a GPU a batch costs a few dozen kernel launches per shape
    and one copy per soft tile, rather than a few dozen launches per tile.

    Args:
        rgbs: per image (1, 3, H, W) uint8, each of its own size, all on one device.
        alphas: per image (1, 1, H, W) uint8, the sizes of ``rgbs``.
        radii, tile: as :func:`decontaminate`.
        stack: at most this many tiles in one call (None: all of a shape, and the first pass on whole
            images). On an accelerator, where each call is a kernel launch, stacking is what makes it
            fast; on the CPU one tile at a time (1), the first pass band by band, keeps the working set
            in cache and is 2-3x faster than stacking.

    Returns:
        per image (1, 3, H, W) uint8, the same values :func:`decontaminate` gives each image alone.
    """
    if len(rgbs) != len(alphas):
        raise ValueError(f"{len(rgbs)} images but {len(alphas)} alphas")
    for rgb, alpha in zip(rgbs, alphas):
        check_image_and_alpha(rgb, alpha)
        if rgb.shape[0] != 1:
            raise ValueError(f"decontaminate_many takes one image per tensor, got a batch of {rgb.shape[0]}")
    if not radii or not rgbs:
        return [rgb.clone() for rgb in rgbs]
    first, rest = int(radii[0]), [int(r) for r in radii[1:]]
    softs = [(a > 0) & (a < 255) for a in alphas]
    layouts = [_layout(rgb.shape[2], rgb.shape[3], first, rest, tile) for rgb in rgbs]
    busy = torch.cat([_busy_tiles(soft, step) for soft, (_, step, _) in zip(softs, layouts)]).tolist()  # the sync
    groups: dict[tuple[int, ...], list[_Tile]] = {}
    floats: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(rgbs)
    estimates: list[torch.Tensor | None] = [None] * len(rgbs)
    start = 0
    for i, (rgb, alpha) in enumerate(zip(rgbs, alphas)):
        (cell, step, margin), (height, width) = layouts[i], rgb.shape[2:]
        across = -(-width // step)
        count = -(-height // step) * across
        marks, start = busy[start : start + count], start + count
        if not any(marks):
            continue
        img, a = floats[i] = rgb.float().div_(255), alpha.float().div_(255)
        means = _first_pass(img, a, first, cell, step if stack == 1 else height)
        estimates[i] = rgb.clone()
        for k in (k for k, has_soft in enumerate(marks) if has_soft):
            y0, x0 = k // across * step, k % across * step
            y1, x1 = min(y0 + step, height), min(x0 + step, width)
            ys, xs = max(0, (y0 - margin) // cell * cell), max(0, (x0 - margin) // cell * cell)
            ye, xe = min(height, y1 + margin), min(width, x1 + margin)
            near = means[..., ys // cell : -(-ye // cell) + 1, xs // cell : -(-xe // cell) + 1]
            groups.setdefault((cell, ye - ys, xe - xs, *near.shape[2:]), []).append(
                _Tile(i, (y0, y1, x0, x1), (ys, ye, xs, xe), near))
    for (cell, h, w, *_), same in groups.items():
        for k0 in range(0, len(same), stack or len(same)):
            _fuse_tiles(same[k0 : k0 + (stack or len(same))], floats, estimates, rest, cell, h, w)
    return [rgb.clone() if est is None else torch.where(soft, est, rgb)
            for rgb, soft, est in zip(rgbs, softs, estimates)]


def _busy_tiles(soft: torch.Tensor, step: int) -> torch.Tensor:
    """(1, 1, H, W) bool -> (n,) bool: whether each ``step``-sided tile (row by row, the last ones cut at the
    edges) holds a soft pixel; three kernels for any number of tiles."""
    height, width = soft.shape[2:]
    padded = F.pad(soft, (0, -width % step, 0, -height % step))
    return padded.view(-(-height // step), step, -(-width // step), step).amax(dim=(1, 3)).flatten()


def _fuse_tiles(tiles: Sequence[_Tile], floats: Sequence[tuple[torch.Tensor, torch.Tensor] | None],
                estimates: Sequence[torch.Tensor | None], rest: Sequence[int], cell: int, h: int, w: int) -> None:
    """The later passes on soft tiles of one crop shape (h, w), stacked; their cores copied into each image's
    estimate (uint8; the soft pixels are picked from it at the end)."""
    crops = [floats[t.image] for t in tiles]  # type: ignore[misc]
    boxes = [t.crop for t in tiles]
    img = _stack([im[:, :, ys:ye, xs:xe] for (im, _), (ys, ye, xs, xe) in zip(crops, boxes)])
    a = _stack([al[:, :, ys:ye, xs:xe] for (_, al), (ys, ye, xs, xe) in zip(crops, boxes)])
    fg, bg = _residual(img, a, _upsample(_stack([t.means for t in tiles]), cell, h, w))
    for radius in rest:
        fg, bg = _fuse(img, fg, bg, a, radius)
    fg = fg.mul_(255).round_().to(torch.uint8)
    for k, t in enumerate(tiles):
        (y0, y1, x0, x1), (ys, _ye, xs, _xe) = t.core, t.crop
        estimates[t.image][:, :, y0:y1, x0:x1].copy_(fg[k, :, y0 - ys : y1 - ys, x0 - xs : x1 - xs])  # type: ignore[index]


def _stack(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parts as one batch: one copy (a single part: made contiguous)."""
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)


def _layout(height: int, width: int, first: int, rest: Sequence[int], tile: int) -> tuple[int, int, int]:
    """An image's tiling: the first pass's cell, the tile step (a multiple of it) and the context margin of
    the later passes."""
    cell = _cell(first, height, width)
    return cell, max(cell, tile // cell * cell), sum(rest) + 2 * cell


def _first_pass(img: torch.Tensor, alpha: torch.Tensor, radius: int, cell: int, band: int) -> torch.Tensor:
    """The first (large) pass's mean colours on its coarse grid (1, 6, h, w) from float ``img`` (1, 3, H, W)
    and ``alpha`` (1, 1, H, W) in [0, 1]; the statistics pooled ``band`` rows at a time (a multiple of
    ``cell``: the same cells whatever the band; a small band bounds the memory)."""
    pooled = []
    for y in range(0, img.shape[2], band):
        im, a = img[:, :, y : y + band], alpha[:, :, y : y + band]
        stats = torch.cat([a, im * a, im * (1 - a)], 1)
        pooled.append(F.avg_pool2d(stats, cell, ceil_mode=True) if cell > 1 else stats)
    return _coarse_means(torch.cat(pooled, 2), radius, cell)
