"""``ben trimap IMAGE [OUTPUT] [--overlay]`` end to end with the tiny network."""

from __future__ import annotations

import copy
import hashlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ben_cli.cli.app import main

RES = "256"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sharp_checkpoint(tmp_path_factory, tiny_model) -> Path:
    """The tiny network with a steep output layer, so its trimaps hold 0, 128 and 255."""
    from ben_cli.checkpoints.load import save_checkpoint

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.head.out[0].weight.mul_(60)
    return save_checkpoint(model, tmp_path_factory.mktemp("sharp") / "sharp.safetensors")


@pytest.fixture()
def trimap(sharp_checkpoint):
    """``ben trimap ARGS`` in-process at resolution 256 on the CPU; an option repeated in ARGS wins."""

    def run(*args: object) -> int:
        return main(["trimap", "--resolution", RES, "--device", "cpu", "--weights", str(sharp_checkpoint),
                     *map(str, args)])

    return run


def _picture(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 90)], -1).astype(np.uint8)
    img[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (min(h, w) // 3) ** 2] = (250, 40, 40)
    return img


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected_trimap(sharp_checkpoint: Path, rgb: np.ndarray) -> np.ndarray:
    from ben_cli.pipeline import Eraser

    eraser = Eraser.from_options(sharp_checkpoint, device="cpu", resolution=int(RES))
    return eraser.predict([rgb], want_trimap=True)[0].trimap


def test_trimap_beside_the_image_with_overlay(tmp_path, trimap, sharp_checkpoint, capsys):
    rgb = _picture(90, 120)
    src = tmp_path / "cat.photo.jpg"
    Image.fromarray(rgb).save(src, quality=95)
    with Image.open(src) as im:
        rgb = np.asarray(im.convert("RGB"))
    digest = _sha(src)

    assert trimap(src, "--overlay") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cat.photo.jpg", "cat.photo.overlay.png", "cat.photo.trimap.png",
    ]  # fmt: skip
    assert capsys.readouterr().out == ""
    with Image.open(tmp_path / "cat.photo.trimap.png") as im:
        assert (im.format, im.mode, im.size) == ("PNG", "L", (120, 90))
        tri = np.asarray(im)
    assert set(np.unique(tri)) == {0, 128, 255}
    np.testing.assert_array_equal(tri, _expected_trimap(sharp_checkpoint, rgb))

    with Image.open(tmp_path / "cat.photo.overlay.png") as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (120, 90))
        over = np.asarray(im).astype(int)
    fg, bg, band = tri == 255, tri == 0, tri == 128
    np.testing.assert_array_equal(over[fg], rgb[fg])  # foreground as it is
    assert (over[bg] <= rgb[bg]).all() and (over[bg] < rgb[bg]).any()  # background darkened
    assert (over[band] != rgb[band]).any(axis=1).mean() > 0.9  # the band is tinted
    assert _sha(src) == digest


def test_explicit_output_and_stdout(tmp_path, trimap, sharp_checkpoint, capsysbinary):
    rgb = _picture(64, 80)
    src = tmp_path / "a.png"
    Image.fromarray(rgb).save(src)
    expected = _expected_trimap(sharp_checkpoint, rgb)

    assert trimap(src, tmp_path / "sub" / "t.png", "--overlay") == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "t.png")), expected)
    assert Image.open(tmp_path / "sub" / "t.overlay.png").size == (80, 64)

    capsysbinary.readouterr()
    assert trimap(src, "-") == 0
    out = capsysbinary.readouterr().out
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == "PNG" and im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), expected)
    assert out.endswith(b"IEND\xaeB`\x82")  # nothing after the PNG
    assert not (tmp_path / "a.trimap.png").exists()


def test_stdin_to_a_file(tmp_path, trimap, sharp_checkpoint, monkeypatch):
    rgb = _picture(64, 64)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(buf.getvalue())))
    assert trimap("-", tmp_path / "t.png") == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "t.png")),
                                  _expected_trimap(sharp_checkpoint, rgb))


def test_exif_rotation_gives_the_rotated_size(tmp_path, trimap):
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    src = tmp_path / "r.jpg"
    Image.fromarray(_picture(64, 100)).save(src, exif=exif.tobytes())
    assert trimap(src, "--overlay") == 0
    assert Image.open(tmp_path / "r.trimap.png").size == (64, 100)
    assert Image.open(tmp_path / "r.overlay.png").size == (64, 100)


def test_a_bad_image_is_exit_1(tmp_path, trimap, capsys):
    src = tmp_path / "bad.png"
    src.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert trimap(src) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ben: {src}: ") and len(err.splitlines()) == 2  # the failure, then the one-line summary
    assert err.splitlines()[1].startswith("ben: ben trimap: 0 done, 1 failed in ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.png"], "input not found"),
        (["a.png", "--weights", "nope.safetensors"], "weights file not found"),
        (["a.png", "--resolution", "200"], "multiple of 128"),
        (["a.png", "t.jpg"], "must be a .png"),
        (["a.png", "-", "--overlay"], "--overlay"),
        (["a.png", "a.png"], "overwrite the input"),  # never replaces its input
        (["a.overlay.png", "a.png", "--overlay"], "overwrite the input"),
        (["-"], "give OUTPUT"),
        (["a.png", "--device", "cuda"], "CUDA"),
    ],
)
def test_nothing_can_run_is_exit_2(tmp_path, trimap, capsys, monkeypatch, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    Image.fromarray(_picture(64, 64)).save(tmp_path / "a.png")
    Image.fromarray(_picture(64, 64)).save(tmp_path / "a.overlay.png")
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    assert trimap(*args) == 2
    assert message in capsys.readouterr().err
    assert {p.name: _sha(p) for p in tmp_path.iterdir()} == before
