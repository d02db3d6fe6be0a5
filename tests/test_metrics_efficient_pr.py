"""Hubness-aware efficient precision/recall: metrics.efficient_precision_recall against brute force."""

import numpy as np
import pytest
import torch

from metrics.efficient_precision_recall import (
    efficient_precision_recall_from_features,
    efficient_precision_recall_with_error,
    hub_indices,
)
from metrics.precision_recall import precision_recall_from_features


def _dists(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))


def _brute_force(real, gen, k, hub_k, t, count_self=True):
    # Hubs, the authors' way (count_self): each point's top-(hub_k + 1) list, itself included (distance 0
    # comes first), and a hub occurs in more than t lists. The other rule: top-hub_k lists of the other
    # points only, more than t. Radii: each hub's k-NN radius in its whole set. Probes: the other set's hubs.
    real = np.asarray(real, dtype=np.float64)
    gen = np.asarray(gen, dtype=np.float64)

    def hubs_and_radii(x):
        d = _dists(x, x)
        lists = np.argsort(d, axis=1, kind='stable')[:, :hub_k + 1] if count_self else \
            np.argsort(np.where(np.eye(len(x), dtype=bool), np.inf, d), axis=1, kind='stable')[:, :hub_k]
        counts = np.zeros(len(x), dtype=int)
        for row in lists:
            for j in row:
                counts[j] += 1
        hubs = np.flatnonzero(counts > t)
        radii = np.sort(d[hubs], axis=1)[:, k]  # k-th other neighbour = (k+1)-th with self (distance 0)
        return hubs, radii

    real_hubs, real_radii = hubs_and_radii(real)
    gen_hubs, gen_radii = hubs_and_radii(gen)
    precision = np.mean([np.any(_dists(p[None], real[real_hubs])[0] <= real_radii) for p in gen[gen_hubs]])
    recall = np.mean([np.any(_dists(p[None], gen[gen_hubs])[0] <= gen_radii) for p in real[real_hubs]])
    return precision, recall, real_hubs, gen_hubs


@pytest.fixture(scope='module')
def feats():
    rng = np.random.RandomState(0)
    real = rng.randn(140, 8).astype(np.float32)
    gen = (rng.randn(120, 8) * 0.9 + 0.3).astype(np.float32)
    return real, gen


@pytest.mark.parametrize('count_self', [True, False])
@pytest.mark.parametrize('hub_k,t', [(3, 3), (5, 6)])
def test_exact_mode_matches_brute_force(feats, hub_k, t, count_self):
    real, gen = feats
    ref_p, ref_r, _, _ = _brute_force(real, gen, 3, hub_k, t, count_self)
    assert 0.05 < ref_p < 1 and 0.05 < ref_r < 1
    got = efficient_precision_recall_from_features(real, gen, nhood_size=3, hub_k=hub_k, hub_threshold=t,
                                                   count_self=count_self, fp16=False)
    assert got == (ref_p, ref_r)


def test_authors_hub_rule_is_the_default_and_one_step_looser(feats):
    real, _ = feats
    x = torch.from_numpy(real)
    default, authors, strict = hub_indices(x), hub_indices(x, count_self=True), hub_indices(x, count_self=False)
    assert torch.equal(default, authors)
    assert set(strict.tolist()) < set(authors.tolist())  # N_3 > 3 is a strict subset of N_3 >= 3 here.
    assert torch.equal(strict, hub_indices(x, threshold=4, count_self=True))  # N_3 > 3 is N_3 >= 4.
    _, _, real_hubs, _ = _brute_force(real, real, 3, 3, 3, count_self=True)
    assert authors.tolist() == real_hubs.tolist()


def test_with_error_reports_both_metrics(feats):
    real, gen = feats
    out = efficient_precision_recall_with_error(real, gen, fp16=False)
    ref_p, ref_r, real_hubs, gen_hubs = _brute_force(real, gen, 3, 3, 3)
    full_p, full_r = precision_recall_from_features(real, gen, fp16=False)
    assert (out['precision'], out['recall']) == (ref_p, ref_r)
    assert (out['full_precision'], out['full_recall']) == (full_p, full_r)
    assert out['precision_error'] == pytest.approx(ref_p - full_p)
    assert out['recall_error'] == pytest.approx(ref_r - full_r)
    assert out['precision_rel_error'] == pytest.approx((ref_p - full_p) / full_p)
    assert out['recall_rel_error'] == pytest.approx((ref_r - full_r) / full_r)
    assert (out['num_real_hubs'], out['num_gen_hubs']) == (len(real_hubs), len(gen_hubs))
    assert 0 < len(real_hubs) < len(real) and 0 < len(gen_hubs) < len(gen)


@pytest.mark.parametrize('fp16', [False, True])
def test_blocked_equals_unblocked(feats, fp16):
    real, gen = feats
    full = efficient_precision_recall_from_features(real, gen, fp16=fp16)
    assert efficient_precision_recall_from_features(real, gen, row_batch_size=9, col_batch_size=13, fp16=fp16) == full


def test_hub_indices_and_no_hubs(feats):
    real = feats[0]
    _, _, real_hubs, _ = _brute_force(real, feats[1], 3, 3, 3)
    np.testing.assert_array_equal(hub_indices(torch.from_numpy(real), 3, 3).numpy(), real_hubs)
    with pytest.raises(ValueError, match='hub'):
        efficient_precision_recall_from_features(real, feats[1], hub_threshold=10 ** 6)
