"""demo_samplers.py end to end, offline: a tiny grayscale network, a tiny dataset and a tiny classifier."""

import json
import math
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_generator

import demo_samplers
import legacy
from demos import comparison as demo
from metrics.mnist_classifier import MNISTClassifier, export_torchscript

NUM_IMAGES, SCALE, SEED = 4, 2, 7
SAMPLERS = ['random (psi 1)', 'truncation psi 0.7', 'hubness k=5 t=8', 'MaGNET rho=1', 'polarity rho=-1 K=6',
            'polarity rho=+1 K=6', 'polarity rho=-0.2 K=6', 'polarity rho=+0.2 K=6']
# (rho, top_k) of the polarity rows, in table order; None: every singular value of the bank.
POLARITY = {3: (1, None), 4: (-1, 6), 5: (1, 6), 6: (-0.2, 6), 7: (0.2, 6)}

# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """The network pickle, 60 real 16x16 grayscale images (the network's own at psi 0.5) and a classifier."""
    root = tmp_path_factory.mktemp('demo')
    G = tiny_generator(img_channels=1)
    legacy.save_network_pkl(root / 'net.pkl', G=G, G_ema=G)
    real = root / 'real'
    os.makedirs(real)
    z = np.random.RandomState(1000).randn(60, G.z_dim)
    with torch.no_grad():
        img = G(torch.from_numpy(z).float(), torch.zeros([60, 0]), truncation_psi=0.5, noise_mode='const')
    img = (img[:, 0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    for i, image in enumerate(img):
        PIL.Image.fromarray(image, mode='L').save(real / f'img{i:05d}.png')
    torch.manual_seed(0)
    classifier = str(root / 'classifier.pt')
    export_torchscript(MNISTClassifier(feature_dim=16, channels=(4, 4, 4), resolution=16), classifier)
    return dict(root=root, G=G, net=str(root / 'net.pkl'), real=str(real), classifier=classifier)


pytestmark = pytest.mark.usefixtures('isolated_metrics')


def _invoke(env, outdir, *extra):
    args = ['--network', env['net'], '--data', env['real'], '--detector', env['classifier'], '--num-metrics', '40',
            '--num-images', str(NUM_IMAGES), '--bank-num', '12', '--hub-threshold', '8', '--top-k', '6',
            '--seed', str(SEED), '--scale', str(SCALE), '--device', 'cpu', '--outdir', str(outdir / 'work'),
            '--figure', str(outdir / 'fig.png'), '--table-json', str(outdir / 'table.json'), *extra]
    return CliRunner().invoke(demo_samplers.main, args)


def _uint8(img):
    return (img.to(torch.float64) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()[:, 0]


@pytest.fixture(scope='module')
def first_run(env, tmp_path_factory):
    outdir = tmp_path_factory.mktemp('run1')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('DNNLIB_CACHE_DIR', str(outdir / 'cache'))
        result = _invoke(env, outdir)
    assert result.exit_code == 0, result.output
    return outdir, result

# ----------------------------------------------------------------------------


def test_figure_has_a_labelled_row_of_tiles_per_sampler(env, first_run):
    outdir, _ = first_run
    fig = np.asarray(PIL.Image.open(outdir / 'fig.png'))
    tile = 16 * SCALE
    assert fig.shape == (len(SAMPLERS) * tile, demo.LABEL_WIDTH + NUM_IMAGES * tile)  # Grayscale: 2-D.

    # Rows 0 and 1, recomputed independently: NVlabs' seed convention, the network at psi 1 and 0.7.
    z = torch.from_numpy(np.random.RandomState(SEED).standard_normal(NUM_IMAGES * 16).reshape(NUM_IMAGES, 16))
    for row, psi in enumerate([1, 0.7]):
        with torch.no_grad():
            img = _uint8(env['G'](z.float(), torch.zeros([NUM_IMAGES, 0]), truncation_psi=psi, noise_mode='const'))
        for col in range(NUM_IMAGES):
            got = fig[row * tile:(row + 1) * tile, demo.LABEL_WIDTH + col * tile:demo.LABEL_WIDTH + (col + 1) * tile]
            expected = np.kron(img[col], np.ones([SCALE, SCALE], dtype=np.uint8))
            assert np.abs(got.astype(int) - expected).max() <= 1  # float32 network vs float64 rounding.
    # Every row is labelled: dark text pixels on the white label column.
    for row in range(len(SAMPLERS)):
        assert (fig[row * tile:(row + 1) * tile, :demo.LABEL_WIDTH] < 128).any()
    # The rows differ from each other (different samplers, not one repeated).
    strips = [fig[r * tile:(r + 1) * tile, demo.LABEL_WIDTH:] for r in range(len(SAMPLERS))]
    assert all(not np.array_equal(strips[0], s) for s in strips[1:])


def test_table_has_a_finite_row_per_sampler_and_is_reproducible(env, first_run, tmp_path):
    outdir, result = first_run
    table = json.loads((outdir / 'table.json').read_text())
    assert table['header'] == demo.TABLE_HEADER and 'not Inception FID' in table['header']
    assert table['network'] == os.path.relpath(env['net']) and not os.path.isabs(table['network'])
    assert [row['sampler'] for row in table['rows']] == SAMPLERS
    assert table['num_samples'] == 40 and table['seed'] == SEED
    for row in table['rows']:
        assert math.isfinite(row['fid']) and row['fid'] >= 0
        assert 0 <= row['precision'] <= 1 and 0 <= row['recall'] <= 1
        assert 0 <= row['digit_fraction'] <= 1
    assert 'hubness:k=5,t=8,space=w' in table['rows'][2]['spec']
    assert 'rho=-1,top_k=6' in table['rows'][4]['spec'] and 'rho=-0.2,top_k=6' in table['rows'][6]['spec']

    # The effective sample size of each polarity row, recomputed with numpy from the bank file; none elsewhere.
    (bank_file,) = (outdir / 'work').glob('bank-*/volumes.npz')
    svds = np.load(bank_file)['svds'].astype(np.float64)
    assert svds.shape == (12, 15)  # --bank-num 12, K = z_dim - 1.
    for i, row in enumerate(table['rows']):
        if i not in POLARITY:
            assert row['effective_sample_size'] is None
            continue
        rho, top_k = POLARITY[i]
        log_w = rho * np.log(svds[:, :top_k]).sum(axis=1)
        w = np.exp(log_w - log_w.max())
        assert row['effective_sample_size'] == pytest.approx(w.sum() ** 2 / (w * w).sum(), rel=1e-9)
        assert 1 <= row['effective_sample_size'] <= 12
    # A mild rho spreads the weight over more latents than rho = +-1 does.
    assert table['rows'][6]['effective_sample_size'] > table['rows'][4]['effective_sample_size']
    assert table['rows'][7]['effective_sample_size'] > table['rows'][5]['effective_sample_size']
    # Truncation toward the real images' psi 0.5 must beat psi 1 (the real images are the net's at psi 0.5).
    assert table['rows'][1]['fid'] < table['rows'][0]['fid']

    # The Markdown table on stdout: header line, then one line per sampler.
    lines = result.stdout.splitlines()
    assert lines[0] == demo.TABLE_HEADER
    body = [line for line in lines if line.startswith('| ') and not line.startswith('| sampler')]
    assert [line.split(' | ')[0][2:] for line in body] == SAMPLERS

    # Same command again, fresh folders and cache: the same numbers, the same figure.
    result2 = _invoke(env, tmp_path)
    assert result2.exit_code == 0, result2.output
    again = json.loads((tmp_path / 'table.json').read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != 'spec'} for r in rows]
    assert strip(again['rows']) == strip(table['rows'])
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / 'fig.png')),
                          np.asarray(PIL.Image.open(outdir / 'fig.png')))


@pytest.mark.parametrize('extra, message', [
    (['--hub-threshold', '0'], '--hub-threshold must be positive'),
    (['--network', 'missing.pkl'], 'network pickle not found'),
    (['--data', 'no-such-folder'], 'no-such-folder'),
    (['--detector', 'no-such-detector.pt'], '--detector'),
    (['--device', 'nonsense'], '--device'),
])
def test_bad_input_is_one_clear_error(env, tmp_path, extra, message):
    result = _invoke(env, tmp_path, *extra)
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith('Error')]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / 'fig.png').exists()

# ----------------------------------------------------------------------------
