"""Choosing an engine: ``--engine local|ray`` and its flags, checked before any work, with or without Ray."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ben_cli.cli.app import main
from ben_cli.engines import RayOptions, create_run
from ben_cli.engines.local import BatchRun
from ben_cli.errors import OptionError, UsageError
from ben_cli.options import InferenceOptions
from ben_cli.plan import Plan


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    return path


def test_importing_ben_cli_imports_neither_ray_nor_fsspec():
    code = ("import sys, ben_cli, ben_cli.io, ben_cli.engines, ben_cli.plan, ben_cli.cli.app; "
            "print(' '.join(m for m in ('ray', 'fsspec') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == []


def test_without_ray_the_ray_engine_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "ray" else real(name, *a))
    src = _image(tmp_path)
    assert main(["erase", str(src.parent), str(tmp_path / "out"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert err == 'ben: error: --engine ray needs Ray Data: pip install "ben_cli[ray]"\n'
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--ray-address", "auto"], "--ray-address and --gpus-per-worker need --engine ray"),
    (["--gpus-per-worker", "1"], "--ray-address and --gpus-per-worker need --engine ray"),
    (["--engine", "cloud"], "--engine"),
])
def test_engine_flags_are_checked_first(tmp_path, capsys, args, message):
    src = _image(tmp_path)
    assert main(["erase", str(src.parent), str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _has_ray() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.skipif(not _has_ray(), reason="needs ray")
def test_the_ray_engine_refuses_pipes(tmp_path, capsys):
    src = _image(tmp_path)
    assert main(["erase", str(src), "-", "--engine", "ray"]) == 2
    assert "not standard input or output" in capsys.readouterr().err


def test_create_run_picks_the_engine():
    options = InferenceOptions(model="tiny", device="cpu", batch_size=3)
    run = create_run("local", Plan([]), options, workers=3)
    assert isinstance(run, BatchRun) and run.workers == 3 and run.batch_size == 3
    with pytest.raises(UsageError, match="need --engine ray"):
        create_run("local", Plan([]), options, ray=RayOptions(address="auto"))
    with pytest.raises(OptionError, match="unknown engine"):
        create_run("spark", Plan([]), options)
    with pytest.raises(OptionError, match="gpus_per_worker"):
        RayOptions(gpus_per_worker=-1)
