"""``ben erase`` with videos: a folder mixing images and clips, frame folders, reports, and the checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ben_cli.cli.app import main

av = pytest.importorskip("av")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clip(path: Path, n: int = 6, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[h // 4 : 3 * h // 4, w // 4 + i : w // 2 + i] = (240, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.fixture()
def erase(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("BEN_CACHE_DIR", str(tmp_path / "cache"))

    def run(*args: object) -> int:
        return main(["erase", *map(str, args), "--weights", str(tiny_checkpoint), "--resolution", "256",
                     "--device", "cpu", "-q"])

    return run


def test_a_folder_mixing_images_and_videos(tmp_path, erase):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    src.mkdir()
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(src / "still.png")
    _clip(src / "clip.mp4")
    assert erase(src, out, "--save", "cutout,alpha", "--report", report) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip.alpha.webm", "clip.webm", "still.alpha.png", "still.png"]
    assert _frames(out / "clip.webm") == 6
    files = {Path(f["input"]).name: f for f in json.loads(report.read_text())["files"]}
    assert files["clip.mp4"]["status"] == "done" and files["clip.mp4"]["frames"] == 6
    assert "frames" not in files["still.png"]
    assert erase(src, out, "--save", "cutout,alpha", "--report", report) == 0  # a second run skips both
    assert {f["status"] for f in json.loads(report.read_text())["files"]} == {"skipped"}


def test_frame_folders_and_mov(tmp_path, erase):
    clip = _clip(tmp_path / "c.mp4", n=4)
    assert erase(clip, tmp_path / "frames", "--frames") == 0
    assert sorted(p.name for p in (tmp_path / "frames" / "c").iterdir()) == [
        f"frame_{i:06d}.png" for i in range(1, 5)]
    assert erase(clip, tmp_path / "mov", "--format", "mov") == 0
    assert (tmp_path / "mov" / "c.mov").is_file()
    assert erase(clip, tmp_path / "one.webm") == 0  # a single video to a named file
    assert _frames(tmp_path / "one.webm") == 4


def test_video_checks(tmp_path, erase, capsys):
    clip = _clip(tmp_path / "c.mp4", n=2)
    assert erase(clip, "-") == 2
    assert "video" in capsys.readouterr().err
    assert erase(clip, tmp_path / "o", "--format", "mp4") == 2
    assert "--background" in capsys.readouterr().err
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    assert erase(tmp_path / "bad.mp4", tmp_path / "o2") == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "bad.mp4") in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists() or not any(p for p in (tmp_path / "o2").iterdir()
                                                      if not p.name.startswith("."))
