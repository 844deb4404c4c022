"""``ben erase IN OUT --watch``: the settle rule, the ignore rules, the planning of arrivals, and the
watch end to end in a subprocess (halves, a burst, a broken file, a new subfolder, a replaced file,
SIGTERM and Ctrl-C), each bounded in time and never leaving a process behind."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ben_cli.cli.app import main
from ben_cli.engines.watch import Stop, Tally
from ben_cli.io import IMAGE_EXTS, Arrivals, Rules, Settling, complete
from ben_cli.plan import plan_run

REPO = Path(__file__).resolve().parents[1]


def _png(seed: int = 0, h: int = 48, w: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the settle rule (a fake clock)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_file_is_ready_once_unchanged_for_settle_seconds_and_decoding(tmp_path):
    clock = Clock()
    settling = Settling(1.0, clock=clock)
    path = tmp_path / "a.png"
    data = _png()
    path.write_bytes(data[: len(data) // 2])
    settling.add([path])
    clock.now += 1.5
    assert settling.ready() == []  # stable, but half a PNG: not complete
    with open(path, "ab") as f:
        f.write(data[len(data) // 2:])
    clock.now += 0.5
    assert settling.ready() == []  # changed: the clock starts again
    clock.now += 0.6
    assert settling.ready() == []  # 0.6 s unchanged
    clock.now += 0.5
    assert settling.ready() == [path]
    settling.add([path])  # an event for the same version: nothing new
    clock.now += 5
    assert settling.ready() == [] and settling.pending == 0


def test_a_file_that_never_decodes_is_handed_out_once_after_the_grace(tmp_path):
    clock = Clock()
    settling = Settling(0.5, clock=clock)
    path = tmp_path / "bad.png"
    path.write_bytes(b"not an image")
    settling.add([path])
    clock.now += 1.0
    assert settling.ready() == []
    clock.now += 1.1  # unchanged for 2.1 s > max(3 x settle, 2 s): the run names it as unreadable
    assert settling.ready() == [path]
    settling.add([path])
    clock.now += 3
    assert settling.ready() == []
    path.write_bytes(_png())  # a new version comes again
    settling.add([path])
    clock.now += 0.6
    assert settling.ready() == [path]


def test_what_the_first_run_did_comes_again_only_changed(tmp_path):
    clock = Clock()
    settling = Settling(0.2, clock=clock)
    path = tmp_path / "a.png"
    path.write_bytes(_png())
    st = path.stat()
    settling.handled(path, (st.st_size, st.st_mtime_ns))
    settling.add([path])
    assert settling.pending == 0
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # replaced by a newer version
    settling.add([path])
    clock.now += 0.3
    assert settling.ready() == [path]


def test_a_video_is_complete_without_decoding(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 10)
    (tmp_path / "a.png").write_bytes(b"\0" * 10)
    assert complete(tmp_path / "clip.mp4")
    assert not complete(tmp_path / "a.png")


def test_the_ignore_rules(tmp_path):
    root, out = tmp_path / "in", tmp_path / "in" / "cutouts"
    rules = Rules(root, out, IMAGE_EXTS)
    assert rules.file(root / "a.jpg") == root / "a.jpg"
    assert rules.file(root / "new" / "deep" / "b.PNG") == root / "new" / "deep" / "b.PNG"
    for ignored in (".a.jpg.ben-0123abcd.tmp", ".hidden.jpg", ".git/x.png", "a.jpg.part", "a.jpg.crdownload",
                    "a.jpg~", "a.tmp", "notes.txt", "cutouts/a.png", "cutouts/sub/b.png"):
        assert rules.file(root / ignored) is None, ignored
    assert rules.file(tmp_path / "elsewhere.png") is None
    assert rules.folder(root / "cutouts") is None and rules.folder(root / ".cache") is None
    assert rules.file(Path(os.path.realpath(root)) / "c.jpg") == root / "c.jpg"  # an event naming it resolved


@pytest.mark.parametrize("poll", [False, True], ids=["events", "polling"])
def test_arrivals_name_new_files_and_the_files_of_a_folder_moved_in(tmp_path, poll):
    src, outside = tmp_path / "in", tmp_path / "outside" / "album"
    src.mkdir()
    outside.mkdir(parents=True)
    (outside / "p.png").write_bytes(_png())
    want = {src / "a.png", src / "album" / "p.png"}
    seen: set[Path] = set()
    with Arrivals(Rules(src, src / "out", IMAGE_EXTS), poll=poll, poll_interval=0.1) as found:
        (src / "a.png").write_bytes(_png())
        (src / ".a.png.ben-0123abcd.tmp").write_bytes(_png())
        (src / "b.png.part").write_bytes(_png())
        (src / "out").mkdir()
        (src / "out" / "a.png").write_bytes(_png())
        os.replace(outside, src / "album")
        deadline = time.monotonic() + 10
        while not want <= seen and time.monotonic() < deadline:
            found.wait(0.2)
            seen.update(found.take())
        time.sleep(0.3)
        seen.update(found.take())
    assert seen == want


def test_arrivals_are_named_as_a_run_over_the_folder_names_them(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for rel in ("a.jpg", "a.png", "b.png", "sub/a.jpg", "other/c.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(_png())
    whole = {job.label: job.outputs for job in plan_run([src], out, ("cutout", "alpha")).jobs}
    only = [src / "a.png", src / "sub" / "a.jpg"]
    part = plan_run([src], out, ("cutout", "alpha"), only=only).jobs
    assert [job.label for job in part] == [str(p) for p in only]
    for job in part:
        assert job.outputs == whole[job.label]
    assert whole[str(src / "a.png")]["cutout"] == out / "a.png.png"  # the clash rule among the folder's files


def test_the_first_run_leaves_files_still_being_written_to_the_watch(tmp_path):
    from ben_cli.cli.watching import settled_now

    src = tmp_path / "in"
    src.mkdir()
    for name in ("old.png", "copying.png"):
        (src / name).write_bytes(_png())
    os.utime(src / "old.png", (time.time() - 60, time.time() - 60))
    plan = plan_run([src], tmp_path / "out", ("cutout",))
    assert [Path(job.label).name for job in settled_now(plan, 5.0).jobs] == ["old.png"]
    assert len(settled_now(plan, 0.0).jobs) == 2


def test_stop_waits_for_the_batch_in_flight():
    stop = Stop()
    with pytest.raises(KeyboardInterrupt):
        stop.request("SIGTERM")  # between batches: at once
    stop.busy = True
    stop.request("SIGTERM")
    assert stop.requested == "SIGTERM"
    with pytest.raises(KeyboardInterrupt) as e:
        stop.request("SIGINT")  # a second signal during the batch: now
    assert e.value.signal_name == "SIGINT"
    stop.closing = True
    stop.request("SIGTERM")


def test_the_tally_keeps_the_latest_result_of_each_input():
    from ben_cli.engines.results import FileResult, RunSummary

    tally = Tally({"version": "x"})
    tally.add(RunSummary([FileResult("a", "done"), FileResult("b", "failed", error="bad")], 2, 1.0))
    tally.add(RunSummary([FileResult("b", "done", redone="source changed")], 1, 1.0))
    summary = tally.summary("SIGTERM")
    assert [(r.input, r.status) for r in summary.results] == [("a", "done"), ("b", "done")]
    assert summary.total == 2 and summary.redone == 1 and summary.interrupted == "SIGTERM"
    assert summary.seconds == 2.0  # the time spent in runs, not the waits between them


# --------------------------------------------------------------------------- usage errors (in process)


@pytest.mark.parametrize(("args", "says"), [
    (["IN", "IN2", "OUT", "--watch"], "one INPUT folder"),
    (["IN/a.png", "OUT", "--watch"], "not the file"),
    (["-", "OUT", "--watch"], "standard input"),
    (["IN", "-", "--watch"], "standard input"),
    (["IN", "OUT", "--watch", "--engine", "ray"], "local engine"),
    (["IN", "OUT", "--settle", "2"], "need --watch"),
    (["IN", "OUT", "--poll"], "need --watch"),
    (["s3://bucket/in", "OUT", "--watch"], "not a URL"),
], ids=["two-inputs", "a-file", "stdin", "stdout", "ray", "settle-alone", "poll-alone", "url"])
def test_what_watch_refuses(tmp_path, capsys, args, says):
    (tmp_path / "IN").mkdir()
    (tmp_path / "IN2").mkdir()
    (tmp_path / "IN" / "a.png").write_bytes(_png())
    argv = [str(tmp_path / a) if a in ("IN", "IN2", "OUT", "IN/a.png") else a for a in args]
    assert main(["erase", *argv, "--model", "tiny", "--device", "cpu"]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "OUT").exists()


# --------------------------------------------------------------------------- the watch in a subprocess


class Watch:
    """``ben erase IN OUT --watch`` in a subprocess, its stderr read line by line on a thread."""

    def __init__(self, tmp_path: Path, checkpoint: Path, *extra: str, settle: str = "0.3") -> None:
        self.src, self.out, self.report = tmp_path / "in", tmp_path / "out", tmp_path / "run.json"
        self.src.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "BEN_DEBUG"}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ben_cli", "erase", str(self.src), str(self.out), "--watch", "--settle", settle,
             "--report", str(self.report), "--model", "tiny", "--weights", str(checkpoint), "--device", "cpu",
             "--resolution", "256", "--refiner", "none", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def err(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, predicate, what: str, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"ben exited {self.proc.returncode}:\n{self.err}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.err}"
            time.sleep(0.05)

    def wait_line(self, text: str, count: int = 1) -> None:
        self.wait_for(lambda: sum(text in line for line in self.lines) >= count, repr(text))

    def mentions(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> dict:
        """Send ``sig``; check the exit code, that the summary was printed and return the report."""
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        assert self.proc.returncode == (143 if sig == signal.SIGTERM else 130), self.err
        assert "Traceback" not in self.err
        assert any(line.startswith("ben: watch stopped") for line in self.lines), self.err
        assert "ben erase --watch" in self.err  # the summary table's title
        assert self.proc.stdout.read() == b""
        return json.loads(self.report.read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def watcher(tmp_path, tiny_checkpoint):
    started: list[Watch] = []

    def start(*extra: str, settle: str = "0.3") -> Watch:
        w = Watch(tmp_path, tiny_checkpoint, *extra, settle=settle)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()
        assert w.proc.poll() is not None  # no process left behind


def test_a_file_written_in_two_halves_is_processed_once_after_the_second(watcher):
    w = watcher()
    w.wait_line("watching")
    data = _png(1)
    target = w.src / "slow.png"
    with open(target, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(1.0)
        f.write(data[len(data) // 2:])
    w.wait_line(f"{target} -> ")
    time.sleep(1.0)  # nothing more comes for it
    report = w.stop()
    assert w.mentions(str(target)) == 1
    with Image.open(w.out / "slow.png") as im:
        im.load()
        assert im.size == (64, 48) and im.mode == "RGBA"
    assert [(f["input"], f["status"]) for f in report["files"]] == [(str(target), "done")]


def test_fifty_files_dropped_at_once_are_all_processed_in_batches(watcher, tmp_path):
    w = watcher("--batch-size", "8")
    w.wait_line("watching")
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(50):
        (staging / f"im{i:02d}.png").write_bytes(_png(i, 32, 40))
    for i in range(50):
        os.replace(staging / f"im{i:02d}.png", w.src / f"im{i:02d}.png")
    w.wait_for(lambda: sum(" -> " in line for line in w.lines) >= 50, "50 files done", timeout=50)
    report = w.stop()
    assert sorted(p.name for p in w.out.iterdir()) == [f"im{i:02d}.png" for i in range(50)]
    assert report["totals"]["done"] == 50 and report["totals"]["failed"] == 0
    for i in range(50):
        assert w.mentions(f"im{i:02d}.png") == 1


def test_a_broken_file_is_named_once_and_the_watch_goes_on(watcher):
    w = watcher("--poll")  # by polling, as on a network mount
    w.wait_line("watching")
    (w.src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    w.wait_line("broken.png: ")
    (w.src / "good.png").write_bytes(_png(2))
    w.wait_line("good.png -> ")
    report = w.stop()
    assert w.mentions("broken.png") == 1
    status = {Path(f["input"]).name: f["status"] for f in report["files"]}
    assert status == {"broken.png": "failed", "good.png": "done"}
    assert report["run"]["interrupted"] == "SIGTERM"


def test_first_the_run_over_what_is_there_then_new_folders_and_replaced_files(watcher, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "old.png").write_bytes(_png(3))
    Image.open(io.BytesIO(_png(8))).save(tmp_path / "in" / "pair.jpg")
    w = watcher()
    w.wait_line("old.png -> ")
    w.wait_line("watching")
    (w.src / "pair.png").write_bytes(_png(9))  # named as a cron run names it: pair.jpg keeps pair.png
    w.wait_line("pair.png -> ")
    assert f"{w.src / 'pair.png'} -> {w.out / 'pair.png.png'}" in w.err
    assert "name clash" in w.err
    (w.src / "new" / "deeper").mkdir(parents=True)
    (w.src / "new" / "deeper" / "x.png").write_bytes(_png(4))
    (w.src / ".hidden.png").write_bytes(_png(5))
    (w.src / "partial.png.part").write_bytes(_png(6))
    w.wait_line("x.png -> ")
    before = (w.out / "old.png").read_bytes()
    time.sleep(0.05)
    (w.src / "old.png").write_bytes(_png(7, 40, 40))  # replaced by a newer version
    w.wait_line("old.png -> ", 2)
    report = w.stop(signal.SIGINT)
    assert (w.out / "new" / "deeper" / "x.png").is_file()
    assert (w.out / "old.png").read_bytes() != before
    assert "(source changed)" in w.err
    assert sorted(p.relative_to(w.out).as_posix() for p in w.out.rglob("*") if p.is_file()) == [
        "new/deeper/x.png", "old.png", "pair.png", "pair.png.png"]
    assert report["run"]["interrupted"] == "SIGINT" and report["run"]["redone"] == 1


def test_sigterm_stops_after_the_batch_in_flight(watcher, tmp_path):
    w = watcher("--batch-size", "3")
    w.wait_line("watching")
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(6):
        (staging / f"b{i}.png").write_bytes(_png(10 + i, 32, 40))
    for i in range(6):
        os.replace(staging / f"b{i}.png", w.src / f"b{i}.png")
    w.wait_line(" -> ")
    report = w.stop()
    done = [f["input"] for f in report["files"] if f["status"] == "done"]
    assert len(done) in (3, 6), w.err  # whole batches only
    written = sorted(p.name for p in w.out.iterdir())
    assert written == sorted(Path(name).name for name in done)  # no temporary file left
    for name in written:
        with Image.open(w.out / name) as im:
            im.load()
