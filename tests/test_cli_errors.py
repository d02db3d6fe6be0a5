"""Bad input to every script: one line, a non-zero exit, no traceback (issue 17, section 3).

One table of cases, each run in-process with click's CliRunner. A case names the script, its arguments (built
from the shared fixtures: a tiny network, a valid volume bank, damaged files of every kind, a regular file to put
an --outdir under, a read-only folder) and a fragment the error line must contain.
"""

import contextlib
import json
import os
import pickle
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import tiny_generator

import calc_metrics
import compute_volume_scalars
import dataset_tool
import demo_samplers
import generate
import generate_hubness
import generate_magnet
import legacy
import train
import train_classifier
from sampling.latents import LatentBank, file_sha256, make_meta
from training.dataset_convert import write_dataset_zip


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Every input file the cases refer to, by name."""
    root = tmp_path_factory.mktemp('inputs')
    G = tiny_generator()
    net = root / 'tiny.pkl'
    legacy.save_network_pkl(net, G=G, G_ema=G)

    from torch_utils import persistence
    version = persistence._version
    persistence._version = 5   # A snapshot written by a (hypothetical) older persistence format.
    try:
        legacy.save_network_pkl(root / 'v5.pkl', G=G, G_ema=G)
    finally:
        persistence._version = version

    rng = np.random.default_rng(0)
    paths = dict(net=str(net), v5=str(root / 'v5.pkl'))

    def put(name, data):
        path = root / name
        path.write_bytes(data)
        paths[name] = str(path)

    # A valid bank, and damaged or foreign versions of it.
    bank = LatentBank(rng.standard_normal([8, G.z_dim]).astype(np.float32),
                      svds=np.sort(rng.random([8, 3]).astype(np.float32), axis=1)[:, ::-1].copy(),
                      meta=make_meta(network_sha256=file_sha256(net), z_dim=G.z_dim, c_dim=0))
    bank.save(root / 'bank.npz')
    paths['bank'] = str(root / 'bank.npz')
    good = (root / 'bank.npz').read_bytes()
    put('bank-truncated.npz', good[:len(good) // 2])
    put('bank-empty.npz', b'')
    put('bank-text.npz', b'latents,svds\n1,2\n')
    with open(root / 'bank.npy', 'wb') as f:
        np.save(f, bank.latents)
    paths['bank.npy'] = str(root / 'bank.npy')
    with open(root / 'bank-list-meta.npz', 'wb') as f:
        np.savez(f, latents=bank.latents, svds=bank['svds'], labels=np.zeros([0], np.float32),
                 meta=np.array(json.dumps([1, 2, 3])))
    paths['bank-list-meta.npz'] = str(root / 'bank-list-meta.npz')

    # --projected-w files.
    ws = rng.standard_normal([2, G.num_ws, G.w_dim]).astype(np.float32)
    with open(root / 'w.npz', 'wb') as f:
        np.savez(f, w=ws)
    good_w = (root / 'w.npz').read_bytes()
    put('w-text.npz', b'w = [1, 2, 3]\n')
    put('w-empty.npz', b'')
    put('w-truncated.npz', good_w[:len(good_w) - 40])
    put('w-pickle.npz', pickle.dumps({'w': ws}))
    with open(root / 'w.npy', 'wb') as f:
        np.save(f, ws)
    paths['w.npy'] = str(root / 'w.npy')
    with open(root / 'w-nokey.npz', 'wb') as f:
        np.savez(f, ws=ws)
    paths['w-nokey.npz'] = str(root / 'w-nokey.npz')
    with open(root / 'w-object.npz', 'wb') as f:
        np.savez(f, w=np.array([{'a': 1}, None], dtype=object))
    paths['w-object.npz'] = str(root / 'w-object.npz')
    nan_w = ws.copy()
    nan_w[1, 0, 0] = np.nan
    with open(root / 'w-nan.npz', 'wb') as f:
        np.savez(f, w=nan_w)
    paths['w-nan.npz'] = str(root / 'w-nan.npz')

    # A tiny dataset for train.py and a regular file to put folders under.
    images = rng.integers(0, 255, [8, 16, 16, 1], dtype=np.uint8)
    write_dataset_zip(root / 'data.zip', images, progress=False)
    paths['data'] = str(root / 'data.zip')
    put('a-file', b'I am a regular file')
    paths['under-file'] = os.path.join(paths['a-file'], 'out')
    return paths


@pytest.fixture(scope='module')
def readonly(tmp_path_factory):
    """A folder nothing can be written in: a read-only tmpfs as root (where mounting is allowed), else a folder
    without write permission."""
    path = tmp_path_factory.mktemp('readonly')
    mounted = False
    if os.geteuid() == 0 and shutil.which('mount'):
        mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', str(path)],
                                 capture_output=True).returncode == 0
    if not mounted:
        path.chmod(0o555)
    probe = path / 'probe'
    with contextlib.suppress(OSError):
        probe.write_bytes(b'x')
    if probe.exists():   # Root without the right to mount: permission bits do not stop it.
        probe.unlink()
        path.chmod(0o755)
        pytest.fail('cannot make a read-only folder here (root without CAP_SYS_ADMIN)')
    yield str(path / 'out')
    if mounted:
        subprocess.run(['umount', str(path)], check=False)
    else:
        path.chmod(0o755)


def _net(f):
    return ['--network', f['net'], '--device', 'cpu']


def _gen(f, *args, outdir=None):
    return [*_net(f), '--outdir', outdir or os.path.join(os.path.dirname(f['net']), 'gen-out'), *args]


def _magnet(f, *args, bank=None, outdir=None):
    return [*_net(f), '--bank', bank or f['bank'], '--num', '2',
            '--outdir', outdir or os.path.join(os.path.dirname(f['net']), 'magnet-out'), *args]


def _hub(f, *args, outdir=None):
    return [*_net(f), '--num', '1', '--batch-size', '16', '--k', '2', '--top', '1', '--max-batches', '1',
            '--no-images', '--outdir', outdir or os.path.join(os.path.dirname(f['net']), 'hub-out'), *args]


def _volume(f, outdir):
    return [*_net(f), '--num', '2', '--space', 'style', '--method', 'exact', '--top-k', '2', '--outdir', outdir]


def _metrics(f, spec):
    return [*_net(f), '--metrics', 'none', '--verbose', 'false', '--sampler', spec]


def _train(f, *args, outdir=None):
    return ['--data', f['data'], '--outdir', outdir or os.path.join(os.path.dirname(f['net']), 'runs'),
            '--cbase', '256', '--cmax', '32', '--z-dim', '16', '--w-dim', '16', '--map', '1', '--batch', '4',
            '--kimg', '0.004', '--device', 'cpu', *args]


# (id, script module, arguments from (files, readonly folder), fragment of the error line)
CASES = [
    ('seeds-negative', generate, lambda f, ro: _gen(f, '--seeds=-1'), 'outside 0..4294967295'),
    ('seeds-2**32', generate, lambda f, ro: _gen(f, '--seeds=4294967296'), 'outside 0..4294967295'),
    ('seeds-huge-range', generate, lambda f, ro: _gen(f, '--seeds=0-99999999999'), 'at most 1,000,000'),
    ('projected-w-text', generate, lambda f, ro: _gen(f, '--projected-w', f['w-text.npz']), 'not an .npz archive'),
    ('projected-w-npy', generate, lambda f, ro: _gen(f, '--projected-w', f['w.npy']), 'single .npy array'),
    ('projected-w-no-w', generate, lambda f, ro: _gen(f, '--projected-w', f['w-nokey.npz']), "no array 'w'"),
    ('projected-w-object', generate, lambda f, ro: _gen(f, '--projected-w', f['w-object.npz']), 'Python objects'),
    ('projected-w-truncated', generate, lambda f, ro: _gen(f, '--projected-w', f['w-truncated.npz']),
     'truncated or damaged'),
    ('projected-w-pickle', generate, lambda f, ro: _gen(f, '--projected-w', f['w-pickle.npz']), 'is a pickle'),
    ('projected-w-empty', generate, lambda f, ro: _gen(f, '--projected-w', f['w-empty.npz']), 'is empty'),
    ('projected-w-nan', generate, lambda f, ro: _gen(f, '--projected-w', f['w-nan.npz']), 'NaN'),
    ('generate-trunc-nan', generate, lambda f, ro: _gen(f, '--seeds=0', '--trunc=nan'), 'not a finite number'),
    ('generate-trunc-inf', generate, lambda f, ro: _gen(f, '--seeds=0', '--trunc=inf'), 'not a finite number'),
    ('generate-rotate-nan', generate, lambda f, ro: _gen(f, '--seeds=0', '--rotate=nan'), 'not a finite number'),
    ('generate-translate-inf', generate, lambda f, ro: _gen(f, '--seeds=0', '--translate=inf,0'), 'finite'),
    ('generate-outdir-under-file', generate, lambda f, ro: _gen(f, '--seeds=0', outdir=f['under-file']),
     'regular file'),
    ('generate-outdir-readonly', generate, lambda f, ro: _gen(f, '--seeds=0', outdir=ro), '--outdir'),
    ('version-5-snapshot', generate, lambda f, ro: ['--network', f['v5'], '--seeds=0', '--outdir', ro],
     'reads version 6 (type class), the file has version 5'),
    ('version-5-snapshot-code', generate,
     lambda f, ro: ['--network', f['v5'], '--seeds=0', '--outdir', ro, '--allow-pickle-code'],
     'reads version 6, the file has version 5'),

    ('hubness-trunc-nan', generate_hubness, lambda f, ro: _hub(f, '--trunc=nan'), 'not a finite number'),
    ('hubness-trunc-inf', generate_hubness, lambda f, ro: _hub(f, '--trunc=inf'), 'not a finite number'),
    ('hubness-threshold-nan', generate_hubness, lambda f, ro: _hub(f, '--threshold=nan'), 'not a finite number'),
    ('hubness-outdir-under-file', generate_hubness, lambda f, ro: _hub(f, outdir=f['under-file']), 'regular file'),
    ('hubness-outdir-readonly', generate_hubness, lambda f, ro: _hub(f, outdir=ro), '--outdir'),

    ('magnet-trunc-nan', generate_magnet, lambda f, ro: _magnet(f, '--trunc=nan'), 'not a finite number'),
    ('magnet-trunc-inf', generate_magnet, lambda f, ro: _magnet(f, '--trunc=inf'), 'not a finite number'),
    ('magnet-rho-nan', generate_magnet, lambda f, ro: _magnet(f, '--rho=nan'), 'not a finite number'),
    ('magnet-rho-inf', generate_magnet, lambda f, ro: _magnet(f, '--rho=inf'), 'not a finite number'),
    ('magnet-mix-nan', generate_magnet, lambda f, ro: _magnet(f, '--mix=nan'), 'not a finite number'),
    ('magnet-bank-truncated', generate_magnet, lambda f, ro: _magnet(f, bank=f['bank-truncated.npz']),
     'bank-truncated.npz is truncated or damaged'),
    ('magnet-bank-npy', generate_magnet, lambda f, ro: _magnet(f, bank=f['bank.npy']), 'single .npy array'),
    ('magnet-bank-empty', generate_magnet, lambda f, ro: _magnet(f, bank=f['bank-empty.npz']), 'is empty'),
    ('magnet-bank-text', generate_magnet, lambda f, ro: _magnet(f, bank=f['bank-text.npz']),
     'bank-text.npz is not an .npz archive'),
    ('magnet-bank-meta-list', generate_magnet, lambda f, ro: _magnet(f, bank=f['bank-list-meta.npz']),
     'must be a JSON object'),
    ('magnet-outdir-under-file', generate_magnet, lambda f, ro: _magnet(f, outdir=f['under-file']), 'regular file'),
    ('magnet-outdir-readonly', generate_magnet, lambda f, ro: _magnet(f, outdir=ro), '--outdir'),

    ('volume-outdir-under-file', compute_volume_scalars, lambda f, ro: _volume(f, f['under-file']), 'regular file'),
    ('volume-outdir-readonly', compute_volume_scalars, lambda f, ro: _volume(f, ro), '--outdir'),

    ('metrics-polarity-truncated', calc_metrics, lambda f, ro: _metrics(f, f'polarity:bank={f["bank-truncated.npz"]}'),
     'truncated or damaged'),
    ('metrics-bank-empty', calc_metrics, lambda f, ro: _metrics(f, f'bank:{f["bank-empty.npz"]}'), 'is empty'),
    ('metrics-bank-npy', calc_metrics, lambda f, ro: _metrics(f, f'bank:{f["bank.npy"]}'), 'single .npy array'),
    ('metrics-bank-text', calc_metrics, lambda f, ro: _metrics(f, f'bank:{f["bank-text.npz"]}'), 'bank-text.npz'),
    ('metrics-bank-meta-list', calc_metrics, lambda f, ro: _metrics(f, f'bank:{f["bank-list-meta.npz"]}'),
     'must be a JSON object'),

    ('metrics-fid-stats-empty', calc_metrics,
     lambda f, ro: [*_metrics(f, 'random'), '--fid-stats', f['bank-empty.npz']], '--fid-stats'),

    ('metrics-out-under-file', calc_metrics,
     lambda f, ro: [*_metrics(f, 'random'), '--out', os.path.join(f['under-file'], 'm.jsonl')], 'regular file'),
    ('demo-outdir-under-file', demo_samplers,
     lambda f, ro: [*_net(f), '--skip-metrics', '--outdir', f['under-file']], 'regular file'),
    ('classifier-out-readonly', train_classifier,
     lambda f, ro: ['--data', f['data'], '--out', os.path.join(ro, 'c.pt')], '--out'),

    ('train-glr-nan', train, lambda f, ro: _train(f, '--glr', 'nan'), 'not a finite number'),
    ('train-gamma-inf', train, lambda f, ro: _train(f, '--gamma', 'inf'), 'not a finite number'),
    ('train-outdir-under-file', train, lambda f, ro: _train(f, outdir=f['under-file']), 'regular file'),
    ('train-outdir-readonly', train, lambda f, ro: _train(f, outdir=ro), '--outdir'),

    ('dataset-dest-under-file', dataset_tool,
     lambda f, ro: ['--source', f['data'], '--dest', os.path.join(f['under-file'], 'x.zip')], 'regular file'),
    ('dataset-dest-readonly', dataset_tool,
     lambda f, ro: ['--source', f['data'], '--dest', os.path.join(ro, 'x.zip')], '--dest'),
]


@pytest.mark.parametrize('script, make_args, fragment', [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(files, readonly, script, make_args, fragment):
    runs = os.path.join(os.path.dirname(files['net']), 'runs')
    shutil.rmtree(runs, ignore_errors=True)
    command = getattr(script, 'main', None) or script.convert_network_pickle
    result = CliRunner().invoke(command, [str(a) for a in make_args(files, readonly)])
    output = result.output
    assert result.exit_code != 0, output
    assert result.exception is None or isinstance(result.exception, SystemExit), (result.exception, output)
    assert 'Traceback' not in output and 'Aborted' not in output, output
    errors = [line for line in output.splitlines() if line.startswith('Error')]
    assert len(errors) == 1 and fragment in errors[0], output
    assert not os.path.exists(runs), 'train.py created its run folder before refusing the options'


def test_outdir_checks_leave_no_files(files, tmp_path):
    """A refused run creates nothing: neither the output folder nor a temporary file beside it."""
    outdir = tmp_path / 'never'
    result = CliRunner().invoke(generate.main, _gen(files, '--seeds=0', '--trunc=nan', outdir=str(outdir)))
    assert result.exit_code != 0 and os.listdir(tmp_path) == []


def test_truncated_zip_member_is_caught_by_its_crc(files, tmp_path):
    """A bank whose bytes were altered in place (same length) is refused by the zip CRC, naming the file."""
    data = bytearray(open(files['bank'], 'rb').read())
    with zipfile.ZipFile(files['bank']) as archive:
        info = archive.getinfo('latents.npy')
    flip = info.header_offset + 30 + len(info.filename) + info.file_size - 1   # Last byte of the member's data.
    data[flip] ^= 0xFF
    path = tmp_path / 'flipped.npz'
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(generate_magnet.main, _magnet(files, bank=str(path), outdir=str(tmp_path / 'o')))
    assert result.exit_code != 0 and 'flipped.npz' in result.output and 'Traceback' not in result.output

# ----------------------------------------------------------------------------
# One user-error type.


def test_every_script_reports_user_errors_through_one_type():
    """Every script's command prints the toolkit's one user-error type as one line, and every error type the
    library raises for bad input derives from it."""
    import importlib

    import click

    from dnnlib.util import UserError
    from sampling import cli

    scripts = [name[:-3] for name in sorted(os.listdir(os.path.dirname(os.path.dirname(__file__))))
               if name.endswith('.py') and name not in ('legacy.py',)]  # legacy.py: the networks layer's own CLI.
    commands = []
    for name in scripts:
        main = getattr(importlib.import_module(name), 'main', None)
        if isinstance(main, click.Group):
            commands += [(f'{name} {sub}', cmd) for sub, cmd in main.commands.items()]
        elif isinstance(main, click.Command):
            commands.append((name, main))
    assert len(commands) >= 15
    assert [name for name, cmd in commands if not isinstance(cmd, cli.Command)] == []

    from demos.comparison import DemoError
    from legacy import NetworkLoadError
    from metrics.evaluation import EvaluationError
    from metrics.metric_utils import DetectorError
    from paper_tables.runner import TableError
    from sampling.imagenet import UnknownClassName
    from sampling.latents import FileFormatError
    from sampling.samplers import SamplerSpecError
    from training.convert_progan import ConversionError
    from training.dataset import DatasetError
    from training.load_biggan import CheckpointError as BigGANCheckpointError
    from training.nvae_checkpoint import CheckpointError as NVAECheckpointError
    from training.training_loop import ResumeError
    for error in (DemoError, NetworkLoadError, EvaluationError, DetectorError, TableError, UnknownClassName,
                  FileFormatError, SamplerSpecError, ConversionError, DatasetError, BigGANCheckpointError,
                  NVAECheckpointError, ResumeError, cli.UserError):
        assert issubclass(error, UserError), error

    @click.command(cls=cli.Command)
    @cli.debug_option
    def fails():
        raise SamplerSpecError('bad sampler spec: what is wrong\nsecond line')
    result = CliRunner().invoke(fails, [])
    assert result.exit_code == 1 and result.output == 'Error: bad sampler spec: what is wrong\n'
    assert isinstance(CliRunner().invoke(fails, ['--debug']).exception, SamplerSpecError)
