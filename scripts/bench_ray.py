#!/usr/bin/env python3
"""Benchmark (not a test): how ``ben erase --engine ray`` scales with model workers on this machine.

Writes synthetic JPEG photos and the tiny network's checkpoint (seed 0) to a temporary folder,
starts one local Ray runtime, then runs the Ray engine over the same images with 1, 2, ...
model actors (CPU workers, no GPU asked for), and the local engine for reference. Each run
writes into a fresh output folder. Reported per run: wall time from the start of the run
(actor start-up and model loading included), time to the first finished image, and the
steady rate (images after the first / time after the first).

    python scripts/bench_ray.py --images 48 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_inputs(folder: Path, n: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 40 + i % 200)], -1)
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) // 3) ** 2] = rng.integers(0, 256, 3)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i:04d}.jpg", quality=90)


def timed(run) -> dict[str, float]:
    stamps: list[float] = []
    run.on_result = lambda r: stamps.append(time.perf_counter()) if r.status == "done" else None
    t0 = time.perf_counter()
    summary = run.execute()
    wall = time.perf_counter() - t0
    if summary.count("done") != summary.total:
        raise RuntimeError(f"{summary.count('failed')} images failed")
    first = stamps[0] - t0
    span = stamps[-1] - stamps[0]
    steady = round((len(stamps) - 1) / span, 3) if span > 1.0 else None  # None: results came all at once
    return {"wall_s": round(wall, 2), "first_image_s": round(first, 2), "images_per_s": round(len(stamps) / wall, 3),
            "steady_images_per_s": steady}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--refiner", default="none")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-local", action="store_true", help="skip the local engine's reference run")
    args = parser.parse_args()

    import ray
    import torch

    from ben_cli.checkpoints.load import save_checkpoint
    from ben_cli.engines.local import BatchRun
    from ben_cli.engines.ray import RayRun
    from ben_cli.models.registry import build_model
    from ben_cli.options import InferenceOptions, cpu_count, default_workers
    from ben_cli.pipeline import Eraser
    from ben_cli.plan import plan_run

    work = Path(tempfile.mkdtemp(prefix="ben-bench-ray-"))
    src = work / "in"
    src.mkdir()
    make_inputs(src, args.images, tuple(args.size))
    torch.manual_seed(0)
    weights = save_checkpoint(build_model("tiny").eval(), work / "tiny.safetensors")
    options = InferenceOptions(model="tiny", weights=weights, device="cpu", resolution=args.resolution,
                               batch_size=args.batch_size, refiner=args.refiner)
    results: dict[str, dict] = {"setup": {"images": args.images, "size": list(args.size), "cpus": cpu_count(),
                                          "resolution": args.resolution, "batch_size": args.batch_size,
                                          "refiner": args.refiner, "torch_threads_local": torch.get_num_threads()}}
    try:
        if not args.no_local:
            plan = plan_run([src], work / "out-local", ["cutout"])
            results["local"] = timed(BatchRun(plan.jobs, lambda: Eraser.from_options(options),
                                              batch_size=args.batch_size, workers=default_workers()))
            print("local", results["local"], file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        ray.init(num_cpus=cpu_count(), include_dashboard=False, log_to_driver=False)
        results["setup"]["ray_init_s"] = round(time.perf_counter() - t0, 2)
        for n in args.workers:
            plan = plan_run([src], work / f"out-ray-{n}", ["cutout"])
            results[f"ray_workers_{n}"] = timed(RayRun(plan.jobs, options, workers=n, quiet=True))
            print(f"ray workers={n}", results[f"ray_workers_{n}"], file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
