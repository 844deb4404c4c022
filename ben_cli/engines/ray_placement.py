"""How many CPUs the Ray engine's model actors and I/O tasks ask for, decided from the node list.

Pure arithmetic (no Ray): :func:`place` takes the live nodes' CPUs and GPUs and returns a
:class:`Placement` that can never starve a stage, whatever node Ray puts each actor on:

- every node that can hold model actors keeps at least one I/O task's CPUs free when it holds as
  many as fit (so reading and writing can always run next to the model, also after other nodes
  are lost);
- the model actors and one read and one write task fit the cluster's total together (Ray Data
  reserves its budget per stage from that total; a stage left without one task's worth waits).

I/O tasks ask for a whole CPU where that holds (one decode per core, one Ray worker process
each), else a fraction; model actors spread over the nodes where their sizes allow. A run
asking for more model actors than fit gets the most that fit (:attr:`Placement.note` says so).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

IO_CPUS = (1.0, 0.5, 0.25, 0.2, 0.1)
"""The CPUs a read or write task may ask for, the first that fits."""
GPU_ACTOR_CPUS = (1.0, 0.5, 0.25)
"""The CPUs of a GPU model actor (its host work: the batch up, the refiner's CPU part), the first that fits."""
_MIN_ACTOR_CPUS = 0.1
_EPS = 1e-6


@dataclass(frozen=True)
class Node:
    """One live Ray node: its CPUs and GPUs (totals, as ``ray.nodes()`` reports them)."""

    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class Placement:
    """``workers`` model actors of ``actor_cpus`` CPUs (and ``gpus`` GPUs) each; read and write tasks of
    ``io_cpus`` CPUs; ``note``: why fewer actors than asked for run (empty when all do)."""

    workers: int
    actor_cpus: float
    io_cpus: float
    gpus: float = 0.0
    note: str = ""


def place(nodes: Sequence[Node], workers: int, gpus: float = 0.0) -> Placement:
    """The placement of ``workers`` model actors of ``gpus`` GPUs each (0: CPU actors) on ``nodes``.

    CPU actors get the largest share that keeps the guarantees (torch threads follow it); GPU
    actors one CPU where it fits. Without any node that can hold an actor (GPU nodes not up yet),
    the GPU default (one CPU each, whole-CPU I/O) stands: Ray waits for those nodes.
    """
    nodes = [n for n in nodes if n.cpus > _EPS]
    if workers < 1:
        raise ValueError(f"workers must be 1 or more, got {workers}")
    if gpus > 0 and not any(n.gpus + _EPS >= gpus for n in nodes):
        return Placement(workers, GPU_ACTOR_CPUS[0], IO_CPUS[0], gpus)
    for count in range(workers, 0, -1):
        found = _fit(nodes, count, gpus)
        if found is not None:
            note = "" if count == workers else (
                f"{workers} model workers do not fit beside the reads and writes on these nodes "
                f"({_describe(nodes)}): running {count}")
            return Placement(count, found[0], found[1], gpus, note)
    raise ValueError(f"no model worker fits on these nodes ({_describe(nodes)})")


def _fit(nodes: Sequence[Node], workers: int, gpus: float) -> tuple[float, float] | None:
    """(actor CPUs, I/O CPUs) for ``workers`` actors, None when none fits: of the sizes that keep the
    guarantees, the one that puts the fewest actors on one node (spread over the cluster), then the
    largest I/O share (fewer I/O processes), then the largest actor share (torch threads)."""
    total = sum(n.cpus for n in nodes)
    best: tuple[int, float, float] | None = None
    for io in IO_CPUS:
        for cpus in _actor_candidates(nodes, workers, gpus, io, total):
            most = _most_per_node(nodes, workers, gpus, cpus, io)
            if most and workers * cpus + 2 * io <= total + _EPS and (best is None or (-most, io, cpus) > best):
                best = (-most, io, cpus)
    return None if best is None else (best[2], best[1])


def _actor_candidates(nodes: Sequence[Node], workers: int, gpus: float, io: float, total: float) -> list[float]:
    """Actor CPU sizes to try: the GPU sizes, or for CPU actors their fair share of what the
    I/O leaves and every size that fills one node's share exactly, down to a 0.05 grid."""
    if gpus > 0:
        return list(GPU_ACTOR_CPUS)
    ideal = _units(min((total - 2 * io) / workers, max(n.cpus for n in nodes) - io))
    if ideal < _MIN_ACTOR_CPUS - _EPS:
        return []
    sizes = {n.cpus for n in nodes}  # node types, not nodes: a large cluster has few
    exact = {_units((c - io) / k) for c in sizes for k in range(1, min(workers, math.ceil(c / _MIN_ACTOR_CPUS)) + 1)}
    grid = {round(0.05 * i, 2) for i in range(2, int(ideal / 0.05) + 1)}
    return sorted(c for c in exact | grid | {ideal} if _MIN_ACTOR_CPUS - _EPS <= c <= ideal + _EPS)


def _most_per_node(nodes: Sequence[Node], workers: int, gpus: float, cpus: float, io: float) -> int:
    """The most actors of ``cpus`` one node can hold, when every node keeps ``io`` CPUs holding all the
    actors that fit on it and all ``workers`` fit; else 0."""
    room, most = 0, 0
    for node in nodes:
        held = min(workers, math.floor(node.cpus / cpus + _EPS))
        if gpus > 0:
            held = min(held, math.floor(node.gpus / gpus + _EPS))
        if held and node.cpus - held * cpus < io - _EPS:
            return 0
        room, most = room + held, max(most, held)
    return most if room >= workers else 0


def _units(cpus: float) -> float:
    """``cpus`` rounded down to Ray's resource unit (1e-4)."""
    return math.floor(cpus * 1e4 + _EPS) / 1e4


def _describe(nodes: Sequence[Node]) -> str:
    """The nodes in a few words: ``2 x 1 CPU, 8 CPU 1 GPU``."""
    kinds = Counter(f"{n.cpus:g} CPU" + (f" {n.gpus:g} GPU" if n.gpus else "") for n in nodes)
    return ", ".join(f"{k}" if n == 1 else f"{n} x {k}" for k, n in kinds.items()) or "none"
