#!/usr/bin/env python3
"""Benchmark (not a test): BEN Base at each precision, speed and error against fp32.

    python scripts/bench_precision.py --device cpu --weights /tmp/ref_seed0.pth \\
        --image ../shared/ben2_reference/input.png --repeats 1 --threads 2
    python scripts/bench_precision.py --device cuda --batch 16 \\
        --modes fp32,fp16,fp16+autocast,fp16+compile --json out.json

Runs the base model through :class:`ben_cli.pipeline.Eraser` (the path ``ben erase`` takes:
normalise in float32, feed the weights' dtype, float32 logits) in each mode:

- ``fp32``: float32 weights, no autocast (the reference every error is measured against);
- ``fp16`` / ``bf16``: weights cast once to that dtype, input fed in it, no autocast;
- ``fp16+autocast`` / ``bf16+autocast``: float32 weights under ``torch.autocast``;
- ``+compile`` on any mode: :func:`ben_cli.device.compile_model` (CUDA graphs on CUDA); the
  first call (compilation) is timed apart.

For each: seconds per batch (median of ``--repeats`` after one warm-up call), images/s, the max
absolute difference of the probability from fp32's, the share of pixels off by more than 2/255,
NaNs, and the peak memory on CUDA. ``--weights``: a checkpoint (default: random weights of
``--model``, seeded); ``--image``: an image file, resized like ``ben erase`` (default: a
synthetic one); ``--expected NPZ``: also compare the fp32 probability with an array ``prob``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_mode(mode: str) -> tuple[str, bool, bool]:
    """``bf16+autocast+compile`` -> (``bf16``, autocast, compile)."""
    name, *flags = mode.strip().split("+")
    if name not in DTYPES or set(flags) - {"autocast", "compile"}:
        raise SystemExit(f"unknown mode {mode!r} (a precision fp32/fp16/bf16, then +autocast and/or +compile)")
    return name, "autocast" in flags, "compile" in flags


def load_image(path: str | None, side: int, seed: int) -> np.ndarray:
    """(side, side, 3) uint8: the image resized like ``ben erase`` does, or a smooth synthetic scene."""
    from PIL import Image

    from ben_cli.pipeline import resize_for_model

    if path:
        return resize_for_model(np.asarray(Image.open(path).convert("RGB")), side)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    img = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in (0.0, 1.0, 2.0)], -1) * 0.4 + 0.5
    disc = ((xx - 0.5) ** 2 + (yy - 0.45) ** 2 < 0.08)[..., None]
    img = np.where(disc, 0.8 - 0.3 * img, img) + rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(model: torch.nn.Module, mode: str, rgb: torch.Tensor, args: argparse.Namespace,
             device: torch.device) -> tuple[dict, torch.Tensor]:
    """Time one mode; returns its row and its probability (B, 1, S, S) float32 on the CPU."""
    from ben_cli.pipeline import Eraser

    name, autocast, compiled = parse_mode(mode)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    eraser = Eraser(model, device=device, dtype=DTYPES[name], resolution=args.resolution, compile=compiled,
                    batch_size=args.batch, autocast=autocast)
    sync(device)
    t = time.perf_counter()
    logits = eraser.base(rgb)  # warm-up (and compilation)
    sync(device)
    first = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        logits = eraser.base(rgb)
        sync(device)
        times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    prob = torch.sigmoid(logits).cpu()
    row = {"mode": mode, "weights_dtype": str(next(eraser.model.parameters()).dtype).replace("torch.", ""),
           "logits_dtype": str(logits.dtype).replace("torch.", ""), "first_call_s": round(first, 3),
           "seconds_per_batch": round(seconds, 4), "images_per_s": round(args.batch / seconds, 3),
           "nan": int(torch.isnan(prob).sum())}
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del eraser, logits
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row, prob


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="ben2-base")
    ap.add_argument("--weights", default=None, help="checkpoint (default: random weights of --model)")
    ap.add_argument("--image", default=None, help="image file (default: a synthetic image)")
    ap.add_argument("--expected", default=None, help="NPZ with the expected fp32 probability 'prob' (S, S)")
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--modes", default=None,
                    help="comma-separated (default: CPU fp32,bf16,bf16+autocast; CUDA fp32,fp16,fp16+autocast,bf16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()

    from ben_cli.checkpoints.load import load_model
    from ben_cli.device import cpu_supports, keep_cpu_memory, resolve_device
    from ben_cli.models.registry import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cpu":
        keep_cpu_memory()
    default = "fp32,bf16,bf16+autocast" if device.type == "cpu" else "fp32,fp16,fp16+autocast,bf16"
    modes = [m.strip() for m in (args.modes or default).split(",") if m.strip()]
    for m in modes:
        parse_mode(m)
    if "fp32" in modes:  # the reference runs first
        modes.remove("fp32")
    torch.manual_seed(args.seed)
    model = load_model(args.weights) if args.weights else build_model(args.model)
    model = model.for_inference().to(device)
    image = load_image(args.image, args.resolution, args.seed)
    rgb = torch.from_numpy(np.stack([image] * args.batch)).permute(0, 3, 1, 2).float().div(255).to(device)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor()
                                                                              or platform.machine())
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads; {args.model}"
          f"{' ' + Path(args.weights).name if args.weights else ' (random weights)'}, batch {args.batch} x "
          f"{args.resolution}; CPU bf16 native: {cpu_supports(torch.bfloat16)}")
    rows = []
    ref_row, ref = run_mode(model, "fp32", rgb, args, device)
    if args.expected:
        expected = torch.from_numpy(np.load(args.expected)["prob"]).float()
        ref_row["max_abs_vs_expected"] = float((ref[0, 0] - expected).abs().max())
    rows.append({**ref_row, "max_abs": 0.0, "pct_over_2_255": 0.0})
    for mode in modes:
        row, prob = run_mode(model, mode, rgb, args, device)
        diff = (prob - ref).abs()
        row["max_abs"] = round(float(diff.max()), 5)
        row["pct_over_2_255"] = round(100 * float((diff > 2 / 255).float().mean()), 4)
        rows.append(row)

    head = ["mode", "weights", "s/batch", "images/s", "first call s", "max |dp|", "% px > 2/255", "NaN"]
    if device.type == "cuda":
        head.append("peak GiB")
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for r in rows:
        cells = [r["mode"], r["weights_dtype"], f"{r['seconds_per_batch']:.3f}", f"{r['images_per_s']:.2f}",
                 f"{r['first_call_s']:.1f}", f"{r['max_abs']:.4f}", f"{r['pct_over_2_255']:.3f}", str(r["nan"])]
        if device.type == "cuda":
            cells.append(f"{r['peak_memory_gib']:.2f}")
        print("| " + " | ".join(cells) + " |")
    if "max_abs_vs_expected" in ref_row:
        print(f"fp32 vs --expected: max |dp| = {ref_row['max_abs_vs_expected']:.2e}")
    if args.json:
        meta = {"device": str(device), "device_name": where, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "model": args.model, "weights": args.weights,
                "image": args.image, "resolution": args.resolution, "batch": args.batch, "repeats": args.repeats}
        Path(args.json).write_text(json.dumps({"settings": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
