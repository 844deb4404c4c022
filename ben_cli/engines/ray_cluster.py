"""The Ray engine's cluster: joining or starting Ray, and where the model actors and the I/O tasks go."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from ben_cli.errors import BenWarning, EngineError
from ben_cli.options import InferenceOptions, cpu_count


class Layout:
    """How the model actors are placed: count, GPUs and CPUs each, torch threads, batch size, options."""

    def __init__(self, options: InferenceOptions, workers: int, gpus: float, actor_cpus: float) -> None:
        self.options, self.workers, self.gpus, self.actor_cpus = options, workers, gpus, actor_cpus
        self.threads = 0 if gpus else max(1, int(actor_cpus))
        self.batch_size = options.batch_size_for("cuda" if gpus else "cpu")


_EXISTING = "existing cluster"  # Ray's ValueError when a runtime is asked its size while one already runs here


def connect(address: str | None, quiet: bool, *, verbose: bool = False) -> bool:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``); else join the Ray already running on this
    machine (said once; ``"local"`` starts a separate one instead), else start a Ray runtime here.

    Ray's INFO lines stay off stderr unless ``verbose``. Returns True when this call started (or
    joined) Ray and must shut it down; False when Ray was already initialised in this process
    (a test, a notebook).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": not quiet,
                              "logging_level": logging.INFO if verbose and not quiet else logging.WARNING}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        ray.init(address=address, **kwargs)
        return True
    try:  # sizes are given only to a runtime started here; Ray refuses them for one it would join
        ray.init(address=address, num_cpus=cpu_count(), include_dashboard=False, **kwargs)
    except ValueError as e:
        if address == "local" or _EXISTING not in str(e):
            raise
        warnings.warn(BenWarning("joining the Ray already running on this machine ({opt:ray_address} local "
                                 "starts a separate one)"), stacklevel=2)
        ray.init(address="auto", **kwargs)
    return True


def plan_layout(ray: Any, options: InferenceOptions, gpus_per_worker: float | None, workers: int | None,
            joined: bool) -> Layout:
    """Decide GPUs per actor, the actor count, the CPUs each reserves and the device (see module docstring).

    GPUs asked of a Ray without any are an error, unless it is a cluster joined by address
    (its autoscaler may add GPU nodes): Ray would wait for them forever.
    """
    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0.0))
    cluster_cpus = float(resources.get("CPU", 1.0))
    gpus = float(gpus_per_worker) if gpus_per_worker is not None else (1.0 if cluster_gpus > 0 else 0.0)
    if gpus > 0 and cluster_gpus == 0:
        if not joined:
            raise EngineError(
                f"{{opt:gpus_per_worker}} {gpus:g}: Ray finds no GPU on this machine (it would wait for one "
                "forever); use {opt:gpus_per_worker} 0 to run the model on the CPU")
        warnings.warn("the Ray cluster has no GPU now: the model workers wait until GPU nodes join",
                      BenWarning, stacklevel=2)
    if gpus == 0 and options.device == "auto":
        options = options.replace(device="cpu")
    for name in ("weights", "refiner_weights"):  # a file here is the same file for workers started here
        path = getattr(options, name)
        if path is not None and path.exists():
            options = options.replace(**{name: path.resolve()})
    if workers is None:
        workers = max(1, int(cluster_gpus // gpus)) if gpus > 0 and cluster_gpus else 1
    if gpus > 0:
        actor_cpus = 1.0
    else:  # CPU actors share the machine's cores, leaving one for reading and writing
        node_cpus = max((float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")),
                        default=cluster_cpus)
        actor_cpus = max(0.5, min(node_cpus - 1.0, (cluster_cpus - 1.0) / workers))
    return Layout(options, workers, gpus, actor_cpus)
