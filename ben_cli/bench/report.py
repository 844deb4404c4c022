"""What ``ben bench`` reports: measures, rows, the official-style and start-up results, the JSON schema."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ben_cli.errors import BenError

SCHEMA = "ben-bench/1"


class BenchError(BenError):
    """The benchmark cannot run or a measured path failed (no usable image, the erase path failed)."""


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


def median_measure(images: int, passes: Sequence[float]) -> Measure:
    """The median of ``passes`` (seconds, each over ``images`` images), at least a nanosecond."""
    return Measure(images, max(statistics.median(passes), 1e-9))


__all__ = ["SCHEMA", "BatchRow", "BenchError", "BenchReport", "Measure", "Official", "Startup", "median_measure"]
