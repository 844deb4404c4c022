#!/usr/bin/env python3
"""Benchmark (not a test): ``ben export onnx`` of the full BEN Base (issue 20).

    python scripts/bench_onnx.py --weights /tmp/official/ref_seed0.pth --out /tmp/bench_onnx --threads 2

For each of ``--precisions``: export time, file size and node count. For fp32: the worst |p_onnx - p_torch|
of ONNX Runtime (CPUExecutionProvider) against BenBase in fp32 at batch 1 and batch 3 (one session), on the
reference image and two generated ones; the speed of one ``--side`` image through ONNX Runtime against our
eager PyTorch forward (same threads, ``--repeats`` timed runs each after one warm-up, medians, in one run);
with ``--erase``, the alpha PNGs of ``ben erase --refiner none`` from the graph against those from the
checkpoint. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REFERENCE_IMAGE = Path("/work/shared/ben2_reference/input.png")


def _timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _alternating(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each of ``fns`` over ``repeats`` rounds that run each once in turn (after one warm-up
    each), so a load that comes and goes slows both alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _erase_alphas(weights: Path, image: Path, out: Path, threads: int, extra: list[str]) -> np.ndarray:
    from PIL import Image

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "ben_cli", "erase", str(image), str(out), "--weights", str(weights),
                    "--refiner", "none", "--save", "alpha", "--device", "cpu", "-q", *extra], check=True, env=env)
    return np.asarray(Image.open(out / f"{image.stem}.alpha.png"), dtype=np.int16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--model", default="ben2-base")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_onnx"))
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--no-parity", action="store_true")
    ap.add_argument("--erase", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="keep a graph already in --out (no export)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ben_cli.export.onnx_graph import check_images, compare, export_checkpoint, graph_model
    from ben_cli.models.onnx_base import OnnxBase

    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"threads": args.threads, "side": args.side, "torch": torch.__version__}
    net = None
    for precision in args.precisions.split(","):
        path = args.out / f"ben_{precision}.onnx"
        if args.reuse and path.is_file():
            from ben_cli.export.onnx_graph import load_base

            net = load_base(args.weights, args.model, False)[0]
            continue
        result, net = export_checkpoint(path, weights=args.weights, model=args.model, resolution=args.side,
                                        precision=precision)
        report[f"export_{precision}"] = {"seconds": round(result.seconds, 1), "mib": round(result.size / 2**20, 1),
                                         "nodes": result.nodes}
        print(json.dumps(report), file=sys.stderr, flush=True)
        if precision == "fp16":
            try:
                base = OnnxBase.load(path, threads=args.threads)
                one = torch.from_numpy(check_images([], args.side, count=1))
                report["fp16_cpu_seconds"] = round(_timed(lambda b=base, o=one: b.probabilities(o), 1)[0], 2)
            except Exception as e:  # ONNX Runtime's CPU provider lacks fp16 kernels for some ops
                report["fp16_cpu"] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    fp32 = args.out / "ben_fp32.onnx"
    if net is not None and "fp32" in args.precisions.split(",") and fp32.is_file():
        images = check_images([REFERENCE_IMAGE] if REFERENCE_IMAGE.is_file() else [], args.side)
        if not REFERENCE_IMAGE.is_file():
            images = check_images([], args.side, count=3)
        else:
            images = np.concatenate([images, check_images([], args.side, count=2)])
        if not args.no_parity and not args.reuse:
            got = compare(fp32, net, images)
            report["parity"] = {"worst": got.worst, "by_batch": got.by_batch, "images": got.images}
            print(json.dumps(report), file=sys.stderr, flush=True)
        one = torch.from_numpy(images[:1].copy())
        base = OnnxBase.load(fp32, threads=args.threads)
        graph = graph_model(net, args.side)
        with torch.inference_mode():
            got = _alternating({"torch": lambda: graph(one), "onnx": lambda: base.probabilities(one)}, args.repeats)
        t_torch, t_onnx = got["torch"], got["onnx"]
        report["speed"] = {"torch_eager_s": round(t_torch, 2), "onnxruntime_s": round(t_onnx, 2),
                           "torch_over_onnx": round(t_torch / t_onnx, 2)}
        print(json.dumps(report), file=sys.stderr, flush=True)
    if args.erase and fp32.is_file() and REFERENCE_IMAGE.is_file():
        a = _erase_alphas(fp32, REFERENCE_IMAGE, args.out / "erase_onnx", args.threads, [])
        b = _erase_alphas(args.weights, REFERENCE_IMAGE, args.out / "erase_torch", args.threads,
                          ["--model", args.model, "--resolution", str(args.side)])
        report["erase_alpha_max_diff_255"] = int(np.abs(a - b).max())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
