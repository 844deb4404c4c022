"""The local engine never dies of one image: read, model and write failures, out of memory, interrupts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ben_cli.cli.app import main
from ben_cli.engines import Interrupted, local, steps
from ben_cli.pipeline import Eraser
from ben_cli.plan import plan_run

POISON = 7  # an image filled with this grey value trips the stand-in model


class StandIn(nn.Module):
    """Logits from a fixed 1x1 conv; raises ``error`` for batches that hold a poison image
    (or, with ``only_batches``, for any batch of more than one image)."""

    def __init__(self, error: BaseException | None = None, only_batches: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(0.0)
        self.error, self.only_batches = error, only_batches
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        raw = x * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(
            1, 3, 1, 1)
        poisoned = ((raw * 255).round() == POISON).flatten(1).all(1).any()
        if self.error is not None and (x.shape[0] > 1 if self.only_batches else bool(poisoned)):
            raise self.error
        return self.conv(x)


def _folder(tmp_path: Path, n: int = 5, poison: int | None = 2) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(20, 250, (40, 50, 3), dtype=np.uint8)
        if i == poison:
            img[:] = POISON
        Image.fromarray(img).save(src / f"im{i}.png")
    return src


def _eraser(model: nn.Module) -> Eraser:
    return Eraser(model, device=torch.device("cpu"), dtype=torch.float32, resolution=256)


def _run(src: Path, out: Path, model: nn.Module, batch_size: int = 4, **kwargs):
    plan = plan_run([src], out, ["cutout", "alpha"])
    events: list[tuple[str, dict]] = []
    run = local.BatchRun(plan.jobs, lambda: _eraser(model), batch_size=batch_size, workers=2,
                         on_event=lambda name, **info: events.append((name, info)), **kwargs)
    return run.execute(), events


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("boom"), torch.OutOfMemoryError("CUDA out of memory")],
                         ids=["MemoryError", "RuntimeError", "OutOfMemoryError"])
def test_a_model_failure_fails_one_image_only(tmp_path, error):
    src = _folder(tmp_path)
    summary, _ = _run(src, tmp_path / "out", StandIn(error))
    status = {Path(r.input).name: r for r in summary.results}
    assert status["im2.png"].status == "failed"
    assert [n for n, r in status.items() if r.status == "done"] == ["im0.png", "im1.png", "im3.png", "im4.png"]
    reason = status["im2.png"].error
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        assert reason == "out of memory while running the model"
    else:
        assert reason.startswith("internal error while running the model: RuntimeError: boom")
        assert "Traceback" in status["im2.png"].traceback
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"im{i}{k}" for i in (0, 1, 3, 4) for k in (".png", ".alpha.png"))


def test_out_of_memory_retries_one_by_one_and_lowers_the_batch_size(tmp_path):
    src = _folder(tmp_path, n=6, poison=None)
    model = StandIn(torch.OutOfMemoryError("CUDA out of memory"), only_batches=True)
    summary, events = _run(src, tmp_path / "out", model, batch_size=4)
    assert summary.count("done") == 6 and summary.count("failed") == 0
    lowered = [info for name, info in events if name == "batch_size"]
    assert lowered == [{"old": 4, "new": 2, "reason": "out of memory at batch size 4"},
                       {"old": 2, "new": 1, "reason": "out of memory at batch size 2"}]
    assert model.batches[:5] == [4, 1, 1, 1, 1]  # the failed batch of 4, then each of its images
    assert set(model.batches[5:]) == {2, 1}


@pytest.mark.parametrize("stage", ["reading", "writing"])
def test_read_and_write_failures_of_any_kind_fail_one_image(tmp_path, monkeypatch, stage):
    src = _folder(tmp_path, poison=None)
    if stage == "reading":
        original = steps.resize_for_model
        victim = np.asarray(Image.open(src / "im3.png"))

        def resize(rgb, side):
            if np.array_equal(rgb, victim):
                raise MemoryError
            return original(rgb, side)

        monkeypatch.setattr(steps, "resize_for_model", resize)
        expected = "out of memory while reading"
    else:
        from ben_cli import output

        original = output.render

        def render(kind, image, pred, *args, device=None):
            if image.path.endswith("im3.png"):
                raise RuntimeError("compose broke")
            return original(kind, image, pred, *args, device=device)

        monkeypatch.setattr(output, "render", render)
        expected = "internal error while writing: RuntimeError: compose broke"
    summary, _ = _run(src, tmp_path / "out", StandIn())
    failed = [r for r in summary.results if r.status == "failed"]
    assert [(Path(r.input).name, r.error) for r in failed] == [("im3.png", expected)]
    assert summary.count("done") == 4


@pytest.fixture
def stand_in(monkeypatch):
    """``ben erase`` with the stand-in model instead of loading weights; returns the model."""
    model = StandIn(RuntimeError("boom"))
    monkeypatch.setattr(Eraser, "from_options", classmethod(lambda cls, options=None, **kw: _eraser(model)))
    return model


def test_an_interrupt_does_not_count_skipped_files_as_done(tmp_path, stand_in, capsys):
    src, out = _folder(tmp_path), tmp_path / "out"
    stand_in.error = None
    assert main(["erase", str(src), str(out), "-q"]) == 0
    for i in range(3):
        (out / f"im{i}.png").unlink()
    stand_in.error = KeyboardInterrupt()  # at im2: im0 and im1 done, im3 and im4 skipped
    assert main(["erase", str(src), str(out), "--batch-size", "1"]) == 130
    assert "ben: interrupted: 2 of 5 done (2 skipped: outputs exist); run again to resume" in capsys.readouterr().err


def test_cli_reports_the_failed_image_and_exits_1(tmp_path, stand_in, capsys):
    src = _folder(tmp_path)
    report = tmp_path / "r.json"
    assert main(["erase", str(src), str(tmp_path / "out"), "--report", str(report), "-q"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"ben: {src / 'im2.png'}: internal error while running the model: RuntimeError: boom"]
    data = json.loads(report.read_text())
    assert data["totals"]["done"] == 4 and data["totals"]["failed"] == 1
    assert data["settings"]["device"] == "cpu" and data["settings"]["refiner"] == "none"


@pytest.mark.parametrize(("error", "code", "signal_name"),
                         [(KeyboardInterrupt(), 130, "SIGINT"), (Interrupted("SIGTERM"), 143, "SIGTERM")])
def test_an_interrupt_writes_the_report_and_says_how_far_it_got(tmp_path, stand_in, capsys, error, code,
                                                                 signal_name):
    stand_in.error = error
    src = _folder(tmp_path)
    report = tmp_path / "r.json"
    rc = main(["erase", str(src), str(tmp_path / "out"), "--report", str(report), "--batch-size", "1"])
    assert rc == code
    err = capsys.readouterr().err
    assert "ben: interrupted: 2 of 5 done; run again to resume" in err
    data = json.loads(report.read_text())
    assert data["run"]["interrupted"] == signal_name
    assert data["totals"]["done"] == 2 and data["run"]["not_processed"] == 3
    assert "Traceback" not in err


def test_a_load_failure_still_writes_the_report(tmp_path, monkeypatch, capsys):
    from ben_cli.errors import CheckpointError

    def broken(cls, options=None, **kw):
        raise CheckpointError("x.pth: not a checkpoint")

    monkeypatch.setattr(Eraser, "from_options", classmethod(broken))
    src = _folder(tmp_path, n=2, poison=None)
    report = tmp_path / "r.json"
    assert main(["erase", str(src), str(tmp_path / "out"), "--report", str(report), "-q"]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    data = json.loads(report.read_text())
    assert data["totals"]["done"] == 0 and data["run"]["not_processed"] == 2


def test_the_default_batch_size_is_the_devices(tmp_path):
    from ben_cli.options import InferenceOptions

    options = InferenceOptions(model="tiny")
    assert options.batch_size is None
    assert [options.batch_size_for(t) for t in ("cpu", "cuda", "mps")] == [1, 8, 4]
    assert options.replace(batch_size=3).batch_size_for("cuda") == 3
    # the local engine without a batch size takes the loaded Eraser's
    model = StandIn()
    eraser = Eraser(model, device=torch.device("cpu"), dtype=torch.float32, resolution=256, batch_size=2)
    plan = plan_run([_folder(tmp_path, n=5, poison=None)], tmp_path / "out", ["alpha"])
    run = local.BatchRun(plan.jobs, lambda: eraser, batch_size=None, workers=1)
    assert run.execute().count("done") == 5
    assert run.batch_size == 2 and model.batches == [2, 2, 1]


def test_from_options_uses_one_image_per_batch_on_the_cpu(tmp_path):
    from ben_cli.checkpoints.load import save_checkpoint
    from ben_cli.models.registry import build_model

    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("tiny"), weights)
    assert Eraser.from_options(weights, model="tiny", device="cpu", resolution=256).batch_size == 1
    assert Eraser.from_options(weights, model="tiny", device="cpu", resolution=256, batch_size=3).batch_size == 3
