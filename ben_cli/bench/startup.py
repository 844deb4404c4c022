"""The start-up time of ``ben erase`` on one image, in a subprocess (:func:`measure_startup`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ben_cli.bench.report import BenchError, Startup
from ben_cli.options import InferenceOptions


def startup_args(options: InferenceOptions) -> list[str]:
    """The ``ben erase`` flags that rebuild ``options``' model in a subprocess."""
    args = ["--model", options.model] if options.model_given else []
    args += ["--device", options.device, "--precision", options.precision.value,
             "--resolution", str(options.resolution), "--refiner", options.refiner.value]
    if options.batch_size is not None:
        args += ["--batch-size", str(options.batch_size)]
    if options.weights is not None:
        args += ["--weights", str(options.weights)]
    if options.refiner_weights is not None:
        args += ["--refiner-weights", str(options.refiner_weights)]
    if options.compile:
        args.append("--compile")
    if getattr(options, "autocast", False):
        args.append("--autocast")
    if options.max_refine_side is not None:
        args += ["--max-refine-side", str(options.max_refine_side)]
    return args


def measure_startup(options: InferenceOptions, image: Path, work: Path, *, timeout: float = 1800.0,
                    env: dict[str, str] | None = None) -> Startup:
    """``python -m ben_cli erase IMAGE OUT.png`` with ``options``' model flags, timed from process start.

    Raises :class:`BenchError` when the subprocess fails or produces no output.
    """
    work.mkdir(parents=True, exist_ok=True)
    out, report = work / "startup.png", work / "startup.json"
    for p in (out, report):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "ben_cli", "erase", str(image), str(out), *startup_args(options),
           "--report", str(report), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    first: float | None = None
    try:
        while proc.poll() is None:
            if first is None and out.exists():
                first = time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise BenchError(f"start-up run took over {timeout:.0f} s")
            time.sleep(0.005)
        exit_s = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    if proc.returncode != 0 or not out.exists():
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {proc.returncode}"
        raise BenchError(f"start-up run of ben erase failed: {last}")
    first = exit_s if first is None else first
    try:
        data = json.loads(report.read_text())
        load, run = float(data["run"]["load_seconds"]), float(data["totals"]["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return Startup(first, exit_s)
    return Startup(first, exit_s, max(0.0, first - load - run), load, run)


__all__ = ["measure_startup", "startup_args"]
