"""``ben bench`` and :mod:`ben_cli.bench` with the tiny network on the CPU: what is measured and reported.

Timings are never asserted: only presence, positivity and consistency (images/s = images / seconds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ben_cli.bench import (
    MEMORY_KINDS,
    STAGES,
    BenchOptions,
    make_images,
    parse_batch_sizes,
    parse_size,
    run_bench,
)
from ben_cli.cli.app import main
from ben_cli.errors import OptionError
from ben_cli.options import InferenceOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RES = "256"
FAST = ("--images", "2", "--size", "64x48", "--repeats", "1", "--warmup", "0")


@pytest.fixture()
def bench(tiny_checkpoint, monkeypatch):
    """``ben bench ARGS`` in-process with the tiny checkpoint on the CPU; returns the exit code."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the start-up subprocess

    def run(*args: object) -> int:
        return main(["bench", "--model", "tiny", "--weights", str(tiny_checkpoint), "--device", "cpu",
                     "--resolution", RES, "--workers", "1", *map(str, args)])

    return run


def _check_measure(m: dict, images: int) -> None:
    assert m["images"] == images
    assert m["seconds"] > 0
    assert m["images_per_s"] == pytest.approx(images / m["seconds"])
    assert m["ms_per_image"] == pytest.approx(1000 * m["seconds"] / images)


def test_json_has_every_stage_one_row_per_batch_size_and_the_official_ratio(bench, capsys):
    capsys.readouterr()
    assert bench(*FAST, "--images", "3", "--batch-size", "1,2", "-b", "2", "--no-startup", "--json", "-") == 0
    out, err = capsys.readouterr()
    data = json.loads(out)  # stdout carries the JSON alone; the table is on stderr
    assert data["schema"] == "ben-bench/1"
    s = data["settings"]
    assert (s["model"], s["device"], s["precision"], s["resolution"], s["images"]) == ("tiny", "cpu", "fp32", 256, 3)
    assert s["batch_sizes"] == [1, 2] and s["image_size"] == "64x48" and s["input"] is None
    assert s["torch"] and s["device_name"] and s["refiner"] in ("matting", "net", "none")
    assert s["memory_kind"] in MEMORY_KINDS
    assert [r["batch_size"] for r in data["rows"]] == [1, 2]
    official = data["official"]
    assert official["precision"] == "fp32"
    _check_measure(official["total"], 3)
    _check_measure(official["model"], 3)
    for row in data["rows"]:
        assert list(row["stages"]) == list(STAGES)
        for m in row["stages"].values():
            _check_measure(m, 3)
        assert row["stages_ms_per_image"] == pytest.approx(sum(m["ms_per_image"] for m in row["stages"].values()))
        _check_measure(row["erase"], 3)
        assert row["latency_ms"] > 0 and row["peak_memory_bytes"] > 0
        assert row["vs_official"]["erase"] == pytest.approx(row["erase"]["images_per_s"]
                                                            / official["total"]["images_per_s"])
        assert row["vs_official"]["base"] == pytest.approx(row["stages"]["base"]["images_per_s"]
                                                           / official["model"]["images_per_s"])
    assert data["startup"] is None and data["load_seconds"] > 0
    for text in ("erase path", "official-style", *STAGES):
        assert text in err


def test_input_folder_skips_what_does_not_decode_and_takes_at_most_images(bench, tmp_path, capsys):
    src = tmp_path / "photos"
    (src / "c").mkdir(parents=True)
    Image.fromarray(np.full((40, 56, 3), 200, np.uint8)).save(src / "a.jpg")
    (src / "b.txt").write_text("not an image")
    (src / "c" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.fromarray(np.zeros((48, 64, 4), np.uint8)).save(src / "c" / "d.png")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(src / "e.png")
    report = tmp_path / "bench.json"
    capsys.readouterr()
    assert bench("--input", src, "--images", "2", "--repeats", "1", "--warmup", "0", "--no-official",
                 "--no-startup", "--json", report) == 0
    _, err = capsys.readouterr()
    assert "broken.jpg" in err
    data = json.loads(report.read_text())
    s = data["settings"]
    assert (s["images"], s["image_size"], s["input"]) == (2, "folder", str(src))
    assert data["official"] is None and data["rows"][0]["vs_official"] is None
    _check_measure(data["rows"][0]["erase"], 2)


def test_startup_runs_ben_erase_in_a_subprocess(bench, tmp_path, capsys):
    report = tmp_path / "bench.json"
    assert bench(*FAST, "--images", "1", "--no-official", "--startup", "--json", report) == 0
    up = json.loads(report.read_text())["startup"]
    assert 0 < up["first_output_s"] <= up["exit_s"]
    assert up["load_s"] > 0 and up["first_image_s"] > 0 and up["import_s"] >= 0
    assert up["load_s"] + up["first_image_s"] < up["exit_s"]  # the run's own timings fit in the wall time
    assert "start-up" in capsys.readouterr().err


def test_the_stage_breakdown_writes_what_the_erase_path_writes(tiny_checkpoint, tmp_path):
    options = InferenceOptions(model="tiny", weights=tiny_checkpoint, device="cpu", resolution=int(RES))
    steps: list[str] = []
    report = run_bench(options, BenchOptions(batch_sizes=(2,), images=2, size=(64, 48), repeats=1, warmup=0,
                                             startup=False, workers=1, work_dir=tmp_path),
                       on_step=steps.append)
    assert report.to_json()["rows"][0]["batch_size"] == 2 and steps
    images = sorted((tmp_path / "images").glob("*.jpg"))
    assert len(images) == 2
    for i, src in enumerate(images):
        staged = np.asarray(Image.open(tmp_path / "stages_b2" / f"{i:04d}.png"))
        erased = np.asarray(Image.open(tmp_path / "erase_b2" / f"{src.stem}.png"))
        assert staged.shape == (48, 64, 4)
        np.testing.assert_array_equal(staged, erased)
        with Image.open(tmp_path / "official" / f"{i:04d}.png") as official:
            assert official.mode == "RGBA" and official.size == (64, 48)


@pytest.mark.parametrize("args, flag", [
    (("--batch-size", "0"), "--batch-size"),
    (("--batch-size", "2,x"), "--batch-size"),
    (("--images", "0"), "--images"),
    (("--size", "64"), "--size"),
    (("--repeats", "0"), "--repeats"),
    (("--warmup", "-1"), "--warmup"),
    (("--resolution", "300"), "--resolution"),
    (("--input", "missing"), "--input"),
    (("--input", ".", "--size", "64x48"), "--size"),
    (("--json", "."), "--json"),
])
def test_bad_flags_exit_2_with_one_line(bench, capsys, args, flag):
    capsys.readouterr()
    assert bench(*args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ben: error:") and flag in lines[0]


def test_help_lists_the_flags(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["bench", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--weights", "--device", "--precision", "--batch-size", "--refiner", "--compile",
                 "--resolution", "--images", "--size", "--input", "--repeats", "--warmup", "--json",
                 "--official", "--no-official", "--startup", "--no-startup"):
        assert flag in text


def test_parsers_and_options():
    assert parse_batch_sizes(["1,8", "16", " 8 "]) == (1, 8, 16)
    assert parse_size("1500x1000") == (1500, 1000)
    for bad in (["0"], ["a"], [","]):
        with pytest.raises(OptionError):
            parse_batch_sizes(bad)
    with pytest.raises(OptionError):
        parse_size("1500")
    with pytest.raises(OptionError):
        BenchOptions(repeats=0)
    assert BenchOptions(size="32x16").size == (32, 16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (BenchOptions().for_device(cpu).images, BenchOptions().for_device(cpu).repeats) == (4, 1)
    assert (BenchOptions().for_device(cuda).images, BenchOptions().for_device(cuda).repeats) == (64, 3)
    assert BenchOptions(images=2, repeats=5).for_device(cuda).images == 2
    assert BenchOptions(input=Path("."), repeats=5).for_device(cuda).images is None  # a folder: all its images


def test_make_images_writes_distinct_jpegs_of_the_size(tmp_path):
    paths = make_images(tmp_path, 2, (40, 24), seed=3)
    pixels = []
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.size == (40, 24)
            pixels.append(np.asarray(im))
    assert not np.array_equal(*pixels)
    assert [p.name for p in make_images(tmp_path / "again", 2, (40, 24), seed=3)] == [p.name for p in paths]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / paths[0].name)), pixels[0])


def test_one_device_is_measured(monkeypatch):
    import warnings

    from ben_cli import bench as bench_module

    options = InferenceOptions(device="cpu,cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        one = bench_module.single_device(options)
    assert one.device == "cpu" and any("one device" in str(w.message) for w in caught)
    assert bench_module.single_device(InferenceOptions(device="cpu")).device == "cpu"
