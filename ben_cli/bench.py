"""``ben bench``: where the time of ``ben erase`` goes, measured on this machine in one run.

:func:`run_bench` loads the model once (:meth:`ben_cli.pipeline.Eraser.from_options`) and,
for each batch size, measures

- every stage, batch by batch on one thread (no overlap), over all the images: ``decode``
  (:func:`ben_cli.io.read_image`), ``resize`` (Lanczos to the model side), ``base``
  (upload, normalise, the network; logits), ``trimap`` (confidence trimap; timed even
  when the refiner does not use it), ``refiner`` (sigmoid and the refine stage, tiled at
  full size for images larger than the model side), ``compose`` (alpha back to each
  image's size, to the host, and the RGBA cutout with decontamination), ``encode`` (PNG
  bytes) and ``write`` (atomic write); CUDA is synchronised around each device stage;
- the whole ``ben erase`` path: the local engine (reader and writer threads, the same
  loaded model) over all the images into a temporary folder, and the latency of one
  image alone through it;
- the peak memory of the first timed stage pass (:class:`PeakMemory`: CUDA allocations, or
  the process's peak RSS on the CPU).

One device is measured: the first when ``--device`` names several.

Then, once, an **official-style** path in the same process: per image, Pillow decode,
Lanczos resize on the CPU, batch 1 through the same network (eager, fp32 weights) under
fp16 autocast on CUDA (fp32 elsewhere), sigmoid, bilinear resize back, min-max stretch, ``putalpha`` and
Pillow's PNG save, as the official BEN2 code does. Every speed-up is a ratio to it.
It runs our network (the official code's own is slower at batch 1), so the ratios
understate the gain over the official code.

And, in a subprocess, the start-up time of ``ben erase <one image> <out.png>`` with the
same model flags: until the output exists, split into process start and imports, model
loading, and the first image (read, forward, write), from the run's ``--report``.

Images are generated (synthetic photo-like JPEGs, :func:`make_images`) or taken from a
folder. Numbers are medians over ``repeats`` passes after ``warmup`` untimed passes.

JSON schema (:meth:`BenchReport.to_json`, ``"schema": "ben-bench/1"``); a *measure* is
``{"images": N, "seconds": s, "ms_per_image": 1000 s / N, "images_per_s": N / s}``:

- ``settings``: ``model``, ``weights``, ``device``, ``device_name``, ``torch``,
  ``version`` (ben), ``precision``, ``autocast`` (fp16/bf16 ops under autocast with fp32
  weights, instead of weights cast once), ``refiner``, ``resolution``, ``compile``,
  ``batch_sizes``, ``images``, ``image_size`` (``"WxH"``, or ``"folder"``), ``input``
  (the folder or None), ``repeats``, ``warmup``, ``workers`` (reader and writer threads
  of the erase path), ``threads`` (torch intra-op threads), ``memory_kind``
  (:data:`MEMORY_KINDS`);
- ``load_seconds``: loading the model in this process;
- ``rows``: one per batch size, in the order given: ``batch_size``, ``stages`` (a measure
  per name of :data:`STAGES`, in that order), ``stages_ms_per_image`` (their sum),
  ``erase`` (a measure of the whole path), ``latency_ms`` (one image alone through
  the erase path), ``peak_memory_bytes``, ``vs_official`` (``{"erase": erase images/s
  over official-style images/s, "base": base stage images/s over the official-style
  forward's}``, or None without the official-style path);
- ``official``: None, or ``{"precision": "fp16-autocast" | "fp32", "total": measure,
  "model": measure}`` (``model``: the synchronised forward and sigmoid alone);
- ``startup``: None, or ``{"first_output_s", "exit_s", "import_s", "load_s",
  "first_image_s"}`` (the last three None when the run's report could not be read).
"""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ben_cli.errors import BenError, BenWarning, InputError, OptionError
from ben_cli.options import InferenceOptions

SCHEMA = "ben-bench/1"
STAGES: tuple[str, ...] = ("decode", "resize", "base", "trimap", "refiner", "compose", "encode", "write")
"""The stages timed per batch size, in pipeline order."""
MEMORY_KINDS = {
    "cuda_max_allocated": "torch.cuda.max_memory_allocated after reset_peak_memory_stats (weights included)",
    "process_peak_rss": "the process's peak RSS (VmHWM, reset through /proc/self/clear_refs before the stages)",
    "process_max_rss": "the process's lifetime peak RSS (getrusage ru_maxrss; it cannot be reset here)",
}
"""How ``peak_memory_bytes`` was measured, by ``settings["memory_kind"]``."""
DEFAULT_IMAGES = {"cuda": 64, "other": 4}
"""Images generated when ``--images`` is not given: enough batches for a steady rate on a GPU, few on a CPU."""
DEFAULT_REPEATS = {"cuda": 3, "other": 1}
"""Timed passes when ``--repeats`` is not given."""
DEFAULT_SIZE = (1500, 1000)


class BenchError(BenError):
    """The benchmark cannot run or a measured path failed (no usable image, the erase path failed)."""


# --------------------------------------------------------------------------- options


def parse_batch_sizes(values: Sequence[str | int]) -> tuple[int, ...]:
    """``["1,8", "16"]`` -> ``(1, 8, 16)``: repeated and comma-separated values, in order, duplicates dropped."""
    sizes: list[int] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                n = int(part)
            except ValueError:
                raise OptionError("batch_size", f"must be whole numbers (1,8,16), got {part!r}") from None
            if n < 1:
                raise OptionError("batch_size", f"must be at least 1, got {n}")
            if n not in sizes:
                sizes.append(n)
    if not sizes and values:
        raise OptionError("batch_size", "give at least one batch size (1,8,16)")
    return tuple(sizes)


def parse_size(text: str) -> tuple[int, int]:
    """``"1500x1000"`` -> ``(1500, 1000)`` (width, height), each at least 16 pixels."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise OptionError("size", f"must be WIDTHxHEIGHT (1500x1000), got {text!r}") from None
    if w < 16 or h < 16:
        raise OptionError("size", f"must be at least 16x16 pixels, got {text!r}")
    return w, h


@dataclass(frozen=True)
class BenchOptions:
    """What :func:`run_bench` measures; the model's own settings are an :class:`InferenceOptions`.

    ``batch_sizes``: one row each (empty: the options' ``batch_size``). ``images``: how many
    JPEGs of ``size`` (W, H) to generate (None: :data:`DEFAULT_IMAGES`), or at most how many
    to take from ``input`` (a folder, walked recursively; None: all). ``repeats``: timed
    passes, the median is reported (None: :data:`DEFAULT_REPEATS`); ``warmup``: untimed
    passes first. ``official``: also time the official-style
    path; ``startup``: also time ``ben erase`` on one image in a subprocess. ``workers``:
    reader and writer threads of the erase path (None: one per core, at most 8).
    ``work_dir``: where the images and outputs go (None: a temporary folder, removed after).
    """

    batch_sizes: tuple[int, ...] = ()
    images: int | None = None
    size: tuple[int, int] = DEFAULT_SIZE
    input: Path | None = None
    repeats: int | None = None
    warmup: int = 1
    official: bool = True
    startup: bool = True
    workers: int | None = None
    seed: int = 0
    work_dir: Path | None = None

    def for_device(self, device: torch.device) -> BenchOptions:
        """A copy with ``images`` (when generated) and ``repeats`` defaulted for ``device``."""
        kind = "cuda" if device.type == "cuda" else "other"
        images = self.images if self.images is not None or self.input is not None else DEFAULT_IMAGES[kind]
        repeats = self.repeats if self.repeats is not None else DEFAULT_REPEATS[kind]
        return replace(self, images=images, repeats=repeats)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "batch_sizes", parse_batch_sizes(self.batch_sizes))
        if isinstance(self.size, str):
            set_(self, "size", parse_size(self.size))
        elif len(self.size) != 2 or min(self.size) < 16:
            raise OptionError("size", f"must be (width, height), each at least 16, got {self.size!r}")
        for name, low in (("images", 1), ("repeats", 1), ("warmup", 0), ("workers", 1)):
            value = getattr(self, name)
            if value is None and name in ("images", "repeats", "workers"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OptionError(name, f"must be a whole number of at least {low}, got {value!r}")
        for name in ("input", "work_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                set_(self, name, Path(value))
        if self.input is not None and not self.input.is_dir():
            raise OptionError("input", f"{self.input} is not a folder" if self.input.exists()
                              else f"folder not found: {self.input}")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Measure:
    """``images`` processed in ``seconds`` (the median pass)."""

    images: int
    seconds: float

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / self.images

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def to_json(self) -> dict[str, float | int]:
        return {"images": self.images, "seconds": self.seconds, "ms_per_image": self.ms_per_image,
                "images_per_s": self.images_per_s}


@dataclass(frozen=True)
class BatchRow:
    """The measurements at one batch size."""

    batch_size: int
    stages: dict[str, Measure]
    erase: Measure
    latency_ms: float
    peak_memory_bytes: int

    @property
    def stages_ms_per_image(self) -> float:
        return sum(m.ms_per_image for m in self.stages.values())


@dataclass(frozen=True)
class Official:
    """The official-style path: ``total`` (decode to saved PNG) and ``model`` (forward and sigmoid alone)."""

    precision: str
    total: Measure
    model: Measure


@dataclass(frozen=True)
class Startup:
    """``ben erase <one image> <out.png>`` in a subprocess, seconds from process start.

    ``first_output_s``: until the output exists; ``exit_s``: until the process exits.
    From the run's report: ``load_s`` (model loading), ``first_image_s`` (after loading,
    to the end of the run) and ``import_s`` (the rest before the output: interpreter,
    imports, planning); None when the report could not be read.
    """

    first_output_s: float
    exit_s: float
    import_s: float | None = None
    load_s: float | None = None
    first_image_s: float | None = None


@dataclass(frozen=True)
class BenchReport:
    """Everything :func:`run_bench` measured; :meth:`to_json` gives the documented schema."""

    settings: dict[str, Any]
    load_seconds: float
    rows: list[BatchRow]
    official: Official | None = None
    startup: Startup | None = None

    def vs_official(self, row: BatchRow) -> dict[str, float] | None:
        """Speed-ups of ``row`` over the official-style path: the erase path and the base stage."""
        if self.official is None:
            return None
        return {"erase": row.erase.images_per_s / self.official.total.images_per_s,
                "base": row.stages["base"].images_per_s / self.official.model.images_per_s}

    def to_json(self) -> dict[str, Any]:
        rows = [{"batch_size": r.batch_size, "stages": {k: m.to_json() for k, m in r.stages.items()},
                 "stages_ms_per_image": r.stages_ms_per_image, "erase": r.erase.to_json(),
                 "latency_ms": r.latency_ms, "peak_memory_bytes": r.peak_memory_bytes,
                 "vs_official": self.vs_official(r)} for r in self.rows]
        official = None
        if self.official is not None:
            official = {"precision": self.official.precision, "total": self.official.total.to_json(),
                        "model": self.official.model.to_json()}
        startup = None if self.startup is None else dict(vars(self.startup))
        return {"schema": SCHEMA, "settings": self.settings, "load_seconds": self.load_seconds, "rows": rows,
                "official": official, "startup": startup}

    def dumps(self) -> str:
        """:meth:`to_json` as indented JSON text."""
        return json.dumps(self.to_json(), indent=2)


# --------------------------------------------------------------------------- images


def make_images(folder: Path, count: int, size: tuple[int, int] = DEFAULT_SIZE, *, seed: int = 0,
                quality: int = 90) -> list[Path]:
    """Write ``count`` synthetic photo-like JPEGs of ``size`` (W, H) into ``folder``; returns their paths.

    Each is a smooth random background, a subject (an ellipse of another smooth texture)
    and mild sensor noise, so JPEG files and decoding cost about what photos do.
    """
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    paths = []
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        back, subject = _smooth_texture(rng, size, 96), _smooth_texture(rng, size, 24)
        yy, xx = np.ogrid[0:h, 0:w]
        cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
        ry, rx = rng.uniform(0.25, 0.4) * h, rng.uniform(0.15, 0.3) * w
        inside = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0)[..., None]
        pixels = np.where(inside, subject, back) + rng.normal(0.0, 4.0, (h, w, 1)).astype(np.float32)
        path = folder / f"bench_{i:04d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=quality)
        paths.append(path)
    return paths


def _smooth_texture(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255]: random colours on a grid ``cells`` pixels apart, bicubic in between."""
    w, h = size
    small = rng.integers(0, 256, (max(2, h // cells), max(2, w // cells), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def usable_images(paths: Sequence[Path], limit: int | None = None) -> list[Path]:
    """The first ``limit`` (None: all) of ``paths`` that decode; each one that does not is warned about."""
    import warnings

    from ben_cli.io import read_image

    ok: list[Path] = []
    for p in paths:
        if limit is not None and len(ok) >= limit:
            break
        try:
            read_image(p)
        except InputError as e:
            warnings.warn(f"{p}: {e.reason} (left out of the benchmark)", BenWarning, stacklevel=2)
            continue
        ok.append(p)
    return ok


# --------------------------------------------------------------------------- device helpers


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA, MPS); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    """The GPU's name, else the CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _proc_status_kb(key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _maxrss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


class PeakMemory:
    """The peak memory of a block of work on ``device``; ``kind`` is a key of :data:`MEMORY_KINDS`.

    Both include the weights and whatever the process holds. CUDA: ``max_memory_allocated``
    after ``reset_peak_memory_stats``. CPU on Linux: the process's peak RSS (VmHWM), reset
    through ``/proc/self/clear_refs`` first; elsewhere ``getrusage``'s lifetime peak. Freed CPU
    memory stays in the heap (:func:`ben_cli.device.keep_cpu_memory`), so a CPU peak never
    drops below an earlier batch size's.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else (
            "process_peak_rss" if _can_reset_hwm() else "process_max_rss")
        self.bytes = 0

    @contextlib.contextmanager
    def measure(self) -> Iterator[PeakMemory]:
        if self.kind == "cuda_max_allocated":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield self
            synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.kind == "process_peak_rss":
            _reset_hwm()
            yield self
            self.bytes = (_proc_status_kb("VmHWM") or 0) * 1024
        else:
            yield self
            self.bytes = _maxrss_bytes()


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux 4.0+: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _can_reset_hwm() -> bool:
    return _proc_status_kb("VmHWM") is not None and _reset_hwm()


# --------------------------------------------------------------------------- timing


class _Clock:
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


def _median_measure(images: int, passes: Sequence[float]) -> Measure:
    return Measure(images, max(statistics.median(passes), 1e-9))


def stage_pass(eraser: Any, paths: Sequence[Path], batch_size: int, out_dir: Path,
               memory: PeakMemory | None = None) -> dict[str, float]:
    """One pass of every stage over ``paths``, batch by batch: seconds per name of :data:`STAGES`.

    Each batch is decoded, resized, run through the device stages (the Eraser's own
    methods, in :meth:`~ben_cli.pipeline.Eraser.predict`'s order), composed, encoded and
    written (``out_dir/0000.png`` ...) before the next is read, on this thread; only one
    batch is held at a time. ``memory``: measures the peak over the whole pass.
    """
    from ben_cli.compose import resize_alpha
    from ben_cli.io import atomic_write_bytes, encode_image, read_image
    from ben_cli.options import OutputOptions
    from ben_cli.output import render
    from ben_cli.resize import resize_for_model

    clock = _Clock(eraser.device)
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
            with clock.stage("trimap", device_work=True):
                trimap = eraser.trimap(logits)
            with clock.stage("refiner", device_work=True):
                prob = torch.sigmoid(logits)
                full = [eraser.refines_at_full_size(im) for im in rgbs]
                alpha = prob if all(full) else eraser.refine(rgb, prob, trimap)
                big = {i: eraser.refine_full_size(im, prob[i : i + 1]) for i, im in enumerate(rgbs) if full[i]}
            with clock.stage("compose", device_work=True):
                alphas = [big[i] if i in big else resize_alpha(alpha[i : i + 1].float(), im.shape[:2])
                          for i, im in enumerate(rgbs)]
                preds = eraser.postprocess(alphas, None, [im.shape[:2] for im in rgbs])
                cutouts = [render("cutout", im, pred, finish, device=eraser.device) for im, pred in zip(batch, preds)]
            with clock.stage("encode"):
                data = [encode_image(c, "png", icc_profile=im.icc_profile, source=Path(im.path).name)
                        for c, im in zip(cutouts, batch)]
            with clock.stage("write"):
                for i, d in enumerate(data, start):
                    atomic_write_bytes(out_dir / f"{i:04d}.png", d)
    return clock.seconds


def erase_pass(eraser: Any, paths: Sequence[Path], batch_size: int, out_dir: Path, workers: int) -> float:
    """Seconds of the local engine of ``ben erase`` over ``paths`` (cutouts into ``out_dir``) with the
    loaded ``eraser``; raises :class:`BenchError` when an image fails."""
    from ben_cli.engines import Interrupted
    from ben_cli.engines.local import BatchRun
    from ben_cli.plan import plan_run

    jobs = plan_run([str(p) for p in paths], out_dir, ("cutout",)).jobs
    run = BatchRun(jobs, lambda: eraser, batch_size=batch_size, overwrite=True, workers=workers)
    t = time.perf_counter()
    summary = run.execute()
    seconds = time.perf_counter() - t
    if summary.interrupted:
        raise Interrupted(summary.interrupted)
    failed = [r for r in summary.results if r.status != "done"]
    if failed:
        raise BenchError(f"the erase path failed on {failed[0].input}: {failed[0].error}")
    return seconds


def official_image(model: torch.nn.Module, path: Path, out: Path, *, device: torch.device, side: int,
                   mean: torch.Tensor, std: torch.Tensor) -> float:
    """One image the official BEN2 way; returns the seconds of the forward and sigmoid (synchronised).

    Pillow decode and RGB, Lanczos to ``side`` on the CPU, ``ToTensor`` and normalisation
    (fp16 on CUDA, as the official transform), batch 1 under fp16 autocast on CUDA (fp32
    elsewhere), sigmoid, bilinear back to the image's size, min-max stretch to uint8,
    ``putalpha``, Pillow PNG save. ``mean``, ``std``: (3, 1, 1) float32 on the CPU.
    """
    cuda = device.type == "cuda"
    with Image.open(path) as im:
        original = im.convert("RGB")
    w, h = original.size
    small = original.resize((side, side), resample=Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.array(small)).permute(2, 0, 1).float().div_(255.0)
    if cuda:
        x = x.half()
    x = ((x - mean.to(x.dtype)) / std.to(x.dtype)).unsqueeze(0).to(device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else contextlib.nullcontext()
    synchronize(device)
    t = time.perf_counter()
    with torch.inference_mode(), autocast:
        prob = torch.sigmoid(model(x))
    synchronize(device)
    forward = time.perf_counter() - t
    with torch.inference_mode():
        alpha = torch.nn.functional.interpolate(prob.float(), size=(h, w), mode="bilinear")[0, 0]
        lo, hi = alpha.min(), alpha.max()
        alpha = (alpha - lo) / (hi - lo).clamp_min(1e-12)
        mask = (alpha * 255).cpu().numpy().astype(np.uint8)
    original.putalpha(Image.fromarray(mask))
    original.save(out)
    return forward


def official_model(eraser: Any) -> torch.nn.Module:
    """The eager fp32 network of ``eraser`` (a copy cast to fp32 when its weights are not fp32)."""
    from ben_cli.pipeline import inference_copy

    return inference_copy(eraser.model, eraser.device, torch.float32).eval()


def measure_official(eraser: Any, paths: Sequence[Path], out_dir: Path, *, repeats: int, warmup: int) -> Official:
    """The official-style path over ``paths``: median of ``repeats`` passes after ``warmup`` untimed images."""
    model = official_model(eraser)
    device = eraser.device
    mean, std = (t.detach().float().cpu().view(3, 1, 1) for t in (eraser.mean, eraser.std))
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(i: int, p: Path) -> float:
        return official_image(model, p, out_dir / f"{i:04d}.png", device=device, side=eraser.resolution,
                              mean=mean, std=std)

    for i in range(warmup):
        one(i, paths[i % len(paths)])
    totals, forwards = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        forwards.append(sum(one(i, p) for i, p in enumerate(paths)))
        totals.append(time.perf_counter() - t)
    return Official("fp16-autocast" if device.type == "cuda" else "fp32", _median_measure(len(paths), totals),
                    _median_measure(len(paths), forwards))


def startup_args(options: InferenceOptions) -> list[str]:
    """The ``ben erase`` flags that rebuild ``options``' model in a subprocess."""
    args = ["--model", options.model, "--device", options.device, "--precision", options.precision.value,
            "--resolution", str(options.resolution), "--refiner", options.refiner.value]
    if options.batch_size is not None:
        args += ["--batch-size", str(options.batch_size)]
    if options.weights is not None:
        args += ["--weights", str(options.weights)]
    if options.refiner_weights is not None:
        args += ["--refiner-weights", str(options.refiner_weights)]
    if options.compile:
        args.append("--compile")
    if getattr(options, "autocast", False):
        args.append("--autocast")
    if options.max_refine_side is not None:
        args += ["--max-refine-side", str(options.max_refine_side)]
    return args


def measure_startup(options: InferenceOptions, image: Path, work: Path, *, timeout: float = 1800.0,
                    env: dict[str, str] | None = None) -> Startup:
    """``python -m ben_cli erase IMAGE OUT.png`` with ``options``' model flags, timed from process start.

    Raises :class:`BenchError` when the subprocess fails or produces no output.
    """
    work.mkdir(parents=True, exist_ok=True)
    out, report = work / "startup.png", work / "startup.json"
    for p in (out, report):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "ben_cli", "erase", str(image), str(out), *startup_args(options),
           "--report", str(report), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    first: float | None = None
    try:
        while proc.poll() is None:
            if first is None and out.exists():
                first = time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise BenchError(f"start-up run took over {timeout:.0f} s")
            time.sleep(0.005)
        exit_s = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    if proc.returncode != 0 or not out.exists():
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {proc.returncode}"
        raise BenchError(f"start-up run of ben erase failed: {last}")
    first = exit_s if first is None else first
    try:
        data = json.loads(report.read_text())
        load, run = float(data["run"]["load_seconds"]), float(data["totals"]["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return Startup(first, exit_s)
    return Startup(first, exit_s, max(0.0, first - load - run), load, run)


# --------------------------------------------------------------------------- the benchmark


@dataclass
class _Context:
    """What :func:`run_bench` passes between its steps."""

    options: InferenceOptions
    bench: BenchOptions
    paths: list[Path]
    work: Path
    workers: int
    say: Callable[[str], None]


def _images(bench: BenchOptions, work: Path) -> list[Path]:
    if bench.input is None:
        return make_images(work / "images", bench.images or DEFAULT_IMAGES["other"], bench.size, seed=bench.seed)
    from ben_cli.io import find_images

    paths = usable_images(find_images(bench.input), bench.images)
    if not paths:
        raise BenchError(f"no usable image in {bench.input}")
    return paths


def _row(eraser: Any, ctx: _Context, batch_size: int) -> BatchRow:
    bench, paths, work = ctx.bench, ctx.paths, ctx.work
    eraser.batch_size = batch_size  # compiled models pad each batch to it (one shape)
    stage_dir, erase_dir = work / f"stages_b{batch_size}", work / f"erase_b{batch_size}"
    stage_dir.mkdir(parents=True, exist_ok=True)
    ctx.say(f"batch {batch_size}: stages")
    for _ in range(bench.warmup):
        stage_pass(eraser, paths[:batch_size], batch_size, stage_dir)
    memory = PeakMemory(eraser.device)
    passes = [stage_pass(eraser, paths, batch_size, stage_dir, memory if i == 0 else None)
              for i in range(bench.repeats)]
    stages = {name: _median_measure(len(paths), [p[name] for p in passes]) for name in STAGES}
    ctx.say(f"batch {batch_size}: erase path")
    if bench.warmup:
        erase_pass(eraser, paths[:batch_size], batch_size, work / "erase_warmup", ctx.workers)
    erase = _median_measure(len(paths), [erase_pass(eraser, paths, batch_size, erase_dir, ctx.workers)
                                         for _ in range(bench.repeats)])
    latency = statistics.median(erase_pass(eraser, paths[:1], batch_size, work / "latency", ctx.workers)
                                for _ in range(bench.repeats))
    return BatchRow(batch_size, stages, erase, 1000.0 * latency, memory.bytes)


def run_bench(options: InferenceOptions | None = None, bench: BenchOptions | None = None, *,
              on_step: Callable[[str], None] | None = None) -> BenchReport:
    """Measure ``ben erase`` with ``options``' model on this machine (see the module docstring).

    ``on_step(message)`` hears each step as it starts (for a progress display).
    Raises :class:`BenError` subclasses for what cannot run (device, weights, images).
    """
    from ben_cli.device import resolve_device
    from ben_cli.options import default_workers
    from ben_cli.pipeline import Eraser
    from ben_cli.version import __version__

    options = options or InferenceOptions()
    measured = single_device(options)
    bench = (bench or BenchOptions()).for_device(resolve_device(measured.device))
    batch_sizes = bench.batch_sizes or (options.batch_size_for(resolve_device(measured.device).type),)
    say = on_step or (lambda message: None)
    with contextlib.ExitStack() as stack:
        if bench.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ben-bench-")))
        else:
            work = bench.work_dir
            work.mkdir(parents=True, exist_ok=True)
        say("preparing images")
        paths = _images(bench, work)
        ctx = _Context(options, bench, paths, work, bench.workers or default_workers(), say)
        say("loading the model")
        t = time.perf_counter()
        eraser = Eraser.from_options(measured.replace(batch_size=batch_sizes[0]))
        load_seconds = time.perf_counter() - t
        device, resolved = eraser.device, dict(eraser.settings)
        rows = [_row(eraser, ctx, b) for b in batch_sizes]
        official = None
        if bench.official:
            say("official-style path")
            official = measure_official(eraser, paths, work / "official", repeats=bench.repeats, warmup=bench.warmup)
        del eraser
        if device.type == "cuda":
            torch.cuda.empty_cache()  # leave the device to the start-up run
        startup = None
        if bench.startup:
            say("start-up of ben erase (subprocess)")
            startup = measure_startup(options.replace(batch_size=batch_sizes[0]), paths[0], work / "startup")
        settings = {
            "model": resolved.get("model", options.model), "weights": resolved.get("weights"),
            "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "version": __version__, "precision": resolved.get("precision"),
            "autocast": bool(resolved.get("autocast", False)), "refiner": resolved.get("refiner"),
            "resolution": options.resolution, "compile": options.compile, "batch_sizes": list(batch_sizes),
            "images": len(paths),
            "image_size": "folder" if bench.input is not None else f"{bench.size[0]}x{bench.size[1]}",
            "input": None if bench.input is None else str(bench.input), "repeats": bench.repeats,
            "warmup": bench.warmup, "workers": ctx.workers, "threads": torch.get_num_threads(),
            "memory_kind": PeakMemory(device).kind,
        }
    return BenchReport(settings, load_seconds, rows, official, startup)


def single_device(options: InferenceOptions) -> InferenceOptions:
    """``options`` on one device: the first of several (``--device cuda:0,cuda:2``, or ``auto`` on a
    machine with several GPUs), with a warning; ``ben bench`` measures one device."""
    import warnings

    try:
        from ben_cli.device import resolve_devices
    except ImportError:  # no multi-device support in this tree
        return options
    devices = resolve_devices(options.device)
    if len(devices) == 1:
        return options
    warnings.warn(f"ben bench measures one device: {devices[0]} (of {len(devices)} in --device {options.device})",
                  BenWarning, stacklevel=2)
    return options.replace(device=str(devices[0]))


def check_json_path(path: Path | None) -> None:
    """UsageError up front when ``--json PATH`` could not be written (``-`` is stdout)."""
    from ben_cli.io import check_output_file

    if path is not None and str(path) != "-":
        check_output_file(path, "--json", "bench.json")


__all__ = ["MEMORY_KINDS", "STAGES", "BatchRow", "BenchError", "BenchOptions", "BenchReport", "Measure", "Official",
           "PeakMemory", "Startup", "check_json_path", "device_name", "make_images", "measure_official",
           "measure_startup", "parse_batch_sizes", "parse_size", "run_bench", "stage_pass"]

