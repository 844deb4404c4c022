"""``ben erase`` end to end with the tiny network: outputs, names, pipes, exit codes, bad inputs, interrupts."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ben_cli.cli.app import main

BEN = Path(sys.executable).parent / "ben"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RES = "256"


# --------------------------------------------------------------------------- helpers


def _picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8: a colour gradient with a disc, different per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), np.full_like(xx, 90)], -1)
    cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), min(h, w) // 3
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _pixels(path: Path) -> np.ndarray:
    """Decode a file fully (raises on a truncated one)."""
    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


def _decoded_rgb(path: Path) -> np.ndarray:
    """What the input looks like to a viewer: Pillow's decode, EXIF applied, first frame, RGB."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _check_cutout(path: Path, rgb: np.ndarray) -> np.ndarray:
    """Assert ``path`` is an RGBA cutout of ``rgb`` (its colours where alpha is 255; semi-transparent
    pixels carry their decontaminated foreground colour); return the alpha."""
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGBA"
        assert im.size == (rgb.shape[1], rgb.shape[0])
        px = np.asarray(im)
    alpha = px[..., 3]
    fg = alpha > 0
    assert fg.any()
    np.testing.assert_array_equal(px[..., :3][alpha == 255], rgb[alpha == 255])
    assert not px[..., :3][~fg].any()  # fully transparent pixels carry no colour
    return alpha


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _digests(root: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _png_end(data: bytes) -> int:
    """Offset just past the IEND chunk of the PNG at the start of ``data``."""
    assert data[:8] == PNG_SIGNATURE
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            return pos
    raise AssertionError("no IEND chunk")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 30000 x 30000 pixels (over Pillow's bomb limit)."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _env() -> dict[str, str]:
    """Environment of a ``ben`` subprocess: no debug tracebacks, one intra-op thread (as above)."""
    env = {k: v for k, v in os.environ.items() if k != "BEN_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def sharp_checkpoint(tmp_path_factory, tiny_model) -> Path:
    """The tiny network with a steep output layer: confident logits, so trimaps hold 0, 128 and 255
    and some alpha is exactly 0."""
    from ben_cli.checkpoints.load import save_checkpoint

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.head.out[0].weight.mul_(60)
    return save_checkpoint(model, tmp_path_factory.mktemp("sharp") / "sharp.safetensors")


@pytest.fixture(scope="module")
def sharp_eraser(sharp_checkpoint):
    from ben_cli.pipeline import Eraser

    return Eraser.from_options(sharp_checkpoint, device="cpu", resolution=int(RES))


@pytest.fixture()
def erase(tiny_checkpoint):
    """``ben erase ARGS`` in-process: tiny checkpoint, resolution 256, CPU; returns the exit code."""

    def run(*args: object, weights: Path | None = None) -> int:
        # The defaults come first: an option repeated in ``args`` wins (click keeps the last value).
        return main(["erase", "--resolution", RES, "--device", "cpu", "--weights", str(weights or tiny_checkpoint),
                     *map(str, args)])

    return run


def _report(path: Path) -> dict[str, dict]:
    """--report JSON as {input file name: entry}, checking the totals against the entries."""
    data = json.loads(path.read_text())
    files = data["files"]
    for status in ("done", "skipped", "failed"):
        assert data["totals"][status] == sum(f["status"] == status for f in files)
    assert data["totals"]["seconds"] >= 0
    assert set(data["totals"]) == {"done", "skipped", "failed", "seconds", "images_per_second"}
    return {Path(f["input"]).name: f for f in files}


# --------------------------------------------------------------------------- outputs


def test_every_kind_has_its_format_values_and_size(tmp_path, erase, sharp_checkpoint, sharp_eraser, capsys):
    src = tmp_path / "in"
    rgb_a = _picture(96, 128, 1)
    _save(src / "wide.png", rgb_a)
    _save(src / "tall.jpg", _picture(150, 70, 2), quality=90)
    rgb_b = _decoded_rgb(src / "tall.jpg")
    out = tmp_path / "out"

    rc = erase(src, out, "--save", "cutout", "--save", "alpha,trimap", "--batch-size", "1",
               weights=sharp_checkpoint)
    assert rc == 0
    assert _tree(out) == {f"{s}{k}" for s in ("wide", "tall") for k in (".png", ".alpha.png", ".trimap.png")}
    err = capsys.readouterr().err
    assert re.search(r"^done +2 *$", err, re.M) and re.search(r"^failed +0 *$", err, re.M)  # the summary table

    for stem, rgb in (("wide", rgb_a), ("tall", rgb_b)):
        cut_alpha = _check_cutout(out / f"{stem}.png", rgb)
        with Image.open(out / f"{stem}.alpha.png") as im:
            assert (im.format, im.mode, im.size) == ("PNG", "L", (rgb.shape[1], rgb.shape[0]))
            alpha = np.asarray(im)
        with Image.open(out / f"{stem}.trimap.png") as im:
            assert (im.format, im.mode, im.size) == ("PNG", "L", (rgb.shape[1], rgb.shape[0]))
            trimap = np.asarray(im)
        np.testing.assert_array_equal(alpha, cut_alpha)
        assert set(np.unique(trimap)) <= {0, 128, 255}
        # The files hold what the library predicts for the image, at its own size.
        pred = sharp_eraser.predict([rgb], want_trimap=True)[0]
        np.testing.assert_array_equal(alpha, pred.alpha)
        np.testing.assert_array_equal(trimap, pred.trimap)
    assert (alpha == 0).any() and (alpha == 255).any()
    assert set(np.unique(trimap)) == {0, 128, 255}


def test_single_kind_writes_only_that_kind(tmp_path, erase):
    src = _save(tmp_path / "in" / "a.png", _picture(64, 80))
    assert erase(src.parent, tmp_path / "out", "--save", "trimap") == 0
    assert _tree(tmp_path / "out") == {"a.trimap.png"}
    assert erase(src.parent, tmp_path / "out2", "-s", "ALPHA") == 0
    assert _tree(tmp_path / "out2") == {"a.alpha.png"}


def test_folder_is_mirrored_with_the_collision_rule(tmp_path, erase):
    src = tmp_path / "in"
    for i, rel in enumerate(["a.jpg", "a.png", "b.webp", "sub/a.jpg", "sub/deeper/c.BMP", "sub/deeper/C.tif"]):
        _save(src / rel, _picture(64, 72, i))
    (src / "notes.txt").write_text("not an image")
    (src / "data.json").write_text("{}")
    (src / "sub" / "readme.md").write_text("# hi")
    _save(src / ".hidden.png", _picture(64, 64))
    (src / "empty_dir").mkdir()
    before = _digests(src)

    out = tmp_path / "out"
    assert erase(src, out, "--save", "cutout,alpha", "--report", tmp_path / "r.json") == 0
    assert _tree(out) == {
        "a.jpg.png", "a.jpg.alpha.png", "a.png.png", "a.png.alpha.png",  # collision: extension kept
        "b.png", "b.alpha.png",
        "sub/a.png", "sub/a.alpha.png",  # same stem in another folder: no collision
        "sub/deeper/c.BMP.png", "sub/deeper/c.BMP.alpha.png",  # equal ignoring case: collision
        "sub/deeper/C.tif.png", "sub/deeper/C.tif.alpha.png",
    }  # fmt: skip
    _check_cutout(out / "a.jpg.png", _decoded_rgb(src / "a.jpg"))
    _check_cutout(out / "a.png.png", _decoded_rgb(src / "a.png"))
    _check_cutout(out / "sub" / "deeper" / "C.tif.png", _decoded_rgb(src / "sub" / "deeper" / "C.tif"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["totals"]["done"] == 6 and report["totals"]["failed"] == 0
    assert _digests(src) == before  # inputs untouched, no stray files in the input tree


def test_output_folder_inside_the_input_folder_is_never_read_back(tmp_path, erase):
    src = tmp_path / "photos"
    _save(src / "x.png", _picture(64, 64, 1))
    _save(src / "y" / "z.jpg", _picture(64, 64, 2))
    out = src / "cutouts"
    for args in ((), ("--overwrite",)):
        assert erase(src, out, "--report", tmp_path / "r.json", *args) == 0
        report = _report(tmp_path / "r.json")
        assert set(report) == {"x.png", "z.jpg"}
        assert all(r["status"] == "done" for r in report.values())
        assert _tree(out) == {"x.png", "y/z.png"}


def test_single_file_to_a_png_file_or_a_folder(tmp_path, erase):
    src = _save(tmp_path / "photo.jpg", _picture(70, 90), quality=95)
    rgb = _decoded_rgb(src)
    assert erase(src, tmp_path / "result.png") == 0
    _check_cutout(tmp_path / "result.png", rgb)

    assert erase(src, tmp_path / "multi.png", "--save", "cutout,alpha,trimap") == 0
    _check_cutout(tmp_path / "multi.png", rgb)
    assert _pixels(tmp_path / "multi.alpha.png").shape == (70, 90)
    assert _pixels(tmp_path / "multi.trimap.png").shape == (70, 90)

    assert erase(src, tmp_path / "newdir") == 0
    assert _tree(tmp_path / "newdir") == {"photo.png"}
    _check_cutout(tmp_path / "newdir" / "photo.png", rgb)


def test_existing_outputs_are_skipped_until_overwrite(tmp_path, erase, capsys):
    src = tmp_path / "in"
    rgb = _picture(64, 96)
    _save(src / "a.png", rgb)
    _save(src / "b.png", _picture(64, 96, 5))
    out = tmp_path / "out"
    assert erase(src, out, "--save", "cutout,alpha") == 0
    first = (out / "a.png").read_bytes()
    # Replace a's cutout with something else: a skipped file is left exactly as it is.
    _save(out / "a.png", np.zeros((4, 4, 4), np.uint8))
    stale = (out / "a.png").read_bytes()
    old_ns = 1_000_000_000_000_000_000
    os.utime(out / "a.png", ns=(old_ns, old_ns))
    (out / "b.alpha.png").unlink()  # b is incomplete: redone
    capsys.readouterr()

    assert erase(src, out, "--save", "cutout,alpha", "--report", tmp_path / "r.json") == 0
    report = _report(tmp_path / "r.json")
    assert report["a.png"]["status"] == "skipped" and report["b.png"]["status"] == "done"
    assert (out / "a.png").read_bytes() == stale
    assert (out / "a.png").stat().st_mtime_ns == old_ns
    assert (out / "b.alpha.png").is_file()
    assert re.search(r"^skipped \(outputs exist\) +1 *$", capsys.readouterr().err, re.M)

    assert erase(src, out, "--save", "cutout,alpha", "--overwrite", "--report", tmp_path / "r.json") == 0
    report = _report(tmp_path / "r.json")
    assert {r["status"] for r in report.values()} == {"done"}
    assert (out / "a.png").stat().st_mtime_ns != old_ns
    assert (out / "a.png").read_bytes() == first  # same input, same model: the same file again
    _check_cutout(out / "a.png", rgb)


def test_quiet_prints_nothing_but_errors(tmp_path, erase, capsys):
    src = tmp_path / "in"
    _save(src / "ok.png", _picture(64, 64))
    (src / "bad.png").write_bytes(b"nope")
    capsys.readouterr()
    assert erase(src, tmp_path / "out", "--quiet") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"ben: {src / 'bad.png'}: not an image (cannot identify format)"]


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "missing.safetensors"], "weights file not found"),
        (["--resolution", "300"], "multiple of 128"),
        (["--resolution", "128"], "at least 256"),
        (["--save", "cutout,mask"], "unknown --save kind 'mask'"),
        (["--device", "cuda"], "CUDA is not available"),
        (["--device", "cuda:0"], "CUDA is not available"),
        (["--device", "tpu"], "device"),
        (["--precision", "fp8"], "'fp8' is not one of"),  # an Enum: --help lists the choices
        (["--refiner", "net"], "no refiner weights found: train them with `ben train refiner"),  # exists now
        (["--refiner", "sharpest"], "'sharpest' is not one of"),
    ],
)
def test_nothing_can_run_is_exit_2(tmp_path, erase, capsys, args, message):
    if "cuda" in args[-1] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _save(tmp_path / "in" / "a.png", _picture(64, 64))
    capsys.readouterr()
    assert erase(tmp_path / "in", tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not _tree(tmp_path / "out")


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--bogus"], ["--save"]])
def test_click_usage_errors_are_exit_2(tmp_path, erase, capsys, args):
    assert erase(tmp_path, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert err.strip() and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_click_usage_errors_read_as_usage_errors(tmp_path, erase, capsys):
    assert erase(tmp_path, tmp_path / "out", "--batch-size", "0") == 2
    err = capsys.readouterr().err
    assert "unexpected error" not in err and "batch-size" in err


@pytest.mark.parametrize(
    ("input_", "output", "message"),
    [
        ("missing", "out", "input not found"),
        ("in", "-", "single input image"),  # a folder cannot go to stdout
        ("in", "in", "must not be the INPUT folder"),
        ("in/a.png", "in/a.png", "overwrite the input"),
        ("in/a.png", "result.jpg", "must end in .png"),  # not a folder named result.jpg
        ("in", "cutouts.webp", "must be a folder"),
    ],
)
def test_bad_arguments_are_exit_2(tmp_path, erase, capsys, monkeypatch, input_, output, message):
    monkeypatch.chdir(tmp_path)
    _save(tmp_path / "in" / "a.png", _picture(64, 64))
    before = _digests(tmp_path / "in")
    capsys.readouterr()
    assert erase(input_, output) == 2
    assert message in capsys.readouterr().err
    assert _digests(tmp_path / "in") == before


def test_stdout_takes_one_kind_only(tmp_path, erase, capsysbinary):
    src = _save(tmp_path / "a.png", _picture(64, 64))
    assert erase(src, "-", "--save", "cutout,alpha") == 2
    captured = capsysbinary.readouterr()
    assert captured.out == b""
    assert b"only one --save kind" in captured.err


def test_refiner_none_and_auto_run(tmp_path, erase, monkeypatch):
    monkeypatch.setenv("BEN_CACHE_DIR", str(tmp_path / "cache"))  # no refiner network anywhere
    monkeypatch.chdir(tmp_path)
    src = _save(tmp_path / "in" / "a.png", _picture(64, 64))
    assert erase(src.parent, tmp_path / "o1", "--refiner", "matting", "--device", "cpu", "--precision", "fp32") == 0
    assert erase(src.parent, tmp_path / "o2", "--refiner", "auto") == 0  # auto without network weights: matting
    def pixels(path):  # each output records the settings it was made with: compare the pixels
        return np.asarray(Image.open(path))

    assert np.array_equal(pixels(tmp_path / "o1" / "a.png"), pixels(tmp_path / "o2" / "a.png"))
    assert erase(src.parent, tmp_path / "o3", "--refiner", "none") == 0
    assert not np.array_equal(pixels(tmp_path / "o3" / "a.png"), pixels(tmp_path / "o2" / "a.png"))


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_reported_and_the_run_goes_on(tmp_path, erase, capsys, monkeypatch):
    import ben_cli.io.read

    monkeypatch.setattr(ben_cli.io.read, "heif_available", lambda: False)  # as without pillow-heif
    src = tmp_path / "in"
    good = {"good1.png": _picture(64, 80, 1), "z/good2.png": _picture(72, 64, 2)}
    for rel, rgb in good.items():
        _save(src / rel, rgb)
    _save(src / "good3.jpg", _picture(64, 64, 3))
    jpeg = (src / "good3.jpg").read_bytes()
    bad = {
        "empty.png": (b"", "empty file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "text.jpg": (b"hello, I am not a picture\n" * 20, "not an image"),
        "bomb.png": (_bomb_png(), "image too large"),
        "photo.heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, "pillow-heif"),
        "z/trunc.png": ((src / "good1.png").read_bytes()[:200], "truncated"),
    }
    for rel, (data, _) in bad.items():
        (src / rel).write_bytes(data)
    (src / "ignored.txt").write_bytes(b"\x00\x01")
    (src / "archive.zip").write_bytes(b"PK\x03\x04")
    before = _digests(src)
    capsys.readouterr()

    rc = erase(src, tmp_path / "out", "--save", "cutout,trimap", "--batch-size", "2", "--report",
               tmp_path / "r.json")
    assert rc == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ben: ")]
    assert len(err_lines) == len(bad)
    for rel, (_, reason) in bad.items():
        [line] = [x for x in err_lines if x.startswith(f"ben: {src / rel}: ")]
        assert reason in line

    assert _tree(tmp_path / "out") == {
        "good1.png", "good1.trimap.png", "good3.png", "good3.trimap.png", "z/good2.png", "z/good2.trimap.png",
    }  # fmt: skip
    for rel, rgb in good.items():
        _check_cutout(tmp_path / "out" / rel, rgb)
    report = _report(tmp_path / "r.json")
    assert set(report) == {Path(r).name for r in [*good, "good3.jpg", *bad]}  # .txt/.zip never considered
    for rel, (_, reason) in bad.items():
        entry = report[Path(rel).name]
        assert entry["status"] == "failed" and reason in entry["error"] and entry["outputs"] == []
    assert report["good1.png"]["outputs"] == [str(tmp_path / "out" / "good1.png"),
                                              str(tmp_path / "out" / "good1.trimap.png")]
    assert _digests(src) == before


def test_an_unreadable_single_file_is_exit_1(tmp_path, erase, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(PNG_SIGNATURE + b"\x00" * 10)
    assert erase(bad, tmp_path / "out.png") == 1
    assert f"ben: {bad}: " in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_an_output_that_cannot_be_written_fails_that_input_only(tmp_path, erase, capsys):
    src = tmp_path / "in"
    _save(src / "a.png", _picture(64, 64, 1))
    _save(src / "b.png", _picture(64, 64, 2))
    (tmp_path / "out" / "a.png").mkdir(parents=True)  # a folder where a's cutout should go
    capsys.readouterr()
    assert erase(src, tmp_path / "out", "--report", tmp_path / "r.json") == 1
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ben: ")]
    assert line.startswith(f"ben: {src / 'a.png'}: cannot write {tmp_path / 'out' / 'a.png'} (")  # the output named
    report = _report(tmp_path / "r.json")
    assert report["a.png"]["status"] == "failed" and report["b.png"]["status"] == "done"
    _check_cutout(tmp_path / "out" / "b.png", _picture(64, 64, 2))
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]


def test_runs_from_a_thread_and_restores_the_sigterm_handler(tmp_path, erase):
    src = _save(tmp_path / "in" / "a.png", _picture(64, 64))
    before = signal.getsignal(signal.SIGTERM)
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(erase(src.parent, tmp_path / "t")))
    worker.start()
    worker.join(60)
    assert codes == [0] and (tmp_path / "t" / "a.png").is_file()
    assert erase(src.parent, tmp_path / "m") == 0
    assert signal.getsignal(signal.SIGTERM) is before


# --------------------------------------------------------------------------- image kinds


def test_exif_orientation_is_applied(tmp_path, erase):
    stored = _picture(60, 100)  # 100 wide, 60 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src = _save(tmp_path / "in" / "rot.jpg", stored, exif=exif.tobytes(), quality=95)
    shown = _decoded_rgb(src)
    assert shown.shape[:2] == (100, 60)
    assert erase(src.parent, tmp_path / "out", "--save", "cutout,alpha,trimap") == 0
    _check_cutout(tmp_path / "out" / "rot.png", shown)
    assert _pixels(tmp_path / "out" / "rot.alpha.png").shape == (100, 60)
    assert _pixels(tmp_path / "out" / "rot.trimap.png").shape == (100, 60)


def test_pillow_modes_keep_their_colours(tmp_path, erase):
    src = tmp_path / "in"
    expected: dict[str, np.ndarray] = {}

    src.mkdir()
    gray16 = (np.arange(64 * 96, dtype=np.uint32).reshape(64, 96) * 10 % 65536).astype(np.uint16)
    Image.fromarray(gray16).save(src / "deep.png")
    with Image.open(src / "deep.png") as im:
        assert im.mode.startswith("I")  # really 16-bit on disk
    expected["deep"] = np.repeat((((gray16.astype(np.int64) + 128) // 257).astype(np.uint8))[..., None], 3, 2)

    pal = Image.fromarray(_picture(64, 64, 4)).quantize(16)
    pal.save(src / "palette.png", transparency=0)
    with Image.open(src / "palette.png") as im:
        assert im.mode == "P" and "transparency" in im.info
        expected["palette"] = np.asarray(im.convert("RGBA"))[..., :3]

    Image.fromarray(_picture(80, 64, 5)).convert("CMYK").save(src / "print.jpg", quality=95)
    with Image.open(src / "print.jpg") as im:
        assert im.mode == "CMYK"
        expected["print"] = np.asarray(im.convert("RGB"))

    frames = [Image.new("RGB", (72, 64), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(src / "anim.gif") as im:
        assert im.n_frames == 3
        expected["anim"] = np.asarray(im.convert("RGB"))
    assert tuple(expected["anim"][0, 0]) == (200, 30, 30)

    luma = _picture(64, 64, 6)[..., 0]
    Image.merge("LA", [Image.fromarray(luma), Image.new("L", (64, 64), 128)]).save(src / "gray_alpha.png")
    expected["gray_alpha"] = np.repeat(luma[..., None], 3, 2)

    assert erase(src, tmp_path / "out") == 0
    assert _tree(tmp_path / "out") == {f"{stem}.png" for stem in expected}
    for stem, rgb in expected.items():
        _check_cutout(tmp_path / "out" / f"{stem}.png", rgb)


# --------------------------------------------------------------------------- pipes (subprocess)


def _ben(*args: object, stdin: bytes = b"", cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BEN), *map(str, args)], input=stdin, capture_output=True, cwd=cwd,
                          env=_env(), timeout=timeout, check=False)


def test_stdin_to_stdout_is_exactly_one_png(tmp_path, tiny_checkpoint):
    rgb = _picture(70, 110)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    proc = _ben("erase", "-", "-", "--weights", tiny_checkpoint, "--resolution", RES, "--device", "cpu",
                stdin=buf.getvalue(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert _png_end(proc.stdout) == len(proc.stdout)  # one PNG, nothing before or after
    (tmp_path / "stdout.png").write_bytes(proc.stdout)
    _check_cutout(tmp_path / "stdout.png", rgb)
    assert PNG_SIGNATURE not in proc.stderr and b"IHDR" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["stdout.png"]  # ben wrote nothing to disk


def test_garbage_on_stdin_leaves_stdout_empty(tmp_path, tiny_checkpoint):
    proc = _ben("erase", "-", "-", "--weights", tiny_checkpoint, "--resolution", RES, "--device", "cpu",
                stdin=b"\x89PNG\r\n\x1a\ngarbage" * 3, cwd=tmp_path)
    assert proc.returncode in (1, 2)
    assert proc.stdout == b""
    assert b"<stdin>" in proc.stderr and b"Traceback" not in proc.stderr


def test_file_to_stdout_in_process(tmp_path, erase, capsysbinary):
    src = _save(tmp_path / "a.png", _picture(64, 90))
    capsysbinary.readouterr()
    assert erase(src, "-", "--save", "alpha") == 0
    out = capsysbinary.readouterr().out
    assert _png_end(out) == len(out)
    with Image.open(io.BytesIO(out)) as im:
        assert im.mode == "L" and im.size == (90, 64)


def test_stdin_to_a_png_file(tmp_path, erase, monkeypatch):
    rgb = _picture(64, 80)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(buf.getvalue())))
    assert erase("-", tmp_path / "from_stdin.png", "--save", "cutout,alpha") == 0
    _check_cutout(tmp_path / "from_stdin.png", rgb)
    assert _pixels(tmp_path / "from_stdin.alpha.png").shape == (64, 80)


# --------------------------------------------------------------------------- interrupts (subprocess)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_leaves_complete_files_and_resumes(tmp_path, tiny_checkpoint, erase, sig):
    src = tmp_path / "in"
    n = 12
    for i in range(n):
        _save(src / f"im{i:02d}.png", _picture(120, 160, i))
    out = tmp_path / "out"
    # Resolution 512 keeps each image busy long enough for the signal to land mid-run.
    proc = subprocess.Popen([str(BEN), "erase", str(src), str(out), "--weights", str(tiny_checkpoint),
                             "--resolution", "512", "--batch-size", "1", "--save", "cutout,alpha",
                             "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.monotonic() + 60
        while not (out.is_dir() and any(out.glob("*.png"))):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.005)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), stderr.decode()  # 128 + signal
    assert stdout == b""
    assert b"Traceback" not in stderr

    written = sorted(out.rglob("*.png"))
    assert 0 < len(written) < 2 * n  # stopped part way
    for path in written:
        _pixels(path)  # every file there decodes fully
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")]
    complete = {f"im{i:02d}" for i in range(n) if {f"im{i:02d}.png", f"im{i:02d}.alpha.png"} <= _tree(out)}

    assert erase(src, out, "--save", "cutout,alpha", "--report", tmp_path / "r.json") == 0
    report = _report(tmp_path / "r.json")
    assert _tree(out) == {f"im{i:02d}{k}" for i in range(n) for k in (".png", ".alpha.png")}
    skipped = {Path(name).stem for name, r in report.items() if r["status"] == "skipped"}
    assert skipped == complete  # what the interrupted run finished is not redone
    assert {Path(name).stem for name, r in report.items() if r["status"] == "done"} == {
        f"im{i:02d}" for i in range(n)
    } - complete
    for i in range(n):
        _check_cutout(out / f"im{i:02d}.png", _picture(120, 160, i))


def test_bad_options_fail_even_when_every_output_exists(tmp_path, erase):
    src, out = tmp_path / "in", tmp_path / "out"
    _save(src / "a.png", _picture(64, 64))
    assert erase(src, out) == 0
    if not torch.cuda.is_available():
        assert erase(src, out, "--device", "cuda") == 2
    assert erase(src, out, "--precision", "fp8") == 2
    assert erase(src, out, weights=tmp_path / "missing.pth") == 2
    assert erase(src, out) == 0  # and a plain rerun skips cheaply


def test_report_lists_files_in_input_order(tmp_path, erase):
    src, out = tmp_path / "in", tmp_path / "out"
    for name in ("c.png", "a.png", "b.png"):
        _save(src / name, _picture(32, 32))
    _save(out / "b.png", _picture(8, 8))  # b already done: skipped, recorded first by the runner
    (src / "bad.jpg").write_bytes(b"nope")
    assert erase(src, out, "--save", "cutout", "--report", tmp_path / "r.json") == 1
    files = json.loads((tmp_path / "r.json").read_text())["files"]
    assert [Path(f["input"]).name for f in files] == ["a.png", "b.png", "bad.jpg", "c.png"]
    assert [f["status"] for f in files] == ["done", "skipped", "failed", "done"]
