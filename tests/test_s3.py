"""``s3://`` INPUT and OUTPUT against a real S3-compatible server: moto's server mode (``moto[server]``), started
by the module on 127.0.0.1 in its own process, with credentials checked (an IAM user and its access key; any
other key is refused). ben reaches it as a user reaches any S3-compatible store: ``AWS_ENDPOINT_URL`` and the
key in the environment (s3fs and botocore read them). Local engine and Ray engine (a 2-CPU runtime started
here, after the environment is set, so that its workers see it). About 40-70 s.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from ben_cli.cli.app import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "photos"
GOOD = ["a.png", "sub/b.jpg", "sub/deep/c.webp", "sub/d.png"]
BROKEN = "sub/broken.jpg"
ARGS = ["--resolution", "256", "--device", "cpu", "--save", "cutout,alpha", "-q"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _picture(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    pixels = np.full((44 + 4 * i, 56, 3), 30, np.uint8)
    pixels[10:-10, 12:-12] = rng.integers(0, 256, 3)
    return pixels


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The server, a bucket holding ``in/`` (the images, a broken one) and the same tree on the local disk.

    Yields (env for ben, boto3 client, local copy of in/). The process environment holds the endpoint and
    the key while the module runs (Ray's workers inherit it), and is restored after.
    """
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},  # then every call is checked
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_PROFILE", "RAY_ADDRESS")}
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the moto server did not start"
                time.sleep(0.1)
        anyone = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "x",
                  "aws_secret_access_key": "x"}
        iam = boto3.client("iam", **anyone)  # the three calls allowed without a key
        iam.create_user(UserName="ben")
        key = iam.create_access_key(UserName="ben")["AccessKey"]
        iam.put_user_policy(UserName="ben", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
               "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"], "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(env)
        os.environ.pop("AWS_PROFILE", None)
        os.environ.pop("RAY_ADDRESS", None)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket=BUCKET)
        local = tmp_path_factory.mktemp("local") / "in"
        for i, rel in enumerate(GOOD):
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_picture(i)).save(local / rel)
        (local / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
        for path in sorted(local.rglob("*")):
            if path.is_file():
                s3.put_object(Bucket=BUCKET, Key=f"in/{path.relative_to(local).as_posix()}", Body=path.read_bytes())
        yield env, s3, local
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _objects(s3, prefix: str) -> dict[str, bytes]:
    """{key relative to ``prefix``: bytes} of every object under it."""
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) + 1 :]] = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


def _pixels(data: bytes) -> tuple:
    with Image.open(io.BytesIO(data)) as im:
        return im.mode, im.size, im.tobytes()


def _statuses(report: Path) -> dict[str, str]:
    return {Path(f["input"]).name: f["status"] for f in json.loads(report.read_text())["files"]}


@pytest.fixture(scope="module")
def local_run(store, tiny_checkpoint, tmp_path_factory):
    """The same images from a local folder into a local folder: (outputs by relative name, statuses)."""
    _, _, local = store
    out, report = tmp_path_factory.mktemp("local-out") / "out", tmp_path_factory.mktemp("r") / "local.json"
    assert main(["erase", str(local), str(out), "--weights", str(tiny_checkpoint), *ARGS, "--report", str(report)]) == 1
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    return files, _statuses(report)


def _same_as_local(got: dict[str, bytes], local_run) -> None:
    files, _ = local_run
    assert sorted(got) == sorted(files) and len(files) == 2 * len(GOOD)
    for rel, data in got.items():
        assert _pixels(data) == _pixels(files[rel]), rel


def test_local_engine_reads_and_writes_s3_as_local_folders(store, tiny_checkpoint, local_run, tmp_path):
    _, s3, _ = store
    report = tmp_path / "r.json"
    rc = main(["erase", f"s3://{BUCKET}/in", f"s3://{BUCKET}/local", "--weights", str(tiny_checkpoint), *ARGS,
               "--report", str(report)])
    assert rc == 1  # the broken file fails alone
    assert _statuses(report) == local_run[1]
    assert _statuses(report)["broken.jpg"] == "failed"
    _same_as_local(_objects(s3, "local"), local_run)
    again = tmp_path / "again.json"  # names are stable: a second run skips every output
    assert main(["erase", f"s3://{BUCKET}/in", f"s3://{BUCKET}/local", "--weights", str(tiny_checkpoint), *ARGS,
                 "--report", str(again)]) == 1
    assert {k: v for k, v in _statuses(again).items() if k != "broken.jpg"} == dict.fromkeys(
        [Path(g).name for g in GOOD], "skipped")


def test_ray_engine_reads_and_writes_s3_as_local_folders(store, tiny_checkpoint, local_run, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    _, s3, _ = store
    report = tmp_path / "r.json"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # after the env is set: workers see the store
    try:
        rc = main(["erase", f"s3://{BUCKET}/in", f"s3://{BUCKET}/ray", "--weights", str(tiny_checkpoint), *ARGS,
                   "--engine", "ray", "--workers", "1", "--report", str(report)])
    finally:
        ray.shutdown()
    assert rc == 1
    assert _statuses(report) == local_run[1]
    _same_as_local(_objects(s3, "ray"), local_run)


def _ben(*args: str, env: dict[str, str]) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.Popen([sys.executable, "-m", "ben_cli", *args], env={**clean, **env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_run_leaves_only_whole_objects_and_resumes(store, tiny_checkpoint, tmp_path):
    """SIGKILL mid-run (no cleanup at all): every object under OUTPUT decodes whole; the next run does the rest."""
    env, s3, _ = store
    for i in range(12):  # enough work for the kill to land mid-run
        buf = io.BytesIO()
        Image.fromarray(_picture(10 + i)).save(buf, format="PNG")
        s3.put_object(Bucket=BUCKET, Key=f"many/p{i:02d}.png", Body=buf.getvalue())
    target = f"s3://{BUCKET}/killed"
    proc = _ben("erase", f"s3://{BUCKET}/many", target, "--weights", str(tiny_checkpoint), *ARGS, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not _objects(s3, "killed"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    written = _objects(s3, "killed")
    assert 0 < len(written) < 24, "the kill should land mid-run"
    for key, data in written.items():
        assert ".ben-" not in key and not key.startswith(".")
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # whole
    report = tmp_path / "r.json"
    rerun = _ben("erase", f"s3://{BUCKET}/many", target, "--weights", str(tiny_checkpoint), *ARGS,
                 "--report", str(report), env=env)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    statuses = list(_statuses(report).values())
    assert statuses.count("done") + statuses.count("skipped") == 12 and statuses.count("skipped") >= 1
    assert len(_objects(s3, "killed")) == 24


@pytest.mark.parametrize(("args", "expected"), [
    ([f"s3://nobucket-{os.getpid()}/in", f"s3://{BUCKET}/x"], "input not found: s3://nobucket-"),
    ([f"s3://{BUCKET}/in", f"s3://nobucket-{os.getpid()}/out"], "there is no bucket nobucket-"),
])
def test_a_missing_bucket_is_one_line_and_exit_2(store, tiny_checkpoint, args, expected):
    env, s3, _ = store
    proc = _ben("erase", *args, "--weights", str(tiny_checkpoint), *ARGS, env=env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ben: error: ") and expected in lines[0], err
    assert not _objects(s3, "x")


@pytest.mark.parametrize("which", ["secret", "key"])
def test_bad_credentials_are_one_line_and_exit_2(store, tiny_checkpoint, which):
    env, s3, _ = store
    bad = {**env, "AWS_SECRET_ACCESS_KEY": "wrong"} if which == "secret" else {**env, "AWS_ACCESS_KEY_ID": "AKIANOBODY"}
    proc = _ben("erase", f"s3://{BUCKET}/in", f"s3://{BUCKET}/denied", "--weights", str(tiny_checkpoint), *ARGS,
                env=bad)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"s3://{BUCKET}/in: access denied" in lines[0] and "credentials" in lines[0], err
    assert not _objects(s3, "denied")
