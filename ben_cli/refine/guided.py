"""``matting-gf`` (the default ``matting``): a colour-guided filter of the base probability, in the gray band.

He, Sun, Tang, "Guided Image Filtering" (2010/2013), with the subsampling of
He and Sun, "Fast Guided Filter" (2015). Within each window the alpha is
modelled as a linear function of the colour, ``q = a^T I + b``; ``a`` and ``b``
are fitted to the probability by ridge regression (``eps`` the ridge),
averaged over the windows that hold a pixel, and applied to the full-resolution
colours. Edges of the probability move onto the edges of the image; known
pixels keep 0 and 1, and only the gray band of the trimap takes the result.

Cost: the statistics are computed on a grid ``subsample`` times coarser (17
channels of box filters there), then 4 channels are upsampled and combined
with the image at full resolution: about twenty memory passes over a
full-resolution map, no iteration, no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ben_cli.refine.filters import add_diagonal, box_mean, colour_covariance, inverse_sym3, sym3_matvec


def guided_coefficients(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Window-averaged linear coefficients of the guided filter: ``q = (a * guide).sum(1) + b``.

    Args:
        guide: (B, 3, H, W) float colour image (in [0, 1]).
        src: (B, 1, H, W) float map to filter.
        radius: window radius r (windows of (2r+1)^2 pixels, clipped at the borders).
        eps: ridge on the colour covariance.

    Returns:
        ``a`` (B, 3, H, W) and ``b`` (B, 1, H, W). A pixel's coefficients depend
        on the inputs within ``2 * radius`` pixels of it.
    """
    mean_i, cov_i = colour_covariance(guide, radius)
    mean_p = box_mean(src, radius)
    cov_ip = box_mean(guide * src, radius) - mean_i * mean_p
    a = sym3_matvec(inverse_sym3(add_diagonal(cov_i, eps)), cov_ip)
    b = mean_p - (a * mean_i).sum(1, keepdim=True)
    return box_mean(a, radius), box_mean(b, radius)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float,
                  subsample: int = 1) -> torch.Tensor:
    """Colour-guided filter of ``src`` by ``guide``, the coefficients fitted ``subsample`` times coarser.

    Args:
        guide: (B, 3, H, W) float colour image (in [0, 1]).
        src: (B, 1, H, W) float map to filter.
        radius: window radius in full-resolution pixels (``radius / subsample``
            on the coarse grid, at least 1 there).
        eps: ridge on the colour covariance.
        subsample: s >= 1; the coarse grid has cells of s x s pixels aligned on
            the top-left corner (partial cells at the bottom and right edges).

    Returns:
        (B, 1, H, W), same dtype and device as ``src``. Local: a pixel depends only
        on the inputs within :func:`guided_filter_reach` pixels of it, and the grid
        is anchored at pixel (0, 0), so a crop whose corner is a multiple of s
        gives the same values away from its edges.
    """
    s = max(1, min(int(subsample), guide.shape[2], guide.shape[3]))
    if s == 1:
        a, b = guided_coefficients(guide, src, max(1, radius), eps)
        return (a * guide).sum(1, keepdim=True) + b
    height, width = guide.shape[2:]
    coarse_guide = F.avg_pool2d(guide, s, ceil_mode=True)
    coarse_src = F.avg_pool2d(src, s, ceil_mode=True)
    a, b = guided_coefficients(coarse_guide, coarse_src, max(1, round(radius / s)), eps)
    # Cell centres at (i + 0.5) * s - 0.5: scale_factor s exactly, whatever the size, so crops align.
    ab = F.interpolate(torch.cat([a, b], 1), scale_factor=float(s), mode="bilinear", align_corners=False,
                       recompute_scale_factor=False)[..., :height, :width]
    return (ab[:, :3] * guide).sum(1, keepdim=True) + ab[:, 3:]


def guided_filter_reach(radius: int, subsample: int = 1) -> int:
    """Pixels of context :func:`guided_filter` reads on each side of an output pixel (an upper bound)."""
    s = max(1, int(subsample))
    if s == 1:
        return 2 * max(1, radius)
    return (2 * max(1, round(radius / s)) + 2) * s


@dataclass(frozen=True)
class GuidedFilterRefiner:
    """The base probability, known pixels snapped to 0/1, guided-filtered by the image, in the gray band.

    ``radius`` (pixels), ``eps`` and ``subsample`` as :func:`guided_filter`; the
    defaults were chosen on ``scripts/bench_refiner.py`` at 1024x1024.
    See :class:`ben_cli.refine.RefineStage` for the call.
    """

    radius: int = 16
    eps: float = 1e-4
    subsample: int = 4
    name: str = "matting-gf"
    needs_trimap: bool = True

    def __post_init__(self) -> None:
        if self.radius < 1 or self.subsample < 1 or not self.eps > 0:
            raise ValueError(f"radius and subsample must be >= 1 and eps > 0, got {self.radius}, "
                             f"{self.subsample}, {self.eps}")

    @property
    def halo(self) -> int:
        """Context (pixels) a tile needs on each side for the same result as the whole image."""
        return guided_filter_reach(self.radius, self.subsample)

    @property
    def alignment(self) -> int:
        """Tile corners must be multiples of this (the coarse grid) for the same result."""
        return self.subsample

    def scaled(self, factor: float) -> GuidedFilterRefiner:
        """The same filter for a map ``factor`` times larger (a probability upsampled by ``factor``)."""
        if factor <= 1:
            return self
        return replace(self, radius=max(1, round(self.radius * factor)),
                       subsample=max(1, round(self.subsample * factor)))

    def replicate(self, device: torch.device) -> GuidedFilterRefiner:
        """Itself: training-free and frozen, it runs on its inputs' device (:meth:`RefineStage.replicate`)."""
        return self

    def __call__(self, image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        from ben_cli.refine import check_inputs, clamp_known

        image, prob, trimap = check_inputs(image, prob, trimap)
        src = clamp_known(prob, trimap)
        return clamp_known(guided_filter(image, src, self.radius, self.eps, self.subsample), trimap)
