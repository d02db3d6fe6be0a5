"""generate.py end to end on a tiny network pickle made in the test."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, tiny_generator

import legacy
from sampling.images import load_png, make_grid


@pytest.fixture(scope='module')
def tiny_pkl(tmp_path_factory):
    G = tiny_generator()
    path = tmp_path_factory.mktemp('net') / 'tiny.pkl'
    legacy.save_network_pkl(path, G=G, G_ema=G)
    return str(path), G


def _expected_uint8(G, seeds, **kwargs):
    z = np.stack([np.random.RandomState(seed).randn(1, G.z_dim)[0] for seed in seeds])
    c = torch.zeros([len(seeds), G.c_dim])
    out = []
    with torch.no_grad():
        for i in range(len(seeds)):  # NVlabs generates one seed at a time from a float64 z.
            img = G(torch.from_numpy(z[i:i + 1]), c[i:i + 1], noise_mode='const', **kwargs)
            out.append((img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy())
    return np.stack(out)


def _run(*args):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'generate.py'), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('batch', [None, '3'])
def test_generate_matches_in_process(tiny_pkl, tmp_path, batch):
    path, G = tiny_pkl
    args = ['--network', path, '--seeds', '0-7', '--outdir', str(tmp_path), '--device', 'cpu']
    if batch is not None:
        args += ['--batch', batch]
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith('.png'))
    assert files == [f'seed{seed:04d}.png' for seed in range(8)]
    expected = _expected_uint8(G, range(8))
    for seed in range(8):
        got = load_png(tmp_path / f'seed{seed:04d}.png')
        assert got.shape == (16, 16, 3)
        # Batched evaluation may differ from per-seed evaluation in the last float bit (grouped conv order).
        assert np.abs(got.astype(int) - expected[seed].astype(int)).max() <= 1


def test_generate_seed_list_trunc_and_grid(tiny_pkl, tmp_path):
    path, G = tiny_pkl
    result = _run('--network', path, '--seeds', '5,2,9-10', '--trunc', '0.5', '--grid', '--outdir', str(tmp_path),
                  '--device', 'cpu', '--batch', '2')
    assert result.returncode == 0, result.stderr
    expected = _expected_uint8(G, [5, 2, 9, 10], truncation_psi=0.5)
    for idx, seed in enumerate([5, 2, 9, 10]):
        got = load_png(tmp_path / f'seed{seed:04d}.png')
        assert np.abs(got.astype(int) - expected[idx].astype(int)).max() <= 1
    grid = load_png(tmp_path / 'grid.png')
    tiles = np.stack([load_png(tmp_path / f'seed{seed:04d}.png') for seed in [5, 2, 9, 10]])
    assert np.array_equal(grid, make_grid(tiles))
    assert grid.shape == (32, 32, 3)


def test_generate_projected_w(tiny_pkl, tmp_path):
    path, G = tiny_pkl
    ws = G.mapping(torch.randn([2, G.z_dim]), None).detach().numpy()
    np.savez(tmp_path / 'w.npz', w=ws)
    result = _run('--network', path, '--projected-w', str(tmp_path / 'w.npz'), '--outdir', str(tmp_path / 'out'),
                  '--device', 'cpu')
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        img = G.synthesis(torch.from_numpy(ws), noise_mode='const')
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    for idx in range(2):
        got = load_png(tmp_path / 'out' / f'proj{idx:02d}.png')
        assert np.abs(got.astype(int) - expected[idx].astype(int)).max() <= 1


@pytest.mark.parametrize('args, message', [
    (['--seeds', '0-x'], 'is not an integer or a range'),
    (['--seeds', '5-2'], 'ends before it starts'),
    (['--seeds', '0', '--class', '3'], None),  # unconditional: --class only warns
])
def test_generate_bad_seeds(tiny_pkl, tmp_path, args, message):
    path, _ = tiny_pkl
    result = _run('--network', path, '--outdir', str(tmp_path), '--device', 'cpu', *args)
    if message is None:
        assert result.returncode == 0, result.stderr
        assert 'ignored' in result.stderr
    else:
        assert result.returncode != 0
        assert message in result.stderr
        assert 'Traceback' not in result.stderr


def _png_of(G, seed, class_idx):
    c = torch.zeros([1, G.c_dim])
    c[0, class_idx] = 1
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
    with torch.no_grad():
        img = G(z, c, noise_mode='const')
    return (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy()


def test_generate_conditional_without_class_draws_a_class_per_seed(tmp_path):
    """The rule of every script (issue 18): no --class on a conditional network means --class random, said on stderr;
    seed s gets class RandomState([s, 1]).randint(c_dim), the class generate_hubness.py gives the latent of seed s."""
    G = tiny_generator(c_dim=3)
    legacy.save_network_pkl(tmp_path / 'cond.pkl', G=G, G_ema=G)
    for extra, folder in (([], 'default'), (['--class', 'random'], 'random')):
        result = _run('--network', str(tmp_path / 'cond.pkl'), '--seeds', '0-5', '--outdir', str(tmp_path / folder),
                      '--device', 'cpu', *extra)
        assert result.returncode == 0, result.stderr
        assert ('a random class per latent (--class random)' in result.stderr) == (not extra)
        for seed in range(6):
            class_idx = int(np.random.RandomState([seed, 1]).randint(3))
            got = load_png(tmp_path / folder / f'seed{seed:04d}.png').astype(int)
            assert np.abs(got - _png_of(G, seed, class_idx).astype(int)).max() <= 1
    assert len({int(np.random.RandomState([s, 1]).randint(3)) for s in range(6)}) > 1  # The premise: classes vary.


def test_generate_conditional_with_class(tmp_path):
    G = tiny_generator(c_dim=3)
    legacy.save_network_pkl(tmp_path / 'cond.pkl', G=G, G_ema=G)
    result = _run('--network', str(tmp_path / 'cond.pkl'), '--seeds', '0-1', '--class', '2', '--outdir',
                  str(tmp_path), '--device', 'cpu')
    assert result.returncode == 0, result.stderr
    assert 'random class' not in result.stderr
    assert np.abs(load_png(tmp_path / 'seed0001.png').astype(int) - _png_of(G, 1, 2).astype(int)).max() <= 1
    result = _run('--network', str(tmp_path / 'cond.pkl'), '--seeds', '0', '--class', '3', '--outdir',
                  str(tmp_path), '--device', 'cpu')
    assert result.returncode != 0 and 'out of range' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('content, message', [
    (None, 'network pickle not found'),
    (b'', 'truncated or empty'),
    (b'hello, this is text\n', 'is not a network pickle'),
])
def test_generate_bad_network(tmp_path, content, message):
    path = tmp_path / 'net.pkl'
    if content is not None:
        path.write_bytes(content)
    result = _run('--network', str(path), '--seeds', '0', '--outdir', str(tmp_path / 'out'), '--device', 'cpu')
    assert result.returncode != 0
    assert message in result.stderr
    assert 'Traceback' not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_synthesize_picks_the_cpu_fast_path_for_cpu_batches_and_keeps_nvlabs_on_request():
    from sampling.images import to_uint8
    from sampling.synthesis import synthesize
    G = tiny_generator()
    z = np.random.RandomState(0).randn(6, G.z_dim)
    zt = torch.from_numpy(z).float()
    with torch.no_grad():
        nvlabs = G(zt, None, noise_mode='const')                       # NVlabs' choice: fused in eval mode
    ours = torch.cat(list(synthesize(G, z=z, batch_size=3)))
    exact = torch.cat(list(synthesize(G, z=z, batch_size=3, exact_nvlabs=True)))
    assert torch.equal(exact, torch.cat([G(zt[i:i + 3], None, noise_mode='const') for i in (0, 3)]))
    assert not torch.equal(ours, nvlabs)  # the two paths really differ in rounding ...
    # ... within the parity rule: uint8 images within 1.
    assert np.abs(to_uint8(ours).astype(int) - to_uint8(nvlabs).astype(int)).max() <= 1
    assert float((ours - nvlabs).abs().max()) <= 1e-4 * float(nvlabs.abs().max())


def test_generate_exact_nvlabs_is_bit_identical_to_nvlabs_batches(tiny_pkl, tmp_path):
    path, G = tiny_pkl
    result = _run('--network', path, '--seeds', '0-3', '--outdir', str(tmp_path), '--device', 'cpu', '--batch', '4',
                  '--exact-nvlabs')
    assert result.returncode == 0, result.stderr
    z = torch.from_numpy(np.stack([np.random.RandomState(seed).randn(G.z_dim) for seed in range(4)])).float()
    with torch.no_grad():
        img = G(z, torch.zeros([4, 0]), noise_mode='const')
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    for seed in range(4):
        assert np.array_equal(load_png(tmp_path / f'seed{seed:04d}.png'), expected[seed])


@pytest.mark.parametrize('block_bytes', [1, 4 * 32 * 16 * 16])
def test_cpu_sub_batches_of_large_blocks(monkeypatch, block_bytes):
    # Blocks whose activations reach the threshold run one sample at a time (every block, or the 16 px one
    # here), within the parity rule of NVlabs' per-seed synthesis.
    from sampling import synthesis
    from sampling.images import to_uint8
    monkeypatch.setattr(synthesis, '_CPU_BLOCK_BYTES', block_bytes)
    G = tiny_generator()
    z = torch.from_numpy(np.random.RandomState(1).randn(5, G.z_dim)).float()
    with torch.no_grad():
        ws = G.mapping(z, None)
        per_seed = torch.cat([G.synthesis(ws[i:i + 1], noise_mode='const') for i in range(5)])
    ours = next(synthesis.synthesize(G, ws=ws, batch_size=5))
    assert np.abs(to_uint8(ours).astype(int) - to_uint8(per_seed).astype(int)).max() <= 1
    assert float((ours - per_seed).abs().max()) <= 1e-4 * float(per_seed.abs().max())
