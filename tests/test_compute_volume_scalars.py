"""compute_volume_scalars.py on tiny network pickles made in the test.

References are independent of the code under test where possible: latents from NumPy's RandomState
directly, singular values from float64 central finite differences of float64 copies of the networks, the
network hash from hashlib. Sharding and resumption are checked bit for bit against an uninterrupted run.
"""

import hashlib
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

import compute_volume_scalars
import legacy
from sampling import volume, volume_job

Z_DIM = 16


@pytest.fixture(scope='module')
def nets(tmp_path_factory):
    folder = tmp_path_factory.mktemp('nets')
    out = {}
    for name, c_dim in (('uncond', 0), ('cond', 3)):
        G = tiny_generator(c_dim=c_dim, seed=c_dim)
        path = str(folder / f'{name}.pkl')
        legacy.save_network_pkl(path, G=G, G_ema=G)
        out[name] = (path, G)
    return out


def _run(*args, env=None):
    result = CliRunner().invoke(compute_volume_scalars.main, [str(a) for a in args] + ['--device', 'cpu'], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _load(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _fd_singular_values(fn, z, c, h):
    """Singular values of d fn(z, c) / dz at each row of z, by central differences (one batched float32 pass per row).

    The networks compute in float32 whatever their weights' dtype, so this is accurate to about 1e-3.
    """
    out = []
    for row, label in zip(torch.as_tensor(z), torch.as_tensor(c)):
        steps = torch.eye(row.numel()) * h
        with torch.no_grad():
            y = fn(torch.cat([row + steps, row - steps]), label[None].expand(2 * row.numel(), -1))
        y = y.reshape(2 * row.numel(), -1).to(torch.float64)
        jac = (y[:row.numel()] - y[row.numel():]) / (2 * h)
        out.append(np.linalg.svd(jac.numpy(), compute_uv=False))
    return np.stack(out)


def _sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()

# ----------------------------------------------------------------------------


def test_pixel_bank_layout_and_values(nets, tmp_path):
    path, G = nets['uncond']
    result = _run('--network', path, '--num', 3, '--seed', 7, '--space', 'pixel', '--method', 'exact', '--top-k', 6,
                  '--batch', 2, '--chunk-size', 2, '--outdir', tmp_path)
    assert result.exit_code == 0, result.output
    bank = _load(tmp_path / 'volumes.npz')   # The authors' keys, plain numpy, no pickle.
    svds, z = bank['svds'], bank['latents']
    assert svds.dtype == np.float32 and svds.shape == (3, 6)
    assert np.all(np.diff(svds, axis=1) <= 0)
    assert bank['labels'].shape == (0,)
    np.testing.assert_array_equal(z, np.random.RandomState(7).randn(3, Z_DIM).astype(np.float32))
    np.testing.assert_array_equal(bank['indices'], np.arange(3))

    # Same function in-process, all latents in one batch (the CLI used batches of 2).
    ref = volume.jacobian_singular_values(volume.make_space_fn(G, 'pixel'), torch.from_numpy(z), top_k=6).numpy()
    np.testing.assert_allclose(svds, ref, rtol=1e-5)
    # Independent: central differences of plain forward passes.
    fd = _fd_singular_values(lambda x, c: G(x, c, noise_mode='const'), z, np.zeros([3, 0], np.float32), h=1e-3)
    np.testing.assert_allclose(svds, fd[:, :6], rtol=5e-3)

    meta = json.loads(str(bank['meta'][()]))
    assert meta['network_sha256'] == _sha256(path)
    assert meta['space'] == 'pixel' and meta['z_dim'] == Z_DIM and meta['c_dim'] == 0
    extras = meta['extras']
    assert (extras['method'], extras['top_k'], extras['seed'], extras['dtype']) == ('exact', 6, 7, 'float32')
    assert extras['noise_mode'] == 'const' and extras['truncation_psi'] == 1
    assert 'torch' in meta['versions'] and 'compute_volume_scalars' in meta['command']


def test_conditional_class_all_style(nets, tmp_path):
    path, G = nets['cond']
    result = _run('--network', path, '--num', 2, '--seed', 3, '--space', 'style', '--method', 'exact', '--top-k', 5,
                  '--class', 'all', '--dtype', 'float64', '--chunk-size', 4, '--outdir', tmp_path)
    assert result.exit_code == 0, result.output
    bank = _load(tmp_path / 'volumes.npz')
    np.testing.assert_array_equal(bank['labels'].argmax(axis=1), [0, 0, 1, 1, 2, 2])
    assert bank['labels'].shape == (6, 3) and np.all(bank['labels'].sum(axis=1) == 1)
    np.testing.assert_array_equal(bank['latents'], np.random.RandomState(3).randn(6, Z_DIM).astype(np.float32))

    fd = _fd_singular_values(lambda x, c: G.mapping(x, c)[:, 0], bank['latents'], bank['labels'], h=1e-2)
    np.testing.assert_allclose(bank['svds'], fd[:, :5], rtol=5e-4)
    # The requested float64 is recorded, and the user is told that StyleGAN computes in float32 anyway.
    assert 'warning: --dtype float64' in result.output
    extras = json.loads(str(bank['meta'][()]))['extras']
    assert (extras['dtype'], extras['output_dtype']) == ('float64', 'float32')
    # The label matters: the same latent with another class has other singular values.
    assert not np.allclose(bank['svds'][0], bank['svds'][2])


def test_feature_space_with_torchscript_embedder(nets, tmp_path):
    path, G = nets['uncond']

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x, return_features: bool = False):
            feats = torch.tanh(self.conv(x / 128 - 1)).mean(dim=(2, 3))
            return feats if return_features else feats.sum(dim=1, keepdim=True)   # Logits-like: 1 value.

    torch.manual_seed(1)
    module = Embedder().eval()
    torch.jit.save(torch.jit.script(module), str(tmp_path / 'embed.pt'))
    result = _run('--network', path, '--num', 2, '--space', 'feature', '--embedder', tmp_path / 'embed.pt',
                  '--method', 'exact', '--top-k', 4, '--outdir', tmp_path / 'out')
    assert result.exit_code == 0, result.output
    bank = _load(tmp_path / 'out' / 'volumes.npz')
    f = volume.make_space_fn(G, 'feature', embedder=lambda x: module(x, return_features=True))
    ref = volume.jacobian_singular_values(f, torch.from_numpy(bank['latents']), top_k=4).numpy()
    np.testing.assert_allclose(bank['svds'], ref, rtol=1e-5)
    assert json.loads(str(bank['meta'][()]))['extras']['embedder_sha256'] == _sha256(tmp_path / 'embed.pt')


def test_shards_and_merge_equal_single_run(nets, tmp_path):
    path, _ = nets['uncond']
    args = ['--network', path, '--num', 7, '--seed', 5, '--space', 'style', '--method', 'projected',
            '--num-projections', 8, '--top-k', 4, '--chunk-size', 2, '--batch', 2]
    assert _run(*args, '--outdir', tmp_path / 'single').exit_code == 0

    sharded = tmp_path / 'sharded'
    # Shard 1 of 2 from the SLURM array variables, as in the sbatch template.
    result = _run(*args, '--outdir', sharded, env={'SLURM_ARRAY_TASK_ID': '1', 'SLURM_ARRAY_TASK_COUNT': '2'})
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(sharded / 'chunks')) == ['chunk-000001.npz', 'chunk-000003.npz', 'chunks.json']
    assert not (sharded / 'volumes.npz').exists()
    early = _run(*args, '--outdir', sharded, '--merge')
    assert early.exit_code != 0 and 'not finished' in early.output and 'Traceback' not in early.output
    assert _run(*args, '--outdir', sharded, '--shard', '0/2').exit_code == 0
    assert _run(*args, '--outdir', sharded, '--merge').exit_code == 0

    single, merged = _load(tmp_path / 'single' / 'volumes.npz'), _load(sharded / 'volumes.npz')
    assert sorted(single) == sorted(merged)
    for key in single:
        if key != 'meta':   # The metadata records the command line, which differs.
            assert single[key].dtype == merged[key].dtype and single[key].tobytes() == merged[key].tobytes(), key
    assert single['svds'].shape == (7, 4)


def test_kill_and_resume_equal_single_run(nets, tmp_path):
    path, _ = nets['uncond']
    args = ['--network', path, '--num', 60, '--space', 'style', '--method', 'exact', '--top-k', 3,
            '--chunk-size', 2, '--batch', 2]
    resumed = tmp_path / 'resumed'
    proc = subprocess.Popen([sys.executable, 'compute_volume_scalars.py', *map(str, args), '--outdir', str(resumed),
                             '--device', 'cpu'], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not (resumed / 'chunks' / 'chunk-000000.npz').exists():
            assert proc.poll() is None, 'the run ended before writing its first chunk'
            assert time.monotonic() < deadline, 'no chunk written in time'
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = sorted(p for p in os.listdir(resumed / 'chunks') if p.startswith('chunk-') and p.endswith('.npz'))
    assert 1 <= len(done) < 30, 'the run was not interrupted'
    assert not (resumed / 'volumes.npz').exists()
    finished = {int(p[6:12]) for p in done}

    real_compute, computed = volume_job.VolumeJob.compute_chunk, []

    def recording(job, index, progress=None):
        computed.append(index)
        return real_compute(job, index, progress=progress)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(volume_job.VolumeJob, 'compute_chunk', recording)
        assert _run(*args, '--outdir', resumed).exit_code == 0
    assert sorted(computed + sorted(finished)) == list(range(30))   # Finished chunks are kept, not recomputed.
    # The finished run leaves its chunks in one pack, not a file per chunk.
    assert sorted(os.listdir(resumed / 'chunks')) == ['chunks.json', 'chunks.npz']
    assert _run(*args, '--outdir', tmp_path / 'single').exit_code == 0
    a, b = _load(resumed / 'volumes.npz'), _load(tmp_path / 'single' / 'volumes.npz')
    for key in ('svds', 'latents', 'labels', 'seeds', 'indices'):
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
    assert a['svds'].shape == (60, 3)


def test_refusals(nets, tmp_path):
    path, _ = nets['uncond']
    base = ['--network', path, '--num', 2, '--space', 'style', '--outdir', tmp_path]
    cases = [
        (['--top-k', Z_DIM], 'null'),                           # K = z_dim includes the radial null direction.
        (['--top-k', 4, '--space', 'feature'], '--embedder'),
        (['--top-k', 4, '--resize', 8], '--resize'),
        (['--top-k', 4, '--shard', '2/2'], 'shard'),
        (['--top-k', 4, '--class', 'some'], "'all'"),
        (['--top-k', 4, '--merge'], 'not finished'),
    ]
    for extra, needle in cases:
        result = _run(*base, *extra)
        assert result.exit_code != 0, extra
        assert needle in result.output and 'Traceback' not in result.output, (extra, result.output)
    assert _run(*base, '--top-k', 4).exit_code == 0
    other = _run(*base, '--top-k', 3)   # Same outdir, other settings: refused, finished chunks untouched.
    assert other.exit_code != 0 and 'other settings' in other.output and 'top_k' in other.output
    assert _run(*base, '--top-k', 4, '--batch', 1).exit_code == 0   # The batch size is not part of the job.
