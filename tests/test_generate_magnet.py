"""generate_magnet.py on tiny network pickles, with our banks and banks in the MaGNET authors' layout.

Expected selections are derived here from the bank's raw singular values with NumPy (products,
arg-extremes, effective sample size), and expected images from plain forward passes of the network.
"""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_generator

import compute_volume_scalars
import generate_magnet
import legacy
from sampling.images import load_png

Z_DIM = 16


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp('magnet')
    nets = {}
    for name, c_dim, seed in (('uncond', 0, 0), ('other', 0, 1), ('cond', 3, 2)):
        G = tiny_generator(c_dim=c_dim, seed=seed)
        legacy.save_network_pkl(folder / f'{name}.pkl', G=G, G_ema=G)
        nets[name] = (str(folder / f'{name}.pkl'), G)
    result = CliRunner().invoke(compute_volume_scalars.main, [
        '--network', nets['uncond'][0], '--num', '12', '--space', 'style', '--method', 'exact', '--top-k', '4',
        '--outdir', str(folder / 'vol'), '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    return nets, str(folder / 'vol' / 'volumes.npz')


def _run(*args):
    result = CliRunner().invoke(generate_magnet.main, [str(a) for a in args] + ['--device', 'cpu'])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _selection(outdir):
    with np.load(os.path.join(outdir, 'selection.npz'), allow_pickle=False) as data:
        sel = {k: data[k] for k in data.files}
    with open(os.path.join(outdir, 'selection.json')) as f:
        return sel, json.load(f)


def _bank(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _expected_images(G, z, c, psi=1):
    with torch.no_grad():
        img = G(torch.from_numpy(z), torch.from_numpy(c), truncation_psi=psi, noise_mode='const')
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()


def _authors_bank(path, svds, z, labels):
    np.savez(path, svds=svds.astype(np.float32), latents=z.astype(np.float32), labels=labels)

#----------------------------------------------------------------------------


def test_our_bank_images_and_selection(setup, tmp_path):
    (path, G), bank_path = setup[0]['uncond'], setup[1]
    result = _run('--network', path, '--bank', bank_path, '--num', 6, '--rho', 1, '--seed', 3, '--trunc', 0.7,
                  '--grid', '--batch', 4, '--outdir', tmp_path)
    assert result.exit_code == 0, result.output
    sel, info = _selection(tmp_path)
    bank = _bank(bank_path)
    idx = sel['bank_index']
    assert idx.shape == (6,) and idx.min() >= 0 and idx.max() < 12
    np.testing.assert_array_equal(sel['latents'], bank['latents'][idx])
    assert info['bank_index'] == idx.tolist() and info['num_from_bank'] == 6 and info['num_random'] == 0

    # ESS of p proportional to prod(sigma)^1, computed directly.
    p = np.prod(bank['svds'].astype(np.float64), axis=1)
    p /= p.sum()
    assert info['ess'] == pytest.approx(1 / np.sum(p ** 2), rel=1e-6)
    assert info['top_k'] == 4 and info['rho'] == 1

    expected = _expected_images(G, sel['latents'], np.zeros([6, 0], np.float32), psi=0.7)
    for i in range(6):
        got = load_png(tmp_path / f'magnet{i:06d}.png')
        assert np.abs(got.astype(int) - expected[i].astype(int)).max() <= 1
    assert load_png(tmp_path / 'grid.png').shape == (32, 48, 3)   # 3 columns (ceil sqrt 6), 2 rows


@pytest.mark.parametrize('rho', [-80, 80])
def test_rho_sign_and_top_k_pick_the_extremes(setup, tmp_path, rho):
    (path, _), bank_path = setup[0]['uncond'], setup[1]
    result = _run('--network', path, '--bank', bank_path, '--num', 5, '--rho', rho, '--top-k', 2, '--outdir', tmp_path)
    assert result.exit_code == 0, result.output
    vol = np.prod(_bank(bank_path)['svds'][:, :2].astype(np.float64), axis=1)
    target = np.argmin(vol) if rho < 0 else np.argmax(vol)
    sel, info = _selection(tmp_path)
    assert np.all(sel['bank_index'] == target)
    assert info['ess'] < 1.01


def test_authors_layout_unconditional_with_zero_rows(setup, tmp_path):
    path, _ = setup[0]['uncond']
    rs = np.random.RandomState(0)
    svds, z = np.sort(rs.uniform(0.5, 2, [10, 5]), axis=1)[:, ::-1], rs.randn(10, Z_DIM)
    svds[[2, 5, 7]] = 0
    z[[2, 5, 7]] = 0
    _authors_bank(tmp_path / 'authors.npz', svds, z, np.array([]))
    result = _run('--network', path, '--bank', tmp_path / 'authors.npz', '--num', 20, '--rho', 0.5,
                  '--outdir', tmp_path / 'out')
    assert result.exit_code == 0, result.output
    assert 'Dropped 3 all-zero rows' in result.output
    assert 'warning: the bank records no network' in result.output
    sel, info = _selection(tmp_path / 'out')
    kept = z[[0, 1, 3, 4, 6, 8, 9]].astype(np.float32)
    # Every chosen latent is one of the non-zero rows, and the zero rows never come back.
    assert all(any(np.array_equal(row, k) for k in kept) for row in sel['latents'])
    assert info['num_candidates'] == 7 and info['dropped_zero_rows'] == 3 and info['top_k'] == 5


def test_authors_layout_one_hot_per_class_and_class(setup, tmp_path):
    path, G = setup[0]['cond']
    rs = np.random.RandomState(1)
    classes = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    labels = np.eye(3, dtype=np.float32)[classes]
    svds, z = rs.uniform(0.5, 2, [10, 4]), rs.randn(10, Z_DIM)
    svds[9], z[9], labels[9] = 0, 0, 0   # A padding row.
    _authors_bank(tmp_path / 'authors.npz', -np.sort(-svds, axis=1), z, labels)

    result = _run('--network', path, '--bank', tmp_path / 'authors.npz', '--num', 7, '--per-class', '--seed', 2,
                  '--outdir', tmp_path / 'per_class')
    assert result.exit_code == 0, result.output
    sel, info = _selection(tmp_path / 'per_class')
    assert np.bincount(sel['labels'].argmax(axis=1), minlength=3).tolist() == [2, 2, 3]   # round(7 / 3) twice, the rest last
    np.testing.assert_array_equal(sel['labels'], labels[sel['bank_index']])             # Each latent keeps its label.
    np.testing.assert_array_equal(sel['latents'], z[sel['bank_index']].astype(np.float32))
    assert set(info['ess_per_class']) == {'0', '1', '2'}
    expected = _expected_images(G, sel['latents'], sel['labels'])
    got = load_png(tmp_path / 'per_class' / 'magnet000004.png')
    assert np.abs(got.astype(int) - expected[4].astype(int)).max() <= 1

    result = _run('--network', path, '--bank', tmp_path / 'authors.npz', '--num', 4, '--class', 1, '--mix', 0.5,
                  '--outdir', tmp_path / 'one_class')
    assert result.exit_code == 0, result.output
    sel, _ = _selection(tmp_path / 'one_class')
    assert np.all(sel['labels'].argmax(axis=1) == 1) and np.all(classes[sel['bank_index'][:2]] == 1)


def test_authors_per_class_files_3d(setup, tmp_path):
    """The authors' BigGAN layout: one file per class, {class}_{name}.npz, 3-D [num_batches, batch, ...]."""
    path, G = setup[0]['cond']
    rs = np.random.RandomState(4)
    folder = tmp_path / 'banks'
    folder.mkdir()
    z_by_class = {}
    for class_idx, name in ((0, 'tench'), (2, 'goldfish')):
        svds = np.sort(rs.uniform(0.5, 2, [2, 3, 10]), axis=2)[..., ::-1]   # 2 batches of 3, K = 10
        z = rs.randn(2, 3, Z_DIM)
        svds[1, 2] = 0                                                      # padding row, dropped
        _authors_bank(folder / f'{class_idx}_{name}.npz', svds, z, np.array([]))
        z_by_class[class_idx] = z.reshape(6, Z_DIM)[:5].astype(np.float32)

    for bank_args, out in ((['--bank', folder], 'folder'),
                           (['--bank', folder / '2_goldfish.npz', '--bank', folder / '0_tench.npz'], 'files')):
        result = _run('--network', path, *bank_args, '--num', 6, '--per-class', '--top-k', 10, '--seed', 1,
                      '--outdir', tmp_path / out)
        assert result.exit_code == 0, result.output
        assert 'Dropped 2 all-zero rows' in result.output
        sel, info = _selection(tmp_path / out)
        classes = sel['labels'].argmax(axis=1)
        assert sorted(classes.tolist()) == [0, 0, 0, 2, 2, 2] and info['num_candidates'] == 10
        for row, class_idx in zip(sel['latents'], classes):   # Each latent carries the class of its file.
            assert any(np.array_equal(row, k) for k in z_by_class[class_idx])
        assert isinstance(info['bank'], list) and len(info['bank']) == len(info['bank_sha256']) == 2


def test_reproducible_with_seed(setup, tmp_path):
    (path, _), bank_path = setup[0]['uncond'], setup[1]
    args = ['--network', path, '--bank', bank_path, '--num', 6, '--rho', 0, '--mix', 0.5]
    for name, seed in (('a', 5), ('b', 5), ('c', 6)):
        assert _run(*args, '--seed', seed, '--outdir', tmp_path / name).exit_code == 0
    for i in range(6):
        name = f'magnet{i:06d}.png'
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes()
    a, b, c = (_selection(tmp_path / n)[0] for n in 'abc')
    assert a['latents'].tobytes() == b['latents'].tobytes()
    assert not np.array_equal(a['latents'], c['latents'])


def test_mix_counts_and_no_replace(setup, tmp_path):
    (path, _), bank_path = setup[0]['uncond'], setup[1]
    result = _run('--network', path, '--bank', bank_path, '--num', 8, '--mix', 0.25, '--outdir', tmp_path / 'mix')
    assert result.exit_code == 0, result.output
    sel, info = _selection(tmp_path / 'mix')
    assert (info['num_from_bank'], info['num_random']) == (2, 6)
    assert np.all(sel['bank_index'][:2] >= 0) and np.all(sel['bank_index'][2:] == -1)
    bank_z = _bank(bank_path)['latents']
    assert not any(any(np.array_equal(row, k) for k in bank_z) for row in sel['latents'][2:])
    assert len(np.unique(sel['latents'][2:], axis=0)) == 6

    result = _run('--network', path, '--bank', bank_path, '--num', 12, '--no-replace', '--outdir', tmp_path / 'norep')
    assert result.exit_code == 0, result.output
    assert sorted(_selection(tmp_path / 'norep')[0]['bank_index'].tolist()) == list(range(12))
    result = _run('--network', path, '--bank', bank_path, '--num', 13, '--no-replace', '--outdir', tmp_path / 'x')
    assert result.exit_code != 0 and 'distinct' in result.output and 'Traceback' not in result.output


def test_refusals(setup, tmp_path):
    nets, bank_path = setup
    # A bank computed for another network: named by both hashes.
    result = _run('--network', nets['other'][0], '--bank', bank_path, '--num', 2, '--outdir', tmp_path)
    with open(nets['other'][0], 'rb') as f:
        other_sha = hashlib.sha256(f.read()).hexdigest()
    assert result.exit_code != 0 and other_sha in result.output and 'Traceback' not in result.output

    # K = z_dim includes the radial null direction of a StyleGAN: refused, whether asked for or implied.
    rs = np.random.RandomState(2)
    _authors_bank(tmp_path / 'full.npz', np.sort(rs.uniform(0.5, 2, [4, Z_DIM]))[:, ::-1], rs.randn(4, Z_DIM),
                  np.array([]))
    result = _run('--network', nets['uncond'][0], '--bank', tmp_path / 'full.npz', '--num', 2, '--outdir', tmp_path)
    assert result.exit_code != 0 and 'null' in result.output and 'Traceback' not in result.output
    result = _run('--network', nets['uncond'][0], '--bank', bank_path, '--num', 2, '--top-k', 5, '--outdir', tmp_path)
    assert result.exit_code != 0 and 'exceeds' in result.output

    # Not a volume bank; unlabelled bank for a conditional network without --class.
    np.savez(tmp_path / 'plain.npz', latents=rs.randn(3, Z_DIM))
    result = _run('--network', nets['uncond'][0], '--bank', tmp_path / 'plain.npz', '--num', 2, '--outdir', tmp_path)
    assert result.exit_code != 0 and 'svds' in result.output
    result = _run('--network', nets['cond'][0], '--bank', tmp_path / 'full.npz', '--num', 2, '--top-k', 3,
                  '--outdir', tmp_path)
    assert result.exit_code != 0 and '--class' in result.output
    assert not any(name.endswith('.png') for name in os.listdir(tmp_path))
