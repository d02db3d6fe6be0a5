"""Every script on an NVAE checkpoint (a tiny one in NVAE's layout, written by the test)."""

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from helpers import REPO_ROOT

import calc_metrics
import compute_volume_scalars
import generate
import generate_hubness
import generate_magnet
import legacy
import nvae_writer
from sampling.images import load_png

TINY_ARGS = dict(nvae_writer.SMALL_ARGS, num_latent_per_group=1)  # z_dim 576: Jacobians in seconds


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
    assert len(lines) == 1 and 'refusing to load' in lines[0] and 'references exec' in lines[0], result.stderr
    assert 'Traceback' not in result.stderr and not marker.exists()
