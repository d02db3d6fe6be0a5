"""KID: metrics.kernel_inception_distance against an independent unbiased-MMD reference."""

import numpy as np
import pytest

from metrics.kernel_inception_distance import kid_from_features


def _kernel(u, v):
    return (u @ v.T / u.shape[1] + 1) ** 3


def _reference_kid(real, gen, num_subsets, max_subset_size, seed):
    # Same subsets (documented draw order: real indices, then gen indices, per subset); the
    # estimator is written as the textbook unbiased MMD^2, averaged over subsets.
    real = np.asarray(real, dtype=np.float64)
    gen = np.asarray(gen, dtype=np.float64)
    m = min(len(real), len(gen), max_subset_size)
    rnd = np.random.RandomState(seed)
    off_diag = ~np.eye(m, dtype=bool)
    values = []
    for _ in range(num_subsets):
        x = real[rnd.choice(len(real), m, replace=False)]
        y = gen[rnd.choice(len(gen), m, replace=False)]
        mmd = _kernel(x, x)[off_diag].mean() + _kernel(y, y)[off_diag].mean() - 2 * _kernel(x, y).mean()
        values.append(mmd)
    return np.mean(values)


@pytest.fixture(scope='module')
def feats():
    rng = np.random.RandomState(0)
    real = rng.randn(120, 32).astype(np.float32)
    gen = (rng.randn(90, 32) * 1.1 + 0.2).astype(np.float32)
    return real, gen


def test_matches_reference_with_same_subsets(feats):
    real, gen = feats
    expected = _reference_kid(real, gen, num_subsets=7, max_subset_size=40, seed=123)
    assert kid_from_features(real, gen, num_subsets=7, max_subset_size=40, seed=123) == pytest.approx(expected, rel=1e-10)


def test_seeded_reproducible_and_seed_sensitive(feats):
    real, gen = feats
    a = kid_from_features(real, gen, num_subsets=5, max_subset_size=30, seed=1)
    b = kid_from_features(real, gen, num_subsets=5, max_subset_size=30, seed=1)
    c = kid_from_features(real, gen, num_subsets=5, max_subset_size=30, seed=2)
    assert a == b
    assert a != c


def test_subset_size_capped_by_smaller_set(feats):
    # With max_subset_size above both set sizes, m = #gen = 90: every subset takes all generated
    # rows, so the result must equal the reference with that m (and not try 1000 rows).
    real, gen = feats
    expected = _reference_kid(real, gen, num_subsets=3, max_subset_size=90, seed=0)
    assert kid_from_features(real, gen, num_subsets=3, max_subset_size=1000, seed=0) == pytest.approx(expected, rel=1e-10)


def test_distribution_shift_increases_kid():
    rng = np.random.RandomState(4)
    real = rng.randn(200, 16)
    same = rng.randn(200, 16)
    shifted = rng.randn(200, 16) + 0.5
    kid_same = kid_from_features(real, same, num_subsets=10, max_subset_size=100)
    kid_shift = kid_from_features(real, shifted, num_subsets=10, max_subset_size=100)
    assert abs(kid_same) < 0.2 * kid_shift


def test_too_few_samples_rejected():
    with pytest.raises(ValueError):
        kid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))
