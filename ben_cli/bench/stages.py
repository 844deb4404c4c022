"""Every stage of ``ben erase`` timed on its own, batch by batch on one thread (:func:`stage_pass`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ben_cli.bench.memory import PeakMemory
from ben_cli.device import synchronize
from ben_cli.io import atomic_write_bytes, encode_image, read_image
from ben_cli.options import OutputOptions
from ben_cli.output import render
from ben_cli.pipeline import Eraser
from ben_cli.resize import resize_for_model

STAGES: tuple[str, ...] = ("decode", "resize", "base", "trimap", "refiner", "compose", "encode", "write")
"""The stages timed per batch size, in pipeline order."""
FROM_FINISH = {"trimap": "trimap", "refine": "refiner", "resize": "compose"}
"""The stage of :data:`STAGES` that each stage of :meth:`ben_cli.pipeline.Eraser.finish` is counted in."""


class Clock:
    """Seconds per stage, accumulated over one pass; device stages are synchronised at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def stage(self, name: str, device_work: bool = False) -> Iterator[None]:
        if device_work:
            synchronize(self.device)
        t = time.perf_counter()
        yield
        if device_work:
            synchronize(self.device)
        self.seconds[name] += time.perf_counter() - t

    def finish_stage(self, name: str) -> contextlib.AbstractContextManager[None]:
        """The :data:`ben_cli.pipeline.StageTimer` of :meth:`Eraser.finish`: its stages are device work,
        counted in :data:`FROM_FINISH`'s stages."""
        return self.stage(FROM_FINISH[name], device_work=True)


def stage_pass(eraser: Eraser, paths: Sequence[Path], batch_size: int, out_dir: Path,
               memory: PeakMemory | None = None) -> dict[str, float]:
    """One pass of every stage over ``paths``, batch by batch: seconds per name of :data:`STAGES`.

    Each batch is decoded, resized, run through the device stages (the Eraser's own
    methods: :meth:`~ben_cli.pipeline.Eraser.preprocess`, ``base``, then
    :meth:`~ben_cli.pipeline.Eraser.finish` timed stage by stage; the trimap is always
    computed), composed, encoded and written (``out_dir/0000.png`` ...) before the next is
    read, on this thread; only one batch is held at a time. ``memory``: measures the peak
    over the whole pass.
    """
    clock = Clock(eraser.device)
    finish = OutputOptions()
    with memory.measure() if memory is not None else contextlib.nullcontext():
        for start in range(0, len(paths), batch_size):
            with clock.stage("decode"):
                batch = [read_image(p) for p in paths[start : start + batch_size]]
            with clock.stage("resize"):
                small = [resize_for_model(im.rgb, eraser.resolution) for im in batch]
            rgbs = [im.rgb for im in batch]
            with clock.stage("base", device_work=True):
                rgb = eraser.preprocess(small)
                logits = eraser.base(rgb)
            with clock.stage("refiner", device_work=True):
                prob = torch.sigmoid(logits)
            alphas, _ = eraser.finish(rgbs, prob, rgb, want_trimap=True, timer=clock.finish_stage)
            with clock.stage("compose", device_work=True):
                preds = eraser.postprocess(alphas, None, [im.shape[:2] for im in rgbs])
                cutouts = [render("cutout", im, pred, finish, device=eraser.device) for im, pred in zip(batch, preds)]
            with clock.stage("encode"):
                data = [encode_image(c, "png", icc_profile=im.icc_profile, source=Path(im.path).name)
                        for c, im in zip(cutouts, batch)]
            with clock.stage("write"):
                for i, d in enumerate(data, start):
                    atomic_write_bytes(out_dir / f"{i:04d}.png", d)
    return clock.seconds


__all__ = ["FROM_FINISH", "STAGES", "Clock", "stage_pass"]
