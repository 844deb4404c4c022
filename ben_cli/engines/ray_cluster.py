"""The Ray engine's cluster: joining or starting Ray, and where the model actors and the I/O tasks go."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Any

from ben_cli.engines.ray_placement import Node, place
from ben_cli.errors import BenWarning, EngineError
from ben_cli.options import InferenceOptions, cpu_count


class Layout:
    """How the model actors are placed: count, GPUs and CPUs each, torch threads, batch size, options; and
    the CPUs of each read and write task (:mod:`~ben_cli.engines.ray_placement`)."""

    def __init__(self, options: InferenceOptions, workers: int, gpus: float, actor_cpus: float,
                 io_cpus: float = 1.0) -> None:
        self.options, self.workers, self.gpus, self.actor_cpus = options, workers, gpus, actor_cpus
        self.io_cpus = io_cpus
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
        _join(ray, address, kwargs)
        return True
    try:  # sizes are given only to a runtime started here; Ray refuses them for one it would join
        ray.init(address=address, num_cpus=cpu_count(), include_dashboard=False, **kwargs)
    except ValueError as e:
        if address == "local" or _EXISTING not in str(e):
            raise
        warnings.warn(BenWarning("joining the Ray already running on this machine ({opt:ray_address} local "
                                 "starts a separate one)"), stacklevel=2)
        _join(ray, "auto", kwargs)
    return True


_AUTH_MARKS = ("InvalidAuthToken", "Unauthenticated", "AuthenticationError")
AUTH_HELP = ("set RAY_AUTH_MODE=token, with the cluster's token in ~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or "
             "$RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it)")
"""What a shell needs to join a cluster with token authentication (Ray 2.52+ `ray start --head` enables it)."""


def _join(ray: Any, address: str, kwargs: dict[str, Any]) -> None:
    """``ray.init`` at ``address``; a cluster that refuses this shell's token, or none there, is one EngineError.

    A refused token is asked first, in a few seconds (:func:`_token_refused`), instead of Ray's
    retries of about 20 s; Ray's own failure is read for it too.
    """
    if _token_refused(address):
        raise EngineError(_auth_message(address))
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError) as e:
        text = _chain_text(e)
        if any(mark in text for mark in _AUTH_MARKS):
            raise EngineError(_auth_message(address)) from None
        if isinstance(e, ConnectionError):
            raise EngineError(f"cannot join the Ray cluster at {address}: no Ray answers there (started with "
                              "`ray start --head`? the address is the head's host:port, 6379 by default)") from None
        raise


def _auth_message(address: str) -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return (f"the Ray cluster at {address} refused this shell's token: put the cluster's own (`ray "
                "get-auth-token` on the head prints it) in ~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN")
    return f"the Ray cluster at {address} uses token authentication and this shell sends no token: {AUTH_HELP}"


def _chain_text(error: BaseException) -> str:
    """The messages of ``error`` and of the errors behind it."""
    parts, seen, current = [], set(), error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _token_refused(address: str, wait: float = 5.0) -> bool:
    """True when the cluster at ``address`` (host:port) answers that this shell's token is missing or wrong.

    Ray's GCS client (no public API asks this) in a thread: an address that does not answer within
    ``wait`` seconds, or any other answer, is left to ``ray.init``.
    """
    if address == "auto" or "://" in address or ":" not in address:
        return False
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:
        return False
    refused = threading.Event()

    def ask() -> None:
        try:
            GcsClient(address=address)
        except AuthenticationError:
            refused.set()
        except Exception:
            pass

    thread = threading.Thread(target=ask, name="ben-ray-auth", daemon=True)
    thread.start()
    thread.join(wait)
    return refused.is_set()


def plan_layout(ray: Any, options: InferenceOptions, gpus_per_worker: float | None, workers: int | None,
            joined: bool) -> Layout:
    """Decide GPUs per actor, the actor count, the CPUs each actor and each I/O task reserves (from the node
    list: :func:`~ben_cli.engines.ray_placement.place`) and the device.

    GPUs asked of a Ray without any are an error, unless it is a cluster joined by address
    (its autoscaler may add GPU nodes): Ray would wait for them forever.
    """
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
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
    nodes = live_nodes(ray)
    if workers is None:  # one per GPU that an actor can have, else one
        workers = max(1, sum(int(n.gpus // gpus) for n in nodes)) if gpus > 0 else 1
    placement = place(nodes, workers, gpus)
    if placement.note:
        warnings.warn(BenWarning(f"{{opt:workers}} {workers}: {placement.note}"), stacklevel=2)
    return Layout(options, placement.workers, gpus, placement.actor_cpus, placement.io_cpus)


def live_nodes(ray: Any) -> list[Node]:
    """The CPUs and GPUs of the cluster's live nodes."""
    return [Node(float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
            for n in ray.nodes() if n.get("Alive")]


def free_by_node(ray: Any) -> list[dict[str, float]]:
    """The free CPUs and GPUs of each live node (the cluster's as one node where Ray cannot say per node)."""
    try:
        from ray._private.state import available_resources_per_node  # no public per-node view in Ray 2.x

        per_node = list(available_resources_per_node().values())
    except (ImportError, AttributeError, RuntimeError):
        per_node = [ray.available_resources()]
    return [{"CPU": float(r.get("CPU", 0.0)), "GPU": float(r.get("GPU", 0.0))} for r in per_node]
