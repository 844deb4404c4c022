"""Cutout finishing on the model's device: the foreground colours are estimated where the model runs."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ben_cli import output as output_mod
from ben_cli.compose import decontaminate
from ben_cli.engines import local
from ben_cli.pipeline import Eraser
from ben_cli.plan import plan_run


def _soft(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 256, (1, 3, 40, 60), dtype=torch.uint8, generator=g)
    alpha = torch.randint(0, 256, (1, 1, 40, 60), dtype=torch.uint8, generator=g)
    return rgb, alpha


def test_decontaminate_on_the_cpu_is_decontaminate():
    rgb, alpha = _soft()
    assert torch.equal(output_mod.decontaminate_on(rgb, alpha, None), decontaminate(rgb, alpha))
    assert torch.equal(output_mod.decontaminate_on(rgb, alpha, torch.device("cpu")), decontaminate(rgb, alpha))


def test_decontaminate_runs_on_an_accelerator_and_falls_back_when_it_is_full(monkeypatch):
    seen: list[str] = []
    full = {"meta": False}

    def fake(rgb, alpha):
        seen.append(rgb.device.type)
        assert alpha.device == rgb.device
        if rgb.device.type == "meta" and full["meta"]:
            raise torch.OutOfMemoryError("out of memory")
        return torch.full(rgb.shape, 7, dtype=torch.uint8)

    monkeypatch.setattr(output_mod, "decontaminate", fake)
    rgb, alpha = _soft()
    out = output_mod.decontaminate_on(rgb, alpha, torch.device("meta"))  # stands in for a GPU
    assert seen == ["meta"] and out.device.type == "cpu" and int(out[0, 0, 0, 0]) == 7
    full["meta"] = True
    out = output_mod.decontaminate_on(rgb, alpha, torch.device("meta"))
    assert seen[1:] == ["meta", "cpu"] and out.device.type == "cpu"


def test_the_local_engine_finishes_on_the_replicas_device(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((30, 40, 3), 60 * i, np.uint8)).save(src / f"im{i}.png")
    devices = []
    real = local.write_outputs

    def spy(*args, device=None, **kwargs):
        devices.append(device)
        return real(*args, device=device, **kwargs)

    monkeypatch.setattr(local, "write_outputs", spy)
    model = torch.nn.Conv2d(3, 1, 1)
    eraser = Eraser(model, device=torch.device("cpu"), dtype=torch.float32, resolution=256)
    run = local.BatchRun(plan_run([src], tmp_path / "out", ["cutout"]).jobs, lambda: eraser, batch_size=2)
    assert run.execute().count("done") == 3
    assert devices == [None] * 3  # the CPU: finished where the writer runs
    assert output_mod.finishing_device(torch.device("cpu")) is None
    assert output_mod.finishing_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
