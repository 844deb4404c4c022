#!/usr/bin/env python3
"""Benchmark (not a test): the refiner network's cost against BEN Base's, on one device.

    python scripts/bench_refiner_net.py --resolution 1024 --repeats 3 --threads 1 [--device cuda --precision fp16]

Random weights of the full configurations (``ben2-base`` and ``refiner``; the
values do not change the cost). Prints parameter counts, FLOPs of one forward
(``torch.utils.flop_counter.FlopCounterMode``: a multiply-add counts 2) and the
median time of one forward of each on one image, and the refiner's share of the
base's time. The issue's budget: at most 20% of the base's time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="auto (fp16 on CUDA, fp32 on the CPU), fp32, fp16, bf16")
    ap.add_argument("--refiner", default="refiner", help="refiner configuration (refiner, tiny)")
    ap.add_argument("--no-base", action="store_true", help="time the refiner only")
    args = ap.parse_args()

    from ben_cli.device import inference_context, resolve_device, resolve_dtype
    from ben_cli.models.refiner import build_refiner
    from ben_cli.models.registry import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.precision, device)
    s = args.resolution
    torch.manual_seed(0)
    image = torch.rand(1, 3, s, s, device=device)
    prob = torch.rand(1, 1, s, s, device=device)
    trimap = torch.full((1, 1, s, s), 128, dtype=torch.uint8, device=device)
    trimap[prob < 0.1], trimap[prob > 0.9] = 0, 255

    refiner = build_refiner(args.refiner).eval().to(device)
    models = {"refiner": (refiner, lambda: refiner(image, prob, trimap))}
    if not args.no_base:
        base = build_model("ben2-base").for_inference().to(device)
        models["base"] = (base, lambda: base(base.normalize(image)))

    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {device}, "
          f"{str(dtype).replace('torch.', '')}, {torch.get_num_threads()} thread(s), {s}x{s}, 1 image")
    results = {}
    for name, (model, fn) in models.items():
        with inference_context(device, dtype):
            n_flops = flops(fn)
            seconds = timed(fn, args.repeats, device)
        params = sum(p.numel() for p in model.parameters())
        results[name] = seconds
        print(f"{name:8s} {params / 1e6:7.2f} M params  {n_flops / 1e9:8.1f} GFLOPs  {seconds:8.3f} s")
    if "base" in results:
        print(f"refiner / base time: {results['refiner'] / results['base']:.3f}")


if __name__ == "__main__":
    main()
