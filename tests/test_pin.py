"""Pinning: every output kind records its source, one reader reads it back, and re-runs keep video names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ben_cli.io import VIDEO_SOURCE_TAG, encode_image, read_output_source
from ben_cli.plan import VideoPlan, plan_run

av = pytest.importorskip("av")

WEBM = {"cutout": ".webm", "alpha": ".alpha.webm", "trimap": ".trimap.webm", "overlay": ".overlay.webm"}
FRAMES = {"cutout": "", "alpha": ".alpha", "trimap": ".trimap", "overlay": ".overlay"}


def _clip(path: Path, n: int = 3, size: tuple[int, int] = (32, 24), source: str | None = None) -> Path:
    """A small H.264 clip (in a .webm container when ``path`` says so), tagged like a ``ben`` output
    when ``source`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    codec = "libvpx-vp9" if path.suffix == ".webm" else "libx264"
    with av.open(str(path), "w") as container:
        if source is not None:
            container.metadata[VIDEO_SOURCE_TAG] = source
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.full((h, w, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _cutout_names(plan) -> dict[str, str]:
    return {Path(job.label).name: Path(job.outputs["cutout"]).name for job in plan.jobs}


def test_one_reader_reads_every_output_kind(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(encode_image(np.zeros((4, 4, 4), np.uint8), source="a.jpg"))
    jpg = tmp_path / "b.jpg"
    jpg.write_bytes(encode_image(np.zeros((4, 4, 3), np.uint8), "jpg", source="b.heic"))
    video = _clip(tmp_path / "c.webm", source="c.mp4")
    frames = tmp_path / "d"
    frames.mkdir()
    (frames / "frame_000001.png").write_bytes(encode_image(np.zeros((4, 4), np.uint8), source="d.mov"))
    assert [read_output_source(p) for p in (png, jpg, video, frames)] == ["a.jpg", "b.heic", "c.mp4", "d.mov"]
    untagged = _clip(tmp_path / "e.webm")
    (tmp_path / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3 not really")
    assert read_output_source(untagged) is None and read_output_source(tmp_path / "broken.webm") is None
    assert read_output_source(tmp_path / "missing.webm") is None


def test_the_video_writer_is_read_back(tmp_path):
    """What ``ben_cli.video`` writes is what the io layer reads (and ``read_video_source`` is that reader)."""
    from ben_cli.options import VideoFormat
    from ben_cli.video import choose_codec, probe, read_video_source
    from ben_cli.video.encode import VideoSink

    clip = _clip(tmp_path / "talk.mp4")
    info = probe(clip)
    sink = VideoSink("alpha", tmp_path / "talk.alpha.webm", VideoFormat.webm, choose_codec(VideoFormat.webm, False),
                     info, source_name="talk.mp4")
    for pts in range(3):
        sink.write(pts, np.zeros((info.height, info.width), np.uint8))
    sink.finish()
    out = sink.commit()
    assert read_output_source(out) == "talk.mp4" == read_video_source(out)


@pytest.mark.parametrize("suffixes", [WEBM, FRAMES], ids=["webm", "frames"])
def test_a_rerun_keeps_video_names(tmp_path, suffixes):
    src, out = tmp_path / "in", tmp_path / "out"
    _clip(src / "clip.mp4")
    video = VideoPlan(suffixes)
    first = plan_run([src], out, ["cutout"], video=video)
    assert _cutout_names(first) == {"clip.mp4": "clip" + suffixes["cutout"]}
    _write_video_output(out / ("clip" + suffixes["cutout"]), "clip.mp4")
    _clip(src / "clip.mov")  # a newcomer with the same stem
    again = plan_run([src], out, ["cutout"], video=video)
    end = suffixes["cutout"]
    assert _cutout_names(again) == {"clip.mov": "clip.mov" + end, "clip.mp4": "clip" + end}
    assert len(again.notes) == 1 and "clip.mov" in again.notes[0]
    # a fresh output folder names both by the collision rule
    fresh = plan_run([src], tmp_path / "fresh", ["cutout"], video=video)
    assert _cutout_names(fresh) == {n: n + suffixes["cutout"] for n in ("clip.mov", "clip.mp4")}


def test_image_and_video_outputs_of_one_stem_keep_their_names(tmp_path):
    """An image's record never takes a name from a video (their outputs never share a file name)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(src / "a.jpg")
    _clip(src / "a.mp4")
    video = VideoPlan(WEBM)
    first = plan_run([src], out, ["cutout"], video=video)
    assert _cutout_names(first) == {"a.jpg": "a.png", "a.mp4": "a.webm"}
    out.mkdir()
    (out / "a.png").write_bytes(encode_image(np.zeros((8, 8, 4), np.uint8), source="a.jpg"))
    _write_video_output(out / "a.webm", "a.mp4")
    again = plan_run([src], out, ["cutout"], video=video)
    assert _cutout_names(again) == _cutout_names(first) and not again.notes


def _write_video_output(target: Path, source: str) -> None:
    """An output as ``ben erase`` leaves it: a tagged video file, or a frame folder of tagged PNGs."""
    if target.suffix:
        _clip(target, source=source)
        return
    target.mkdir(parents=True)
    (target / "frame_000001.png").write_bytes(encode_image(np.zeros((4, 4, 4), np.uint8), source=source))
