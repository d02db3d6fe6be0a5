"""Every script on an NVAE checkpoint (a tiny one in NVAE's layout, written by the test)."""

import json
import os
import subprocess
import sys

import numpy as np
import nvae_writer
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from helpers import REPO_ROOT

import calc_metrics
import compute_volume_scalars
import convert_nvae
import generate
import generate_hubness
import generate_magnet
import legacy
from sampling.images import load_png
from training import networks_nvae

TINY_ARGS = dict(nvae_writer.SMALL_ARGS, num_latent_per_group=1)  # z_dim 576: Jacobians in seconds


@pytest.fixture(autouse=True)
def _private_rng():
    """Seeded, and leaves torch's global random state as it found it (other tests build networks from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.fixture(scope='module')
def nvae(tmp_path_factory):
    root = tmp_path_factory.mktemp('nvae')
    path = nvae_writer.write_checkpoint(str(root / 'checkpoint.pt'), args=TINY_ARGS, seed=2)
    return dict(root=root, path=path, G=legacy.load_network(path))


def _invoke(command, *args):
    result = CliRunner().invoke(command.main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_generate(nvae, tmp_path):
    _invoke(generate, '--network', nvae['path'], '--seeds', '0-2', '--trunc', '0.7', '--outdir', tmp_path,
            '--device', 'cpu')
    G = nvae['G']
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(G.z_dim) for s in range(3)])).float()
    with torch.no_grad():
        expected = (G(z, None, truncation_psi=0.7) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    for seed in range(3):
        got = np.asarray(PIL.Image.open(tmp_path / f'seed{seed:04d}.png'))
        assert got.shape == (32, 32)
        assert np.abs(got.astype(int) - expected[seed]).max() <= 1


def test_hubness_volumes_magnet(nvae, tmp_path):
    hubs = tmp_path / 'hubs'
    _invoke(generate_hubness, '--network', nvae['path'], '--space', 'z', '--batch-size', 60, '--top', 2, '--num', 2,
            '--outdir', hubs, '--device', 'cpu')
    assert load_png(hubs / 'hub000001.png').shape[-2:] == (32, 32)

    vol = tmp_path / 'vol'
    _invoke(compute_volume_scalars, '--network', nvae['path'], '--num', 2, '--method', 'lowrank', '--top-k', 3,
            '--outdir', vol, '--device', 'cpu')
    with np.load(vol / 'volumes.npz', allow_pickle=False) as bank:
        svds, latents = bank['svds'], bank['latents']
    assert svds.shape == (2, 3) and latents.shape == (2, 576) and np.all(svds > 0)

    mag = tmp_path / 'mag'
    _invoke(generate_magnet, '--network', nvae['path'], '--bank', vol / 'volumes.npz', '--num', 3, '--outdir', mag,
            '--device', 'cpu')
    assert len([n for n in os.listdir(mag) if n.startswith('magnet')]) == 3


def test_calc_metrics_with_the_mnist_classifier(nvae, tmp_path, isolated_metrics):
    real = tmp_path / 'real'
    os.makedirs(real)
    with np.load(os.path.join(REPO_ROOT, 'tests', 'data', 'mnist_val200.npz')) as data:
        for i, img in enumerate(data['images'][:100]):
            PIL.Image.fromarray(img[0]).save(real / f'{i:03d}.png')
    result = _invoke(calc_metrics, '--network', nvae['path'], '--metrics', 'fid100,pr100_3', '--data', real,
                     '--detector', os.path.join(REPO_ROOT, 'pretrained', 'mnist_classifier.pt'), '--device', 'cpu',
                     '--verbose', 'false', '--workers', 0)
    results = {}
    for line in result.stdout.splitlines():
        if line.startswith('{'):
            results.update(json.loads(line)['results'])
    assert results['fid100'] > 0 and 0 <= results['pr100_3_precision'] <= 1


def test_hostile_checkpoint_one_line_no_traceback(tmp_path):
    marker = tmp_path / 'marker'
    payload = f'import pathlib; pathlib.Path({str(marker)!r}).touch()'
    data = nvae_writer.checkpoint_dict(args=TINY_ARGS)

    class Payload:
        def __reduce__(self):
            return (exec, (payload,))
    data['scheduler'] = Payload()
    torch.save(data, tmp_path / 'evil.pt')
    result = subprocess.run([sys.executable, 'generate.py', '--network', str(tmp_path / 'evil.pt'), '--seeds', '0',
                             '--outdir', str(tmp_path / 'out'), '--device', 'cpu'],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'refusing to load' in lines[0] and 'exec, which safe loading does not allow' in lines[0], result.stderr
    assert 'Traceback' not in result.stderr and not marker.exists()


def test_convert_nvae_readjusts_bn_once(nvae, tmp_path):
    dest = tmp_path / 'nvae.pkl'
    _invoke(convert_nvae, '--source', nvae['path'], '--dest', dest, '--passes', 3, '--batch', 4, '--temperature', 0.8,
            '--seed', 5, '--device', 'cpu')
    G = legacy.load_network(str(dest))
    assert float(G.bn_readjust_temperature) == pytest.approx(0.8) and not G.training
    expected = networks_nvae.readjust_bn(legacy.load_network(nvae['path']), num_passes=3, batch_size=4,
                                         temperature=0.8, seed=5)
    z = torch.randn(2, G.z_dim)
    assert torch.equal(G(z, truncation_psi=0.8), expected(z, truncation_psi=0.8))
    assert not torch.allclose(G(z), nvae['G'](z), atol=1e-4)  # the statistics did change
    result = CliRunner().invoke(convert_nvae.main, ['--source', str(tmp_path / 'nvae.pkl'), '--dest', str(tmp_path / 'x')])
    assert result.exit_code != 0 and 'not a PyTorch checkpoint' in result.output
