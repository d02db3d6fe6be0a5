"""Exact k-occurrence and hubness diagnostics (sampling/hubness.py)."""

import sys
import types

import numpy as np
import pytest
import scipy.stats
import torch
from scipy.spatial.distance import cdist

from sampling import hubness as H
from sampling.hubness import _neighbors, hubness_stats, k_occurrence

# ----------------------------------------------------------------------------
# Independent float64 reference: full distance matrix by differences, rows ranked by (distance, index).

def reference_neighbors(x, k, count_self=False):
    d = cdist(np.asarray(x, dtype=np.float64), np.asarray(x, dtype=np.float64), 'sqeuclidean')
    # Self is a neighbour at distance 0 (authors: the k-NN graph of X queried with X; identical rows of smaller
    # index rank before it) or no neighbour at all (textbook).
    np.fill_diagonal(d, 0.0 if count_self else np.inf)
    return np.argsort(d, axis=1, kind='stable')[:, :k]  # Stable: equal distances keep index order.


def reference_counts(x, k, count_self=False):
    return np.bincount(reference_neighbors(x, k, count_self).ravel(), minlength=len(x))

# ----------------------------------------------------------------------------

@pytest.mark.parametrize('num,dim,k', [(7, 2, 1), (7, 2, 6), (50, 3, 5), (257, 128, 3), (300, 64, 10),
                                       (1000, 600, 5), (3000, 24, 7)])
@pytest.mark.parametrize('count_self', [False, True])
def test_matches_float64_reference(num, dim, k, count_self):
    x = np.random.RandomState(num + dim + k).randn(num, dim)
    counts = k_occurrence(x, k, count_self=count_self, block_size=128)
    assert counts.dtype == torch.int64 and counts.shape == (num,)
    assert np.array_equal(counts.numpy(), reference_counts(x, k, count_self))
    assert int(counts.sum()) == num * k  # Every point casts k votes.


def test_matches_sklearn_kneighbors_graph():
    sklearn_neighbors = pytest.importorskip('sklearn.neighbors')
    x = np.random.RandomState(0).randn(2000, 512).astype(np.float32)
    for k in [1, 5]:
        graph = sklearn_neighbors.NearestNeighbors(n_neighbors=k).fit(x).kneighbors_graph(x)
        expected = np.asarray(graph.sum(axis=0)).ravel().astype(np.int64)
        assert np.array_equal(k_occurrence(x, k, count_self=True).numpy(), expected)


def test_authors_convention_is_one_plus_textbook_with_k_minus_one():
    x = np.random.RandomState(1).randn(400, 32)
    assert np.array_equal(k_occurrence(x, 5, count_self=True), 1 + k_occurrence(x, 4))
    assert np.array_equal(k_occurrence(x, 1, count_self=True), np.ones(400))


@pytest.mark.parametrize('k', [1, 2, 3, 5])
def test_authors_convention_with_repeated_rows(k):
    # Groups of 1 to 6 identical rows, shuffled: a point with at least k twins of smaller index is not in its own
    # list (its slots go to those twins), so its count can be 0, as in the authors' graph.
    rs = np.random.RandomState(20 + k)
    base = rs.randn(40, 8).astype(np.float32)
    x = np.repeat(base, rs.randint(1, 7, size=40), axis=0)
    x = x[rs.permutation(len(x))]
    expected = np.zeros(len(x), dtype=np.int64)
    for i in range(len(x)):  # Brute force: k smallest (distance, index) over all points, itself included.
        dist = ((x.astype(np.float64) - x[i].astype(np.float64)) ** 2).sum(axis=1)
        for j in np.lexsort((np.arange(len(x)), dist))[:k]:
            expected[j] += 1
    counts = k_occurrence(x, k, count_self=True, block_size=32)
    assert np.array_equal(counts.numpy(), expected)
    assert int(counts.sum()) == len(x) * k
    twins_before = np.array([sum(np.array_equal(x[j], x[i]) for j in range(i)) for i in range(len(x))])
    # Nobody lists such a point: any list reaching its group takes the group's k smallest indices first.
    assert (twins_before >= k).any() and np.all(expected[twins_before >= k] == 0)
    # Without k twins anywhere it is the usual 1 + N_{k-1}.
    unique = np.unique(x, axis=0)
    if k > 1:
        assert np.array_equal(k_occurrence(unique, k, count_self=True), 1 + k_occurrence(unique, k - 1))
    assert np.array_equal(counts.numpy(), reference_counts(x, k, True))


def test_block_size_does_not_matter():
    x = np.random.RandomState(2).randn(40, 20)
    expected = reference_counts(x, 4)
    for block_size in [1, 7, 16, 59, 60, 1000]:
        assert np.array_equal(k_occurrence(x, 4, block_size=block_size).numpy(), expected), block_size
    x = np.random.RandomState(3).randn(700, 40).astype(np.float32)
    expected = k_occurrence(x, 5, block_size=700)
    for block_size in [100, 256]:
        assert np.array_equal(k_occurrence(x, 5, block_size=block_size), expected), block_size


def test_worker_threads_give_the_same_result():
    # Three workers on many small tiles, with ties, so that concurrent merges into shared rows really happen.
    base = np.random.RandomState(18).randn(500, 48).astype(np.float32)
    x = np.concatenate([base, base[:100]])
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        counts = k_occurrence(x, 5, block_size=32)
        assert torch.get_num_threads() == 3  # Restored after the call.
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(counts.numpy(), reference_counts(x, 5))


def test_blas_threads_are_restored():
    # The CPU tiles run through numpy's BLAS held to one thread per worker; the caller's setting comes back.
    import threadpoolctl

    x = np.random.RandomState(19).randn(300, 32).astype(np.float32)
    with threadpoolctl.threadpool_limits(limits=2, user_api='blas'):
        counts = k_occurrence(x, 5, block_size=64)
        after = [info['num_threads'] for info in threadpoolctl.threadpool_info() if info['user_api'] == 'blas']
    assert after and all(n == 2 for n in after)
    assert np.array_equal(counts.numpy(), reference_counts(x, 5))


def test_input_types_and_layouts():
    x = np.random.RandomState(4).randn(300, 50)
    expected = reference_counts(x, 3)
    wide = np.repeat(x, 2, axis=1)
    wide[:, 1::2] = 7.0
    for variant in [x, torch.from_numpy(x), torch.from_numpy(x).float(), x.tolist(), wide[:, ::2],
                    np.asfortranarray(x)]:
        if isinstance(variant, torch.Tensor) and variant.dtype == torch.float32:
            want = reference_counts(variant.double().numpy(), 3)
        else:
            want = expected
        assert np.array_equal(k_occurrence(variant, 3).numpy(), want)
    ints = np.random.RandomState(5).randint(-50, 50, size=(200, 8))
    assert np.array_equal(k_occurrence(ints, 4).numpy(), reference_counts(ints, 4))

# ----------------------------------------------------------------------------
# Ties and float32 rounding.

def test_identical_points_smaller_index_wins():
    x = np.ones([4, 3])
    # Neighbour of 0 is 1; of 1, 2 and 3 it is 0.
    assert k_occurrence(x, 1).tolist() == [3, 1, 0, 0]
    assert k_occurrence(x, 2).tolist() == [3, 3, 2, 0]
    assert _neighbors(torch.as_tensor(x), 2).sort(dim=1).values.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1]]


def test_identical_row_groups_are_found_whatever_the_summation_order():
    # 8,300 copies of one float32 row (more than one hashing chunk; a float32 projection gave two keys here) and
    # a row equal to another up to the sign of a zero.
    row = np.random.RandomState(22).randn(64).astype(np.float32)
    x = np.concatenate([np.tile(row, (8300, 1)), np.random.RandomState(23).randn(5, 64).astype(np.float32)])
    x[8301, 0], x[8302] = 0.0, x[8301]
    x[8302, 0] = -0.0
    groups = H._identical_row_groups(torch.from_numpy(x), min_size=2)
    assert sorted(g.tolist() for g in groups) == [list(range(8300)), [8301, 8302]]
    assert H._identical_row_groups(torch.from_numpy(x).double(), min_size=8300)[0].tolist() == list(range(8300))


@pytest.mark.parametrize('k', [1, 2, 5])
def test_duplicated_points(k):
    base = np.random.RandomState(6).randn(100, 16)
    x = np.concatenate([base, base[:50], base[25:75]])[np.random.RandomState(7).permutation(200)]
    counts = k_occurrence(x, k, block_size=64)
    assert np.array_equal(counts.numpy(), reference_counts(x, k))
    assert np.array_equal(counts, k_occurrence(x, k, block_size=37))


@pytest.mark.parametrize('k', [1, 3, 10, 30])
def test_lattice_with_massive_ties(k):
    # Small integers: float32 and float64 distances are exact, and most rows have ties at the k-th distance.
    x = np.random.RandomState(8).randint(0, 3, size=(300, 3)).astype(np.float32)
    assert np.array_equal(k_occurrence(x, k, block_size=64).numpy(), reference_counts(x, k))
    assert np.array_equal(k_occurrence(x, k, count_self=True).numpy(), reference_counts(x, k, True))


def test_float32_cancellation_is_resolved_exactly():
    # A large common offset: |x|^2 terms of ~1e7 swamp the ~1e-3 distances, so float32 ranks are noise and
    # every row must be settled by the float64 re-check.
    rs = np.random.RandomState(9)
    x = 1000.0 + 0.01 * rs.randn(300, 16)
    for k in [1, 5]:
        assert np.array_equal(k_occurrence(x, k, block_size=100).numpy(), reference_counts(x, k))


def test_near_ties_below_float32_resolution():
    # Pairs of neighbours whose distances differ far below float32 resolution but are distinct in float64.
    rs = np.random.RandomState(10)
    x = rs.randn(200, 64)
    x[100:] = x[:100] + 1e-9 * rs.randn(100, 64)
    for k in [1, 2, 3]:
        assert np.array_equal(k_occurrence(x, k).numpy(), reference_counts(x, k))


@pytest.mark.parametrize('dense_selection', [False, True])
def test_both_selections_give_the_reference_sets(dense_selection):
    # Screening (the CPU default) and the dense top-k per tile (the GPU default, run here on the CPU), with
    # duplicates, a last block not a multiple of the screening group, and the per-rank row range.
    base = np.random.RandomState(21).randn(230, 20).astype(np.float32)
    x = np.concatenate([base, base[:30]])
    expected = np.sort(reference_neighbors(x, 5), axis=1)
    got = H._neighbors(torch.from_numpy(x), 5, block_size=96, dense_selection=dense_selection)
    assert np.array_equal(np.sort(got.numpy(), axis=1), expected)
    got = H._neighbors(torch.from_numpy(x), 5, rows=(50, 190), block_size=64, dense_selection=dense_selection)
    assert np.array_equal(np.sort(got.numpy(), axis=1), expected[50:190])


def test_k_nearest_neighbors_sets():
    x = np.random.RandomState(11).randn(500, 30)
    got = np.sort(_neighbors(torch.as_tensor(x), 6, block_size=128).numpy(), axis=1)
    assert np.array_equal(got, np.sort(reference_neighbors(x, 6), axis=1))

# ----------------------------------------------------------------------------

def test_bad_input():
    x = np.random.RandomState(12).randn(10, 3)
    for k in [0, 10, 2.5, True]:
        with pytest.raises(ValueError, match='k'):
            k_occurrence(x, k)
    assert k_occurrence(x, 10, count_self=True).tolist() == [10] * 10
    with pytest.raises(ValueError, match='2-D'):
        k_occurrence(x[0], 1)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        k_occurrence(bad, 2)
    with pytest.raises(ValueError, match='float32'):
        k_occurrence(x * 1e30, 2)
    with pytest.raises(ValueError, match='backend'):
        k_occurrence(x, 2, backend='annoy')


class _FakeIndexFlatL2:
    """Stand-in for faiss.IndexFlatL2: float32 brute force that, like faiss, may rank a duplicate before self."""

    def __init__(self, dim):
        self.x = np.zeros([0, dim], dtype=np.float32)

    def add(self, x):
        self.x = np.concatenate([self.x, x])

    def search(self, q, k):
        d = cdist(q, self.x, 'sqeuclidean').astype(np.float32)
        larger_first = np.broadcast_to(-np.arange(len(self.x)), d.shape)
        rank = np.lexsort((larger_first, d), axis=1)  # By distance, then larger index first.
        return np.take_along_axis(d, rank, 1)[:, :k], rank[:, :k].astype(np.int64)


def test_faiss_backend_with_stand_in(monkeypatch):
    monkeypatch.setitem(sys.modules, 'faiss', types.SimpleNamespace(IndexFlatL2=_FakeIndexFlatL2))
    rs = np.random.RandomState(13)
    base = rs.randn(150, 12)
    x = np.concatenate([base, base[:40], np.repeat(base[:1], 8, axis=0)])  # Pairs, and 9 copies of one point.
    for k in [1, 4]:
        assert np.array_equal(k_occurrence(x, k, backend='faiss').numpy(), reference_counts(x, k))
        assert np.array_equal(k_occurrence(x, k, count_self=True, backend='faiss').numpy(),
                              reference_counts(x, k, True))


def test_faiss_backend_real():
    pytest.importorskip('faiss')  # Optional extra; the stand-in test above covers our side without it.
    x = np.random.RandomState(14).randn(1000, 64).astype(np.float32)
    assert np.array_equal(k_occurrence(x, 5, backend='faiss'), k_occurrence(x, 5))


# ----------------------------------------------------------------------------

def test_hubness_stats_hand_example():
    stats = hubness_stats(np.array([0, 0, 3, 1]), k=1, threshold=3)
    # mean 1; sum |N - 1| = 4 over 2 * 4 slots; hubs (> 2k = 2): the point with 3 votes.
    assert stats['robinhood'] == pytest.approx(0.5)
    assert stats['hub_occurrence'] == pytest.approx(0.75)
    assert stats['antihub_occurrence'] == pytest.approx(0.5)
    assert stats['num_hubs'] == 1 and stats['num_antihubs'] == 2 and stats['max'] == 3
    assert stats['hub_ratio'] == pytest.approx(0.25) and stats['num_above_threshold'] == 1
    assert stats['skewness'] == pytest.approx(scipy.stats.skew([0, 0, 3, 1], bias=True))


def test_hubness_stats_hub_rule_strict_or_as_scikit_hubness_computes_it():
    counts = np.array([10, 11, 9, 0, 10, 0])  # k = 5: 2k = 10
    strict, inclusive = hubness_stats(counts, k=5), hubness_stats(counts, k=5, inclusive=True)
    assert strict['num_hubs'] == 1 and strict['hub_occurrence'] == pytest.approx(11 / 40)
    assert inclusive['num_hubs'] == 3 and inclusive['hub_occurrence'] == pytest.approx(31 / 40)
    assert strict['num_antihubs'] == inclusive['num_antihubs'] == 2


def test_hubness_stats_on_scores():
    x = np.random.RandomState(17).randn(2000, 256)
    counts = k_occurrence(x, 5)
    stats = hubness_stats(counts, 5, threshold=20)
    c = counts.numpy().astype(np.float64)
    assert stats['mean'] == pytest.approx(5.0)
    assert stats['skewness'] == pytest.approx(scipy.stats.skew(c, bias=True))
    assert stats['skewness'] > 1  # High-dimensional Gaussians are hubby.
    assert stats['num_hubs'] == int((c > 10).sum())
    assert stats['hub_occurrence'] == pytest.approx(c[c > 10].sum() / c.sum())
    assert stats['num_above_threshold'] == int((c >= 20).sum())
    assert hubness_stats(np.full(10, 5), 5)['skewness'] == 0.0
    assert hubness_stats(np.full(10, 5), 5)['robinhood'] == 0.0

# ----------------------------------------------------------------------------


def test_distance_gemm_flops_counts_the_block_pairs():
    # Blocks of 4, 4 and 2 rows: pairs (0,1) (0,2) (1,2), each 2 * |I| * |J| * (d + 2); a block of 4 with itself
    # is rows 0-1 against 0-3 and rows 2-3 against 2-3 (8 + 4 entries), a block of 2 is 1 x 2 and 1 x 1.
    expected = 2 * 5 * (16 + 8 + 8 + (8 + 4) + (8 + 4) + (2 + 1))
    assert H.distance_gemm_flops(10, 3, block_size=4) == expected
    assert H.distance_gemm_flops(10, 3, block_size=10) == 2 * 5 * (5 * 10 + 5 * 5)  # one block: 3/4 of the square
