#!/usr/bin/env python3
"""Benchmark (not a test): does ``ben erase``'s runner keep the model fed?

    python scripts/bench_erase.py --images 48 --size 3000x2000 --model-ms 40 --batch-size 4 --workers 2

Writes synthetic JPEG photos, then runs the real batch runner (reading, EXIF,
Lanczos resize, cutout composition, PNG encoding, atomic writes) with a model
stand-in that takes a fixed time per batch, like a fast GPU would. Reports the
wall time against the model-only time and the I/O-only time: with overlap, the
wall time approaches max(model, I/O), not their sum.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class FixedTimeModel(torch.nn.Module):
    """Stands in for BEN: sleeps ``ms`` per batch (GIL released), returns a soft disc."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms = ms
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.ms / 1000)
        S = x.shape[-1]
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
        return ((0.6 - (yy**2 + xx**2).sqrt()) * 20).expand(x.shape[0], 1, S, S)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", default="3000x2000")
    ap.add_argument("--model-ms", type=float, default=40.0, help="model time per batch")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=1024)
    args = ap.parse_args()

    from ben_cli.engines.local import BatchRun
    from ben_cli.options import OutputOptions
    from ben_cli.pipeline import Eraser
    from ben_cli.plan import plan_run

    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        photo = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)  # smooth, photo-like
        for i in range(args.images):
            photo.save(src / f"img{i:04d}.jpg", quality=90)

        def eraser(ms: float) -> Eraser:
            return Eraser(FixedTimeModel(ms), device=torch.device("cpu"), dtype=torch.float32,
                          resolution=args.resolution)

        def run(ms: float, target: Path) -> float:
            jobs = plan_run([src], target, ("cutout",)).jobs
            t = time.perf_counter()
            s = BatchRun(jobs, lambda: eraser(ms), batch_size=args.batch_size, workers=args.workers,
                         output=OutputOptions(decontaminate=False)).execute()
            assert s.count("done") == args.images, s.to_json()["totals"]
            return time.perf_counter() - t

        n_batches = -(-args.images // args.batch_size)
        model_only = n_batches * args.model_ms / 1000
        io_only = run(0.0, out / "io")
        full = run(args.model_ms, out / "full")
        print(f"{args.images} JPEGs {w}x{h} -> RGBA PNG cutouts, batch {args.batch_size}, "
              f"{args.workers} reader + {args.workers} writer threads")
        print(f"model only (stand-in, {args.model_ms:.0f} ms/batch): {model_only:.2f} s")
        print(f"I/O only (model 0 ms):                 {io_only:.2f} s ({args.images / io_only:.1f} img/s)")
        print(f"both, overlapped:                      {full:.2f} s ({args.images / full:.1f} img/s); "
              f"sum would be {model_only + io_only:.2f} s, max {max(model_only, io_only):.2f} s")


if __name__ == "__main__":
    main()
