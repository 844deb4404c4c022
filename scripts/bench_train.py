#!/usr/bin/env python3
"""Benchmark (not a test): BEN Base training throughput and peak memory.

    python scripts/bench_train.py --model tiny --resolution 256 --batch-size 2 --device cpu
    python scripts/bench_train.py --model ben2-base --resolution 1024 --precision bf16 --grad-checkpoint both
    python scripts/bench_train.py --loader --resolution 1024      # data pipeline, images/s per worker

Times full optimisation steps (forward in autocast, the paper's loss, backward,
gradient clipping, AdamW) on random tensors already on the device, so the figure
is the network's training speed; the data pipeline runs in DataLoader workers
and is measured separately with ``--loader``. Each variant runs in its own
process, so its peak memory is its own: peak GPU memory (allocated and reserved)
on CUDA, peak resident memory of the process on the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def measure(args: argparse.Namespace) -> dict:
    import torch

    from ben_cli.device import resolve_device, resolve_train_dtype, train_autocast
    from ben_cli.models.registry import build_model
    from ben_cli.train.loop import param_groups
    from ben_cli.train.loss import BenLoss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_train_dtype(args.precision, device)
    torch.manual_seed(0)
    model = build_model(args.model).to(device).train()
    if args.grad_checkpoint == "on":
        model.encoder.swin.set_grad_checkpointing(True)
    optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    loss_fn = BenLoss()
    r, b = args.resolution, args.batch_size
    x = torch.rand(b, 3, r, r, device=device)
    y = torch.zeros(b, 1, r, r, device=device)
    y[:, :, r // 4 : 3 * r // 4, r // 5 : 4 * r // 5] = 1.0
    params = [p for p in model.parameters() if p.requires_grad]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for i in range(args.warmup + args.steps):
        if i == args.warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t = time.perf_counter()
        with train_autocast(device, dtype):
            out = model(model.normalize(x))
        loss = loss_fn(out, y).total
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    result = {
        "model": args.model, "resolution": r, "batch": b, "precision": str(dtype).replace("torch.", ""),
        "grad_checkpoint": args.grad_checkpoint, "device": str(device), "s_per_step": step_s,
        "images_per_s": b / step_s, "threads": torch.get_num_threads(),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["peak_gpu_alloc_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    return result


def measure_loader(args: argparse.Namespace) -> dict:
    """Decode + augment + resize of DIS-sized synthetic pairs in one process (what one worker delivers)."""
    from pathlib import Path

    from ben_cli.train.data import PairDataset, scan_pairs, write_synthetic_pairs

    with tempfile.TemporaryDirectory() as tmp:
        h, w = args.loader_size
        root = write_synthetic_pairs(Path(tmp) / "d", n=8, size=(h, w), seed=0)
        ds = PairDataset(scan_pairs(root).pairs, args.resolution, augment=True, seed=0)
        ds[(0, 0)]
        t = time.perf_counter()
        n = 0
        for draw in range(args.steps * 2):
            ds[(draw % len(ds), draw)]
            n += 1
        dt = time.perf_counter() - t
    return {"loader_source": f"{w}x{h} PNG", "resolution": args.resolution, "images_per_s_per_worker": n / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--grad-checkpoint", choices=("off", "on", "both"), default="both")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--loader", action="store_true", help="measure the data pipeline instead")
    ap.add_argument("--loader-size", type=int, nargs=2, default=(1536, 2048), metavar=("H", "W"))
    ap.add_argument("--json", action="store_true", help="print JSON lines only")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: one variant, JSON out
    args = ap.parse_args()

    if args.loader:
        print(json.dumps(measure_loader(args)))
        return
    if args.one:
        print(json.dumps(measure(args)))
        return
    variants = ("off", "on") if args.grad_checkpoint == "both" else (args.grad_checkpoint,)
    base = [a for a in sys.argv[1:] if not a.startswith("--grad-checkpoint")]
    if "--grad-checkpoint" in sys.argv:  # drop its value too
        i = sys.argv.index("--grad-checkpoint")
        base = [a for j, a in enumerate(sys.argv[1:], 1) if j not in (i, i + 1)]
    if not args.json:
        print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}")
    rows = []
    for v in variants:
        out = subprocess.run([sys.executable, __file__, *base, "--grad-checkpoint", v, "--one"],
                             capture_output=True, text=True, check=False)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            sys.exit(out.returncode)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{'model':10} {'side':>5} {'batch':>5} {'dtype':>8} {'ckpt':>4} {'s/step':>8} {'img/s':>7} "
          f"{'peak RSS GiB':>12} {'GPU alloc GiB':>13} {'GPU resv GiB':>12}")
    for r in rows:
        gpu = (f"{r['peak_gpu_alloc_gib']:>13.2f} {r['peak_gpu_reserved_gib']:>12.2f}"
               if "peak_gpu_alloc_gib" in r else f"{'-':>13} {'-':>12}")
        print(f"{r['model']:10} {r['resolution']:>5} {r['batch']:>5} {r['precision']:>8} {r['grad_checkpoint']:>4} "
              f"{r['s_per_step']:>8.3f} {r['images_per_s']:>7.2f} {r['peak_rss_gib']:>12.2f} {gpu}")
    print(f"device {rows[0]['device']}{' (' + rows[0]['gpu'] + ')' if 'gpu' in rows[0] else ''}, "
          f"{rows[0]['threads']} CPU threads")


if __name__ == "__main__":
    main()
