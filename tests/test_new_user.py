"""Issue 18, what a new user hit: ``--model`` against what a checkpoint says, training runs as weights,
a missing extra failing only its file, reports on fatal errors, eval's unmatched files, usage errors,
the summary, training offline, Ray, the Python API and housekeeping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ben_cli.cli.app import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save(path: Path, seed: int = 0, size: tuple[int, int] = (48, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _erase(*args: object) -> int:
    return main(["erase", *map(str, args), "--resolution", "256", "--device", "cpu", "-q"])


# --------------------------------------------------------------------------- --model against the checkpoint


def test_a_self_describing_checkpoint_that_disagrees_with_model_is_an_error(tmp_path, tiny_checkpoint, capsys):
    _save(tmp_path / "a.jpg")
    assert _erase(tmp_path / "a.jpg", tmp_path / "a.png", "--weights", tiny_checkpoint, "--model", "ben-base") == 2
    err = capsys.readouterr().err
    assert "this file is a tiny checkpoint, not 'ben-base'" in err and "--model tiny" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "a.png").exists()
    assert _erase(tmp_path / "a.jpg", tmp_path / "a.png", "--weights", tiny_checkpoint) == 0  # no --model: the file's


def test_an_official_file_loaded_as_the_wrong_model_says_which_model_it_fits(tmp_path, tiny_model, capsys):
    from ben_cli.checkpoints.load import save_checkpoint

    official = save_checkpoint(tiny_model, tmp_path / "theirs.pth", official_keys=True)
    _save(tmp_path / "a.jpg")
    assert _erase(tmp_path / "a.jpg", tmp_path / "a.png", "--weights", official, "--model", "ben-base") == 2
    err = capsys.readouterr().err
    assert "this file is a tiny checkpoint, not 'ben-base': pass --model tiny" in err
    assert "shape mismatch" not in err and len(err.strip().splitlines()) == 1
    assert _erase(tmp_path / "a.jpg", tmp_path / "a.png", "--weights", official, "--model", "tiny") == 0
