"""Inception Score: metrics.inception_score against an independent per-sample KL reference."""

import math

import numpy as np
import pytest

from metrics.inception_score import is_from_probs


def _reference_is(probs, num_splits):
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    scores = []
    for i in range(num_splits):
        rows = probs[i * n // num_splits: (i + 1) * n // num_splits]
        marginal = rows.sum(axis=0) / len(rows)
        kls = []
        for p in rows:
            kls.append(sum(pc * math.log(pc / mc) for pc, mc in zip(p, marginal) if pc > 0))
        scores.append(math.exp(sum(kls) / len(kls)))
    mean = sum(scores) / num_splits
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / num_splits)
    return mean, std


def test_matches_reference_uneven_splits():
    rng = np.random.RandomState(0)
    logits = rng.randn(103, 12) * 2  # 103 rows: splits of unequal size
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mean, std = is_from_probs(probs.astype(np.float32), num_splits=10)
    ref_mean, ref_std = _reference_is(probs.astype(np.float32), 10)
    assert mean == pytest.approx(ref_mean, rel=1e-5)
    assert std == pytest.approx(ref_std, rel=1e-5)
    assert std > 0


def test_one_hot_balanced_classes_give_class_count():
    # Each split holds every one of 5 classes equally often with certainty: IS = 5 exactly;
    # the zero probabilities must contribute nothing rather than NaN.
    probs = np.eye(5)[np.arange(100) % 5]
    mean, std = is_from_probs(probs, num_splits=10)
    assert mean == pytest.approx(5.0, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_identical_predictions_give_one():
    probs = np.tile([0.2, 0.3, 0.5], (40, 1))
    mean, _ = is_from_probs(probs, num_splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12)


def test_too_few_rows_rejected():
    with pytest.raises(ValueError):
        is_from_probs(np.full((3, 4), 0.25), num_splits=10)
