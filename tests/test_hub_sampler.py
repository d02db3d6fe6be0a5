"""Hub search logic (sampling/hub_sampler.py) and its report (sampling/hub_report.py), in process."""

import json
import math
import os

import numpy as np
import pytest
import torch
from helpers import tiny_generator

from sampling import hub_sampler as hs
from sampling.chunks import ChunkStore
from sampling.hub_report import (
    _ticks,
    build_report,
    correlation,
    draw_report,
    pool_moments,
    save_report,
    score_norm_moments,
)
from sampling.latents import LatentBank


@pytest.fixture(scope='module')
def G():
    return tiny_generator(seed=1)


@pytest.fixture(scope='module')
def G_cond():
    return tiny_generator(seed=1, c_dim=3)

#----------------------------------------------------------------------------
# Independent references.

def brute_k_occurrence(x, k, count_self):
    """float64 all-pairs distances; self first (authors) or never (textbook); ties by the lower index."""
    x = np.asarray(x, dtype=np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, -1.0 if count_self else np.inf)
    neighbours = np.argsort(d, axis=1, kind='stable')[:, :k]
    return np.bincount(neighbours.ravel(), minlength=len(x))


def regenerate_batch(seed, num, z_dim):
    return np.random.RandomState(seed).randn(num, z_dim)

#----------------------------------------------------------------------------
# Selection rules.

def test_select_threshold_top_quantile():
    scores = np.array([3, 9, 1, 9, 7, 2, 9, 5, 0, 7])
    idx, cutoff = hs.select_hubs(scores, threshold=7)
    assert idx.tolist() == [1, 3, 4, 6, 9] and cutoff == 7
    # Top 3 of four candidates >= 7: the three 9s; top 4 adds the first 7 (index 4, not 9).
    idx, cutoff = hs.select_hubs(scores, top=4)
    assert idx.tolist() == [1, 3, 4, 6] and cutoff == 7
    idx, _ = hs.select_hubs(scores, top=len(scores))
    assert idx.tolist() == list(range(len(scores)))
    # Quantile 0.75 of the sorted scores [0 1 2 3 5 7 7 9 9 9] at position 6.75 -> 7 + 0.75 * (9 - 7) = 8.5.
    idx, cutoff = hs.select_hubs(scores, quantile=0.75)
    assert cutoff == pytest.approx(8.5) and idx.tolist() == [1, 3, 6]
    with pytest.raises(ValueError, match='exactly one'):
        hs.select_hubs(scores, threshold=1, top=2)


def test_search_settings_are_checked():
    defaults = hs.HubSearch()  # The authors' notebook.
    assert (defaults.space, defaults.k, defaults.threshold, defaults.count_self, defaults.batch_size) == \
        ('w', 5, 50.0, True, 10000)
    with pytest.raises(ValueError, match='batch_size - 1'):
        hs.HubSearch(k=10, batch_size=10)
    with pytest.raises(ValueError, match='one selection rule'):
        hs.HubSearch(threshold=3, quantile=0.5)
    with pytest.raises(ValueError, match='unknown space'):
        hs.HubSearch(space='x')
    with pytest.raises(ValueError, match='top'):
        hs.HubSearch(top=11, batch_size=10)
    with pytest.raises(ValueError, match='2\\*\\*32'):
        hs.HubSearch(seed=2 ** 32 - 1).batch_seed(1)

#----------------------------------------------------------------------------
# Scoring.

@pytest.mark.parametrize('space, count_self, threshold', [('w', True, 12), ('z', False, 20)])
def test_score_batch_matches_brute_force(G, space, count_self, threshold):
    search = hs.HubSearch(space=space, k=5, count_self=count_self, batch_size=300, seed=40, threshold=threshold)
    chunk = hs.score_batch(G, search, batch=2, device='cpu')
    z = regenerate_batch(42, 300, 16)
    w = G.mapping(torch.from_numpy(z).float(), None)[:, 0].numpy()
    expected = brute_k_occurrence(w if space == 'w' else z, 5, count_self)
    hubs = np.flatnonzero(expected >= threshold)
    assert hubs.size > 0, 'test setting should give hubs'
    assert chunk['indices'].tolist() == hubs.tolist()
    assert chunk['hub_score'].tolist() == expected[hubs].tolist()
    assert np.array_equal(chunk['seeds'], np.full(hubs.size, 42))
    assert np.array_equal(chunk.latents, z[hubs]) and chunk.latents.dtype == np.float64
    np.testing.assert_allclose(chunk['w'], w[hubs], rtol=1e-6, atol=1e-6)
    meta = chunk.meta
    assert meta['batch'] == 2 and meta['batch_seed'] == 42 and meta['num_accepted'] == hubs.size
    assert meta['histogram'] == np.bincount(expected).tolist()
    norms = np.linalg.norm(z, axis=1)
    assert correlation(meta['moments']) == pytest.approx(np.corrcoef(expected, norms)[0, 1], abs=1e-12)
    assert meta['sample']['score'] == expected[:256].tolist()
    assert meta['hubness']['mean'] == pytest.approx(5.0)


def test_score_batch_conditional_labels(G_cond):
    search = hs.HubSearch(batch_size=200, seed=7, top=5, class_idx='random')
    chunk = hs.score_batch(G_cond, search, batch=1, device='cpu')
    z = regenerate_batch(8, 200, 16)
    classes = np.random.RandomState([8, 1]).randint(3, size=200)  # latents.py: the label stream of seed 8.
    c = np.eye(3, dtype=np.float32)[classes]
    w = G_cond.mapping(torch.from_numpy(z).float(), torch.from_numpy(c))[:, 0].numpy()
    expected = brute_k_occurrence(w, 5, count_self=True)
    top5 = np.sort(np.argsort(-expected, kind='stable')[:5])
    assert chunk['indices'].tolist() == top5.tolist()
    assert np.array_equal(chunk.labels, c[top5])
    fixed = hs.score_batch(G_cond, hs.HubSearch(batch_size=200, seed=7, top=5, class_idx=2), batch=1, device='cpu')
    assert (fixed.labels.argmax(axis=1) == 2).all() and fixed.labels.sum() == 5
    with pytest.raises(ValueError, match='conditional'):
        hs.score_batch(G_cond, hs.HubSearch(batch_size=200, top=5), batch=0, device='cpu')


def test_pooled_correlation_equals_direct():
    rng = np.random.RandomState(3)
    parts = [(rng.randint(0, 30, size=n), rng.randn(n) * 2 + 5) for n in (50, 7, 130)]
    pooled = pool_moments(score_norm_moments(s, r) for s, r in parts)
    s = np.concatenate([p[0] for p in parts])
    r = np.concatenate([p[1] for p in parts])
    assert pooled['n'] == s.size and pooled['mean_r'] == pytest.approx(r.mean())
    assert correlation(pooled) == pytest.approx(np.corrcoef(s, r)[0, 1], abs=1e-12)
    assert math.isnan(correlation(score_norm_moments([1, 1, 1], [0.0, 1.0, 2.0])))

#----------------------------------------------------------------------------
# Driver.

def _fake_chunk(batch, count):
    """A chunk of `count` hubs of batch `batch`, tagged so that the order can be checked."""
    idx = np.arange(count, dtype=np.int64) * 3
    z = np.stack([np.full(4, batch * 1000 + i, dtype=np.float64) for i in idx]) if count else np.zeros([0, 4])
    meta = dict(batch=batch, batch_seed=batch, num_scored=10, num_accepted=count, acceptance_rate=count / 10,
                cutoff=1.0, histogram=[10], hubness={}, moments=score_norm_moments(np.arange(10), np.arange(10.0)),
                sample=dict(score=[1], norm=[1.0]))
    return LatentBank(z, meta=meta, hub_score=np.full(count, 7, dtype=np.int64),
                      seeds=np.full(count, batch, dtype=np.int64), indices=idx)


def test_collect_hubs_order_stop_and_resume(tmp_path, capsys):
    counts = [2, 0, 3, 1, 4, 5]
    calls = []

    def compute(b):
        calls.append(b)
        return _fake_chunk(b, counts[b])

    store = ChunkStore(tmp_path / 'chunks', hs.MAX_BATCHES, config=dict(job='a'))
    result = hs.collect_hubs(store, num=6, max_batches=10, compute=compute, progress=False)
    assert calls == [0, 1, 2, 3]  # 2 + 0 + 3 + 1 = 6: no batch beyond the one that completes the request.
    assert result.complete and len(result.batches) == 4
    assert result.bank['seeds'].tolist() == [0, 0, 2, 2, 2, 3]
    assert result.bank['indices'].tolist() == [0, 3, 0, 3, 6, 0]

    # More hubs later: finished batches are read, not recomputed; the first six are unchanged.
    calls.clear()
    more = hs.collect_hubs(store, num=8, max_batches=10, compute=compute, progress=False)
    assert calls == [4] and len(more.bank) == 8
    assert np.array_equal(more.bank.latents[:6], result.bank.latents)

    # Too few batches allowed: incomplete, everything found is returned.
    short = hs.collect_hubs(store, num=100, max_batches=3, compute=compute, progress=False)
    assert not short.complete and len(short.bank) == 5

    # A rule that accepts nothing: a warning after ten empty batches, and an empty, incomplete result.
    empty = ChunkStore(tmp_path / 'empty', hs.MAX_BATCHES)
    none = hs.collect_hubs(empty, num=1, max_batches=12, compute=lambda b: _fake_chunk(b, 0), progress=False)
    assert len(none.bank) == 0 and not none.complete and len(none.batches) == 12
    assert 'no hub in the first 10 batches' in capsys.readouterr().err

    # Merging (compute=None) refuses a missing batch.
    with pytest.raises(ValueError, match='batch 5 is not finished'):
        hs.collect_hubs(store, num=100, max_batches=10, progress=False)


def test_shard_batches_rule():
    top = hs.HubSearch(batch_size=100, top=7)
    shards = [hs.shard_batches(top, 50, i, 3) for i in range(3)]
    assert sorted(sum(shards, [])) == list(range(8))  # ceil(50 / 7) = 8 batches, each in exactly one shard.
    assert shards[1] == [1, 4, 7]
    assert hs.shard_batches(hs.HubSearch(batch_size=100), 50, 0, 2, max_batches=5) == [0, 2, 4]
    with pytest.raises(ValueError, match='max_batches'):
        hs.shard_batches(hs.HubSearch(batch_size=100, quantile=0.9), 50, 0, 2)

#----------------------------------------------------------------------------
# Images and report.

def test_write_images_resumes_with_identical_files(G, tmp_path):
    search = hs.HubSearch(batch_size=100, top=7, seed=3)
    bank = hs.score_batch(G, search, batch=0, device='cpu')
    full, part = tmp_path / 'full', tmp_path / 'part'
    paths = hs.write_images(G, bank, str(full), batch_size=3, progress=False)
    assert [os.path.basename(p) for p in paths] == [f'hub{i:06d}.png' for i in range(7)]
    # Interrupted run: only some images exist; a complete image already there is not rewritten (here another
    # hub's image stands in for it), a damaged one (truncated, or not a PNG) is rendered again.
    hs.write_images(G, bank, str(part), batch_size=3, progress=False)
    for i in (1, 4, 5, 6):
        os.remove(part / f'hub{i:06d}.png')
    stand_in = (full / 'hub000000.png').read_bytes()
    (part / 'hub000002.png').write_bytes(stand_in)
    (part / 'hub000003.png').write_bytes((full / 'hub000003.png').read_bytes()[:-20])
    (part / 'hub000000.png').write_bytes(b'not a png at all, but long enough to be read')
    hs.write_images(G, bank, str(part), batch_size=3, progress=False)
    assert (part / 'hub000002.png').read_bytes() == stand_in
    for i in (0, 1, 3, 4, 5, 6):
        assert (part / f'hub{i:06d}.png').read_bytes() == (full / f'hub{i:06d}.png').read_bytes()

    from sampling.images import load_png
    img = G(torch.from_numpy(bank.latents[:1]).float(), None, noise_mode='const')
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()
    assert np.abs(load_png(full / 'hub000000.png').astype(int) - expected).max() <= 1
    assert hs.write_grid(paths, str(tmp_path / 'grid.png'))
    assert load_png(tmp_path / 'grid.png').shape == (3 * 16, 3 * 16, 3)
    assert not hs.write_grid([], str(tmp_path / 'none.png'))


def test_report_summarises_batches(G, tmp_path):
    search = hs.HubSearch(batch_size=150, threshold=11)
    store = ChunkStore(tmp_path / 'chunks', hs.MAX_BATCHES)
    result = hs.collect_hubs(store, num=6, max_batches=20,
                             compute=lambda b: hs.score_batch(G, search, b, device='cpu'), progress=False)
    report = build_report(result, search)
    n = len(result.batches)
    assert report['num_batches'] == n and report['num_scored'] == 150 * n
    assert sum(report['score_histogram']['count']) == 150 * n
    assert report['num_found'] == 6 and report['complete']
    assert [b['batch_seed'] for b in report['batches']] == list(range(n))

    # Pooled correlation over every scored latent, recomputed from the seeds.
    scores, norms = [], []
    for b in range(n):
        z = regenerate_batch(b, 150, 16)
        scores.append(brute_k_occurrence(G.mapping(torch.from_numpy(z).float(), None)[:, 0].numpy(), 5, True))
        norms.append(np.linalg.norm(z, axis=1))
    scores, norms = np.concatenate(scores), np.concatenate(norms)
    assert report['score_norm_correlation'] == pytest.approx(np.corrcoef(scores, norms)[0, 1], abs=1e-9)
    assert report['num_accepted'] == int((scores >= 11).sum())
    assert report['score_histogram']['count'] == np.bincount(scores).tolist()

    image = draw_report(report, result)
    assert image.size == (1200, 320) and len(image.getcolors(1 << 16)) > 3  # Something was drawn.
    save_report(report, image, str(tmp_path / 'r.json'), str(tmp_path / 'r.png'))
    assert json.loads((tmp_path / 'r.json').read_text()) == json.loads(json.dumps(report))


def test_ticks_are_round_and_inside():
    assert _ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert _ticks(-0.5, 2.5, integer=True) == [0, 1, 2]
    ticks = _ticks(2.13, 6.9)
    assert ticks[0] >= 2.13 and ticks[-1] <= 6.9 and 3 <= len(ticks) <= 10

#----------------------------------------------------------------------------
