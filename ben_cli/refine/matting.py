"""``matting-cg``: closed-form matting (Levin, Lischinski, Weiss 2008) solved in the gray band on the device.

The matting Laplacian ``L`` of 3x3 (``radius`` 1) colour windows is never
built: ``L x`` is computed from box filters (He, Sun, Tang, "Fast Matting Using
Large Kernel Matting Laplacian Matrices", 2010)::

    a_k = (Sigma_k + eps / n_k)^-1 (mean_k(I x) - mu_k mean_k(x)),   b_k = mean_k(x) - a_k . mu_k
    (L x)_i = N_i x_i - sum over the windows k that hold i of (a_k . I_i + b_k)

with windows clipped at the image border (n_k pixels; N_i windows hold pixel i).
The known pixels of the trimap are fixed (Dirichlet constraints) and the gray
pixels minimise ``x^T L x / (2r+1)^2 + lam * |x - p|^2``: the small data term
``lam`` pulls alpha towards the base probability ``p`` where the colours say
nothing (flat or textured areas), and makes the system well conditioned.
A fixed number of conjugate-gradient steps, warm-started from ``p``, with one
set of step sizes per image: no host synchronisation, batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ben_cli.refine.filters import (
    add_diagonal,
    box_mean,
    box_mean_padded,
    colour_covariance,
    inverse_sym3,
    sym3_matvec,
    window_counts,
)


@dataclass(frozen=True)
class MattingLaplacian:
    """The closed-form matting Laplacian of a batch of images, divided by (2r+1)^2, as an operator.

    Build it with :meth:`of`; ``op(x)`` is ``L x / (2r+1)^2`` for (B, 1, H, W) maps ``x``.
    """

    image: torch.Tensor  # (B, 3, H, W)
    mean: torch.Tensor  # (B, 3, H, W) window means of the colour
    inv_cov: torch.Tensor  # (B, 6, H, W) (Sigma_k + eps / n_k I)^-1
    diag: torch.Tensor  # (1, 1, H, W) N_i / (2r+1)^2
    radius: int

    @classmethod
    def of(cls, image: torch.Tensor, radius: int = 1, eps: float = 1e-5) -> MattingLaplacian:
        """Laplacian of ``image`` (B, 3, H, W) float in [0, 1]; ``eps`` the regulariser of Levin et al."""
        _, _, height, width = image.shape
        counts = window_counts(height, width, radius, device=image.device, dtype=image.dtype)
        mean, cov = colour_covariance(image, radius)
        inv_cov = inverse_sym3(add_diagonal(cov, eps / counts))
        return cls(image, mean, inv_cov, counts / (2 * radius + 1) ** 2, radius)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``L x / (2r+1)^2``: (B, 1, H, W) -> (B, 1, H, W)."""
        r = self.radius
        mean_x = box_mean(x, r)
        cov = box_mean(self.image * x, r) - self.mean * mean_x
        a = sym3_matvec(self.inv_cov, cov)
        b = mean_x - (a * self.mean).sum(1, keepdim=True)
        spread = (box_mean_padded(a, r) * self.image).sum(1, keepdim=True) + box_mean_padded(b, r)
        return self.diag * x - spread


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image inner products of (B, 1, H, W) maps -> (B, 1, 1, 1)."""
    return (x * y).sum(dim=(1, 2, 3), keepdim=True)


def solve_band(operator: MattingLaplacian, prob: torch.Tensor, known: torch.Tensor, band: torch.Tensor,
               lam: float, iterations: int) -> torch.Tensor:
    """Conjugate gradients for ``(L / w + lam) x = lam p`` on the band, the other pixels fixed.

    Args:
        operator: the Laplacian of the images.
        prob: (B, 1, H, W) base probability (the warm start and the data term).
        known: (B, 1, H, W) the fixed values outside the band (0 or 1).
        band: (B, 1, H, W) bool, the unknown (gray) pixels.
        lam: weight of the data term (>= 0).
        iterations: number of CG steps (fixed; no convergence test, so no host sync).

    Returns:
        (B, 1, H, W) the estimate (not clipped), equal to ``known`` outside the band.
    """
    mask = band.to(prob.dtype)
    x = torch.where(band, prob, known)
    residual = mask * (lam * prob - operator(x) - lam * x)
    direction = residual
    rr = _dot(residual, residual)
    for _ in range(iterations):
        a_d = mask * (operator(direction) + lam * direction)
        denom = _dot(direction, a_d)
        step = torch.where(denom > 0, rr / denom.clamp_min(1e-30), torch.zeros_like(denom))
        x = x + step * direction
        residual = residual - step * a_d
        rr_new = _dot(residual, residual)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(1e-30), torch.zeros_like(rr))
        direction = residual + beta * direction
        rr = rr_new
    return x


@dataclass(frozen=True)
class LaplacianRefiner:
    """Closed-form matting in the gray band, by conjugate gradients on the device.

    ``radius``/``eps``: the Laplacian's windows and regulariser; ``lam``: pull
    towards the base probability; ``iterations``: CG steps.
    See :class:`ben_cli.refine.RefineStage` for the call.
    """

    radius: int = 1
    eps: float = 1e-5
    lam: float = 1e-2
    iterations: int = 30
    name: str = "matting-cg"
    needs_trimap: bool = True

    halo = None  # CG's step sizes are sums over the whole image: no finite context makes a tile exact

    def replicate(self, device: torch.device) -> LaplacianRefiner:
        """Itself: training-free and frozen, it runs on its inputs' device (:meth:`RefineStage.replicate`)."""
        return self

    def __call__(self, image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        from ben_cli.refine import check_inputs, clamp_known

        image, prob, trimap = check_inputs(image, prob, trimap)
        known = (trimap == 255).to(prob.dtype)
        operator = MattingLaplacian.of(image, self.radius, self.eps)
        x = solve_band(operator, prob, known, trimap == 128, self.lam, self.iterations)
        return clamp_known(x, trimap)
