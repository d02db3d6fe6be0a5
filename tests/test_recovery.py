"""Runs recover from damaged, foreign and left-over files, and share work through claims (issue 17, section 4).

Each recovery case damages an output folder the way a crash, a full disk or a careless copy would, re-runs the
same command, and checks that the run says what it found, recomputes that piece, and ends with exactly the
bank (and images) of an uninterrupted run.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import REPO_ROOT, assert_same_arrays, bank_arrays, tiny_generator

import compute_volume_scalars
import dnnlib
import generate_hubness
import legacy
from sampling import chunks as C
from sampling.latents import LatentBank

# ----------------------------------------------------------------------------
# The chunk store alone: a toy job whose chunk i is drawn from seed 1000 + i.

NUM_CHUNKS, CONFIG = 5, dict(job='toy', seed=1000)


def _compute(index, seed=1000):
    z = np.random.RandomState(seed + index).randn(3, 4).astype(np.float32)
    return LatentBank(z, score=(z ** 2).sum(axis=1), meta=dict(chunk=index))


def _uninterrupted(tmp_path):
    store = C.ChunkStore(tmp_path / 'uninterrupted', NUM_CHUNKS, CONFIG)
    store.run(_compute, progress=False)
    return store.merge()


def _flip_last_data_byte(path, member):
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data = bytearray(open(path, 'rb').read())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size - 1] ^= 0x01
    open(path, 'wb').write(bytes(data))


def test_damaged_foreign_and_renamed_chunks_are_recomputed(tmp_path):
    notes = []
    store = C.ChunkStore(tmp_path / 'run', NUM_CHUNKS, CONFIG, log=notes.append)
    store.run(_compute, progress=False)
    other = C.ChunkStore(tmp_path / 'other-seed', NUM_CHUNKS, dict(CONFIG, seed=2000))
    other.run(lambda i: _compute(i, seed=2000), progress=False)

    data = open(store.path(0), 'rb').read()
    open(store.path(0), 'wb').write(data[:len(data) // 2])                 # truncated
    open(store.path(1), 'wb').write(b'')                                    # empty
    shutil.copy(other.path(2), store.path(2))                               # copied from a run with another seed
    shutil.copy(store.path(4), store.path(3))                               # chunk 4 renamed to chunk 3
    _flip_last_data_byte(store.path(4), 'score.npy')                       # one bit of the data flipped

    calls = []
    rerun = C.ChunkStore(tmp_path / 'run', NUM_CHUNKS, CONFIG, log=notes.append)
    assert rerun.run(lambda i: calls.append(i) or _compute(i), progress=False) == [0, 1, 2, 3, 4]
    assert calls == [0, 1, 2, 3, 4]
    said = '\n'.join(notes)
    assert 'chunk-000000.npz is damaged' in said and 'chunk-000001.npz is damaged' in said
    assert 'chunk-000002.npz belongs to another job' in said
    assert 'chunk-000003.npz is chunk 4 of this job' in said
    assert 'chunk-000004.npz is damaged' in said
    assert rerun.merge().equals(_uninterrupted(tmp_path))
    assert rerun.run(lambda i: pytest.fail('recomputed a sound chunk'), progress=False) == []


def test_damaged_manifest_is_rewritten_and_chunks_still_checked(tmp_path):
    notes = []
    store = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)
    store.run(_compute, progress=False)
    (tmp_path / 'chunks.json').write_text('{"format": 2, "num_ch')
    rerun = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG, log=notes.append)
    assert 'chunks.json is damaged' in notes[0]
    assert rerun.pending() == [] and rerun.merge().equals(_uninterrupted(tmp_path))
    # Chunks of this folder do not pass for another job's even though the manifest had to be rewritten.
    (tmp_path / 'chunks.json').unlink()
    foreign = C.ChunkStore(tmp_path, NUM_CHUNKS, dict(CONFIG, seed=7), log=notes.append)
    assert foreign.pending() == list(range(NUM_CHUNKS))


def test_stale_temporary_files_are_removed_live_ones_kept(tmp_path):
    host = dnnlib.util._writer_tag().rsplit('-', 1)[0]
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                          text=True).stdout.strip()
    sleeper = subprocess.Popen(['sleep', '60'])
    try:
        names = dict(dead=f'.chunk-000001.npz.{host}-{dead}-ab12cd.tmp',
                     live=f'.chunk-000002.npz.{host}-{sleeper.pid}-ef34gh.tmp',
                     remote_new='.chunk-000003.npz.otherhost-123-ij56kl.tmp',
                     remote_old='.chunk-000004.npz.otherhost-123-mn78op.tmp')
        for name in names.values():
            (tmp_path / name).write_bytes(b'partial')
        old = time.time() - 2 * 24 * 3600
        os.utime(tmp_path / names['remote_old'], (old, old))
        C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)   # Opening the store of a re-run cleans up.
        left = set(os.listdir(tmp_path))
        assert names['dead'] not in left and names['remote_old'] not in left
        assert names['live'] in left and names['remote_new'] in left
    finally:
        sleeper.kill()
        sleeper.wait()

# ----------------------------------------------------------------------------
# Claims.

def _write_claim(store, index, **record):
    with open(os.path.join(store.directory, f'chunk-{index:06d}.claim'), 'w') as f:
        json.dump(dict(dict(host=dnnlib.util.hostname(), pid=os.getpid(), start=None, time=time.time(),
                            nonce='x'), **record), f)
    return os.path.join(store.directory, f'chunk-{index:06d}.claim')


def test_claims_of_live_processes_are_respected_abandoned_ones_taken_over(tmp_path):
    store = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG, claim_timeout=600)
    sleeper = subprocess.Popen(['sleep', '60'])
    try:
        _write_claim(store, 0, pid=sleeper.pid, start=C._process_start_time(sleeper.pid))    # live, this machine
        _write_claim(store, 1, host='elsewhere', pid=1)                                       # fresh, other machine
        old = _write_claim(store, 2, host='elsewhere', pid=1)                                 # silent for too long
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        _write_claim(store, 3, pid=sleeper.pid, start=-5)        # the pid now belongs to another process
        assert store.run(_compute, progress=False, wait=False) == [2, 3, 4]
        assert sorted(os.listdir(tmp_path)) == ['chunk-000000.claim', 'chunk-000001.claim', 'chunk-000002.npz',
                                                'chunk-000003.npz', 'chunk-000004.npz', 'chunks.json']
    finally:
        sleeper.kill()
        sleeper.wait()
    # The claimant of chunk 0 was killed: a re-run (e.g. the SLURM retry) takes its chunk over; chunk 1 is
    # still another machine's, and a waiting run finishes it once that machine's claim lapses.
    store.claim_timeout, store.poll_interval = 1.0, 0.2
    assert store.run(_compute, progress=False) == [0, 1]
    assert store.merge().equals(_uninterrupted(tmp_path))
    assert not [name for name in os.listdir(tmp_path) if name.endswith('.claim')]


_WORKER = textwrap.dedent('''
    import json, sys, time
    import numpy as np
    sys.path.insert(0, {root!r})
    from sampling import chunks as C
    from sampling.latents import LatentBank
    def slow(index):  # _compute of the test module, slowly.
        time.sleep(0.3)
        z = np.random.RandomState(1000 + index).randn(3, 4).astype(np.float32)
        return LatentBank(z, score=(z ** 2).sum(axis=1), meta=dict(chunk=index))
    store = C.ChunkStore(sys.argv[1], {num_chunks}, {config!r})
    store.poll_interval = 0.1
    print(json.dumps(store.run(slow, progress=False)))
''')


def test_two_identical_runs_share_the_chunks(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(_WORKER.format(root=REPO_ROOT, num_chunks=NUM_CHUNKS, config=CONFIG))
    out = tmp_path / 'shared'
    procs = [subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    computed = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(computed[0] + computed[1]) == list(range(NUM_CHUNKS))   # Each chunk computed exactly once.
    assert C.ChunkStore(out, NUM_CHUNKS, CONFIG).merge().equals(_uninterrupted(tmp_path))

# ----------------------------------------------------------------------------
# The scripts.

@pytest.fixture(scope='module')
def tiny_pkl(tmp_path_factory):
    path = tmp_path_factory.mktemp('net') / 'tiny.pkl'
    G = tiny_generator()
    legacy.save_network_pkl(path, G=G, G_ema=G)
    return str(path)


def _invoke(main, args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result



HUB_ARGS = ['--num', '6', '--batch-size', '300', '--k', '5', '--threshold', '13', '--synth-batch', '4',
            '--device', 'cpu']


def test_hubness_rerun_recovers_from_damaged_outputs(tiny_pkl, tmp_path):
    ref, run = tmp_path / 'ref', tmp_path / 'run'
    for outdir in (ref, run):
        assert _invoke(generate_hubness.main, ['--network', tiny_pkl, '--outdir', outdir, *HUB_ARGS]).exit_code == 0
    assert sorted(os.listdir(run / 'chunks')) == ['chunks.json', 'chunks.npz']   # A finished run packs its batches.
    assert len(C.ChunkStore(run / 'chunks', generate_hubness.hub_sampler.MAX_BATCHES,
                            _manifest_config(run)).done()) >= 2

    # A truncated pack and hubs.npz, a corrupt image, a batch file of a run with another --seed (a shard of
    # it, which keeps its batch files), killed writes.
    pack = run / 'chunks' / 'chunks.npz'
    pack.write_bytes(pack.read_bytes()[:len(pack.read_bytes()) // 2])
    (run / 'hubs.npz').write_bytes((run / 'hubs.npz').read_bytes()[:100])
    (run / 'hub000002.png').write_bytes((run / 'hub000002.png').read_bytes()[:30])
    other = tmp_path / 'other'
    assert _invoke(generate_hubness.main, ['--network', tiny_pkl, '--outdir', other, *HUB_ARGS,
                                           '--seed', '5', '--max-batches', '2', '--shard', '1/2']).exit_code == 0
    shutil.copy(other / 'chunks' / 'chunk-000001.npz', run / 'chunks' / 'chunk-000001.npz')
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                          text=True).stdout.strip()
    tag = dnnlib.util._writer_tag().rsplit('-', 1)[0] + f'-{dead}'
    for litter in (run / f'.hubs.npz.{tag}-q1w2e3.tmp', run / 'chunks' / f'.chunk-000000.npz.{tag}-r4t5y6.tmp',
                   run / 'chunks' / f'.chunks.npz.{tag}-u7i8o9.tmp'):
        litter.write_bytes(b'half')

    result = _invoke(generate_hubness.main, ['--network', tiny_pkl, '--outdir', run, *HUB_ARGS])
    assert result.exit_code == 0, result.output
    assert 'chunks.npz is truncated or damaged' in result.output
    assert 'chunk-000001.npz belongs to another job' in result.output
    assert 'hub000002.png is truncated' in result.output and 'hubs.npz is truncated or damaged' in result.output
    assert_same_arrays(bank_arrays(run / 'hubs.npz'), bank_arrays(ref / 'hubs.npz'))
    images = sorted(name for name in os.listdir(ref) if name.endswith('.png'))
    assert all((run / name).read_bytes() == (ref / name).read_bytes() for name in images)
    assert not [name for name in os.listdir(run) + os.listdir(run / 'chunks') if name.endswith('.tmp')]
    assert sorted(os.listdir(run / 'chunks')) == ['chunk-000001.npz.rejected', 'chunks.json', 'chunks.npz',
                                                  'chunks.npz.rejected']
    assert (run / 'chunks' / 'chunks.npz').read_bytes() == (ref / 'chunks' / 'chunks.npz').read_bytes()


def _manifest_config(outdir):
    return json.loads((outdir / 'chunks' / 'chunks.json').read_text())['config']


VOLUME_ARGS = ['--num', '6', '--space', 'style', '--method', 'exact', '--top-k', '3', '--chunk-size', '2',
               '--device', 'cpu']


def test_volume_rerun_recovers_from_damaged_and_foreign_chunks(tiny_pkl, tmp_path):
    ref, run, other = tmp_path / 'ref', tmp_path / 'run', tmp_path / 'other'
    # Shards keep their chunk files (the merge packs them): 'run' is a job whose shards have finished.
    for outdir, extra in ((ref, []), (run, ['--shard', '0/2']), (run, ['--shard', '1/2']),
                          (other, ['--seed', '9', '--shard', '0/2'])):
        result = _invoke(compute_volume_scalars.main, ['--network', tiny_pkl, '--outdir', outdir, *VOLUME_ARGS,
                                                       *extra])
        assert result.exit_code == 0, result.output
    (run / 'chunks' / 'chunk-000000.npz').write_bytes(b'PK\x03\x04 and then nothing')
    shutil.copy(other / 'chunks' / 'chunk-000002.npz', run / 'chunks' / 'chunk-000002.npz')
    assert not (run / 'volumes.npz').exists()

    result = _invoke(compute_volume_scalars.main, ['--network', tiny_pkl, '--outdir', run, *VOLUME_ARGS])
    assert result.exit_code == 0, result.output
    assert 'chunk-000000.npz is damaged' in result.output
    assert 'chunk-000002.npz belongs to another job' in result.output
    assert 'computed 2 chunk(s) of 3' in result.output
    assert_same_arrays(bank_arrays(run / 'volumes.npz'), bank_arrays(ref / 'volumes.npz'))
    assert sorted(os.listdir(run / 'chunks')) == ['chunk-000000.npz.rejected', 'chunk-000002.npz.rejected',
                                                  'chunks.json', 'chunks.npz']

    # --merge after shards: a pack damaged since is named, with what to do.
    pack = run / 'chunks' / 'chunks.npz'
    pack.write_bytes(pack.read_bytes()[:-40])
    result = _invoke(compute_volume_scalars.main, ['--network', tiny_pkl, '--outdir', run, *VOLUME_ARGS, '--merge'])
    assert result.exit_code != 0 and 'chunks.npz is truncated or damaged' in result.output
    assert 'run the remaining shards first' in result.output and 'Traceback' not in result.output
    # A run computes what the damaged pack held again.
    result = _invoke(compute_volume_scalars.main, ['--network', tiny_pkl, '--outdir', run, *VOLUME_ARGS])
    assert result.exit_code == 0 and 'computed 3 chunk(s) of 3' in result.output, result.output
    assert_same_arrays(bank_arrays(run / 'volumes.npz'), bank_arrays(ref / 'volumes.npz'))
