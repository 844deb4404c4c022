"""Video in ``ben erase`` (ben_cli.video): clips made here with PyAV, the tiny model on the CPU.

The reference for every frame is the image path: the same decoded frame through
``Eraser.predict([frame])`` and ``render``. Lossless outputs (frame PNGs, ProRes
alpha) must match it within 1/255; VP9 is lossy, so its alpha gets a tolerance.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from ben_cli.errors import InputError, OptionError, UsageError  # noqa: E402
from ben_cli.io import LoadedImage  # noqa: E402
from ben_cli.options import OutputOptions, VideoFormat, VideoOptions  # noqa: E402
from ben_cli.output import render  # noqa: E402
from ben_cli.pipeline import Eraser, resize_for_model  # noqa: E402
from ben_cli.video import (  # noqa: E402
    FramePredictor,
    erase_video,
    is_animated,
    is_video,
    probe,
    read_video_source,
    smooth_probabilities,
    video_suffixes,
    window_bounds,
)
from ben_cli.video.decode import accurate_scaling  # noqa: E402

W, H, N, RATE = 64, 48, 10, 25


# --------------------------------------------------------------------------- clips


def _picture(i: int, w: int = W, h: int = H) -> np.ndarray:
    """A frame with structure the model reacts to: a gradient and a moving block, marker top-left."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)), np.full_like(x, 90)], -1).astype(np.uint8)
    img[h // 4 : h // 2, w // 4 + i : w // 2 + i] = (240, 40, 40)
    img[:4, :6] = (255, 255, 0)
    return img


def make_clip(path: Path, *, n: int = N, size: tuple[int, int] = (W, H), audio: str | None = None,
              rotation: int | None = None, codec: str = "libx264", faststart: bool = False) -> Path:
    fmt = {".mp4": "mp4", ".mov": "mov", ".webm": "webm", ".mkv": "matroska"}[path.suffix]
    container = av.open(str(path), "w", format=fmt, options={"movflags": "+faststart"} if faststart else {})
    w, h = size
    video = container.add_stream(codec, rate=RATE)
    video.width, video.height, video.pix_fmt = w, h, "yuv420p"
    if rotation is not None:
        video.set_display_rotation(rotation)
    sound = None
    if audio is not None:
        sound = container.add_stream(audio, rate=48000)
        sound.layout = "stereo"
    for i in range(n):
        for packet in video.encode(av.VideoFrame.from_ndarray(_picture(i, w, h), format="rgb24")):
            container.mux(packet)
    if sound is not None:
        total, done = 48000 * n // RATE, 0
        while done < total:
            k = min(960, total - done)
            tone = (0.2 * np.sin(np.arange(done, done + k) / 8.0)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, done
            for packet in sound.encode(frame):
                container.mux(packet)
            done += k
        for packet in sound.encode():
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    container.close()
    return path


def decoded_rgb(path: Path) -> list[np.ndarray]:
    """The frames of a clip as stored (no rotation), uint8 RGB: what the image path is given."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24", **accurate_scaling()) for f in c.decode(video=0)]


def read_video(path: Path, *, alpha: bool = False) -> tuple[list[np.ndarray], list[float], dict]:
    """Frames (RGBA with ``alpha``, else RGB), their times, and facts: rate, codec, audio codecs.

    VP9 alpha lives in a side channel that only the libvpx decoder reads.
    """
    c = av.open(str(path))
    v = c.streams.video[0]
    fmt = "rgba" if alpha else "rgb24"
    facts = {"rate": v.average_rate, "codec": v.codec_context.name, "pix_fmt": v.codec_context.pix_fmt,
             "audio": [s.codec_context.name for s in c.streams.audio]}
    frames, times = [], []
    if alpha and v.codec_context.name == "vp9":
        ctx = av.codec.CodecContext.create("libvpx-vp9", "r")
        decoded = (f for p in c.demux(v) for f in ctx.decode(p))
    else:
        decoded = c.decode(v)
    for f in decoded:
        frames.append(f.to_ndarray(format=fmt, **accurate_scaling()))
        times.append(float(f.pts * v.time_base) if f.pts is not None else float("nan"))
    c.close()
    return frames, times, facts


def image_path_alpha(eraser: Eraser, rgb: np.ndarray) -> np.ndarray:
    pred = eraser.predict([rgb])[0]
    return render("alpha", LoadedImage(path="x", rgb=rgb, alpha=None, mode="RGB"), pred, OutputOptions())


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def eraser(tiny_model, one_torch_thread) -> Eraser:
    return Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.float32, resolution=256, batch_size=4)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {
        "aac": make_clip(root / "talk.mp4", audio="aac"),
        "plain": make_clip(root / "plain.mkv", codec="ffv1"),
    }


@pytest.fixture(scope="module")
def reference(eraser, clips) -> list[np.ndarray]:
    """The image path's alpha for each frame of the aac clip."""
    return [image_path_alpha(eraser, rgb) for rgb in decoded_rgb(clips["aac"])]


# --------------------------------------------------------------------------- names and options


def test_is_video_and_animations(tmp_path):
    assert is_video("a/B.MP4") and is_video("x.webm") and is_video("x.mkv") and is_video("x.avi")
    assert not is_video("x.jpg") and not is_video("x.gif")
    gif = tmp_path / "anim.gif"
    frames = [_picture(i).copy() for i in range(3)]
    from PIL import Image

    Image.fromarray(frames[0]).save(gif, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]],
                                    duration=[40, 80, 120], loop=0)
    still = tmp_path / "still.gif"
    Image.fromarray(frames[0]).save(still)
    assert is_animated(gif) and not is_animated(still)
    assert is_video(gif, all_frames=True) and not is_video(gif) and not is_video(still, all_frames=True)


def test_video_suffixes():
    assert video_suffixes() == {"cutout": ".webm", "alpha": ".alpha.webm", "trimap": ".trimap.webm",
                                "overlay": ".overlay.webm"}
    assert video_suffixes(VideoOptions(format="mov"))["cutout"] == ".mov"
    flat = OutputOptions(background="white")
    assert video_suffixes(VideoOptions(), flat)["cutout"] == ".mp4"
    assert video_suffixes(VideoOptions(format="mov"), flat)["alpha"] == ".alpha.mov"
    assert video_suffixes(VideoOptions(frames=True))["cutout"] == ""
    with pytest.raises(OptionError, match="no alpha"):
        video_suffixes(VideoOptions(format="mp4"))


@pytest.mark.parametrize("changes", [{"smooth": -1}, {"smooth": 99}, {"smooth": True}, {"crf": 64}, {"format": "avi"}])
def test_video_options_are_validated(changes):
    with pytest.raises(OptionError):
        VideoOptions(**changes)


def test_window_bounds_are_centered_and_cut_at_the_ends():
    assert window_bounds(5, 9, 3) == (4, 6)
    assert window_bounds(5, 9, 5) == (3, 7)
    assert window_bounds(5, 9, 4) == (4, 7)  # even: one more frame after
    assert window_bounds(0, 9, 5) == (0, 2) and window_bounds(9, 9, 5) == (7, 9)


# --------------------------------------------------------------------------- outputs


def test_webm_cutout_keeps_count_rate_size_times_and_alpha(eraser, clips, reference, tmp_path):
    out = tmp_path / "talk.webm"
    seen: list[tuple[int, int | None]] = []
    result = erase_video(clips["aac"], {"cutout": out}, eraser, video=VideoOptions(crf=12),
                         on_frames=lambda d, t: seen.append((d, t)))
    assert result.frames == N and result.outputs == {"cutout": str(out)}
    assert seen[-1] == (N, N) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    frames, times, c = read_video(out, alpha=True)
    _, in_times, _ = read_video(clips["aac"])
    assert len(frames) == N and frames[0].shape == (H, W, 4)
    assert c["rate"] == RATE
    np.testing.assert_allclose(np.array(times) - times[0], np.array(in_times) - in_times[0], atol=1e-3)
    for got, want in zip(frames, reference):
        err = np.abs(got[..., 3].astype(int) - want.astype(int))
        # VP9 is lossy (the tiny model's matte is noise, its hardest case): measured max 11, mean 1.7;
        # comparing with the next frame's alpha instead gives max > 20
        assert err.max() <= 16 and err.mean() < 2.2
    # the audio: WebM cannot hold AAC, so it is re-encoded to Opus, as long as the input's
    assert c["audio"] == ["opus"]
    assert "re-encoded to opus" in result.audio
    assert read_video_source(out) == "talk.mp4"
    assert no_temp_files(tmp_path)


def test_mov_alpha_is_the_image_paths_and_audio_is_copied(eraser, clips, reference, tmp_path):
    out, matte = tmp_path / "talk.mov", tmp_path / "talk.alpha.mov"
    result = erase_video(clips["aac"], {"cutout": out, "alpha": matte}, eraser, video=VideoOptions(format="mov"))
    assert result.audio == "aac copied"
    frames, _, c = read_video(out, alpha=True)
    assert c["codec"] == "prores" and len(frames) == N
    for got, want in zip(frames, reference):  # ProRes 4444 alpha is lossless
        assert np.abs(got[..., 3].astype(int) - want.astype(int)).max() <= 1
    mattes, _, _ = read_video(matte)
    for got, want in zip(mattes, reference):  # ProRes 422 HQ: near-lossless 10-bit luma
        err = np.abs(got[..., 0].astype(int) - want.astype(int))
        assert err.max() <= 2 and err.mean() < 0.5
    with av.open(str(clips["aac"])) as src, av.open(str(out)) as dst:
        a_in = [bytes(p) for p in src.demux(audio=0) if p.size]
        a_out = [bytes(p) for p in dst.demux(audio=0) if p.size]
    assert a_out == a_in  # packets copied, not re-encoded
    assert [s.type for s in av.open(str(matte)).streams] == ["video"]  # mattes carry no audio


def test_frame_folders_match_the_image_path(eraser, clips, reference, tmp_path):
    from PIL import Image

    rgb = decoded_rgb(clips["aac"])
    output = OutputOptions(decontaminate=False)
    cut, alpha = tmp_path / "talk", tmp_path / "talk.alpha"
    result = erase_video(clips["aac"], {"cutout": cut, "alpha": alpha}, eraser, output=output,
                         video=VideoOptions(frames=True))
    names = sorted(p.name for p in cut.iterdir())
    assert names == [f"frame_{i:06d}.png" for i in range(1, N + 1)] == sorted(p.name for p in alpha.iterdir())
    for i, name in enumerate(names):
        want = reference[i]
        assert np.abs(np.asarray(Image.open(alpha / name)).astype(int) - want).max() <= 1
        rgba = np.asarray(Image.open(cut / name))
        image = LoadedImage(path="x", rgb=rgb[i], alpha=None, mode="RGB")
        expected = render("cutout", image, eraser.predict([rgb[i]])[0], output)
        assert np.abs(rgba.astype(int) - expected.astype(int)).max() <= 1
    assert "frame folders" in result.audio
    assert read_video_source(cut) == "talk.mp4"
    assert no_temp_files(tmp_path)


def test_an_accelerator_decontaminates_each_batch_of_frames_at_once(eraser, clips, tmp_path, monkeypatch):
    """With a finishing device (the CPU standing in for a GPU), each batch of frames is decontaminated in one
    call on the model's thread, none in the render pool, and the frames equal those of the CPU path."""
    from PIL import Image

    import ben_cli.output as output_module
    import ben_cli.video.process as process

    plain = tmp_path / "plain"
    erase_video(clips["aac"], {"cutout": plain}, eraser, output=OutputOptions(), video=VideoOptions(frames=True))
    calls = []
    many = output_module.decontaminate_many
    monkeypatch.setattr(output_module, "decontaminate_many", lambda r, a, **k: calls.append(len(r)) or many(r, a, **k))
    monkeypatch.setattr(output_module, "decontaminate_on", lambda *a, **k: pytest.fail("decontaminated per frame"))
    monkeypatch.setattr(process, "finishing_device", lambda device: device)
    batched = tmp_path / "batched"
    erase_video(clips["aac"], {"cutout": batched}, eraser, output=OutputOptions(), video=VideoOptions(frames=True),
                batch_size=4)
    assert sum(calls) == N and max(calls) > 1
    names = sorted(p.name for p in plain.iterdir())
    assert names == sorted(p.name for p in batched.iterdir())
    for name in names:
        assert np.array_equal(np.asarray(Image.open(plain / name)), np.asarray(Image.open(batched / name)))


def test_background_gives_h264_with_audio(eraser, clips, tmp_path):
    out = tmp_path / "talk.mp4"
    result = erase_video(clips["aac"], {"cutout": out}, eraser, output=OutputOptions(background="#00ff00"))
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
    frames, _, _ = read_video(out)
    assert len(frames) == N and result.audio == "aac copied"
    # where the matte is 0 the picture is the green background
    ref = image_path_alpha(
        Eraser(eraser.model, device=eraser.device, dtype=eraser.dtype, resolution=256), decoded_rgb(clips["aac"])[0])
    clear = ref == 0
    if clear.any():
        assert np.abs(frames[0][clear].astype(int) - (0, 255, 0)).mean() < 12


def test_rotation_is_applied_to_the_pixels(eraser, tmp_path):
    clip = make_clip(tmp_path / "phone.mp4", n=4, rotation=90)
    info = probe(clip)
    assert (info.width, info.height, info.rotation) == (H, W, 90)
    out = tmp_path / "phone"
    erase_video(clip, {"alpha": out}, eraser, video=VideoOptions(frames=True))
    from PIL import Image

    stored = decoded_rgb(clip)
    for i, rgb in enumerate(stored):
        shown = np.ascontiguousarray(np.rot90(rgb, 1))  # 90 degrees counterclockwise, as players show it
        got = np.asarray(Image.open(out / f"frame_{i + 1:06d}.png"))
        assert got.shape == (W, H)
        assert np.abs(got.astype(int) - image_path_alpha(eraser, shown)).max() <= 1


def test_smoothing_streams_the_same_as_the_whole_clip(eraser, clips):
    rgb = decoded_rgb(clips["plain"])
    side = eraser.resolution
    resized = [resize_for_model(f, side) for f in rgb]
    with torch.inference_mode():
        probs = [torch.sigmoid(eraser.base(eraser.preprocess([r]))) for r in resized]
    from ben_cli.compose import alpha_to_uint8, resize_alpha

    # refiner none: the alpha is the (smoothed) probability resized to the frame
    want = [alpha_to_uint8(resize_alpha(p, (H, W)))[0, 0].numpy().astype(int) for p in smooth_probabilities(probs, 3)]
    predictor = FramePredictor(eraser, smooth=3)
    got = []
    for start in range(0, len(rgb), 3):  # batches of 3 against a window of 3 and a model batch of 4
        got += predictor.push(list(range(start, min(start + 3, len(rgb)))), rgb[start : start + 3],
                              resized[start : start + 3])
    got += predictor.flush()
    assert [i for i, _ in got] == list(range(len(rgb)))
    for (_, pred), w in zip(got, want):
        assert np.abs(pred.alpha.astype(int) - w).max() <= 1
    plain = [eraser.predict([f])[0].alpha for f in rgb]
    assert any(np.abs(p.alpha.astype(int) - q).max() > 1 for (_, p), q in zip(got, plain))  # it does change alpha
    one = FramePredictor(eraser, smooth=1).push(list(range(len(rgb))), rgb, resized)
    for (_, p), q in zip(one, plain):
        assert np.abs(p.alpha.astype(int) - q).max() <= 1


def test_animated_gif_with_all_frames(eraser, tmp_path):
    from PIL import Image

    gif = tmp_path / "wave.gif"
    frames = [Image.fromarray(_picture(i, 33, 25)) for i in range(4)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=[40, 80, 40, 120], loop=0)
    out = tmp_path / "wave.mp4"
    result = erase_video(gif, {"cutout": out}, eraser, output=OutputOptions(background="white"))
    assert result.frames == 4 and any("padded to 34x26" in n for n in result.notes)
    got, times, _ = read_video(out)
    assert len(got) == 4 and got[0].shape == (26, 34, 3)
    np.testing.assert_allclose(times, [0.0, 0.04, 0.12, 0.16], atol=1e-3)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("name", ["cut.webm", "cut.mp4"])
def test_truncated_video_fails_with_one_line_and_no_output(eraser, tmp_path, name):
    full = make_clip(tmp_path / f"full{Path(name).suffix}", n=40, codec="libvpx-vp9" if name.endswith("webm")
                     else "libx264", faststart=True)
    data = full.read_bytes()
    broken = tmp_path / name
    broken.write_bytes(data[: int(len(data) * 0.6)])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(InputError) as e:
        erase_video(broken, {"cutout": out_dir / "cut.webm", "alpha": out_dir / "cut.alpha.webm"}, eraser)
    assert e.value.path == str(broken) and "truncated" in e.value.reason and "\n" not in str(e.value)
    assert list(out_dir.iterdir()) == []


def test_not_a_video_is_an_input_error(eraser, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_bytes(b"not a video at all" * 50)
    with pytest.raises(InputError, match="corrupt"):
        erase_video(bad, {"cutout": tmp_path / "notes.webm"}, eraser)
    assert no_temp_files(tmp_path)


def test_interrupt_leaves_no_output(eraser, clips, tmp_path):
    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        erase_video(clips["aac"], {"cutout": tmp_path / "a.webm", "alpha": tmp_path / "a.alpha.webm"}, eraser,
                    on_frames=interrupt)
    with pytest.raises(KeyboardInterrupt):
        erase_video(clips["aac"], {"cutout": tmp_path / "a"}, eraser, video=VideoOptions(frames=True),
                    on_frames=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_missing_pyav_names_the_extra(monkeypatch, tmp_path, eraser):
    import sys

    from ben_cli.video import check_video_support

    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    with pytest.raises(UsageError, match=r'pip install "ben_cli\[video\]"'):
        check_video_support()
    with pytest.raises(InputError, match=r'pip install "ben_cli\[video\]"'):
        erase_video(tmp_path / "x.mp4", {"cutout": tmp_path / "x.webm"}, eraser)


def test_unknown_kind_and_mp4_without_background_are_refused(eraser, clips, tmp_path):
    with pytest.raises(ValueError, match="unknown output kinds"):
        erase_video(clips["plain"], {"depth": tmp_path / "x.webm"}, eraser)
    with pytest.raises(OptionError):
        erase_video(clips["plain"], {"cutout": tmp_path / "x.mp4"}, eraser, video=VideoOptions(format=VideoFormat.mp4))
    assert not os.listdir(tmp_path)


def test_an_ntsc_frame_rate_is_kept(eraser, tmp_path):
    path = tmp_path / "ntsc.mov"
    c = av.open(str(path), "w", format="mov")
    s = c.add_stream("mpeg4", rate=Fraction(30000, 1001))
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    for i in range(5):
        for p in s.encode(av.VideoFrame.from_ndarray(_picture(i), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    out = tmp_path / "ntsc.cut.mov"
    result = erase_video(path, {"cutout": out}, eraser, video=VideoOptions(format="mov"))
    assert result.info.rate == Fraction(30000, 1001)
    _, times, facts = read_video(out)
    assert facts["rate"] == Fraction(30000, 1001)
    np.testing.assert_allclose(np.diff(times), 1001 / 30000, atol=1e-4)


def test_planning_helpers_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, ben_cli.video as v; v.video_suffixes(); v.is_video('a.mp4'); "
            "assert 'torch' not in sys.modules and 'av' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
