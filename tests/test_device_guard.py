"""Every replica's work runs with its own device current: ``--device cuda:N`` never lands on cuda:0.

No GPU here: the guard is replaced by a recorder, and the Eraser stand-in names a CUDA device it
never touches."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from ben_cli.engines import local, steps
from ben_cli.pipeline import Prediction
from ben_cli.plan import plan_run


class FakeEraser:
    """Answers ``predict`` and says which devices were current while it ran."""

    resolution = 32
    batch_size = 2

    def __init__(self, device: torch.device, current: list[torch.device | None]) -> None:
        self.device, self.current, self.seen = device, current, []
        self.settings: dict = {}

    def predict(self, images, *, resized=None, want_trimap=False):
        self.seen.append(self.current[-1] if self.current else None)
        return [Prediction(np.full(im.shape[:2], 255, np.uint8)) for im in images]


def _recording_guard(monkeypatch) -> list[torch.device | None]:
    current: list[torch.device | None] = []

    @contextlib.contextmanager
    def guard(device):
        current.append(device)
        try:
            yield
        finally:
            current.pop()

    monkeypatch.setattr(steps, "device_guard", guard)
    return current


def test_predict_each_runs_on_the_replicas_device(monkeypatch):
    current = _recording_guard(monkeypatch)
    eraser = FakeEraser(torch.device("cuda", 1), current)
    job = SimpleNamespace(outputs={"alpha": "a.alpha.png"})
    item = (job, SimpleNamespace(rgb=np.zeros((8, 8, 3), np.uint8)), np.zeros((32, 32, 3), np.uint8))
    out = steps.predict_each(eraser, [item, item])
    assert [error for _, _, error in out] == [None, None]
    assert eraser.seen == [torch.device("cuda", 1)] and current == []


def test_one_replica_on_cuda_n_is_guarded_in_the_local_engine(tmp_path: Path, monkeypatch):
    current = _recording_guard(monkeypatch)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 12), (i, 0, 0)).save(src / f"im{i}.png")
    eraser = FakeEraser(torch.device("cuda", 3), current)
    monkeypatch.setattr(local, "finishing_device", lambda device: None)  # nothing is finished on the fake GPU
    plan = plan_run([src], tmp_path / "out", ["alpha"])
    summary = local.BatchRun(plan.jobs, lambda: [eraser], batch_size=2, workers=1).execute()
    assert [r.status for r in summary.results] == ["done"] * 3
    assert eraser.seen and set(eraser.seen) == {torch.device("cuda", 3)}
