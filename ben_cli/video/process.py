"""One video through the Eraser, streaming: decode thread -> model (caller's thread) -> render pool -> one
encoder thread per output, joined by bounded queues.

Memory does not grow with the clip: at most ``queue`` frames wait to be batched,
``batch_size`` (+ the ``--smooth`` window) are in the model, and ``queue`` per output
wait to be rendered and encoded. A frame's outputs are rendered with the same
:func:`ben_cli.output.render` as images, from the same :class:`~ben_cli.pipeline.Prediction`
that :meth:`~ben_cli.pipeline.Eraser.predict` gives for that frame as an image.

Failure is all or nothing per video: outputs are written to hidden temp files and
renamed into place only after every frame was encoded and the source was read to
its announced end; any exception (a broken or truncated file:
:class:`~ben_cli.errors.InputError`; Ctrl-C: ``KeyboardInterrupt``) stops every
thread, removes the temp files and propagates.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ben_cli.crop import Layout
from ben_cli.device import device_guard
from ben_cli.io import KINDS, LoadedImage, Pin
from ben_cli.options import OutputOptions, VideoOptions, default_workers
from ben_cli.output import TRIMAP_KINDS, BatchFinisher, finishing_device, layout_for, load_background, render
from ben_cli.pipeline import Eraser, Prediction
from ben_cli.resize import resize_for_model
from ben_cli.video.crop import PredictionSpill, ReplayPredictor, scan_clip
from ben_cli.video.decode import DecodedFrame, VideoInfo, open_source
from ben_cli.video.encode import FrameFolderSink, VideoSink, choose_codec
from ben_cli.video.predict import FramePredictor

ProgressCallback = Callable[[int, "int | None"], None]
"""``on_frames(done, total)``: frames through the model so far, and the count the file announces (or None)."""

_POLL_S = 0.1


@dataclass
class VideoResult:
    """What :func:`erase_video` did: ``frames`` written to every output, ``outputs`` (kind -> path),
    ``audio`` (what happened to the audio stream, None without one), ``notes`` (one line each),
    ``seconds`` (opening to the last rename), ``crop``: the clip's crop box and canvas with ``--crop``
    (:meth:`ben_cli.crop.Layout.to_json`)."""

    source: str
    info: VideoInfo
    frames: int
    outputs: dict[str, str]
    seconds: float
    audio: str | None = None
    notes: list[str] = field(default_factory=list)
    crop: dict[str, Any] | None = None

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"input": self.source, "frames": self.frames, "outputs": self.outputs, "seconds": round(self.seconds, 3),
                "frames_per_second": round(self.frames_per_second, 3), "audio": self.audio, "notes": self.notes,
                "video": self.info.to_json()}


class _End:
    """End of a stream of items."""


@dataclass
class _Failed:
    error: BaseException


@dataclass
class _Frame:
    """A frame on its way through: what the sinks need after the model."""

    index: int
    pts: int
    image: LoadedImage


def _render_all(kinds: tuple[str, ...], image: LoadedImage, pred: Prediction, output: OutputOptions,
                background: torch.Tensor | None, layout: Layout | None) -> dict[str, np.ndarray]:
    return {kind: render(kind, image, pred, output, background, layout) for kind in kinds}


class _Stopped(Exception):
    """Raised inside a worker thread when the run was stopped from outside."""


def _put(q: queue.Queue, item: object, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            continue


class _Run:
    """The threads of one video; :meth:`run` in the caller's thread."""

    def __init__(self, source: Any, sinks: list[Any], eraser: Eraser, *, output: OutputOptions, smooth: int,
                 batch_size: int, workers: int, background: torch.Tensor | None,
                 on_frames: ProgressCallback | None, replay: PredictionSpill | None = None,
                 layout: Layout | None = None) -> None:
        self.source, self.sinks, self.eraser = source, sinks, eraser
        self.output, self.background, self.on_frames = output, background, on_frames
        self.batch_size = max(1, batch_size)
        self.kinds = tuple(s.kind for s in sinks)
        self.layout = layout  # --crop: the clip's box, found by the first pass (ben_cli.video.crop)
        self.predictor: FramePredictor | ReplayPredictor = (
            FramePredictor(eraser, smooth=smooth, want_trimap=any(k in TRIMAP_KINDS for k in self.kinds))
            if replay is None else ReplayPredictor(replay))
        depth = max(8, 2 * self.batch_size)
        self.stop = threading.Event()
        self.frames_in: queue.Queue = queue.Queue(maxsize=depth)
        self.sink_queues = [queue.Queue(maxsize=depth) for _ in sinks]
        self.errors: list[BaseException] = []
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ben-video-render")
        self.threads = [threading.Thread(target=self._decode, name="ben-video-decode", daemon=True)]
        self.threads += [threading.Thread(target=self._encode, args=(s, q), name=f"ben-video-{s.kind}", daemon=True)
                         for s, q in zip(sinks, self.sink_queues)]
        self.predicted = 0
        device = finishing_device(eraser.device)
        self.finisher = (BatchFinisher(device) if device is not None and "cutout" in self.kinds
                         and output.decontaminate else None)

    # -------------------------------------------------------------- worker threads

    def _decode(self) -> None:
        side = self.eraser.resolution
        model = isinstance(self.predictor, FramePredictor)  # a replay needs no model-side image
        try:
            for item in self.source:
                if isinstance(item, DecodedFrame):
                    _put(self.frames_in, (item, resize_for_model(item.rgb, side) if model else None), self.stop)
                else:
                    _put(self.frames_in, item, self.stop)
            _put(self.frames_in, _End(), self.stop)
        except _Stopped:
            return
        except BaseException as e:
            try:
                _put(self.frames_in, _Failed(e), self.stop)
            except _Stopped:
                return

    def _encode(self, sink: Any, q: queue.Queue) -> None:
        try:
            while True:
                item = _get(q, self.stop)
                if isinstance(item, _End):
                    sink.finish()
                    return
                if isinstance(item, tuple):
                    pts, future = item
                    sink.write(pts, future.result()[sink.kind])
                else:
                    sink.audio(item)
        except _Stopped:
            return
        except BaseException as e:
            self.errors.append(e)
            self.stop.set()

    # -------------------------------------------------------------- the model, in the caller's thread

    def _check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def _send(self, q: queue.Queue, item: object) -> None:
        while True:
            self._check()
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _dispatch(self, done: list[tuple[Any, Prediction]]) -> None:
        if self.finisher is not None and done:  # the batch's cutout colours on the model's device, at once
            frames = [frame for frame, _ in done]
            with contextlib.suppress(Exception):  # else the render pool decontaminates each frame
                done = list(zip(frames, self.finisher.finish([f.image for f in frames], [p for _, p in done],
                                                             self.output)))
        for frame, pred in done:
            future: Future = self.pool.submit(_render_all, self.kinds, frame.image, pred, self.output, self.background,
                                              self.layout)
            for q in self.sink_queues:
                self._send(q, (frame.pts, future))

    def _predict(self, batch: list[tuple[DecodedFrame, np.ndarray]]) -> None:
        if not batch:
            return
        frames = [_Frame(d.index, d.pts, LoadedImage(path=f"{self.source.label} frame {d.index + 1}", rgb=d.rgb,
                                                     alpha=d.alpha, mode="RGB" if d.alpha is None else "RGBA"))
                  for d, _ in batch]
        self._dispatch(self.predictor.push(frames, [d.rgb for d, _ in batch], [r for _, r in batch]))
        self.predicted += len(batch)
        if self.on_frames is not None:
            self.on_frames(self.predicted, self.source.info.frames)
        batch.clear()

    def run(self) -> None:
        for t in self.threads:
            t.start()
        audio_queues = [q for s, q in zip(self.sinks, self.sink_queues) if getattr(s, "carries_audio", False)]
        batch: list[tuple[DecodedFrame, np.ndarray]] = []
        while True:
            self._check()
            try:
                item = self.frames_in.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if isinstance(item, _End):
                break
            if isinstance(item, _Failed):
                raise item.error
            if isinstance(item, tuple):
                batch.append(item)
                if len(batch) >= self.batch_size:
                    self._predict(batch)
            else:
                for q in audio_queues:
                    self._send(q, item)
        self._predict(batch)
        self._dispatch(self.predictor.flush())
        for q in self.sink_queues:
            self._send(q, _End())
        for t in self.threads:
            while t.is_alive():
                t.join(_POLL_S)
                self._check()
        self._check()
        self.pool.shutdown()

    def abort(self) -> None:
        """Stop every thread and wait for them (the sinks are no longer in use afterwards)."""
        self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for t in self.threads:
            if t.is_alive():
                t.join()


def erase_video(source: str | Path, outputs: Mapping[str, str | Path], eraser: Eraser, *,
                output: OutputOptions | None = None, video: VideoOptions | None = None,
                batch_size: int | None = None, on_frames: ProgressCallback | None = None,
                background: torch.Tensor | None = None, label: str | None = None,
                workers: int | None = None, pin: Pin | None = None) -> VideoResult:
    """Remove the background of every frame of ``source`` and write each requested output.

    Args:
        source: a video file (any container FFmpeg reads), or an animated GIF/WebP/APNG.
        outputs: ``--save`` kind (cutout, alpha, trimap, overlay) -> target path: a video file,
            or with ``video.frames`` a folder for one image per frame (see :func:`video_suffixes`).
        eraser: the model, exactly as images use it (``Eraser.predict``).
        output: how the cutout is finished (decontamination, threshold, background; as for images);
            with ``output.crop`` every output is cropped to one box for the whole clip, the union of its
            frames' subject boxes (two passes over the file, the model run once: :mod:`ben_cli.video.crop`).
        video: format, frames, smoothing, quality (:class:`~ben_cli.options.VideoOptions`).
        batch_size: frames per model batch (default: the Eraser's).
        on_frames: progress, called in this thread after each batch: ``on_frames(done, total)``.
        background: the background image (3, h, w) uint8 when ``output.background`` is a file
            (loaded here when not given; load it once for many videos).
        label: names the input in errors and reports (default: the path).
        workers: render threads (default: one per core, at most 8).
        pin: the source record written in every output (:class:`~ben_cli.io.Pin`; default:
            the source's file name alone).

    Returns:
        a :class:`VideoResult`. Raises InputError (unreadable, truncated or corrupt input, or
        PyAV missing), OptionError (``mp4`` without a background, a bad background file),
        OSError when an output cannot be written, KeyboardInterrupt; no output is left then.
    """
    start = time.perf_counter()
    output = output or OutputOptions()
    video = video or VideoOptions()
    if not outputs:
        raise ValueError("no outputs requested")
    unknown = [k for k in outputs if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown output kinds {unknown} (use {', '.join(KINDS)})")
    flattened = output.background is not None
    fmt = None if video.frames else video.container(flattened)
    if background is None:
        background = load_background(output)
    label = label or str(source)
    batch_size = batch_size or eraser.batch_size
    spill, layout = (_first_pass(source, outputs, eraser, output, video, batch_size, label, on_frames) if output.crop
                     else (None, None))
    src = open_source(Path(source), label=label)
    info: VideoInfo = src.info
    size = info if layout is None else replace(info, width=layout.size[0], height=layout.size[1])
    sinks: list[Any] = []
    run: _Run | None = None
    try:
        name = pin or Path(source).name
        for kind, target in outputs.items():
            if fmt is None:
                sinks.append(FrameFolderSink(kind, Path(target), output, source_name=name))
                continue
            alpha = kind == "cutout" and not flattened
            audio = src.audio_stream if kind == "cutout" else None
            codec = choose_codec(fmt, alpha, video.crf, threads=default_workers())
            sinks.append(VideoSink(kind, Path(target), fmt, codec, size, audio_stream=audio, source_name=name))
        workers = workers or default_workers()
        run = _Run(src, sinks, eraser, output=output, smooth=video.smooth, batch_size=batch_size,
                   workers=workers, background=background, on_frames=on_frames, replay=spill, layout=layout)
        with device_guard(eraser.device):  # the replica's device current, as for images (engines.steps)
            run.run()
        if spill is not None:
            spill.check_replayed()
        frames = {s.frames for s in sinks}
        if frames != {run.predicted}:  # a worker stopped early without an error: never rename such a file
            raise RuntimeError(f"frames lost between the model and the outputs ({run.predicted} vs {sorted(frames)})")
        written = {s.kind: str(s.commit()) for s in sinks}
    except BaseException:
        if run is not None:
            run.abort()
        for s in sinks:
            s.abort()
        raise
    finally:
        src.close()
        if spill is not None:
            spill.close()
    notes = [n for s in sinks for n in s.notes]
    audio_note = next((s.audio_note for s in sinks if s.audio_note), None)
    if info.audio is not None and audio_note is None:
        audio_note = ("not written: frame folders have none" if fmt is None
                      else "not written: only the cutout video carries it")
    return VideoResult(label, info, run.predicted, written, time.perf_counter() - start, audio_note, notes,
                       crop=None if layout is None else layout.to_json())


def _first_pass(source: str | Path, outputs: Mapping[str, str | Path], eraser: Eraser, output: OutputOptions,
                video: VideoOptions, batch_size: int, label: str,
                on_frames: ProgressCallback | None) -> tuple[PredictionSpill, Layout]:
    """``--crop``: every frame through the model once, its prediction kept, and the clip's one layout
    from the union of the frames' subject boxes (:mod:`ben_cli.video.crop`). ``on_frames`` counts the
    frames through the model here, then the second pass counts them again."""
    src = open_source(Path(source), label=label)
    spill = PredictionSpill(label)
    try:
        total = src.info.frames
        with device_guard(eraser.device):
            box = scan_clip(src, eraser, output, spill, smooth=video.smooth, batch_size=max(1, batch_size),
                            want_trimap=any(k in TRIMAP_KINDS for k in outputs), label=label,
                            on_frames=None if on_frames is None else lambda done: on_frames(done, total))
        return spill, layout_for(box, spill.size, output)
    except BaseException:
        spill.close()
        raise
    finally:
        src.close()
