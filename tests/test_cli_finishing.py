"""``ben erase`` finishing: refiners in the pipeline, full-resolution refinement, decontamination,
backgrounds, formats and hard thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ben_cli.cli.app import main
from ben_cli.io import read_output_source
from ben_cli.pipeline import Eraser
from ben_cli.refine import get_refiner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _picture(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (230, 40, 40)  # an object on a dark textured ground
    return img


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.fixture()
def erase(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("BEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BEN_REFINER_WEIGHTS", raising=False)

    def run(*args: object) -> int:
        return main(["erase", *map(str, args), "--weights", str(tiny_checkpoint), "--resolution", "256",
                     "--device", "cpu", "-q"])

    return run


def test_the_report_records_the_refiner_that_ran(tmp_path, erase):
    src = _save(tmp_path / "a.png", _picture())
    for refiner in ("auto", "none", "matting"):
        report = tmp_path / f"{refiner}.json"
        assert erase(src, tmp_path / refiner, "--refiner", refiner, "--report", report) == 0
        ran = json.loads(report.read_text())["settings"]["refiner"]
        assert ran == ("matting" if refiner == "auto" else refiner)


def test_no_decontaminate_keeps_the_original_colours(tmp_path, erase):
    rgb = _picture()
    src = _save(tmp_path / "a.png", rgb)
    assert erase(src, tmp_path / "raw", "--no-decontaminate") == 0
    assert erase(src, tmp_path / "clean") == 0
    raw = np.asarray(Image.open(tmp_path / "raw" / "a.png"))
    clean = np.asarray(Image.open(tmp_path / "clean" / "a.png"))
    visible = raw[..., 3] > 0
    np.testing.assert_array_equal(raw[..., :3][visible], rgb[visible])
    np.testing.assert_array_equal(raw[..., 3], clean[..., 3])
    soft = (clean[..., 3] > 0) & (clean[..., 3] < 255)
    assert soft.any() and (clean[..., :3][soft] != rgb[soft]).any()  # only soft pixels change
    opaque = clean[..., 3] == 255
    np.testing.assert_array_equal(clean[..., :3][opaque], rgb[opaque])


def test_background_colour_and_jpeg(tmp_path, erase):
    src = _save(tmp_path / "a.png", _picture())
    out = tmp_path / "out"
    assert erase(src, out, "--background", "#00ff00", "--format", "jpg", "--save", "cutout,alpha") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.alpha.png", "a.jpg"]
    with Image.open(out / "a.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 48)
        flat = np.asarray(im).astype(int)
    alpha = np.asarray(Image.open(out / "a.alpha.png"))
    gone = alpha == 0
    if gone.any():
        assert np.abs(flat[gone] - (0, 255, 0)).max() <= 40  # JPEG noise around pure green
    assert read_output_source(out / "a.jpg") == "a.png"


def test_background_image_and_webp(tmp_path, erase):
    src = _save(tmp_path / "a.png", _picture())
    bg = _save(tmp_path / "bg.png", np.full((10, 30, 3), (10, 20, 250), np.uint8))
    out = tmp_path / "out"
    assert erase(src, out, "--background", bg, "--format", "webp") == 0
    with Image.open(out / "a.webp") as im:
        assert im.format == "WEBP" and im.mode == "RGB" and im.size == (64, 48)


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "jpg"], "--background"),
    (["--background", "nocolour"], "--background"),
    (["--threshold", "1.5"], "--threshold"),
    (["--refiner", "matting", "--refiner-weights", "x.safetensors"], "--refiner-weights"),
])
def test_bad_finishing_options_are_exit_2(tmp_path, erase, capsys, args, message):
    src = _save(tmp_path / "a.png", _picture())
    assert erase(src, tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_threshold_gives_hard_masks(tmp_path, erase):
    src = _save(tmp_path / "a.png", _picture())
    assert erase(src, tmp_path / "out", "--threshold", "0.5", "--save", "cutout,alpha") == 0
    alpha = np.asarray(Image.open(tmp_path / "out" / "a.alpha.png"))
    cut = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert set(np.unique(alpha)) <= {0, 255}
    np.testing.assert_array_equal(cut[..., 3], alpha)


def test_large_images_are_refined_at_full_resolution(tiny_model):
    """An image larger than the model side is refined at its own size (sharper than upsampling), capped by
    max_refine_side, and known regions stay exactly 0/1."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (600, 520, 3), dtype=np.uint8)
    matting = get_refiner("matting")
    full = Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.float32, resolution=256, refiner=matting)
    capped = Eraser(tiny_model, device=torch.device("cpu"), dtype=torch.float32, resolution=256, refiner=matting,
                    max_refine_side=300)
    assert full.refines_at_full_size(image) and not full.refines_at_full_size(image[:200, :200])
    calls = []
    original = full.refine_full_size

    def spy(im, prob):
        calls.append(im.shape)
        return original(im, prob)

    full.refine_full_size = spy
    (a,) = full.predict_alpha([image])
    assert calls == [(600, 520, 3)] and a.shape == (600, 520)
    (b,) = capped.predict_alpha([image])
    assert b.shape == (600, 520)
    small = full.predict_alpha([image[:200, :200]])[0]
    assert small.shape == (200, 200)
