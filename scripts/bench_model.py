#!/usr/bin/env python3
"""Benchmark (not a test): our BEN Base forward vs the official implementation.

    python scripts/bench_model.py --resolution 1024 --repeats 3 [--official PATH/TO/BEN2.py]

Times our fp32 forward on one image (random weights of the full ben2-base
config, or --weights). With --official, also imports the official ``BEN2.py``
(kept outside this repo; needs einops), loads the *same* weights into it,
times its forward on the same input and prints the max probability difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import time

import torch


def timed(fn, x, repeats: int) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        out = fn(x)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn(x)
            times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--official", default=None, help="path to the official BEN2.py")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd (inductor) forward")
    args = ap.parse_args()

    from ben_cli.checkpoints.convert import to_official
    from ben_cli.checkpoints.load import load_model
    from ben_cli.models.registry import build_model

    torch.manual_seed(args.seed)
    ours = load_model(args.weights) if args.weights else build_model("ben2-base").eval()
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    t_ours, y = timed(lambda v: torch.sigmoid(ours(v)), x, args.repeats)
    print(f"ours     fp32 {args.batch}x{args.resolution}: {t_ours:.2f} s ({t_ours / args.batch:.2f} s/image)")
    if args.compile:
        compiled = torch.compile(ours)
        t = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
        print(f"compile (first call): {time.perf_counter() - t:.1f} s")
        t_comp, y_comp = timed(lambda v: torch.sigmoid(compiled(v)), x, args.repeats)
        print(f"ours compiled fp32: {t_comp:.2f} s/batch; max |p_compiled - p| = {(y_comp - y).abs().max():.2e}")
    if args.official:
        spec = importlib.util.spec_from_file_location("ben2_official", args.official)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        off = mod.BEN_Base().eval()
        off.load_state_dict(to_official(ours.state_dict()), strict=True)
        t_off, y_off = timed(off, x, args.repeats)
        print(f"official fp32 {args.batch}x{args.resolution}: {t_off:.2f} s ({t_off / args.batch:.2f} s/image)")
        print(f"ratio ours/official: {t_ours / t_off:.2f}; max |p - p_official| = {(y - y_off).abs().max():.2e}")
        if args.compile:
            print(f"ratio ours compiled/official: {t_comp / t_off:.2f}")


if __name__ == "__main__":
    main()
