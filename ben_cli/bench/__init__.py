"""``ben bench``: where the time of ``ben erase`` goes, measured on this machine in one run.

:func:`run_bench` loads the model once (:meth:`ben_cli.pipeline.Eraser.from_options`) and,
for each batch size, measures

- every stage (:mod:`.stages`), batch by batch on one thread (no overlap), over all the images: ``decode``
  (:func:`ben_cli.io.read_image`), ``resize`` (Lanczos to the model side), ``base``
  (upload, normalise, the network; logits), ``trimap`` (confidence trimap; timed even
  when the refiner does not use it), ``refiner`` (sigmoid and the refine stage, tiled at
  full size for images larger than the model side), ``compose`` (alpha back to each
  image's size, to the host, and the RGBA cutout with decontamination), ``encode`` (PNG
  bytes) and ``write`` (atomic write); CUDA is synchronised around each device stage; the
  stages after the base model are :meth:`ben_cli.pipeline.Eraser.finish`'s own, timed through its hook;
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

One module per concept: :mod:`.options` (what is measured), :mod:`.report` (results and the schema),
:mod:`.images`, :mod:`.memory`, :mod:`.stages`, :mod:`.erase`, :mod:`.official`, :mod:`.startup`,
:mod:`.machine` (the device's name) and :mod:`.run` (the whole benchmark).
"""

from ben_cli.bench.erase import erase_pass
from ben_cli.bench.images import make_images, usable_images
from ben_cli.bench.machine import device_name
from ben_cli.bench.memory import MEMORY_KINDS, PeakMemory
from ben_cli.bench.official import measure_official, official_image, official_model
from ben_cli.bench.options import (
    DEFAULT_IMAGES,
    DEFAULT_REPEATS,
    DEFAULT_SIZE,
    BenchOptions,
    check_json_path,
    parse_batch_sizes,
    parse_size,
    single_device,
)
from ben_cli.bench.report import SCHEMA, BatchRow, BenchError, BenchReport, Measure, Official, Startup
from ben_cli.bench.run import run_bench
from ben_cli.bench.stages import STAGES, stage_pass
from ben_cli.bench.startup import measure_startup, startup_args

__all__ = ["DEFAULT_IMAGES", "DEFAULT_REPEATS", "DEFAULT_SIZE", "MEMORY_KINDS", "SCHEMA", "STAGES", "BatchRow",
           "BenchError", "BenchOptions", "BenchReport", "Measure", "Official", "PeakMemory", "Startup",
           "check_json_path", "device_name", "erase_pass", "make_images", "measure_official", "measure_startup",
           "official_image", "official_model", "parse_batch_sizes", "parse_size", "run_bench", "single_device",
           "stage_pass", "startup_args", "usable_images"]
