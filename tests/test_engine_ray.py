"""``ben erase --engine ray`` on a local Ray runtime (2 CPUs, no GPU asked for), the tiny network at 256.

The module starts Ray once and stops it at the end, checking that no Ray process is left.
Default part: 20-40 s on the project's 2-core machines, depending on their load (Ray start-up
3 s, four Ray runs, one local run). The worker-crash test is marked slow (about 25-60 s: every
crash restarts an actor, and the isolation pass runs one file at a time).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ben_cli.cli.app import main
from ben_cli.errors import CheckpointError, EngineError
from ben_cli.options import InferenceOptions
from ben_cli.pipeline import Eraser
from ben_cli.plan import plan_run

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from ben_cli.engines.ray import RayRun  # noqa: E402 - only with Ray installed

RES = "256"
KINDS = ["cutout", "alpha"]
GOOD = ["a.jpg", "a.png", "sub/b.png", "sub/deep/c.webp"]
BROKEN = "sub/broken.jpg"
POISON = 7  # an image filled with this grey value kills the process of the crash test's model


# --------------------------------------------------------------------------- Ray, started once


def _ray_pids() -> set[int]:
    """Live processes (zombies aside) whose command line names Ray's binaries or workers (Linux /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and (b"raylet" in cmd or b"gcs_server" in cmd or cmd.startswith(b"ray::")):
            found.add(int(entry.name))
    return found


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    """A Ray runtime with 2 CPUs for this module; after ``ray.shutdown()`` no Ray process started since may remain."""
    address = os.environ.pop("RAY_ADDRESS", None)
    check = Path("/proc").is_dir()
    before = _ray_pids() if check else set()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    assert not check or _ray_pids() - before, "no Ray process found after ray.init"
    yield
    ray.shutdown()
    deadline = time.monotonic() + 30
    while check and _ray_pids() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not check or not _ray_pids() - before, "Ray processes left after ray.shutdown()"
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


# --------------------------------------------------------------------------- data and helpers


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 90)], -1)
    img[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (min(h, w) // 3) ** 2] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


def _make_inputs(root: Path, broken: bool = True) -> Path:
    for i, rel in enumerate(GOOD):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = _picture(40 + 4 * i, 52, i)
        if rel == "sub/b.png":  # RGBA: the input's transparency is kept
            pixels = np.dstack([pixels, np.full(pixels.shape[:2], 200, np.uint8)])
        Image.fromarray(pixels).save(path)
    if broken:
        (root / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(data: bytes) -> tuple:
    with Image.open(io.BytesIO(data)) as im:
        return im.mode, im.size, im.tobytes(), im.text.get("ben:source")


def _entries(report: Path, in_root: str, out_root: str) -> dict[str, tuple]:
    """{input relative to INPUT: (status, error, outputs relative to OUTPUT)} of a --report."""
    files = json.loads(report.read_text())["files"]

    def rel(text: str, root: str) -> str:
        assert text.startswith(root + "/"), (text, root)
        return text[len(root) + 1 :]

    return {rel(f["input"], in_root): (f["status"], f["error"], sorted(rel(o, out_root) for o in f["outputs"]))
            for f in files}


def _erase(*args: object, weights: Path) -> int:
    return main(["erase", "--resolution", RES, "--device", "cpu", "--weights", str(weights), "--save", ",".join(KINDS),
                 "-q", *map(str, args)])


@pytest.fixture(scope="module")
def ray_out(tmp_path_factory, tiny_checkpoint):
    """One Ray run over file:// URLs, two model actors on the 2 CPUs: (inputs, outputs, report, exit code)."""
    base = tmp_path_factory.mktemp("ray")
    src = _make_inputs(base / "in")
    out, report = base / "out", base / "ray.json"
    rc = _erase(f"file://{src}", f"file://{out}", "--engine", "ray", "--workers", "2", "--batch-size", "2",
                "--report", report, weights=tiny_checkpoint)
    return src, out, report, rc


def _options(weights: Path) -> InferenceOptions:
    return InferenceOptions(model="tiny", weights=weights, device="cpu", resolution=int(RES), batch_size=1)


# --------------------------------------------------------------------------- tests


def test_ray_writes_what_the_local_engine_writes(ray_out, tmp_path, tiny_checkpoint):
    src, out, report, rc = ray_out
    assert rc == 1  # the broken file failed, as it does locally
    local, local_report = tmp_path / "local", tmp_path / "local.json"
    assert _erase(src, local, "--engine", "local", "--report", local_report, weights=tiny_checkpoint) == 1
    ray_files, local_files = _tree(out), _tree(local)
    assert sorted(ray_files) == sorted(local_files) == sorted(
        ["a.jpg.png", "a.jpg.alpha.png", "a.png.png", "a.png.alpha.png", "sub/b.png", "sub/b.alpha.png",
         "sub/deep/c.png", "sub/deep/c.alpha.png"])
    for name in local_files:
        with Image.open(out / name) as a, Image.open(local / name) as b:
            # ben:source recorded alike (ben:pin holds each run's own input root and settings)
            assert a.mode == b.mode and a.size == b.size and a.text["ben:source"] == b.text["ben:source"]
            diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
        assert diff.max() <= 1, name
    ray_entries = _entries(report, f"file://{src}", f"file://{out}")
    assert ray_entries == _entries(local_report, str(src), str(local))
    assert ray_entries[BROKEN][0] == "failed" and ray_entries[BROKEN][1]  # a reason, the local engine's
    settings = json.loads(report.read_text())["settings"]
    assert (settings["engine"], settings["workers"], settings["gpus_per_worker"], settings["device"]) == (
        "ray", 2, 0, "cpu")


def test_ray_crops_and_reports_the_box_as_the_local_engine_does(tmp_path, tiny_checkpoint):
    src = _make_inputs(tmp_path / "in", broken=False)
    reports = {}
    for engine in ("ray", "local"):
        reports[engine] = tmp_path / f"{engine}.json"
        assert _erase(src, tmp_path / engine, "--engine", engine, "--canvas", "24x24", "--margin", "2",
                      "--report", reports[engine], weights=tiny_checkpoint) == 0
    crops = {engine: {Path(f["input"]).name: f["crop"] for f in json.loads(path.read_text())["files"]}
             for engine, path in reports.items()}
    assert crops["ray"] == crops["local"] and len(crops["ray"]) == len(GOOD)
    assert all(crop["canvas"] == [24, 24] for crop in crops["ray"].values())
    for name in ("a.jpg.png", "sub/deep/c.alpha.png"):
        with Image.open(tmp_path / "ray" / name) as im:
            assert im.size == (24, 24)


def test_a_second_run_skips_everything_without_running_ray(ray_out, tmp_path, tiny_checkpoint, monkeypatch):
    src, out, _, _ = ray_out
    src2 = shutil.copytree(src, tmp_path / "in")
    (src2 / BROKEN).unlink()
    out2 = shutil.copytree(out, tmp_path / "out")
    before = _tree(out2)

    def no_dataset(*args, **kwargs):
        raise AssertionError("a Ray dataset was built although every output exists")

    monkeypatch.setattr(ray.data, "from_items", no_dataset)
    report = tmp_path / "r.json"
    assert _erase(f"file://{src2}", f"file://{out2}", "--engine", "ray", "--report", report,
                  weights=tiny_checkpoint) == 0
    totals = json.loads(report.read_text())["totals"]
    assert (totals["done"], totals["skipped"], totals["failed"]) == (0, len(GOOD), 0)
    assert _tree(out2) == before


def test_an_interrupted_run_resumes_from_what_was_written(ray_out, tmp_path, tiny_checkpoint):
    src, out, _, _ = ray_out
    src2 = shutil.copytree(src, tmp_path / "in")
    (src2 / BROKEN).unlink()
    out2 = shutil.copytree(out, tmp_path / "out")  # a killed run: some outputs missing
    for name in ["a.jpg.png", "a.jpg.alpha.png", "sub/b.png", "sub/b.alpha.png", "sub/deep/c.alpha.png"]:
        (out2 / name).unlink()
    (out2 / ".a.jpg.png.ben-0123abcd.tmp").write_bytes(b"half a file")  # and its temp file
    os.utime(out2 / ".a.jpg.png.ben-0123abcd.tmp", (0, 0))

    def stop_after_one(result):
        if result.status == "done":
            raise KeyboardInterrupt  # Ctrl-C while the Ray run goes on

    plan = plan_run([src2], out2, KINDS)
    first = RayRun(plan.jobs, _options(tiny_checkpoint), on_result=stop_after_one).execute()
    assert first.interrupted == "SIGINT" and first.count("done") == 1
    for path in out2.rglob("*.png"):  # only complete files
        with Image.open(path) as im:
            im.load()
    plan = plan_run([src2], out2, KINDS)  # run again (the CLI also removes the stale temp file)
    second = RayRun(plan.jobs, _options(tiny_checkpoint)).execute()
    assert second.interrupted is None and second.count("failed") == 0
    assert second.count("done") + second.count("skipped") == len(GOOD)
    assert second.count("done") <= 2  # the one done before the interrupt is not redone
    assert {k: _pixels(v) for k, v in _tree(out2).items() if not k.startswith(".")} == {
        k: _pixels(v) for k, v in _tree(out).items()}  # the same images (each records its own run's input root)


def test_a_gpu_is_never_asked_of_a_ray_without_one(ray_out, tmp_path, tiny_checkpoint, capsys):
    src, _, _, _ = ray_out
    assert ray.cluster_resources().get("GPU", 0) == 0
    rc = _erase(src, tmp_path / "out", "--engine", "ray", "--gpus-per-worker", "1", weights=tiny_checkpoint)
    assert rc == 2  # at once: Ray would wait for the GPU forever
    assert "--gpus-per-worker 1: Ray finds no GPU on this machine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- workers that fail


def _unloadable(options: InferenceOptions) -> Eraser:
    raise CheckpointError("w.pth: not a checkpoint (as read on the worker)")


def test_a_model_that_cannot_load_on_the_workers_is_one_error(tmp_path):
    src = _make_inputs(tmp_path / "in", broken=False)
    plan = plan_run([src], tmp_path / "out", KINDS)
    run = RayRun(plan.jobs, _options(tmp_path / "w.pth"), build=_unloadable)
    with pytest.raises(EngineError) as caught:
        run.execute()
    assert str(caught.value) == "the model workers could not start: w.pth: not a checkpoint (as read on the worker)"
    assert run.summary().count("done") == 0 and not (tmp_path / "out").exists()


class _Killer(nn.Module):
    """Mean-colour logits; the process exits (a hard crash, not an exception) on a poison image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        if ((x * std + mean) * 255).round().eq(POISON).flatten(1).all(1).any():
            os._exit(3)
        return x.mean(1, keepdim=True)


def _killer_eraser(options: InferenceOptions) -> Eraser:
    return Eraser(_Killer(), device=torch.device("cpu"), dtype=torch.float32, resolution=options.resolution)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BEN_RAY_CRASH_TEST"),
                    reason="kills Ray workers on purpose: 20-60 s alone, minutes on a loaded machine; "
                           "set BEN_RAY_CRASH_TEST=1 to run it")
def test_a_file_that_kills_its_worker_fails_alone(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        pixels = _picture(40, 52, i)
        if i == 2:
            pixels[:] = POISON
        Image.fromarray(pixels).save(src / f"im{i}.png")
    options = InferenceOptions(model="tiny", device="cpu", resolution=int(RES), batch_size=2, refiner="none")
    plan = plan_run([src], tmp_path / "out", ["cutout"])
    summary = RayRun(plan.jobs, options, build=_killer_eraser, task_retries=1).execute()
    status = {Path(r.input).name: (r.status, r.error) for r in summary.results}
    assert status.pop("im2.png") == ("failed", "a worker process died on this file (2 tries, alone in its batch); "
                                                "see the Ray logs")
    assert set(status.values()) == {("done", None)}  # im3, which shared its first batch, is redone
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"im{i}.png" for i in range(6) if i != 2]
