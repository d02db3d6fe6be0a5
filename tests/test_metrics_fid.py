"""FID: metrics.frechet_inception_distance against independent float64 references."""

import numpy as np
import pytest
import scipy.linalg

from metrics.frechet_inception_distance import fid_from_features, fid_from_stats


def _reference_fid(real, gen):
    # Tr sqrtm(S_g S_r) equals the nuclear norm of Xg_c Xr_c^T / sqrt(Ng Nr) (the nonzero
    # eigenvalues of S_g S_r are the squared singular values of that matrix), so this reference
    # needs neither sqrtm nor a covariance square root.
    real = np.asarray(real, dtype=np.float64)
    gen = np.asarray(gen, dtype=np.float64)
    rc = real - real.mean(axis=0)
    gc = gen - gen.mean(axis=0)
    cross = gc @ rc.T / np.sqrt(len(gen) * len(real))
    tr_covmean = np.linalg.svd(cross, compute_uv=False).sum()
    diff = gen.mean(axis=0) - real.mean(axis=0)
    tr_r = (rc ** 2).sum() / len(real)
    tr_g = (gc ** 2).sum() / len(gen)
    return diff @ diff + tr_r + tr_g - 2 * tr_covmean


def _features(rng, n, d, shift=0.0, scale=1.0):
    mix = rng.randn(d, d) / np.sqrt(d)
    return (rng.randn(n, d) @ mix * scale + shift).astype(np.float32)


def test_full_rank_matches_references():
    rng = np.random.RandomState(0)
    real = _features(rng, 500, 24)
    gen = _features(rng, 400, 24, shift=0.3, scale=1.2)
    expected = _reference_fid(real, gen)
    assert fid_from_features(real, gen) == pytest.approx(expected, rel=1e-6)

    # NVlabs' route: np.cov-style population covariances and scipy's sqrtm, real part kept.
    mu_r, mu_g = real.astype(np.float64).mean(0), gen.astype(np.float64).mean(0)
    s_r = np.cov(real.astype(np.float64), rowvar=False, bias=True)
    s_g = np.cov(gen.astype(np.float64), rowvar=False, bias=True)
    covmean = np.real(scipy.linalg.sqrtm(s_g @ s_r))
    nvlabs_style = np.sum((mu_g - mu_r) ** 2) + np.trace(s_g + s_r - 2 * covmean)
    assert fid_from_stats(mu_g, s_g, mu_r, s_r) == pytest.approx(nvlabs_style, rel=1e-6)


def test_rank_deficient_is_finite_and_correct():
    # Fewer samples than dimensions: both covariances are singular.
    rng = np.random.RandomState(1)
    real = _features(rng, 20, 64)
    gen = _features(rng, 30, 64, shift=0.1, scale=0.7)
    value = fid_from_features(real, gen)
    assert np.isfinite(value)
    assert value == pytest.approx(_reference_fid(real, gen), rel=1e-6)


def test_diagonal_covariances_closed_form():
    # Commuting covariances: Tr sqrtm(S_a S_b) = sum sqrt(a_i b_i).
    rng = np.random.RandomState(2)
    a, b = rng.uniform(0.1, 3, 10), rng.uniform(0, 3, 10)
    b[:3] = 0
    mu_a, mu_b = rng.randn(10), rng.randn(10)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid_from_stats(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_identical_sets_give_zero_and_order_does_not_matter():
    rng = np.random.RandomState(3)
    real = _features(rng, 300, 16)
    gen = _features(rng, 300, 16, shift=0.5)
    assert abs(fid_from_features(real, real)) < 1e-8
    assert fid_from_features(real, gen) == pytest.approx(fid_from_features(gen, real), rel=1e-9)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        fid_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
