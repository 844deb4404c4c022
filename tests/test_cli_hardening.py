"""What a new user hit: stable names for cron, partial outputs, up-front checks, transparency, ICC,
pipes, several inputs, warnings, and the Python helper ``ben_cli.remove``."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

import ben_cli
from ben_cli.cli.app import main
from ben_cli.io import read_output_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _picture(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.fixture()
def erase(tiny_checkpoint):
    def run(*args: object) -> int:
        return main(["erase", *map(str, args), "--weights", str(tiny_checkpoint), "--resolution", "256",
                     "--device", "cpu", "-q"])

    return run


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- cron-safe names


def test_output_names_never_change_when_inputs_are_added(tmp_path, erase, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "a.jpg", _picture(seed=1))
    assert erase(src, out) == 0
    first = (out / "a.png").read_bytes()
    assert read_output_source(out / "a.png") == "a.jpg"

    _save(src / "a.png", _picture(seed=2))
    capsys.readouterr()
    assert erase(src, out, "--report", tmp_path / "r.json") == 0
    assert _tree(out) == {"a.png", "a.png.png"}
    assert (out / "a.png").read_bytes() == first  # still the cutout of a.jpg, not redone
    assert read_output_source(out / "a.png.png") == "a.png"
    err = capsys.readouterr().err
    assert "warning" in err and "a.png.png" in err and str(src / "a.png") in err  # said, not silent
    files = {Path(f["input"]).name: f["status"] for f in json.loads((tmp_path / "r.json").read_text())["files"]}
    assert files == {"a.jpg": "skipped", "a.png": "done"}

    (src / "a.jpg").unlink()  # removing an input frees nothing: its name stays reserved
    assert erase(src, out) == 0
    assert _tree(out) == {"a.png", "a.png.png"}


def test_only_the_missing_kind_is_written(tmp_path, erase):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "x.png", _picture())
    assert erase(src, out, "--save", "cutout,alpha,trimap") == 0
    stamps = {p: (out / p).stat().st_mtime_ns for p in ("x.png", "x.alpha.png")}
    (out / "x.trimap.png").unlink()
    assert erase(src, out, "--save", "cutout,alpha,trimap", "--report", tmp_path / "r.json") == 0
    assert (out / "x.trimap.png").is_file()
    assert {p: (out / p).stat().st_mtime_ns for p in stamps} == stamps
    (entry,) = json.loads((tmp_path / "r.json").read_text())["files"]
    assert entry["status"] == "done" and entry["outputs"] == [str(out / "x.trimap.png")]


# --------------------------------------------------------------------------- checks before the model runs


def test_output_under_a_file_and_report_folder_fail_up_front(tmp_path, erase, capsys, monkeypatch):
    from ben_cli.pipeline import Eraser

    def never(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(Eraser, "from_options", classmethod(never))
    src = tmp_path / "in"
    _save(src / "a.png", _picture())
    (tmp_path / "file").write_text("x")
    assert erase(src, tmp_path / "file" / "out") == 2
    assert "lies under the file" in capsys.readouterr().err
    assert erase(src, tmp_path / "file") == 2
    assert "is a file" in capsys.readouterr().err
    assert erase(src, tmp_path / "out", "--report", tmp_path) == 2
    assert "--report" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_terminal_stdout_and_stdin_are_refused(tmp_path, erase, capsys, monkeypatch):
    src = _save(tmp_path / "a.png", _picture())
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert erase(src, "-") == 2
    assert "terminal" in capsys.readouterr().err
    monkeypatch.undo()

    class Tty(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty(io.BytesIO(b"")))
    assert erase("-", tmp_path / "o.png") == 2
    assert "pipe one image in" in capsys.readouterr().err


def test_stdin_to_a_file_named_stdin_png(tmp_path, erase, monkeypatch):
    buf = io.BytesIO()
    Image.fromarray(_picture()).save(buf, "PNG")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(buf.getvalue())))
    monkeypatch.chdir(tmp_path)
    assert erase("-", "stdin.png") == 0
    with Image.open(tmp_path / "stdin.png") as im:
        assert im.mode == "RGBA" and im.size == (64, 48)


def test_an_empty_input_folder_warns_and_exits_0(tmp_path, erase, capsys):
    (tmp_path / "empty").mkdir()
    assert erase(tmp_path / "empty", tmp_path / "out") == 0
    assert "no images found" in capsys.readouterr().err


# --------------------------------------------------------------------------- what the input had


def test_rgba_input_keeps_its_transparency(tmp_path, erase):
    rgba = np.dstack([_picture(), np.full((48, 64), 255, np.uint8)])
    rgba[:, :20, 3] = 0  # a fully transparent strip
    rgba[:, 20:30, 3] = 100
    src = _save(tmp_path / "t.png", rgba)
    out = tmp_path / "out"
    assert erase(src, out, "--save", "cutout,alpha") == 0
    cut = np.asarray(Image.open(out / "t.png"))
    matte = np.asarray(Image.open(out / "t.alpha.png"))
    assert (cut[:, :20, 3] == 0).all() and (matte[:, :20] == 0).all()
    assert (cut[:, 20:30, 3] <= 100).all()
    np.testing.assert_array_equal(cut[..., 3], matte)


def test_cutouts_keep_the_icc_profile(tmp_path, erase):
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = _save(tmp_path / "p.jpg", _picture(), icc_profile=profile, quality=95)
    out = tmp_path / "out"
    assert erase(src, out, "--save", "cutout,alpha") == 0
    with Image.open(out / "p.png") as im:
        assert im.info.get("icc_profile") == profile
    with Image.open(out / "p.alpha.png") as im:
        assert "icc_profile" not in im.info


# --------------------------------------------------------------------------- conveniences


def test_several_inputs_and_folders(tmp_path, erase):
    a = _save(tmp_path / "a.jpg", _picture(seed=3))
    b = _save(tmp_path / "sub" / "b.png", _picture(seed=4))
    _save(tmp_path / "d1" / "x.png", _picture(seed=5))
    _save(tmp_path / "d2" / "deep" / "x.png", _picture(seed=6))
    out = tmp_path / "out"
    assert erase(a, b, tmp_path / "d1", tmp_path / "d2", out) == 0
    assert _tree(out) == {"a.png", "b.png", "d1/x.png", "d2/deep/x.png"}


def test_fp16_on_the_cpu_is_warned_about(tmp_path, erase, capsys, monkeypatch):
    import torch

    import ben_cli.device  # warned where the CPU has no native kernels for it (bf16 on AVX512-BF16 is not)

    monkeypatch.setattr(ben_cli.device, "cpu_supports", lambda dtype: dtype == torch.float32)
    src = _save(tmp_path / "a.png", _picture())
    assert erase(src, tmp_path / "out", "--precision", "bf16") == 0
    assert "ben: warning: bf16 on the CPU" in capsys.readouterr().err


def test_refiner_weights_alone_names_itself(tmp_path, erase, capsys):
    src = _save(tmp_path / "a.png", _picture())
    assert erase(src, tmp_path / "out", "--refiner-weights", tmp_path / "r.safetensors") == 2
    err = capsys.readouterr().err
    assert "refiner weights file not found" in err and "'auto'" not in err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ben {ben_cli.__version__}"


def test_remove_returns_a_cutout_and_caches_the_model(tiny_checkpoint, monkeypatch):
    from ben_cli import api
    from ben_cli.pipeline import Eraser

    api.clear_cache()
    calls = []
    original = Eraser.from_options.__func__

    def counting(cls, options=None, **kw):
        calls.append(options)
        return original(cls, options, **kw)

    monkeypatch.setattr(Eraser, "from_options", classmethod(counting))
    rgba = np.dstack([_picture(), np.full((48, 64), 255, np.uint8)])
    rgba[:5, :5, 3] = 0
    image = Image.fromarray(rgba)
    first = ben_cli.remove(image, weights=tiny_checkpoint, device="cpu", resolution=256, decontaminate=False)
    second = ben_cli.remove(image.convert("RGB"), weights=tiny_checkpoint, device="cpu", resolution=256)
    assert len(calls) == 1  # loaded once
    assert first.mode == "RGBA" and first.size == (64, 48)
    assert (np.asarray(first)[:5, :5, 3] == 0).all()
    cut = np.asarray(first)
    visible = cut[..., 3] > 0
    np.testing.assert_array_equal(cut[..., :3][visible], rgba[..., :3][visible])  # original colours
    matte = ben_cli.remove(image.convert("RGB"), weights=tiny_checkpoint, device="cpu", resolution=256,
                           output="alpha")
    assert matte.mode == "L"
    np.testing.assert_array_equal(np.asarray(second)[..., 3], np.asarray(matte))
    api.clear_cache()
