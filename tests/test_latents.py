"""Seed conventions and latent banks (sampling/latents.py)."""

import hashlib
import json
import os

import numpy as np
import pytest

from sampling import latents as L
from sampling.latents import LatentBank

# ----------------------------------------------------------------------------
# Seeds.

def test_z_from_seeds_matches_generate_py_convention():
    seeds = [0, 1, 42, 2 ** 32 - 1]
    z = L.z_from_seeds(seeds, 17)
    assert z.dtype == np.float64 and z.shape == (4, 17)
    for i, seed in enumerate(seeds):
        assert np.array_equal(z[i], np.random.RandomState(seed).randn(1, 17)[0])


def test_z_from_seeds_matches_nvlabs_fixture(fixtures_dir):
    with np.load(os.path.join(fixtures_dir, 'sg2ada_tiny_state.npz'), allow_pickle=False) as data:
        seeds, ref_z = data['ref/seeds'], data['ref/z']
    z = L.z_from_seeds(seeds, ref_z.shape[1], dtype=np.float32)
    assert np.array_equal(z, ref_z)


@pytest.mark.parametrize('bad', [-1, 2 ** 32, 1.5])
def test_z_from_seeds_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match='seeds'):
        L.z_from_seeds([bad], 4)


def test_z_batch_rows_do_not_depend_on_how_many_are_drawn(monkeypatch):
    # A tiny skip chunk (odd, so chunk ends split the normal sampler's pairs) exercises the chunked skip.
    monkeypatch.setattr(L, '_SKIP_CHUNK', 7)
    seed, z_dim = 123, 5
    reference = np.random.RandomState(seed).randn(40, z_dim)
    for start, num in [(0, 40), (0, 1), (3, 10), (17, 23), (39, 1), (12, 0)]:
        assert np.array_equal(L.z_batch(seed, num, z_dim, start=start), reference[start : start + num])
    chunks = [L.z_batch(seed, 9, z_dim, start=s) for s in range(0, 36, 9)]
    assert np.array_equal(np.concatenate(chunks), reference[:36])
    assert np.array_equal(L.z_batch(seed, 1, z_dim)[0], L.z_from_seeds([seed], z_dim)[0])
    assert L.z_batch(seed, 3, z_dim, dtype=np.float32).dtype == np.float32


def test_random_labels_one_hot_and_prefix_consistent():
    c_dim, seed = 10, 77
    classes = np.random.RandomState([seed, 1]).randint(c_dim, size=50)
    c = L.random_labels(seed, 50, c_dim)
    assert c.dtype == np.float32 and c.shape == (50, c_dim)
    assert np.array_equal(c.sum(axis=1), np.ones(50)) and np.array_equal(c.argmax(axis=1), classes)
    assert np.array_equal(L.random_labels(seed, 20, c_dim, start=30), c[30:])
    assert L.random_labels(seed, 4, 0).shape == (4, 0)


def test_one_hot():
    c = L.one_hot([2, 0], 3)
    assert np.array_equal(c, [[0, 0, 1], [1, 0, 0]]) and c.dtype == np.float32
    with pytest.raises(ValueError, match='class'):
        L.one_hot([3], 3)

# ----------------------------------------------------------------------------
# Files.

def test_file_sha256(tmp_path):
    data = np.random.RandomState(0).bytes(3 * (1 << 20) + 123)
    path = tmp_path / 'net.pkl'
    path.write_bytes(data)
    assert L.file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_network_sha256_of_a_file_a_url_and_a_checkpoint_folder(tmp_path, monkeypatch):
    from helpers import LocalHTTPServer, Reply

    from dnnlib import util
    for var in ('http_proxy', 'https_proxy', 'all_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    monkeypatch.setattr(util, '_dnnlib_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    pickle_bytes, weights = b'network pickle bytes ' * 1000, b'BigGAN weights ' * 500
    expected_pickle, expected_weights = hashlib.sha256(pickle_bytes).hexdigest(), hashlib.sha256(weights).hexdigest()

    path = tmp_path / 'net.pkl'
    path.write_bytes(pickle_bytes)
    assert L.network_sha256(str(path)) == expected_pickle

    # A BigGAN checkpoint folder is identified by its weights, not by its config.
    folder = tmp_path / 'biggan-deep-128'
    folder.mkdir()
    (folder / 'pytorch_model.bin').write_bytes(weights)
    (folder / 'config.json').write_text('{"output_dim": 128}')
    assert L.network_sha256(str(folder)) == expected_weights
    assert L.network_sha256(str(folder / 'pytorch_model.bin')) == expected_weights

    server = LocalHTTPServer()
    try:
        server.routes['/net.pkl'] = [Reply(pickle_bytes)]
        assert L.network_sha256(server.url('/net.pkl')) == expected_pickle
        assert L.network_sha256(server.url('/net.pkl')) == expected_pickle  # The second read comes from the cache.
        assert server.hits['/net.pkl'] == 1
    finally:
        server.close()


def _bank(num=6, z_dim=4, c_dim=0, seed=0):
    rs = np.random.RandomState(seed)
    labels = L.one_hot(rs.randint(c_dim, size=num), c_dim) if c_dim else None
    meta = L.make_meta(command='test', network_sha256='ab' * 32, space='w', k=5, count_self=True,
                       z_dim=z_dim, c_dim=c_dim, note='x')
    return LatentBank(rs.randn(num, z_dim).astype(np.float32), labels, meta=meta,
                      hub_score=rs.randint(0, 60, size=num), svds=rs.rand(num, 3).astype(np.float32),
                      seeds=np.full(num, 11, dtype=np.int64), indices=np.arange(num))


@pytest.mark.parametrize('c_dim', [0, 3])
def test_bank_roundtrip_without_pickle(tmp_path, c_dim):
    bank = _bank(c_dim=c_dim)
    path = tmp_path / 'bank.npz'
    bank.save(path)
    with np.load(path, allow_pickle=False) as raw:
        assert set(raw.files) == {'latents', 'labels', 'meta', 'hub_score', 'svds', 'seeds', 'indices'}
        assert raw['labels'].shape == ((0,) if c_dim == 0 else (6, c_dim))
        assert json.loads(str(raw['meta']))['k'] == 5
    back = LatentBank.load(path)
    assert back.equals(bank)
    assert back.labels.shape == (6, c_dim) and back.c_dim == c_dim and back.z_dim == 4
    assert back.meta['versions']['bank_format'] == L.BANK_FORMAT and back.meta['extras'] == {'note': 'x'}
    assert back.meta['versions']['numpy'] == np.__version__


def test_bank_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'bank.npz'
    _bank(seed=1).save(path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b'partial')
        raise OSError('disk full')

    monkeypatch.setattr(np, 'savez', broken_savez)
    with pytest.raises(OSError, match='disk full'):
        _bank(seed=2).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['bank.npz']


def test_bank_validation():
    with pytest.raises(ValueError, match='rows'):
        LatentBank(np.zeros([3, 2]), hub_score=np.zeros(4))
    with pytest.raises(ValueError, match='labels'):
        LatentBank(np.zeros([3, 2]), labels=np.zeros([2, 5]))
    with pytest.raises(ValueError, match='pickle'):
        LatentBank(np.zeros([3, 2]), names=np.array(['a', None, 'c'], dtype=object))
    with pytest.raises(TypeError, match='JSON'):
        LatentBank(np.zeros([3, 2]), meta={'bad': object()})


def test_load_rejects_non_bank(tmp_path):
    np.savez(tmp_path / 'x.npz', foo=np.zeros(3))
    with pytest.raises(ValueError, match="no 'latents'"):
        LatentBank.load(tmp_path / 'x.npz')


@pytest.mark.parametrize('with_labels', [False, True])
def test_load_magnet_authors_file_drops_zero_rows(tmp_path, with_labels):
    rs = np.random.RandomState(3)
    latents = rs.randn(8, 5).astype(np.float32)
    svds = np.sort(rs.rand(8, 4).astype(np.float32), axis=1)[:, ::-1]
    latents[[2, 6]] = 0
    svds[[2, 6]] = 0
    latents[4] = 0  # Zero latent with non-zero singular values: a real row, kept.
    labels = L.one_hot(rs.randint(3, size=8), 3) if with_labels else np.zeros([0], dtype=np.float32)
    np.savez(tmp_path / 'authors.npz', svds=svds, latents=latents, labels=labels)
    bank = LatentBank.load(tmp_path / 'authors.npz')
    keep = [0, 1, 3, 4, 5, 7]
    assert bank.meta['dropped_zero_rows'] == 2 and bank.meta['source'] == 'external'
    assert np.array_equal(bank.latents, latents[keep]) and np.array_equal(bank['svds'], svds[keep])
    assert np.array_equal(bank.labels, labels[keep] if with_labels else np.zeros([6, 0]))


# The MaGNET authors' files, written as their volume script does: np.stack of per-batch arrays, the last
# batch padded with rows whose singular values are all zero; labels stacked likewise, or an empty array.

def _authors_batches(seed, num_batches=3, batch=4, k=5, z_dim=6, padding=2, c_dim=0):
    rs = np.random.RandomState(seed)
    svds = [np.sort(rs.uniform(0.1, 2, [batch, k]), axis=1)[:, ::-1].astype(np.float32) for _ in range(num_batches)]
    z = [rs.randn(batch, z_dim).astype(np.float32) for _ in range(num_batches)]
    svds[-1][batch - padding:] = 0
    z[-1][batch - padding:] = rs.randn(padding, z_dim)  # Padding latents need not be zero: svds decide.
    labels = [L.one_hot(rs.randint(c_dim, size=batch), c_dim) for _ in range(num_batches)] if c_dim else None
    return svds, z, labels


def _write_authors_file(path, svds, z, labels=None, stack=True):
    join = np.stack if stack else np.concatenate
    np.savez(path, svds=join(svds), latents=join(z), labels=join(labels) if labels else np.array([]))


def _expected_rows(svds, z, labels=None):
    """Their Colab, row by row: every row of every batch, in order, unless its svds sum to zero."""
    rows = [(s, v, None if labels is None else c)
            for b in range(len(svds)) for s, v, c in zip(svds[b], z[b], labels[b] if labels else [None] * len(z[b]))
            if float(np.sum(s, dtype=np.float64)) != 0]
    return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
            None if labels is None else np.array([r[2] for r in rows]))


@pytest.mark.parametrize('stack', [True, False], ids=['3d', '2d'])
@pytest.mark.parametrize('c_dim', [0, 3])
def test_authors_file_layouts(tmp_path, stack, c_dim):
    svds, z, labels = _authors_batches(4, c_dim=c_dim)
    _write_authors_file(tmp_path / 'vol.npz', svds, z, labels, stack=stack)
    with np.load(tmp_path / 'vol.npz') as data:
        assert data['latents'].ndim == (3 if stack else 2)
    bank = L.load_bank(str(tmp_path / 'vol.npz'))
    want_svds, want_z, want_labels = _expected_rows(svds, z, labels)
    assert len(bank) == 10 and bank.meta['dropped_zero_rows'] == 2 and bank.meta['source'] == 'external'
    assert np.array_equal(bank['svds'], want_svds) and np.array_equal(bank.latents, want_z)
    assert bank.c_dim == c_dim and (c_dim == 0 or np.array_equal(bank.labels, want_labels))
    assert LatentBank.load(tmp_path / 'vol.npz').equals(bank)  # One reader behind both entry points.


def test_authors_files_per_class_folder_and_list(tmp_path):
    folder = tmp_path / 'biggan'
    folder.mkdir()
    parts = {}
    for class_idx, name, seed in ((933, 'cheeseburger', 1), (1, 'goldfish', 2), (207, 'golden_retriever', 3),
                                  (22, 'bald_eagle', 4)):
        svds, z, _ = _authors_batches(seed, padding=class_idx % 3)
        _write_authors_file(folder / f'{class_idx}_{name}.npz', svds, z)
        parts[f'{class_idx}_{name}.npz'] = (class_idx, *_expected_rows(svds, z)[:2])
    order = sorted(parts, key=lambda f: parts[f][0])  # In class order, however the files are given.
    want_svds = np.concatenate([parts[f][1] for f in order])
    want_z = np.concatenate([parts[f][2] for f in order])
    want_classes = np.concatenate([np.full(len(parts[f][1]), parts[f][0]) for f in order])

    from_folder = L.load_bank(folder, c_dim=1000)
    from_list = L.load_bank([str(folder / f) for f in reversed(order)], c_dim=1000)
    for bank in (from_folder, from_list):
        assert bank.c_dim == 1000 and np.array_equal(bank.labels.argmax(axis=1), want_classes)
        assert np.array_equal(bank.labels.sum(axis=1), np.ones(len(bank)))
        assert np.array_equal(bank.latents, want_z) and np.array_equal(bank['svds'], want_svds)
        assert bank.meta['dropped_zero_rows'] == 0 + 1 + 0 + 1 and bank.meta['classes'] == [1, 22, 207, 933]
    assert L.load_bank(folder).c_dim == 934  # Without the network's c_dim: the largest class + 1.
    # A single per-class file for a conditional network is that class; for an unconditional one, unlabelled.
    assert np.all(L.load_bank(folder / '207_golden_retriever.npz', c_dim=1000).labels.argmax(axis=1) == 207)
    assert L.load_bank(folder / '207_golden_retriever.npz').c_dim == 0


@pytest.mark.parametrize('problem', ['not_class_file', 'duplicate', 'class_too_large', 'wrong_labels', 'empty_folder'])
def test_authors_per_class_files_refused(tmp_path, problem):
    svds, z, _ = _authors_batches(0)
    _write_authors_file(tmp_path / '3_cat.npz', svds, z)
    files, expected = [tmp_path / '3_cat.npz'], None
    if problem == 'not_class_file':
        _write_authors_file(tmp_path / 'cat.npz', svds, z)
        files, expected = [tmp_path], r'\{class_index\}_\{name\}\.npz'
    elif problem == 'duplicate':
        (tmp_path / 'x').mkdir()
        _write_authors_file(tmp_path / 'x' / '3_kitten.npz', svds, z)
        files.append(tmp_path / 'x' / '3_kitten.npz')
        expected = 'same class index'
    elif problem == 'class_too_large':
        files, expected = [tmp_path], 'class 3, but the network has 3 classes'
    elif problem == 'wrong_labels':
        _write_authors_file(tmp_path / '0_dog.npz', svds, z, [L.one_hot(np.full(4, 1), 4)] * len(z))
        files, expected = [tmp_path], 'not all class 0'
    elif problem == 'empty_folder':
        (tmp_path / 'empty').mkdir()
        files, expected = [tmp_path / 'empty'], 'without .npz'
    with pytest.raises(ValueError, match=expected):
        L.load_bank(files, c_dim=3 if problem == 'class_too_large' else 4)


def test_check_compatible():
    bank = _bank()
    L.check_compatible(bank, network_sha256='ab' * 32, z_dim=4, c_dim=0)
    with pytest.raises(ValueError) as err:
        L.check_compatible(bank, network_sha256='cd' * 32)
    assert 'ab' * 32 in str(err.value) and 'cd' * 32 in str(err.value)
    with pytest.raises(ValueError, match='z_dim = 4.*z_dim = 512'):
        L.check_compatible(bank.meta, z_dim=512)
    with pytest.raises(ValueError, match='c_dim'):
        L.check_compatible(bank, c_dim=10)
    L.check_compatible(LatentBank(np.zeros([2, 4])), network_sha256='cd' * 32)  # Nothing recorded: passes.


def test_select_and_concatenate():
    a, b = _bank(num=5, seed=1), _bank(num=3, seed=2)
    joined = L.concatenate([a, b])
    for name in a.keys():
        assert np.array_equal(joined[name], np.concatenate([a[name], b[name]]))
    assert joined.meta == a.meta
    picked = joined.select([6, 0])
    assert np.array_equal(picked.latents, np.stack([b.latents[1], a.latents[0]]))
    mask = joined['hub_score'] >= 30
    assert np.array_equal(joined.select(mask)['indices'], joined['indices'][mask])
    other = _bank(num=2)
    other.meta['k'] = 10
    with pytest.raises(ValueError, match='different k'):
        L.concatenate([a, other])
    with pytest.raises(ValueError, match='arrays'):
        L.concatenate([a, LatentBank(np.zeros([2, 4], dtype=np.float32))])
    assert L.concatenate([a, other], meta={'merged': True}).meta == {'merged': True}

# ----------------------------------------------------------------------------
