"""Benchmark: vectorised confidence trimap against the plain loop of Algorithm 2.

A batch of smooth synthetic base outputs (1024x1024 by default). Each image's
sharpness is set so that Algorithm 1 leaves a chosen number of gray pixels,
which decides how many widening steps the loop takes (the paper's 60,000 gray
pixels at 1024x1024; a confident map runs all 70 steps to the bounds).

    .venv/bin/python scripts/bench_trimap.py [--threads N] [--repeats N] [--device cpu]

Prints a Markdown table: the steps each image took, best and median times of
both implementations, and the speedup (reference best / vectorised best). Both
results are checked to be equal.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ben_cli.trimap import confidence_trimap, default_min_gray, trimap_reference, trimap_thresholds

# Gray pixels left by Algorithm 1, per image, as fractions of the 60,000 wanted.
CASES = {
    "confident (to the bounds)": [0.3, 0.3, 0.3, 0.3],
    "mixed": [0.3, 0.75, 0.95, 1.3],
    "few steps": [0.97, 0.95, 0.97, 0.95],
    "no step": [1.3, 1.3, 1.3, 1.3],
}


def synthetic_logits(fractions: list[float], size: int, seed: int = 0) -> torch.Tensor:
    """(B, 1, size, size) float32 logits: smooth blobs, scaled so Algorithm 1 leaves
    about ``fraction * min_gray`` gray pixels in each image."""
    gen = torch.Generator().manual_seed(seed)
    field = torch.randn(len(fractions), 1, 6, 6, generator=gen)
    field = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False)
    flat = field.abs().flatten(1)
    min_gray = default_min_gray(size, size)
    logit_09 = math.log(0.9 / 0.1)
    scales = []
    for i, fraction in enumerate(fractions):
        k = max(1, min(flat.shape[1], round(fraction * min_gray)))
        scales.append(logit_09 / flat[i].kthvalue(k).values.item())
    return field * torch.tensor(scales).view(-1, 1, 1, 1)


def timings(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> list[float]:
    """Wall times in ms of ``repeats`` calls after one warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of the vectorised version")
    parser.add_argument("--ref-repeats", type=int, default=2, help="timed calls of the reference loop")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
        f"batch 4 x {args.size}x{args.size}, min_gray {default_min_gray(args.size, args.size)}"
    )
    print()
    print("| case | steps per image | vectorised best / median (ms) | loop best / median (ms) | speedup |")
    print("| --- | --- | --- | --- | --- |")
    with torch.inference_mode():
        for name, fractions in CASES.items():
            logits = synthetic_logits(fractions, args.size).to(device)
            steps = trimap_thresholds(logits)[2].tolist()
            if not torch.equal(confidence_trimap(logits), trimap_reference(logits)):
                raise SystemExit(f"{name}: the vectorised trimap differs from the reference")
            fast = timings(lambda logits=logits: confidence_trimap(logits), args.repeats, device)
            slow = timings(lambda logits=logits: trimap_reference(logits), args.ref_repeats, device)
            print(
                f"| {name} | {steps} | {min(fast):.1f} / {statistics.median(fast):.1f} "
                f"| {min(slow):.1f} / {statistics.median(slow):.1f} | {min(slow) / min(fast):.1f}x |"
            )


if __name__ == "__main__":
    main()
