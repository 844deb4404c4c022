"""Video in ``ben erase``: decode, batch through the same Eraser as images, encode, all streaming.

``pip install "ben_cli[video]"`` adds PyAV (``av``, FFmpeg bundled); nothing here
imports it before a video is opened, and importing this package imports no torch
(:func:`erase_video` and the smoothing stage load it on first use). Modules: :mod:`.decode` (sources, rotation,
truncation), :mod:`.predict` (frames through the Eraser, ``--smooth``),
:mod:`.encode` (codecs, atomic outputs, audio), :mod:`.process` (:func:`erase_video`), :mod:`.crop`
(``--crop``: one box per clip, from a first pass whose predictions the second replays).

Output names (``--save`` kinds; :func:`video_suffixes` gives them to the planner):

=========  =======================  ======================  ===================
kind       webm (default)           ``--format mov``        ``--frames``
=========  =======================  ======================  ===================
cutout     ``<stem>.webm`` (alpha)  ``<stem>.mov`` (alpha)  ``<stem>/frame_000001.png``
alpha      ``<stem>.alpha.webm``    ``<stem>.alpha.mov``    ``<stem>.alpha/frame_000001.png``
trimap     ``<stem>.trimap.webm``   ``<stem>.trimap.mov``   ``<stem>.trimap/...``
overlay    ``<stem>.overlay.webm``  ``<stem>.overlay.mov``  ``<stem>.overlay/...``
=========  =======================  ======================  ===================

With a background the cutout is flattened: ``<stem>.mp4`` (H.264) unless
``--format webm|mov`` is given, and the other kinds follow the format.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ben_cli.io.kinds import ANIMATION_EXTS, VIDEO_EXTS, is_animated, is_video
from ben_cli.options import OutputOptions, VideoOptions
from ben_cli.video.decode import EXTRA_HINT, DecodedFrame, VideoInfo, import_av, open_source, probe
from ben_cli.video.encode import SOURCE_TAG, choose_codec, has_encoder, read_video_source

_LAZY = {  # these import torch: loaded on first use, so planning and the CLI's checks stay light
    "FramePredictor": "predict", "smooth_probabilities": "predict", "window_bounds": "predict",
    "ProgressCallback": "process", "VideoResult": "process", "erase_video": "process",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ben_cli.video.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ben_cli.video' has no attribute {name!r}")

def av_available() -> bool:
    """Whether PyAV is installed (``pip install "ben_cli[video]"``), without importing it."""
    return importlib.util.find_spec("av") is not None


def check_video_support() -> None:
    """UsageError naming the extra when PyAV is missing (for the CLI's checks before the model loads)."""
    import_av()


def video_suffixes(video: VideoOptions | None = None, output: OutputOptions | None = None) -> dict[str, str]:
    """Each ``--save`` kind's suffix for video inputs, for ``plan_run(..., suffixes=...)``.

    ``video.frames``: folders (``""`` for the cutout: ``<stem>/``, ``.alpha`` ...); otherwise
    files in the format :meth:`VideoOptions.container` resolves (OptionError for mp4
    without a background).
    """
    video = video or VideoOptions()
    if video.frames:
        return {"cutout": "", "alpha": ".alpha", "trimap": ".trimap", "overlay": ".overlay"}
    fmt = video.container(output is not None and output.background is not None).value
    return {"cutout": f".{fmt}", "alpha": f".alpha.{fmt}", "trimap": f".trimap.{fmt}", "overlay": f".overlay.{fmt}"}


__all__ = [
    "ANIMATION_EXTS", "EXTRA_HINT", "SOURCE_TAG", "VIDEO_EXTS", "DecodedFrame", "FramePredictor", "ProgressCallback",
    "VideoInfo", "VideoResult", "av_available", "check_video_support", "choose_codec", "erase_video", "has_encoder",
    "is_animated", "is_video", "open_source", "probe", "read_video_source", "smooth_probabilities", "video_suffixes",
    "window_bounds",
]
