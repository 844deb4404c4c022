"""Finishing and writing one input's outputs: shared by every engine (local, Ray, video).

:func:`render` turns a :class:`~ben_cli.pipeline.Prediction` into the array of one
output kind (cutout, alpha, trimap, overlay) with the writer's
:class:`~ben_cli.options.OutputOptions` (threshold, decontamination, background, and with ``crop`` the
:class:`~ben_cli.crop.Layout` of :func:`output_layout`: the subject's box, margin and canvas);
:func:`write_outputs` encodes and writes every output of a job atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from ben_cli.compose import composite, cover_resize, cutout, multiply_alpha, threshold_alpha
from ben_cli.crop import Box, Layout, place, place_premultiplied, plan_layout, subject_boxes
from ben_cli.device import on_stream, release_cached_memory, side_stream
from ben_cli.errors import InputError
from ben_cli.foreground import decontaminate, decontaminate_many
from ben_cli.io import LoadedImage, atomic_write_bytes, encode_image, read_image, write_stdout_bytes
from ben_cli.options import Margin, OutputOptions
from ben_cli.pipeline import Prediction
from ben_cli.plan import STDIO, Job
from ben_cli.staging import Downloads, Uploads
from ben_cli.trimap import trimap_overlay

TRIMAP_KINDS = frozenset({"trimap", "overlay"})
"""Output kinds that need the trimap computed."""


def render(kind: str, image: LoadedImage, pred: Prediction, output: OutputOptions | None = None,
           background: torch.Tensor | None = None, layout: Layout | None = None, *,
           device: torch.device | None = None) -> np.ndarray:
    """The array written for one output kind (H, W[, 3 or 4]) uint8: RGBA cutout (RGB when flattened
    onto a background), alpha, trimap, or the trimap overlay picture (RGB).

    The input's own transparency is kept (alpha and cutout use model alpha times input
    alpha); ``output`` says how to finish the cutout (threshold, decontamination,
    background colour or ``background`` image (3, h, w) uint8, crop and canvas). ``layout``:
    where the output comes from and goes with ``output.crop`` (:func:`output_layout` when None; a
    clip passes the one of all its frames). ``device``: where the foreground colours are estimated
    (:func:`decontaminate_on`); the CPU when None.
    """
    output = output or OutputOptions()
    if layout is None and output.crop:
        layout = output_layout(image, pred, output)
    if kind in TRIMAP_KINDS:
        if pred.trimap is None:
            raise ValueError("trimap was not computed")
        trimap = torch.from_numpy(pred.trimap)[None, None]
        if layout is not None:
            trimap = place(trimap, layout, nearest=True)
        if kind == "trimap":
            return trimap[0, 0].numpy()
        rgb = torch.from_numpy(image.rgb).permute(2, 0, 1)[None]
        if layout is not None:
            rgb = place(rgb, layout)
        return trimap_overlay(rgb, trimap)[0].permute(1, 2, 0).contiguous().numpy()
    alpha = output_alpha(image, pred, output)
    if kind == "alpha":
        return (alpha if layout is None else place(alpha, layout))[0, 0].numpy()
    rgb = torch.from_numpy(image.rgb).permute(2, 0, 1)[None]
    if output.decontaminate:
        if pred.foreground is not None:  # done for the whole batch on the model's device
            rgb = torch.from_numpy(pred.foreground).permute(2, 0, 1)[None]
        else:
            rgb = decontaminate_on(rgb, alpha, device)
    if layout is not None:
        rgb, alpha = place_premultiplied(rgb, alpha, layout)
    if output.background is not None:
        colour = output.background_colour()
        if colour is None:
            if background is None:
                raise ValueError("the background image was not loaded")
            bg: tuple[int, int, int] | torch.Tensor = cover_resize(background, tuple(rgb.shape[2:]))[None]
        else:
            bg = colour
        return composite(rgb, alpha, bg)[0].permute(1, 2, 0).contiguous().numpy()
    return cutout(rgb, alpha)[0].permute(1, 2, 0).contiguous().numpy()


def output_layout(image: LoadedImage, pred: Prediction, output: OutputOptions) -> Layout | None:
    """The crop and canvas of one image's outputs (:func:`ben_cli.crop.plan_layout`), None without
    ``output.crop``. The subject is the pixels of the written alpha (:func:`output_alpha`) at
    ``output.crop_threshold`` or above; an image with none is an :class:`InputError`."""
    if not output.crop:
        return None
    box = subject_box(output_alpha(image, pred, output), output.crop_threshold, image.path)
    return layout_for(box, image.size, output)


def subject_box(alpha: torch.Tensor, threshold: float, label: str) -> Box:
    """The subject box of one alpha (1, 1, H, W) uint8; :class:`InputError` (naming ``label``) with none."""
    boxes, found = subject_boxes(alpha, threshold)
    if not bool(found[0]):
        raise InputError(label, f"no subject above {threshold:g}")
    left, top, right, bottom = (int(v) for v in boxes[0].tolist())
    return left, top, right, bottom


def layout_for(box: Box, size: tuple[int, int], output: OutputOptions) -> Layout:
    """The layout of a subject ``box`` in an image of ``size`` (W, H) with ``output``'s crop settings."""
    canvas = output.canvas if isinstance(output.canvas, tuple) else None
    margin = output.margin if isinstance(output.margin, Margin) else Margin()
    return plan_layout(box, size, margin.value, percent=margin.percent, canvas=canvas, square=output.square,
                       upscale=output.upscale)


def output_alpha(image: LoadedImage, pred: Prediction, output: OutputOptions) -> torch.Tensor:
    """The alpha written and cut out with (1, 1, H, W) uint8: the model's times the input's own
    transparency, thresholded when ``output.threshold`` is set."""
    alpha = torch.from_numpy(pred.alpha)[None, None]
    if image.alpha is not None:
        alpha = multiply_alpha(alpha, torch.from_numpy(image.alpha)[None, None])
    if output.threshold is not None:
        alpha = threshold_alpha(alpha, output.threshold)
    return alpha


def wants_foreground(job: Job, output: OutputOptions) -> bool:
    """Whether ``job`` writes a cutout whose colours are decontaminated."""
    return output.decontaminate and "cutout" in job.outputs


class BatchFinisher:
    """Decontamination for a whole batch on the model's device, on the model's thread
    (:meth:`finish`), so the writer threads only compose, encode and write.

    Each batch's images cross to the device once, packed in one reused pinned buffer
    (:class:`ben_cli.staging.Uploads`), with their output alphas; :func:`~ben_cli.foreground.decontaminate_many`
    runs on all of them (one host sync, every soft tile of the batch stacked by shape); the colours come
    back in one download (:class:`ben_cli.staging.Downloads`). It runs on a CUDA stream of its own, so it
overlaps the next batch's forward (launched before this one is collected) instead of waiting for it.
Out of memory: the writers do it instead.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._uploads, self._downloads = Uploads(device), Downloads(device)
        self._stream = side_stream(device)  # beside the model's next batch, not queued behind it

    def finish(self, images: Sequence[LoadedImage], preds: Sequence[Prediction], output: OutputOptions
               ) -> list[Prediction]:
        """``preds`` with :attr:`~ben_cli.prediction.Prediction.foreground` set for every image (a
        prediction of each image of ``images``, for a cutout with decontamination)."""
        if not images:
            return list(preds)
        alphas = [output_alpha(im, p, output)[0, 0].numpy() for im, p in zip(images, preds)]
        try:
            with on_stream(self._stream):
                parts = self._uploads.upload_each([im.rgb for im in images] + alphas)
                n = len(images)
                rgbs = [p.permute(2, 0, 1)[None] for p in parts[:n]]
                done = decontaminate_many(rgbs, [a[None, None] for a in parts[n:]])
                arrays = self._downloads.download([d[0].permute(1, 2, 0) for d in done]).arrays()
        except torch.OutOfMemoryError:
            release_cached_memory(self.device)
            return list(preds)
        return [replace(p, foreground=a) for p, a in zip(preds, arrays)]


def finishing_device(device: torch.device) -> torch.device | None:
    """Where a model on ``device`` has its cutouts finished: that accelerator, or None (the CPU)."""
    return None if device.type == "cpu" else device


def decontaminate_on(rgb: torch.Tensor, alpha: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """:func:`~ben_cli.foreground.decontaminate` of CPU tensors (1, 3, H, W) and (1, 1, H, W) uint8,
    computed on ``device`` when it is an accelerator; (1, 3, H, W) uint8 on the CPU.

    It is the costliest step of a cutout on the CPU (about 125 ms per megapixel here), so
    with a GPU it runs there: 4 bytes per pixel cross each way. When the device runs out of
    memory, the CPU does it.
    """
    if device is None or device.type == "cpu":
        return decontaminate(rgb, alpha)
    try:
        return decontaminate(rgb.to(device), alpha.to(device)).cpu()
    except torch.OutOfMemoryError:
        return decontaminate(rgb, alpha)


def write_outputs(job: Job, image: LoadedImage, pred: Prediction, output: OutputOptions | None = None,
                  background: torch.Tensor | None = None, *, device: torch.device | None = None,
                  layout: Layout | None = None) -> list[str]:
    """Render, encode and write every output of ``job`` (atomically; ``-`` is stdout), each recording
    the job's source (:attr:`~ben_cli.plan.Job.record`); ``device`` and ``layout``: see :func:`render`
    (the layout is found once for all of them, before any is written: an image without a subject
    writes nothing). An :class:`OSError` while writing names the output path (``filename``)."""
    output = output or OutputOptions()
    if layout is None and output.crop:
        layout = output_layout(image, pred, output)
    written = []
    for kind, target in job.outputs.items():
        cut = kind == "cutout"
        data = encode_image(render(kind, image, pred, output, background, layout, device=device),
                            output.format.value if cut else "png",
                            icc_profile=image.icc_profile if cut else None, compression=output.png_compression,
                            quality=output.quality, source=job.record)
        if target == STDIO:
            write_stdout_bytes(data)
        else:
            try:
                atomic_write_bytes(target, data)  # a local path or an fsspec URL
            except OSError as e:  # named by the output, not by the temporary file or the input
                raise OSError(e.errno, e.strerror or str(e), str(target)) from e
        written.append(str(target))
    return written


def load_background(output: OutputOptions) -> torch.Tensor | None:
    """The background image (3, h, w) uint8 when ``output.background`` names a file, else None."""
    if output.background is None or output.background_colour() is not None:
        return None
    from ben_cli.errors import OptionError

    try:
        loaded = read_image(output.background)
    except InputError as e:
        raise OptionError("background", f"cannot use {e.path}: {e.reason}") from None
    return torch.from_numpy(loaded.rgb).permute(2, 0, 1).contiguous()
