"""demo.py, the README's first command: the embedded network and its shipped bank, at a small size."""

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import demo
import legacy
from metrics import mnist_classifier
from sampling import cli, first_run, latents, volume_job
from sampling.demo import LABEL_WIDTH

NUM_IMAGES, NUM_SCORED, SCALE = 3, 24, 2


@pytest.fixture(scope='module')
def embedded():
    return legacy.load_network(cli.DEFAULT_NETWORK, device=torch.device('cpu'))


@pytest.fixture(scope='module')
def first(tmp_path_factory):
    outdir = tmp_path_factory.mktemp('demo') / 'out'
    result = CliRunner().invoke(demo.main, ['--num-images', str(NUM_IMAGES), '--num-scored', str(NUM_SCORED),
                                            '--outdir', str(outdir), '--device', 'cpu'])
    return result, outdir


def _classes_share(images_nchw, classifier):
    """Confident-digit share, computed here from the classifier's probabilities."""
    probs = classifier.probabilities(torch.from_numpy(images_nchw)).numpy().astype(np.float64)
    return float(np.mean(probs.max(axis=1) >= np.float32(0.9)))


def _random_images(G, num, psi):
    """The random row's images, written out here: rows of RandomState(0), labels of random_labels(0)."""
    z = np.random.RandomState(0).standard_normal([num, G.z_dim])
    c = latents.random_labels(0, num, G.c_dim)
    with torch.no_grad():
        img = G(torch.from_numpy(z).float(), torch.from_numpy(c).float(), truncation_psi=psi, noise_mode='const')
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()


def test_first_run_writes_figure_summary_and_lines(first, embedded):
    result, outdir = first
    assert result.exit_code == 0, result.output
    rows = first_run.comparison_rows(first_run.EMBEDDED_BANK)
    figure = np.asarray(PIL.Image.open(outdir / 'samplers.png'))
    tile = embedded.img_resolution * SCALE
    assert figure.shape == (len(rows) * tile, LABEL_WIDTH + NUM_IMAGES * tile)
    for i in range(len(rows)):  # Every row has a label: dark text pixels on the white label column.
        assert (figure[i * tile:(i + 1) * tile, :LABEL_WIDTH] < 128).sum() > 20

    # Row 1 is random sampling, row 2 the same latents truncated: the tiles are those images, enlarged.
    for row, psi in ((0, 1), (1, first_run.TRUNCATION_PSI)):
        images = _random_images(embedded, NUM_IMAGES, psi)[:, 0]
        expected = np.concatenate([im.repeat(SCALE, 0).repeat(SCALE, 1) for im in images], axis=1)
        np.testing.assert_array_equal(figure[row * tile:(row + 1) * tile, LABEL_WIDTH:], expected)

    summary = json.loads((outdir / 'summary.json').read_text())
    assert [r['label'] for r in summary['rows']] == [r.label for r in rows]
    classifier = mnist_classifier.load_classifier()
    for row, psi in ((0, 1), (1, first_run.TRUNCATION_PSI)):
        share = _classes_share(_random_images(embedded, NUM_SCORED, psi), classifier)
        assert summary['rows'][row]['digit_share'] == pytest.approx(share, abs=1e-12)
    for row in summary['rows']:
        assert 0 <= row['digit_share'] <= 1
        assert row['label'] in result.output and row['what'] in result.output
        assert (row['effective_sample_size'] is not None) == row['spec'].startswith('polarity')
    assert f'digits: share of {NUM_SCORED} samples per row' in result.output
    assert str(outdir / 'samplers.png') in result.output


def test_shipped_bank_belongs_to_the_embedded_network(embedded):
    """pretrained/mnist32-volumes.npz: small, made for the shipped network, values reproducible from its command."""
    path = first_run.EMBEDDED_BANK
    assert os.path.getsize(path) < 1_000_000
    bank = latents.LatentBank.load(path)
    assert bank.meta['network_sha256'] == latents.file_sha256(cli.DEFAULT_NETWORK)
    assert bank.meta['command'].startswith('python compute_volume_scalars.py ')
    extras = bank.meta['extras']
    job = volume_job.VolumeJob(embedded, bank.meta['network_sha256'], extras['num'], seed=extras['seed'], space='style',
                               method=extras['method'], top_k=extras['top_k'], chunk_size=extras['chunk_size'],
                               batch_size=4)
    rows = [0, 1, 1999]
    z = np.stack([latents.z_batch(extras['seed'], 1, embedded.z_dim, start=r)[0] for r in rows]).astype(np.float32)
    np.testing.assert_array_equal(bank.latents[rows], z)
    c = np.concatenate([latents.random_labels(extras['seed'], 1, embedded.c_dim, start=r) for r in rows])
    np.testing.assert_array_equal(bank.labels[rows], c)
    np.testing.assert_allclose(job.singular_values(z, c), bank['svds'][rows], rtol=1e-4)


def test_other_network_needs_a_bank(tmp_path):
    result = CliRunner().invoke(demo.main, ['--network', cli.DEFAULT_NETWORK, '--outdir', str(tmp_path)])
    assert result.exit_code != 0
    assert '--bank is needed with --network' in result.output
    assert 'Traceback' not in result.output
    assert not os.listdir(tmp_path)


def test_another_network_with_its_bank_and_no_classifier(tmp_path):
    from helpers import tiny_generator
    G = tiny_generator(c_dim=0, img_channels=1)
    legacy.save_network_pkl(tmp_path / 'net.pkl', G=G, G_ema=G)
    rng = np.random.default_rng(0)
    svds = np.sort(np.exp(rng.normal(0, 1, size=[50, 6])), axis=1)[:, ::-1].astype(np.float32)
    meta = latents.make_meta(network_sha256=latents.file_sha256(tmp_path / 'net.pkl'), z_dim=G.z_dim, c_dim=0)
    latents.LatentBank(rng.standard_normal([50, G.z_dim]).astype(np.float32), meta=meta, svds=svds).save(
        tmp_path / 'bank.npz')
    result = CliRunner().invoke(demo.main, [
        '--network', str(tmp_path / 'net.pkl'), '--bank', str(tmp_path / 'bank.npz'), '--classifier', 'none',
        '--top-k', '6', '--hub-threshold', '8', '--num-images', '2', '--outdir', str(tmp_path / 'out'),
        '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert summary['top_k'] == 6 and summary['bank_size'] == 50
    assert all(row['digit_share'] is None for row in summary['rows'])
    assert result.output.count('digits     n/a') == 5
    assert 'digits: n/a without a classifier' in result.output
    figure = np.asarray(PIL.Image.open(tmp_path / 'out' / 'samplers.png'))
    assert figure.shape == (5 * 32, LABEL_WIDTH + 2 * 32)
