"""Tests for sampling/polarity.py: weights, resampling semantics, exact-uniform variant, rejection, mixtures.

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
# Exact-uniform variant and polarity on the sheet.


def test_exact_uniform_variant_is_uniform_on_the_surface(candidates):
    z, svds = candidates
    bound = 1.0
    log_w = polarity.log_weights_uniform(svds, z, rho=1, prior='normal', bound=bound)
    inside = np.flatnonzero(np.isfinite(log_w))
    assert np.array_equal(inside, np.flatnonzero(np.all(np.abs(z.numpy()) <= bound, axis=1)))
    ess = polarity.effective_sample_size(log_w)
    assert 0.5 * len(inside) < ess < len(inside)

    idx = polarity.resample_with_replacement(log_w, 3000, seed=0)
    assert np.all(np.isin(idx, inside))
    assert scipy.stats.kstest(arc_fraction(sheet(z[idx]), bound), 'uniform').pvalue > 0.01
    # Plain sampling (the candidates inside the box) puts half the mass on the piece with 1/5 of the area.
    plain = inside[:3000]
    assert scipy.stats.kstest(arc_fraction(sheet(z[plain]), bound), 'uniform').pvalue < 1e-3
    # The released MaGNET weights (no division by the normal prior) fix the pieces but not the prior.
    released = np.where(np.isfinite(log_w), polarity.log_weights(svds, rho=1), -np.inf)
    idx = polarity.resample_with_replacement(released, 3000, seed=0)
    assert scipy.stats.kstest(arc_fraction(sheet(z[idx]), bound), 'uniform').pvalue < 1e-3


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


def test_rejection_sampler_on_the_sheet(candidates):
    z, _ = candidates

    def score(zz):
        return volume.log_volume(volume.jacobian_singular_values(sheet, zz))
    rho = -1.0
    log_M = -np.log(SCALE ** 2 * S1 * T)          # max of rho * logvol, reached on piece 1
    sampler = polarity.RejectionSampler(score, rho, log_M, seed=3)
    batches = torch.split(z[:20000], 1000)
    out = sampler.sample(batches, 6000)
    assert out.shape == (6000, 2) and sampler.num_exceeded == 0
    assert abs(float(np.mean(out[:, 0].numpy() < 0)) - 0.8) < 0.02
    # Acceptance rate: 1/2 on piece 1 plus (S1 / S2) / 2 on piece 2.
    assert abs(sampler.num_accepted / sampler.num_seen - 0.625) < 0.02
    # The decisions depend on the candidate order only, not on the batching.
    one = polarity.RejectionSampler(score, rho, log_M, seed=4).accept(z[:3000])
    parts = polarity.RejectionSampler(score, rho, log_M, seed=4)
    split = np.concatenate([parts.accept(b) for b in torch.split(z[:3000], 700)])
    assert np.array_equal(one, split)
    # A bound that is too low is reported.
    low = polarity.RejectionSampler(score, rho, log_M - 1.0, seed=0)
    with pytest.warns(RuntimeWarning, match='log_M'):
        low.accept(z[:100])
    assert low.num_exceeded == int(np.sum(z[:100, 0].numpy() < 0))
    assert low.max_log_ratio == pytest.approx(1.0, abs=1e-5)

# ----------------------------------------------------------------------------
# Weights.


def test_log_weights_and_uniform_weights():
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

    z = rng.normal(size=(7, 2)) * 0.8
    for domain in ('box', 'ball'):
        got = polarity.log_weights_uniform(svds, z, rho=0.5, top_k=4, bound=1.0, domain=domain)
        inside = np.all(np.abs(z) <= 1, 1) if domain == 'box' else np.sqrt((z ** 2).sum(1)) <= 1
        log_normal = np.array([scipy.stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(zz) for zz in z])
        np.testing.assert_allclose(got[inside], 0.5 * brute[inside] - log_normal[inside], rtol=1e-12)
        assert np.all(got[~inside] == -np.inf)
    uni = polarity.log_weights_uniform(svds, z, rho=1, top_k=4, prior='uniform', bound=1.0)
    np.testing.assert_allclose(uni[np.isfinite(uni)], brute[np.isfinite(uni)], rtol=1e-12)
    with pytest.raises(ValueError, match='bounded'):
        polarity.log_weights_uniform(svds, z)


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


def test_mixture():
    bank = np.arange(100, dtype=np.float64)[:, None]
    log_w = np.log(np.linspace(1, 2, 100))

    def magnet(n, rng):
        return bank[polarity.resample_with_replacement(log_w, n, rng)]

    def random(n, rng):
        return rng.standard_normal([n, 1]) + 1000.0

    mix = polarity.Mixture([(0.2, magnet), (0.8, random)])
    assert mix.counts(1000) == [200, 800]
    z, source = mix.sample(1000, seed=3)
    assert z.shape == (1000, 1) and np.array_equal(np.bincount(source), [200, 800])
    assert np.all(z[source == 0] < 100) and np.all(z[source == 1] > 900)
    z2, _ = mix.sample(1000, seed=3)
    assert np.array_equal(z, z2)
    assert not np.array_equal(z, mix.sample(1000, seed=4)[0])
    # A component's draws depend on its own generator only.
    other = polarity.Mixture([(0.2, magnet), (0.8, lambda n, rng: np.zeros([n, 1]))])
    assert np.array_equal(other.sample(1000, seed=3)[0][:200], z[:200])
    zs, ss = mix.sample(1000, seed=3, shuffle=True)
    assert np.array_equal(np.sort(zs.ravel()), np.sort(z.ravel()))
    assert np.all((zs[:, 0] < 100) == (ss == 0)) and not np.array_equal(ss, source)
    zt, _ = polarity.Mixture([(0.5, lambda n, rng: torch.zeros([n, 2])), (0.5, lambda n, rng: torch.ones([n, 2]))]).sample(5)
    assert isinstance(zt, torch.Tensor) and zt.shape == (5, 2) and float(zt.sum()) == 4.0

# ----------------------------------------------------------------------------
