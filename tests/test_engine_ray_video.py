"""``ben erase --engine ray`` with videos: one clip per actor task, the local engine's outputs and report.

The module starts Ray once (2 CPUs, no GPU asked for) and stops it at the end. A folder mixing
images, two short clips and a broken one runs once on each engine (the tiny network at 256,
``--crop``; the Ray run's actors log their video tasks); the tests compare the two, then run Ray again over the
finished tree (everything skipped). About 30 s on the project's 2-core machines.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ben_cli.cli.app import main

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
av = pytest.importorskip("av")

import ben_cli.engines.ray as ray_engine  # noqa: E402 - only with Ray installed
from ben_cli.engines.ray_tasks import EraseActor  # noqa: E402
from ben_cli.video import read_video_source  # noqa: E402 - only with PyAV installed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RES = "256"
KINDS = ["cutout", "alpha"]
IMAGES = ["a.png", "sub/b.jpg"]
CLIPS = {"clip.mp4": 5, "sub/other.mp4": 3}  # name: frames
BROKEN = "sub/broken.mp4"


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    """A Ray runtime with 2 CPUs for this module."""
    address = os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    yield
    ray.shutdown()
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


# --------------------------------------------------------------------------- data and helpers


def _clip(path: Path, n: int, size: tuple[int, int] = (48, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.full((h, w, 3), 30, np.uint8)
            img[h // 4 : 3 * h // 4, w // 4 + 2 * i : w // 2 + 2 * i] = (240, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _make_inputs(root: Path) -> Path:
    for i, rel in enumerate(IMAGES):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((36 + 4 * i, 44, 3), np.uint8)
        pixels[8:28, 10:30] = (200, 60 + 40 * i, 30)
        Image.fromarray(pixels).save(root / rel)
    for rel, n in CLIPS.items():
        _clip(root / rel, n)
    (root / BROKEN).write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    return root


def _erase(*args: object, weights: Path) -> tuple[int, str]:
    """Exit code and stderr of ``ben erase`` (the tiny model at 256 on the CPU)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["erase", "--resolution", RES, "--device", "cpu", "--weights", str(weights), "--save",
                   ",".join(KINDS), "-q", *map(str, args)])
    return rc, err.getvalue()


def _names(root: Path) -> list[str]:
    """Every file and folder under ``root``, hidden ones (temp files) included."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _entries(report: Path, src: Path, out: Path) -> dict[str, tuple]:
    """{input relative to INPUT: (status, error, frames, crop, outputs relative to OUTPUT)} of a --report."""
    return {Path(f["input"]).relative_to(src).as_posix(): (
        f["status"], f["error"], f.get("frames"), f.get("crop"),
        sorted(Path(o).relative_to(out).as_posix() for o in f["outputs"]))
        for f in json.loads(report.read_text())["files"]}


def _decoded(path: Path) -> list[np.ndarray]:
    """The frames of a WebM output, RGBA (VP9 alpha lives in a side channel only libvpx decodes)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        ctx = av.codec.CodecContext.create("libvpx-vp9", "r")
        return [f.to_ndarray(format="rgba") for p in c.demux(stream) for f in ctx.decode(p)]


def _spy_actor(log: Path, together: int) -> type:
    """EraseActor that logs each video task (its index, process, start and end) in ``log``; the first
    ``together`` video tasks wait (at most 30 s) until all of them have started: run one after the
    other on one actor, they would not."""

    class SpyActor(EraseActor):
        def __call__(self, batch):
            videos = [int(i) for i, job in zip(batch["i"], batch["job"]) if pickle.loads(job).video]
            for i in videos:
                (log / f"{i}.start").write_text(f"{os.getpid()} {time.time()}")
            deadline = time.monotonic() + 30
            while videos and len(list(log.glob("*.start"))) < together and time.monotonic() < deadline:
                time.sleep(0.05)
            out = super().__call__(batch)
            for i in videos:
                (log / f"{i}.end").write_text(str(time.time()))
            return out

    return SpyActor


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint):
    """The same folder through both engines: {engine: (out, report, exit code, stderr)}, the inputs, and the
    video tasks of the Ray run: [(process, start, end)] in the order they started."""
    base = tmp_path_factory.mktemp("ray_video")
    src = _make_inputs(base / "in")
    log = base / "tasks"
    log.mkdir()
    done = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray_engine, "EraseActor", _spy_actor(log, together=2))
        for engine, extra in (("ray", ["--workers", "2", "--batch-size", "2"]), ("local", [])):
            out, report = base / engine, base / f"{engine}.json"
            rc, err = _erase(src, out, "--engine", engine, "--crop", "--margin", "2", "--report", report, *extra,
                             weights=tiny_checkpoint)
            done[engine] = out, report, rc, err
    tasks = []
    for start in log.glob("*.start"):
        pid, t0 = start.read_text().split()
        tasks.append((int(pid), float(t0), float(start.with_suffix(".end").read_text())))
    return src, done, sorted(tasks, key=lambda t: t[1])


# --------------------------------------------------------------------------- tests


def test_ray_writes_the_videos_and_images_the_local_engine_writes(runs):
    src, done, _ = runs
    (ray_out, ray_report, ray_rc, _), (local_out, local_report, local_rc, _) = done["ray"], done["local"]
    assert ray_rc == local_rc == 1  # the broken clip
    assert _names(ray_out) == _names(local_out) == [
        "a.alpha.png", "a.png", "clip.alpha.webm", "clip.webm", "sub",
        "sub/b.alpha.png", "sub/b.png", "sub/other.alpha.webm", "sub/other.webm"]
    ray_entries = _entries(ray_report, src, ray_out)
    assert ray_entries == _entries(local_report, src, local_out)
    for rel, n in CLIPS.items():
        assert ray_entries[rel][:3] == ("done", None, n)
    for rel in [*IMAGES, *CLIPS]:  # --crop: each image's box, and one for each clip
        assert "box" in ray_entries[rel][3], rel
    assert all(ray_entries[rel][2] is None for rel in IMAGES)  # no frames for images
    for rel in IMAGES:
        stem = rel.rsplit(".", 1)[0]
        for name in (f"{stem}.png", f"{stem}.alpha.png"):
            with Image.open(ray_out / name) as a, Image.open(local_out / name) as b:
                assert a.mode == b.mode and a.size == b.size and a.text["ben:source"] == b.text["ben:source"]
                diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
            assert diff.max() <= 1, name
    for rel, n in CLIPS.items():
        stem = rel.rsplit(".", 1)[0]
        for name in (f"{stem}.webm", f"{stem}.alpha.webm"):
            assert read_video_source(ray_out / name) == read_video_source(local_out / name) == Path(rel).name
            a, b = _decoded(ray_out / name), _decoded(local_out / name)
            assert len(a) == len(b) == n and a[0].shape == b[0].shape
            diff = np.abs(np.stack(a).astype(int) - np.stack(b).astype(int))
            assert diff.max() <= 1, name  # the same predictions, the same encoder: alike to a rounding


def test_each_video_is_one_task_and_the_clips_spread_over_the_actors(runs):
    _, _, tasks = runs
    assert len(tasks) == len(CLIPS) + 1  # the broken one too went to an actor
    (pid_a, _, end_a), (pid_b, start_b, _) = tasks[:2]
    assert pid_a != pid_b and start_b < end_a  # two actors at once, one video each
    assert len({pid for pid, _, _ in tasks}) == 2


def test_a_broken_video_fails_alone_in_one_line(runs):
    src, done, _ = runs
    out, report, rc, err = done["ray"]
    assert rc == 1
    status, error, frames, _crop, outputs = _entries(report, src, out)[BROKEN]
    assert status == "failed" and error and frames is None and outputs == []
    said = [line for line in err.splitlines() if "broken.mp4" in line]
    assert len(said) == 1 and said[0] == f"ben: {src / BROKEN}: {error}"
    assert not [p for p in out.rglob("*") if p.name.startswith(("broken", ".broken"))]  # nothing half-written
    assert {e[0] for rel, e in _entries(report, src, out).items() if rel != BROKEN} == {"done"}


def test_a_second_run_skips_everything_without_running_ray(runs, tmp_path, tiny_checkpoint, monkeypatch):
    src, done, _ = runs
    src2 = shutil.copytree(src, tmp_path / "in")
    (src2 / BROKEN).unlink()
    out2 = shutil.copytree(done["ray"][0], tmp_path / "out")
    before = {p: p.read_bytes() for p in out2.rglob("*") if p.is_file()}

    def no_dataset(*args, **kwargs):
        raise AssertionError("a Ray dataset was built although every output exists")

    monkeypatch.setattr(ray.data, "from_items", no_dataset)
    report = tmp_path / "r.json"
    rc, _ = _erase(src2, out2, "--engine", "ray", "--report", report, weights=tiny_checkpoint)
    assert rc == 0
    totals = json.loads(report.read_text())["totals"]
    assert (totals["done"], totals["skipped"], totals["failed"]) == (0, len(IMAGES) + len(CLIPS), 0)
    assert {p: p.read_bytes() for p in out2.rglob("*") if p.is_file()} == before
