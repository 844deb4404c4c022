"""Time ``ben eval`` on synthetic prediction / ground-truth pairs (DIS-VD has 470).

    .venv/bin/python scripts/bench_eval.py --pairs 470 --size 1024 --workers 2

Writes the pairs (PNG) to a temporary folder (or ``--dir``, kept), then times the
evaluation of that folder with each protocol, reading included.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ben_cli.eval.evaluate import evaluate_pairs, pair_predictions
from ben_cli.io import write_png


def make_pairs(folder: Path, pairs: int, size: int, seed: int = 0) -> None:
    """Write ``pairs`` blob masks (gt/) and blurred, noisy predictions of them (pred/)."""
    rng = np.random.default_rng(seed)
    for i in range(pairs):
        gt = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            cv2.circle(gt, centre, int(rng.integers(size // 20, size // 4)), 255, -1)
        soft = cv2.GaussianBlur(gt, (0, 0), size / 150).astype(np.float32)
        pred = np.clip(soft + rng.normal(0, 12, gt.shape), 0, 255).astype(np.uint8)
        write_png(folder / "gt" / f"{i:04d}.png", gt)
        write_png(folder / "pred" / f"{i:04d}.png", pred)


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--pairs", type=int, default=470)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--protocol", choices=("standard", "ben", "both"), default="both")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the pairs (kept)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ben-bench-") as tmp:
        folder = args.dir or Path(tmp)
        if not (folder / "gt").is_dir():
            t0 = time.perf_counter()
            make_pairs(folder, args.pairs, args.size)
            print(f"wrote {args.pairs} pairs of {args.size}x{args.size} in {time.perf_counter() - t0:.1f} s")
        pairs = pair_predictions(folder / "pred", folder / "gt")
        protocols = ("standard", "ben") if args.protocol == "both" else (args.protocol,)
        for protocol in protocols:
            t0 = time.perf_counter()
            show = sys.stderr.isatty()
            result = evaluate_pairs(pairs, protocol=protocol, workers=args.workers, progress=show)
            dt = time.perf_counter() - t0
            m = result.summary.metrics
            print(
                f"{protocol:9s}: {len(pairs)} pairs, {args.workers} workers: {dt:.1f} s "
                f"({dt / len(pairs) * args.workers:.3f} s per pair per worker); "
                f"max_f {m['max_f']:.4f} mae {m['mae']:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
