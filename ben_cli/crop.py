"""Cropping to the subject and placing it on a canvas (``--crop``, ``--margin``, ``--canvas``, ``--square``).

Pure: :func:`subject_boxes` finds the bounding box of the subject in a batch of alphas, :func:`union_box`
joins boxes (the frames of a clip), :func:`plan_layout` turns a subject box into a :class:`Layout` (the
region of the original an output shows, and where it lands), and :func:`place` /
:func:`place_premultiplied` apply a layout to a batch of maps.

Boxes are ``(left, top, right, bottom)`` in pixels with ``right`` and ``bottom`` exclusive, the order
PIL's ``Image.crop`` takes, so a pipeline can crop the original itself with the box of the report.

Semantics of the margin (``margin`` pixels, or with ``percent`` that percentage of the subject box's longer
side):

* crop only: the subject box grows by the margin on every side, clamped to the image; the output is
  that region, at its own size.
* ``canvas=(W, H)``: the subject is scaled to fit inside the canvas with the margin kept free on every
  side (a pixel margin is canvas pixels; a percent margin is of the placed subject's longer side, so it
  scales with it), never up unless ``upscale``, and centred (the subject box, not the clamped region).
  The region drawn is the subject box grown by that margin (in original pixels), clamped to the image;
  the rest of the canvas is fill (transparent, or the background).
* ``square``: a canvas whose side is the subject box's longer side plus twice the margin, never scaled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ben_cli.tensors import check_map, check_uint8

Box = tuple[int, int, int, int]
"""``(left, top, right, bottom)``, right and bottom exclusive."""


@dataclass(frozen=True)
class Layout:
    """Where one input's outputs come from and go: the ``region`` of the original shown (a box in the
    original's pixels), the output ``size`` (W, H), and the ``target`` box on the output that the region
    is resized to.
    ``scale``: output pixels per original pixel; ``canvas``: the output is a canvas (``--canvas`` or
    ``--square``) rather than the region itself. The target's edges are the region's scaled edges
    rounded to the nearest pixel (halves down), inside the output."""

    region: Box
    size: tuple[int, int]
    target: Box
    scale: float = 1.0
    canvas: bool = False

    def to_json(self) -> dict[str, Any]:
        """What a report records: the crop box in the original's coordinates, and for a canvas its size,
        the scale and where the crop box landed on it."""
        out: dict[str, Any] = {"box": list(self.region)}
        if self.canvas:
            out.update(canvas=list(self.size), scale=round(self.scale, 6), placed=list(self.target))
        return out


def alpha_level(threshold: float) -> int:
    """The lowest uint8 alpha that counts as subject for ``threshold`` in (0, 1]: ``ceil(255 t)``."""
    return max(1, math.ceil(round(float(threshold) * 255, 6)))


def subject_boxes(alpha: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounding box of the pixels whose alpha is at least ``threshold`` (alpha >= ceil(255 t)).

    Args:
        alpha: (B, 1, H, W) uint8 in [0, 255].
        threshold: in (0, 1].

    Returns:
        boxes (B, 4) int64 ``(left, top, right, bottom)``, right/bottom exclusive (zeros where none), and
        found (B,) bool: False for an image with no pixel at the threshold.
    """
    check_map("alpha", alpha, 1)
    check_uint8("alpha", alpha)
    mask = alpha[:, 0] >= alpha_level(threshold)  # (B, H, W)
    rows, cols = mask.any(dim=2), mask.any(dim=1)  # (B, H), (B, W)
    found = rows.any(dim=1)
    height, width = mask.shape[1:]
    top = rows.to(torch.uint8).argmax(dim=1)
    bottom = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    left = cols.to(torch.uint8).argmax(dim=1)
    right = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([left, top, right, bottom], dim=1).long()
    return boxes * found[:, None], found


def union_box(boxes: Iterable[Box]) -> Box | None:
    """The smallest box holding every one of ``boxes``; None when there is none."""
    boxes = list(boxes)
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def grow(box: Box, by: float, size: tuple[int, int]) -> Box:
    """``box`` grown by ``by`` pixels (rounded) on every side and clamped to an image of ``size`` (W, H)."""
    m = math.floor(by + 0.5)
    left, top, right, bottom = box
    return max(0, left - m), max(0, top - m), min(size[0], right + m), min(size[1], bottom + m)


def margin_pixels(margin: float, percent: bool, longer: float) -> float:
    """``margin`` in pixels for a subject whose longer side is ``longer``: itself, or with ``percent``
    that percentage of ``longer``."""
    return margin * longer / 100.0 if percent else float(margin)


def plan_layout(subject: Box, size: tuple[int, int], margin: float = 0.0, *, percent: bool = False,
                canvas: tuple[int, int] | None = None, square: bool = False, upscale: bool = False) -> Layout:
    """The :class:`Layout` of an image of ``size`` (W, H) whose subject box is ``subject`` (see the module
    docstring for the semantics of ``margin``, ``percent``, ``canvas``, ``square`` and ``upscale``).

    Raises ValueError for an empty subject box, a canvas not larger than twice a pixel margin, or both
    ``canvas`` and ``square``.
    """
    left, top, right, bottom = subject
    bw, bh = right - left, bottom - top
    if bw < 1 or bh < 1:
        raise ValueError(f"empty subject box {subject}")
    if canvas is not None and square:
        raise ValueError("give canvas or square, not both")
    longer = max(bw, bh)
    if canvas is None and not square:
        region = grow(subject, margin_pixels(margin, percent, longer), size)
        w, h = region[2] - region[0], region[3] - region[1]
        return Layout(region, (w, h), (0, 0, w, h))
    if square:
        side = longer + 2 * math.floor(margin_pixels(margin, percent, longer) + 0.5)
        canvas, scale, free = (side, side), 1.0, margin_pixels(margin, percent, longer)
    elif percent:
        free = margin_pixels(margin, percent, longer)  # in original pixels; scales with the subject
        scale = min(canvas[0] / (bw + 2 * free), canvas[1] / (bh + 2 * free))
    else:
        room_w, room_h = canvas[0] - 2 * margin, canvas[1] - 2 * margin
        if room_w < 1 or room_h < 1:
            raise ValueError(f"a margin of {margin:g} pixels leaves no room on a {canvas[0]}x{canvas[1]} canvas")
        scale = min(room_w / bw, room_h / bh)
    if not upscale:
        scale = min(scale, 1.0)
    if not square and not percent:
        free = margin / scale  # canvas pixels kept free -> original pixels around the subject
    region = grow(subject, free, size)
    x = (canvas[0] - bw * scale) / 2 - (left - region[0]) * scale  # the region's edges on the canvas
    y = (canvas[1] - bh * scale) / 2 - (top - region[1]) * scale
    edges = (x, y, x + (region[2] - region[0]) * scale, y + (region[3] - region[1]) * scale)
    x0, y0, x1, y1 = (min(limit, max(0, _nearest(e))) for e, limit in zip(edges, canvas + canvas))
    return Layout(region, canvas, (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)), scale, canvas=True)


def _nearest(value: float) -> int:
    """``value`` rounded to the nearest integer, halves down (a subject 3 pixels narrower than its
    canvas gets 1 on the left and 2 on the right, as ``(W - w) // 2`` does)."""
    return math.ceil(value - 0.5 - 1e-9)


def _paste(x: torch.Tensor, layout: Layout, fill: float) -> torch.Tensor:
    """``x`` (B, C, th, tw), already at the target box's size, on the output filled with ``fill``."""
    width, height = layout.size
    out = torch.full((x.shape[0], x.shape[1], height, width), fill, dtype=x.dtype, device=x.device)
    x0, y0, x1, y1 = layout.target
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if cx1 > cx0 and cy1 > cy0:
        out[:, :, cy0:cy1, cx0:cx1] = x[:, :, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return out


def _resized(x: torch.Tensor, layout: Layout, mode: str) -> torch.Tensor:
    """The region of ``x`` (B, C, H, W) resized to the target box (float in, float out; ``nearest`` or
    ``bilinear`` with antialias)."""
    left, top, right, bottom = layout.region
    x = x[:, :, top:bottom, left:right]
    x0, y0, x1, y1 = layout.target
    size = (max(1, y1 - y0), max(1, x1 - x0))
    if tuple(x.shape[2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def place(x: torch.Tensor, layout: Layout, *, fill: int = 0, nearest: bool = False) -> torch.Tensor:
    """Maps (B, C, H, W) uint8 of the original's size laid out by ``layout``: the region cut out,
    resized to the target box (bilinear with antialias, or ``nearest`` for labels such as trimaps),
    pasted on an output of ``layout.size`` filled with ``fill``.

    Returns:
        (B, C, H', W') uint8, (H', W') = ``layout.size`` reversed; same device.
    """
    check_uint8("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got {tuple(x.shape)}")
    left, top, right, bottom = layout.region
    if not layout.canvas and layout.scale == 1.0:
        return x[:, :, top:bottom, left:right].contiguous()
    if nearest:
        moved = _resized(x, layout, "nearest")
    else:
        moved = _resized(x.float(), layout, "bilinear").round_().clamp_(0, 255).to(torch.uint8)
    return _paste(moved, layout, fill)


def place_premultiplied(rgb: torch.Tensor, alpha: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """A cutout's colours and alpha laid out by ``layout`` (see :func:`place`), resized premultiplied so
    that no colour of a transparent pixel bleeds into the edges; transparent elsewhere.

    Args:
        rgb: (B, 3, H, W) uint8; alpha: (B, 1, H, W) uint8.

    Returns:
        (B, 3, H', W') and (B, 1, H', W') uint8 (colour 0 where alpha is 0).
    """
    check_map("rgb", rgb, 3)
    check_map("alpha", alpha, 1)
    if not layout.canvas and layout.scale == 1.0:
        return place(rgb, layout), place(alpha, layout)
    a = alpha.float() / 255.0
    moved = _resized(torch.cat([rgb.float() * a, a], dim=1), layout, "bilinear")
    a_out = moved[:, 3:].clamp(0, 1)
    colour = torch.where(a_out > 0, moved[:, :3] / a_out.clamp_min(1e-6), torch.zeros_like(moved[:, :3]))
    rgb_out = colour.round_().clamp_(0, 255).to(torch.uint8)
    alpha_out = (a_out * 255).round_().to(torch.uint8)
    return _paste(rgb_out, layout, 0), _paste(alpha_out, layout, 0)
