#!/usr/bin/env python3
"""The measurements of ``scripts/gpu_bench.sh`` (not a test): each subcommand appends JSON lines to ``--results``.

    python3 scripts/gpu_checks.py --results out.jsonl --step correct correct --device cuda \\
        --weights /tmp/ref_seed0.pth --kit .gpu-kit

One line per finished measurement, appended (and closed) as soon as it is known, so a step stopped at
its time limit still leaves what it measured. Every line is ``{"step", "what", "t", ...}`` (``t``:
seconds since this helper started); a measurement that cannot run here is a line with
``"skipped": reason``. ``--deadline S``: the helper starts no new measurement after S seconds and
stops a child process there, so it can still write its line before the shell's ``timeout`` kills it.

Subcommands:
  env         versions of what the GPU machine must have, the device, the CPU's kernels
  checkpoint  the weights: the shared kit's seed-0 checkpoint (its make_checkpoint.py), or a tiny model's
  images      synthetic photo-like JPEGs (the generator of ``ben bench``)
  correct     fp32 against the kit's expected output; fp16/bf16, cast and autocast, against fp32
  speed       BenBase images/s per precision at one batch size, eager or ``--compile``
  syncs       every host sync left in the hot loop (``torch.cuda.set_sync_debug_mode``), by source line
  erase       ``ben erase`` in a child process: start-up to the first output, images/s, GPU use, recompiles

Only ``env`` ... ``syncs`` import torch; ``erase`` runs ``ben erase`` with this interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import linecache
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

T0 = time.monotonic()
REPO = Path(__file__).resolve().parents[1]
MODES = {"fp32": ("fp32", False), "fp16": ("fp16", False), "fp16+autocast": ("fp16", True),
         "bf16": ("bf16", False), "bf16+autocast": ("bf16", True)}
"""A mode -> (precision, autocast): fp16/bf16 alone cast the weights once (``ben erase``'s default)."""


class Results:
    """Appends one JSON line per call to ``path``, each tagged with the step; echoes it to stdout (the log)."""

    def __init__(self, path: Path, step: str, deadline: float | None) -> None:
        self.path, self.step, self.deadline = path, step, deadline

    def emit(self, what: str, **fields: Any) -> dict[str, Any]:
        line = {"step": self.step, "what": what, "t": round(time.monotonic() - T0, 3), **fields}
        text = json.dumps(line, default=str)
        with self.path.open("a") as f:
            f.write(text + "\n")
        print(text, flush=True)
        return line

    def left(self) -> float:
        """Seconds until ``--deadline`` (infinite without one)."""
        return float("inf") if self.deadline is None else self.deadline - (time.monotonic() - T0)


# ---------------------------------------------------------------------------------------------- torch steps


def _device(spec: str) -> Any:
    from ben_cli.device import resolve_device

    return resolve_device(spec)


def _model(args: argparse.Namespace) -> Any:
    from ben_cli.checkpoints.load import load_model

    return load_model(args.weights, model=args.model)


def _dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _sync(device: Any) -> None:
    from ben_cli.device import synchronize

    synchronize(device)


def _random_batch(batch: int, side: int, device: Any, seed: int = 0) -> Any:
    """(B, 3, S, S) float32 in [0, 1] on ``device``: smooth random scenes plus noise (never zeros)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    small = rng.random((batch, 3, max(2, side // 32), max(2, side // 32)), dtype=np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(small), size=(side, side), mode="bicubic")
    x = x + torch.from_numpy(rng.normal(0, 0.03, (batch, 3, side, side)).astype(np.float32))
    return x.clamp_(0, 1).to(device)


def _peak_gib(device: Any) -> float | None:
    from ben_cli.device import peak_memory_allocated

    return round(peak_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def cmd_env(args: argparse.Namespace, out: Results) -> None:
    import importlib
    import platform

    versions: dict[str, str | None] = {}
    for name in ("torch", "torchvision", "timm", "typer", "rich", "safetensors", "huggingface_hub", "numpy", "PIL",
                 "cv2", "pytest", "triton", "hypothesis", "ray", "pymatting", "av"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception:  # a missing optional package is the point of the line
            versions[name] = None
    import torch

    cuda = torch.cuda.is_available()
    out.emit("env", python=platform.python_version(), versions=versions, cuda=cuda,
             gpu=torch.cuda.get_device_name(0) if cuda else None, cuda_runtime=torch.version.cuda,
             gpus=torch.cuda.device_count() if cuda else 0, cpu_count=os.cpu_count(),
             cpu_capability=torch.backends.cpu.get_cpu_capability(), nvidia_smi=shutil.which("nvidia-smi"))


def cmd_checkpoint(args: argparse.Namespace, out: Results) -> None:
    """The environment line, then the weights: the kit's seed-0 checkpoint in the official layout (--kit),
    or random weights of --random MODEL (a ``.pth`` in the official layout, else our safetensors)."""
    import torch

    cmd_env(args, out)
    args.to.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if args.random:
        from ben_cli.checkpoints.load import save_checkpoint
        from ben_cli.models.registry import build_model

        torch.manual_seed(0)
        save_checkpoint(build_model(args.random).eval(), args.to, official_keys=args.to.suffix == ".pth")
        source = f"random weights of {args.random} (seed 0): no reference output exists for them"
    else:
        sys.path.insert(0, str(args.kit))
        import make_checkpoint  # the shared kit's own script, carried in --kit

        torch.save({"model_state_dict": make_checkpoint.build_state_dict(0)}, args.to)
        source = f"{args.kit}/make_checkpoint.py, seed 0"
    out.emit("checkpoint", path=str(args.to), bytes=args.to.stat().st_size, source=source,
             seconds=round(time.perf_counter() - t, 2))


def cmd_images(args: argparse.Namespace, out: Results) -> None:
    from ben_cli.bench.images import make_images

    for i, size in enumerate(args.size):
        w, h = (int(v) for v in size.lower().split("x"))
        t = time.perf_counter()
        paths = make_images(args.to / f"{w}x{h}", args.count, (w, h), seed=1000 * i)
        out.emit("images", size=[w, h], megapixels=round(w * h / 1e6, 2), count=len(paths),
                 bytes=sum(p.stat().st_size for p in paths), seconds=round(time.perf_counter() - t, 2))


def _probability(model: Any, mode: str, rgb: Any, device: Any, resolution: int) -> Any:
    """The base probability (B, 1, S, S) float32 on the CPU of ``rgb`` in ``mode``, through the Eraser."""
    import torch

    from ben_cli.pipeline import Eraser

    precision, autocast = MODES[mode]
    eraser = Eraser(model, device=device, dtype=_dtype(precision), resolution=resolution, autocast=autocast,
                    batch_size=rgb.shape[0])
    return torch.sigmoid(eraser.base(rgb)).cpu()


def cmd_correct(args: argparse.Namespace, out: Results) -> None:
    """fp32 against the kit's expected output (skipped without the kit or with another model), then each
    reduced precision against fp32 on a batch: max |dp|, the share of pixels off by more than 2/255, NaNs."""
    import numpy as np
    import torch
    from PIL import Image

    from ben_cli.resize import resize_for_model

    device = _device(args.device)
    model = _model(args)
    matmul = torch.backends.cuda.matmul
    tf32 = {"matmul": matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
    kit = args.kit
    have_kit = kit is not None and (kit / "input.png").is_file() and (kit / "expected_seed0.npz").is_file()
    image = None
    if have_kit:
        image = np.asarray(Image.open(kit / "input.png").convert("RGB"))
    if not have_kit or args.model != "ben2-base" or image.shape[:2] != (args.resolution, args.resolution):
        out.emit("reference", skipped=f"needs the kit's input.png and expected_seed0.npz in {kit}, ben2-base and "
                 f"--resolution 1024 (have: kit {have_kit}, {args.model}, {args.resolution})")
    else:
        expected = np.load(kit / "expected_seed0.npz")["prob"]
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).to(device)
        t = time.perf_counter()
        prob = _probability(model, "fp32", rgb, device, args.resolution)[0, 0].numpy()
        diff = np.abs(prob.astype(np.float64) - expected)
        out.emit("reference", device=str(device), max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                 passed=bool(diff.max() < 1e-4), tf32=tf32, seconds=round(time.perf_counter() - t, 2),
                 note="fp32 on this device against the official code's CPU output (kit: well under 1e-4)")
    rgb = _random_batch(args.batch, args.resolution, device, seed=1)
    if image is not None:  # the test card first, at the model side
        card = torch.from_numpy(resize_for_model(image, args.resolution)).permute(2, 0, 1).float().div(255)
        rgb[0] = card.to(device)
    ref = _probability(model, "fp32", rgb, device, args.resolution)
    for mode in args.modes.split(","):
        if out.left() < 0:
            out.emit("precision", mode=mode, skipped="deadline reached")
            continue
        t = time.perf_counter()
        prob = _probability(model, mode, rgb, device, args.resolution)
        diff = (prob - ref).abs()
        out.emit("precision", mode=mode, batch=args.batch, resolution=args.resolution,
                 max_abs=round(float(diff.nan_to_num(1.0).max()), 6),
                 pct_over_2_255=round(100 * float((diff > 2 / 255).float().mean()), 4),
                 nan=int(torch.isnan(prob).sum()), seconds=round(time.perf_counter() - t, 2))


def cmd_speed(args: argparse.Namespace, out: Results) -> None:
    """BenBase through ``Eraser.base`` per mode: the first call (compilation under --compile) timed
    apart, then the median of --repeats calls; images/s and peak memory."""
    from ben_cli.device import reset_peak_memory
    from ben_cli.pipeline import Eraser

    device = _device(args.device)
    model = _model(args)
    rgb = _random_batch(args.batch, args.resolution, device)
    if getattr(args, "skip_compile", None):
        out.emit("compile", skipped=args.skip_compile)
    for mode in args.modes.split(","):
        if out.left() < 0:
            out.emit("speed", mode=mode, skipped="deadline reached")
            continue
        precision, autocast = MODES[mode]
        reset_peak_memory(device)
        eraser = Eraser(model, device=device, dtype=_dtype(precision), resolution=args.resolution,
                        compile=args.compile, batch_size=args.batch, autocast=autocast)
        if args.compile:
            out.emit("compile-start", mode=mode, batch=args.batch, resolution=args.resolution)
        t = time.perf_counter()
        eraser.warm_up() if args.compile else eraser.base(rgb)
        _sync(device)
        first = time.perf_counter() - t
        times: list[float] = []
        for _ in range(args.repeats):
            if out.left() < 0:
                break
            t = time.perf_counter()
            eraser.base(rgb)
            _sync(device)
            times.append(time.perf_counter() - t)
        seconds = statistics.median(times) if times else None
        out.emit("speed", mode=mode, compiled=args.compile, still_compiled=eraser.compiled, batch=args.batch,
                 resolution=args.resolution, device=str(device), first_call_s=round(first, 3), repeats=len(times),
                 seconds_per_batch=round(seconds, 4) if seconds else None,
                 images_per_s=round(args.batch / seconds, 2) if seconds else None,
                 spread_s=round(max(times) - min(times), 4) if times else None, peak_memory_gib=_peak_gib(device))
        del eraser


@contextlib.contextmanager
def _sync_debug(device: Any, out: Results) -> Any:
    """``torch.cuda.set_sync_debug_mode("warn")`` on CUDA (a warning per host sync), nothing elsewhere."""
    import torch

    if device.type != "cuda":
        out.emit("sync-debug", skipped=f"torch.cuda.set_sync_debug_mode needs CUDA (device {device}): "
                 "the loop below runs, and records no sync")
        yield
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def cmd_syncs(args: argparse.Namespace, out: Results) -> None:
    """Run the hot loop (``Eraser.predict`` on a batch of --image-size pictures, then each cutout rendered as
    the writer threads do, decontamination included) once to warm up, then --repeats times under the sync
    debug mode; one line per source line that synchronised, with its count per batch."""
    import warnings

    from ben_cli.io.read import LoadedImage
    from ben_cli.options import OutputOptions
    from ben_cli.output import finishing_device, render
    from ben_cli.pipeline import Eraser
    from ben_cli.resize import resize_for_model

    eraser = Eraser.from_options(model=args.model, weights=args.weights, device=args.device,
                                 resolution=args.resolution, batch_size=args.batch)
    w, h = (int(v) for v in args.image_size.lower().split("x"))
    pixels = (_random_batch(args.batch, max(w, h), "cpu", seed=2)[:, :, :h, :w] * 255).byte()
    images = [LoadedImage("synthetic", im.permute(1, 2, 0).contiguous().numpy(), None, "RGB") for im in pixels]
    resized = [resize_for_model(im.rgb, eraser.resolution) for im in images]
    finishing, output = finishing_device(eraser.device), OutputOptions()

    def loop() -> None:
        preds = eraser.predict([im.rgb for im in images], resized=resized)
        for im, pred in zip(images, preds):
            render("cutout", im, pred, output, device=finishing)

    loop()
    _sync(eraser.device)
    sites: Counter = Counter()
    messages: dict[str, str] = {}
    done = 0
    with warnings.catch_warnings(record=True) as caught, _sync_debug(eraser.device, out):
        warnings.simplefilter("always")
        for _ in range(args.repeats):
            if out.left() < 0:
                break
            loop()
            done += 1
    for w in caught:
        text = str(w.message)
        if "synchroniz" not in text.lower():
            continue
        site = f"{_short(w.filename)}:{w.lineno}"
        sites[site] += 1
        messages.setdefault(site, text.splitlines()[0][:160])
    for site, count in sites.most_common():
        file, line = site.rsplit(":", 1)
        source = linecache.getline(str(REPO / file) if not file.startswith("/") else file, int(line)).strip()
        out.emit("sync", site=site, per_batch=round(count / max(done, 1), 2), source=source, message=messages[site])
    out.emit("syncs", batches=done, batch=len(images), refiner=eraser.refiner.name, device=str(eraser.device),
             sites=len(sites), syncs_per_batch=round(sum(sites.values()) / max(done, 1), 2))


def cmd_checks(args: argparse.Namespace, out: Results) -> None:
    """correct, then speed (eager), then syncs, in one process (one start-up instead of three); a check that
    fails is an error line and the next one still runs."""
    for name, command in (("correct", cmd_correct), ("speed", cmd_speed), ("syncs", cmd_syncs)):
        if name not in args.only.split(","):
            continue
        ns = argparse.Namespace(**vars(args))
        ns.modes = {"correct": args.correct_modes, "speed": args.speed_modes}.get(name)
        ns.batch = args.correct_batch if name == "correct" else args.batch
        ns.repeats = args.sync_repeats if name == "syncs" else args.repeats
        try:
            command(ns, out)
        except Exception as e:
            out.emit("error", check=name, error=f"{type(e).__name__}: {e}"[:500])
            failed.append(name)


failed: list[str] = []
"""The checks of ``cmd_checks`` that raised (the helper then exits 1)."""


def _short(filename: str) -> str:
    """A path relative to the repository (or to site-packages) for the report."""
    path = Path(filename)
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(REPO))
    parts = path.parts
    return str(Path(*parts[parts.index("site-packages") + 1 :])) if "site-packages" in parts else filename


# ---------------------------------------------------------------------------------------------- ben erase


class Utilisation:
    """GPU utilisation and memory sampled by ``nvidia-smi`` every ``interval_ms`` in a background thread:
    (seconds since start, util %, memory MiB) rows of GPU 0; ``skipped`` says why there are none."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.rows: list[tuple[float, float, float]] = []
        self.skipped: str | None = None
        self._proc: subprocess.Popen | None = None
        tool = shutil.which("nvidia-smi")
        if tool is None:
            self.skipped = "no nvidia-smi on this machine"
            return
        self._proc = subprocess.Popen([tool, "--query-gpu=index,utilization.gpu,memory.used",
                                       "--format=csv,noheader,nounits", f"-lms={interval_ms}"],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            cells = [c.strip() for c in line.split(",")]
            if len(cells) == 3 and cells[0] == "0":
                with contextlib.suppress(ValueError):
                    self.rows.append((time.monotonic() - self._t0, float(cells[1]), float(cells[2])))

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            if not self.rows:
                self.skipped = "nvidia-smi gave no samples"

    def summary(self, since: float | None, offset: float) -> dict[str, Any]:
        """Mean and median utilisation over the whole run and from ``since`` (run seconds) on; peak memory.
        ``offset``: when the run started, in this sampler's seconds."""
        if self.skipped:
            return {"skipped": self.skipped}
        rows = [(t - offset, u, m) for t, u, m in self.rows if t >= offset]
        after = [u for t, u, _ in rows if since is not None and t >= since]
        util = [u for _, u, _ in rows]
        return {"samples": len(rows), "mean_pct": _mean(util), "median_pct": _median(util),
                "after_first_output_mean_pct": _mean(after), "after_first_output_median_pct": _median(after),
                "peak_memory_mib": max((m for _, _, m in rows), default=None)}


def _mean(xs: list[float]) -> float | None:
    return round(statistics.fmean(xs), 1) if xs else None


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 1) if xs else None


def _outputs(folder: Path) -> list[Path]:
    """Finished outputs (written atomically: hidden temp files are not counted)."""
    return [p for p in folder.rglob("*.png") if not p.name.startswith(".")] if folder.is_dir() else []


def cmd_erase(args: argparse.Namespace, out: Results) -> None:
    """``ben erase INPUT OUTPUT [ben args]`` in a child process, --runs times: start-up to the first output
    file, total seconds, images/s after the first batch (from the outputs' times), the report's totals,
    GPU utilisation (whole run and after the first output) and, with --count-recompiles, dynamo's
    recompiles (``TORCH_LOGS=recompiles``). A run still going at the deadline is stopped with SIGTERM
    (ben writes its report when interrupted) and reported as such."""
    env = dict(os.environ)
    if args.cache_dir is not None:
        env["BEN_CACHE_DIR"] = str(args.cache_dir)
        if args.fresh_cache:
            shutil.rmtree(args.cache_dir, ignore_errors=True)
    if args.count_recompiles:
        env["TORCH_LOGS"] = "recompiles"
    if args.skip_compile:
        out.emit("compile", skipped=args.skip_compile)
    work = args.output.parent
    for run in range(args.runs):
        label = args.label or ("cold" if args.fresh_cache and run == 0 else "warm" if args.fresh_cache else "run")
        if out.left() < 5:
            out.emit("erase", label=label, skipped="deadline reached")
            continue
        shutil.rmtree(args.output, ignore_errors=True)
        report, log = work / f"{args.output.name}.report.json", work / f"{args.output.name}.stderr.txt"
        report.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "ben_cli", "erase", str(args.input), str(args.output), *args.ben,
               "--report", str(report), "--quiet"]
        sampler = Utilisation()
        start = time.monotonic()
        offset = start - getattr(sampler, "_t0", start)
        first = None
        stopped = False
        with log.open("w") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=err, stderr=subprocess.STDOUT, cwd=REPO)
            while proc.poll() is None:
                time.sleep(0.02)
                if first is None and _outputs(args.output):
                    first = time.monotonic() - start
                if out.left() < 3 and not stopped:
                    proc.send_signal(signal.SIGTERM)
                    stopped = True
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(8)
                    proc.kill()
        seconds = time.monotonic() - start
        sampler.stop()
        text = log.read_text(errors="replace")
        sys.stdout.write(text[-20000:])
        files = sorted(p.stat().st_mtime for p in _outputs(args.output))
        b = min(args.batch, len(files))
        after = (len(files) - b) / (files[-1] - files[b - 1]) if len(files) > b and files[-1] > files[b - 1] else None
        totals = json.loads(report.read_text()).get("totals") if report.is_file() else None
        line: dict[str, Any] = {
            "label": label, "args": args.ben, "rc": proc.returncode, "stopped_at_deadline": stopped,
            "seconds": round(seconds, 2), "first_output_s": round(first, 2) if first is not None else None,
            "outputs": len(files), "images_per_s_after_first_batch": round(after, 2) if after else None,
            "report_totals": totals, "gpu": sampler.summary(first, offset),
            "warnings": [ln.strip()[:200] for ln in text.splitlines() if "Warning" in ln or "warning:" in ln][:10],
        }
        if args.count_recompiles:
            recompiles = [ln.strip() for ln in text.splitlines() if "Recompiling function" in ln]
            line["recompiles"] = len(recompiles)
            line["recompile_lines"] = [r[:300] for r in recompiles[:5]]
        out.emit("erase", **line)


def cmd_summary(args: argparse.Namespace, out: Results) -> None:
    """A short text table of --results (the end of the device call's output): one row per line that measured."""
    keys = ("mode", "label", "site", "max_abs", "pct_over_2_255", "images_per_s", "first_call_s", "seconds_per_batch",
            "first_output_s", "images_per_s_after_first_batch", "seconds", "outputs", "recompiles", "per_batch",
            "syncs_per_batch", "outcome", "nodeid", "passed", "rc", "timed_out", "skipped", "error")
    for raw in args.results.read_text().splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            print("unparsable:", raw[:120])
            continue
        if line.get("what") in ("test",) and line.get("outcome") == "passed":
            continue
        cells = [f"{k}={line[k]}" for k in keys if line.get(k) not in (None, "")]
        gpu = line.get("gpu")
        if isinstance(gpu, dict) and gpu.get("after_first_output_mean_pct") is not None:
            cells.append(f"gpu_util={gpu['after_first_output_mean_pct']}%")
        print(f"{line.get('step', '?'):<16} {line.get('what', '?'):<14} " + " ".join(cells)[:220])


# ---------------------------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True, help="the JSON Lines file to append to")
    ap.add_argument("--step", required=True, help="the step name written on every line")
    ap.add_argument("--deadline", type=float, default=None, help="seconds: start nothing new after this")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="cuda")
        p.add_argument("--model", default="ben2-base")
        p.add_argument("--weights", type=Path, required=True)
        p.add_argument("--resolution", type=int, default=1024)
        p.add_argument("--batch", type=int, default=16)

    sub.add_parser("env")
    sub.add_parser("summary")
    p = sub.add_parser("checkpoint")
    p.add_argument("--to", type=Path, required=True)
    p.add_argument("--kit", type=Path, default=None)
    p.add_argument("--random", default=None, metavar="MODEL", help="random weights of MODEL instead of the kit's")
    p = sub.add_parser("images")
    p.add_argument("--to", type=Path, required=True)
    p.add_argument("--count", type=int, required=True, help="images of each size")
    p.add_argument("--size", action="append", required=True, help="WxH (repeat for several sizes)")
    p = sub.add_parser("correct")
    model_args(p)
    p.add_argument("--kit", type=Path, default=None)
    p.add_argument("--modes", default="fp16,fp16+autocast,bf16,bf16+autocast")
    p = sub.add_parser("speed")
    model_args(p)
    p.add_argument("--modes", default="fp32,fp16,fp16+autocast,bf16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--skip-compile", default=None, metavar="WHY", help="run eagerly, with a line saying why")
    p = sub.add_parser("syncs")
    model_args(p)
    p.add_argument("--image-size", default="1500x1000", help="WxH of the synthetic pictures")
    p.add_argument("--repeats", type=int, default=2)
    p = sub.add_parser("checks", help="correct, speed (eager) and syncs in one process")
    model_args(p)
    p.add_argument("--only", default="correct,speed,syncs")
    p.add_argument("--kit", type=Path, default=None)
    p.add_argument("--correct-batch", type=int, default=4)
    p.add_argument("--correct-modes", default="fp16,fp16+autocast,bf16,bf16+autocast")
    p.add_argument("--speed-modes", default="fp32,fp16,fp16+autocast,bf16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--image-size", default="1500x1000")
    p.add_argument("--sync-repeats", type=int, default=2)
    p = sub.add_parser("erase")
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--label", default=None)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--batch", type=int, default=16, help="the run's batch size (images/s after the first batch)")
    p.add_argument("--cache-dir", type=Path, default=None, help="$BEN_CACHE_DIR of the child")
    p.add_argument("--fresh-cache", action="store_true", help="empty --cache-dir first: run 1 cold, then warm")
    p.add_argument("--count-recompiles", action="store_true")
    p.add_argument("--skip-compile", default=None, metavar="WHY", help="a line saying why the run is not compiled")
    p.add_argument("ben", nargs=argparse.REMAINDER, help="-- then the arguments of ben erase")
    args = ap.parse_args(argv)
    if getattr(args, "ben", None) and args.ben[0] == "--":
        args.ben = args.ben[1:]
    out = Results(args.results, args.step, args.deadline)
    commands = {"env": cmd_env, "checkpoint": cmd_checkpoint, "images": cmd_images, "correct": cmd_correct,
                "speed": cmd_speed, "syncs": cmd_syncs, "checks": cmd_checks, "erase": cmd_erase,
                "summary": cmd_summary}
    try:
        commands[args.cmd](args, out)
    except Exception as e:
        out.emit("error", error=f"{type(e).__name__}: {e}"[:500])
        raise
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
