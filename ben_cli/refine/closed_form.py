"""``matting-cf``: closed-form matting with pymatting, on the CPU (a reference, not a default).

``pymatting.estimate_alpha_cf`` builds the sparse matting Laplacian of 3x3
windows (Levin et al. 2008) and solves for the gray pixels with incomplete-
Cholesky preconditioned conjugate gradients, in float64, image by image. Exact
closed-form matting, but seconds per megapixel of band on the CPU, and
pymatting (with numba) is an optional dependency whose first import compiles
for about 30 s; it is imported only when this refiner runs.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import torch

from ben_cli.errors import UsageError


def _pymatting():
    try:
        import pymatting
    except ImportError:
        raise UsageError("the 'matting-cf' refiner needs pymatting: pip install pymatting") from None
    return pymatting


@dataclass(frozen=True)
class PyMattingRefiner:
    """pymatting's closed-form alpha in the gray band (CPU, float64, one image at a time).

    ``eps``, ``radius``: the Laplacian's regulariser and window radius (pymatting's
    ``epsilon``/``radius``); ``max_iterations``: CG steps (pymatting's ``maxiter``).
    """

    eps: float = 1e-7
    radius: int = 1
    max_iterations: int = 10000
    name: str = "matting-cf"
    needs_trimap: bool = True

    halo = None  # a global solve: no finite context makes a tile exact

    def replicate(self, device: torch.device) -> PyMattingRefiner:
        """Itself: training-free and frozen, it runs on its inputs' device (:meth:`RefineStage.replicate`)."""
        return self

    def __call__(self, image: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        from ben_cli.refine import check_inputs, clamp_known

        image, prob, trimap = check_inputs(image, prob, trimap)
        pymatting = _pymatting()
        out = prob.clone()
        for i in range(image.shape[0]):
            tri = trimap[i, 0].cpu()
            if not bool((tri == 128).any()):
                continue
            rgb = image[i].permute(1, 2, 0).double().cpu().numpy()
            t = (tri.double() / 255.0).numpy()
            # pymatting prints its preconditioner warnings on stdout, which may carry a PNG (ben erase - -)
            with contextlib.redirect_stdout(io.StringIO()):
                alpha = pymatting.estimate_alpha_cf(
                    rgb, t, laplacian_kwargs={"epsilon": self.eps, "radius": self.radius},
                    cg_kwargs={"maxiter": self.max_iterations},
                )
            out[i, 0] = torch.from_numpy(alpha).to(out.device, out.dtype)
        return clamp_known(out, trimap)
