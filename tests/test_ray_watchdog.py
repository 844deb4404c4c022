"""A Ray run that makes no progress stops with the resource it waits for (:mod:`ben_cli.engines.ray_watchdog`),
and a cluster that refuses this shell's token is one line (:mod:`ben_cli.engines.ray_cluster`). No Ray here:
the progress log and Ray are stand-ins; tests/test_ray_cluster.py runs the real thing on two nodes."""

from __future__ import annotations

import time
import warnings

import pytest

from ben_cli.engines import ray_cluster
from ben_cli.engines.ray_watchdog import ProgressLog, Watchdog, diagnose
from ben_cli.errors import BenWarning, EngineError, StalledError


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class _Log:
    """A ProgressLog in this process, called as an actor handle is (``log.snapshot.remote()``)."""

    def __init__(self, loading: int = 0) -> None:
        self.inner = ProgressLog()
        self.inner.loading = loading
        self.snapshot = _Remote(self.inner.snapshot)


class _Ray:
    def __init__(self, gpus: float = 0.0) -> None:
        self.gpus = gpus

    def get(self, value, timeout=None):
        return value


def _wait_for_interrupt(seconds: float) -> float:
    """Sleep in small steps until a KeyboardInterrupt lands (as Ray Data's iterator waits); its delay."""
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        while time.monotonic() - t0 < seconds:
            time.sleep(0.01)
    return time.monotonic() - t0


def test_the_progress_log_counts_and_times():
    log = ProgressLog()
    log.tick("read", 3)
    log.tick("read")
    log.load(True)
    snap = log.snapshot()
    assert snap["counts"] == {"read": 4} and snap["loading"] == 1 and snap["idle"] < 1
    log.load(False)
    assert log.snapshot()["loading"] == 0


def test_a_run_without_progress_is_stopped_with_its_reason():
    explained = []

    def explain(counts):
        explained.append(counts)
        return "no node has 1 CPU free to read the images"

    with Watchdog(_Ray(), _Log(), limit=0.5, explain=explain, gpu_wait=lambda: False, poll=0.1) as dog:
        delay = _wait_for_interrupt(20)
    assert delay < 10
    assert dog.reason.startswith("the Ray run made no progress for ")
    assert dog.reason.endswith(" s: no node has 1 CPU free to read the images")
    assert explained == [{}]


def test_progress_keeps_it_quiet_and_a_model_loading_pauses_it():
    log = _Log()
    with Watchdog(_Ray(), log, limit=0.6, explain=lambda c: "x", gpu_wait=lambda: False, poll=0.1) as dog:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:  # a result every 0.1 s, on the log and at the driver
            log.inner.tick("model")
            dog.touch()
            time.sleep(0.1)
    assert dog.reason is None
    loading = _Log(loading=1)
    loading.inner.last -= 100  # loading for long already: a compile may take that long
    with Watchdog(_Ray(), loading, limit=0.3, explain=lambda c: "x", gpu_wait=lambda: False, poll=0.1) as dog:
        time.sleep(1.2)
    assert dog.reason is None


def test_waiting_for_gpu_nodes_is_said_once_and_waited_out():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with Watchdog(_Ray(), _Log(), limit=0.3, explain=lambda c: "x", gpu_wait=lambda: True, poll=0.1) as dog:
            time.sleep(1.5)
    said = [str(w.message) for w in seen if issubclass(w.category, BenWarning)]
    assert len(said) == 1 and said[0].startswith("waiting for GPU nodes for ") and "still waiting" in said[0]
    assert dog.reason is None


def test_no_limit_never_watches():
    with Watchdog(_Ray(), _Log(), limit=0, explain=lambda c: "x", gpu_wait=lambda: False) as dog:
        time.sleep(0.3)
    assert dog.reason is None and not dog._thread.is_alive()


def test_a_stop_after_the_pass_ended_is_not_sent():
    dog = Watchdog(_Ray(), _Log(), limit=0.2, explain=lambda c: "x", gpu_wait=lambda: False, poll=0.05)
    with dog:
        pass  # the pass ended at once
    time.sleep(0.5)
    assert dog.reason is None


@pytest.mark.parametrize(("counts", "free", "gpus", "expected"), [
    ({}, [{"CPU": 0.1}, {"CPU": 0.1}], 0, "the model workers need 0.75 CPU each and no node has that free "
     "(free CPUs by node: 0.1, 0.1)"),
    ({}, [{"CPU": 4.0, "GPU": 0.0}], 1, "the model workers need 1 GPU each and no node has one free"),
    ({"started": 2, "read": 3}, [{"CPU": 0.0}, {"CPU": 0.0}], 0, "no node has 0.25 CPU free to read the images "
     "(free CPUs by node: 0, 0)"),
    ({"started": 2, "read": 10, "model": 6, "write": 2}, [{"CPU": 0.1}], 0, "no node has 0.25 CPU free to write"),
    ({"started": 2, "read": 4}, [{"CPU": 1.0}], 0, "Ray Data started no step although the nodes have CPUs free (1;"),
])
def test_diagnose_names_the_missing_resource(counts, free, gpus, expected):
    line = diagnose(rows=10, counts=counts, free=free, io_cpus=0.25, actor_cpus=0.75, gpus=gpus, workers=2)
    assert line.startswith(expected), line
    assert "\n" not in line


def test_a_stall_is_exit_1():
    assert StalledError("x").exit_code == 1 and isinstance(StalledError("x"), EngineError)


class _RefusingRay:
    """``ray.init`` failing as Ray 2.60 does when the cluster wants a token and this shell sends none."""

    def init(self, **kwargs):
        try:
            raise RuntimeError("Failed to connect to GCS. Last connection error: ray.exceptions.AuthenticationError:"
                               " RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
        except RuntimeError as e:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from e


@pytest.mark.parametrize("mode", ["", "token"])
def test_a_refused_token_is_one_line_naming_what_to_set(monkeypatch, mode):
    monkeypatch.setattr(ray_cluster, "_token_refused", lambda address, wait=5.0: False)  # the fast probe said nothing
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    with pytest.raises(EngineError) as info:
        ray_cluster._join(_RefusingRay(), "10.0.0.1:6379", {})
    line = str(info.value)
    assert "\n" not in line and "10.0.0.1:6379" in line
    assert ("RAY_AUTH_MODE=token" in line) == (mode == "")
    assert "$RAY_AUTH_TOKEN" in line and "ray get-auth-token" in line


def test_the_fast_probe_refuses_before_ray_init(monkeypatch):
    monkeypatch.setattr(ray_cluster, "_token_refused", lambda address, wait=5.0: True)

    class _NoInit:
        def init(self, **kwargs):
            raise AssertionError("ray.init must not run")

    with pytest.raises(EngineError, match=r"uses token authentication|refused this shell's token"):
        ray_cluster._join(_NoInit(), "10.0.0.1:6379", {})


def test_the_probe_leaves_other_addresses_to_ray():
    assert not ray_cluster._token_refused("auto")
    assert not ray_cluster._token_refused("ray://head:10001")
