"""``--crop`` for a clip: one box for all its frames, so the clip keeps one size.

The box is the union of every frame's subject box, known only once the last frame was through the
model, while the outputs are encoded as the frames stream. So a cropped clip takes two passes over its
file, and the model runs once: :func:`scan_clip` decodes every frame, predicts it (the same
:class:`~ben_cli.video.predict.FramePredictor` as the streaming path, ``--smooth`` included), joins the
subject boxes and keeps each frame's :class:`~ben_cli.pipeline.Prediction` (alpha, and the trimap when
asked for) in a :class:`PredictionSpill`: a temporary file on disk, each map compressed (zlib), never all
in memory. The second pass decodes the file again and streams it to the encoders with the predictions
read back in order (:class:`ReplayPredictor`) instead of the model. Memory stays as flat as an uncropped
clip's; the temporary file holds about one to two bytes per pixel per frame before compression (mattes
compress well: mostly 0 and 255).
"""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from ben_cli.crop import Box, subject_boxes, union_box
from ben_cli.errors import InputError
from ben_cli.io import LoadedImage
from ben_cli.options import OutputOptions
from ben_cli.output import output_alpha
from ben_cli.pipeline import Eraser, Prediction
from ben_cli.resize import resize_for_model
from ben_cli.video.decode import DecodedFrame
from ben_cli.video.predict import FramePredictor


@dataclass(frozen=True)
class _Entry:
    """Where one frame's prediction lies in the spill file."""

    offset: int
    alpha: int  # compressed bytes of the alpha
    trimap: int  # compressed bytes of the trimap, 0 without one
    shape: tuple[int, int]
    refiner: str


class PredictionSpill:
    """Predictions of a clip's frames in order, compressed in a temporary file (removed on :meth:`close`)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._file = tempfile.TemporaryFile(prefix="ben-clip-")  # noqa: SIM115 (closed by close(), after the 2nd pass)
        self._entries: list[_Entry] = []
        self._end = 0
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, pred: Prediction) -> None:
        """Keep ``pred``'s alpha and trimap (its foreground colours are made again when written)."""
        alpha = zlib.compress(np.ascontiguousarray(pred.alpha).tobytes(), 1)
        trimap = b"" if pred.trimap is None else zlib.compress(np.ascontiguousarray(pred.trimap).tobytes(), 1)
        self._file.seek(self._end)
        self._file.write(alpha + trimap)
        height, width = pred.alpha.shape[:2]
        self._entries.append(_Entry(self._end, len(alpha), len(trimap), (height, width), pred.refiner))
        self._end += len(alpha) + len(trimap)

    def next(self) -> Prediction:
        """The next prediction kept, in the order they were added."""
        if self._next >= len(self._entries):
            raise InputError(self.label, "the clip has more frames than on its first reading")
        entry = self._entries[self._next]
        self._next += 1
        self._file.seek(entry.offset)
        data = self._file.read(entry.alpha + entry.trimap)
        alpha = np.frombuffer(zlib.decompress(data[: entry.alpha]), np.uint8).reshape(entry.shape).copy()
        trimap = None
        if entry.trimap:
            trimap = np.frombuffer(zlib.decompress(data[entry.alpha :]), np.uint8).reshape(entry.shape).copy()
        return Prediction(alpha=alpha, trimap=trimap, refiner=entry.refiner)

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the frames (of the first one; a clip keeps one size)."""
        height, width = self._entries[0].shape
        return width, height

    def check_replayed(self) -> None:
        """InputError unless every prediction kept was read back (the second reading had as many frames)."""
        if self._next != len(self._entries):
            raise InputError(self.label, f"the clip had {len(self._entries)} frames on its first reading and "
                                         f"{self._next} on its second")

    def close(self) -> None:
        self._file.close()


class ReplayPredictor:
    """A :class:`~ben_cli.video.predict.FramePredictor` stand-in for the second pass: each frame gets the
    prediction kept for it by :func:`scan_clip`, in order; the model is not run again."""

    def __init__(self, spill: PredictionSpill) -> None:
        self.spill = spill

    def push(self, items: Sequence[object], images: Sequence[np.ndarray],
             resized: Sequence[object]) -> list[tuple[object, Prediction]]:
        return [(item, self.spill.next()) for item in items]

    def flush(self) -> list[tuple[object, Prediction]]:
        return []


def scan_clip(source: object, eraser: Eraser, output: OutputOptions, spill: PredictionSpill, *, smooth: int,
              batch_size: int, want_trimap: bool, label: str,
              on_frames: Callable[[int], None] | None = None) -> Box:
    """The union of the subject boxes of every frame of ``source`` (an open video source: its info, then
    :class:`~ben_cli.video.decode.DecodedFrame` items and audio packets, which are skipped), each frame
    predicted once and its prediction kept in ``spill``; ``on_frames(done)`` after each batch.

    The subject of a frame is its written alpha (:func:`ben_cli.output.output_alpha`: the model's times
    the frame's own, thresholded with ``output.threshold``) at ``output.crop_threshold`` or above. A clip
    with no subject pixel in any frame is an :class:`InputError` ("no subject above 0.05").
    """
    predictor = FramePredictor(eraser, smooth=smooth, want_trimap=want_trimap)
    side = eraser.resolution
    boxes: list[Box] = []
    batch: list[DecodedFrame] = []
    done = 0

    def keep(finished: list[tuple[object, Prediction]]) -> None:
        for item, pred in finished:
            frame = cast(DecodedFrame, item)
            image = LoadedImage(path=label, rgb=frame.rgb, alpha=frame.alpha, mode="RGB")
            found_boxes, found = subject_boxes(output_alpha(image, pred, output), output.crop_threshold)
            if bool(found[0]):
                left, top, right, bottom = (int(v) for v in found_boxes[0].tolist())
                boxes[:] = [union_box([*boxes, (left, top, right, bottom)])]
            spill.add(pred)

    def predict() -> None:
        nonlocal done
        if not batch:
            return
        keep(predictor.push(list(batch), [f.rgb for f in batch], [resize_for_model(f.rgb, side) for f in batch]))
        done += len(batch)
        batch.clear()
        if on_frames is not None:
            on_frames(done)

    for item in source:
        if isinstance(item, DecodedFrame):
            batch.append(item)
            if len(batch) >= batch_size:
                predict()
    predict()
    keep(predictor.flush())
    if not boxes:
        raise InputError(label, f"no subject above {output.crop_threshold:g}")
    return boxes[0]
