"""Every script draws its latents through the sampler registry (sampling/samplers.py), and obeys one --class rule.

For each sampler, a script's options and the equivalent spec of ``calc_metrics.py --sampler`` give identical
latents and labels: the scripts' latents are captured where they are rendered (or read from the bank files they
write) and compared with ``samplers.build(spec, G).sample(num, seed)``. The --class tests run every script that
takes --class on the embedded network (class-conditional MNIST, 10 classes) and its shipped volume bank.
"""

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_generator

import compute_volume_scalars
import generate
import generate_hubness
import generate_magnet
import generate_video
import legacy
from sampling import cli, samplers
from sampling.latents import LatentBank, one_hot, random_labels

EMBEDDED_BANK = os.path.join(os.path.dirname(cli.DEFAULT_NETWORK), 'mnist32-volumes.npz')
NOTE = 'no --class was given: a random class per latent (--class random)'


@pytest.fixture(scope='module')
def embedded():
    return legacy.load_network(cli.DEFAULT_NETWORK)


@pytest.fixture(scope='module')
def hub_bank(tmp_path_factory):
    """A hub bank of the embedded network, for the 'bank' sampler."""
    outdir = tmp_path_factory.mktemp('hubs')
    result = _invoke(generate_hubness.main, '--num', 8, '--batch-size', 200, '--threshold', 8, '--no-images',
                     '--outdir', outdir)
    assert result.exit_code == 0, result.output
    return str(outdir / 'hubs.npz')


def _invoke(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args] + ['--device', 'cpu'], catch_exceptions=False)


def _capture_synthesis(monkeypatch, module):
    """Record the latents, labels and psi a script hands to synthesis (and render nothing)."""
    seen = {}

    def fake_synthesize(G, z=None, c=None, truncation_psi=1, **_):
        seen.update(z=np.asarray(z, np.float32), c=np.asarray(c, np.float32), psi=truncation_psi)
        num = len(z)
        yield torch.zeros([num, G.img_channels, G.img_resolution, G.img_resolution])
    monkeypatch.setattr(module, 'synthesize', fake_synthesize)
    return seen


def _assert_same(z, c, expected_z, expected_c):
    np.testing.assert_array_equal(z, expected_z)
    np.testing.assert_array_equal(c, expected_c)

# ----------------------------------------------------------------------------
# Script options == spec, sampler by sampler.


@pytest.mark.parametrize('options, spec', [
    ([], 'random'),
    (['--trunc', 0.7], 'trunc:0.7'),
    (['--class', 4, '--trunc', 0.5], 'random;trunc=0.5,class=4'),
    (['--truncnorm', '--trunc', 0.4], 'truncnorm;trunc=0.4'),
])
def test_generate_is_the_random_sampler_per_seed(embedded, monkeypatch, tmp_path, options, spec):
    seen = _capture_synthesis(monkeypatch, generate)
    seeds = [3, 11, 12]
    result = _invoke(generate.main, '--seeds', '3,11-12', '--outdir', tmp_path, *options)
    assert result.exit_code == 0, result.output
    sampler = samplers.build(spec, embedded)
    for row, seed in enumerate(seeds):  # Seed s renders the spec's sample(1, s).
        z, c, psi = sampler.sample(1, seed)
        _assert_same(seen['z'][row:row + 1], seen['c'][row:row + 1], z, c)
        assert seen['psi'] == psi


@pytest.mark.parametrize('options, spec', [
    (['--threshold', 8], 'hubness:k=5,t=8,batch=200;class=random'),
    (['--top', 3, '--k', 4, '--space', 'z'], 'hubness:k=4,top=3,space=z,batch=200;class=random'),
    (['--quantile', 0.9, '--class', 2, '--no-count-self'], 'hubness:quantile=0.9,count_self=0,batch=200;class=2'),
])
def test_generate_hubness_is_the_hubness_sampler(embedded, tmp_path, options, spec):
    result = _invoke(generate_hubness.main, '--num', 6, '--batch-size', 200, '--seed', 5, '--no-images',
                     '--outdir', tmp_path, *options)
    assert result.exit_code == 0, result.output
    hubs = LatentBank.load(tmp_path / 'hubs.npz')
    z, c, _ = samplers.build(spec, embedded).sample(6, seed=5)
    _assert_same(hubs.latents.astype(np.float32), hubs.labels, z, c)


@pytest.mark.parametrize('options, spec', [
    ([], 'polarity:bank={bank},rho=-0.5,top_k=5'),
    (['--no-replace', '--no-per-class'], 'polarity:bank={bank},rho=-0.5,top_k=5,replace=0,per_class=0'),
    (['--class', 7], 'polarity:bank={bank},rho=-0.5,top_k=5;class=7'),
    (['--mix', 0.25], 'mix:0.25*polarity(bank={bank},rho=-0.5,top_k=5)+0.75*random'),
    (['--mix', 0.5, '--class', 1, '--trunc', 0.8], 'mix:0.5*polarity(bank={bank},rho=-0.5,top_k=5)+0.5*random;'
                                                    'trunc=0.8,class=1'),
])
def test_generate_magnet_is_the_polarity_sampler(embedded, monkeypatch, tmp_path, options, spec):
    seen = _capture_synthesis(monkeypatch, generate_magnet)
    result = _invoke(generate_magnet.main, '--bank', EMBEDDED_BANK, '--rho', -0.5, '--top-k', 5, '--num', 13,
                     '--seed', 4, '--outdir', tmp_path, *options)
    assert result.exit_code == 0, result.output
    sampler = samplers.build(spec.format(bank=EMBEDDED_BANK), embedded)
    drawn = sampler.draw(13, seed=4)
    _assert_same(seen['z'], seen['c'], drawn.z, drawn.c)
    assert seen['psi'] == sampler.psi
    selection = LatentBank.load(tmp_path / 'selection.npz')
    _assert_same(selection.latents, selection.labels, drawn.z, drawn.c)
    np.testing.assert_array_equal(selection['bank_index'], drawn.bank_index)
    bank = LatentBank.load(EMBEDDED_BANK)  # Bank rows are the bank's latents; the rest are fresh ones.
    from_bank = drawn.bank_index >= 0
    np.testing.assert_array_equal(drawn.z[from_bank], bank.latents[drawn.bank_index[from_bank]].astype(np.float32))
    assert from_bank.sum() == round(13 * float(dict(zip(*[iter(options)] * 2)).get('--mix', 1)) + 1e-9)


def test_generate_video_lerp_is_the_bank_sampler(embedded, hub_bank, monkeypatch, tmp_path):
    seen = {}
    from sampling import video

    def fake_hub_ws(G, bank, truncation_psi=1):
        seen['bank'] = bank
        raise ValueError('captured')
    monkeypatch.setattr(video, 'hub_ws', fake_hub_ws)
    result = _invoke(generate_video.main, 'lerp', '--hubs', hub_bank, '--paths', 2, '--keys', 3,
                     '--out', tmp_path / 'v.mp4')
    assert 'captured' in result.output
    z, c, _ = samplers.build(f'bank:{hub_bank}', embedded).sample(6, seed=0)
    _assert_same(seen['bank'].latents.astype(np.float32), seen['bank'].labels, z, c)
    np.testing.assert_array_equal(seen['bank']['w'], LatentBank.load(hub_bank)['w'][:6])


def test_generate_video_trunc_is_the_random_sampler(embedded, monkeypatch, tmp_path):
    from sampling import video
    seen = {}

    def fake_frames(G, z, c, psis, **_):
        seen.update(z=z, c=c)
        raise ValueError('captured')
    monkeypatch.setattr(video, 'truncation_sweep_frames', fake_frames)
    with pytest.raises(ValueError, match='captured'):
        _invoke(generate_video.main, 'trunc', '--num', 5, '--seed', 9, '--class', 6, '--out', tmp_path / 't.mp4')
    z, c, _ = samplers.build('random;class=6', embedded).sample(5, seed=9)
    _assert_same(seen['z'], seen['c'], z, c)

# ----------------------------------------------------------------------------
# One --class rule, script by script, on the embedded conditional network.


def _labels_of(script, tmp_path, monkeypatch, *class_args):
    """(labels the script used, its output) for `class_args`."""
    if script == 'generate':
        seen = _capture_synthesis(monkeypatch, generate)
        result = _invoke(generate.main, '--seeds', '0-5', '--outdir', tmp_path, *class_args)
        return seen.get('c'), result
    if script == 'generate_magnet':
        seen = _capture_synthesis(monkeypatch, generate_magnet)
        result = _invoke(generate_magnet.main, '--bank', EMBEDDED_BANK, '--top-k', 5, '--num', 6, '--outdir', tmp_path,
                         *class_args)
        return seen.get('c'), result
    if script == 'generate_hubness':
        result = _invoke(generate_hubness.main, '--num', 6, '--batch-size', 200, '--threshold', 8, '--no-images',
                         '--outdir', tmp_path, *class_args)
        path = tmp_path / 'hubs.npz'
    else:
        result = _invoke(compute_volume_scalars.main, '--num', 6, '--top-k', 2, '--method', 'projected',
                         '--num-projections', 4, '--outdir', tmp_path, *class_args)
        path = tmp_path / 'volumes.npz'
    return (LatentBank.load(path).labels if result.exit_code == 0 else None), result


SCRIPTS = ['generate', 'generate_hubness', 'compute_volume_scalars', 'generate_magnet']


@pytest.mark.parametrize('script', SCRIPTS)
def test_one_class_rule(embedded, monkeypatch, tmp_path, script):
    # No --class: a random class per latent, said on stderr; the same as --class random.
    default, result = _labels_of(script, tmp_path / 'default', monkeypatch)
    assert result.exit_code == 0 and NOTE in result.output, result.output
    assert default.shape == (6, 10) and len(np.unique(default.argmax(axis=1))) > 1
    chosen, result = _labels_of(script, tmp_path / 'random', monkeypatch, '--class', 'random')
    assert result.exit_code == 0 and NOTE not in result.output, result.output
    np.testing.assert_array_equal(chosen, default)
    # --class N: every latent of class N (a name would be looked up among ImageNet's, not for 10 classes).
    three, result = _labels_of(script, tmp_path / 'three', monkeypatch, '--class', '3')
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(three, one_hot(np.full([6], 3), 10))
    # Out of range, or a keyword the script does not take: one line, non-zero exit, nothing written.
    for bad, words in (('10', 'out of range for 10 classes'), ('-1', 'negative'), ('every', 'is not a class index')):
        labels, result = _labels_of(script, tmp_path / f'bad{bad}', monkeypatch, '--class', bad)
        errors = [line for line in result.output.splitlines() if line.startswith('Error')]
        assert result.exit_code != 0 and len(errors) == 1 and words in errors[0], result.output
        assert 'Traceback' not in result.output


def test_class_random_is_the_random_samplers_labels(embedded, monkeypatch, tmp_path):
    """The random classes are those of the spec 'random' (row j of random_labels of the seed)."""
    seen = _capture_synthesis(monkeypatch, generate)
    assert _invoke(generate.main, '--seeds', '0-5', '--outdir', tmp_path).exit_code == 0
    np.testing.assert_array_equal(seen['c'], np.concatenate([random_labels(s, 1, 10) for s in range(6)]))
    volumes, _ = _labels_of('compute_volume_scalars', tmp_path / 'vol', monkeypatch)
    np.testing.assert_array_equal(volumes, random_labels(0, 6, 10))


def test_class_all_where_it_makes_sense(embedded, monkeypatch, tmp_path):
    labels, result = _labels_of('compute_volume_scalars', tmp_path, monkeypatch, '--class', 'all', '--num', 1)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(labels, np.eye(10, dtype=np.float32))  # --num latents of every class.


def test_unconditional_network_ignores_class(tmp_path, monkeypatch):
    G = tiny_generator(c_dim=0)
    legacy.save_network_pkl(tmp_path / 'u.pkl', G=G, G_ema=G)
    seen = _capture_synthesis(monkeypatch, generate)
    result = _invoke(generate.main, '--network', tmp_path / 'u.pkl', '--seeds', '0-1', '--class', 3,
                     '--outdir', tmp_path / 'out')
    assert result.exit_code == 0 and 'warning: --class is ignored for an unconditional network' in result.output
    assert seen['c'].shape == (2, 0)
