"""Evaluation of predicted masks against ground truths (``ben eval``).

Two protocols: ``standard`` (:mod:`ben_cli.eval.metrics`, PySODMetrics, the DIS
literature) and ``ben`` (:mod:`ben_cli.eval.protocol_ben`, the authors' script).

    from ben_cli.eval import evaluate_pairs, pair_predictions
    result = evaluate_pairs(pair_predictions("pred/", "gt/"), protocol="standard")
    result.summary.metrics["max_f"]
"""

from __future__ import annotations

from ben_cli.eval.evaluate import Evaluation, Pair, evaluate_pairs, pair_predictions
from ben_cli.eval.metrics import METRIC_KEYS, ImageResult, Summary

__all__ = ["METRIC_KEYS", "Evaluation", "ImageResult", "Pair", "Summary", "evaluate_pairs", "pair_predictions"]
