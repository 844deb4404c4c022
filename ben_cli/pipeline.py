"""The Eraser: BEN Base -> confidence trimap -> refiner, on batches of images.

Owns the model, the device and the dtype. Images in and out are numpy arrays
(uint8 RGB, any size); everything between runs batched on the device, in five
stages with small typed interfaces:

1. :meth:`Eraser.preprocess`: model-side uint8 images -> normalised (B, 3, S, S);
2. :meth:`Eraser.base`: -> base logits (B, 1, S, S) float32;
3. :meth:`Eraser.trimap`: -> confidence trimap (B, 1, S, S) uint8 {0, 128, 255};
4. :meth:`Eraser.refine`: image, probability and trimap -> alpha in [0, 1], at the working
   resolution for images no larger than it, at the image's own resolution (tiled,
   :func:`ben_cli.refine.tiles.refine_full_resolution`) for larger ones;
5. :meth:`Eraser.postprocess`: -> one :class:`Prediction` per image at its own size.

:meth:`Eraser.finish` composes what follows the base model (probability -> trimap -> refine ->
each image's size) for every caller (:meth:`Eraser.predict`, the video path, ``ben bench``).
Loading from options is :mod:`ben_cli.eraser_build` (:meth:`Eraser.from_options` builds from
what it loads). Resizing to the model side (Lanczos, as the official pipeline) is
:func:`ben_cli.resize.resize_for_model`; the batch runner calls it in its reader threads.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ben_cli.compose import resize_alpha
from ben_cli.config import IMAGENET_MEAN, IMAGENET_STD, TrimapConfig
from ben_cli.device import (
    allow_recompiles,
    compile_disabled,
    compile_fallbacks,
    compile_model,
    dtype_name,
    inference_context,
    mark_compiled_step,
    resolve_devices,
    uses_cuda_graphs,
    weights_dtype,
)
from ben_cli.eraser_build import build_refiner, load_parts, resolve_options
from ben_cli.errors import BenWarning
from ben_cli.models.replica import copy_to_device, inference_copy
from ben_cli.options import InferenceOptions, check_resolution
from ben_cli.prediction import Flight, Prediction, predictions, result_parts
from ben_cli.refine import NoRefiner, RefineStage, trimap_from_prob
from ben_cli.refine.tiles import refine_full_resolution
from ben_cli.resize import resize_for_model
from ben_cli.staging import Download, Downloads, Uploads
from ben_cli.trimap import confidence_trimap

StageTimer = Callable[[str], contextlib.AbstractContextManager[Any]]
"""``timer(name)`` -> a context around one stage of :meth:`Eraser.finish` (names: :data:`FINISH_STAGES`)."""
FINISH_STAGES: tuple[str, ...] = ("trimap", "refine", "resize")
"""The stages of :meth:`Eraser.finish`, in order: the confidence trimap (when needed), the refine stage
(at the working side, and tiled at full size for images larger than it), alphas back to each image's size."""


class Eraser:
    """Batched inference: ``predict(images)`` -> one :class:`Prediction` per image."""

    def __init__(self, model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype,
                 resolution: int = 1024, trimap: TrimapConfig | None = None, compile: bool = False,
                 batch_size: int = 1, refiner: RefineStage | None = None, max_refine_side: int | None = None,
                 mean: Sequence[float] | torch.Tensor | None = None,
                 std: Sequence[float] | torch.Tensor | None = None,
                 settings: dict[str, Any] | None = None, autocast: bool = False) -> None:
        """``dtype``: the compute dtype. fp16/bf16 keep the model's weights in ``dtype`` (cast once
        here; the input is fed in ``dtype``, no op is wrapped), unless ``autocast``: then the weights
        stay float32 and ``torch.autocast`` runs the ops in ``dtype``. A model whose weights are not
        in the dtype kept is copied before the cast (the caller's model keeps its dtype). Base logits
        come back float32 either way. ``compile``: :func:`ben_cli.device.compile_model`.
        """
        prepare = getattr(model, "for_inference", None)
        model = prepare() if callable(prepare) else model
        self.device, self.dtype = device, dtype
        self.autocast = autocast and dtype != torch.float32
        self.model = inference_copy(model.eval(), device, weights_dtype(dtype, self.autocast))
        self.resolution = check_resolution(resolution)
        self.trimap_cfg = trimap or TrimapConfig()
        self.refiner: RefineStage = refiner or NoRefiner()
        self.max_refine_side = max_refine_side
        config = getattr(model, "config", None)
        mean = mean if mean is not None else getattr(config, "mean", IMAGENET_MEAN)
        std = std if std is not None else getattr(config, "std", IMAGENET_STD)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # torch.compile (inductor) fuses the elementwise work; it compiles once per
        # batch shape, so batches are padded to ``batch_size`` when it is on.
        self.batch_size = batch_size
        if compile and compile_disabled():
            warnings.warn("{opt:compile}: torch.compile is switched off in this process (TORCH_COMPILE_DISABLE); "
                          "the model runs eagerly", BenWarning, stacklevel=2)
            compile = False
        self.compiled = compile
        # CUDA graphs under compile (CUDA devices); off for replicas on threads (:meth:`without_cuda_graphs`)
        self.cuda_graphs = uses_cuda_graphs(device)
        self._forward = self._make_forward()
        self._input: torch.Tensor | None = None  # the compiled model's one input buffer (:meth:`_compiled_input`)
        # what the compiled model raises where dynamo would otherwise run it eagerly unnoticed
        self._compile_errors: tuple[type[BaseException], ...] = compile_fallbacks() if compile else ()
        self._fallback: torch.nn.Module | None = None  # fp32 weights, made on the first fp16 overflow
        # reused host buffers: batch k+1 is staged and uploaded while batch k's results download
        self._uploads, self._downloads = Uploads(device), Downloads(device)
        self.settings: dict[str, Any] = {
            "resolution": self.resolution, "device": str(device), "precision": dtype_name(dtype),
            "autocast": self.autocast, "refiner": self.refiner.name, **(settings or {}),
        }

    def _make_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model, or with ``compiled`` the model compiled for this device (its input-independent
        constants built first, so the graph only reads them)."""
        if not self.compiled:
            return self.model
        prepare = getattr(self.model, "prepare", None)
        if callable(prepare):
            prepare(self.resolution, dtypes=(weights_dtype(self.dtype, self.autocast), self.dtype))
        if uses_cuda_graphs(self.device) and not self.cuda_graphs:
            return compile_model(self.model, self.device, cuda_graphs=False)
        return compile_model(self.model, self.device)

    @classmethod
    def from_options(cls, options: InferenceOptions | str | Path | None = None, **changes: Any) -> Eraser:
        """Resolve device, dtype and weights (search or download) and load the model
        (:func:`ben_cli.eraser_build.load_parts`).

        ``options`` may also be a weights path; ``changes`` are applied to the options
        first (``Eraser.from_options(model="tiny", weights=path, device="cpu")``).
        """
        parts = load_parts(resolve_options(options, **changes), stacklevel=3)
        return cls(parts.model, device=parts.device, dtype=parts.dtype, resolution=parts.resolution,
                   compile=parts.compile, batch_size=parts.batch_size, refiner=parts.refiner,
                   max_refine_side=parts.max_refine_side, settings=parts.settings, autocast=parts.autocast)

    # ------------------------------------------------------------------ stages

    def preprocess(self, resized: Sequence[np.ndarray]) -> torch.Tensor:
        """Model-side images (S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1] on the device.

        The uint8 batch crosses to a GPU from a reused pinned buffer without blocking (4x fewer
        bytes than float32, :class:`ben_cli.staging.Uploads`); the conversion to float runs there.
        """
        return self._uploads.upload(resized).permute(0, 3, 1, 2).float().div_(255.0)

    def base(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 1] -> base logits (B, 1, S, S) float32 (normalised here, in float32,
        then fed in the weights' dtype). A batch whose fp16 forward overflowed runs again in fp32
        (:meth:`_overflow_fallback`): that check waits for the device; :meth:`launch` does not."""
        logits, overflowed = self._logits(rgb)
        if overflowed is not None and bool(overflowed):
            return self._overflow_fallback(self._normalise(rgb))
        return logits

    def _normalise(self, rgb: torch.Tensor) -> torch.Tensor:
        return (rgb - self.mean) / self.std

    def _logits(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`base` without waiting: the logits, and for fp16 weights a () bool tensor on the device,
        True when the forward overflowed (inf/NaN), else None."""
        normed = self._normalise(rgb)
        batch = normed.to(weights_dtype(self.dtype, self.autocast))
        n = batch.shape[0]
        if self.compiled:
            batch = self._compiled_input(batch)
        graphs = self.compiled and self.cuda_graphs
        with inference_context(self.device, self.dtype, autocast=self.autocast):
            if graphs:
                mark_compiled_step(self.device)
            try:
                raw = self._forward(batch)[:n]
            except self._compile_errors as e:
                self.use_eager(f"torch.compile gave up on {self.device} ({type(e).__name__})")
                return self._logits(rgb)
        logits = raw.float()
        overflowed = None
        if self.dtype == torch.float16 and not self.autocast:
            overflowed = ~torch.isfinite(logits).all()
        # A CUDA graph's output is overwritten by its next replay; float() returns a float32 tensor itself.
        return (logits.clone() if graphs and logits is raw else logits), overflowed

    def use_eager(self, why: str | None = None) -> None:
        """Run the model eagerly from now on, saying ``why`` once (a no-op when it is not compiled).

        For out of memory under ``compile`` (the default ``why``): the lowered batch size and the
        one-by-one retry would each be a new shape to compile, and under CUDA graphs a new memory
        pool while the old one stays allocated (``empty_cache`` cannot free it); and for a model
        that dynamo cannot compile whole. The input buffer is dropped.
        """
        if not self.compiled:
            return
        self.compiled = False
        self._forward = self.model
        self._input = None
        self._compile_errors = ()
        why = why or f"out of memory under compile on {self.device}"
        warnings.warn(f"{why}: it goes on without compile", BenWarning, stacklevel=2)

    def without_cuda_graphs(self) -> None:
        """Compile without CUDA graphs from now on (before :meth:`warm_up`), for a replica that runs on
        a thread of its own: torch replays a CUDA graph only on the thread that set up its CUDA-graph
        trees (pytorch/pytorch#123177), elsewhere it fails an assertion. Inductor's kernels stay."""
        if self.cuda_graphs:
            self.cuda_graphs = False
            self.settings["cuda_graphs"] = False
            if self.compiled:
                self._forward = self._make_forward()
                self._input = None

    def warm_up(self) -> None:
        """Compile now (one forward of a zero batch of the compiled shape), not on the first batch."""
        if self.compiled:
            side = self.resolution
            self.base(torch.zeros(self.batch_size, 3, side, side, device=self.device))

    def _compiled_input(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` (n, 3, S, S) copied into the one input the compiled model sees: a persistent,
        contiguous (batch_size, 3, S, S) buffer, rows past ``n`` zero.

        Static shapes compile once per shape *and* layout: the preprocessed batch has channels-last
        strides, so handing it over as it is, but a padded copy for a short last batch, compiled a
        second graph (and, under CUDA graphs, a second memory pool). A batch larger than the buffer
        is handed over contiguous (a new shape, compiled once)."""
        n = batch.shape[0]
        if n > self.batch_size:
            return batch.contiguous()
        want = (self.batch_size, *batch.shape[1:])
        if self._input is None or tuple(self._input.shape) != want or self._input.dtype != batch.dtype:
            self._input = torch.zeros(want, dtype=batch.dtype, device=batch.device)
        self._input[:n].copy_(batch)
        self._input[n:].zero_()
        return self._input

    def _overflow_fallback(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1, S, S) float32 of a batch whose fp16 forward overflowed (inf/NaN somewhere).

        fp16 tops out at 65504; weights whose activations exceed it give non-finite logits,
        which would silently become empty masks. Such a batch runs again in fp32 with a
        float32 copy of the weights (autocast would overflow too: it runs convolutions and
        matrix products in fp16), made on the first overflow and said once; batches that do
        not overflow keep the fast path. ``batch``: the normalised float32 input (B, 3, S, S).
        """
        if self._fallback is None:
            warnings.warn("fp16 overflowed in the model (non-finite output): such batches run again in fp32; "
                          "use {opt:precision} bf16 or fp32 for these weights", BenWarning, stacklevel=3)
            self._fallback = inference_copy(self.model, self.device, torch.float32)
        with inference_context(self.device, torch.float32):
            return self._fallback(batch).float()

    def trimap(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) logits -> confidence trimap (B, 1, S, S) uint8 (paper Algorithms 1-2); :meth:`finish`
        computes the same from their probability (:func:`ben_cli.refine.trimap_from_prob`)."""
        c = self.trimap_cfg
        return confidence_trimap(logits, min_gray=c.min_gray, t_low=c.t_low, t_high=c.t_high,
                                 t_min=c.t_min, t_max=c.t_max, step=c.step)

    def refine(self, rgb: torch.Tensor, prob: torch.Tensor, trimap: torch.Tensor | None) -> torch.Tensor:
        """The refine stage at the working resolution: -> alpha (B, 1, S, S) float in [0, 1]."""
        with torch.inference_mode():
            return self.refiner(rgb, prob, trimap)

    def refines_at_full_size(self, image: np.ndarray) -> bool:
        """True when ``image`` (H, W, 3) is refined at its own resolution (larger than the model side)."""
        return (self.refiner.name != "none" and max(image.shape[:2]) > self.resolution
                and getattr(self.refiner, "full_resolution", True))

    def refine_full_size(self, image: np.ndarray, prob: torch.Tensor) -> torch.Tensor:
        """One image (H, W, 3) uint8 and its base probability (1, 1, S, S) -> alpha (1, 1, H, W) float32,
        refined tile by tile at the image's size (long side capped at ``max_refine_side``)."""
        with torch.inference_mode():
            pixels = torch.from_numpy(image).to(self.device, non_blocking=True)
            return refine_full_resolution(pixels, prob, self.refiner, max_side=self.max_refine_side,
                                          trimap_config=self.trimap_cfg)

    def postprocess(self, alphas: Sequence[torch.Tensor], trimap: torch.Tensor | None,
                    sizes: Sequence[tuple[int, int]]) -> list[Prediction]:
        """Per-image alpha (1, 1, H, W) in [0, 1] and the working trimap -> uint8 arrays at each (H, W)."""
        arrays = self._download(alphas, trimap, sizes, None).arrays()
        return predictions(arrays, trimap is not None, self.refiner.name)

    def _download(self, alphas: Sequence[torch.Tensor], trimap: torch.Tensor | None,
                  sizes: Sequence[tuple[int, int]], overflowed: torch.Tensor | None) -> Download:
        """:func:`ben_cli.prediction.result_parts` in one download to the host (:class:`ben_cli.staging.Downloads`)."""
        return self._downloads.download(result_parts(alphas, trimap, sizes, overflowed))

    def finish(self, images: Sequence[np.ndarray], prob: torch.Tensor,
               rgb: torch.Tensor | Sequence[np.ndarray], *, want_trimap: bool = False,
               timer: StageTimer | None = None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """What follows the base model: probability -> trimap -> refine -> each image's size.

        ``images``: the images (H, W, 3) uint8 at their own sizes; ``prob``: their base probability
        (B, 1, S, S) float32 in [0, 1] on the device; ``rgb``: the same images at the working side,
        (B, 3, S, S) float in [0, 1] on the device (:meth:`preprocess`), or the model-side uint8
        images (S, S, 3), preprocessed here only when some image is refined at the working side.
        ``timer(name)``: a context entered around each of :data:`FINISH_STAGES` (for ``ben bench``).

        Returns each image's alpha (1, 1, H, W) float32 in [0, 1] and, with ``want_trimap``, the
        working trimap (B, 1, S, S) uint8 (else None).
        """
        timer = timer or _untimed
        with timer("trimap"):
            need = want_trimap or self.refiner.needs_trimap
            trimap = trimap_from_prob(prob, self.trimap_cfg) if need else None
        with timer("refine"):
            full = [self.refines_at_full_size(im) for im in images]
            alpha = prob
            if not all(full):
                alpha = self.refine(rgb if isinstance(rgb, torch.Tensor) else self.preprocess(rgb), prob, trimap)
            big = {i: self.refine_full_size(im, prob[i : i + 1]) for i, im in enumerate(images) if full[i]}
        with timer("resize"):
            alphas = [big[i] if i in big else resize_alpha(alpha[i : i + 1].float(), im.shape[:2])
                      for i, im in enumerate(images)]
        return alphas, trimap if want_trimap else None

    def _alphas(self, images: Sequence[np.ndarray], resized: Sequence[np.ndarray] | None,
                want_trimap: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Stages 1-4: each image's alpha (1, 1, H, W) float32 in [0, 1] and the working trimap (or None)."""
        if resized is None:
            resized = [resize_for_model(im, self.resolution) for im in images]
        rgb = self.preprocess(resized)
        prob = torch.sigmoid(self.base(rgb))
        return self.finish(images, prob, rgb, want_trimap=want_trimap)

    def predict(self, images: Sequence[np.ndarray], *, resized: Sequence[np.ndarray] | None = None,
                want_trimap: bool = False) -> list[Prediction]:
        """RGB uint8 images (H, W, 3) of any sizes -> alpha (and trimap) at each image's size.

        ``resized``: the same images already at the model side (the batch runner
        resizes in its reader threads). :meth:`collect` of :meth:`launch`.
        """
        if not images:
            return []
        return self.collect(self.launch(images, resized=resized, want_trimap=want_trimap))

    def launch(self, images: Sequence[np.ndarray], *, resized: Sequence[np.ndarray] | None = None,
               want_trimap: bool = False) -> Flight:
        """Queue a batch's whole device work (upload, base, trimap, refine, resize, one download) and
        return without waiting for it, so the caller can stage the next batch meanwhile.

        No host sync on the way where the refiner needs none (the tiled full-size refine of images
        larger than the working side reads which tiles hold gray pixels: one sync per such image).
        """
        if resized is None:
            resized = [resize_for_model(im, self.resolution) for im in images]
        rgb = self.preprocess(resized)
        logits, overflowed = self._logits(rgb)
        alphas, trimap = self.finish(images, torch.sigmoid(logits), rgb, want_trimap=want_trimap)
        download = self._download(alphas, trimap, [im.shape[:2] for im in images], overflowed)
        return Flight(images, resized, want_trimap, rgb, download)

    def collect(self, flight: Flight) -> list[Prediction]:
        """Wait for a launched batch (one wait) -> one :class:`Prediction` per image. A batch whose fp16
        forward overflowed runs again here, in fp32 (:meth:`_overflow_fallback`)."""
        arrays = flight.download.arrays()
        if not arrays[-1][0]:
            return predictions(arrays, flight.want_trimap, self.refiner.name)
        prob = torch.sigmoid(self._overflow_fallback(self._normalise(flight.rgb)))
        alphas, trimap = self.finish(flight.images, prob, flight.rgb, want_trimap=flight.want_trimap)
        return self.postprocess(alphas, trimap, [im.shape[:2] for im in flight.images])

    def predict_alpha(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """RGB uint8 images -> float32 alpha (H, W) in [0, 1] at each image's size (for evaluation)."""
        if not images:
            return []
        alphas, _ = self._alphas(images, None, False)
        return [a[0, 0].cpu().numpy() for a in alphas]

    # ------------------------------------------------------------------ several devices

    def replicate(self, device: torch.device | str) -> Eraser:
        """This Eraser on ``device``, for one model replica per device (:func:`load_erasers`).

        A replica holds: the model copied straight to ``device`` (the checkpoint is not read again;
        its caches of derived constants start empty, :func:`ben_cli.models.replica.copy_to_device`),
        the normalisation ``mean``/``std`` there, the refine stage's own copy for ``device``
        (:meth:`ben_cli.refine.RefineStage.replicate`: a network refiner is copied, a training-free one
        shared), the fp32 fallback model if one was made, and the same dtype, autocast, resolution,
        trimap settings, batch size, full-size cap and compile setting (compiled anew for ``device``);
        ``settings["device"]`` names ``device``. It shares nothing that a forward pass changes, so
        replicas may run in parallel threads.
        """
        device = torch.device(device)
        twin = type(self)(copy_to_device(self.model, device), device=device, dtype=self.dtype,
                          resolution=self.resolution, trimap=self.trimap_cfg, compile=self.compiled,
                          batch_size=self.batch_size, refiner=self.refiner.replicate(device),
                          max_refine_side=self.max_refine_side, mean=self.mean, std=self.std,
                          settings={**self.settings, "device": str(device)}, autocast=self.autocast)
        if not self.cuda_graphs:
            twin.without_cuda_graphs()
        if self._fallback is not None:
            twin._fallback = copy_to_device(self._fallback, device)
        return twin


def _untimed(name: str) -> contextlib.AbstractContextManager[None]:
    """The :data:`StageTimer` that times nothing."""
    return contextlib.nullcontext()


def load_erasers(options: InferenceOptions) -> list[Eraser]:
    """One Eraser per device of ``options.device`` (:func:`ben_cli.device.resolve_devices`).

    One device: ``[Eraser.from_options(options)]``. Several: the weights are read once, onto
    the first device, and :meth:`Eraser.replicate` copies the model to each other device;
    each Eraser's ``settings["device"]`` names its own device. With ``compile`` every replica
    is compiled here (:meth:`Eraser.warm_up`), under a recompile limit that fits them all; several
    replicas run on threads of their own, so they compile without CUDA graphs
    (:meth:`Eraser.without_cuda_graphs`), said once.
    """
    devices = resolve_devices(options.device)
    if options.compile:
        allow_recompiles(2 * len(devices) + 2)  # a graph per replica, a stride variant each, and a spare pair
    if len(devices) == 1:
        erasers = [Eraser.from_options(options)]
    else:
        first = Eraser.from_options(options.replace(device=str(devices[0])))
        if options.compile and first.cuda_graphs:
            first.without_cuda_graphs()
            warnings.warn(f"{{opt:compile}} on {len(devices)} devices: each replica runs on a thread of its own, "
                          "so they compile without CUDA graphs (torch replays a CUDA graph only on the thread "
                          "that recorded it)", BenWarning, stacklevel=2)
        erasers = [first, *(first.replicate(device) for device in devices[1:])]
    for eraser in erasers:  # with --compile, each replica compiles here, one after another, before any batch
        eraser.warm_up()
    return erasers


__all__ = ["FINISH_STAGES", "Eraser", "Flight", "Prediction", "StageTimer", "build_refiner", "inference_copy",
           "load_erasers"]
