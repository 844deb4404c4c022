"""Frames through the Eraser, in order, with optional temporal smoothing of the base probability.

Without smoothing a batch of frames is exactly :meth:`Eraser.predict` (the image
path). With ``smooth = N > 1`` the Eraser's stages are called one by one: the base
probability of every frame (stages 1-2) is kept for ``N`` frames, and each frame's
probability is replaced by the mean over a centered window of ``N`` frames
(``(N - 1) // 2`` before, ``N // 2`` after, fewer at the ends of the clip) before
the trimap, the refiner and the resize back (:meth:`Eraser.finish`, as for
images). A frame is finished once the ``N // 2`` frames after it have been
through the model, so outputs lag the model by that many frames, and
``N + batch_size`` probability maps stay on the device.

Why it is off by default: averaging over time cannot tell a flickering edge from
a moving one. It steadies static edges, but anything that moves leaves a
semi-transparent trail (a ghost of where it was and will be), roughly
``N x speed`` pixels long, and the network's per-frame result is already what
the image path gives. Turn it on for locked-off shots (product turntables on a
static background edge, talking heads with a fixed camera).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ben_cli.pipeline import Eraser, Prediction


def window_bounds(index: int, last: int, window: int) -> tuple[int, int]:
    """Inclusive frame range ``(lo, hi)`` averaged for frame ``index`` of frames ``0..last``: a centered
    window of ``window`` frames, cut at the ends of the clip."""
    before, after = (window - 1) // 2, window // 2
    return max(0, index - before), min(last, index + after)


def smooth_probabilities(probs: Sequence[torch.Tensor], window: int) -> list[torch.Tensor]:
    """Each map (1, 1, S, S) in [0, 1] replaced by the mean over its centered window (a whole clip at once;
    the streaming :class:`FramePredictor` gives the same numbers)."""
    last = len(probs) - 1
    out = []
    for i in range(len(probs)):
        lo, hi = window_bounds(i, last, window)
        out.append(torch.stack(list(probs[lo : hi + 1])).mean(0))
    return out


@dataclass
class _Held:
    """A frame waiting for its window: the image (H, W, 3), the model-side image and its base probability."""

    item: object
    image: np.ndarray
    resized: np.ndarray
    prob: torch.Tensor  # (1, 1, S, S) float32 in [0, 1], on the device


class FramePredictor:
    """``push(items, images, resized)`` -> ``[(item, Prediction)]`` for the frames now finished, in order;
    ``flush()`` at the end of the clip gives the rest. ``items`` are carried along untouched."""

    def __init__(self, eraser: Eraser, *, smooth: int = 0, want_trimap: bool = False) -> None:
        self.eraser, self.smooth, self.want_trimap = eraser, smooth, want_trimap
        self._held: deque[_Held] = deque()  # consecutive frames from ``_first`` on
        self._first = 0  # index of _held[0]
        self._next = 0  # index of the next frame to finish

    @property
    def smoothing(self) -> bool:
        return self.smooth > 1

    def push(self, items: Sequence[object], images: Sequence[np.ndarray],
             resized: Sequence[np.ndarray]) -> list[tuple[object, Prediction]]:
        if not items:
            return []
        if not self.smoothing:
            return list(zip(items, self.eraser.predict(list(images), resized=list(resized),
                                                       want_trimap=self.want_trimap)))
        e = self.eraser
        with torch.inference_mode():
            prob = torch.sigmoid(e.base(e.preprocess(resized)))
        for i, item in enumerate(items):
            self._held.append(_Held(item, images[i], resized[i], prob[i : i + 1]))
        last_seen = self._first + len(self._held) - 1
        ready = max(0, last_seen - self.smooth // 2 - self._next + 1)
        return self._finish(ready, last_seen)

    def flush(self) -> list[tuple[object, Prediction]]:
        if not self.smoothing or not self._held:
            return []
        last = self._first + len(self._held) - 1
        return self._finish(last - self._next + 1, last)

    def _finish(self, count: int, last_seen: int) -> list[tuple[object, Prediction]]:
        """Finish the next ``count`` frames; ``last_seen``: the newest frame through the model (every
        window of these frames ends at or before it, or is cut there at the end of the clip)."""
        done: list[tuple[object, Prediction]] = []
        batch = max(1, self.eraser.batch_size)
        while count > 0:
            n = min(count, batch)
            indices = range(self._next, self._next + n)
            held = [self._held[i - self._first] for i in indices]
            probs = []
            for i in indices:
                lo, hi = window_bounds(i, last_seen, self.smooth)
                probs.append(torch.stack([self._held[j - self._first].prob for j in range(lo, hi + 1)]).mean(0))
            preds = self._stages(held, torch.cat(probs))
            done.extend((h.item, p) for h, p in zip(held, preds))
            self._next += n
            count -= n
            while self._held and self._first < self._next - (self.smooth - 1) // 2:
                self._held.popleft()
                self._first += 1
        return done

    def _stages(self, held: Sequence[_Held], prob: torch.Tensor) -> list[Prediction]:
        """:meth:`Eraser.finish` and :meth:`Eraser.postprocess` on smoothed probabilities (B, 1, S, S)."""
        images = [h.image for h in held]
        alphas, trimap = self.eraser.finish(images, prob, [h.resized for h in held], want_trimap=self.want_trimap)
        return self.eraser.postprocess(alphas, trimap, [im.shape[:2] for im in images])
