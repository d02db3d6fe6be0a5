"""Tests for the small StyleGAN2 trainer: training/loss.py, training/training_loop.py and train.py."""

import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import legacy
import train
from training import training_loop as tl
from training.dataset_convert import open_source, write_dataset_zip
from training.loss import StyleGAN2Loss
from training.networks_stylegan2 import Discriminator, Generator

TINY_NET = dict(channel_base=256, channel_max=32, num_fp16_res=0, conv_clamp=256)  # 16 px: 16/32/32 channels.
TINY_CLI = ['--cbase', '256', '--cmax', '32', '--z-dim', '16', '--w-dim', '16', '--map', '1', '--batch', '16',
            '--device', 'cpu', '--threads', '1']


@pytest.fixture(scope='module')
def digits16(tmp_path_factory):
    """256 of scikit-learn's digits at 16x16 with labels, in NVlabs' zip layout."""
    path = str(tmp_path_factory.mktemp('data') / 'digits16.zip')
    images, labels = open_source('sklearn-digits', resolution=16)
    write_dataset_zip(path, images, labels, max_images=256, progress=False)
    return path


def _tiny_G(c_dim=0):
    return Generator(z_dim=16, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=1,
                     mapping_kwargs=dict(num_layers=1), fused_modconv_default='inference_only', **TINY_NET)


def _tiny_D(c_dim=0):
    return Discriminator(c_dim=c_dim, img_resolution=16, img_channels=1, epilogue_kwargs=dict(mbstd_group_size=4),
                         **TINY_NET)


def _grads(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]

# ----------------------------------------------------------------------------
# Loss.


def test_main_losses_match_reference_formulas():
    torch.manual_seed(0)
    G, D = _tiny_G().train().requires_grad_(False), _tiny_D().train().requires_grad_(False)
    loss = StyleGAN2Loss(G, D, r1_gamma=0)
    z = torch.randn(8, 16)
    c = torch.zeros(8, 0)
    real = torch.rand(8, 1, 16, 16) * 2 - 1

    # G: non-saturating loss, mean over the batch of -log sigmoid(D(G(z))) = softplus(-D(G(z))).
    G.requires_grad_(True)
    torch.manual_seed(1)
    loss.accumulate_gradients('Gmain', real, c, z, c, gain=3, cur_nimg=0)
    got = _grads(G)
    G.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # Same synthesis noise.
    (-torch.log(torch.sigmoid(D(G(z, c), c)))).mean().mul(3).backward()
    for a, b in zip(got, _grads(G)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert D.b4.out.weight.grad is None  # D is not trained by the G phase.
    G.requires_grad_(False)
    G.zero_grad(set_to_none=True)

    # D: -log(1 - sigmoid(D(fake))) - log sigmoid(D(real)).
    D.requires_grad_(True)
    torch.manual_seed(2)
    loss.accumulate_gradients('Dmain', real, c, z, c, gain=1, cur_nimg=0)
    got = _grads(D)
    D.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    with torch.no_grad():
        fake = G(z, c)
    ref = -torch.log(1 - torch.sigmoid(D(fake, c))).mean() - torch.log(torch.sigmoid(D(real, c))).mean()
    ref.backward()
    for a, b in zip(got, _grads(D)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in G.parameters())


def _r1_grads(D, gamma, gain, real, c):
    loss = StyleGAN2Loss(_tiny_G(), D, r1_gamma=gamma)
    D.requires_grad_(True)
    stats = loss.accumulate_gradients('Dreg', real, c, torch.randn(len(real), 16), c, gain=gain, cur_nimg=0)
    D.requires_grad_(False)
    return _grads(D), stats


def test_r1_penalty_reaches_the_weights():
    torch.manual_seed(0)
    D = _tiny_D().train().requires_grad_(False)
    grads, stats = _r1_grads(D, 1, 1, torch.rand(8, 1, 16, 16) * 2 - 1, torch.zeros(8, 0))
    assert float(stats['Loss/r1_penalty'].min()) > 0
    # Double backward through every layer: each conv / FC weight gets a gradient from the penalty alone.
    for (name, _), grad in zip(D.named_parameters(), grads):
        if name.endswith('weight') and not name.startswith('b4.out'):
            assert float(grad.abs().sum()) > 0, name


def test_r1_penalty_gradient_matches_finite_differences():
    # A smooth activation: with leaky ReLU the penalty jumps whenever a unit changes sign, which
    # defeats finite differences (the ops under test are the same).
    torch.manual_seed(0)
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=1, block_kwargs=dict(activation='softplus'),
                      epilogue_kwargs=dict(mbstd_group_size=4, activation='softplus'), **TINY_NET)
    D = D.train().requires_grad_(False)
    gamma, gain = 0.5, 16
    real = torch.rand(8, 1, 16, 16) * 2 - 1
    c = torch.zeros(8, 0)
    grads, stats = _r1_grads(D, gamma, gain, real, c)

    def penalty():
        # First derivative only: gamma/2 * mean_i ||d sum(D(x)) / d x_i||^2, times the lazy-regularisation gain.
        x = real.clone().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(D(x, c).sum(), x)
        return float(grad_x.double().square().sum(dim=[1, 2, 3]).mean()) * gamma / 2 * gain

    r1 = stats['Loss/r1_penalty'].double()
    assert math.isclose(float(r1.mean()) * gamma / 2 * gain, penalty(), rel_tol=1e-4)

    # Directional derivative along a random direction in parameter space vs central differences.
    params = list(D.parameters())
    direction = [torch.randn_like(p) * (p.detach().abs().mean() + 1e-3) for p in params]
    analytic = sum(float((g.double() * d.double()).sum()) for g, d in zip(grads, direction))
    h = 1e-3
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(d, alpha=sign * h)
        values.append(penalty())
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(d, alpha=sign * h)
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(analytic) > 0
    assert math.isclose(analytic, numeric, rel_tol=0.01), (analytic, numeric)


def test_path_length_and_style_mixing_phase_runs():
    torch.manual_seed(0)
    G, D = _tiny_G(), _tiny_D()
    G.requires_grad_(False)
    D.requires_grad_(False)
    loss = StyleGAN2Loss(G, D, pl_weight=2, style_mixing_prob=1, blur_init_sigma=2, blur_fade_kimg=1)
    G.requires_grad_(True)
    stats = loss.accumulate_gradients('Greg', torch.zeros(8, 1, 16, 16), torch.zeros(8, 0), torch.randn(8, 16),
                                      torch.zeros(8, 0), gain=4, cur_nimg=0)
    assert stats['Loss/pl_penalty'].shape == (4,)  # pl_batch_shrink=2.
    assert float(loss.pl_mean) > 0
    assert any(float(p.grad.abs().sum()) > 0 for p in G.parameters() if p.grad is not None)
    assert loss.blur_sigma(0) == 2 and loss.blur_sigma(500) == 1 and loss.blur_sigma(5000) == 0

# ----------------------------------------------------------------------------
# Training-loop helpers.


def test_lazy_regularization_and_ema_formulas():
    opts = tl.lazy_regularization_opt_kwargs(dict(class_name='torch.optim.Adam', lr=0.002, betas=[0, 0.99]), 16)
    assert opts.lr == pytest.approx(0.002 * 16 / 17)
    assert opts.betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    plain = tl.lazy_regularization_opt_kwargs(dict(lr=0.002, betas=[0, 0.99]), None)
    assert plain.lr == 0.002 and plain.betas == (0.0, 0.99)

    # Half-life: after ema_kimg thousand images (batch by batch) the old weights keep half their weight.
    beta = tl.ema_beta(batch_size=32, ema_kimg=10, cur_nimg=10 ** 6)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    ramped = tl.ema_beta(batch_size=32, ema_kimg=10, cur_nimg=1000, ema_rampup=0.05)  # Half-life 50 images.
    assert ramped ** (50 / 32) == pytest.approx(0.5)
    assert tl.resume_kimg_from_name('/runs/x/network-snapshot-000120.pkl') == 120
    assert tl.resume_kimg_from_name('final.pkl') == 0

# ----------------------------------------------------------------------------
# End to end: train.py, snapshots, resume.


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def smoke_run(digits16, tmp_path_factory):
    outdir = str(tmp_path_factory.mktemp('runs'))
    result = CliRunner().invoke(train.main, ['--outdir', outdir, '--data', digits16, '--kimg', '0.4', '--tick', '0.2',
                                             '--snap', '1', '--gamma', '1', '--pl-weight', '2', '--style-mix', '0.5',
                                             '--cond', '1', '--mirror', '1'] + TINY_CLI)
    assert result.exit_code == 0, result.output
    (run_name,) = os.listdir(outdir)
    return os.path.join(outdir, run_name)


def test_smoke_run_outputs(smoke_run, digits16):
    assert os.path.basename(smoke_run) == '00000-digits16-cond-mirror-batch16-gamma1'
    with open(os.path.join(smoke_run, 'training_options.json')) as f:
        options = json.load(f)
    assert options['training_set_kwargs'] == dict(class_name='training.dataset.ImageFolderDataset', path=digits16,
                                                  use_labels=True, max_size=256, xflip=True, resolution=16,
                                                  random_seed=0)
    assert options['G_reg_interval'] == 4 and options['D_reg_interval'] == 16

    stats = _read_jsonl(os.path.join(smoke_run, 'stats.jsonl'))
    assert [round(s['Progress/kimg']['mean'], 3) for s in stats] == [0.016, 0.224, 0.4]
    for key in ('Loss/G/loss', 'Loss/D/loss', 'Loss/scores/real', 'Loss/scores/fake'):
        assert all(math.isfinite(s[key]['mean']) and s[key]['num'] > 0 for s in stats), key
    assert math.isfinite(stats[0]['Loss/r1_penalty']['mean']) and math.isfinite(stats[0]['Loss/pl_penalty']['mean'])
    with open(os.path.join(smoke_run, 'log.txt')) as f:
        assert sum(line.startswith('tick ') for line in f) == 3
    for name in ('reals.png', 'fakes_init.png', 'fakes000000.png', 'network-snapshot-000000.pkl'):
        assert os.path.isfile(os.path.join(smoke_run, name)), name
    assert not [name for name in os.listdir(smoke_run) if name.endswith('.tmp')]

    # The snapshot loads without running any code from the pickle, and its G_ema makes images.
    with open(os.path.join(smoke_run, 'network-snapshot-000000.pkl'), 'rb') as f:
        data = legacy.load_network_pkl(f, allow_code=False)
    assert dict(data['training_set_kwargs']) == options['training_set_kwargs']
    G_ema = data['G_ema']
    assert (G_ema.z_dim, G_ema.c_dim, G_ema.img_resolution, G_ema.img_channels) == (16, 10, 16, 1)
    assert float(G_ema.mapping.w_avg.abs().sum()) > 0  # w_avg was tracked during training.
    c = torch.eye(10)[:4]
    img = G_ema(torch.randn(4, 16), c, noise_mode='const')
    assert img.shape == (4, 1, 16, 16) and torch.isfinite(img).all()
    assert data['D'](img, c).shape == (4, 1)


def test_resume_continues_from_snapshot(smoke_run, tmp_path):
    # A snapshot without our training state (NVlabs' layout only): its name sets the image counter, 7 kimg.
    snapshot = str(tmp_path / 'network-snapshot-000007.pkl')
    with open(os.path.join(smoke_run, 'network-snapshot-000000.pkl'), 'rb') as f:
        before = legacy.load_network_pkl(f)
    assert before['training_state']['cur_nimg'] == 400   # The last of the smoke run's snapshots (all below 1 kimg).
    legacy.save_network_pkl(snapshot, G=before['G'], D=before['D'], G_ema=before['G_ema'],
                            training_set_kwargs=before['training_set_kwargs'])
    with open(os.path.join(smoke_run, 'training_options.json')) as f:
        options = json.load(f)

    # Zero learning rates: G and D must come out exactly as loaded; G_ema moves one EMA step towards G.
    batch = options['batch_size']
    # A half-life of one minibatch: G_ema moves halfway to G, a step far above float32 rounding.
    options.update(run_dir=str(tmp_path / 'resumed'), resume_pkl=snapshot, resume_kimg=None, total_kimg=7.001,
                   ema_kimg=batch / 1000, ema_rampup=None, image_snapshot_ticks=None, verbose=False)
    options['G_opt_kwargs']['lr'] = options['D_opt_kwargs']['lr'] = 0
    result = tl.training_loop(**options)
    assert result.cur_nimg == 7000 + batch
    assert os.path.basename(result.snapshot_pkl) == 'network-snapshot-000007.pkl'
    stats = _read_jsonl(str(tmp_path / 'resumed' / 'stats.jsonl'))
    assert stats[-1]['Progress/kimg']['mean'] == pytest.approx((7000 + batch) / 1000)

    with open(result.snapshot_pkl, 'rb') as f:
        after = legacy.load_network_pkl(f)
    for name in ('G', 'D'):
        for (key, p0), (_, p1) in zip(before[name].named_parameters(), after[name].named_parameters()):
            assert torch.equal(p0, p1), f'{name}.{key}'
    for (key, e0), g, e1 in zip(before['G_ema'].named_parameters(), before['G'].parameters(),
                                after['G_ema'].parameters()):
        expected = (g.double() + e0.double()) / 2
        assert torch.allclose(e1.double(), expected, rtol=1e-6, atol=1e-7), key
    assert not torch.equal(before['G_ema'].mapping.fc0.weight, after['G_ema'].mapping.fc0.weight)


def test_killed_run_continues_in_place_exactly(digits16, tmp_path, monkeypatch):
    """Killed after its tick-4 snapshot, a run re-run with the same arguments continues in its own folder and
    ends with networks equal bit for bit to those of an uninterrupted run (CPU, no data workers)."""
    args = ['--data', digits16, '--kimg', '0.384', '--tick', '0.064', '--snap', '2', '--gamma', '1', '--pl-weight', '2',
            '--style-mix', '0.5', '--cond', '1', '--mirror', '1', '--workers', '0'] + TINY_CLI
    whole, killed = str(tmp_path / 'whole'), str(tmp_path / 'killed')
    assert CliRunner().invoke(train.main, ['--outdir', whole] + args).exit_code == 0

    append = tl._append_jsonl

    def dies_at_tick_5(path, summary, timing):
        if timing['Progress/tick'] == 5:
            raise KeyboardInterrupt   # As a kill would: after the tick-4 snapshot, tick 5's work is lost.
        append(path, summary, timing)

    monkeypatch.setattr(tl, '_append_jsonl', dies_at_tick_5)
    assert CliRunner().invoke(train.main, ['--outdir', killed] + args).exit_code != 0
    monkeypatch.setattr(tl, '_append_jsonl', append)
    (run_name,) = os.listdir(killed)
    run_dir = os.path.join(killed, run_name)
    assert [s['Progress/tick']['mean'] for s in _read_jsonl(os.path.join(run_dir, 'stats.jsonl'))] == [0, 1, 2, 3, 4]

    result = CliRunner().invoke(train.main, ['--outdir', killed] + args)
    assert result.exit_code == 0, result.output
    assert f'Continuing {run_dir}' in result.output and 'Resumed exactly at 0.272 kimg, tick 5' in result.output
    assert os.listdir(killed) == [run_name]
    stats = _read_jsonl(os.path.join(run_dir, 'stats.jsonl'))
    assert [s['Progress/tick']['mean'] for s in stats] == [0, 1, 2, 3, 4, 5, 6]
    assert [s['Progress/kimg']['mean'] for s in stats] == \
        [s['Progress/kimg']['mean'] for s in _read_jsonl(os.path.join(whole, os.listdir(whole)[0], 'stats.jsonl'))]

    def final(outdir):
        (name,) = os.listdir(outdir)
        with open(os.path.join(outdir, name, 'network-snapshot-000000.pkl'), 'rb') as f:
            return legacy.load_network_pkl(f)

    a, b = final(whole), final(killed)
    assert a['training_state']['cur_nimg'] == b['training_state']['cur_nimg'] == 384
    for name in ('G', 'D', 'G_ema'):
        for (key, p), q in zip(a[name].state_dict().items(), b[name].state_dict().values()):
            assert torch.equal(p, q), f'{name}.{key}'

    # A finished run is not continued; a longer --kimg continues it; other options never do.
    with open(os.path.join(run_dir, 'training_options.json')) as f:
        options = json.load(f)
    desc = run_name.split('-', 1)[1]
    assert tl.find_resumable_run(killed, desc, options) is None
    assert tl.find_resumable_run(killed, desc, dict(options, total_kimg=1)) == (
        run_dir, os.path.join(run_dir, 'network-snapshot-000000.pkl'))
    assert tl.find_resumable_run(killed, desc, dict(options, total_kimg=1, random_seed=1)) is None


def test_same_seed_same_result(digits16, tmp_path):
    def run(name, seed):
        args = dict(train.build_options(digits16, cond=False, mirror=False, batch=8, kimg=0.008, tick=1, snap=1,
                                        seed=seed, gamma=1, cbase=256, cmax=32, map_layers=1, z_dim=16, w_dim=16, mbstd_group=4,
                                        glr=0.0025, dlr=0.0025, ema=None, style_mix=0.5, pl_weight=2,
                                        device=torch.device('cpu'), workers=0, resume=None, resume_kimg=None)[0])
        args.update(run_dir=str(tmp_path / name), image_snapshot_ticks=None, verbose=False)
        with open(tl.training_loop(**args).snapshot_pkl, 'rb') as f:
            return legacy.load_network_pkl(f)

    first, second, other = run('a', 0), run('b', 0), run('c', 1)
    for name in ('G', 'D', 'G_ema'):
        for p, q in zip(first[name].state_dict().values(), second[name].state_dict().values()):
            assert torch.equal(p, q)
    assert not torch.equal(first['G'].mapping.fc0.weight, other['G'].mapping.fc0.weight)

# ----------------------------------------------------------------------------
# train.py input errors.


def test_train_cli_errors_are_one_line(digits16, tmp_path):
    unlabelled = str(tmp_path / 'unlabelled.zip')
    images, _labels = open_source('sklearn-digits', resolution=16)
    write_dataset_zip(unlabelled, images, None, max_images=8, progress=False)
    odd = tmp_path / 'odd'
    odd.mkdir()
    import PIL.Image
    PIL.Image.fromarray(np.zeros((12, 12), np.uint8)).save(str(odd / 'a.png'))

    out = str(tmp_path / 'runs')
    cases = [
        (['--data', str(tmp_path / 'missing.zip')], 'not found'),
        (['--data', str(odd)], 'power of two'),
        (['--data', unlabelled, '--cond', '1'], '--cond'),
        (['--data', digits16, '--gpus', '2'], '--gpus'),
        (['--data', digits16, '--batch', '48', '--mbstd-group', '32'], '--mbstd-group'),
        (['--data', digits16, '--aug', 'translation,flip'], '--aug'),
    ]
    for args, fragment in cases:
        result = CliRunner().invoke(train.main, ['--outdir', out] + args)
        assert result.exit_code != 0
        assert 'Traceback' not in result.output
        error_lines = [line for line in result.output.splitlines() if line.startswith('Error')]
        assert len(error_lines) == 1 and fragment in error_lines[0], result.output
    assert not os.path.exists(out)


def test_train_cli_dry_run_numbers_run_dirs(digits16, tmp_path):
    out = tmp_path / 'runs'
    (out / '00007-earlier-run').mkdir(parents=True)
    result = CliRunner().invoke(train.main, ['--outdir', str(out), '--data', digits16, '--dry-run', '--desc', 'x'])
    assert result.exit_code == 0, result.output
    options = json.loads(result.output[:result.output.rindex('}') + 1])
    assert options['run_dir'] == str(out / '00008-digits16-batch64-gamma1-x')
    assert options['training_set_kwargs']['use_labels'] is False
    assert sorted(os.listdir(out)) == ['00007-earlier-run']  # A dry run creates nothing.


def test_train_cli_aug_reaches_the_loss_and_the_run_name(digits16, tmp_path):
    out = tmp_path / 'runs'
    result = CliRunner().invoke(train.main, ['--outdir', str(out), '--data', digits16, '--dry-run',
                                             '--aug', ' cutout, translation'])
    assert result.exit_code == 0, result.output
    options = json.loads(result.output[:result.output.rindex('}') + 1])
    assert options['loss_kwargs']['augment'] == 'cutout,translation'
    assert options['run_dir'] == str(out / '00000-digits16-batch64-gamma1-augcutout+translation')
