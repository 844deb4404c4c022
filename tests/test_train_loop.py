"""The training loop: schedule, configuration, the tiny acceptance run, exact resume, signals."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ben_cli.cli.app import main
from ben_cli.train.config import TrainConfig, dumps_toml, load_config, lr_at, resolve_config, save_config
from ben_cli.train.data import write_synthetic_pairs

REPO = Path(__file__).resolve().parents[1]


def rows(run: Path, kind: str = "train") -> list[dict]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_pairs(tmp_path_factory.mktemp("train") / "data", n=12, size=(288, 320), seed=0)


@pytest.fixture(scope="module")
def val_data(tmp_path_factory) -> Path:
    return write_synthetic_pairs(tmp_path_factory.mktemp("val") / "val", n=3, size=(300, 260), seed=5)


# --------------------------------------------------------------------------- schedule and config


def test_lr_warms_up_linearly_then_follows_a_cosine():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in range(3)] == pytest.approx([1e-4, 2e-4, 3e-4])
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # half-way down the cosine
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    after = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(after))
    assert lr_at(0, TrainConfig(lr=1e-3, warmup_steps=0, max_steps=100)) == pytest.approx(1e-3)


def test_resolved_defaults():
    cfg = TrainConfig(max_steps=60).resolved()
    assert cfg.warmup_steps == 3 and cfg.lr == 1e-4
    assert TrainConfig(max_steps=10**6).resolved().warmup_steps == 1000
    assert TrainConfig(model="tiny").resolved().lr == 1e-3
    assert TrainConfig(init="BEN2_Base.pth").resolved().lr == 1e-5
    assert TrainConfig(lr=3e-4, init="x").resolved().lr == 3e-4
    from ben_cli.errors import UsageError

    for bad in ({"resolution": 300}, {"batch_size": 0}, {"model": "nope"}, {"precision": "fp8"},
                {"best_metric": "fun"}, {"init": "a", "backbone_weights": "b"}):
        with pytest.raises(UsageError):
            TrainConfig(**bad).resolved()


def test_toml_round_trip_and_precedence(tmp_path):
    from ben_cli.errors import UsageError

    cfg = TrainConfig(model="tiny", data="/d", out="/o", betas=(0.8, 0.95)).resolved()
    path = save_config(cfg, tmp_path / "config.toml")
    assert load_config(path) == cfg
    assert 'data = "/d"' in dumps_toml(cfg) and "[loss]" in dumps_toml(cfg) and "val =" not in dumps_toml(cfg)

    (tmp_path / "mine.toml").write_text('max_steps = 7\nlr = 0.5\nseed = 3\n[loss]\nssim = 0.0\n')
    got = resolve_config({"max_steps": 9, "seed": None}, config_file=tmp_path / "mine.toml")
    assert (got.max_steps, got.lr, got.seed, got.loss.ssim, got.loss.bce) == (9, 0.5, 3, 0.0, 4.0)

    run = tmp_path / "run"
    save_config(TrainConfig(model="tiny", data="/d", out=str(run), max_steps=50).resolved(), run / "config.toml")
    resumed = resolve_config({"max_steps": 80}, resume=run)
    assert (resumed.model, resumed.max_steps, resumed.out) == ("tiny", 80, str(run))
    with pytest.raises(UsageError, match="--out"):
        resolve_config({"out": str(tmp_path / "elsewhere")}, resume=run)
    (tmp_path / "bad.toml").write_text("max_step = 3\n")
    with pytest.raises(UsageError, match="unknown key"):
        resolve_config({}, config_file=tmp_path / "bad.toml")
    (tmp_path / "bad.toml").write_text("max_steps = 'many'\n")
    with pytest.raises(UsageError, match="max_steps must be of type int"):
        resolve_config({}, config_file=tmp_path / "bad.toml")


# --------------------------------------------------------------------------- the tiny run of the issue


def test_tiny_run_learns_and_its_checkpoint_erases(data, tmp_path, one_torch_thread, capsys):
    run = tmp_path / "R"
    rc = main(["train", "base", "--data", str(data), "--out", str(run), "--model", "tiny", "--max-steps", "60",
               "--resolution", "256", "--batch-size", "2", "--device", "cpu", "--seed", "0", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "init: random initialisation" in err
    train = rows(run)
    assert [r["step"] for r in train] == list(range(1, 61))
    assert {"step", "loss", "loss_local", "loss_global", "loss_token", "lr", "grad_norm"} <= set(train[0])
    for r in train:
        assert r["loss"] == pytest.approx(r["loss_local"] + 0.3 * r["loss_global"] + 0.3 * r["loss_token"], rel=1e-5)
    first = np.mean([r["loss"] for r in train[:5]])
    last = np.mean([r["loss"] for r in train[-5:]])
    assert last <= 0.7 * first, (first, last)
    assert max(r["lr"] for r in train) == pytest.approx(1e-3)
    for name in ("config.toml", "loss.png", "last.safetensors", "best.safetensors", "last.state.pt"):
        assert (run / name).is_file(), name
    assert load_config(run / "config.toml").max_steps == 60

    from ben_cli.checkpoints.load import read_checkpoint

    meta = read_checkpoint(run / "last.safetensors").metadata
    assert meta["step"] == 60 and meta["train_config"]["model"] == "tiny"

    image = sorted((data / "im").iterdir())[0]
    out = tmp_path / "cut"
    rc = main(["erase", str(image), str(out), "--weights", str(run / "last.safetensors"), "--resolution", "256",
               "--device", "cpu", "-q"])
    assert rc == 0, capsys.readouterr().err
    from PIL import Image

    cutout = Image.open(out / f"{image.stem}.png")
    assert cutout.mode == "RGBA" and cutout.size == (320, 288)
    alpha = np.asarray(cutout)[..., 3]
    assert alpha.min() < 64 and alpha.max() > 192  # it separates something

    # the same folder again without --resume is refused
    rc = main(["train", "base", "--data", str(data), "--out", str(run), "--model", "tiny", "--device", "cpu"])
    assert rc == 2 and "--resume" in capsys.readouterr().err


# --------------------------------------------------------------------------- resume


def _cfg(data: Path, val: Path, out: Path, workers: int) -> TrainConfig:
    return TrainConfig(model="tiny", data=str(data), val=str(val), out=str(out), max_steps=4, resolution=256,
                       batch_size=1, grad_accum=2, device="cpu", seed=0, workers=workers, val_every=2,
                       save_every=100)


def test_resumed_run_repeats_the_uninterrupted_one(data, val_data, tmp_path, one_torch_thread):
    from ben_cli.checkpoints.load import read_checkpoint
    from ben_cli.train.base import train_base
    from ben_cli.train.loop import TrainingStopped

    quiet = lambda message: None  # noqa: E731
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_base(_cfg(data, val_data, whole, workers=0), say=quiet)
    with pytest.raises(TrainingStopped) as stopped:
        train_base(_cfg(data, val_data, split, workers=1), say=quiet, on_step=lambda step, model, row: step == 2)
    assert stopped.value.step == 2 and stopped.value.exit_code == 130
    assert [r["step"] for r in rows(split)] == [1, 2]
    train_base(_cfg(data, val_data, split, workers=1), resume=True, say=quiet)

    a, b = rows(whole), rows(split)
    assert [r["step"] for r in b] == list(range(1, 5))
    for key in ("loss", "loss_local", "loss_global", "loss_token", "lr", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-5, atol=1e-7, err_msg=key)
    va, vb = rows(whole, "val"), rows(split, "val")
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [2, 4]
    for key in ("max_f", "mae", "s_measure", "e_measure", "weighted_f"):
        np.testing.assert_allclose([r[key] for r in vb], [r[key] for r in va], rtol=1e-5, atol=1e-6, err_msg=key)
    wa, wb = read_checkpoint(whole / "last.safetensors"), read_checkpoint(split / "last.safetensors")
    for k, v in wa.state_dict.items():
        torch.testing.assert_close(wb.state_dict[k], v, rtol=1e-5, atol=1e-6)
    best = read_checkpoint(whole / "best.safetensors").metadata
    assert best["metric"] == "max_f" and best["step"] in (2, 4)
    assert best["value"] == pytest.approx(max(r["max_f"] for r in va))


def test_resume_of_a_finished_or_missing_run(data, tmp_path):
    from ben_cli.errors import UsageError
    from ben_cli.train.base import train_base

    with pytest.raises(UsageError, match="nothing to resume"):
        train_base(TrainConfig(model="tiny", data=str(data), out=str(tmp_path / "none"), device="cpu", workers=0),
                   resume=True, say=lambda m: None)


def test_sigterm_saves_and_exits_then_resumes(data, tmp_path, one_torch_thread):
    run = tmp_path / "R"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ben_cli", "train", "base", "--data", str(data), "--out", str(run), "--model",
           "tiny", "--max-steps", "500", "--resolution", "256", "--device", "cpu", "--workers", "1",
           "--save-every", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "log.jsonl").is_file() and len((run / "log.jsonl").read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    done = rows(run)
    step = done[-1]["step"]
    assert 2 <= step < 500 and [r["step"] for r in done] == list(range(1, step + 1))
    state = torch.load(run / "last.state.pt", weights_only=True)
    assert state["step"] == step and state["samples_seen"] == step

    rc = main(["train", "base", "--resume", str(run), "--max-steps", str(step + 1), "--workers", "0"])
    assert rc == 0
    assert [r["step"] for r in rows(run)] == list(range(1, step + 2))
    assert load_config(run / "config.toml").max_steps == step + 1


def test_bad_pairs_are_listed_once_and_skipped_or_fatal_with_strict(data, tmp_path, one_torch_thread, capsys):
    import shutil

    messy = tmp_path / "messy"
    shutil.copytree(data, messy)
    (messy / "im" / "zz_broken.jpg").write_bytes(b"garbage")
    (messy / "gt" / "zz_broken.png").write_bytes((data / "gt" / "0000.png").read_bytes())
    (messy / "im" / "zz_alone.png").write_bytes((data / "im" / "0000.png").read_bytes())
    common = ["train", "base", "--data", str(messy), "--model", "tiny", "--resolution", "256", "--device", "cpu",
              "--workers", "0", "--max-steps", "1"]
    rc = main([*common, "--out", str(tmp_path / "strict"), "--strict"])
    err = capsys.readouterr().err
    assert rc == 2 and "2 bad pair(s)" in err
    assert "im/zz_broken.jpg: image:" in err and "im/zz_alone.png: no mask" in err
    assert not (tmp_path / "strict" / "log.jsonl").exists()
    rc = main([*common, "--out", str(tmp_path / "lenient")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert err.count("im/zz_broken.jpg") == 1 and "12 training pair(s) left" in err


def test_mixed_precision_is_cuda_only(data, tmp_path, capsys):
    rc = main(["train", "base", "--data", str(data), "--out", str(tmp_path / "R"), "--model", "tiny",
               "--device", "cpu", "--precision", "bf16"])
    assert rc == 2 and "only on CUDA" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "ben_cli", "train", "base", "--help"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}, timeout=60)
    assert out.returncode == 0 and "--grad-checkpoint" in out.stdout and "--resume" in out.stdout


def test_plot_history_draws_a_png(tmp_path):
    from ben_cli.train.loop import plot_history

    history = [{"kind": "train", "step": s, "loss": 10 / s, "loss_local": 5 / s, "lr": 1e-3} for s in range(1, 30)]
    history += [{"kind": "val", "step": 10, "max_f": 0.5, "mae": None}, {"kind": "val", "step": 20, "max_f": 0.7,
                                                                          "mae": 0.1}]
    plot_history(tmp_path / "loss.png", history, "run")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert math.isfinite(history[0]["loss"])
