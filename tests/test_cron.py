"""Cron runs that stay stable (issue 18): inputs of one name, changed sources, other settings, an output
folder that cannot be written, and ben's own outputs never read as inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ben_cli.cli.app import main
from ben_cli.io import Pin, encode_image, encode_png, output_pin, read_output_pin, read_output_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _picture(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.fixture()
def ben(tiny_checkpoint):
    """``ben COMMAND ARGS`` in-process with the tiny network on the CPU; an option repeated in ARGS wins."""

    def run(command: str, *args: object) -> int:
        return main([command, "--weights", str(tiny_checkpoint), "--resolution", "256", "--device", "cpu",
                     *map(str, args)])

    return run


def _tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` and its modification time: a rerun that writes nothing keeps both."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _files(report: Path) -> dict[str, dict]:
    return {f["input"]: f for f in json.loads(report.read_text())["files"]}


# --------------------------------------------------------------------------- inputs of one name


def test_two_inputs_of_one_name_are_stable_over_three_runs(tmp_path, ben, capsys):
    a1 = _save(tmp_path / "photos" / "a.jpg", _picture(seed=1))
    a2 = _save(tmp_path / "photos2" / "a.jpg", _picture(seed=2))
    out, report = tmp_path / "same", tmp_path / "r.json"
    assert ben("erase", a1, a2, out, "-q") == 0
    assert "name clash" in capsys.readouterr().err  # said once, on the run that chose the names
    first = _tree(out)
    assert set(first) == {"a.jpg~1.png", "a.jpg~2.png"}
    owner = {name: read_output_pin(out / name).path for name in first}
    assert owner == {"a.jpg~1.png": "a.jpg", "a.jpg~2.png": "a.jpg"}
    assert read_output_pin(out / "a.jpg~1.png").root != read_output_pin(out / "a.jpg~2.png").root
    for args in ((a1, a2), (a2, a1), (a1, a2)):  # the order of the arguments changes nothing
        assert ben("erase", *args, out, "-q", "--report", report) == 0
        assert _tree(out) == first  # no new file, nothing redone
        files = _files(report)
        assert {k: v["status"] for k, v in files.items()} == {str(a1): "skipped", str(a2): "skipped"}
        assert files[str(a1)]["outputs"] == [str(out / "a.jpg~1.png")]  # each input's own cutout
        assert files[str(a2)]["outputs"] == [str(out / "a.jpg~2.png")]
        assert "name clash" not in capsys.readouterr().err


def test_two_folders_of_one_name_merged_are_stable(tmp_path, ben):
    for i, top in enumerate(("x", "y")):
        _save(tmp_path / top / "photos" / "IMG_0001.JPG", _picture(seed=i))
    ins = [tmp_path / "x" / "photos", tmp_path / "y" / "photos"]
    out, report = tmp_path / "out", tmp_path / "r.json"
    assert ben("erase", *ins, out, "-q") == 0
    first = _tree(out)
    assert set(first) == {"photos/IMG_0001.JPG~1.png", "photos/IMG_0001.JPG~2.png"}
    for _ in range(2):
        assert ben("erase", *ins, out, "-q", "--report", report) == 0
        assert _tree(out) == first
        assert {f["status"] for f in _files(report).values()} == {"skipped"}


def test_first_release_outputs_with_bare_names_are_read(tmp_path):
    from ben_cli.plan import plan_run

    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "c.jpg", _picture())
    _save(src / "d.jpg", _picture(seed=3))
    out.mkdir()
    (out / "c.png").write_bytes(encode_png(_picture(), source="c.jpg"))  # "ben:source: c.jpg", nothing else
    (out / "d.png").write_bytes(encode_png(_picture(), source="other.jpg"))  # another source's name
    assert read_output_pin(out / "c.png") == Pin("c.jpg")
    jobs = {Path(j.label).name: j for j in plan_run([src], out, ["cutout"]).jobs}
    assert jobs["c.jpg"].outputs["cutout"] == out / "c.png" and jobs["c.jpg"].previous == Pin("c.jpg")
    assert not jobs["c.jpg"].source_changed  # no size or time recorded: kept
    assert jobs["d.jpg"].outputs["cutout"] == out / "d.jpg.png"  # d.png stays other.jpg's


# --------------------------------------------------------------------------- changed sources, other settings


def test_a_changed_source_is_redone_and_counted(tmp_path, ben, capsys):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    _save(src / "a.png", _picture(seed=1))
    _save(src / "b.png", _picture(seed=2))
    assert ben("erase", src, out, "-q") == 0
    pin = read_output_pin(out / "a.png")
    assert (pin.size, pin.mtime_ns) == ((src / "a.png").stat().st_size, (src / "a.png").stat().st_mtime_ns)
    before = _tree(out)
    _save(src / "a.png", _picture(64, 48, seed=9))  # a new photo under the old name
    capsys.readouterr()
    assert ben("erase", src, out, "--report", report) == 0
    files = _files(report)
    assert files[str(src / "a.png")]["status"] == "done"
    assert files[str(src / "a.png")]["redone"] == "source changed"
    assert files[str(src / "b.png")]["status"] == "skipped" and "redone" not in files[str(src / "b.png")]
    assert json.loads(report.read_text())["run"]["redone"] == 1
    assert "redone (source changed)" in capsys.readouterr().err
    after = _tree(out)
    assert set(after) == set(before) and after["b.png"] == before["b.png"]  # no new file
    assert Image.open(out / "a.png").size == (48, 64)  # the new photo's cutout, in place
    assert ben("erase", src, out, "-q", "--report", report) == 0  # and then it is finished
    assert {f["status"] for f in _files(report).values()} == {"skipped"}


def test_outputs_made_with_other_settings_are_reported_once(tmp_path, ben, capsys):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    _save(src / "a.png", _picture(seed=1))
    _save(src / "b.png", _picture(seed=2))
    assert ben("erase", src, out, "-q") == 0
    assert "resolution=256" in read_output_pin(out / "a.png").settings
    before = _tree(out)
    capsys.readouterr()
    assert ben("erase", src, out, "-q", "--resolution", "384", "--report", report) == 0
    err = capsys.readouterr().err
    assert err.count("2 outputs were made with other settings; --overwrite to redo them") == 1
    assert _tree(out) == before  # kept, not silently redone
    assert json.loads(report.read_text())["run"]["other_settings"] == 2


# --------------------------------------------------------------------------- an output that cannot be written


@pytest.fixture()
def no_model(monkeypatch):
    from ben_cli.pipeline import Eraser

    def never(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(Eraser, "from_options", classmethod(never))


def test_an_unwritable_output_folder_is_refused_before_loading(tmp_path, ben, capsys, monkeypatch, no_model):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "a.png", _picture())
    out.mkdir()
    real_open = os.open

    def immutable(path, *args, **kwargs):  # what chattr +i does to every new file in the folder
        if Path(path).parent == out:
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", immutable)
    assert ben("erase", src, out, "-q") == 2
    err = capsys.readouterr().err
    assert f"cannot write in the output folder {out} (Operation not permitted)" in err
    assert len(err.strip().splitlines()) == 1
    assert not list(out.iterdir())


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes in a read-only folder")
def test_a_read_only_output_folder_is_refused_before_loading(tmp_path, ben, capsys, no_model):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "a.png", _picture())
    out.mkdir()
    out.chmod(0o555)
    try:
        assert ben("erase", src, out / "sub", "-q") == 2  # a folder still to create: its parent is tried
        assert f"cannot write in the output folder {out}" in capsys.readouterr().err
    finally:
        out.chmod(0o755)


def test_a_finished_run_into_an_unwritable_folder_is_not_refused(tmp_path, ben, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "a.png", _picture())
    assert ben("erase", src, out, "-q") == 0
    monkeypatch.setattr(os, "open", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    assert ben("erase", src, out, "-q") == 0  # nothing to write: nothing probed


# --------------------------------------------------------------------------- ben's own outputs are never inputs


def test_trimap_twice_never_reads_its_own_outputs(tmp_path, ben, capsys):
    tri = tmp_path / "tri"
    _save(tri / "one.png", _picture(seed=1))
    _save(tri / "two.jpg", _picture(seed=2))
    assert ben("trimap", tri, "--overlay", "-q") == 0
    first = _tree(tri)
    assert set(first) == {"one.png", "two.jpg", "one.trimap.png", "one.overlay.png", "two.trimap.png",
                          "two.overlay.png"}
    capsys.readouterr()
    assert ben("trimap", tri) == 0  # without --overlay: the overlays are no inputs either
    assert _tree(tri) == first
    row = next(line for line in capsys.readouterr().err.splitlines() if "ben's own outputs" in line)
    assert row.split()[-1] == "4"


def test_erase_never_makes_cutouts_of_ben_outputs(tmp_path, ben, capsys):
    tri, out, report = tmp_path / "tri", tmp_path / "out", tmp_path / "r.json"
    _save(tri / "one.png", _picture(seed=1))
    assert ben("trimap", tri, "--overlay", "-q") == 0
    capsys.readouterr()
    assert ben("erase", tri, out, "--report", report) == 0
    assert set(_tree(out)) == {"one.png"}
    assert read_output_source(out / "one.png") == "one.png"
    err = capsys.readouterr().err
    row = next(line for line in err.splitlines() if "ben's own outputs" in line)
    assert row.split() == ["skipped", "(ben's", "own", "outputs)", "2"]  # said once, in the summary
    assert json.loads(report.read_text())["run"]["own_outputs"] == 2
    assert ben("erase", tri / "one.trimap.png", tmp_path / "alone.png", "-q") == 0  # a lone file is read


# --------------------------------------------------------------------------- the record itself


def test_webp_cutouts_are_stable_and_a_changed_source_is_redone(tmp_path, ben, capsys):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    _save(src / "a" / "x.jpg", _picture(seed=1))
    _save(src / "b" / "x.jpg", _picture(seed=2))
    opts = ("--background", "white", "--format", "webp")
    assert ben("erase", src / "a" / "x.jpg", src / "b" / "x.jpg", out, *opts, "-q") == 0
    first = _tree(out)
    assert len(first) == 2 and all(name.endswith(".webp") for name in first)
    assert {read_output_pin(out / name).name for name in first} == {"x.jpg"}
    assert ben("erase", src / "a" / "x.jpg", src / "b" / "x.jpg", out, *opts, "--report", report) == 0
    assert {f["status"] for f in _files(report).values()} == {"skipped"} and _tree(out) == first
    _save(src / "b" / "x.jpg", _picture(64, 48, seed=9))
    assert ben("erase", src / "a" / "x.jpg", src / "b" / "x.jpg", out, *opts, "--report", report) == 0
    files = _files(report)
    assert files[str(src / "b" / "x.jpg")].get("redone") == "source changed"
    assert files[str(src / "a" / "x.jpg")]["status"] == "skipped" and set(_tree(out)) == set(first)


def test_the_record_reads_back_from_png_and_jpeg_starts(tmp_path):
    pin = Pin("a.jpg", "0123456789abcdef", "sub/a.jpg", 1234, 5678, "model=tiny resolution=256")
    png = encode_png(_picture(), source=pin)
    jpg = encode_image(_picture(), "jpg", source=pin)
    assert output_pin(png) == pin and output_pin(jpg) == pin
    assert output_pin(png[:200]) == pin and output_pin(jpg[:400]) == pin  # only the start is read
    assert output_pin(encode_image(_picture(), "jpg", source="b.png")) == Pin("b.png")
    webp = encode_image(_picture(), "webp", source=pin)
    assert output_pin(webp) == pin and output_pin(encode_image(_picture(), "webp", source='a "q" & <b>')) == Pin(
        'a "q" & <b>')
    exif = Image.Exif()
    exif[0x0112] = 1
    _save(tmp_path / "x.webp", _picture())  # a WebP of another program: no record
    assert read_output_pin(tmp_path / "x.webp") is None
    buf = tmp_path / "x.jpg"
    _save(buf, _picture(), exif=exif.tobytes(), comment=b"hello")  # a camera's JPEG: no record
    assert read_output_pin(buf) is None
