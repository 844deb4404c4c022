"""Reading videos: PyAV containers and (with ``--all-frames``) animated GIF/WebP through Pillow.

A source announces what it holds (:class:`VideoInfo`) before the first frame is
used, then streams :class:`DecodedFrame` items (upright uint8 RGB with their
timestamps) and, for containers, the packets of the audio stream that is kept,
in file order. Rotation metadata (the display matrix, or an old ``rotate`` tag) is
applied to the pixels, as EXIF orientation is for images: what the model sees and
what is written is the picture as players show it.

Every failure of a file (not a video, truncated, corrupt) is an
:class:`~ben_cli.errors.InputError` with one line. A file that ends early without
a decoder error (Matroska/WebM and AVI simply stop) is caught by comparing what
was read with the frame count and duration the container announces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageSequence

from ben_cli.errors import InputError, install_hint
from ben_cli.io.kinds import IMAGE_EXTS

EXTRA_HINT = f"video needs PyAV: {install_hint('video')}"
"""The one-line reason given when ``av`` is not installed."""

GIF_MIN_DELAY_MS = 20
"""Animation frames with a shorter delay (0 or 10 ms) last 100 ms, as browsers show them."""


def import_av(path: object = None) -> Any:
    """The ``av`` module; an InputError naming the extra when it is missing (UsageError without a path)."""
    try:
        import av
    except ImportError:
        if path is None:
            from ben_cli.errors import UsageError

            raise UsageError(EXTRA_HINT) from None
        raise InputError(path, EXTRA_HINT) from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What a source announces before its frames are read.

    ``width``/``height``: the picture as displayed (rotation applied). ``rate``: the
    average frame rate (frames per second). ``time_base``: the unit of frame timestamps
    (seconds). ``frames``: the count the file announces (or duration x rate), None when
    unknown. ``duration``: seconds of video, None when unknown. ``rotation``: degrees
    counterclockwise applied to the stored pictures (0, 90, 180 or 270). ``audio``: the
    codec of the audio stream that is kept, None without one.
    """

    path: str
    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    frames: int | None
    duration: float | None
    rotation: int = 0
    codec: str = ""
    audio: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "fps": round(float(self.rate), 3),
                "frames": self.frames, "duration": None if self.duration is None else round(self.duration, 3),
                "rotation": self.rotation, "codec": self.codec, "audio": self.audio}


@dataclass
class DecodedFrame:
    """One frame: ``index`` from 0, ``pts`` in the source's time base, ``rgb`` (H, W, 3) uint8 upright,
    ``alpha`` (H, W) uint8 for animations with transparency, else None."""

    index: int
    pts: int
    rgb: np.ndarray
    alpha: np.ndarray | None = None


def accurate_scaling() -> dict[str, Any]:
    """Keyword arguments for PyAV's ``reformat``/``to_ndarray`` that make swscale's colour conversion exact
    to about 1/255 (accurate rounding, full chroma; its default is biased by up to 2/255)."""
    try:
        from av.video.reformatter import Interpolation as sws

        return {"interpolation": sws.BILINEAR | sws.ACCURATE_RND | sws.FULL_CHR_H_INT | sws.FULL_CHR_H_INP}
    except (ImportError, AttributeError, TypeError):  # older PyAV: names only, no flags
        return {}


def upright(picture: np.ndarray, rotation: int) -> np.ndarray:
    """(H, W, ...) stored picture -> as displayed: rotated ``rotation`` degrees counterclockwise
    (a multiple of 90; FFmpeg's display-matrix convention), C-contiguous."""
    k = (round(rotation / 90) % 4) if rotation else 0
    return np.ascontiguousarray(np.rot90(picture, k)) if k else picture


def _decode_reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.split("] ", 1)[-1]  # "[Errno 1094995529] Invalid data found ..." -> "Invalid data found ..."
    return f"truncated or corrupt video ({text})"


class AVSource:
    """A video container read with PyAV: the first video stream, and the first audio stream's packets.

    Opening reads up to the first frame (so :attr:`info` holds the displayed size and
    rotation); iterate once for the frames and audio packets; :meth:`close` always.
    """

    def __init__(self, path: Path, *, label: str | None = None) -> None:
        av = import_av(path)
        self.path, self.label = Path(path), label or str(path)
        self._av = av
        try:
            self.container = av.open(str(path), "r")
        except FileNotFoundError:
            raise InputError(self.label, "file not found") from None
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise InputError(self.label, _decode_reason(e)) from None
        try:
            if not self.container.streams.video:
                raise InputError(self.label, "no video stream")
            self.video = self.container.streams.video[0]
            self.video.thread_type = "AUTO"
            self.audio_stream = self.container.streams.audio[0] if self.container.streams.audio else None
            self._items = self._demux()
            self._head: list[Any] = []
            first = None
            for item in self._items:
                self._head.append(item)
                if isinstance(item, DecodedFrame):
                    first = item
                    break
            if first is None:
                raise InputError(self.label, "no frames could be decoded")
            self.info = self._info(first)
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------- announcing

    def _rotation(self, frame: Any) -> int:
        rotation = getattr(frame, "rotation", None)  # the display matrix (PyAV >= 14)
        if not rotation:
            tag = self.video.metadata.get("rotate")  # older FFmpeg: clockwise degrees
            with contextlib.suppress(TypeError, ValueError):
                rotation = -int(float(tag)) if tag is not None else 0
        return (round((rotation or 0) / 90) % 4) * 90

    def _info(self, first: DecodedFrame) -> VideoInfo:
        v = self.video
        rate = v.average_rate or v.guessed_rate or v.base_rate or Fraction(25)
        duration = self._expected_end()
        start = float(v.start_time * v.time_base) if v.start_time is not None else 0.0
        seconds = None if duration is None else max(0.0, duration - start)
        frames = v.frames or (round(seconds * float(rate)) if seconds else None)
        h, w = first.rgb.shape[:2]
        return VideoInfo(self.label, w, h, Fraction(rate), Fraction(v.time_base), frames or None, seconds,
                         self._rotation_deg, v.codec_context.name,
                         self.audio_stream.codec_context.name if self.audio_stream is not None else None)

    def _expected_end(self) -> float | None:
        """Where the video (else the whole file) announces it ends, in seconds; None when unknown."""
        v = self.video
        if v.duration:
            start = v.start_time or 0
            return float((start + v.duration) * v.time_base)
        tag = next((value for key, value in v.metadata.items() if key.upper() == "DURATION"), None)
        if tag:  # Matroska: "00:00:02.400000000"
            with contextlib.suppress(ValueError):
                h, m, s = tag.split(":")
                return int(h) * 3600 + int(m) * 60 + float(s)
        c = self.container
        if c.duration and c.duration > 0:
            return (c.start_time or 0) / 1e6 + c.duration / 1e6
        return None

    # -------------------------------------------------------------- streaming

    def _demux(self) -> Iterator[Any]:
        av = self._av
        streams = [s for s in (self.video, self.audio_stream) if s is not None]
        index, last_pts, end = 0, None, 0.0
        self._rotation_deg = 0
        try:
            for packet in self.container.demux(*streams):
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
                if packet.stream.type == "audio":
                    if packet.size:
                        yield packet
                    continue
                for frame in packet.decode():
                    if index == 0:
                        self._rotation_deg = self._rotation(frame)
                    pts = frame.pts if frame.pts is not None else (last_pts + 1 if last_pts is not None else 0)
                    last_pts = pts
                    yield DecodedFrame(index, pts, upright(self._rgb(frame), self._rotation_deg))
                    index += 1
        except av.error.FFmpegError as e:
            raise InputError(self.label, _decode_reason(e)) from None
        self._check_complete(index, end)

    @staticmethod
    def _rgb(frame: Any) -> np.ndarray:
        full = {"src_color_range": 2} if getattr(frame, "color_range", 0) == 2 else {}  # AVCOL_RANGE_JPEG
        return frame.to_ndarray(format="rgb24", **full, **accurate_scaling())

    def _check_complete(self, count: int, end: float) -> None:
        """InputError when the file stopped well before the frame count or duration it announces."""
        if count == 0:
            raise InputError(self.label, "no frames could be decoded")
        announced = self.video.frames
        if announced and count + max(2, announced // 50) < announced:
            raise InputError(self.label, f"truncated video: {count} of {announced} frames could be read")
        expected = self._expected_end()
        rate = float(self.video.average_rate or 25)
        if expected is not None and end < expected - max(0.25, 3.0 / rate):
            raise InputError(self.label, f"truncated video: it ends at {end:.2f} s of {expected:.2f} s")

    def __iter__(self) -> Iterator[Any]:
        """DecodedFrame and audio ``av.Packet`` items in file order; InputError when the file is broken."""
        yield from self._head
        self._head = []
        yield from self._items

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()


class AnimationSource:
    """An animated GIF/WebP read with Pillow: every frame with its transparency; delays as timestamps (ms)."""

    audio_stream = None

    def __init__(self, path: Path, *, label: str | None = None) -> None:
        from ben_cli.io import read_image  # for the one-line reason of an unreadable file

        self.path, self.label = Path(path), label or str(path)
        try:
            self.image = Image.open(self.path)
            n = getattr(self.image, "n_frames", 1)
            delays = []
            for frame in ImageSequence.Iterator(self.image):
                d = frame.info.get("duration") or 0
                delays.append(int(d) if d >= GIF_MIN_DELAY_MS else 100)
            self.image.seek(0)
        except Exception:
            read_image(self.path, name=self.label)  # raises the image reader's InputError
            raise InputError(self.label, "truncated or corrupt animation") from None
        total = sum(delays)
        self.delays = delays
        w, h = self.image.size
        self.info = VideoInfo(self.label, w, h, Fraction(1000 * n, total), Fraction(1, 1000), n, total / 1000,
                              0, (self.image.format or "").lower())

    def __iter__(self) -> Iterator[DecodedFrame]:
        pts = 0
        try:
            for i in range(len(self.delays)):
                self.image.seek(i)
                rgba = np.asarray(self.image.convert("RGBA"))
                alpha = rgba[:, :, 3]
                yield DecodedFrame(i, pts, np.ascontiguousarray(rgba[:, :, :3]),
                                   np.ascontiguousarray(alpha) if (alpha < 255).any() else None)
                pts += self.delays[i]
        except (OSError, ValueError, EOFError) as e:
            raise InputError(self.label, f"truncated or corrupt animation ({e})") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.image.close()


def open_source(path: str | Path, *, label: str | None = None) -> AVSource | AnimationSource:
    """The source for ``path``: Pillow for animated images, PyAV for everything else."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_EXTS:
        return AnimationSource(path, label=label)
    return AVSource(path, label=label)


def probe(path: str | Path) -> VideoInfo:
    """What ``path`` announces (reads up to its first frame): for plans, progress totals and reports."""
    source = open_source(path)
    try:
        return source.info
    finally:
        source.close()
