#!/usr/bin/env python3
"""Benchmark (not a test): what decontaminating a batch of cutouts costs in device calls, per image alone
(the writer-thread path) against :func:`ben_cli.foreground.decontaminate_many` on the whole batch (the model
thread's path on an accelerator, issue 17 fault 6).

    python scripts/bench_decontaminate.py --images 16 --size 1500x1000

On a GPU each tensor operation is a kernel launch (or a copy) and each ``tolist``/``item`` a host sync, so
the counts below are what bounds the launch-bound path there; on the CPU they are only counted (the CPU
path keeps one image at a time, which is faster there). The pictures are noise with a soft ring of alpha
of about the width a matte's edge has.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ben_cli.foreground import decontaminate, decontaminate_many


class CountOps(TorchDispatchMode):
    """Counts the aten operations dispatched that compute (each a kernel launch or a copy on a GPU; views,
    which launch nothing, apart) and the calls that wait for the device (``tolist``, ``item``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view:
            self.views += 1
        else:
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def count_syncs(run):
    """``run()`` and how many times it called ``Tensor.tolist`` or ``Tensor.item`` (a host sync on a GPU)."""
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "item")}

    def counting(name):
        def call(self, *args, **kwargs):
            calls.append(name)
            return originals[name](self, *args, **kwargs)
        return call

    for name in originals:
        setattr(torch.Tensor, name, counting(name))
    try:
        return run(), len(calls)
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def picture(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2).sqrt()
    alpha = ((12 - (d - min(h, w) / 3).abs()) * 20).clamp(0, 255).to(torch.uint8)[None, None]
    return rgb, alpha


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", default="1500x1000", help="WxH")
    ap.add_argument("--json", default=None)
    ap.add_argument("--time", type=int, default=0, help="also time the per-image CPU paths N times")
    ap.add_argument("--baseline", default=None, help="another foreground.py to count too (per image)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    pairs = [picture(h, w, i) for i in range(args.images)]
    figures = {}
    paths = [("per image", lambda: [decontaminate(r, a) for r, a in pairs])]
    if args.baseline:  # another version's foreground.py, e.g. `git show REV:ben_cli/foreground.py > old.py`
        spec = importlib.util.spec_from_file_location("baseline_foreground", args.baseline)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        paths.insert(0, (f"per image ({args.baseline})", lambda: [old.decontaminate(r, a) for r, a in pairs]))
    for name, run in [*paths,
                      ("batch (decontaminate_many)", lambda: decontaminate_many([r for r, _ in pairs],
                                                                                  [a for _, a in pairs]))]:
        counter = CountOps()
        t = time.perf_counter()
        with counter:
            out, syncs = count_syncs(run)
        seconds = time.perf_counter() - t
        ops = sum(counter.ops.values())
        figures[name] = {"ops": ops, "ops_per_image": round(ops / args.images, 1), "views": counter.views,
                         "syncs": syncs, "cpu_seconds_counted": round(seconds, 2)}
        figures[name]["_out"] = out
    outs = [figures[k].pop("_out") for k in list(figures)]
    same = all(torch.equal(x, y) for other in outs[1:] for x, y in zip(outs[0], other))
    print(f"{args.images} images of {w}x{h}; equal outputs: {same}")
    print("| path | computing ops (launches on a GPU) | per image | views | host syncs |")
    print("| --- | --- | --- | --- | --- |")
    for name, f in figures.items():
        print(f"| {name} | {f['ops']} | {f['ops_per_image']} | {f['views']} | {f['syncs']} |")
    if args.time:  # the CPU path itself: one image at a time, one thread, runs alternating
        torch.set_num_threads(1)
        timed = {name: [] for name, _ in paths}
        for _ in range(args.time):
            for name, run in paths:
                t = time.perf_counter()
                run()
                timed[name].append((time.perf_counter() - t) / args.images)
        for name, values in timed.items():
            figures[name]["cpu_s_per_image_median"] = round(statistics.median(values), 4)
            print(f"{name}: {statistics.median(values):.4f} s per image on the CPU (median of {args.time}, 1 thread)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"images": args.images, "size": args.size, "equal": same, **figures}, fh, indent=2)


if __name__ == "__main__":
    main()
