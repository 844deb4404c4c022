"""Several devices in one machine: parsing ``--device`` lists, one model replica per device, the shared
queue of batches (order, names, failures, out of memory, interrupts), all on fake CPU devices."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ben_cli.cli.app import main
from ben_cli.device import resolve_devices
from ben_cli.engines import Interrupted, local
from ben_cli.errors import DeviceUnavailableError, OptionError, UsageError
from ben_cli.options import InferenceOptions
from ben_cli.pipeline import Eraser, load_erasers
from ben_cli.plan import plan_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POISON = 7  # an image filled with this grey value trips the stand-in model


# --------------------------------------------------------------------------- parsing


@pytest.fixture
def three_gpus(monkeypatch):
    """CUDA reported available with three devices (nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)


@pytest.mark.parametrize(("spec", "expected"), [
    ("cuda", ["cuda:0", "cuda:1", "cuda:2"]),
    ("auto", ["cuda:0", "cuda:1", "cuda:2"]),
    ("cuda:0,cuda:2", ["cuda:0", "cuda:2"]),
    ("cuda:2, cuda:1", ["cuda:2", "cuda:1"]),
    ("cuda:1", ["cuda:1"]),
    ("cpu", ["cpu"]),
])
def test_cuda_lists_and_every_visible_gpu(three_gpus, spec, expected):
    assert [str(d) for d in resolve_devices(spec)] == expected


@pytest.mark.parametrize(("spec", "error", "names"), [
    ("cuda:0,cuda:0", UsageError, "'cuda:0' is listed twice"),
    ("cuda:0,cuda:3", DeviceUnavailableError, "'cuda:3'"),
    ("cuda:7", DeviceUnavailableError, "'cuda:7'"),
    ("cuda,cuda:1", UsageError, "'cuda' is not one"),
    ("cuda:0,,cuda:1", UsageError, "empty entry"),
    ("cpu,cuda:0", UsageError, "mixes cpu and cuda"),
])
def test_bad_device_lists_name_the_device(three_gpus, spec, error, names):
    with pytest.raises(error, match=names):
        resolve_devices(spec)


def test_one_gpu_or_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_devices("cuda") == [torch.device("cuda")]  # one device: as resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        resolve_devices("cuda:0,cuda:1")
    assert resolve_devices("cpu,cpu") == [torch.device("cpu")] * 2  # fake replicas: allowed on the CPU


def test_options_take_device_lists():
    assert InferenceOptions(device=" CUDA:0 , cuda:2").device == "cuda:0,cuda:2"
    assert InferenceOptions(device="cpu,cpu").device == "cpu,cpu"
    for bad in ("auto,cpu", "cuda:0,", "gpu:0,gpu:1", "cuda:0;cuda:1"):
        with pytest.raises(OptionError, match="unknown device"):
            InferenceOptions(device=bad)


# --------------------------------------------------------------------------- replicas


def test_load_erasers_reads_the_weights_once_and_replicates(tiny_checkpoint, monkeypatch):
    from ben_cli.checkpoints import load

    reads = []
    original = load.read_checkpoint
    monkeypatch.setattr(load, "read_checkpoint", lambda *a, **k: reads.append(a) or original(*a, **k))
    options = InferenceOptions(model="tiny", weights=tiny_checkpoint, device="cpu,cpu", resolution=256,
                               refiner="none")
    erasers = load_erasers(options)
    assert len(reads) == 1 and len(erasers) == 2
    a, b = erasers
    assert a.model is not b.model
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), name
        assert pa.data_ptr() != pb.data_ptr() or pa.numel() == 0, name  # a copy, not shared storage
    assert a.settings == b.settings and a.settings["device"] == "cpu"


def test_replicate_moves_every_tensor_and_keeps_the_settings(tmp_path, monkeypatch):
    """``meta`` stands in for a second device: anything left on the CPU would show."""
    from ben_cli.refine.net import NetRefiner

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # compile=True: keep its cache here
    net = NetRefiner(nn.Conv2d(5, 1, 1), source="r.safetensors")
    eraser = Eraser(nn.Conv2d(3, 1, 1), device=torch.device("cpu"), dtype=torch.float32, resolution=256,
                    refiner=net, batch_size=3, compile=True, settings={"model": "x"})
    eraser.model.__dict__["_constant_cache"] = {("layout", "cpu"): torch.ones(3)}
    twin = eraser.replicate("meta")
    assert twin.model.__dict__["_constant_cache"] == {}  # derived constants are rebuilt on the new device
    assert len(eraser.model.__dict__["_constant_cache"]) == 1
    assert twin.device == torch.device("meta") and twin.settings == {**eraser.settings, "device": "meta"}
    for name, value in vars(twin).items():
        if isinstance(value, torch.Tensor):
            assert value.device.type == "meta", name
        if isinstance(value, nn.Module):
            assert {p.device.type for p in value.parameters()} == {"meta"}, name
    assert twin.refiner is not net and twin.refiner.device.type == "meta" and twin.refiner.source == net.source
    assert net.device.type == "cpu" and next(eraser.model.parameters()).device.type == "cpu"  # original untouched
    assert twin._forward is not twin.model and twin._forward._orig_mod is twin.model  # compiled like the original
    assert (twin.resolution, twin.batch_size, twin.dtype, twin.compiled) == (256, 3, torch.float32, True)
    plain = Eraser(nn.Conv2d(3, 1, 1), device=torch.device("cpu"), dtype=torch.float32, resolution=256)
    copy = plain.replicate("cpu")
    assert copy._forward is copy.model and copy.refiner is plain.refiner  # a training-free refiner is shared


# --------------------------------------------------------------------------- the shared queue


class Recorder(nn.Module):
    """Logits from a fixed 1x1 conv; logs (name, batch) on each forward; ``meet`` makes the first
    forward wait until every replica is in one; raises ``error`` on a poison image (or, with
    ``only_batches``, on any batch of more than one image); ``delay`` seconds per forward."""

    def __init__(self, name: str, log: list, *, meet: threading.Barrier | None = None, delay: float = 0.0,
                 error: BaseException | None = None, only_batches: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(0.0)
        self.name, self.log, self.meet, self.delay = name, log, meet, delay
        self.error, self.only_batches = error, only_batches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append((self.name, x.shape[0], threading.current_thread().name))
        if self.meet is not None:
            meet, self.meet = self.meet, None
            meet.wait(timeout=20)  # a BrokenBarrierError fails the batch: the replicas never ran together
        time.sleep(self.delay)
        raw = x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(
            1, 3, 1, 1)
        poisoned = bool(((raw * 255).round() == POISON).flatten(1).all(1).any())
        if self.error is not None and (x.shape[0] > 1 if self.only_batches else poisoned):
            raise self.error
        return self.conv(x)


def _eraser(model: nn.Module) -> Eraser:
    return Eraser(model, device=torch.device("cpu"), dtype=torch.float32, resolution=256)


def _folder(tmp_path: Path, n: int, poison: int | None = None) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(20, 250, (30 + i, 40, 3), dtype=np.uint8)
        if i == poison:
            img[:] = POISON
        Image.fromarray(img).save(src / f"im{i:02d}.png")
    return src


def _run(src: Path, out: Path, models: list[nn.Module], *, batch_size: int = 2, workers: int = 2, **kwargs):
    plan = plan_run([src], out, ["cutout", "alpha"])
    events: list[tuple[str, dict]] = []
    seen: list[str] = []
    run = local.BatchRun(plan.jobs, lambda: [_eraser(m) for m in models], batch_size=batch_size, workers=workers,
                         on_event=lambda name, **info: events.append((name, info)),
                         on_result=lambda r: seen.append(Path(r.input).name), **kwargs)
    summary = run.execute()
    return summary, events, seen, run


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_replicas_share_the_work_and_write_what_one_writes(tmp_path):
    src = _folder(tmp_path, n=10)
    log: list = []
    one, _, seen_one, _ = _run(src, tmp_path / "one", [Recorder("solo", log)])
    log.clear()
    meet = threading.Barrier(2)
    # the slow replica finishes its batches after the fast one's later batches: order must not follow
    two, _, seen_two, run = _run(src, tmp_path / "two", [Recorder("a", log, meet=meet, delay=0.15),
                                                              Recorder("b", log, meet=meet)])
    assert two.count("done") == 10 and two.count("failed") == 0
    ran = {name for name, _, _ in log}
    assert ran == {"a", "b"}  # each replica took batches
    assert {thread for _, _, thread in log} <= {"ben-model-0", "ben-model-1"}
    names = [f"im{i:02d}.png" for i in range(10)]
    assert seen_one == seen_two == names  # results come in input order
    assert [r.input for r in two.results] == [r.input for r in one.results]
    assert _files(tmp_path / "one") == _files(tmp_path / "two")  # same names, same bytes
    assert run.settings["device"] == "cpu,cpu"
    assert not any(t.name.startswith("ben-model") for t in threading.enumerate())  # replicas stopped


def test_a_failing_image_fails_alone_on_its_replica(tmp_path):
    src = _folder(tmp_path, n=8, poison=5)
    log: list = []
    models = [Recorder(n, log, error=RuntimeError("boom"), delay=0.01) for n in "ab"]
    summary, _, seen, _ = _run(src, tmp_path / "out", models, batch_size=2)
    status = {Path(r.input).name: r for r in summary.results}
    assert [n for n, r in status.items() if r.status == "failed"] == ["im05.png"]
    assert status["im05.png"].error.startswith("internal error while running the model: RuntimeError: boom")
    assert summary.count("done") == 7 and seen == sorted(status)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"im{i:02d}{k}" for i in range(8) if i != 5 for k in (".png", ".alpha.png"))


def test_out_of_memory_on_one_replica_lowers_its_batch_size_only(tmp_path):
    src = _folder(tmp_path, n=16)
    log: list = []
    meet = threading.Barrier(2)
    models = [Recorder("ok", log, meet=meet, delay=0.02),
              Recorder("small", log, meet=meet, error=torch.OutOfMemoryError("CUDA out of memory"),
                       only_batches=True)]
    summary, events, _, run = _run(src, tmp_path / "out", models, batch_size=4)
    assert summary.count("done") == 16 and summary.count("failed") == 0
    lowered = [info for name, info in events if name == "batch_size"]
    assert lowered[0] == {"old": 4, "new": 2, "device": "cpu #2", "reason": "out of memory on cpu #2 at batch size 4"}
    assert all(info["device"] == "cpu #2" for info in lowered)
    assert run._limits[0] == 4 and run._limits[1] < 4 and run.batch_size == 4
    sizes = {name: [n for m, n, _ in log if m == name] for name in ("ok", "small")}
    assert 4 in sizes["ok"] and 1 not in sizes["ok"]  # the healthy replica keeps whole batches
    first_fail = sizes["small"].index(4)
    assert max(sizes["small"][first_fail + 1:], default=1) <= 2  # after its failure: one by one, then at most 2


@pytest.mark.parametrize("replicas", [1, 2])
def test_reads_that_finish_out_of_order_and_read_write_failures(tmp_path, monkeypatch, replicas):
    src = _folder(tmp_path, n=9)
    original_read = local.read_job

    def read(job, side):
        name = Path(job.label).name
        if name == "im04.png":
            raise OSError("disk on fire")
        if name in ("im00.png", "im01.png"):
            time.sleep(0.3)  # the first reads finish last
        return original_read(job, side)

    from ben_cli import output

    original_render = output.render

    def render(kind, image, pred, *args, device=None):
        if image.path.endswith("im06.png"):
            raise RuntimeError("compose broke")
        return original_render(kind, image, pred, *args, device=device)

    log: list = []
    reference, _, _, _ = _run(src, tmp_path / "ref", [Recorder("ref", log)], workers=1)
    monkeypatch.setattr(local, "read_job", read)
    monkeypatch.setattr(output, "render", render)
    summary, _, seen, _ = _run(src, tmp_path / "out", [Recorder(str(i), log) for i in range(replicas)],
                               batch_size=2, workers=4)
    assert seen == [f"im{i:02d}.png" for i in range(9)]
    failed = {Path(r.input).name: r.error for r in summary.results if r.status == "failed"}
    assert failed["im06.png"] == "internal error while writing: RuntimeError: compose broke"
    assert failed["im04.png"] == "internal error while reading: OSError: disk on fire"
    assert set(failed) == {"im04.png", "im06.png"} and summary.count("done") == 7
    expected = {k: v for k, v in _files(tmp_path / "ref").items() if not k.startswith(("im04", "im06"))}
    assert _files(tmp_path / "out") == expected  # each output is its own input's
    assert reference.count("done") == 9


def test_an_interrupt_in_a_replica_stops_the_run_and_keeps_complete_files(tmp_path):
    src = _folder(tmp_path, n=12, poison=6)
    log: list = []
    models = [Recorder(n, log, error=KeyboardInterrupt(), delay=0.02) for n in "ab"]
    summary, _, _, _ = _run(src, tmp_path / "out", models, batch_size=1)
    assert summary.interrupted == "SIGINT"
    done = [r for r in summary.results if r.status == "done"]
    names = [Path(r.input).name for r in done]
    assert names[:6] == [f"im{i:02d}.png" for i in range(6)] and "im06.png" not in names  # a later batch that
    # another replica had already taken may have been written too: then it is recorded
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(Path(o).name for r in done for o in r.outputs)  # complete files only, all recorded
    assert not any(t.name.startswith("ben-model") for t in threading.enumerate())


def test_sigterm_on_the_main_thread_stops_the_replicas(tmp_path):
    src = _folder(tmp_path, n=12)
    log: list = []
    plan = plan_run([src], tmp_path / "out", ["cutout"])
    count = {"n": 0}

    def on_result(result):
        count["n"] += 1
        if count["n"] == 3:
            raise Interrupted("SIGTERM")  # what the SIGTERM handler raises, on the thread that runs execute()

    run = local.BatchRun(plan.jobs, lambda: [_eraser(Recorder(n, log, delay=0.05)) for n in "ab"], batch_size=1,
                         workers=2, on_result=on_result)
    summary = run.execute()
    assert summary.interrupted == "SIGTERM" and 3 <= summary.count("done") < 12
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        Path(o).name for r in summary.results for o in r.outputs)
    assert not any(t.name.startswith("ben-model") for t in threading.enumerate())


def test_the_ray_engine_keeps_one_device_per_actor():
    import importlib.util

    from ben_cli.engines import create_run
    from ben_cli.plan import Plan

    if importlib.util.find_spec("ray") is None:
        pytest.skip("needs ray")
    with pytest.raises(UsageError, match="one device in each model actor"):
        create_run("ray", Plan([]), InferenceOptions(model="tiny", device="cpu,cpu"))


# --------------------------------------------------------------------------- end to end


def test_ben_erase_on_two_cpu_replicas_matches_one(tmp_path, tiny_checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(src / f"p{i}.png")
    reports = {}
    for name, device in (("one", "cpu"), ("two", "cpu,cpu")):
        report = tmp_path / f"{name}.json"
        assert main(["erase", str(src), str(tmp_path / name), "--weights", str(tiny_checkpoint), "--resolution",
                     "256", "--device", device, "--batch-size", "1", "--refiner", "none", "--save", "cutout,alpha",
                     "--report", str(report), "-q"]) == 0
        reports[name] = json.loads(report.read_text())
    assert _files(tmp_path / "one") == _files(tmp_path / "two") and len(_files(tmp_path / "one")) == 8
    assert reports["two"]["settings"]["device"] == "cpu,cpu" and reports["one"]["settings"]["device"] == "cpu"
    assert [f["input"] for f in reports["one"]["files"]] == [f["input"] for f in reports["two"]["files"]]


def test_ben_erase_refuses_a_duplicate_gpu_before_loading(tmp_path, three_gpus, capsys):
    src = _folder(tmp_path, n=1)
    assert main(["erase", str(src), str(tmp_path / "out"), "--device", "cuda:1,cuda:1", "-q"]) == 2
    assert "'cuda:1' is listed twice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
