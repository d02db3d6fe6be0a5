"""The report of a volume bank: its JSON numbers against float64 references written here, the figure, the CLI hook."""

import json
import math

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner
from helpers import tiny_generator

import compute_volume_scalars
import legacy
from sampling import volume_report
from sampling.latents import LatentBank, one_hot


def _bank(num=300, c_dim=3, k=6, seed=0):
    rng = np.random.default_rng(seed)
    svds = np.sort(np.exp(rng.normal(0, 0.4, size=[num, k])), axis=1)[:, ::-1].astype(np.float32)
    z = rng.standard_normal([num, 8]).astype(np.float32)
    labels = one_hot(rng.integers(c_dim, size=num), c_dim) if c_dim else None
    return LatentBank(z, labels, meta=dict(network_sha256='ab' * 32, space='style', extras=dict(method='exact')),
                      svds=svds)


def _kish(log_vol, rho):
    """(sum w)^2 / sum w^2 with w = exp(rho * log_vol), in plain float64 (the values here do not overflow)."""
    w = np.exp(rho * log_vol)
    return w.sum() ** 2 / (w * w).sum()


@pytest.mark.parametrize('c_dim', [3, 0])
def test_report_numbers_equal_independent_computation(c_dim):
    bank = _bank(c_dim=c_dim)
    top_k = 4
    report = volume_report.build_report(bank, top_k=top_k, rhos=[-1, -0.25, 0, 0.5, 1], bins=10, max_scatter=100)
    svds = bank['svds'].astype(np.float64)
    log_vol = np.array([sum(math.log(v) for v in sorted(row, reverse=True)[:top_k]) for row in svds])

    counts, edges = np.histogram(log_vol, bins=10)
    assert report['log_volume_histogram']['count'] == counts.tolist()
    np.testing.assert_allclose(report['log_volume_histogram']['edges'], edges, rtol=1e-12)
    assert sum(report['log_volume_histogram']['count']) == len(bank)

    ids = bank.labels.argmax(axis=1) if c_dim else np.zeros(len(bank), dtype=int)
    for rho, ess, pooled in zip(report['ess']['rho'], report['ess']['ess'], report['ess']['ess_pooled']):
        expected = sum(_kish(log_vol[ids == k], rho) for k in np.unique(ids))
        assert ess == pytest.approx(expected, rel=1e-10)
        assert pooled == pytest.approx(_kish(log_vol, rho), rel=1e-10)
    assert report['ess']['ess'][2] == pytest.approx(len(bank))  # rho = 0: every latent counts.
    assert report['ess']['per_class'] == bool(c_dim)

    norms = np.linalg.norm(bank.latents.astype(np.float64), axis=1)
    scatter = report['log_volume_vs_norm']
    assert scatter['stride'] == 3
    np.testing.assert_allclose(scatter['norm'], norms[::3], rtol=1e-12)
    np.testing.assert_allclose(scatter['log_volume'], log_vol[::3], rtol=1e-12)
    r = np.sum((norms - norms.mean()) * (log_vol - log_vol.mean())) / (len(bank) * norms.std() * log_vol.std())
    assert scatter['correlation'] == pytest.approx(r, rel=1e-10)

    if c_dim:
        for row in report['per_class']:
            members = log_vol[ids == row['cls']]
            assert row['count'] == len(members)
            assert row['mean'] == pytest.approx(members.mean(), rel=1e-12)
            assert row['std'] == pytest.approx(members.std(), rel=1e-12)
            assert (row['min'], row['max']) == pytest.approx((members.min(), members.max()), rel=1e-12)
        assert scatter['label'] == ids[::3].tolist()
    else:
        assert report['per_class'] is None and scatter['label'] is None
    json.dumps(report)  # JSON-ready.


def test_zero_singular_values_are_counted_and_left_out():
    bank = _bank(num=20, c_dim=0)
    bank['svds'][[3, 7], -1] = 0
    report = volume_report.build_report(bank, bins=4)
    assert report['num_not_finite'] == 2
    assert sum(report['log_volume_histogram']['count']) == 18
    assert report['ess']['ess'][report['ess']['rho'].index(0.0)] == pytest.approx(18)


def test_figure_has_a_panel_per_plot(tmp_path):
    for c_dim, panels in ((3, 4), (0, 3)):
        path = tmp_path / f'bank{c_dim}.npz'
        _bank(c_dim=c_dim).save(path)
        json_path, png_path = volume_report.write_beside(LatentBank.load(path), path)
        assert json_path == str(tmp_path / f'bank{c_dim}_report.json')
        image = np.asarray(PIL.Image.open(png_path).convert('L'))
        assert image.shape == (320, panels * 400)
        for p in range(panels):  # Each panel has drawn content (axes, text, data), not a blank square.
            assert (image[:, p * 400:(p + 1) * 400] < 200).sum() > 2000
        assert json.loads(open(json_path).read())['num_latents'] == 300


def test_compute_volume_scalars_writes_the_report_beside_the_bank(tmp_path):
    G = tiny_generator(c_dim=2, seed=1)
    legacy.save_network_pkl(tmp_path / 'net.pkl', G=G, G_ema=G)
    result = CliRunner().invoke(compute_volume_scalars.main, [
        '--network', str(tmp_path / 'net.pkl'), '--num', '6', '--space', 'style', '--method', 'exact', '--top-k', '5',
        '--outdir', str(tmp_path / 'vol'), '--device', 'cpu'])
    assert result.exit_code == 0, result.output
    bank = LatentBank.load(tmp_path / 'vol' / 'volumes.npz')
    report = json.loads((tmp_path / 'vol' / 'volumes_report.json').read_text())
    assert report == json.loads(json.dumps(volume_report.build_report(bank, bank_path=tmp_path / 'vol' / 'volumes.npz')))
    assert report['top_k'] == 5 and report['c_dim'] == 2
    assert (tmp_path / 'vol' / 'volumes_report.png').is_file()
    assert 'volumes_report.png' in result.output


def test_module_command_line(tmp_path, capsys):
    path = tmp_path / 'b.npz'
    _bank(c_dim=0).save(path)
    assert volume_report.main([str(path), '3']) == 0
    assert json.loads((tmp_path / 'b_report.json').read_text())['top_k'] == 3
    assert volume_report.main([str(tmp_path / 'missing.npz')]) == 1
    assert 'error:' in capsys.readouterr().err
