"""Tests for sampling/polarity.py: weights, resampling semantics, class-wise draws, mixture counts.

The toy generator is a folded sheet R^2 -> R^3 made of two planar pieces with stretch factors 1 and 4,
rotated into R^3, so its Jacobian volume, its induced density and an area coordinate on the surface are
known in closed form. All seeds are fixed: the tests are deterministic.
"""

import itertools

import numpy as np
import pytest
import scipy.stats
import torch

from sampling import polarity, volume

# ----------------------------------------------------------------------------
# The folded sheet.

S1, S2, T, SCALE = 1.0, 4.0, 1.0, 1.5
ROT = torch.linalg.qr(torch.randn([3, 3], generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0].float()


def sheet(z):
    """Piece 1 (z1 < 0) stretched by S1, piece 2 (z1 >= 0) by S2 along the fold, T across, then rotated."""
    y = torch.stack([S1 * z[:, 0].clamp(max=0), T * z[:, 1], S2 * z[:, 0].clamp(min=0)], dim=1)
    return SCALE * y @ ROT.T


def arc_fraction(x, bound):
    """Area coordinate on the sheet over the box [-bound, bound]^2: arc length along the fold, in [0, 1]."""
    y = (x @ ROT) / SCALE
    return ((y[:, 0] + S1 * bound) + y[:, 2]).double().numpy() / (bound * (S1 + S2))


@pytest.fixture(scope='module')
def candidates():
    z = torch.randn([40000, 2], generator=torch.Generator().manual_seed(1))
    svds = volume.jacobian_singular_values(sheet, z)
    return z, svds.numpy()


def test_sheet_volume(candidates):
    z, svds = candidates
    expected = np.where(z[:, 0].numpy() < 0, SCALE ** 2 * S1 * T, SCALE ** 2 * S2 * T)
    np.testing.assert_allclose(np.exp(volume.log_volume(svds)), expected, rtol=1e-5)

# ----------------------------------------------------------------------------
# Polarity on the sheet.


@pytest.mark.parametrize('rho', [-1.0, 0.0, 1.0])
def test_polarity_moves_mass_toward_or_away_from_the_densest_piece(candidates, rho):
    z, svds = candidates
    # The induced density p_z / vol is highest on piece 1 (stretch S1 < S2). Each piece has prior mass 1/2,
    # so with weights vol^rho the share of piece 1 is S1^rho / (S1^rho + S2^rho).
    expected = S1 ** rho / (S1 ** rho + S2 ** rho)
    idx = polarity.resample_with_replacement(polarity.log_weights(svds, rho), 20000, seed=2)
    share = float(np.mean(z[idx, 0].numpy() < 0))
    assert abs(share - expected) < 0.02
    if rho < 0:
        assert share > 0.7
    if rho > 0:
        assert share < 0.3


# ----------------------------------------------------------------------------
# Weights.


def test_log_weights():
    rng = np.random.default_rng(0)
    svds = rng.uniform(0.2, 3.0, size=(7, 6))
    brute = np.array([np.sum(np.log(np.sort(r)[::-1][:4])) for r in svds])
    np.testing.assert_allclose(polarity.log_weights(svds, -0.5, top_k=4), -0.5 * brute, rtol=1e-12)
    np.testing.assert_allclose(polarity.log_weights(torch.as_tensor(svds), 2.0, top_k=4), 2.0 * brute, rtol=1e-6)
    padded = np.vstack([svds, np.zeros([1, 6])])
    assert np.all(polarity.log_weights(padded, 0.0) == 0)
    assert polarity.log_weights(padded, 1.0)[-1] == -np.inf
    with pytest.raises(ValueError, match='padding'):
        polarity.log_weights(padded, -1.0)
    assert np.isfinite(polarity.log_weights(padded, -1.0, eps=1e-3)).all()



def test_effective_sample_size():
    assert polarity.effective_sample_size(np.zeros(50)) == pytest.approx(50)
    assert polarity.effective_sample_size([0.0, -50.0, -50.0]) == pytest.approx(1.0, abs=1e-12)
    log_w = np.random.default_rng(1).normal(size=200)
    w = np.exp(log_w)
    assert polarity.effective_sample_size(log_w) == pytest.approx(w.sum() ** 2 / (w ** 2).sum(), rel=1e-12)
    # Huge offsets cancel instead of overflowing; -inf entries count as zero weight.
    assert polarity.effective_sample_size(np.append(log_w + 5000.0, -np.inf)) == pytest.approx(
        w.sum() ** 2 / (w ** 2).sum(), rel=1e-9)

# ----------------------------------------------------------------------------
# Resampling semantics.


def test_with_replacement_matches_softmax():
    log_w = np.array([0.3, -1.2, 2.0, 0.0, -np.inf, 1.1, -0.4, 0.7])
    p = np.exp(log_w) / np.exp(log_w).sum()
    idx = polarity.resample_with_replacement(log_w, 200000, seed=5)
    counts = np.bincount(idx, minlength=len(log_w))
    assert counts[4] == 0
    keep = p > 0
    assert scipy.stats.chisquare(counts[keep], 200000 * p[keep]).pvalue > 1e-3
    assert np.array_equal(idx[:100], polarity.resample_with_replacement(log_w, 100, seed=5))
    assert not np.array_equal(idx[:100], polarity.resample_with_replacement(log_w, 100, seed=6))
    # Log weights far beyond float range.
    big = polarity.resample_with_replacement([1000.0, 1000.0 + np.log(3.0)], 40000, seed=0)
    assert abs(np.mean(big == 1) - 0.75) < 0.01
    with pytest.raises(ValueError):
        polarity.resample_with_replacement([-np.inf, -np.inf], 3)


def successive_sampling_reference(p, num):
    """Exact first-draw and inclusion probabilities of successive sampling, by enumerating ordered draws."""
    first = np.array(p, dtype=np.float64)
    inclusion = np.zeros(len(p))
    for seq in itertools.permutations(range(len(p)), num):
        prob, left = 1.0, 1.0
        for i in seq:
            prob *= p[i] / left
            left -= p[i]
        inclusion[list(seq)] += prob
    return first, inclusion


def test_without_replacement_is_successive_sampling():
    log_w = np.log(np.array([0.05, 0.1, 0.15, 0.3, 0.4]))
    p = np.exp(log_w) / np.exp(log_w).sum()
    first_ref, incl_ref = successive_sampling_reference(p, 3)
    trials = 8000
    rng = np.random.default_rng(7)
    ours = np.array([polarity.resample_without_replacement(log_w, 3, rng) for _ in range(trials)])
    np_rng = np.random.default_rng(8)
    theirs = np.array([np_rng.choice(5, 3, replace=False, p=p) for _ in range(trials)])
    for draws in (ours, theirs):
        assert all(len(set(row)) == 3 for row in draws)
        first = np.bincount(draws[:, 0], minlength=5)
        assert scipy.stats.chisquare(first, trials * first_ref).pvalue > 1e-3
        incl = np.bincount(draws.ravel(), minlength=5) / trials
        sd = np.sqrt(incl_ref * (1 - incl_ref) / trials)
        assert np.all(np.abs(incl - incl_ref) < 4.5 * sd)
    # Inclusion is not proportional to weight: the heaviest item saturates.
    assert incl_ref[-1] / incl_ref[0] < p[-1] / p[0] / 2


def test_without_replacement_edge_cases():
    log_w = np.array([0.0, 1.0, -np.inf, 2.0])
    assert sorted(polarity.resample_without_replacement(log_w, 3, seed=0)) == [0, 1, 3]
    assert len(polarity.resample_without_replacement(log_w, 0, seed=0)) == 0
    with pytest.raises(ValueError, match='distinct'):
        polarity.resample_without_replacement(log_w, 4, seed=0)
    idx = polarity.resample_without_replacement(np.zeros(1000), 400, seed=1)
    assert len(np.unique(idx)) == 400
    assert np.array_equal(idx, polarity.resample_without_replacement(np.zeros(1000), 400, seed=1))
    # Weights 1e-300 apart still work (no clipping, unlike the authors' demo).
    tiny = polarity.resample_without_replacement([0.0, -700.0, -1400.0], 3, seed=0)
    assert sorted(tiny) == [0, 1, 2] and tiny[0] == 0


def test_per_class_resampling():
    rng = np.random.default_rng(9)
    ids = np.repeat([0, 1, 2], [10, 15, 5])
    log_w = rng.normal(size=30)
    log_w[ids == 2] += 50.0                     # a class with huge weights must not steal draws
    onehot = np.eye(3)[ids]
    idx = polarity.resample_per_class(log_w, onehot, [4000, 0, 3000], seed=1)
    assert np.array_equal(np.bincount(ids[idx], minlength=3), [4000, 0, 3000])
    assert np.array_equal(idx, polarity.resample_per_class(log_w, ids, [4000, 0, 3000], seed=1))
    for k, n in ((0, 4000), (2, 3000)):
        members = np.flatnonzero(ids == k)
        p = np.exp(log_w[members] - log_w[members].max())
        p /= p.sum()
        counts = np.array([np.sum(idx == m) for m in members])
        assert scipy.stats.chisquare(counts, n * p).pvalue > 1e-3
    same = polarity.resample_per_class(log_w, ids, 4, seed=0, replace=False)
    assert np.array_equal(np.bincount(ids[same], minlength=3), [4, 4, 4]) and len(np.unique(same)) == 12
    assert np.array_equal(np.bincount(ids[polarity.resample_per_class(log_w, ids, {1: 6}, seed=0)], minlength=3),
                          [0, 6, 0])
    with pytest.raises(ValueError, match='one-hot'):
        polarity.resample_per_class(log_w, onehot * 2, 1)
    with pytest.raises(ValueError):
        polarity.resample_per_class(log_w, ids, [1, 2])

# ----------------------------------------------------------------------------
# Mixtures.


def test_split_counts():
    assert polarity.split_counts(50000, [0.2, 0.8]) == [10000, 40000]
    assert polarity.split_counts(50000, [0.041, 0.959]) == [2050, 47950]
    assert polarity.split_counts(7, [1 / 3, 1 / 3, 1 / 3]) == [2, 2, 3]
    assert polarity.split_counts(1, [0.5, 0.5, 0.0]) == [1, 0, 0]
    for total in (1, 13, 999):
        assert sum(polarity.split_counts(total, [0.15, 0.35, 0.5])) == total
    with pytest.raises(ValueError):
        polarity.split_counts(10, [0.5, 0.6])
    with pytest.raises(ValueError):
        polarity.split_counts(10, [1.2, -0.2])

# ----------------------------------------------------------------------------
