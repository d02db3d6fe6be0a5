"""The SLURM templates in slurm/: what they run, and a real array job with a killed task on a private cluster.

The first tests execute the templates with bash and simulated SLURM variables, with PYTHON pointing at a
stub that records its arguments; the recorded command lines are then run in-process and their merged bank
compared with a single run. The real-cluster test starts its own slurmctld and slurmd; it needs root and
Debian's slurm-wlm, which .ci/run installs (see docs/slurm.md).
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from helpers import REPO_ROOT, assert_same_arrays, bank_arrays

import compute_volume_scalars
import legacy
from sampling.chunks import ChunkStore
from training.networks_stylegan2 import Generator

ARRAY = os.path.join(REPO_ROOT, 'slurm', 'compute_volume_scalars.sbatch')
MERGE = os.path.join(REPO_ROOT, 'slurm', 'merge_volume_scalars.sbatch')


@pytest.fixture(scope='module')
def tiny_pkl(tmp_path_factory):
    torch.manual_seed(0)
    G = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=32).eval()
    path = tmp_path_factory.mktemp('net') / 'tiny.pkl'
    legacy.save_network_pkl(path, G=G, G_ema=G)
    return str(path)


def _job_args(pkl, outdir):
    return ['--network', pkl, '--num', '5', '--space', 'style', '--method', 'exact', '--top-k', '3',
            '--chunk-size', '2', '--outdir', str(outdir), '--device', 'cpu']



def _run_template(script, args, tmp_path, **slurm_env):
    """Run a template with bash; returns (exit code, stderr, [cwd, argv...] recorded by the PYTHON stub)."""
    record = tmp_path / 'record.txt'
    stub = tmp_path / 'python-stub'
    stub.write_text('#!/bin/sh\npwd > "$RECORD"\nprintf "%s\\n" "$@" >> "$RECORD"\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    env.update(PYTHON=str(stub), RECORD=str(record), SLURM_SUBMIT_DIR=REPO_ROOT, **slurm_env)
    if record.exists():
        record.unlink()
    proc = subprocess.run(['bash', script, *args], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=60)
    lines = record.read_text().splitlines() if record.exists() else []
    return proc.returncode, proc.stderr, lines


def test_templates_run_the_shard_and_merge_commands(tiny_pkl, tmp_path):
    args = _job_args(tiny_pkl, tmp_path / 'sharded')
    commands = []
    for task in ('0', '1'):
        code, err, lines = _run_template(ARRAY, args, tmp_path, SLURM_ARRAY_TASK_ID=task, SLURM_ARRAY_TASK_COUNT='2',
                                         SLURM_ARRAY_TASK_MIN='0')
        assert code == 0, err
        assert lines[0] == REPO_ROOT   # Runs from the submission directory (the repository root).
        assert lines[1:] == ['compute_volume_scalars.py', *args, '--shard', f'{task}/2']
        commands.append(lines[2:])
    code, err, lines = _run_template(MERGE, args, tmp_path)
    assert code == 0, err
    assert lines[1:] == ['compute_volume_scalars.py', *args, '--merge', '--device=cpu']
    commands.append(lines[2:])

    for command in commands:   # What the jobs would run, run here.
        result = CliRunner().invoke(compute_volume_scalars.main, command)
        assert result.exit_code == 0, result.output
    single = CliRunner().invoke(compute_volume_scalars.main, _job_args(tiny_pkl, tmp_path / 'single'))
    assert single.exit_code == 0, single.output
    assert_same_arrays(bank_arrays(tmp_path / 'sharded' / 'volumes.npz'),
                       bank_arrays(tmp_path / 'single' / 'volumes.npz'))


def test_array_template_refuses_non_arrays_and_offset_ranges(tiny_pkl, tmp_path):
    args = _job_args(tiny_pkl, tmp_path / 'out')
    code, err, lines = _run_template(ARRAY, args, tmp_path)
    assert code == 2 and 'array' in err and lines == []
    code, err, lines = _run_template(ARRAY, args, tmp_path, SLURM_ARRAY_TASK_ID='3', SLURM_ARRAY_TASK_COUNT='1',
                                     SLURM_ARRAY_TASK_MIN='3')
    assert code == 2 and '--array=0-' in err and lines == []

# ----------------------------------------------------------------------------
# A real SLURM run: a private single-node cluster, a 3-task array with one task killed and resubmitted.
# It needs Debian's slurm-wlm and root; .ci/run installs the package and sets REQUIRE_SLURM_TESTS=1, under
# which anything missing is a failure, not a skip.

_REAL_SLURM_MISSING = [
    reason for reason, missing in (
        ('sbatch is not on PATH (Debian: apt-get install -y slurm-wlm)', shutil.which('sbatch') is None),
        ('slurmctld/slurmd are not installed (Debian: apt-get install -y slurm-wlm)',
         not (shutil.which('slurmctld') or os.path.exists('/usr/sbin/slurmctld'))),
        ('it must run as root (it starts its own slurmd)', hasattr(os, 'geteuid') and os.geteuid() != 0),
    ) if missing]


def _require_slurm():
    if _REAL_SLURM_MISSING:
        reason = 'real SLURM test: ' + '; '.join(_REAL_SLURM_MISSING)
        if os.environ.get('REQUIRE_SLURM_TESTS') == '1':
            pytest.fail(reason + ' (REQUIRE_SLURM_TESTS=1)')
        pytest.skip(reason + ' (.ci/run installs slurm-wlm and runs it)')


def _free_ports(count):
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in socks]


def _daemon(name):
    return shutil.which(name) or os.path.join('/usr/sbin', name)


def _wait(predicate, timeout, what, interval=0.5):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(interval)


@pytest.fixture
def private_cluster(tmp_path):
    """A single-node cluster of our own: generated slurm.conf, auth/none, free ports, state under tmp_path."""
    _require_slurm()
    root = tmp_path / 'slurm'
    (root / 'state').mkdir(parents=True)
    (root / 'spool').mkdir()
    host = socket.gethostname().split('.')[0]
    ctld_port, d_port = _free_ports(2)
    conf = root / 'slurm.conf'
    conf.write_text('\n'.join([
        'ClusterName=voltest', f'SlurmctldHost={host}(127.0.0.1)', 'SlurmUser=root', 'SlurmdUser=root',
        'AuthType=auth/none', 'CredType=cred/none', f'SlurmctldPort={ctld_port}', f'SlurmdPort={d_port}',
        f'StateSaveLocation={root}/state', f'SlurmdSpoolDir={root}/spool',
        f'SlurmctldPidFile={root}/slurmctld.pid', f'SlurmdPidFile={root}/slurmd.pid',
        f'SlurmctldLogFile={root}/slurmctld.log', f'SlurmdLogFile={root}/slurmd.log',
        'ProctrackType=proctrack/linuxproc', 'TaskPlugin=task/none', 'SelectType=select/cons_tres',
        'SelectTypeParameters=CR_CPU', 'SchedulerType=sched/builtin', 'MpiDefault=none', 'ReturnToService=2',
        'JobCompType=jobcomp/none', 'AccountingStorageType=accounting_storage/none', 'PlugStackConfig=/dev/null',
        # Four CPUs even on a 2-core machine (the node's real count is overridden): the three array tasks then
        # start together, and the test waits on fewer interpreter start-ups in a row.
        'SlurmdParameters=config_overrides',
        f'NodeName={host} NodeAddr=127.0.0.1 CPUs={max(4, os.cpu_count())} State=UNKNOWN',
        'PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP', '']))
    env = dict(os.environ, SLURM_CONF=str(conf))
    for key in [k for k in env if k.startswith('SLURM_') and k != 'SLURM_CONF']:
        del env[key]
    subprocess.run([_daemon('slurmctld'), '-f', str(conf), '-i'], env=env, check=True, timeout=60)
    try:
        subprocess.run([_daemon('slurmd'), '-f', str(conf)], env=env, check=True, timeout=60)

        def idle():
            out = subprocess.run(['sinfo', '-h', '-o', '%t'], env=env, capture_output=True, text=True)
            return out.stdout.strip() == 'idle'
        _wait(idle, 60, 'the private cluster to come up')
        yield env, root
    finally:
        subprocess.run(['scontrol', 'shutdown'], env=env, capture_output=True, timeout=60)
        for name in ('slurmd.pid', 'slurmctld.pid'):   # Only the daemons this fixture started.
            with contextlib.suppress(OSError, ValueError):
                pid = int((root / name).read_text().strip())
                time.sleep(1)
                os.kill(pid, 9)


def _queue_empty(env, *job_ids):
    queue = subprocess.run(['squeue', '-h', '-j', ','.join(job_ids)], env=env, capture_output=True, text=True)
    return queue.returncode == 0 and queue.stdout.strip() == ''


@pytest.mark.slurm
def test_real_slurm_array_with_a_killed_and_resubmitted_task(private_cluster, tiny_pkl, tmp_path):
    """sbatch --array=0-2; scancel task 1 while it computes; submit the array again, then the merge: the
    merged bank equals a one-process run, and the work of the finished tasks is not redone."""
    env, root = private_cluster
    env = dict(env, PYTHON=sys.executable, OMP_NUM_THREADS='1')
    outdir = tmp_path / 'sharded'
    # Pixel-space exact Jacobians, 2 latents per chunk: shard 1 owns chunks 1, 4 and 7, and is killed as soon
    # as it claims chunk 1 (a second or more of work left).
    args = ['--network', tiny_pkl, '--num', '18', '--space', 'pixel', '--method', 'exact', '--top-k', '3',
            '--chunk-size', '2', '--batch', '1', '--outdir', str(outdir), '--device', 'cpu']
    # Override the template's GPU, CPU and time requests for this CPU-only node.
    common = ['--gres=none', '--cpus-per-task=1', '--mem=0', '--time=10', '--parsable']

    def submit(*extra):
        proc = subprocess.run(['sbatch', *common, *extra], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(';')[0]

    first = submit('--array=0-2', f'--output={root}/first-%A_%a.out', ARRAY, *args)
    chunk_dir = outdir / 'chunks'
    _wait(lambda: (chunk_dir / 'chunk-000001.claim').exists(), 240, 'task 1 to start its first chunk', 0.02)
    subprocess.run(['scancel', f'{first}_1'], env=env, check=True, timeout=60)
    _wait(lambda: _queue_empty(env, first), 240, 'the first array')
    first_logs = {task: (root / f'first-{first}_{task}.out').read_text() for task in range(3)}
    assert 'Shard 1/3' not in first_logs[1], 'task 1 finished before it could be killed: ' + first_logs[1]
    assert 'Shard 0/3: computed 3' in first_logs[0] and 'Shard 2/3: computed 3' in first_logs[2], first_logs
    done = {name for name in os.listdir(chunk_dir) if name.endswith('.npz')}
    assert len(done) < 9, done

    # The documented recovery: the same array again (finished shards exit at once), then the merge.
    second = submit('--array=0-2', f'--output={root}/second-%A_%a.out', ARRAY, *args)
    merge = submit(f'--dependency=afterok:{second}', f'--output={root}/merge-%j.out', MERGE, *args)
    _wait(lambda: _queue_empty(env, second, merge), 300, 'the second array and the merge')
    logs = '\n'.join(p.read_text() for p in sorted(root.glob('*.out')))
    assert (outdir / 'volumes.npz').exists(), logs
    second_logs = {task: (root / f'second-{second}_{task}.out').read_text() for task in range(3)}
    assert 'Shard 0/3: computed 0 chunk(s)' in second_logs[0] and 'Shard 2/3: computed 0' in second_logs[2], logs
    assert f'Shard 1/3: computed {9 - len(done)} chunk(s)' in second_logs[1], logs
    # The killed task's claim and temporary file (if it had any) are gone; every chunk is there once, in the
    # pack the merge leaves instead of the chunk files.
    assert sorted(os.listdir(chunk_dir)) == ['chunks.json', 'chunks.npz'], logs
    store = ChunkStore(chunk_dir, 9, json.loads((chunk_dir / 'chunks.json').read_text())['config'])
    assert store.done() == list(range(9)) and store.pending() == [], logs

    single = CliRunner().invoke(compute_volume_scalars.main, [*args[:-4], '--outdir', str(tmp_path / 'single'),
                                                              '--device', 'cpu'])
    assert single.exit_code == 0, single.output
    assert_same_arrays(bank_arrays(outdir / 'volumes.npz'), bank_arrays(tmp_path / 'single' / 'volumes.npz'))
