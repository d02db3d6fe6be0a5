"""calc_metrics.py end to end, offline: a tiny network, a tiny dataset and a tiny TorchScript detector."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from helpers import REPO_ROOT, tiny_generator

import calc_metrics
import legacy
from dnnlib import util
from metrics import metric_utils
from training import dataset as dataset_module

# ----------------------------------------------------------------------------


class TinyDetector(torch.nn.Module):
    """uint8 NCHW -> 4x4 average pools as float features (48 for RGB)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32), 4).flatten(1)


def _write_images(folder, images):
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image).save(os.path.join(folder, f'img{i:05d}.png'))


def _pool_features(folder):
    """Independent float64 features of a folder of PNGs (sorted by name), as TinyDetector computes them."""
    names = sorted(os.listdir(folder))
    x = np.stack([np.asarray(PIL.Image.open(os.path.join(folder, n))) for n in names]).astype(np.float64)
    n, h, w, c = x.shape
    return x.reshape(n, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).transpose(0, 3, 1, 2).reshape(n, -1)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """Networks, datasets and a detector on disk.

    The real images are the network's own images at truncation psi 0.5, so truncated samples lie on the
    real manifold while untruncated ones spread further: truncation must raise precision.
    """
    root = tmp_path_factory.mktemp('calc')
    G = tiny_generator()
    real = str(root / 'real')
    z = np.random.RandomState(1000).randn(150, G.z_dim)
    with torch.no_grad():
        img = G(torch.from_numpy(z).float(), torch.zeros([150, 0]), truncation_psi=0.5, noise_mode='const')
    _write_images(real, (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy())
    small = str(root / 'small')
    _write_images(small, np.zeros([4, 8, 8, 3], dtype=np.uint8))

    run_dir = root / 'run'
    os.makedirs(run_dir)
    (run_dir / 'training_options.json').write_text('{}')
    training_set_kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=real, use_labels=False,
                               max_size=None, xflip=False, resolution=16)
    legacy.save_network_pkl(run_dir / 'net.pkl', G=G, G_ema=G, training_set_kwargs=training_set_kwargs)
    legacy.save_network_pkl(root / 'bare.pkl', G=G, G_ema=G)

    detector = str(root / 'tiny.pt')
    torch.jit.save(torch.jit.script(TinyDetector()), detector)
    return dict(root=root, G=G, real=real, small=small, net=str(run_dir / 'net.pkl'), run_dir=str(run_dir),
                bare=str(root / 'bare.pkl'), detector=detector)


pytestmark = pytest.mark.usefixtures('isolated_metrics')


def _run(*args):
    """calc_metrics in this process: (exit code, {result name: value} of every metric, stderr)."""
    result = CliRunner().invoke(calc_metrics.main, ['--verbose', 'false', '--device', 'cpu', '--workers', '0',
                                                    *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    results = {}
    for line in result.stdout.splitlines():
        if line.startswith('{'):
            results.update(json.loads(line)['results'])
    return result.exit_code, results, result.stderr

# ----------------------------------------------------------------------------


def test_offline_reproducible_cached_and_logged(env, tmp_path, monkeypatch):
    out = tmp_path / 'out.jsonl'
    args = ['--network', env['net'], '--metrics', 'fid1k_full,pr1k3_full', '--sampler', 'random',
            '--detector', env['detector'], '--data', env['real'], '--seed', 0, '--out', out]
    code, first, stderr = _run(*args)
    assert code == 0, stderr
    assert 'not comparable with published ones' in stderr
    assert set(first) == {'fid1k_full', 'pr1k3_full_precision', 'pr1k3_full_recall'}
    assert first['fid1k_full'] > 0 and 0 < first['pr1k3_full_precision'] < 1

    # NVlabs' cache files exist; the second run must read them: the dataset's images are now unreadable.
    cache = tmp_path / 'cache' / 'gan-metrics'
    assert len([name for name in os.listdir(cache) if name.startswith('real-tiny-')]) == 2
    monkeypatch.setattr(dataset_module.Dataset, '__getitem__', lambda self, idx: pytest.fail('dataset was read'))
    code, second, stderr = _run(*args)
    assert code == 0, stderr
    assert second == first

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line['metric'] for line in lines] == ['fid1k_full', 'pr1k3_full'] * 2
    assert lines[0]['results'] == dict(fid1k_full=first['fid1k_full']) and lines[0]['sampler'] == 'random:labels=auto'
    assert lines[0]['seed'] == 0 and lines[0]['num_gpus'] == 1 and 'timestamp' in lines[0]
    beside = [json.loads(line) for line in open(os.path.join(env['run_dir'], 'metric-fid1k_full.jsonl'))]
    assert beside[-1]['results'] == dict(fid1k_full=first['fid1k_full']) and beside[-1]['snapshot_pkl'] == 'net.pkl'


def test_truncation_raises_precision(env):
    # No --data: the dataset named in the pickle is used.
    results = {}
    for spec in ('random', 'trunc:0.5'):
        code, res, stderr = _run('--network', env['net'], '--metrics', 'pr200_3_full', '--sampler', spec,
                                 '--detector', env['detector'])
        assert code == 0, stderr
        results[spec] = res
    assert results['trunc:0.5']['pr200_3_full_precision'] > results['random']['pr200_3_full_precision'] + 0.2
    assert results['trunc:0.5']['pr200_3_full_recall'] <= results['random']['pr200_3_full_recall']


def test_polarity_sampler_reports_its_effective_sample_size(env, tmp_path):
    from sampling.latents import LatentBank, make_meta
    rng = np.random.RandomState(3)
    svds = np.sort(np.exp(rng.randn(40, 4)), axis=1)[:, ::-1]
    bank = str(tmp_path / 'bank.npz')
    LatentBank(rng.randn(40, env['G'].z_dim), None, meta=make_meta(z_dim=env['G'].z_dim), svds=svds).save(bank)
    result = CliRunner().invoke(calc_metrics.main, [
        '--network', env['net'], '--metrics', 'pr200_3_full', '--sampler', f'polarity:bank={bank},rho=-1,top_k=2',
        '--detector', env['detector'], '--device', 'cpu', '--workers', '0', '--verbose', 'true'])
    assert result.exit_code == 0, result.output
    w = np.exp(-np.log(svds[:, :2]).sum(axis=1))
    assert f'Effective sample size of its weights: {w.sum() ** 2 / (w * w).sum():.1f} bank latents' in result.stderr
    assert 'the bank records no network' in result.stderr  # The notes of the bank, as generate_magnet.py gives them.

    # An authors' file: rows whose singular values sum to zero are dropped, and the count is said.
    authors = str(tmp_path / 'authors.npz')
    np.savez(authors, svds=np.concatenate([svds, np.zeros([3, 4])]), latents=rng.randn(43, env['G'].z_dim),
             labels=np.array([]))
    result = CliRunner().invoke(calc_metrics.main, [
        '--network', env['net'], '--metrics', 'pr200_3_full', '--sampler', f'polarity:bank={authors},top_k=2',
        '--detector', env['detector'], '--device', 'cpu', '--workers', '0'])
    assert result.exit_code == 0, result.output
    assert f'Dropped 3 all-zero rows from {authors}; 40 latents remain' in result.stderr


def test_fid_stats_replace_the_dataset(env, tmp_path):
    features = _pool_features(env['real'])
    mu, sigma = features.mean(axis=0), np.cov(features.T, bias=True)
    stats = tmp_path / 'stats.npz'
    np.savez(stats, mu=mu, sigma=sigma)
    # The bare pickle records no dataset: --fid-stats alone must do.
    code, with_stats, stderr = _run('--network', env['bare'], '--metrics', 'fid200_full', '--fid-stats', stats,
                                    '--detector', env['detector'])
    assert code == 0, stderr
    code, with_data, stderr = _run('--network', env['bare'], '--metrics', 'fid200_full', '--data', env['real'],
                                   '--detector', env['detector'])
    assert code == 0, stderr
    assert with_stats['fid200_full'] == pytest.approx(with_data['fid200_full'], rel=1e-6)
    assert with_stats['fid200_full'] > 1


def test_torchrun_two_processes_match_one(env, tmp_path):
    args = ['--network', env['net'], '--metrics', 'fid200_full,pr200_3_full,ppl2_wend_20', '--data', env['real'],
            '--detector', env['detector'], '--sampler', 'mix:0.5*hubness(k=3,t=5,batch=64)+0.5*random;trunc=0.8',
            '--seed', 3]
    code, single, stderr = _run(*args)
    assert code == 0, stderr

    torchrun = shutil.which('torchrun')
    cmd = [torchrun] if torchrun else [sys.executable, '-m', 'torch.distributed.run']
    cmd += ['--standalone', '--nproc_per_node', '2', os.path.join(REPO_ROOT, 'calc_metrics.py'), *map(str, args),
            '--verbose', 'false', '--device', 'cpu', '--workers', '0']
    environ = dict(os.environ, OMP_NUM_THREADS='1', DNNLIB_CACHE_DIR=str(tmp_path / 'dist-cache'))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
    assert [line['num_gpus'] for line in lines] == [2, 2, 2]    # Only rank 0 reports.
    assert {key: value for line in lines for key, value in line['results'].items()} == single


def test_bad_input_is_one_line(env, tmp_path):
    junk = tmp_path / 'junk.npz'
    junk.write_bytes(b'not an npz')
    cases = [
        (['--network', env['net'], '--metrics', 'fid50k_fulll'], "unknown metric 'fid50k_fulll'"),
        (['--network', env['bare'], '--metrics', 'fid1k_full'], 'needs real images: pass --data'),
        (['--network', env['net'], '--data', env['small']], 'expected 16x16'),
        (['--network', env['net'], '--data', str(tmp_path / 'nowhere')], 'dataset not found'),
        (['--network', env['net'], '--sampler', 'hubness:k=0'], '--sampler: bad sampler spec'),
        (['--network', env['net'], '--detector', str(tmp_path / 'none.pt')], '--detector: detector'),
        (['--network', env['net'], '--gpus', '2'], 'torchrun'),
        (['--network', env['net'], '--fid-stats', junk], '--fid-stats'),
        (['--network', str(tmp_path / 'missing.pkl')], 'not found'),
    ]
    for args, fragment in cases:
        code, _, stderr = _run(*args)
        assert code != 0
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('Error: ') and fragment in lines[0], (args, stderr)


def test_full_metrics_ignore_mirroring_the_others_keep_it(env):
    for metric in ('fid100_full', 'fid200'):
        code, _, stderr = _run('--network', env['net'], '--metrics', metric, '--detector', env['detector'],
                               '--mirror', 'true')
        assert code == 0, stderr
    cache_dir = util.make_cache_dir_path('gan-metrics')
    counts = sorted(metric_utils.FeatureStats.load(os.path.join(cache_dir, name)).num_items
                    for name in os.listdir(cache_dir))
    # fid100_full: all 150 images, unmirrored. fid200: at most 200 of the 300 images and mirror images.
    assert counts == [150, 200]

# ----------------------------------------------------------------------------
