"""Improved precision/recall: metrics.precision_recall against brute-force counts."""

import numpy as np
import pytest
import torch

from metrics import precision_recall
from metrics.precision_recall import compute_knn_radii, precision_recall_from_features


def _dists(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))


def _brute_force(real, gen, k, fp16=False):
    # Kynkaanniemi et al. by definition: radius = distance to the k-th other neighbour (the
    # (k+1)-th smallest distance, self included); a probe counts if it lies within any ball.
    # fp16=True mimics NVlabs: float16 features, float16 distances and radii.
    real = np.asarray(real, dtype=np.float32)
    gen = np.asarray(gen, dtype=np.float32)
    cast = (lambda x: x.astype(np.float16).astype(np.float64)) if fp16 else (lambda x: x.astype(np.float64))
    real, gen = cast(real), cast(gen)

    def fraction_inside(probes, manifold):
        radii = cast(np.sort(_dists(manifold, manifold), axis=1)[:, k])
        count = 0
        for p in probes:
            if np.any(cast(_dists(p[None], manifold)[0]) <= radii):
                count += 1
        return count / len(probes)

    return fraction_inside(gen, real), fraction_inside(real, gen)


@pytest.fixture(scope='module')
def feats():
    rng = np.random.RandomState(0)
    real = rng.randn(83, 6).astype(np.float32)
    gen = (rng.randn(71, 6) * 0.8 + 0.5).astype(np.float32)
    return real, gen


def test_exact_mode_matches_brute_force(feats):
    real, gen = feats
    p, r = precision_recall_from_features(real, gen, nhood_size=3, fp16=False)
    ref_p, ref_r = _brute_force(real, gen, 3)
    assert 0.1 < ref_p < 0.95 and 0.1 < ref_r < 0.95  # non-trivial case
    assert p == ref_p
    assert r == ref_r


@pytest.mark.parametrize('k', [1, 5])
def test_exact_mode_other_k(feats, k):
    real, gen = feats
    assert precision_recall_from_features(real, gen, nhood_size=k, fp16=False) == _brute_force(real, gen, k)


def test_fp16_mode_matches_float16_brute_force(feats):
    # Distances rounded to float16 from float32 (ours) and float64 (reference) may land on
    # different sides of a rounding boundary; allow at most one probe of difference.
    real, gen = feats
    p, r = precision_recall_from_features(real * 40, gen * 40, fp16=True)
    ref_p, ref_r = _brute_force(real * 40, gen * 40, 3, fp16=True)
    assert abs(p - ref_p) <= 1 / len(gen) + 1e-12
    assert abs(r - ref_r) <= 1 / len(real) + 1e-12


@pytest.mark.parametrize('fp16', [False, True])
def test_blocked_equals_unblocked(feats, fp16):
    real, gen = feats
    full = precision_recall_from_features(real, gen, fp16=fp16)
    for rows, cols in [(7, 11), (13, 2), (1, 100)]:
        assert precision_recall_from_features(real, gen, row_batch_size=rows, col_batch_size=cols, fp16=fp16) == full


def test_blocks_bound_memory(feats, monkeypatch):
    real, gen = feats
    shapes = []
    original = precision_recall.block_distances

    def recording(x, y):
        shapes.append((x.shape[0], y.shape[0]))
        return original(x, y)

    monkeypatch.setattr(precision_recall, 'block_distances', recording)
    precision_recall_from_features(real, gen, row_batch_size=9, col_batch_size=10)
    assert shapes
    assert max(s[0] for s in shapes) <= 9 and max(s[1] for s in shapes) <= 10


def test_knn_radii_of_subset_equal_rows_of_full(feats):
    real = torch.from_numpy(feats[0]).double()
    full = compute_knn_radii(real, real, 3)
    sub = compute_knn_radii(real[10:20], real, 3, row_batch_size=4, col_batch_size=6)
    expected = np.sort(_dists(feats[0].astype(np.float64), feats[0].astype(np.float64)), axis=1)[:, 3]
    # Different block shapes may change the last bit of a distance (cdist switches algorithms).
    np.testing.assert_allclose(sub.numpy(), full[10:20].numpy(), rtol=1e-12)
    np.testing.assert_allclose(full.numpy(), expected, rtol=1e-9)


def test_limits_and_inputs(feats):
    real, gen = feats
    assert precision_recall_from_features(real, real.copy(), fp16=False) == (1.0, 1.0)
    assert precision_recall_from_features(real, gen + 100, fp16=False) == (0.0, 0.0)
    as_numpy = precision_recall_from_features(real, gen)
    as_torch = precision_recall_from_features(torch.from_numpy(real), torch.from_numpy(gen), device='cpu')
    assert as_numpy == as_torch
    with pytest.raises(ValueError):
        precision_recall_from_features(real[:3], gen)  # fewer points than nhood_size + 1
    with pytest.raises(ValueError):
        precision_recall_from_features(real, gen[:, :4])


@pytest.mark.parametrize('fp16', [False, True])
def test_probe_on_ball_boundary_counts(fp16):
    # Integer positions on a line make distances exact: the probe at -1 lies exactly on the
    # boundary of the ball around 0 (radius 1 for k = 1) and must count as inside (<=).
    real = np.zeros((10, 4), dtype=np.float32)
    real[:, 0] = np.arange(10)
    gen = np.zeros((3, 4), dtype=np.float32)
    gen[:, 0] = [-1, 4.5, 11.5]
    precision, recall = precision_recall_from_features(real, gen, nhood_size=1, fp16=fp16)
    assert precision == pytest.approx(2 / 3)
    assert recall == 1.0
    assert (precision, recall) == _brute_force(real, gen, 1, fp16=fp16)
