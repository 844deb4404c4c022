"""``bash scripts/gpu_bench.sh --dry-run``: the GPU measurement script runs its steps on the CPU and exits 0,
and every step leaves JSON lines that parse in ``$OUT/results.jsonl`` (what a device call brings back)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ("setup", "images", "checks", "pytest-gpu", "startup", "erase-none", "erase-default", "erase-nodecon",
         "speed-compiled", "erase-compiled")
"""The steps of the script, each of which must write at least one measurement line and a step-end line."""


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "BEN_GPU_BENCH_WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable, "BEN_GPU_KIT": str(tmp_path / "no-kit")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_bench.sh"), "--dry-run"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.jsonl", "steps.log"]  # <= 8 files back
    lines = [json.loads(raw) for raw in (out / "results.jsonl").read_text().splitlines()]
    by_step: dict[str, list[dict]] = {}
    for line in lines:
        by_step.setdefault(line["step"], []).append(line)
    for step in STEPS:
        ends = [x for x in by_step.get(step, []) if x["what"] == "step-end"]
        assert len(ends) == 1 and ends[0]["rc"] == 0 and not ends[0]["timed_out"], (step, ends)
        assert any(x["what"] not in ("step-end", "error") for x in by_step[step]), step
    assert not [x for x in lines if x["what"] == "error"]
    kinds = {(x["step"], x["what"]) for x in lines}
    for want in [("setup", "env"), ("setup", "checkpoint"), ("checks", "reference"), ("checks", "precision"),
                 ("checks", "speed"), ("checks", "syncs"), ("pytest-gpu", "session"), ("speed-compiled", "compile")]:
        assert want in kinds, want
    reference = next(x for x in lines if x["what"] == "reference")
    assert "skipped" in reference  # no kit, tiny model: said, not silently passed
    tests = [x for x in lines if x["step"] == "pytest-gpu" and x["what"] == "test"]
    assert tests and all(x["outcome"] == "skipped" for x in tests)  # collected without hypothesis, skipped on the CPU
    runs = [x for x in lines if x["what"] == "erase"]
    assert [x["label"] for x in runs if x["step"] == "startup"] == ["cold", "warm"]
    for run in runs:
        assert run["rc"] == 0 and run["outputs"] >= 1 and run["first_output_s"] is not None, run
        assert "skipped" in run["gpu"]  # no nvidia-smi here
    compiled = next(x for x in runs if x["step"] == "erase-compiled")
    assert compiled["recompiles"] == 0 and compiled["outputs"] == 3
