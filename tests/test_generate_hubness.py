"""generate_hubness.py end to end on a tiny network pickle made in the test."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import REPO_ROOT, tiny_generator

import generate_hubness
import legacy
from sampling import cli, hub_sampler
from sampling.images import load_png
from sampling.latents import LatentBank, file_sha256

# 0 to 4 hubs per batch of 300 with k = 5 and the score counting the latent itself: --num 6 takes 4 batches
# and part of the last one (the tests check this against a brute-force count).
BASE = ['--batch-size', '300', '--k', '5', '--threshold', '13', '--device', 'cpu']


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp('net')
    G, G_cond = tiny_generator(), tiny_generator(c_dim=3)
    legacy.save_network_pkl(folder / 'tiny.pkl', G=G, G_ema=G)
    legacy.save_network_pkl(folder / 'tiny_cond.pkl', G=G_cond, G_ema=G_cond)
    return dict(pkl=str(folder / 'tiny.pkl'), G=G, cond_pkl=str(folder / 'tiny_cond.pkl'), G_cond=G_cond)


@pytest.fixture(scope='module')
def reference(tiny, tmp_path_factory):
    """One uninterrupted single run: --num 6 with images, the baseline of the other tests."""
    outdir = tmp_path_factory.mktemp('reference')
    result = _invoke('--network', tiny['pkl'], '--num', '6', '--outdir', str(outdir), *BASE)
    assert result.exit_code == 0, result.output
    return outdir


def _invoke(*args):
    return CliRunner().invoke(generate_hubness.main, list(args), catch_exceptions=False)


def _bank(outdir):
    return LatentBank.load(os.path.join(outdir, 'hubs.npz'))


def _assert_same_arrays(a, b):
    assert a.keys() == b.keys()
    for name in a.keys():
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


def _meta_without_command(bank):
    return {k: v for k, v in bank.meta.items() if k != 'command'}


def _images(outdir):
    return {name: (outdir / name).read_bytes() for name in sorted(os.listdir(outdir)) if name.startswith('hub')
            and name.endswith('.png')}


def brute_k_occurrence(x, k, count_self):
    """float64 all-pairs distances; self first (authors) or never (textbook); ties by the lower index."""
    x = np.asarray(x, dtype=np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, -1.0 if count_self else np.inf)
    return np.bincount(np.argsort(d, axis=1, kind='stable')[:, :k].ravel(), minlength=len(x))

# ----------------------------------------------------------------------------

def test_outputs_scores_and_images(tiny, reference):
    G = tiny['G']
    bank = _bank(reference)
    assert len(bank) == 6
    assert set(bank.keys()) == {'latents', 'labels', 'w', 'hub_score', 'seeds', 'indices'}
    meta = bank.meta
    assert meta['network_sha256'] == file_sha256(tiny['pkl'])
    assert (meta['space'], meta['k'], meta['count_self'], meta['z_dim']) == ('w', 5, True, 16)
    assert meta['extras']['threshold'] == 13 and meta['extras']['batch_size'] == 300

    # Every batch the hubs came from, regenerated from its seed and scored by brute force here.
    num_batches = int(bank['seeds'].max()) + 1
    expected_hubs = []
    for seed in range(num_batches):
        z = np.random.RandomState(seed).randn(300, 16)
        w = G.mapping(torch.from_numpy(z).float(), None)[:, 0].numpy()
        scores = brute_k_occurrence(w, 5, count_self=True)
        expected_hubs += [(seed, i, scores[i], z[i], w[i]) for i in np.flatnonzero(scores >= 13)]
    assert len(expected_hubs) > 6 and expected_hubs[5][0] == num_batches - 1  # The last batch was needed.
    for row, (seed, index, score, z, w) in enumerate(expected_hubs[:6]):
        assert (bank['seeds'][row], bank['indices'][row], bank['hub_score'][row]) == (seed, index, score)
        assert np.array_equal(bank.latents[row], z)
        np.testing.assert_allclose(bank['w'][row], w, rtol=1e-6, atol=1e-6)

    # Images: G(z) at psi 1, noise const, in hub order; a grid; a report.
    images = _images(reference)
    assert list(images) == [f'hub{i:06d}.png' for i in range(6)]
    img = G(torch.from_numpy(bank.latents).float(), torch.zeros([6, 0]), noise_mode='const')
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    for i in range(6):
        assert np.abs(load_png(reference / f'hub{i:06d}.png').astype(int) - expected[i]).max() <= 1
    assert load_png(reference / 'grid.png').shape == (2 * 16, 3 * 16, 3)  # ceil(sqrt(6)) = 3 columns.
    report = json.loads((reference / 'report.json').read_text())
    assert report['num_found'] == 6 and report['num_batches'] == num_batches
    assert [b['num_accepted'] for b in report['batches']] == \
        [sum(1 for h in expected_hubs if h[0] == s) for s in range(num_batches)]
    assert report['batches'][0]['hubness']['mean'] == pytest.approx(5.0)
    assert load_png(reference / 'report.png').shape[2] == 3


def test_rerun_is_identical_and_recomputes_nothing(tiny, reference, tmp_path, monkeypatch):
    result = _invoke('--network', tiny['pkl'], '--num', '6', '--outdir', str(tmp_path), *BASE)
    assert result.exit_code == 0, result.output
    _assert_same_arrays(_bank(tmp_path), _bank(reference))
    assert _meta_without_command(_bank(tmp_path)) == _meta_without_command(_bank(reference))
    assert _images(tmp_path) == _images(reference)

    # Same arguments into the same folder: nothing is scored again and no file changes.
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob('*') if p.is_file()}
    monkeypatch.setattr(hub_sampler, 'score_batch', lambda *a, **k: pytest.fail('batch recomputed'))
    result = _invoke('--network', tiny['pkl'], '--num', '6', '--outdir', str(tmp_path), *BASE)
    assert result.exit_code == 0, result.output
    for path, (mtime, data) in before.items():
        assert path.read_bytes() == data
        if path.name.startswith(('hub', 'chunk')):
            assert path.stat().st_mtime_ns == mtime, f'{path.name} was rewritten'


def test_interrupted_scoring_and_images_resume_to_the_same_result(tiny, reference, tmp_path, monkeypatch):
    args = ['--network', tiny['pkl'], '--num', '6', '--outdir', str(tmp_path), *BASE]
    real_score = hub_sampler.score_batch
    calls = []

    def score_then_die(G, search, batch, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Killed while scoring the third batch.
        calls.append(batch)
        return real_score(G, search, batch, **kwargs)

    monkeypatch.setattr(hub_sampler, 'score_batch', score_then_die)
    assert _invoke(*args).exit_code == 1  # click turns the interrupt into 'Aborted!'.
    assert sorted(os.listdir(tmp_path / 'chunks')) == ['chunk-000000.npz', 'chunk-000001.npz', 'chunks.json']
    assert not (tmp_path / 'hubs.npz').exists()

    # Resume: batches 0 and 1 are not scored again; then die while writing images.
    calls.clear()
    monkeypatch.setattr(hub_sampler, 'score_batch', lambda G, s, b, **kw: calls.append(b) or real_score(G, s, b, **kw))
    import sampling.images
    real_save, saved = sampling.images.save_png, []

    def save_then_die(path, array):
        if len(saved) == 4:
            raise KeyboardInterrupt
        saved.append(path)
        real_save(path, array)

    monkeypatch.setattr(sampling.images, 'save_png', save_then_die)
    assert _invoke(*args, '--synth-batch', '3').exit_code == 1
    assert calls[0] == 2 and 0 not in calls and 1 not in calls
    assert len(_images(tmp_path)) == 4

    monkeypatch.setattr(sampling.images, 'save_png', real_save)
    result = _invoke(*args, '--synth-batch', '3')
    assert result.exit_code == 0, result.output
    _assert_same_arrays(_bank(tmp_path), _bank(reference))
    # Same hubs whatever --synth-batch; pixels may differ in the last bit between batch compositions.
    images, ref_images = _images(tmp_path), _images(reference)
    assert list(images) == list(ref_images)
    for name in images:
        assert np.abs(load_png(tmp_path / name).astype(int) - load_png(reference / name).astype(int)).max() <= 1


def test_max_batches_stops_saves_and_continues(tiny, reference, tmp_path):
    args = ['--network', tiny['pkl'], '--num', '6', '--outdir', str(tmp_path), *BASE, '--no-images']
    result = _invoke(*args, '--max-batches', '1')
    assert result.exit_code == 1
    assert 'not the 6 wanted' in result.output and '--threshold' in result.output
    assert 'Traceback' not in result.output
    partial = _bank(tmp_path)
    assert 0 < len(partial) < 6 and (partial['seeds'] == 0).all()
    assert json.loads((tmp_path / 'report.json').read_text())['complete'] is False
    assert not list(tmp_path.glob('hub0*.png'))  # --no-images

    result = _invoke(*args)  # A larger --max-batches (the default) continues from batch 1.
    assert result.exit_code == 0, result.output
    _assert_same_arrays(_bank(tmp_path), _bank(reference))


def test_a_threshold_no_batch_reaches_is_reported_early(tiny, tmp_path):
    args = ['--network', tiny['pkl'], '--num', '2', '--outdir', str(tmp_path), '--batch-size', '300',
            '--threshold', '300', '--max-batches', '10', '--device', 'cpu', '--no-images']
    result = _invoke(*args)
    assert result.exit_code == 1 and 'Traceback' not in result.output
    warning = [line for line in result.output.splitlines() if line.startswith('warning: no hub in the first 10')]
    assert len(warning) == 1 and 'a lower threshold finds hubs sooner' in warning[0], result.output
    best = int(warning[0].split('highest score: ')[1].split(')')[0])
    assert 1 <= best < 300


def test_shards_then_merge_equal_a_single_run(tiny, reference, tmp_path, monkeypatch):
    args = ['--network', tiny['pkl'], '--num', '6', '--outdir', str(tmp_path), *BASE, '--max-batches', '5']
    assert _invoke(*args, '--shard', '0/2').exit_code == 0
    result = _invoke(*args, '--merge')
    assert result.exit_code == 1 and 'batch 1 is not finished' in result.output
    monkeypatch.setenv('SLURM_ARRAY_TASK_ID', '1')  # The second shard takes its index from the SLURM array.
    monkeypatch.setenv('SLURM_ARRAY_TASK_COUNT', '2')
    result = _invoke(*args)
    assert result.exit_code == 0 and 'Shard 1/2' in result.output, result.output
    monkeypatch.delenv('SLURM_ARRAY_TASK_ID')
    assert sorted(os.listdir(tmp_path / 'chunks'))[:-1] == [f'chunk-{b:06d}.npz' for b in range(5)]
    assert not (tmp_path / 'hubs.npz').exists()
    result = _invoke(*args, '--merge')
    assert result.exit_code == 0, result.output
    _assert_same_arrays(_bank(tmp_path), _bank(reference))
    assert _meta_without_command(_bank(tmp_path)) == _meta_without_command(_bank(reference))
    assert _images(tmp_path) == _images(reference)

    # Three shards with --top need no --max-batches: ceil(8 / 3) = 3 batches, one each.
    top = ['--network', tiny['pkl'], '--num', '8', '--batch-size', '300', '--top', '3', '--device', 'cpu',
           '--no-images', '--space', 'z']
    for i in range(3):
        assert _invoke(*top, '--outdir', str(tmp_path / 'top'), '--shard', f'{i}/3').exit_code == 0
    assert _invoke(*top, '--outdir', str(tmp_path / 'top'), '--merge').exit_code == 0
    assert _invoke(*top, '--outdir', str(tmp_path / 'single')).exit_code == 0
    _assert_same_arrays(_bank(tmp_path / 'top'), _bank(tmp_path / 'single'))
    assert _bank(tmp_path / 'single')['seeds'].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_z_space_textbook_count_and_random_classes(tiny, tmp_path):
    G = tiny['G_cond']
    result = _invoke('--network', tiny['cond_pkl'], '--num', '4', '--outdir', str(tmp_path), '--space', 'z',
                     '--no-count-self', '--batch-size', '200', '--top', '2', '--class', 'random', '--seed', '5',
                     '--trunc', '0.5', '--device', 'cpu', '--synth-batch', '4')
    assert result.exit_code == 0, result.output
    bank = _bank(tmp_path)
    assert bank['seeds'].tolist() == [5, 5, 6, 6] and bank.meta['count_self'] is False
    for seed in (5, 6):
        z = np.random.RandomState(seed).randn(200, 16)
        scores = brute_k_occurrence(z, 5, count_self=False)
        rows = bank['seeds'] == seed
        top2 = np.sort(np.argsort(-scores, kind='stable')[:2])
        assert bank['indices'][rows].tolist() == top2.tolist()
        assert bank['hub_score'][rows].tolist() == scores[top2].tolist()
        classes = np.random.RandomState([seed, 1]).randint(3, size=200)  # latents.py's label stream.
        assert bank.labels[rows].argmax(axis=1).tolist() == classes[top2].tolist()
    img = G(torch.from_numpy(bank.latents).float(), torch.from_numpy(bank.labels), truncation_psi=0.5,
            noise_mode='const')
    expected = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
    for i in range(4):
        assert np.abs(load_png(tmp_path / f'hub{i:06d}.png').astype(int) - expected[i]).max() <= 1


def test_conditional_network_without_class_draws_random_classes(tiny, tmp_path):
    args = ['--network', tiny['cond_pkl'], '--num', '3', *BASE, '--no-images']
    result = _invoke(*args, '--outdir', str(tmp_path / 'default'))
    assert result.exit_code == 0, result.output
    assert 'a random class per latent' in result.output
    assert _invoke(*args, '--outdir', str(tmp_path / 'random'), '--class', 'random').exit_code == 0
    _assert_same_arrays(_bank(tmp_path / 'default'), _bank(tmp_path / 'random'))
    assert len(np.unique(_bank(tmp_path / 'default').labels.argmax(axis=1))) > 1


def test_default_network(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, 'DEFAULT_NETWORK', tiny['pkl'])
    result = _invoke('--num', '2', '--outdir', str(tmp_path), *BASE, '--no-images')
    assert result.exit_code == 0, result.output
    assert 'embedded default network' in result.output
    assert _bank(tmp_path).meta['network_sha256'] == file_sha256(tiny['pkl'])


@pytest.mark.parametrize('extra, message', [
    (['--k', '300'], 'k must be between 1 and batch_size - 1'),
    (['--num', '0'], "Invalid value for '--num'"),
    (['--space', 'x'], "Invalid value for '--space'"),
    (['--top', '3'], 'choose one selection rule, got threshold and top'),
    (['--quantile', '1.5'], "Invalid value for '--quantile'"),
    (['--shard', '2/2'], 'need 0 <= i < n'),
    (['--shard', '0/2'], 'the number of batches must be given'),
    (['--merge', '--shard', '0/2'], 'not both'),
    (['--merge'], 'batch 0 is not finished'),
    (['--network', 'missing.pkl'], 'not found'),
    (['--class', 'two'], "'two' is not a class index or 'random'"),
    (['--cond', '--class', '3'], 'out of range for 3 classes'),
])
def test_bad_input_is_one_clear_error(tiny, tmp_path, extra, message):
    args = ['--network', tiny['pkl'], '--num', '3', '--outdir', str(tmp_path / 'out'), *BASE]
    if '--cond' in extra:
        extra = [a for a in extra if a != '--cond']
        args[1] = tiny['cond_pkl']
    if '--num' in extra:
        args[2:4] = []
    result = _invoke(*args, *extra)
    assert result.exit_code != 0
    assert 'Traceback' not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith('Error:')]
    assert len(errors) == 1 and message in errors[0], result.output


def test_other_arguments_into_the_same_outdir_are_refused(tiny, reference, tmp_path):
    args = ['--network', tiny['pkl'], '--num', '3', '--outdir', str(tmp_path), *BASE, '--no-images']
    assert _invoke(*args).exit_code == 0
    for extra, what in ((['--k', '6'], 'k: 5 there, 6 now'), (['--trunc', '0.7'], 'truncation_psi: 1.0 there, 0.7 now'),
                        (['--no-count-self'], 'count_self: True there, False now')):
        result = _invoke(*args, *extra)
        assert result.exit_code == 1 and what in result.output and str(tmp_path) in result.output, result.output
    # What may change: --max-batches, --device, --synth-batch, --no-images.
    assert _invoke(*args, '--max-batches', '50', '--synth-batch', '2').exit_code == 0


def test_killed_process_resumes(tiny, tmp_path, monkeypatch):
    """A real process killed (SIGKILL) after its first finished batch; the re-run completes it identically."""
    args = ['--network', tiny['pkl'], '--num', '30', *BASE, '--no-images']
    killed = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, 'generate_hubness.py'), *args,
                             '--outdir', str(killed)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed / 'chunks' / 'chunk-000000.npz'
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), proc.stderr.read().decode()
    finished = [int(p.name[6:12]) for p in (killed / 'chunks').glob('chunk-*.npz')]
    real_score, scored = hub_sampler.score_batch, []
    monkeypatch.setattr(hub_sampler, 'score_batch', lambda G, s, b, **kw: scored.append(b) or real_score(G, s, b, **kw))
    result = _invoke(*args, '--outdir', str(killed))
    assert result.exit_code == 0, result.output
    assert scored and not set(scored) & set(finished)   # Finished work is kept, not recomputed.
    # The finished run leaves its batches in one pack, not a file per batch.
    assert sorted(os.listdir(killed / 'chunks')) == ['chunks.json', 'chunks.npz']
    assert _invoke(*args, '--outdir', str(tmp_path / 'fresh')).exit_code == 0
    _assert_same_arrays(_bank(killed), _bank(tmp_path / 'fresh'))
    assert len(_bank(killed)) == 30

# ----------------------------------------------------------------------------
