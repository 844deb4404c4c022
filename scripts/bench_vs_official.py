#!/usr/bin/env python3
"""Benchmark (not a test): ``ben erase`` against the official BEN2 code, each as a whole process.

    python scripts/bench_vs_official.py --official /path/to/BEN2.py --weights BEN2_Base.pth \
        --images 2 --size 1024 --repeats 2

What a user sees: the wall time of a fresh process that loads the checkpoint
and writes cutouts for ``--images`` photos, start-up included. The official
side runs the usage of the official README (``BEN_Base().loadcheckpoints(p)``,
``model.inference(Image.open(f))``, ``save``) on the same files in its own
process. Runs alternate (official, ours, official, ...) so that a machine's
drift hits both; the ratio is median(ours) / median(official).

``ben erase`` runs with ``--refiner none`` (the official output: the same
mask) and, with ``--refiner-too``, also with the default refiner. The official
BEN2.py and its checkpoint stay outside this repository (the official code
needs ``einops``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

OFFICIAL_RUNNER = r"""
import importlib.util, sys, pathlib
from PIL import Image
spec = importlib.util.spec_from_file_location("BEN2", sys.argv[1])
ben2 = importlib.util.module_from_spec(spec); spec.loader.exec_module(ben2)
model = ben2.BEN_Base().eval()
model.loadcheckpoints(sys.argv[2])
out = pathlib.Path(sys.argv[4])
for f in sorted(pathlib.Path(sys.argv[3]).iterdir()):
    model.inference(Image.open(f)).save(out / (f.stem + ".png"))
"""


def make_images(folder: Path, n: int, side: int, seed: int = 0) -> None:
    """``n`` smooth, photo-like JPEGs of side x side (q95)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 255, (side // 16, side // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
        img.save(folder / f"img{i:03d}.jpg", quality=95)


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall, user and system seconds of one child process (fails loudly)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return {"wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime}


def max_alpha_difference(a: Path, b: Path, stretch: bool = False) -> int:
    """Largest |alpha_a - alpha_b| over the files both folders hold (uint8 levels).

    ``stretch``: first map ``a``'s alpha to the full 0-255 range, as the official
    ``postprocess_image`` does to its probability map (a per-image min-max stretch
    that ``ben`` does not apply; near identity for trained weights, large for the
    random-weight reference checkpoint).
    """
    worst = 0
    for f in sorted(a.glob("*.png")):
        x = np.asarray(Image.open(f))[..., 3].astype(float)
        if stretch and x.max() > x.min():
            x = (x - x.min()) / (x.max() - x.min()) * 255
        y = np.asarray(Image.open(b / f.name))[..., 3].astype(float)
        worst = max(worst, int(np.abs(x - y).max().round()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="path to the official BEN2.py")
    ap.add_argument("--weights", required=True, help="an official-layout checkpoint (.pth)")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--refiner-too", action="store_true", help="also time ben erase with the default refiner")
    ap.add_argument("--ben-args", default="", help="extra arguments for ben erase (e.g. '--precision bf16')")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()

    env = dict(os.environ)
    ben = [sys.executable, "-m", "ben_cli"]
    tmp = Path(tempfile.mkdtemp(prefix="ben-vs-official-"))
    try:
        src = tmp / "in"
        src.mkdir()
        make_images(src, args.images, args.size)
        runs: dict[str, list[dict[str, float]]] = {"official": [], "ours": []}
        if args.refiner_too:
            runs["ours, default refiner"] = []
        outs = {name: tmp / name.replace(", ", "-").replace(" ", "-") for name in runs}
        for _ in range(args.repeats):
            for name, out in outs.items():
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                if name == "official":
                    cmd = [sys.executable, "-c", OFFICIAL_RUNNER, args.official, args.weights, str(src), str(out)]
                else:
                    cmd = [*ben, "erase", str(src), str(out), "--weights", args.weights, "--device", "cpu",
                           "--precision", "fp32", "--quiet", *args.ben_args.split()]
                    if name == "ours":
                        cmd += ["--refiner", "none"]
                runs[name].append(timed(cmd, env))
        diff = max_alpha_difference(outs["ours"], outs["official"])
        diff_stretched = max_alpha_difference(outs["ours"], outs["official"], stretch=True)
        base = statistics.median(r["wall"] for r in runs["official"])
        rows = {}
        for name, rs in runs.items():
            wall = statistics.median(r["wall"] for r in rs)
            rows[name] = {"wall_s": round(wall, 2), "per_image_s": round(wall / args.images, 2),
                          "user_s": round(statistics.median(r["user"] for r in rs), 1),
                          "sys_s": round(statistics.median(r["sys"] for r in rs), 1),
                          "vs_official": round(wall / base, 3), "runs": [round(r["wall"], 2) for r in rs]}
        print(f"{args.images} images of {args.size}x{args.size}, {os.cpu_count()} CPUs, {args.repeats} repeat(s)")
        print(f"{'path':<24}{'wall s':>9}{'s/image':>9}{'user s':>9}{'sys s':>8}{'vs official':>13}")
        for name, r in rows.items():
            print(f"{name:<24}{r['wall_s']:>9}{r['per_image_s']:>9}{r['user_s']:>9}{r['sys_s']:>8}"
                  f"{r['vs_official']:>13}")
        print(f"max |alpha ours (refiner none) - alpha official| = {diff}/255; "
              f"{diff_stretched}/255 with the official's min-max stretch applied to ours")
        if args.json:
            Path(args.json).write_text(json.dumps({"images": args.images, "size": args.size, "rows": rows,
                                                   "max_alpha_diff": diff,
                                                   "max_alpha_diff_stretched": diff_stretched}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
