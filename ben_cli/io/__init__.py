"""The file layer: find images, read them, name the outputs, write them atomically.

This package is the only code that touches image files (numpy, Pillow, OpenCV
and, for URLs, fsspec; no torch). One module per concern:

- :mod:`ben_cli.io.find`: finding inputs (recursive, by extension, hidden files and
  the output folder skipped) and naming outputs (mirrored tree, the collision
  rule, names that never change between runs);
- :mod:`ben_cli.io.read`: reading images of every mode Pillow reads, as ``uint8``
  RGB plus alpha, EXIF orientation applied, ICC profile kept, bombs refused;
- :mod:`ben_cli.io.write`: PNG/JPEG/WebP encoding (ICC profile and source record
  embedded) and atomic writes (temp file and rename; one put on object stores);
- :mod:`ben_cli.io.fs`: where files live, local paths or fsspec URLs
  (``s3://``, ``gs://``, ``file://``, ``memory://``; backends are optional extras).

Every public name is importable from here (``from ben_cli.io import read_image``).
"""

from __future__ import annotations

from ben_cli.io.find import (
    IMAGE_EXTS,
    KINDS,
    SUFFIX,
    NamedOutputs,
    OutputListing,
    check_kinds,
    find_image_files,
    find_images,
    list_outputs,
    name_outputs,
    output_source,
    outputs_exist,
    plan_outputs,
    read_output_source,
    refuse_overwriting_input,
    single_output,
    source_chunk,
)
from ben_cli.io.fs import Place, is_file, is_url, join_url, read_url_bytes, url_fs, write_url_bytes
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
from ben_cli.io.write import (
    atomic_write_bytes,
    check_output_file,
    clean_stale_temp_files,
    encode_image,
    encode_png,
    png_chunk,
    write_png,
    write_stdout_bytes,
)

__all__ = [
    "IMAGE_EXTS",
    "KINDS",
    "STDIN_NAME",
    "SUFFIX",
    "LoadedImage",
    "NamedOutputs",
    "OutputListing",
    "Place",
    "atomic_write_bytes",
    "check_kinds",
    "check_output_file",
    "clean_stale_temp_files",
    "configure_warnings",
    "encode_image",
    "encode_png",
    "find_image_files",
    "find_images",
    "from_pil",
    "heif_available",
    "icc_colour_space",
    "is_file",
    "is_url",
    "join_url",
    "list_outputs",
    "name_outputs",
    "output_source",
    "outputs_exist",
    "plan_outputs",
    "png_chunk",
    "read_gray",
    "read_image",
    "read_mask",
    "read_output_source",
    "read_stdin_bytes",
    "read_url_bytes",
    "refuse_overwriting_input",
    "single_output",
    "source_chunk",
    "url_fs",
    "write_png",
    "write_stdout_bytes",
    "write_url_bytes",
]
