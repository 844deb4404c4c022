"""Writing videos and frame folders, atomically.

Each output (one ``--save`` kind) is a *sink*: a video file encoded with PyAV, or a
folder of one image per frame. A sink writes into a hidden temporary file or
folder beside its target (``.<name>.ben-<8 hex>.tmp``, the pattern of
:mod:`ben_cli.io`), :meth:`~VideoSink.commit` renames it into place, and
:meth:`~VideoSink.abort` removes it: a failed or interrupted video leaves no
finished output.

Codecs (all in PyAV's wheels; ``python -m av --codecs`` lists them):

==========  ==================================  ====================================
format      with alpha (cutout)                 without (matte, trimap, flattened)
==========  ==================================  ====================================
``webm``    VP9 ``yuva420p`` (libvpx-vp9)       VP9 ``yuv420p``
``mov``     ProRes 4444 ``yuva444p10le``        ProRes 422 HQ ``yuv422p10le``
``mp4``     (refused: H.264 has no alpha)       H.264 ``yuv420p`` (libx264, else mpeg4)
==========  ==================================  ====================================

Colour is converted with BT.709 coefficients, limited range, and tagged so. H.264
needs an even width and height: an odd edge is padded by repeating its last row or
column (said in the notes). Frame timestamps and the time base are the source's, so
the frame rate (variable ones too) and the duration are kept.

Audio goes into the cutout video only: copied packet by packet when the container
takes the codec, else re-encoded (Opus for WebM, AAC for MP4/MOV), else dropped,
each said in one note.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ben_cli.io import VIDEO_PIN_TAG, VIDEO_SOURCE_TAG, Pin, encode_image, read_output_source
from ben_cli.options import OutputOptions, VideoFormat
from ben_cli.video.decode import VideoInfo, accurate_scaling, import_av

SOURCE_TAG = VIDEO_SOURCE_TAG
"""Container metadata key holding the source's file name (:data:`ben_cli.io.VIDEO_SOURCE_TAG`)."""

_CONTAINER = {VideoFormat.webm: "webm", VideoFormat.mov: "mov", VideoFormat.mp4: "mp4"}
_AUDIO_CODEC = {VideoFormat.webm: "libopus", VideoFormat.mov: "aac", VideoFormat.mp4: "aac"}
_DEFAULT_CRF = {"libvpx-vp9": 24, "libx264": 18}


@dataclass(frozen=True)
class Codec:
    """One video encoder setting: FFmpeg encoder ``name``, ``pix_fmt`` and private ``options``."""

    name: str
    pix_fmt: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def has_alpha(self) -> bool:
        return self.pix_fmt.startswith("yuva")

    @property
    def even_size(self) -> bool:
        """H.264/MPEG-4 in 4:2:0 refuse odd widths and heights (VP9 and ProRes take them)."""
        return self.name in ("libx264", "mpeg4")


def has_encoder(name: str) -> bool:
    """Whether PyAV's FFmpeg has the encoder ``name``."""
    av = import_av()
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def choose_codec(fmt: VideoFormat, alpha: bool, crf: int | None = None, threads: int = 0) -> Codec:
    """The encoder for one output: ``fmt`` (never auto), ``alpha`` for the transparent cutout."""
    threads_opt = {"threads": str(threads)} if threads else {}
    if fmt is VideoFormat.webm:
        opts = {"crf": str(_DEFAULT_CRF["libvpx-vp9"] if crf is None else crf), "b": "0", "row-mt": "1",
                "deadline": "good", "cpu-used": "4", **threads_opt}
        return Codec("libvpx-vp9", "yuva420p" if alpha else "yuv420p", opts)
    if fmt is VideoFormat.mov:
        return Codec("prores_ks", "yuva444p10le" if alpha else "yuv422p10le",
                     {"profile": "4444" if alpha else "hq", "vendor": "apl0", **threads_opt})
    if fmt is VideoFormat.mp4:
        if alpha:
            raise ValueError("H.264 (mp4) has no alpha channel")
        if has_encoder("libx264"):
            crf_value = _DEFAULT_CRF["libx264"] if crf is None else crf
            return Codec("libx264", "yuv420p", {"crf": str(crf_value), "preset": "medium", **threads_opt})
        return Codec("mpeg4", "yuv420p", {"qscale": "2"})
    raise ValueError(f"no codec for format {fmt}")


def temp_sibling(target: Path, *, folder: bool = False) -> Path:
    """Create (exclusively) a hidden temp file or folder beside ``target``: ``.<name>.ben-<8 hex>.tmp``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = target.with_name(f".{target.name[:40]}.ben-{secrets.token_hex(4)}.tmp")
        try:
            if folder:
                tmp.mkdir()
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {target}")


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _pad_even(array: np.ndarray) -> np.ndarray:
    """(H, W, ...) -> even H and W, the last row/column repeated."""
    h, w = array.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return array
    pad = [(0, h % 2), (0, w % 2)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="edge")


class VideoSink:
    """One video output: frames (H, W[, 3 or 4]) uint8 in display order, optional audio packets.

    Opened at construction (the temp file exists from then on); :meth:`write`,
    :meth:`audio`, then :meth:`finish` and :meth:`commit`, or :meth:`abort`. Not
    thread-safe: one thread drives one sink.
    """

    def __init__(self, kind: str, target: Path, fmt: VideoFormat, codec: Codec, info: VideoInfo, *,
                 audio_stream: Any = None, source_name: Pin | str | None = None) -> None:
        self.av = av = import_av()
        self.kind, self.target, self.codec = kind, Path(target), codec
        self.notes: list[str] = []
        self.audio_note: str | None = None
        self.frames = 0
        self.tmp = temp_sibling(self.target)
        try:
            options = {"movflags": "+faststart+use_metadata_tags"} if fmt in (VideoFormat.mov, VideoFormat.mp4) else {}
            self.container = av.open(str(self.tmp), "w", format=_CONTAINER[fmt], options=options)
            pin = Pin(source_name) if isinstance(source_name, str) else source_name
            if pin is not None and pin.name:
                self.container.metadata[SOURCE_TAG] = pin.name
                if pin.to_json() != "{}":
                    self.container.metadata[VIDEO_PIN_TAG] = pin.to_json()
            w, h = info.width, info.height
            if codec.even_size and (w % 2 or h % 2):
                w, h = w + w % 2, h + h % 2
                self.notes.append(f"{self.target.name}: {info.width}x{info.height} padded to {w}x{h} for "
                                  f"{codec.name} (even sizes only)")
            stream = self.container.add_stream(codec.name, rate=info.rate, options=codec.options)
            stream.width, stream.height, stream.pix_fmt = w, h, codec.pix_fmt
            cc = stream.codec_context
            cc.time_base = info.time_base
            cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = 1, 1, 1, 1  # BT.709, limited
            self.stream, self.time_base = stream, info.time_base
            from av.video.reformatter import ColorRange, Colorspace

            self._reformat = {"format": codec.pix_fmt, "dst_colorspace": Colorspace.ITU709,
                              "dst_color_range": ColorRange.MPEG, **accurate_scaling()}
            self._audio_in, self._audio_out, self._audio_copy = None, None, False
            if audio_stream is not None:
                self._add_audio(audio_stream, fmt)
        except BaseException:
            self.abort()
            raise

    @property
    def carries_audio(self) -> bool:
        """Whether this output takes the source's audio packets."""
        return self._audio_out is not None

    # -------------------------------------------------------------- audio

    def _add_audio(self, source: Any, fmt: VideoFormat) -> None:
        name = source.codec_context.name
        if name in getattr(self.container, "supported_codecs", ()):
            try:
                add = getattr(self.container, "add_stream_from_template", None)
                self._audio_out = add(source) if add else self.container.add_stream(template=source)
                self._audio_in, self._audio_copy = source, True
                self.audio_note = f"{name} copied"
                return
            except Exception:
                pass
        target = _AUDIO_CODEC[fmt]
        try:
            rate = source.codec_context.sample_rate or 48000
            if target == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
                rate = 48000
            out = self.container.add_stream(target, rate=rate)
            channels = source.codec_context.layout.nb_channels if source.codec_context.layout else 2
            out.layout = "mono" if channels == 1 else "stereo"
            self._audio_in, self._audio_out = source, out
            self.audio_note = (f"{name} re-encoded to {target.removeprefix('lib')} "
                               f"({fmt.value} cannot hold {name})")
        except Exception as e:
            self.audio_note = f"dropped: {name} cannot go into {fmt.value} ({e})"

    def audio(self, packet: Any) -> None:
        """Mux (copy) or re-encode one packet of the source's audio stream."""
        if self._audio_out is None:
            return
        try:
            if self._audio_copy:
                if packet.dts is None:
                    return
                packet.stream = self._audio_out
                self.container.mux(packet)
                return
            for frame in packet.decode():
                for out in self._audio_out.encode(frame):
                    self.container.mux(out)
        except self.av.error.FFmpegError as e:  # a broken audio packet must not fail the video
            if self.audio_note and "skipped" not in self.audio_note:
                self.audio_note += f"; some audio skipped ({e})"

    # -------------------------------------------------------------- video

    def write(self, pts: int, array: np.ndarray) -> None:
        """Encode one frame: (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA uint8 at ``pts`` (source time base)."""
        av = self.av
        if self.codec.even_size:
            array = _pad_even(array)
        if array.ndim == 2:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="gray")
        else:
            fmt = "rgba" if array.shape[2] == 4 else "rgb24"
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=fmt)
        frame = frame.reformat(**self._reformat)
        frame.pts, frame.time_base = pts, self.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def finish(self) -> None:
        """Flush the encoders and close the file (still under its temp name)."""
        for packet in self.stream.encode():
            self.container.mux(packet)
        if self._audio_out is not None and not self._audio_copy:
            for packet in self._audio_out.encode():
                self.container.mux(packet)
        self.container.close()

    def commit(self) -> Path:
        """Rename the finished temp file to the target (replacing it)."""
        os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        """Close without finishing and remove the temp file."""
        container = getattr(self, "container", None)
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
        _remove(self.tmp)


class FrameFolderSink:
    """One image per frame into a folder (``frame_000001.png``, ...), renamed into place as a whole.

    The cutout uses ``output.format`` (png, or jpg/webp with a background), other kinds PNG;
    every file records its source like single images do.
    """

    audio_note: str | None = None
    carries_audio = False

    def __init__(self, kind: str, target: Path, output: OutputOptions, *,
                 source_name: Pin | str | None = None) -> None:
        self.kind, self.target, self.output, self.source_name = kind, Path(target), output, source_name
        self.notes: list[str] = []
        self.frames = 0
        self.fmt = output.format.value if kind == "cutout" else "png"
        self.tmp = temp_sibling(self.target, folder=True)

    def audio(self, packet: Any) -> None:
        return None

    def write(self, pts: int, array: np.ndarray) -> None:
        data = encode_image(array, self.fmt, compression=self.output.png_compression, quality=self.output.quality,
                            source=self.source_name)
        self.frames += 1
        (self.tmp / f"frame_{self.frames:06d}.{self.fmt}").write_bytes(data)

    def finish(self) -> None:
        return None

    def commit(self) -> Path:
        """Move the folder into place; an existing folder (overwrite) is replaced whole."""
        old = None
        if self.target.exists() or self.target.is_symlink():
            old = temp_sibling(self.target, folder=True)
            os.rmdir(old)
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            _remove(old)
        return self.target

    def abort(self) -> None:
        _remove(self.tmp)


def read_video_source(path: str | Path) -> str | None:
    """The source file name recorded in a video output or a frame folder (:func:`ben_cli.io.read_output_source`)."""
    return read_output_source(path)
