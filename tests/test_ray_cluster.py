"""``ben erase --engine ray`` on a real two-node Ray cluster started on this machine with ``ray start``.

A head and a second node of one CPU each (the layout the issue found hanging), token authentication
on (Ray 2.60's default for ``ray start --head``; the token is the module's own, in the environment),
a temp dir of their own (so that no other test's ``ray.init`` finds them). Every ``ben`` runs as a
subprocess through ``--ray-address``. Every process the module starts is stopped at the end by its own
process id (never ``ray stop``, which would stop other Ray runtimes on the machine). About 1.5 minutes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray")
pytest.importorskip("ray.data")
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(RAY is None or not Path("/proc").is_dir(), reason="needs the ray CLI and /proc")]

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 12


# --------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parents() -> dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
    return out


def _cluster_pids(temp: Path) -> set[int]:
    """The processes of the cluster in ``temp``: those naming it on their command line, and their descendants."""
    parents = _parents()
    found = {pid for pid in parents if str(temp) in _cmdline(pid)}
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in found} - found
        grew = bool(more)
        found |= more
    return found


def _raylets(temp: Path) -> dict[str, int]:
    """{"head": pid, "worker": pid} of the two raylets."""
    out = {}
    for pid in _cluster_pids(temp):
        cmd = _cmdline(pid)
        if "raylet/raylet" in cmd:
            out["head" if " --head" in cmd else "worker"] = pid
    return out


def _stop(pids: set[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
            time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, temp: Path, address: str, env: dict[str, str]) -> None:
        self.temp, self.address, self.env = temp, address, env
        self.started: set[int] = set()

    def ray_start(self, *args: str) -> None:
        subprocess.run([RAY, "start", "--num-cpus", "1", "--disable-usage-stats", *args], env=self.env, check=True,
                       capture_output=True, timeout=120)
        self.started |= _cluster_pids(self.temp)

    def ben(self, *args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "ben_cli", *args], env=env or self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture(scope="module")
def cluster():
    temp = Path(tempfile.mkdtemp(prefix="rbt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), PYTHONPATH=str(ROOT),
               RAY_USAGE_STATS_ENABLED="0",
               RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",  # a lost node seen in ~3 s
               RAY_health_check_failure_threshold="3")
    port = _free_port()
    c = Cluster(temp, f"127.0.0.1:{port}", env)
    try:
        c.ray_start("--head", "--port", str(port), "--temp-dir", str(temp), "--include-dashboard", "false")
        c.ray_start("--address", c.address)
        assert set(_raylets(temp)) == {"head", "worker"}
        yield c
    finally:
        ours = c.started | _cluster_pids(temp)
        _stop(ours)
        left = {p for p in ours | _cluster_pids(temp) if Path(f"/proc/{p}").exists() and not _zombie(p)}
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left: {sorted(left)}"


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(3)
    for i in range(IMAGES):
        h, w = 48 + (i % 3) * 8, 64
        pixels = np.full((h, w, 3), 40, np.uint8)
        pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = rng.integers(0, 256, 3)
        (root / f"d{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / f"d{i % 2}" / f"im{i:02d}.png")
    return root


def _erase_args(weights: Path, src: Path, out: Path, *more: str) -> list[str]:
    return ["erase", str(src), str(out), "--resolution", "256", "--device", "cpu", "--weights", str(weights),
            "--save", "cutout,alpha", "-q", *more]


@pytest.fixture(scope="module")
def local_outputs(tmp_path_factory, tiny_checkpoint, inputs) -> Path:
    out = tmp_path_factory.mktemp("local")
    done = subprocess.run([sys.executable, "-m", "ben_cli", *_erase_args(tiny_checkpoint, inputs, out)],
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},  # as the actors
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def _pixels(path: Path) -> tuple:
    with Image.open(io.BytesIO(path.read_bytes())) as im:
        return im.mode, im.size, im.tobytes(), im.text.get("ben:source")


def _ben_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ben:")]


# --------------------------------------------------------------------------- tests


def test_a_shell_without_the_clusters_token_is_told_in_one_line(cluster, tiny_checkpoint, inputs, tmp_path):
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-token")  # not the user's ~/.ray/auth_token
    t0 = time.monotonic()
    proc = cluster.ben(*_erase_args(tiny_checkpoint, inputs, tmp_path / "out", "--engine", "ray",
                                    "--ray-address", cluster.address), env=env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = _ben_lines(err)
    assert len(lines) == 1 and "uses token authentication" in lines[0] and "RAY_AUTH_MODE=token" in lines[0], err
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


_HOLD = textwrap.dedent("""
    import ray, sys
    ray.init(address=sys.argv[1], namespace="ben-test")
    Block = ray.remote(num_cpus=0.9)(type("Block", (), {"ping": lambda self: 1}))
    blocks = [Block.options(name=f"block{i}", lifetime="detached", scheduling_strategy="SPREAD").remote()
              for i in range(2)]
    ray.get([b.ping.remote() for b in blocks])
""")
_FREE = textwrap.dedent("""
    import ray, sys
    ray.init(address=sys.argv[1], namespace="ben-test")
    for i in range(2):
        ray.kill(ray.get_actor(f"block{i}"))
""")


def test_a_run_that_cannot_start_stops_with_the_missing_resource(cluster, tiny_checkpoint, inputs, tmp_path):
    """Other work holds 0.9 of each node's CPU: no model worker fits. ben stops after --stall-timeout, exit 1."""
    subprocess.run([sys.executable, "-c", _HOLD, cluster.address], env=cluster.env, check=True,
                   capture_output=True, timeout=120)
    try:
        report = tmp_path / "report.json"
        t0 = time.monotonic()
        proc = cluster.ben(*_erase_args(tiny_checkpoint, inputs, tmp_path / "out", "--engine", "ray", "--ray-address",
                                        cluster.address, "--stall-timeout", "6", "--report", str(report)))
        _, err = proc.communicate(timeout=240)
        waited = time.monotonic() - t0
    finally:
        subprocess.run([sys.executable, "-c", _FREE, cluster.address], env=cluster.env, check=True,
                       capture_output=True, timeout=120)
    assert proc.returncode == 1, err
    line = [x for x in _ben_lines(err) if "no progress" in x]
    assert len(line) == 1 and "made no progress for " in line[0], err
    assert "the model workers need 0.5 CPU each and no node has that free (free CPUs by node: 0.1, 0.1)" in line[0]
    assert waited < 90
    run = json.loads(report.read_text())["run"]
    assert run["error"] and "no progress" in run["error"] and run["not_processed"] == IMAGES


def test_a_lost_node_loses_no_image(cluster, tiny_checkpoint, inputs, local_outputs, tmp_path):
    """Two model workers on the two 1-CPU nodes (the layout that hung: 0 of 12 images in 10 minutes); the
    second node's raylet killed mid-run: every image done exactly once, as the local engine does it."""
    out, report = tmp_path / "out", tmp_path / "report.json"
    proc = cluster.ben(*_erase_args(tiny_checkpoint, inputs, out, "--engine", "ray", "--ray-address", cluster.address,
                                    "--workers", "2", "--stall-timeout", "120", "--report", str(report)))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.rglob("*.alpha.png"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    written = len(list(out.rglob("*.alpha.png")))
    assert proc.poll() is None, proc.communicate()[1]
    assert written < IMAGES, "the run ended before the node could be lost"
    os.kill(_raylets(cluster.temp)["worker"], signal.SIGKILL)
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    files = json.loads(report.read_text())["files"]
    assert len(files) == IMAGES and len({f["input"] for f in files}) == IMAGES
    assert {f["status"] for f in files} == {"done"}
    ray_tree = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    local_tree = sorted(p.relative_to(local_outputs).as_posix() for p in local_outputs.rglob("*") if p.is_file())
    assert ray_tree == local_tree and len(ray_tree) == 2 * IMAGES
    for rel in ray_tree:
        assert _pixels(out / rel) == _pixels(local_outputs / rel), rel
