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


# --------------------------------------------------------------------------- training runs as weights


@pytest.fixture()
def run_folder(tmp_path, tiny_checkpoint) -> Path:
    """A training run as ``ben train`` leaves it: config.toml, best/last.safetensors, last.state.pt."""
    import shutil

    import torch

    run = tmp_path / "runs" / "base"
    run.mkdir(parents=True)
    (run / "config.toml").write_text('model = "tiny"\n')
    for name in ("best.safetensors", "last.safetensors"):
        shutil.copy(tiny_checkpoint, run / name)
    torch.save({"format": "ben_cli.train_state", "step": 3, "optimizer": {}}, run / "last.state.pt")
    return run


def test_a_training_run_folder_means_its_best_weights(tmp_path, run_folder, capsys):
    _save(tmp_path / "a.jpg")
    assert _erase(tmp_path / "a.jpg", tmp_path / "a.png", "--weights", run_folder) == 0
    assert f"ben: warning: {run_folder} is a training run: using its best.safetensors" in capsys.readouterr().err


def test_a_resume_state_as_weights_says_what_it_is_and_what_to_use(tmp_path, run_folder, capsys):
    _save(tmp_path / "a.jpg")
    assert _erase(tmp_path / "a.jpg", tmp_path / "a.png", "--weights", run_folder / "last.state.pt") == 2
    err = capsys.readouterr().err
    assert "a training run's resume state" in err and f"use {run_folder / 'best.safetensors'} instead" in err


def test_run_folders_for_base_refiner_weights_and_init(run_folder, tiny_model):
    import torch

    from ben_cli.checkpoints.weights import find_refiner_weights, find_weights
    from ben_cli.errors import BenWarning
    from ben_cli.models.registry import build_model
    from ben_cli.train.base import initialise
    from ben_cli.train.config import TrainConfig

    with pytest.warns(BenWarning, match="is a training run: using its best.safetensors"):
        assert find_weights(run_folder) == run_folder / "best.safetensors"  # --weights, --base-weights
    with pytest.warns(BenWarning, match="is a training run"):
        assert find_refiner_weights(run_folder) == run_folder / "best.safetensors"
    model = build_model("tiny")
    with pytest.warns(BenWarning, match="is a training run"):
        said = initialise(model, TrainConfig(model="tiny", init=str(run_folder)))
    assert said == f"whole network from {run_folder / 'best.safetensors'} (ben checkpoint)"
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- a missing extra fails only its file


def test_a_video_without_pyav_fails_alone_and_the_images_are_processed(tmp_path, tiny_checkpoint, capsys,
                                                                       monkeypatch):
    import json
    import sys

    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "one.jpg")
    src.joinpath("clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    report = tmp_path / "r.json"
    assert _erase(src, out, "--weights", tiny_checkpoint, "--report", report) == 1
    err = capsys.readouterr().err
    assert 'clip.mp4: video needs PyAV: pip install "ben_cli[video]"' in err
    assert (out / "one.png").is_file()
    files = {Path(f["input"]).name: f["status"] for f in json.loads(report.read_text())["files"]}
    assert files == {"one.jpg": "done", "clip.mp4": "failed"}
    assert _erase(src / "clip.mp4", out, "--weights", tiny_checkpoint) == 2  # only videos: nothing could run


def test_every_install_hint_has_one_form():
    """``pip install "ben_cli[EXTRA]"`` everywhere: it works from an index and from a checkout."""
    import re

    root = Path(__file__).resolve().parents[1]
    texts = {p: p.read_text() for p in [root / "README.md", *(root / "ben_cli").rglob("*.py")]}
    bad = {str(p.relative_to(root)): m for p, t in texts.items()
           for m in re.findall(r'pip install (?:"\.\[\w+\]"|pillow-heif|av\b|ray\b)', t)}
    assert not bad
    from ben_cli.errors import install_hint
    from ben_cli.video.decode import EXTRA_HINT

    assert install_hint("video") == 'pip install "ben_cli[video]"' and install_hint("video") in EXTRA_HINT


# --------------------------------------------------------------------------- --report on fatal errors


def test_a_run_that_ends_with_exit_2_still_writes_its_report_with_the_error(tmp_path, tiny_checkpoint, capsys):
    import json

    _save(tmp_path / "in" / "a.jpg")
    report = tmp_path / "r.json"
    assert _erase(tmp_path / "in", tmp_path / "out", "--weights", tmp_path / "nope.pth", "--report", report) == 2
    err = capsys.readouterr().err.strip()
    got = json.loads(report.read_text())
    assert got["run"]["error"] == err.removeprefix("ben: error: ") and "weights file not found" in err
    assert got["files"] == []

    report.unlink()  # an error while the model loads: the report holds the settings and the error
    assert _erase(tmp_path / "in", tmp_path / "out", "--weights", tiny_checkpoint, "--model", "ben-base",
                  "--report", report) == 2
    got = json.loads(report.read_text())
    assert "this file is a tiny checkpoint" in got["run"]["error"] and got["settings"]["model"] == "ben-base"
    assert got["run"]["inputs"] == 1 and got["totals"]["done"] == 0


# --------------------------------------------------------------------------- messages and help


def test_click_usage_errors_are_one_line_with_the_choices(capsys):
    assert main(["erase", "a.jpg", "out/", "--model", "huge"]) == 2
    err = capsys.readouterr().err
    assert err == ("ben: error: invalid value for --model/-m: 'huge' is not one of 'ben2-base', 'ben-base', "
                   "'tiny' (see 'ben erase -h')\n")
    assert main(["weights", "convert", "--bogus"]) == 2
    assert capsys.readouterr().err == "ben: error: no such option: --bogus (see 'ben weights convert -h')\n"


def test_weights_takes_model_before_a_subcommand(places, capsys):
    assert main(["weights", "-m", "ben2-base"]) == 1  # nothing found here, but listed
    err = capsys.readouterr().err
    assert err.startswith("ben2-base: BEN2_Base.pth") and "tiny:" not in err


def _help(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    assert main([*argv, "-h"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [["erase"], ["trimap"], ["eval"], ["bench"], ["weights", "convert"],
                                  ["train", "base"], ["train", "refiner"]])
def test_help_at_80_columns_cuts_nothing_and_shows_no_bool_placeholder(argv, capsys, monkeypatch):
    out = _help(capsys, monkeypatch, *argv)
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "…" not in out and "<bool>" not in out and "{" not in usage
    assert max(len(line) for line in out.splitlines()) <= 80


def test_erase_help_shows_the_flags_the_save_default_and_a_plain_usage_line(capsys, monkeypatch):
    out = _help(capsys, monkeypatch, "erase")
    assert "erase [OPTIONS] INPUT... OUTPUT " in out and "--no-decontaminate" in out
    words = " ".join(line.strip("│ ") for line in out.splitlines())
    assert "[default: cutout]" in " ".join(words.split())
    assert "one table column each" in " ".join(
        line.strip("│ ") for line in _help(capsys, monkeypatch, "bench").splitlines())


# --------------------------------------------------------------------------- the summary


def test_a_run_with_everything_skipped_shows_no_unresolved_settings(tmp_path, tiny_checkpoint, capsys):
    import shutil

    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(tiny_checkpoint, folder / "tiny.safetensors")
    _save(tmp_path / "in" / "a.jpg")
    args = ["erase", str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(folder), "--resolution", "256"]
    assert main([*args, "-q"]) == 0
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "skipped (outputs exist)" in err and "version" in err
    assert str(folder) not in err and "auto" not in err


def test_a_video_rate_counts_frames():
    from ben_cli.cli.driver import summary_line
    from ben_cli.engines.results import FileResult, RunSummary

    summary = RunSummary([FileResult("clip.mp4", "done", frames=20)], 1, 2.0, loaded=True)
    assert summary.frames_per_second == 10.0 and summary.images_per_second == 0.0
    assert summary.to_json()["totals"]["frames_per_second"] == 10.0
    assert summary_line(summary, "ben erase") == "ben erase: 1 done (20 frames) in 2.0 s"


def test_trimap_of_one_file_prints_a_one_line_summary(tmp_path, tiny_checkpoint, capsys):
    _save(tmp_path / "a.jpg")
    assert main(["trimap", str(tmp_path / "a.jpg"), "--weights", str(tiny_checkpoint), "--resolution", "256",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ben: ben trimap: 1 done in ")


def test_a_pipe_prints_a_one_line_summary_unless_verbose(tmp_path, tiny_checkpoint):
    import os
    import subprocess
    import sys

    _save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    base = [sys.executable, "-m", "ben_cli", "erase", "-", "-", "--weights", str(tiny_checkpoint), "--resolution",
            "256", "--device", "cpu", "--refiner", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(base, input=data, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith(b"\x89PNG")
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ben: ben erase: 1 done in "), lines
    proc = subprocess.run([*base, "-v"], input=data, capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0 and "skipped (outputs exist)" in proc.stderr.decode()


# --------------------------------------------------------------------------- ben train base


def test_an_existing_run_is_refused_before_the_data_scan(tmp_path, monkeypatch, capsys):
    import ben_cli.train.base as base

    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("{}\n")
    monkeypatch.setattr(base, "scan_dataset", lambda *a, **k: pytest.fail("scanned the data first"))
    assert main(["train", "base", "--data", str(tmp_path / "data"), "--out", str(run), "--model", "tiny",
                 "--device", "cpu"]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_a_file_that_is_not_an_image_is_named_as_such(tmp_path):
    from ben_cli.train.data import scan_pairs

    for kind in ("im", "gt"):
        (tmp_path / kind).mkdir()
    _save(tmp_path / "im" / "a.jpg")
    (tmp_path / "gt" / "a.txt").write_text("not a mask")
    _save(tmp_path / "im" / "b.jpg")
    scan = scan_pairs(tmp_path, decode=False)
    assert {b.name: b.reason for b in scan.bad} == {"im/a.jpg": "gt/a.txt is not an image",
                                                    "im/b.jpg": "no mask gt/b.*"}


# --------------------------------------------------------------------------- --engine ray with a Ray running here


def test_ray_already_running_here_is_joined_without_sizes(monkeypatch):
    import logging
    import warnings

    ray = pytest.importorskip("ray")
    from ben_cli.engines.ray_cluster import connect as _connect
    from ben_cli.errors import BenWarning

    calls: list[dict] = []

    def init(**kwargs):  # what ray.init does when a cluster runs on this machine and sizes are given
        calls.append(kwargs)
        if "num_cpus" in kwargs:
            raise ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert _connect(None, quiet=False) is True
    assert [str(w.message) for w in said if issubclass(w.category, BenWarning)] == [
        "joining the Ray already running on this machine (ray_address local starts a separate one)"]
    assert calls[1]["address"] == "auto" and "num_cpus" not in calls[1]
    assert all(c["logging_level"] == logging.WARNING for c in calls)  # Ray's INFO lines only with -v
    calls.clear()
    with pytest.raises(ValueError):
        _connect("local", quiet=False, verbose=True)  # local: a runtime of its own, never the one running here
    assert calls == [{"address": "local", "num_cpus": calls[0]["num_cpus"], "include_dashboard": False,
                      "log_to_driver": True, "logging_level": logging.INFO}]


# --------------------------------------------------------------------------- the Python API


def test_remove_takes_the_model_load_model_returns(tiny_checkpoint):
    import ben_cli

    model = ben_cli.load_model(tiny_checkpoint)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    cutout = ben_cli.remove(image, model=model, resolution=256, refiner="none")
    assert cutout.mode == "RGBA" and cutout.size == (56, 40)
    again = ben_cli.remove(image, weights=tiny_checkpoint, device="cpu", resolution=256, refiner="none")
    assert np.array_equal(np.asarray(cutout), np.asarray(again))  # the same network either way
    from ben_cli.errors import OptionError

    with pytest.raises(OptionError, match="not both"):
        ben_cli.remove(image, model=model, weights=tiny_checkpoint)
    ben_cli.api.clear_cache()


def test_the_readme_python_snippet_imports_what_it_uses():
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "ben_cli.remove" in block)
    compile(snippet, "README.md", "exec")
    assert "from PIL import Image" in snippet and "PIL.Image" not in snippet and "model=model" in snippet


# --------------------------------------------------------------------------- housekeeping


def test_the_suite_never_writes_the_real_home_cache():
    import os

    from ben_cli.paths import cache_dir

    home = Path.home().resolve()
    assert not cache_dir().resolve().is_relative_to(home)
    assert not Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).resolve().is_relative_to(home)


def test_an_offline_first_run_leaves_no_hub_lock(tmp_path):
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BEN_CACHE_DIR": str(cache)}
    code = ("from ben_cli.checkpoints.weights import download_weights\n"
            "from ben_cli.errors import WeightsNotFoundError\n"
            "try:\n    download_weights('ben2-base')\nexcept WeightsNotFoundError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "BEN2_Base.pth not found" in proc.stdout, proc.stderr
    assert not cache.exists() or not [p for p in cache.rglob("*")], list(cache.rglob("*"))


def test_the_readme_says_how_long_the_tests_take_and_has_no_stray_notes():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "FACTS:" not in readme
    test_section = readme.split("## Test", 1)[1].split("\n## ", 1)[0]
    assert "minutes" in test_section
