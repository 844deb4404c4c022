"""Inference options: one frozen, validated object that every command builds once.

Validation here is syntax and range only (no torch import): whether a device
exists is decided by :mod:`ben_cli.device` when the :class:`~ben_cli.pipeline.Eraser`
is built. Errors name the parameter (``resolution``); the CLI adds the flag
(``--resolution``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from ben_cli.errors import OptionError


class Precision(str, Enum):
    """Compute precision; ``auto`` is fp16 on CUDA and MPS, fp32 on the CPU."""

    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Refiner(str, Enum):
    """Which refiner re-estimates the gray band of the confidence trimap."""

    auto = "auto"
    net = "net"
    matting = "matting"
    none = "none"


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$|^(cpu|mps|cuda(:\d+)?)(,(cpu|mps|cuda(:\d+)?))+$")
"""One device, or a comma-separated list of them (one model replica each; see
:func:`ben_cli.device.resolve_devices`)."""


def _enum(cls: type[Enum], value: object, param: str):
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise OptionError(param, f"unknown {param} {value!r} (use {choices})") from None


def check_resolution(resolution: int) -> int:
    """The model side: a multiple of 128, at least 256."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 256 or resolution % 128:
        raise OptionError("resolution", f"must be a multiple of 128 and at least 256, got {resolution}")
    return resolution


DEFAULT_BATCH_SIZES = {"cuda": 8, "mps": 4, "cpu": 1}
"""Images per forward when ``batch_size`` is not given. The CPU runs one at a time: at 1024
a batch of two took 12% longer per image than two single images (more memory touched, 2.3x the
system time); a GPU is fed 8 at a time (halved automatically where that runs out of memory)."""


def cpu_count() -> int:
    """CPU cores this process may use (affinity where the OS has it, else the core count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Reader and writer threads each: one per core, at most 8."""
    return min(8, cpu_count())



def parse_colour(text: str, *, param: str = "background") -> tuple[int, int, int]:
    """An RGB colour from ``white`` (any CSS colour name), ``#00ff00``, ``#0f0`` or ``0,255,0``.

    Raises :class:`~ben_cli.errors.OptionError` (a ``UsageError``) naming ``param`` for anything else.
    """
    from PIL import ImageColor

    value = str(text).strip().lower()
    if "," in value:
        parts = [p.strip() for p in value.split(",")]
        if len(parts) == 3 and all(p.isdigit() and int(p) <= 255 for p in parts):
            r, g, b = (int(p) for p in parts)
            return r, g, b
        raise OptionError(param, f"bad colour {text!r}: give three integers 0..255, like 0,255,0")
    try:
        rgb = ImageColor.getrgb(value)
    except ValueError:
        raise OptionError(param, f"bad colour {text!r} (use a name like white, #00ff00 or 0,255,0)") from None
    if len(rgb) != 3:
        raise OptionError(param, f"bad colour {text!r}: give an opaque colour (no alpha)")
    return rgb[0], rgb[1], rgb[2]

@dataclass(frozen=True)
class InferenceOptions:
    """What the model step of ``ben erase``, ``ben trimap`` and ``ben eval --data`` runs with.

    Built once per command; ``__post_init__`` validates and normalises every
    field, so an instance is always valid. ``weights=None`` searches for the
    file of ``model`` (see ``ben weights``). ``precision`` fp16/bf16 (and ``auto``
    on CUDA) keep the model's weights in that dtype; ``autocast`` keeps them in
    float32 and runs the ops under ``torch.autocast`` instead (the slower, older
    path; a no-op where the precision resolves to fp32). ``compile``:
    ``torch.compile``, cached on disk (:func:`ben_cli.device.compile_model`). ``model_given``: ``model``
    was named by the user, so a checkpoint that describes another network is an error rather than
    the file's own network silently winning. ``resolution_given``: ``resolution`` was named by the user,
    so an ONNX graph of another side is an error (otherwise the graph's side is used).
    """

    model: str = "ben2-base"
    weights: Path | None = None
    device: str = "auto"
    precision: Precision = Precision.auto
    resolution: int = 1024
    batch_size: int | None = None
    refiner: Refiner = Refiner.auto
    refiner_weights: Path | None = None
    compile: bool = False
    max_refine_side: int | None = None
    autocast: bool = False
    model_given: bool = False
    resolution_given: bool = False

    def __post_init__(self) -> None:
        from ben_cli.models.registry import MODELS

        set_ = object.__setattr__
        if self.model not in MODELS:
            raise OptionError("model", f"unknown model {self.model!r} (use {', '.join(MODELS)})")
        set_(self, "precision", _enum(Precision, self.precision, "precision"))
        set_(self, "refiner", _enum(Refiner, self.refiner, "refiner"))
        check_resolution(self.resolution)
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise OptionError("batch_size", f"must be at least 1, got {self.batch_size}")
        device = ",".join(part.strip() for part in str(self.device).strip().lower().split(","))
        if not _DEVICE_RE.match(device):
            raise OptionError("device", f"unknown device {self.device!r} (use auto, cpu, cuda, cuda:N, mps, "
                                        "or a list such as cuda:0,cuda:2)")
        set_(self, "device", device)
        for name in ("weights", "refiner_weights"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                set_(self, name, Path(value))
        if self.refiner_weights is not None and self.refiner not in (Refiner.auto, Refiner.net):
            raise OptionError("refiner_weights", "only the net refiner takes weights "
                                                 f"({{opt:refiner}} {self.refiner.value} has none)")
        if self.autocast and self.precision is Precision.fp32:
            raise OptionError("autocast",
                              "runs the model in fp16 or bf16: use it with {opt:precision} fp16, bf16 or auto")
        if self.max_refine_side is not None and (isinstance(self.max_refine_side, bool) or self.max_refine_side < 64):
            raise OptionError("max_refine_side", f"must be at least 64 pixels, got {self.max_refine_side}")

    def batch_size_for(self, device_type: str) -> int:
        """``batch_size``, or when it was not given the default of ``device_type``
        (:data:`DEFAULT_BATCH_SIZES`: ``cuda`` 8, ``mps`` 4, ``cpu`` 1)."""
        return self.batch_size or DEFAULT_BATCH_SIZES.get(device_type, 1)

    def replace(self, **changes) -> InferenceOptions:
        """A validated copy with ``changes`` applied."""
        return replace(self, **changes)


class ImageFormat(str, Enum):
    """File format of cutouts; JPEG and WebP need a ``background`` (they are written without alpha)."""

    png = "png"
    jpg = "jpg"
    webp = "webp"


@dataclass(frozen=True)
class OutputOptions:
    """How outputs are finished and written (the writer's half of ``ben erase``'s options).

    ``decontaminate``: semi-transparent cutout pixels get their estimated foreground
    colour (no halo of the old background). ``background``: a colour (``white``,
    ``#00ff00``, ``0,255,0``) or an image file; the cutout is flattened onto it.
    ``format``: of the cutout file. ``threshold``: t in [0, 1], hard alpha
    (255 where alpha > t). ``png_compression``: zlib level 0-9 (None: the fast
    default). ``quality``: JPEG/WebP quality 1-100.

    Cropping (:mod:`ben_cli.crop`): ``crop`` trims every output to the subject, the pixels whose
    alpha is at least ``crop_threshold`` (in (0, 1]), grown by ``margin`` (pixels, or ``"4%"`` of the
    subject box's longer side; ``"12"``, ``12`` and ``"12px"`` are pixels). ``canvas`` (``"WxH"`` or
    (W, H)) or ``square`` place it centred on a canvas, scaled down to fit (up too with ``upscale``);
    either implies ``crop``.
    """

    decontaminate: bool = True
    background: str | None = None
    format: ImageFormat = ImageFormat.png
    threshold: float | None = None
    png_compression: int | None = None
    quality: int = 95
    crop: bool = False
    crop_threshold: float = 0.05
    margin: Margin | str | float = 0
    canvas: tuple[int, int] | str | None = None
    square: bool = False
    upscale: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", _enum(ImageFormat, self.format, "format"))
        self._check_crop()
        if self.format is not ImageFormat.png and self.background is None:
            raise OptionError("format", f"{self.format.value} has no transparency: give {{opt:background}} COLOR|IMAGE "
                                        "to flatten the cutout, or keep png")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise OptionError("threshold", f"must be between 0 and 1, got {self.threshold}")
        if self.png_compression is not None and self.png_compression not in range(10):
            raise OptionError("png_compression", f"must be an integer from 0 to 9, got {self.png_compression}")
        if not 1 <= int(self.quality) <= 100:
            raise OptionError("quality", f"must be from 1 to 100, got {self.quality}")
        if self.background is not None and not Path(self.background).is_file():

            parse_colour(self.background)  # raises OptionError("background", ...)

    def _check_crop(self) -> None:
        set_ = object.__setattr__
        set_(self, "margin", parse_margin(self.margin))
        if self.canvas is not None:
            set_(self, "canvas", parse_canvas(self.canvas))
        if self.canvas is not None and self.square:
            raise OptionError("square", "makes a canvas of its own: give {opt:canvas} WxH or {flag}, not both")
        if self.canvas is not None or self.square:
            set_(self, "crop", True)  # a canvas holds the cropped subject
        threshold = self.crop_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise OptionError("crop_threshold", f"must be above 0 and at most 1, got {threshold}")
        if not self.crop:
            if self.crop_threshold != 0.05:
                raise OptionError("crop_threshold", "needs {opt:crop} (or {opt:canvas}, {opt:square})")
            if self.margin.value:
                raise OptionError("margin", "needs {opt:crop} (or {opt:canvas}, {opt:square})")
        if self.upscale and self.canvas is None:
            raise OptionError("upscale", "needs {opt:canvas} WxH (only a canvas of a given size scales the subject)")
        if self.canvas is not None and not self.margin.percent and 2 * self.margin.value >= min(self.canvas):
            width, height = self.canvas
            raise OptionError("margin", f"{self.margin} pixels on every side leaves no room on a {width}x{height} "
                                        "canvas")

    @property
    def cutout_suffix(self) -> str:
        """File suffix of the cutout kind: ``.png``, ``.jpg`` or ``.webp``."""
        return "." + self.format.value

    def background_colour(self) -> tuple[int, int, int] | None:
        """The background as an RGB colour, or None (no background, or an image file)."""
        if self.background is None or Path(self.background).is_file():
            return None

        return parse_colour(self.background)


@dataclass(frozen=True)
class Margin:
    """``--margin``: space around the subject, ``value`` pixels, or with ``percent`` that percentage of
    the subject box's longer side (:func:`ben_cli.crop.plan_layout`)."""

    value: float = 0.0
    percent: bool = False

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{self.value:g}"


_MARGIN_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(%|px)?$")
_CANVAS_RE = re.compile(r"^(\d+)\s*[x×]\s*(\d+)$")
MAX_CANVAS = 16384
"""The largest canvas side (pixels)."""


def parse_margin(value: Margin | str | float) -> Margin:
    """``--margin``: ``12`` or ``12px`` (pixels), ``4%`` (of the subject box's longer side), at least 0."""
    if isinstance(value, Margin):
        return value
    if isinstance(value, bool):
        raise OptionError("margin", f"bad margin {value!r}")
    if isinstance(value, (int, float)):
        if not 0 <= value < float("inf"):
            raise OptionError("margin", f"must be 0 or more, got {value}")
        return Margin(float(value))
    match = _MARGIN_RE.match(str(value).strip().lower())
    if not match:
        raise OptionError("margin", f"bad margin {value!r}: give pixels (12) or a percentage of the subject (4%)")
    return Margin(float(match[1]), percent=match[2] == "%")


def parse_canvas(value: tuple[int, int] | str) -> tuple[int, int]:
    """``--canvas``: ``WxH`` in pixels (``1200x1200``), each side 1 to :data:`MAX_CANVAS`."""
    if isinstance(value, str):
        match = _CANVAS_RE.match(value.strip().lower())
        if not match:
            raise OptionError("canvas", f"bad canvas {value!r}: give WIDTHxHEIGHT in pixels, like 1200x1200")
        value = (int(match[1]), int(match[2]))
    width, height = value
    if not (1 <= width <= MAX_CANVAS and 1 <= height <= MAX_CANVAS):
        raise OptionError("canvas", f"sides must be 1 to {MAX_CANVAS} pixels, got {width}x{height}")
    return int(width), int(height)


class VideoFormat(str, Enum):
    """Container and codecs of video outputs (:mod:`ben_cli.video`).

    ``webm``: VP9, the cutout with an alpha channel (``yuva420p``); ``mov``: ProRes 4444
    with alpha (ProRes 422 HQ for outputs without alpha); ``mp4``: H.264, no alpha, so
    only with a background; ``auto``: ``webm``, or ``mp4`` when a background is given.
    """

    auto = "auto"
    webm = "webm"
    mov = "mov"
    mp4 = "mp4"


MAX_SMOOTH = 31
"""The widest ``--smooth`` window (frames): each frame of the window is held on the device."""


@dataclass(frozen=True)
class VideoOptions:
    """How videos (and, with ``all_frames``, animated GIF/WebP) are processed and written.

    ``format``: see :class:`VideoFormat`. ``frames``: one image per frame into a folder
    ``<stem>/`` instead of a video. ``all_frames``: animated GIF/WebP inputs are videos
    (otherwise their first frame is an image). ``smooth``: N > 1 averages each frame's
    base probability with its neighbours' (a centered window of N frames) before the
    trimap and the refiner; 0 or 1 is off. ``crf``: quality of the lossy encoders (VP9
    0-63, H.264 0-51; lower is better and larger), None for our defaults.
    """

    format: VideoFormat = VideoFormat.auto
    frames: bool = False
    all_frames: bool = False
    smooth: int = 0
    crf: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", _enum(VideoFormat, self.format, "format"))
        if isinstance(self.smooth, bool) or not isinstance(self.smooth, int) or not 0 <= self.smooth <= MAX_SMOOTH:
            raise OptionError("smooth", f"must be a number of frames from 0 (off) to {MAX_SMOOTH}, got {self.smooth}")
        if self.crf is not None and (isinstance(self.crf, bool) or not isinstance(self.crf, int)
                                     or not 0 <= self.crf <= 63):
            raise OptionError("crf", f"must be from 0 to 63, got {self.crf}")

    def replace(self, **changes) -> VideoOptions:
        """A validated copy with ``changes`` applied."""
        return replace(self, **changes)

    def container(self, background: bool) -> VideoFormat:
        """The format written (never ``auto``); ``background``: the cutout is flattened (no alpha).

        ``mp4`` without a background and an H.264 ``crf`` above 51 are OptionErrors.
        """
        fmt = self.format
        if fmt is VideoFormat.auto:
            fmt = VideoFormat.mp4 if background else VideoFormat.webm
        if fmt is VideoFormat.mp4 and not background:
            raise OptionError("format", "mp4 (H.264) has no alpha channel: give {opt:background} COLOR|IMAGE "
                                        "to flatten the video, or use webm or mov")
        if fmt is VideoFormat.mp4 and self.crf is not None and self.crf > 51:
            raise OptionError("crf", f"H.264 (mp4) takes 0 to 51, got {self.crf}")
        return fmt


STALL_TIMEOUT = 300.0
"""Default seconds a Ray run may make no progress (no read, batch or write anywhere, no model loading)."""


@dataclass(frozen=True)
class RayOptions:
    """The ray engine's own settings: the cluster to join (None: ``$RAY_ADDRESS``, else the Ray already
    running on this machine, else a runtime started here; ``"local"``: always a runtime started here),
    the GPUs of each model actor (None: 1 when the cluster has GPUs, else 0 and the CPU), and
    ``verbose``: Ray's own INFO lines on stderr (by default only its warnings); ``stall_timeout``: seconds
    without any progress before the run stops with the resource it waits for (None: 300; 0: never)."""

    address: str | None = None
    gpus_per_worker: float | None = None
    verbose: bool = False
    stall_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.gpus_per_worker is not None and not self.gpus_per_worker >= 0:
            raise OptionError("gpus_per_worker", f"must be 0 or more, got {self.gpus_per_worker}")
        if self.stall_timeout is not None and not self.stall_timeout >= 0:
            raise OptionError("stall_timeout", f"must be 0 (never) or more seconds, got {self.stall_timeout}")

    @property
    def stall_seconds(self) -> float:
        """Seconds without progress before a run stops (``stall_timeout``, default 300; 0: never)."""
        return STALL_TIMEOUT if self.stall_timeout is None else float(self.stall_timeout)
