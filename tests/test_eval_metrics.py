"""The metrics of ``ben eval``: the standard protocol against PySODMetrics, the
authors' protocol against values worked out by hand."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest

from ben_cli.eval import metrics as std
from ben_cli.eval import protocol_ben as bp

psm = pytest.importorskip("py_sod_metrics")

TOL = 1e-6  # the contract is 1e-3; the layer is thin enough to agree to rounding


def _blob_pair(rng: np.random.Generator, h: int = 64, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(gt, centre, int(rng.integers(4, 20)), 255, -1)
    soft = cv2.GaussianBlur(gt, (0, 0), 2.0).astype(np.float32)
    pred = np.clip(soft + rng.normal(0, 30, gt.shape), 0, 255).astype(np.uint8)
    return pred, gt


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    pairs = [_blob_pair(rng) for _ in range(4)]
    noise = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    pairs.append((noise, np.zeros((64, 64), np.uint8)))  # empty ground truth
    pairs.append((noise, np.full((64, 64), 255, np.uint8)))  # full ground truth
    pairs.append((np.zeros((64, 64), np.uint8), _blob_pair(rng)[1]))  # constant prediction
    soft_gt = _blob_pair(rng)[1].copy()
    soft_gt[soft_gt == 0] = 100  # gray values below the 128 cut
    pairs.append((_blob_pair(rng)[0], soft_gt))
    pairs.append(_blob_pair(rng, 40, 56))  # not square
    return pairs


def _reference(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The nine metrics computed with PySODMetrics' own evaluators, as the issue defines them."""
    binary = {"with_dynamic": False, "with_adaptive": False, "with_binary": True, "sample_based": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure announces its future removal
        fm = psm.Fmeasure()
    wfm, em, sm, mae = psm.WeightedFmeasure(), psm.Emeasure(), psm.Smeasure(), psm.MAE()
    v2 = psm.FmeasureV2(
        metric_handlers={
            "iou": psm.IOUHandler(**binary),
            "dice": psm.DICEHandler(**binary),
            "ber": psm.BERHandler(**binary),
            "acc": psm.OverallAccuracyHandler(**binary),
        }
    )
    for pred, gt in pairs:
        for evaluator in (fm, wfm, em, sm, mae, v2):
            evaluator.step(pred, gt)
    v2r = v2.get_results()
    curve = fm.get_results()["fm"]["curve"]
    return {
        "max_f": float(curve.max()),
        "mean_f": float(curve.mean()),
        "weighted_f": float(wfm.get_results()["wfm"]),
        "e_measure": float(em.get_results()["em"]["curve"].mean()),
        "s_measure": float(sm.get_results()["sm"]),
        "mae": float(mae.get_results()["mae"]),
        "iou": float(v2r["iou"]["binary"]),
        "dice": float(v2r["dice"]["binary"]),
        "ber": float(v2r["ber"]["binary"]),
        "acc": float(v2r["acc"]["binary"]),
    }


def _standard(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    return std.aggregate([std.image_metrics(p, g) for p, g in pairs]).metrics


# --------------------------------------------------------------------------- standard protocol


def test_standard_matches_pysodmetrics_on_a_mixed_set() -> None:
    pairs = _pairs()
    ours, ref = _standard(pairs), _reference(pairs)
    assert set(std.METRIC_KEYS) <= set(ours)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=TOL), key


@pytest.mark.parametrize("fill", [0, 255], ids=["empty-gt", "full-gt"])
def test_standard_matches_pysodmetrics_on_empty_and_full_ground_truth(fill: int) -> None:
    rng = np.random.default_rng(fill)
    full = np.full((32, 48), fill, np.uint8)
    pairs = [(rng.integers(0, 256, full.shape, dtype=np.uint8), full) for _ in range(3)]
    pairs.append((full.copy(), full))  # a perfect prediction
    ours, ref = _standard(pairs), _reference(pairs)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=TOL), key


def test_standard_single_pair_and_curves() -> None:
    pred, gt = _blob_pair(np.random.default_rng(3))
    result = std.image_metrics(pred, gt)
    ref = _reference([(pred, gt)])
    assert result.scores["max_f"] == pytest.approx(ref["max_f"], abs=TOL)
    assert result.fmeasure.shape == result.precision.shape == result.recall.shape == (256,)
    # Ascending thresholds: threshold 0 takes every pixel, so recall is 1 there.
    assert result.recall[0] == pytest.approx(1.0)
    assert result.recall[-1] <= result.recall[0]


def test_standard_max_f_is_max_of_mean_curve_not_mean_of_maxima() -> None:
    rng = np.random.default_rng(11)
    pairs = [_blob_pair(rng) for _ in range(5)]
    results = [std.image_metrics(p, g) for p, g in pairs]
    summary = std.aggregate(results)
    mean_of_maxima = float(np.mean([r.scores["max_f"] for r in results]))
    assert summary.metrics["max_f"] == pytest.approx(float(np.mean([r.fmeasure for r in results], 0).max()))
    assert summary.metrics["max_f"] <= mean_of_maxima + 1e-12


def test_standard_rejects_mismatched_or_wrong_dtype() -> None:
    with pytest.raises(ValueError, match="shape"):
        std.image_metrics(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        std.image_metrics(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="no image pairs"):
        std.aggregate([])


# --------------------------------------------------------------------------- the authors' protocol
# Maps are given as uint8 levels and scaled with ``prepare`` at their own size (no resize),
# exactly as the script turns 1024x1024 maps into floats.


def _unit(levels: list[list[int]]) -> np.ndarray:
    """uint8 levels -> float32 ``k / 255``, as ``prepare`` scales them."""
    return np.asarray(levels, np.uint8).astype(np.float32) / np.float32(255)


PRED_A = [[255, 153], [102, 0]]  # 1.0, 0.6, 0.4, 0.0
GT_A = [[255, 255], [0, 0]]


def test_ben_pixel_metrics_by_hand() -> None:
    p, g = _unit(PRED_A), _unit(GT_A)
    assert bp.mae(p, g) == pytest.approx((0 + 0.4 + 0.4 + 0) / 4, abs=1e-7)
    assert bp.soft_dice(p, g) == pytest.approx((2 * 1.6 + 1e-5) / (2 + 2.0 + 1e-5), abs=1e-7)
    assert bp.iou(p, g) == pytest.approx(1.0)  # 0.6 > 0.5 and 0.4 is not
    assert bp.ber(p, g) == pytest.approx(0.0, abs=1e-7)
    assert bp.accuracy(p, g) == 1.0


def test_ben_f_curves_by_hand() -> None:
    p, g = _unit(PRED_A), _unit(GT_A)
    precision, recall, f = bp.f_curves(p, g)

    def fm(prec: float, rec: float) -> float:
        return 1.3 * prec * rec / (0.3 * prec + rec)

    # Pixels at levels 255, 153, 102, 0; pixel at level L passes thresholds k/255 with k <= L.
    f_all, f_three, f_two, f_one = fm(0.5, 1.0), fm(2 / 3, 1.0), 1.0, fm(1.0, 0.5)
    assert f[0] == pytest.approx(f_all, abs=1e-6)
    assert f[1] == f[102] == pytest.approx(f_three, abs=1e-6)
    assert f[103] == f[153] == pytest.approx(f_two, abs=1e-6)
    assert f[154] == f[255] == pytest.approx(f_one, abs=1e-6)
    assert precision[102] == pytest.approx(2 / 3, abs=1e-6)
    assert recall[200] == pytest.approx(0.5, abs=1e-6)
    expected_mean = (f_all + 102 * f_three + 51 * f_two + 102 * f_one) / 256
    result = bp.image_metrics(np.asarray(PRED_A, np.uint8), np.asarray(GT_A, np.uint8), size=2)
    assert result.scores["max_f"] == pytest.approx(1.0, abs=1e-6)
    assert result.scores["mean_f"] == pytest.approx(expected_mean, abs=1e-6)


def test_ben_adaptive_e_measure_by_hand() -> None:
    # mean(pred) = 0.5, so the threshold is 1.0 and only the 255 pixel is foreground.
    p, g = _unit(PRED_A), _unit(GT_A)
    mu_b, mu_g = 0.25, 0.5

    def enhanced(b: float, gv: float) -> float:
        a, c = b - mu_b, gv - mu_g
        return (2 * a * c / (a * a + c * c) + 1) ** 2 / 4

    expected = (enhanced(1, 1) + enhanced(0, 1) + 2 * enhanced(0, 0)) / 4
    assert expected == pytest.approx((0.9245562 + 0.01 + 0.81 * 2) / 4, abs=1e-6)
    assert bp.e_measure(p, g) == pytest.approx(expected, abs=1e-6)


def test_ben_e_measure_empty_and_full_ground_truth() -> None:
    p = _unit([[255, 0], [0, 0]])  # mean 0.25: threshold 0.5, one pixel foreground
    assert bp.e_measure(p, np.zeros((2, 2), np.float32)) == pytest.approx(0.75)
    assert bp.e_measure(p, np.ones((2, 2), np.float32)) == pytest.approx(0.25)


def test_ben_s_measure_of_a_perfect_prediction_is_not_one() -> None:
    # 4x4 ground truth with a 2x2 block at rows/cols 1-2: centroid (1.5, 1.5) truncates to (1, 1).
    g = np.zeros((4, 4), np.float32)
    g[1:3, 1:3] = 1.0
    p = g.copy()
    c1c2 = 0.01**2 * 0.03**2
    constant = c1c2 / (c1c2 + 1e-8)  # simplified SSIM of two equal constant regions: 0.9
    mu, var = 4 / 9, 20 / 81  # the 3x3 bottom-right quadrant holds the 4 foreground pixels
    den = (2 * mu * mu + 1e-4) * (2 * var + 9e-4)
    ssim_rb = den / (den + 1e-8)
    region = constant * (1 + 3 + 3) / 16 + ssim_rb * 9 / 16
    obj = 2 / (1 + 1 + 0 + 1e-8)  # fg and bg both all ones, std 0
    expected = 0.5 * obj + 0.5 * region
    assert constant == pytest.approx(0.9)
    assert bp.s_measure(p, g) == pytest.approx(expected, abs=1e-9)
    assert bp.s_measure(p, g) == pytest.approx(0.978125, abs=1e-6)
    # The standard S-measure gives a perfect prediction 1.
    std_res = std.image_metrics((p * 255).astype(np.uint8), (g * 255).astype(np.uint8))
    assert std_res.scores["s_measure"] == pytest.approx(1.0)


def test_ben_s_measure_object_term_uses_population_std() -> None:
    g = np.zeros((4, 4), np.float32)
    g[1:3, 1:3] = 1.0
    p = g * np.float32(0.8)  # fg values all 0.8 (std 0); bg values 1 - 0 = 1
    o_fg = 2 * 0.8 / (0.64 + 1 + 0 + 1e-8)
    o_bg = 2 * 1.0 / (1 + 1 + 0 + 1e-8)
    assert bp._object_score(p.astype(np.float64), g > 0.5) == pytest.approx(0.25 * o_fg + 0.75 * o_bg)


def test_ben_s_measure_special_cases() -> None:
    p = _unit([[255, 51], [0, 0]])
    assert bp.s_measure(p, np.zeros((2, 2), np.float32)) == pytest.approx(1 - 0.25 - 0.05, abs=1e-6)
    assert math.isnan(bp.s_measure(p, np.ones((2, 2), np.float32)))  # the script divides 0 by 0 here
    top_row = np.zeros((4, 4), np.float32)
    top_row[0] = 1.0  # centroid in row 0: the upper quadrants are empty
    assert math.isnan(bp.s_measure(np.full((4, 4), 0.5, np.float32), top_row))


def test_ben_image_metrics_say_why_a_score_is_undefined() -> None:
    rng = np.random.default_rng(11)
    pred = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    full = bp.image_metrics(pred, np.full((32, 32), 255, np.uint8), size=64)
    assert math.isnan(full.scores["s_measure"])
    assert set(full.undefined) == {"s_measure"} and "all-foreground" in full.undefined["s_measure"]
    left = np.zeros((32, 32), np.uint8)
    left[:, 0] = 255  # centroid in column 0: the left quadrants are empty
    edge = bp.image_metrics(pred, left, size=64)
    assert math.isnan(edge.scores["s_measure"]) and "first row or column" in edge.undefined["s_measure"]
    normal = bp.image_metrics(*_blob_pair(rng), size=64)
    assert normal.undefined == {} and not any(math.isnan(v) for v in normal.scores.values())
    assert std.image_metrics(pred, left).undefined == {}


def test_ben_weighted_f_perfect_empty_and_against_pysodmetrics() -> None:
    rng = np.random.default_rng(5)
    pred, gt = _blob_pair(rng)
    pred[0, 0], pred[0, 1] = 0, 255  # full range: PySODMetrics' min-max step changes nothing
    p, g = bp.prepare(pred, gt, size=64)
    assert bp.weighted_f(g, g) == pytest.approx(1.0, abs=1e-5)
    assert bp.weighted_f(p, np.zeros_like(g)) == 0.0
    ref = psm.WeightedFmeasure()
    ref.step(pred, gt)  # beta = 1 in both; epsilons differ (1e-6 vs 2e-16)
    assert bp.weighted_f(p, g) == pytest.approx(float(ref.get_results()["wfm"]), abs=1e-5)


def test_ben_thresholds_and_soft_ground_truth() -> None:
    p = _unit([[128, 127], [0, 0]])  # 0.502 and 0.498
    g = _unit([[255, 255], [0, 0]])
    assert bp.iou(p, g) == pytest.approx((1 + 1e-5) / (2 + 1e-5), abs=1e-12)  # pred > 0.5
    assert bp.accuracy(p, g) == 0.75  # pred >= 0.5
    soft = _unit([[255, 128], [0, 0]])  # MAE and Dice read the soft ground truth as it is
    assert bp.mae(soft, g) == pytest.approx(127 / 255 / 4, abs=1e-7)
    assert bp.mae(soft, soft) == 0.0


def test_ben_empty_ground_truth_quirks() -> None:
    z = np.zeros((4, 4), np.float32)
    assert bp.iou(z, z) == 1.0  # smoothing: both empty is a perfect IoU (standard: 0)
    assert bp.ber(z, z) == pytest.approx(0.5)  # the missing class counts as a 0 rate
    assert bp.f_curves(z, z)[2].max() == 0.0


def test_ben_prepare_resizes_both_to_square() -> None:
    pred = np.random.default_rng(0).integers(0, 256, (30, 50), dtype=np.uint8)
    gt = np.zeros((60, 20), np.uint8)
    gt[:, 10:] = 255
    p, g = bp.prepare(pred, gt, size=16)
    assert p.shape == g.shape == (16, 16) and p.dtype == g.dtype == np.float32
    assert set(np.unique(g)) == {0.0, 1.0}  # nearest neighbour keeps the ground truth binary


def test_ben_aggregate_averages_per_image_maxima() -> None:
    rng = np.random.default_rng(2)
    pairs = [_blob_pair(rng) for _ in range(4)]
    results = [bp.image_metrics(p, g, size=64) for p, g in pairs]
    summary = bp.aggregate(results)
    assert summary.protocol == "ben" and summary.count == 4
    assert summary.metrics["max_f"] == pytest.approx(np.mean([r.scores["max_f"] for r in results]))
    assert summary.metrics["mae"] == pytest.approx(np.mean([r.scores["mae"] for r in results]))
    assert summary.metrics["max_f"] >= summary.fmeasure.max() - 1e-12
