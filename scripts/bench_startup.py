#!/usr/bin/env python3
"""Benchmark (not a test): how long ``ben`` takes to start, and where the time goes.

    python scripts/bench_startup.py --weights /tmp/ref_seed0.pth --device cpu
    python scripts/bench_startup.py --device cuda --json

Measures, each in fresh processes or with the median of ``--repeat`` runs:

(a) ``python -c "import ben_cli.cli.app"`` and ``ben --help`` (``python -m ben_cli --help``),
    plus what importing the ``ben erase`` path costs (torch, timm, ...; ``python -X importtime``);
(b) reading the checkpoint: the ``.pth`` unpickled, the first read (which writes the safetensors
    cache) and a read from the cache;
(c) building the network and loading the weights onto ``--device``: random init + copy (what ben
    did before) against meta-device build + assign (what it does now);
(d) ``ben erase one.jpg out/`` from process start to the first output file, split at BenBase's
    first forward: with no cache yet (the first run writes it), then with the cache.

The checkpoint (``--weights``, else made here: the shared reference kit's seed-0 file, else our
full-size network saved in the official layout) is hard-linked or copied into a temporary
folder, so the cache is written there and the original's folder is left alone. The page cache
is warm in every measurement (the files were just read or written). ``--src DIR`` times the
subprocess parts (a, d) with the ``ben_cli`` package found in DIR (an export of another
commit: ``git archive HEAD ben_cli | tar -x -C DIR``) and leaves (b, c) out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REFERENCE_KIT = REPO.parent / "shared" / "ben2_reference" / "make_checkpoint.py"

# Runs `ben erase` in-process after installing hooks that stamp BenBase's first forward and time the
# checkpoint reading and model building; stamps are seconds since the parent's BENCH_T0 (time.time()).
_WRAPPER = r"""
import json, os, sys, time
t0 = float(os.environ["BENCH_T0"])
marks = {"interpreter": time.time() - t0}
import torch
def _pre(module, args):
    if type(module).__name__ == "BenBase" and "forward_start" not in marks:
        marks["forward_start"] = time.time() - t0
def _post(module, args, out):
    if type(module).__name__ == "BenBase" and "forward_end" not in marks:
        if isinstance(out, torch.Tensor) and out.is_cuda:
            torch.cuda.synchronize(out.device)
        marks["forward_end"] = time.time() - t0
torch.nn.modules.module.register_module_forward_pre_hook(_pre)
torch.nn.modules.module.register_module_forward_hook(_post)
import ben_cli.checkpoints.load as load
def _timed(name, fn):
    def run(*a, **k):
        t = time.time()
        try:
            return fn(*a, **k)
        finally:
            marks[name] = marks.get(name, 0.0) + time.time() - t
    return run
load.read_checkpoint = _timed("read_checkpoint", load.read_checkpoint)
load.build_from_checkpoint = _timed("build_from_checkpoint", load.build_from_checkpoint)
from ben_cli.cli.app import main
try:
    code = main(sys.argv[1:])
finally:
    marks["main_returned"] = time.time() - t0
    with open(os.environ["BENCH_MARKS"], "w") as f:
        json.dump(marks, f)
sys.exit(code)
"""


def _env(src: Path | None, **extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    return env


def _wall(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    """Median seconds of ``cmd`` run ``repeat`` times (output discarded; must exit 0)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=tempfile.gettempdir())  # not the checkout: its ben_cli would shadow --src
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _median_of(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _import_breakdown(env: dict[str, str]) -> dict[str, float]:
    """Cumulative import seconds of the heavy packages on the ``ben erase`` path (first import of each)."""
    code = "import ben_cli.cli.app, ben_cli.pipeline, ben_cli.engines.local, ben_cli.models.ben"
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, check=True,
                         capture_output=True, text=True, cwd=tempfile.gettempdir()).stderr
    wanted = ("torch", "torch._dynamo", "torchvision", "timm", "numpy", "PIL.Image", "typer", "safetensors")
    found: dict[str, float] = {}
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        if name in wanted and name not in found:
            found[name] = int(parts[1]) / 1e6
    total = subprocess.run([sys.executable, "-c", f"import time; t = time.perf_counter(); {code}; "
                            "print(time.perf_counter() - t)"], env=env, check=True, capture_output=True,
                           text=True, cwd=tempfile.gettempdir()).stdout
    return {**{k: found[k] for k in wanted if k in found}, "all of them": float(total)}


def _make_weights(folder: Path) -> Path:
    """A full-size official-layout BEN2 checkpoint (about 380 MB) in ``folder``."""
    path = folder / "BEN2_Base.pth"
    if REFERENCE_KIT.is_file():
        subprocess.run([sys.executable, str(REFERENCE_KIT), str(path), "--seed", "0"], check=True,
                       stdout=subprocess.DEVNULL)
        return path
    import torch

    from ben_cli.checkpoints.load import save_checkpoint
    from ben_cli.models.registry import build_model

    torch.manual_seed(0)
    return save_checkpoint(build_model("ben2-base"), path, official_keys=True)


def _place_weights(given: Path | None, folder: Path) -> Path:
    if given is None:
        return _make_weights(folder)
    target = folder / given.name
    try:
        os.link(given, target)
    except OSError:
        shutil.copy2(given, target)
    return target


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _checkpoint_and_model(weights: Path, device: str, repeat: int, model: str) -> dict[str, float]:
    import torch

    from ben_cli.checkpoints import cache as weights_cache
    from ben_cli.checkpoints.load import build_from_checkpoint, read_checkpoint
    from ben_cli.models.registry import build_model

    out: dict[str, float] = {}
    out["read .pth (unpickled, no cache)"] = _median_of(lambda: read_checkpoint(weights, cache=False), repeat)
    for p in weights_cache.cache_paths(weights):
        p.unlink(missing_ok=True)
    t = time.perf_counter()
    ckpt = read_checkpoint(weights, cache=True)
    out["first read (.pth, writes the cache)"] = time.perf_counter() - t
    if weights_cache.load(weights) is None:
        print("warning: no cache could be written", file=sys.stderr)
    out["read from the safetensors cache"] = _median_of(lambda: read_checkpoint(weights, cache=True), repeat)

    def old_way() -> None:
        net = build_model(model)
        net.load_state_dict(ckpt.state_dict)
        net.eval().to(device)
        _sync(device)

    def new_way() -> None:
        build_from_checkpoint(ckpt, model, device=device)
        _sync(device)

    if device == "cpu":  # as the Eraser does; without it each fresh 100 MB tensor costs page faults
        from ben_cli.device import keep_cpu_memory

        keep_cpu_memory()
    with torch.inference_mode(False):
        if device.startswith("cuda"):
            torch.zeros(1, device=device)  # CUDA initialised outside the timings
        out["build + load: random init, copy"] = _median_of(old_way, max(1, repeat // 2))
        out["build + load: meta, assign"] = _median_of(new_way, repeat)
    return out


def _erase_run(weights: Path, image: Path, out: Path, device: str, resolution: int, env: dict[str, str],
               marks_file: Path) -> dict[str, float]:
    """One ``ben erase`` process: seconds from its start to each stamp, and to the first output file."""
    shutil.rmtree(out, ignore_errors=True)
    target = out / f"{image.stem}.png"
    cmd = [sys.executable, "-c", _WRAPPER, "erase", str(image), str(out), "--weights", str(weights),
           "--device", device, "--resolution", str(resolution), "--quiet"]
    log = marks_file.with_suffix(".log")
    with log.open("w") as stderr:
        t0 = time.time()
        proc = subprocess.Popen(cmd, env={**env, "BENCH_T0": repr(t0), "BENCH_MARKS": str(marks_file)},
                                stdout=subprocess.DEVNULL, stderr=stderr, cwd=out.parent)
        first_output = None
        while proc.poll() is None:
            if first_output is None and target.exists():
                first_output = time.time() - t0
            time.sleep(0.002)
        exited = time.time() - t0
    if first_output is None and target.exists():
        first_output = exited
    if proc.returncode != 0 or first_output is None:
        raise RuntimeError(f"ben erase failed ({proc.returncode}): {log.read_text()[-2000:]}")
    marks = json.loads(marks_file.read_text())
    return {
        "interpreter up": marks["interpreter"],
        "read_checkpoint": marks.get("read_checkpoint", float("nan")),
        "build_from_checkpoint (+ importing timm)": marks.get("build_from_checkpoint", float("nan")),
        "before the first forward": marks["forward_start"],
        "forward": marks["forward_end"] - marks["forward_start"],
        "forward end -> first output": first_output - marks["forward_end"],
        "process start -> first output": first_output,
        "process start -> exit": exited,
    }


def _erase(weights: Path, folder: Path, device: str, resolution: int, runs: int, env: dict[str, str]
           ) -> dict[str, dict[str, float]]:
    import numpy as np
    from PIL import Image

    from ben_cli.checkpoints import cache as weights_cache

    image = folder / "one.jpg"
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(small).resize((1024, 768), Image.Resampling.BICUBIC).save(image, quality=90)
    marks = folder / "marks.json"
    for p in weights_cache.cache_paths(weights):
        p.unlink(missing_ok=True)
    results = {"first run (no cache: .pth, writes it)": _erase_run(weights, image, folder / "out", device,
                                                                    resolution, env, marks)}
    warm = [_erase_run(weights, image, folder / "out", device, resolution, env, marks) for _ in range(runs)]
    results["with the cache" + (f" (median of {runs})" if runs > 1 else "")] = {
        k: statistics.median(r[k] for r in warm) for k in warm[0]}
    return results


def _table(title: str, rows: dict[str, float]) -> str:
    width = max(len(k) for k in rows)
    return "\n".join([title, *(f"  {k:<{width}}  {v * 1000:9.0f} ms" for k, v in rows.items())])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="a .pth checkpoint (default: make a full-size one)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    ap.add_argument("--model", default="ben2-base", help="the registry model the weights are for")
    ap.add_argument("--resolution", type=int, default=1024, help="ben erase --resolution")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each cheap measurement (median)")
    ap.add_argument("--runs", type=int, default=1, help="ben erase runs with the cache (median)")
    ap.add_argument("--skip-erase", action="store_true", help="leave out (d)")
    ap.add_argument("--src", type=Path, help="time (a) and (d) with the ben_cli package in this folder")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = ap.parse_args()

    env = _env(args.src)
    results: dict[str, Any] = {"device": args.device, "python": sys.version.split()[0]}
    results["imports"] = {
        'python -c "import ben_cli.cli.app"': _wall([sys.executable, "-c", "import ben_cli.cli.app"], env,
                                                    args.repeat),
        "ben --help": _wall([sys.executable, "-m", "ben_cli", "--help"], env, args.repeat),
        'python -c "pass"': _wall([sys.executable, "-c", "pass"], env, args.repeat),
    }
    results["erase-path imports (cumulative, python -X importtime)"] = _import_breakdown(env)
    with tempfile.TemporaryDirectory(prefix="ben-startup-") as tmp:
        folder = Path(tmp)
        weights = _place_weights(args.weights, folder)
        results["weights"] = {"file": str(args.weights or "made here"), "bytes": weights.stat().st_size}
        if args.src is None:  # in this process: the checkout's code only
            results["checkpoint and model"] = _checkpoint_and_model(weights, args.device, args.repeat, args.model)
        if not args.skip_erase:
            for name, rows in _erase(weights, folder, args.device, args.resolution, args.runs, env).items():
                results[f"ben erase one.jpg out/ --device {args.device}: {name}"] = rows
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"device {args.device}, python {results['python']}, weights {results['weights']['file']} "
          f"({results['weights']['bytes'] / 1e6:.0f} MB); page cache warm")
    for title, rows in results.items():
        if isinstance(rows, dict) and all(isinstance(v, float) for v in rows.values()):
            print(_table(title, rows))


if __name__ == "__main__":
    main()
