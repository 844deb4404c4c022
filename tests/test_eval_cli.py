"""``ben eval`` end to end: pairing, reading, the pool, --json, --csv, --plot, model mode."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from ben_cli.cli.app import main
from ben_cli.eval import evaluate as ev
from ben_cli.eval.metrics import METRIC_KEYS

psm = pytest.importorskip("py_sod_metrics")

SIZE = 64


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, array)
    assert ok
    path.write_bytes(buf.tobytes())


def _blob(rng: np.random.Generator, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    gt = np.zeros((h, w), np.uint8)
    for _ in range(2):
        cv2.circle(gt, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(5, 18)), 255, -1)
    return gt


def _noisy(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    soft = cv2.GaussianBlur(gt, (0, 0), 2.0).astype(np.float32)
    return np.clip(soft + rng.normal(0, 25, gt.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """pred/ and gt/: five pairs in mixed lossless formats, an empty and a full ground
    truth, and one prediction smaller than its ground truth."""
    rng = np.random.default_rng(0)
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    for i, ext in enumerate([".png", ".bmp", ".png", ".tif", ".png"]):
        gt = _blob(rng)
        _write(gt_dir / f"img{i}.png", gt)
        _write(pred_dir / f"img{i}{ext}", _noisy(rng, gt))
    _write(gt_dir / "empty.png", np.zeros((SIZE, SIZE), np.uint8))
    _write(pred_dir / "empty.png", rng.integers(0, 60, (SIZE, SIZE), dtype=np.uint8))
    _write(gt_dir / "full.png", np.full((SIZE, SIZE), 255, np.uint8))
    _write(pred_dir / "full.png", rng.integers(150, 256, (SIZE, SIZE), dtype=np.uint8))
    gt = _blob(rng, 48, 80)
    _write(gt_dir / "small.png", gt)
    _write(pred_dir / "small.png", cv2.resize(_noisy(rng, gt), (40, 24), interpolation=cv2.INTER_AREA))
    return pred_dir, gt_dir


def _reference(pred_dir: Path, gt_dir: Path) -> dict[str, float]:
    """PySODMetrics on the files, read with OpenCV; the prediction resized bilinearly to the GT."""
    binary = {"with_dynamic": False, "with_adaptive": False, "with_binary": True, "sample_based": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm = psm.Fmeasure()
    wfm, em, sm, mae = psm.WeightedFmeasure(), psm.Emeasure(), psm.Smeasure(), psm.MAE()
    handlers = {"iou": psm.IOUHandler, "dice": psm.DICEHandler, "ber": psm.BERHandler}
    v2 = psm.FmeasureV2({**{k: h(**binary) for k, h in handlers.items()}, "acc": psm.OverallAccuracyHandler(**binary)})
    for gt_path in sorted(gt_dir.iterdir()):
        pred_path = next(pred_dir.glob(gt_path.stem + ".*"))
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        pred = cv2.imread(str(pred_path), cv2.IMREAD_GRAYSCALE)
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
        for evaluator in (fm, wfm, em, sm, mae, v2):
            evaluator.step(pred, gt)
    r = v2.get_results()
    return {
        "max_f": float(fm.get_results()["fm"]["curve"].max()),
        "weighted_f": float(wfm.get_results()["wfm"]),
        "e_measure": float(em.get_results()["em"]["curve"].mean()),
        "s_measure": float(sm.get_results()["sm"]),
        "mae": float(mae.get_results()["mae"]),
        **{k: float(r[k]["binary"]) for k in ("iou", "dice", "ber", "acc")},
    }


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["eval", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_agrees_with_pysodmetrics(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = dataset
    rc, out, err = _run(capsys, str(pred_dir), str(gt_dir), "--json", "--workers", "1")
    assert rc == 0, err
    result = json.loads(out)  # stdout holds exactly one JSON object
    assert out.count("\n") == 1
    assert set(METRIC_KEYS) <= set(result)
    assert result["count"] == 8 and result["protocol"] == "standard"
    for key, value in _reference(pred_dir, gt_dir).items():
        assert result[key] == pytest.approx(value, abs=1e-3), key
        assert result[key] == pytest.approx(value, abs=1e-6), key
    assert "max F-measure" in err  # the table goes to stderr


def test_pool_gives_the_same_numbers(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = dataset
    one = _run(capsys, str(pred_dir), str(gt_dir), "--json", "--workers", "1", "-q")
    two = _run(capsys, str(pred_dir), str(gt_dir), "--json", "--workers", "2")
    assert one[0] == two[0] == 0
    assert json.loads(one[1]) == json.loads(two[1])
    assert "8/8" in two[2]  # the progress bar, on stderr


def test_csv_and_plot(dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = dataset
    csv_path, plot_path = tmp_path / "out" / "per_image.csv", tmp_path / "curves.png"
    rc, out, err = _run(capsys, str(pred_dir), str(gt_dir), "--csv", str(csv_path), "--plot", str(plot_path), "-q")
    assert rc == 0, err
    assert out == ""  # without --json nothing goes to stdout
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["stem"] for r in rows] == sorted(["empty", "full", "small", *(f"img{i}" for i in range(5))])
    assert set(METRIC_KEYS) <= set(rows[0])
    row = next(r for r in rows if r["stem"] == "img1")
    assert row["prediction"].endswith("img1.bmp")
    pred = cv2.imread(str(pred_dir / "img1.bmp"), cv2.IMREAD_GRAYSCALE)
    gt = cv2.imread(str(gt_dir / "img1.png"), cv2.IMREAD_GRAYSCALE)
    ref = psm.MAE()
    ref.step(pred, gt)
    assert float(row["mae"]) == pytest.approx(float(ref.get_results()["mae"]), abs=1e-6)
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(plot_path))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 200


def test_ben_protocol(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = dataset
    for folder in (pred_dir, gt_dir):  # keep a normal, an empty and a full ground truth: 1024x1024 is slow
        for path in folder.iterdir():
            if path.stem not in ("img0", "empty", "full"):
                path.unlink()
    rc, out, err = _run(capsys, str(pred_dir), str(gt_dir), "--json", "--protocol", "ben", "-q")
    assert rc == 0, err
    result = json.loads(out)
    assert result["protocol"] == "ben" and result["count"] == 3
    assert result["s_measure"] is None  # the full ground truth makes the script's S-measure NaN
    for key in ("max_f", "weighted_f", "e_measure", "mae", "dice", "iou", "ber", "acc"):
        assert 0.0 <= result[key] <= 1.0, key
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "s_measure is NaN for 1 of 3 pairs" in warning[0]
    assert str(gt_dir / "full.png") in warning[0] and "all-foreground" in warning[0]


def test_table_says_nine_metrics_plus_mean_f(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = dataset
    rc, _, err = _run(capsys, str(pred_dir), str(gt_dir), "--workers", "1")
    assert rc == 0, err
    assert "nine metrics, plus mean F" in err
    rows = [line for line in err.splitlines() if "↑" in line or "↓" in line]
    assert len(rows) == len(METRIC_KEYS) + 1 and "mean_f" in rows[-1]  # nine, then mean F last
    warnings = [line for line in err.splitlines() if "warning" in line]  # nothing undefined under standard;
    assert len(warnings) == 1 and "small.png (40x24 vs ground truth 80x48" in warnings[0]  # small.png resized
    rc, out, _ = _run(capsys, "--help")
    assert rc == 0 and "nine metrics" in out and "plus mean F" in out


def test_missing_partner_names_the_files(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = dataset
    (pred_dir / "img3.tif").unlink()
    _write(pred_dir / "stray.png", np.zeros((4, 4), np.uint8))
    rc, out, err = _run(capsys, str(pred_dir), str(gt_dir), "--json")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("ben: error:")
    assert "img3.png" in err and "stray.png" in err


def test_skip_unmatched_skips_strays_and_lists_them_once(dataset: tuple[Path, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = dataset
    (pred_dir / "img3.tif").unlink()
    _write(pred_dir / "stray.png", np.zeros((4, 4), np.uint8))
    rc, _, err = _run(capsys, str(pred_dir), str(gt_dir), "--workers", "1")
    assert rc == 2 and "--skip-unmatched" in err
    rc, out, err = _run(capsys, str(pred_dir), str(gt_dir), "--json", "--workers", "1", "--skip-unmatched")
    assert rc == 0, err
    assert json.loads(out)["count"] == 7  # 8 pairs less img3
    skipped = [line for line in err.splitlines() if line.startswith("ben: warning: skipped")]
    assert len(skipped) == 1 and "stray.png" in skipped[0] and "img3.png" in skipped[0]


def test_a_prediction_of_another_size_says_how_it_was_resized_once(dataset: tuple[Path, Path],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = dataset
    rc, _, err = _run(capsys, str(pred_dir), str(gt_dir), "-q", "--workers", "2")
    assert rc == 0, err
    assert err.count("small.png") == 1
    assert (f"ben: warning: 1 of 8 predictions are not the size of their ground truth: {pred_dir / 'small.png'} "
            "(40x24 vs ground truth 80x48: prediction resized bilinearly to the ground truth's size)") in err


def test_duplicate_stem_names_both_files(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = dataset
    _write(pred_dir / "img0.bmp", np.zeros((4, 4), np.uint8))
    rc, _, err = _run(capsys, str(pred_dir), str(gt_dir))
    assert rc == 2
    assert "img0.bmp" in err and "img0.png" in err


def test_cutout_scores_as_its_alpha_mask(tmp_path: Path) -> None:
    """A cutout (RGBA) prediction and a cutout ground truth are read from their alpha."""
    rng = np.random.default_rng(3)
    colour = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(3):
        gt = _blob(rng)
        alpha = _noisy(rng, gt)
        _write(tmp_path / "alpha" / f"{i}.png", alpha)
        _write(tmp_path / "gt" / f"{i}.png", gt)
        cutout = np.dstack([colour * (alpha[:, :, None] > 0), alpha])  # colour zeroed where transparent
        _write(tmp_path / "cutout" / f"{i}.png", cv2.cvtColor(cutout, cv2.COLOR_RGBA2BGRA))
        _write(tmp_path / "gt_cutout" / f"{i}.png", cv2.cvtColor(np.dstack([colour, gt]), cv2.COLOR_RGBA2BGRA))

    def score(pred: str, gt: str = "gt") -> dict[str, float]:
        pairs = ev.pair_predictions(tmp_path / pred, tmp_path / gt)
        return ev.evaluate_pairs(pairs, workers=1, progress=False).summary.metrics

    want = score("alpha")
    assert score("cutout") == want
    assert score("alpha", "gt_cutout") == want
    assert score("cutout", "gt_cutout") == want
    assert want["mae"] < 0.2  # and the colour would have scored otherwise: random colour is no mask


def test_a_pair_that_cannot_be_scored_names_both_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ben_cli.errors import InputError
    from ben_cli.io import read_mask

    _write(tmp_path / "pred" / "a.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "gt" / "a.png", np.zeros((6, 8), np.uint8))
    monkeypatch.setattr(ev, "load_pair", lambda pair, protocol: (read_mask(pair.pred), read_mask(pair.gt), None))
    pairs = ev.pair_predictions(tmp_path / "pred", tmp_path / "gt")
    with pytest.raises(InputError) as caught:
        ev.evaluate_pairs(pairs, workers=1, progress=False)
    assert caught.value.path == str(tmp_path / "pred" / "a.png")
    assert str(tmp_path / "gt" / "a.png") in caught.value.reason and "shape" in caught.value.reason


def test_unreadable_image_names_the_file(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, gt_dir = dataset
    (pred_dir / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rc, out, err = _run(capsys, str(pred_dir), str(gt_dir), "--json", "--workers", "2", "-q")
    assert rc == 1 and out == ""
    assert "img2.png" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "PRED_DIR and GT_DIR"),
        (["P"], "PRED_DIR and GT_DIR"),
        (["P", "G", "--weights", "w.pth"], "--weights"),
        (["P", "G", "--save-pred", "out"], "--save-pred"),
        (["P", "G", "--refiner", "net"], "--refiner"),
        (["P", "G", "--refiner", "auto"], "--refiner"),  # given, even if it is the default
        (["P", "G", "--model", "ben-base"], "--model"),
        (["P", "G", "--resolution", "512", "-b", "2"], "--resolution, --batch-size"),
        (["P", "G", "--device", "cpu", "--precision", "fp32"], "--device, --precision"),
        (["P", "G", "--data", "D"], "not both"),
        (["--data", "D"], "im/"),
        (["P", "G", "--plot", "curves.txt"], "--plot"),
    ],
)
def test_bad_options(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("P", "G"):
        (tmp_path / name).mkdir()
    rc, out, err = _run(capsys, *args)
    assert rc == 2 and out == ""
    assert message in err


def test_missing_folder_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gt").mkdir()
    rc, _, err = _run(capsys, str(tmp_path / "nope"), str(tmp_path / "gt"))
    assert rc == 2 and "nope" in err


# --------------------------------------------------------------------------- model mode


class _ThresholdEraser:
    """Stands in for the Eraser: alpha = red channel / 255."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict_alpha(self, images: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(images))
        return [img[:, :, 0].astype(np.float32) / 255 for img in images]


class _FixedEraser:
    """Stands in for the Eraser: returns the given alphas."""

    def __init__(self, alphas: list[np.ndarray]) -> None:
        self.alphas = alphas

    def predict_alpha(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [self.alphas.pop(0) for _ in images]


def test_saved_masks_round_as_before(tmp_path: Path) -> None:
    """The masks are rounded as ``ben erase`` rounds alpha, exactly as eval's former numpy rounding did."""
    levels = np.arange(256, dtype=np.float64)
    specials = np.array([np.nan, -np.inf, np.inf, -0.2, 1.3, -0.0, 1.0, 0.0])
    values = np.concatenate([(levels + offset) / 255 for offset in (0.0, 0.5, 0.49, 0.51)] + [specials])
    values = np.resize(values, 32 * 40).reshape(32, 40)
    alphas = [values.astype(np.float32), values]  # float32 and float64 alphas
    for i in range(2):
        _write(tmp_path / "data" / "im" / f"{i}.png", np.zeros((32, 40, 3), np.uint8))
        _write(tmp_path / "data" / "gt" / f"{i}.png", np.zeros((32, 40), np.uint8))
    items = ev.match_stems(tmp_path / "data" / "im", tmp_path / "data" / "gt")
    list(ev.predict_to_dir(_FixedEraser(list(alphas)), items, tmp_path / "pred", batch_size=2))
    for i, alpha in enumerate(alphas):
        with np.errstate(over="ignore", invalid="ignore"):  # the former formula, restated
            a = np.nan_to_num(np.asarray(alpha, dtype=np.float32), nan=0.0)
            want = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        got = cv2.imread(str(tmp_path / "pred" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(got, want)


def test_predict_to_dir_writes_masks_and_evaluates(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(5):
        gt = _blob(rng)
        _write(tmp_path / "data" / "gt" / f"{i}.png", gt)
        _write(tmp_path / "data" / "im" / f"{i}.jpg", cv2.merge([gt, gt, gt]))  # BGR = gray
    items = ev.match_stems(tmp_path / "data" / "im", tmp_path / "data" / "gt", labels=("image", "ground truth"))
    eraser = _ThresholdEraser()
    preds = ev.predict_to_dir(eraser, items, tmp_path / "pred", batch_size=2)
    result = ev.evaluate_pairs(preds, workers=1, total=len(items), progress=False)
    assert eraser.batches == [2, 2, 1]
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [f"{i}.png" for i in range(5)]
    assert result.summary.count == 5
    assert result.summary.metrics["iou"] > 0.95  # JPEG of a mask, thresholded


def test_model_mode_with_a_tiny_checkpoint(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(2)
    for i in range(3):
        gt = _blob(rng)
        _write(tmp_path / "data" / "gt" / f"s{i}.png", gt)
        _write(tmp_path / "data" / "im" / f"s{i}.png", rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    save = tmp_path / "saved"
    args = ["--data", str(tmp_path / "data"), "--model", "tiny", "--weights", str(tiny_checkpoint), "--device", "cpu"]
    args += ["--resolution", "256", "--batch-size", "2", "--save-pred", str(save), "--json", "--workers", "1"]
    rc, out, err = _run(capsys, *args, "-q")
    assert rc == 0, err
    assert json.loads(out)["count"] == 3
    masks = sorted(save.iterdir())
    assert [m.name for m in masks] == ["s0.png", "s1.png", "s2.png"]
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE)
    # The saved masks score exactly as the run did.
    again = _run(capsys, str(save), str(tmp_path / "data" / "gt"), "--json", "--workers", "1", "-q")
    assert json.loads(again[1]) == json.loads(out)


def test_model_mode_pairing_error_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "data" / "im" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _write(tmp_path / "data" / "gt" / "b.png", np.zeros((8, 8), np.uint8))
    rc, _, err = _run(capsys, "--data", str(tmp_path / "data"), "--weights", str(tmp_path / "none.pth"))
    assert rc == 2 and "a.png" in err and "b.png" in err
