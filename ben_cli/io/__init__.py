"""The file layer: find images, read them, name the outputs, write them atomically.

This package is the only code that touches image files (numpy, Pillow, OpenCV
and, for URLs, fsspec; PyAV only to read a video output's source record, on first
use; no torch). One module per concern:

- :mod:`ben_cli.io.kinds`: the kinds of files: images, videos and animations by
  extension (no decoder needed), the ``--save`` output kinds and their suffixes;
- :mod:`ben_cli.io.find`: finding inputs (recursive, by extension, hidden files and
  the output folder skipped);
- :mod:`ben_cli.io.naming`: naming outputs (mirrored tree, the collision rule,
  names kept from earlier runs);
- :mod:`ben_cli.io.pin`: the source record in every output (PNG, JPEG, video, frame
  folder: the source's name, identity, size and time, the settings) and the one
  reader that reads it back;
- :mod:`ben_cli.io.read`: reading images of every mode Pillow reads, as ``uint8``
  RGB plus alpha, EXIF orientation applied, ICC profile kept, bombs refused;
- :mod:`ben_cli.io.write`: PNG/JPEG/WebP encoding (ICC profile and source record
  embedded) and atomic writes (temp file and rename; one put on object stores);
- :mod:`ben_cli.io.fs`: where files live, local paths or fsspec URLs
  (``s3://``, ``gs://``, ``file://``, ``memory://``; backends are optional extras);
- :mod:`ben_cli.io.watch`: watching a folder (``ben erase --watch``): watchdog's observer
  (imported on first use), the files it ignores, and when a file that arrives is complete.

Every public name is importable from here (``from ben_cli.io import read_image``).
"""

from __future__ import annotations

from ben_cli.io.find import find_image_files, find_images, outputs_exist
from ben_cli.io.fs import Place, file_sha256, is_file, is_url, join_url, read_url_bytes, url_fs, write_url_bytes
from ben_cli.io.kinds import (
    ANIMATION_EXTS,
    IMAGE_EXTS,
    KINDS,
    SUFFIX,
    VIDEO_EXTS,
    check_kinds,
    is_animated,
    is_video,
)
from ben_cli.io.naming import NamedOutputs, name_outputs, plan_outputs, refuse_overwriting_input, single_output
from ben_cli.io.pin import (
    VIDEO_PIN_TAG,
    VIDEO_SOURCE_TAG,
    OutputListing,
    Pin,
    existing_outputs,
    is_own_output,
    jpeg_comment,
    list_outputs,
    output_pin,
    output_source,
    pin_chunks,
    read_output_pin,
    read_output_source,
    root_id,
    source_chunk,
    source_pin,
)
from ben_cli.io.read import (
    STDIN_NAME,
    LoadedImage,
    configure_warnings,
    from_pil,
    heif_available,
    icc_colour_space,
    read_gray,
    read_image,
    read_mask,
    read_stdin_bytes,
)
from ben_cli.io.watch import Arrivals, Rules, Settling, complete, stamp_of
from ben_cli.io.write import (
    atomic_write_bytes,
    check_output_file,
    clean_stale_temp_files,
    encode_image,
    encode_png,
    png_chunk,
    probe_writable,
    write_png,
    write_stdout_bytes,
)

__all__ = [
    "ANIMATION_EXTS",
    "IMAGE_EXTS",
    "KINDS",
    "STDIN_NAME",
    "SUFFIX",
    "VIDEO_EXTS",
    "VIDEO_PIN_TAG",
    "VIDEO_SOURCE_TAG",
    "Arrivals",
    "LoadedImage",
    "NamedOutputs",
    "OutputListing",
    "Pin",
    "Place",
    "Rules",
    "Settling",
    "atomic_write_bytes",
    "check_kinds",
    "check_output_file",
    "clean_stale_temp_files",
    "complete",
    "configure_warnings",
    "encode_image",
    "encode_png",
    "existing_outputs",
    "file_sha256",
    "find_image_files",
    "find_images",
    "from_pil",
    "heif_available",
    "icc_colour_space",
    "is_animated",
    "is_file",
    "is_own_output",
    "is_url",
    "is_video",
    "join_url",
    "jpeg_comment",
    "list_outputs",
    "name_outputs",
    "output_pin",
    "output_source",
    "outputs_exist",
    "pin_chunks",
    "plan_outputs",
    "png_chunk",
    "probe_writable",
    "read_gray",
    "read_image",
    "read_mask",
    "read_output_pin",
    "read_output_source",
    "read_stdin_bytes",
    "read_url_bytes",
    "refuse_overwriting_input",
    "root_id",
    "single_output",
    "source_chunk",
    "source_pin",
    "stamp_of",
    "url_fs",
    "write_png",
    "write_stdout_bytes",
    "write_url_bytes",
]
