"""Crop and canvas (``--crop``, ``--crop-threshold``, ``--margin``, ``--canvas``, ``--square``, ``--upscale``):
the pure box and layout math, the options, and ``ben erase`` end to end with a stand-in model whose alpha is
known (the red channel of the input), images and a video clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ben_cli.cli.app import main
from ben_cli.crop import Layout, alpha_level, place, place_premultiplied, plan_layout, subject_boxes, union_box
from ben_cli.errors import OptionError
from ben_cli.options import Margin, OutputOptions
from ben_cli.pipeline import Eraser, Prediction

# --------------------------------------------------------------------------- the box


def _alpha(h: int, w: int, *spots: tuple[int, int, int, int, int]) -> torch.Tensor:
    """(1, 1, h, w) uint8: zero, with rectangles (top, bottom, left, right, value)."""
    a = torch.zeros(1, 1, h, w, dtype=torch.uint8)
    for top, bottom, left, right, value in spots:
        a[0, 0, top:bottom, left:right] = value
    return a


def test_the_box_holds_the_pixels_at_the_threshold_and_not_the_haze():
    a = _alpha(20, 30, (4, 9, 5, 12, 255))
    a[0, 0, 15:17, 2:28] = 12  # haze just under 0.05 (12/255 = 0.047)
    boxes, found = subject_boxes(a, 0.05)
    assert found.tolist() == [True] and boxes.tolist() == [[5, 4, 12, 9]]
    a[0, 0, 18, 1] = 13  # 13/255 = 0.051: subject
    assert subject_boxes(a, 0.05)[0].tolist() == [[1, 4, 12, 19]]
    assert subject_boxes(a, 0.06)[0].tolist() == [[5, 4, 12, 9]]  # 0.06 needs 16
    assert alpha_level(0.05) == 13 and alpha_level(0.2) == 51 and alpha_level(1.0) == 255


def test_boxes_are_batched_and_an_empty_alpha_has_none():
    a = torch.cat([_alpha(8, 8, (0, 8, 7, 8, 200)), _alpha(8, 8), _alpha(8, 8, (3, 4, 2, 3, 255))])
    boxes, found = subject_boxes(a, 0.05)
    assert found.tolist() == [True, False, True]
    assert boxes.tolist() == [[7, 0, 8, 8], [0, 0, 0, 0], [2, 3, 3, 4]]
    assert union_box([(7, 0, 8, 8), (2, 3, 3, 4)]) == (2, 0, 8, 8) and union_box([]) is None
    with pytest.raises(TypeError):
        subject_boxes(a.float(), 0.05)


# --------------------------------------------------------------------------- margins, canvas


def test_margins_in_pixels_and_percent_are_clamped_to_the_image():
    subject, size = (10, 20, 30, 30), (100, 50)  # a 20x10 box
    assert plan_layout(subject, size).region == subject
    assert plan_layout(subject, size, 3).region == (7, 17, 33, 33)
    assert plan_layout(subject, size, 10, percent=True).region == (8, 18, 32, 32)  # 10% of 20 = 2
    layout = plan_layout(subject, size, 25)
    assert layout.region == (0, 0, 55, 50) and layout.size == (55, 50) and not layout.canvas  # clamped
    assert layout.to_json() == {"box": [0, 0, 55, 50]}


def test_the_canvas_fits_and_centres_the_subject():
    size = (400, 300)
    big = plan_layout((0, 50, 200, 150), size, canvas=(100, 100))  # 200x100 -> 100x50
    assert big.scale == 0.5 and big.size == (100, 100) and big.target == (0, 25, 100, 75)
    small = plan_layout((10, 10, 30, 20), size, canvas=(100, 100))  # 20x10: never scaled up...
    assert small.scale == 1.0 and small.target == (40, 45, 60, 55)
    up = plan_layout((10, 10, 30, 20), size, canvas=(100, 100), upscale=True)  # ...unless asked
    assert up.scale == 5.0 and up.target == (0, 25, 100, 75)
    assert big.to_json() == {"box": [0, 50, 200, 150], "canvas": [100, 100], "scale": 0.5, "placed": [0, 25, 100, 75]}


def test_the_margin_is_kept_free_inside_the_canvas():
    size = (400, 300)
    px = plan_layout((100, 100, 300, 200), size, 10, canvas=(100, 100))  # 200x100 into 80x80
    assert px.scale == pytest.approx(0.4)
    assert px.region == (75, 75, 325, 225)  # 10 canvas pixels = 25 original pixels around the subject
    assert px.target == (0, 20, 100, 80)  # the subject itself at (10, 30)-(90, 70)
    pct = plan_layout((100, 100, 300, 200), size, 25, percent=True, canvas=(100, 100))
    assert pct.scale == pytest.approx(100 / 300)  # 25% of 200 on each side: 300 wide fits 100
    assert pct.region == (50, 50, 350, 250) and pct.target == (0, 17, 100, 83)
    odd = plan_layout((0, 0, 7, 7), (7, 7), canvas=(10, 10))  # 3 pixels to share: 1 left, 2 right
    assert odd.target == (1, 1, 8, 8)


def test_square_is_the_longer_side_plus_the_margins():
    layout = plan_layout((10, 20, 30, 30), (100, 50), 2, square=True)
    assert layout.size == (24, 24) and layout.scale == 1.0 and layout.canvas
    assert layout.region == (8, 18, 32, 32) and layout.target == (0, 5, 24, 19)
    with pytest.raises(ValueError, match="not both"):
        plan_layout((0, 0, 1, 1), (2, 2), canvas=(4, 4), square=True)
    with pytest.raises(ValueError, match="empty"):
        plan_layout((3, 3, 3, 5), (9, 9))


def test_place_cuts_scales_and_fills():
    x = torch.arange(48, dtype=torch.uint8).view(1, 1, 6, 8)
    crop = Layout((2, 1, 5, 4), (3, 3), (0, 0, 3, 3))
    assert torch.equal(place(x, crop), x[:, :, 1:4, 2:5])
    canvas = Layout((2, 1, 5, 4), (7, 5), (2, 1, 5, 4), canvas=True)
    out = place(x, canvas, fill=9)
    assert out.shape == (1, 1, 5, 7) and torch.equal(out[:, :, 1:4, 2:5], x[:, :, 1:4, 2:5])
    assert int((out == 9).sum()) == 35 - 9
    trimap = torch.tensor([[0, 128], [255, 128]], dtype=torch.uint8).view(1, 1, 2, 2)
    half = place(trimap.repeat_interleave(2, 2).repeat_interleave(2, 3), Layout((0, 0, 4, 4), (2, 2), (0, 0, 2, 2),
                                                                                 0.5, canvas=True), nearest=True)
    assert torch.equal(half, trimap)  # labels stay labels


def test_premultiplied_scaling_lets_no_hidden_colour_bleed():
    rgb = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    rgb[:, :, :, :2] = torch.tensor([10, 200, 30], dtype=torch.uint8).view(1, 3, 1, 1)  # the subject's colour
    alpha = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    alpha[:, :, :, :2] = 255  # the white half is transparent: it must not lighten the edge
    layout = Layout((0, 0, 4, 4), (2, 2), (0, 0, 2, 2), 0.5, canvas=True)
    colour, a = place_premultiplied(rgb, alpha, layout)
    assert (a[0, 0, :, 0] > a[0, 0, :, 1]).all() and (a[0, 0, :, 1] > 0).all()  # a soft edge...
    assert (colour[0].permute(1, 2, 0).reshape(-1, 3) == torch.tensor([10, 200, 30])).all()  # ...of its colour


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(("changes", "param", "text"), [
    ({"crop": True, "margin": "-3"}, "margin", "bad margin"),
    ({"crop": True, "margin": "4 %%"}, "margin", "bad margin"),
    ({"margin": "4%"}, "margin", "needs {opt:crop}"),
    ({"crop_threshold": 0.2}, "crop_threshold", "needs"),
    ({"crop": True, "crop_threshold": 0}, "crop_threshold", "above 0"),
    ({"crop": True, "crop_threshold": 1.5}, "crop_threshold", "at most 1"),
    ({"canvas": "12x"}, "canvas", "WIDTHxHEIGHT"),
    ({"canvas": "0x10"}, "canvas", "sides must be"),
    ({"canvas": "10x10", "square": True}, "square", "not both"),
    ({"crop": True, "upscale": True}, "upscale", "needs {opt:canvas}"),
    ({"canvas": "100x50", "margin": "25"}, "margin", "no room"),
])
def test_crop_options_are_checked(changes, param, text):
    with pytest.raises(OptionError) as caught:
        OutputOptions(**changes)
    assert caught.value.param == param and text in caught.value.reason


def test_a_canvas_implies_crop_and_margins_parse():
    assert OutputOptions(canvas="1200x1200").crop and OutputOptions(square=True).crop
    assert OutputOptions(canvas=" 30 X 20 ").canvas == (30, 20)
    assert OutputOptions(crop=True, margin="4%").margin == Margin(4.0, percent=True)
    assert OutputOptions(crop=True, margin="12px").margin == Margin(12.0)
    assert OutputOptions(crop=True, margin=3).margin == Margin(3.0) and OutputOptions().margin == Margin()


# --------------------------------------------------------------------------- ben erase


class KnownAlpha(Eraser):
    """An Eraser whose alpha is the input's red channel (trimap: 255 from 200, 128 above 0, else 0)."""

    def __init__(self) -> None:
        super().__init__(torch.nn.Conv2d(3, 1, 1), device=torch.device("cpu"), dtype=torch.float32, resolution=256)

    def launch(self, images, *, resized=None, want_trimap=False):
        return list(images), want_trimap

    def collect(self, flight):
        return self.predict(flight[0], want_trimap=flight[1])

    def predict(self, images, *, resized=None, want_trimap=False):
        preds = []
        for im in images:
            a = np.ascontiguousarray(im[..., 0])
            trimap = np.where(a >= 200, 255, np.where(a > 0, 128, 0)).astype(np.uint8) if want_trimap else None
            preds.append(Prediction(alpha=a, trimap=trimap))
        return preds


@pytest.fixture
def known(monkeypatch, one_torch_thread):
    monkeypatch.setattr(Eraser, "from_options", classmethod(lambda cls, options=None, **kw: KnownAlpha()))


def _product(path: Path, h: int = 40, w: int = 60) -> Path:
    """A picture whose subject (red 255) is the 20x10 box (5, 10)-(25, 20), with a faint haze (red 8)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 1] = 90
    img[10:20, 5:25] = (255, 40, 40)
    img[35, 55, 0] = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def _erase(tmp_path: Path, *args: object) -> tuple[int, dict[str, dict]]:
    report = tmp_path / "report.json"
    code = main(["erase", *map(str, args), "--device", "cpu", "--report", str(report), "--quiet"])
    files = json.loads(report.read_text())["files"] if report.exists() else []
    return code, {Path(f["input"]).name: f for f in files}


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_crop_trims_every_kind_to_the_box_and_reports_it(tmp_path, known):
    src = _product(tmp_path / "in" / "shot.png")
    out = tmp_path / "out"
    code, files = _erase(tmp_path, src.parent, out, "--crop", "--margin", "2", "-s", "cutout,alpha,trimap,overlay")
    assert code == 0
    assert files["shot.png"]["crop"] == {"box": [3, 8, 27, 22]}
    for name in ("shot.png", "shot.alpha.png", "shot.trimap.png", "shot.overlay.png"):
        assert _size(out / name) == (24, 14), name
    alpha = np.asarray(Image.open(out / "shot.alpha.png"))
    assert (alpha[2:12, 2:22] == 255).all() and alpha.sum() == 255 * 200
    original = np.asarray(Image.open(src))
    assert np.array_equal(np.asarray(Image.open(out / "shot.png"))[..., 3], original[8:22, 3:27, 0])


def test_crop_threshold_and_percent_margin(tmp_path, known):
    src = _product(tmp_path / "in" / "shot.png")
    code, files = _erase(tmp_path, src, tmp_path / "a", "--crop", "--crop-threshold", "0.03", "--margin", "10%")
    assert code == 0 and files["shot.png"]["crop"] == {"box": [0, 5, 60, 40]}  # the haze (8/255) counts now:
    assert _size(tmp_path / "a" / "shot.png") == (60, 35)  # (5, 10)-(56, 36) and 10% of 51 around, clamped
    code, files = _erase(tmp_path, src, tmp_path / "b", "--crop", "--margin", "10%", "--overwrite")
    assert code == 0 and files["shot.png"]["crop"] == {"box": [3, 8, 27, 22]}  # not at 0.05; 10% of 20 around


def test_canvas_with_a_background_is_the_ecommerce_recipe(tmp_path, known):
    src = _product(tmp_path / "in" / "shot.png")
    out = tmp_path / "web"
    code, files = _erase(tmp_path, src.parent, out, "--crop", "--margin", "10%", "--canvas", "16x16",
                         "--background", "white", "--format", "jpg")
    assert code == 0
    crop = files["shot.png"]["crop"]
    assert crop["box"] == [3, 8, 27, 22] and crop["canvas"] == [16, 16] and crop["scale"] == pytest.approx(2 / 3)
    pixels = np.asarray(Image.open(out / "shot.jpg")).astype(int)
    assert pixels.shape == (16, 16, 3)
    assert (pixels[:3] > 240).all() and (pixels[-3:] > 240).all()  # white above and below the subject
    assert abs(pixels[8, 8] - [255, 40, 40]).max() < 30  # the subject in the middle


def test_a_background_image_covers_the_whole_canvas(tmp_path, known):
    src = _product(tmp_path / "in" / "shot.png")
    bg = tmp_path / "bg.png"
    Image.fromarray(np.full((8, 8, 3), (20, 60, 200), np.uint8)).save(bg)
    code, _ = _erase(tmp_path, src, tmp_path / "out", "--canvas", "40x30", "--background", bg)
    assert code == 0
    pixels = np.asarray(Image.open(tmp_path / "out" / "shot.png"))
    assert pixels.shape == (30, 40, 3)
    assert (pixels[0, 0] == (20, 60, 200)).all() and (pixels[-1, -1] == (20, 60, 200)).all()
    assert (pixels[10:20, 10:30] == (255, 40, 40)).all()  # the 20x10 subject, unscaled, in the middle


def test_square_without_background_is_transparent_around(tmp_path, known):
    src = _product(tmp_path / "in" / "shot.png")
    code, files = _erase(tmp_path, src, tmp_path / "sq", "--square", "-s", "cutout,alpha")
    assert code == 0 and files["shot.png"]["crop"]["canvas"] == [20, 20]
    alpha = np.asarray(Image.open(tmp_path / "sq" / "shot.alpha.png"))
    assert alpha.shape == (20, 20) and (alpha[5:15] == 255).all() and alpha[:5].sum() == alpha[15:].sum() == 0


def test_no_subject_is_a_failed_file_with_its_reason(tmp_path, known):
    src = _product(tmp_path / "in" / "shot.png")
    Image.fromarray(np.full((12, 12, 3), (8, 200, 0), np.uint8)).save(src.parent / "empty.png")
    code, files = _erase(tmp_path, src.parent, tmp_path / "out", "--crop")
    assert code == 1
    assert files["empty.png"]["status"] == "failed" and files["empty.png"]["error"] == "no subject above 0.05"
    assert not (tmp_path / "out" / "empty.png").exists() and files["shot.png"]["status"] == "done"
    assert "crop" not in files["empty.png"]


@pytest.mark.parametrize(("args", "flag"), [
    (["--margin", "4%"], "--margin"),
    (["--crop", "--upscale"], "--upscale"),
    (["--canvas", "10x10", "--square"], "--square"),
    (["--canvas", "big"], "--canvas"),
    (["--crop", "--crop-threshold", "2"], "--crop-threshold"),
])
def test_bad_crop_options_are_usage_errors_naming_the_flag(tmp_path, known, capsys, args, flag):
    src = _product(tmp_path / "in" / "shot.png")
    assert main(["erase", str(src), str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0], err
    assert not (tmp_path / "out").exists()


def test_without_crop_outputs_keep_their_size(tmp_path, known):
    src = _product(tmp_path / "in" / "shot.png")
    code, files = _erase(tmp_path, src, tmp_path / "out")
    assert code == 0 and _size(tmp_path / "out" / "shot.png") == (60, 40) and "crop" not in files["shot.png"]


# --------------------------------------------------------------------------- video


def _moving_clip(path: Path, n: int = 6) -> Path:
    """A lossless clip (FFV1): a gray block (the subject: red 255 is alpha 255) moving right, 2 px a frame."""
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w", format="matroska")
    stream = container.add_stream("ffv1", rate=10)
    stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv444p"
    for i in range(n):
        img = np.zeros((32, 48, 3), np.uint8)
        img[8:16, 4 + 2 * i : 12 + 2 * i] = 255
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def test_a_cropped_clip_keeps_one_size_the_union_of_its_frames(tmp_path, known):
    clip = _moving_clip(tmp_path / "in" / "turn.mkv")
    out = tmp_path / "out"
    code, files = _erase(tmp_path, clip, out, "--crop", "--margin", "1", "--frames", "-s", "cutout,alpha")
    assert code == 0, files
    entry = files["turn.mkv"]
    assert entry["frames"] == 6 and entry["crop"] == {"box": [3, 7, 23, 17]}  # blocks from x=4..12 to x=14..22
    frames = sorted((out / "turn.alpha").iterdir())
    assert len(frames) == 6 and {_size(p) for p in frames} == {(20, 10)}
    first, last = (np.asarray(Image.open(p)) for p in (frames[0], frames[-1]))
    assert (first[1:9, 1:9] > 250).all() and first[:, 9:].max() < 5
    assert (last[1:9, 11:19] > 250).all() and last[:, :11].max() < 5
    assert {_size(p) for p in (out / "turn").iterdir()} == {(20, 10)}


def test_a_clip_without_a_subject_fails_alone(tmp_path, known):
    av = pytest.importorskip("av")
    clip = tmp_path / "in" / "dark.mkv"
    clip.parent.mkdir(parents=True)
    container = av.open(str(clip), "w", format="matroska")
    stream = container.add_stream("ffv1", rate=10)
    stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv444p"
    for _ in range(3):
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    code, files = _erase(tmp_path, clip, tmp_path / "out", "--crop", "--frames")
    assert code == 1 and files["dark.mkv"]["error"] == "no subject above 0.05"
    assert not (tmp_path / "out" / "dark").exists()


def test_the_spill_gives_back_each_prediction_once_in_order():
    from ben_cli.errors import InputError
    from ben_cli.video.crop import PredictionSpill, ReplayPredictor

    rng = np.random.default_rng(0)
    preds = [Prediction(alpha=rng.integers(0, 256, (5, 7), dtype=np.uint8),
                        trimap=None if i % 2 else rng.integers(0, 256, (5, 7), dtype=np.uint8), refiner="none")
             for i in range(3)]
    spill = PredictionSpill("clip.mp4")
    try:
        for pred in preds:
            spill.add(pred)
        assert len(spill) == 3 and spill.size == (7, 5)
        replay = ReplayPredictor(spill)
        got = [p for _, p in replay.push(["a", "b"], [], [])] + [p for _, p in replay.push(["c"], [], [])]
        for mine, kept in zip(got, preds):
            assert np.array_equal(mine.alpha, kept.alpha) and mine.foreground is None
            assert (mine.trimap is None) == (kept.trimap is None)
            assert mine.trimap is None or np.array_equal(mine.trimap, kept.trimap)
        spill.check_replayed()
        with pytest.raises(InputError, match="more frames"):
            spill.next()
    finally:
        spill.close()
    short = PredictionSpill("clip.mp4")
    short.add(preds[0])
    with pytest.raises(InputError, match="1 frames on its first reading and 0 on its second"):
        short.check_replayed()
    short.close()


def test_a_clip_on_a_canvas_runs_the_model_once(tmp_path, one_torch_thread):
    from ben_cli.options import VideoOptions
    from ben_cli.video import erase_video

    class Counting(KnownAlpha):
        frames = 0

        def predict(self, images, *, resized=None, want_trimap=False):
            Counting.frames += len(images)
            return super().predict(images, want_trimap=want_trimap)

    clip = _moving_clip(tmp_path / "turn.mkv")
    out = tmp_path / "frames"
    result = erase_video(clip, {"alpha": out}, Counting(), output=OutputOptions(canvas="30x30", margin="2"),
                         video=VideoOptions(frames=True), batch_size=4)
    assert Counting.frames == 6 and result.frames == 6
    assert result.crop == {"box": [2, 6, 24, 18], "canvas": [30, 30], "scale": 1.0, "placed": [4, 9, 26, 21]}
    frames = sorted(out.iterdir())
    assert {_size(p) for p in frames} == {(30, 30)}
    assert np.asarray(Image.open(frames[0]))[11:19, 6:14].min() > 250  # the first block, at its place in the box
