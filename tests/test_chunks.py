"""Shards and resumable chunk stores (sampling/chunks.py), and the chunk pack a finished run leaves."""

import json
import os
import shutil
import subprocess
import threading
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_same_arrays, bank_arrays

import compute_volume_scalars
import dnnlib
import generate_hubness
from sampling import chunks as C
from sampling import hub_sampler, volume_job
from sampling.latents import LatentBank

BATCH, Z_DIM, NUM_CHUNKS, SEED0 = 6, 4, 7, 1000
CONFIG = dict(network_sha256='ab' * 32, k=5, batch=BATCH)

# ----------------------------------------------------------------------------
# Shards.

def test_parse_shard():
    assert C.parse_shard('0/4') == (0, 4)
    assert C.parse_shard(' 3 / 4 ') == (3, 4)
    for bad in ['4/4', '1/0', '-1/4', 'a/b', '2', '1/2/3']:
        with pytest.raises(ValueError, match='shard'):
            C.parse_shard(bad)


def test_shard_from_env():
    assert C.shard_from_env({}) is None
    assert C.shard_from_env({'SLURM_ARRAY_TASK_ID': '2', 'SLURM_ARRAY_TASK_COUNT': '4'}) == (2, 4)
    # --array=1-8: ids 1..8 are shards 0..7.
    env = {'SLURM_ARRAY_TASK_ID': '1', 'SLURM_ARRAY_TASK_COUNT': '8', 'SLURM_ARRAY_TASK_MIN': '1'}
    assert C.shard_from_env(env) == (0, 8)
    assert C.shard_from_env(dict(env, SLURM_ARRAY_TASK_ID='8')) == (7, 8)
    # --array=10-16:2: ids 10, 12, 14, 16 are shards 0..3.
    env = {'SLURM_ARRAY_TASK_ID': '14', 'SLURM_ARRAY_TASK_COUNT': '4', 'SLURM_ARRAY_TASK_MIN': '10',
           'SLURM_ARRAY_TASK_STEP': '2'}
    assert C.shard_from_env(env) == (2, 4)
    with pytest.raises(ValueError, match='SLURM_ARRAY_TASK_COUNT'):
        C.shard_from_env({'SLURM_ARRAY_TASK_ID': '0'})
    with pytest.raises(ValueError, match='--shard'):
        C.shard_from_env({'SLURM_ARRAY_TASK_ID': '9', 'SLURM_ARRAY_TASK_COUNT': '3'})  # e.g. --array=1,5,9


def test_resolve_shard():
    env = {'SLURM_ARRAY_TASK_ID': '1', 'SLURM_ARRAY_TASK_COUNT': '2'}
    assert C.resolve_shard('0/3', env) == (0, 3)
    assert C.resolve_shard(None, env) == (1, 2)
    assert C.resolve_shard(None, {}) == (0, 1)


@pytest.mark.parametrize('num_chunks,count', [(10, 3), (2, 5), (7, 1), (0, 2)])
def test_chunks_for_shard_partition(num_chunks, count):
    parts = [C.chunks_for_shard(num_chunks, i, count) for i in range(count)]
    for i, part in enumerate(parts):
        assert part == [c for c in range(num_chunks) if c % count == i]
    assert sorted(c for part in parts for c in part) == list(range(num_chunks))
    with pytest.raises(ValueError):
        C.chunks_for_shard(num_chunks, count, count)

# ----------------------------------------------------------------------------
# A toy job: chunk i is batch seed SEED0 + i, with a made-up per-latent score.

def _compute(index):
    seed = SEED0 + index
    z = np.random.RandomState(seed).randn(BATCH, Z_DIM).astype(np.float32)
    return LatentBank(z, score=(z ** 2).sum(axis=1), seeds=np.full(BATCH, seed), indices=np.arange(BATCH),
                      meta=dict(chunk=index))


def _single_run_bank():
    """What an unsharded run would write: every batch, in order, built without the chunk machinery."""
    z = np.concatenate([np.random.RandomState(SEED0 + i).randn(BATCH, Z_DIM) for i in range(NUM_CHUNKS)])
    z = z.astype(np.float32)
    return LatentBank(z, score=(z ** 2).sum(axis=1), seeds=np.repeat(SEED0 + np.arange(NUM_CHUNKS), BATCH),
                      indices=np.tile(np.arange(BATCH), NUM_CHUNKS), meta=dict(CONFIG))


class _Killed(Exception):
    pass


def test_kill_and_resume_never_recomputes(tmp_path):
    calls = []

    def dies_after_three(index):
        if len(calls) == 3:
            raise _Killed()
        calls.append(index)
        return _compute(index)

    store = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)
    with pytest.raises(_Killed):
        store.run(dies_after_three, progress=False)
    assert store.done() == [0, 1, 2]
    # Debris of a write interrupted by the kill must not count as a finished chunk.
    (tmp_path / '.chunk-000003.npz.x1y2.tmp').write_bytes(b'garbage')
    with pytest.raises(ValueError, match=r'4 of 7 chunks are not finished yet \(3, 4, 5, 6\)'):
        store.merge()

    calls.clear()
    resumed = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)  # The re-run, same arguments.
    assert resumed.run(lambda i: calls.append(i) or _compute(i), progress=False) == [3, 4, 5, 6]
    assert calls == [3, 4, 5, 6]
    assert resumed.run(lambda i: pytest.fail('recomputed a finished chunk'), progress=False) == []
    assert resumed.merge().equals(_single_run_bank())


def test_interrupted_chunk_write_leaves_no_chunk(tmp_path, monkeypatch):
    store = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)

    def broken_savez(f, **arrays):
        f.write(b'PK partial')
        raise _Killed()

    monkeypatch.setattr(np, 'savez_compressed', broken_savez)   # Chunk files are deflated banks.
    with pytest.raises(_Killed):
        store.write(0, _compute(0))
    assert store.done() == [] and not store.is_done(0)
    assert sorted(os.listdir(tmp_path)) == ['chunks.json']


def test_shards_sharing_a_directory_merge_to_single_run(tmp_path):
    count = 3
    for shard in [2, 0, 1]:  # Any order, each with its own store object (as separate SLURM tasks).
        store = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)
        store.run(_compute, indices=C.chunks_for_shard(NUM_CHUNKS, shard, count), progress=False)
    merged = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG).merge()
    assert merged.equals(_single_run_bank())
    assert C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG).merge(meta={'m': 1}).meta == {'m': 1}


def test_store_refuses_other_job(tmp_path):
    C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)
    with pytest.raises(ValueError, match=r"k: 5 there, 10 now"):
        C.ChunkStore(tmp_path, NUM_CHUNKS, dict(CONFIG, k=10))
    with pytest.raises(ValueError, match='7 chunks'):
        C.ChunkStore(tmp_path, NUM_CHUNKS + 1, CONFIG)
    store = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)
    with pytest.raises(ValueError, match='outside'):
        store.write(NUM_CHUNKS, _compute(0))


def test_pending_and_empty_chunks(tmp_path):
    store = C.ChunkStore(tmp_path, 3, {})
    store.write(1, LatentBank(np.zeros([0, Z_DIM], dtype=np.float32), score=np.zeros([0])))
    assert store.pending() == [0, 2] and store.pending([1, 2]) == [2]
    assert len(store.read(1)) == 0

#

# ----------------------------------------------------------------------------
# The pack (ChunkStore.consolidate).

def _finished_store(directory, indices=None, **kwargs):
    store = C.ChunkStore(directory, NUM_CHUNKS, CONFIG, **kwargs)
    store.run(_compute, indices=indices, progress=False)
    return store


def _chunk_files(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith('chunk-'))


def test_consolidate_packs_the_chunks_and_reads_them_back(tmp_path):
    store = _finished_store(tmp_path)
    before = {i: store.load(i) for i in range(NUM_CHUNKS)}
    assert store.consolidate() == NUM_CHUNKS
    assert sorted(os.listdir(tmp_path)) == ['chunks.json', 'chunks.npz']
    umask = dnnlib.util._current_umask()
    assert all(os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask for name in os.listdir(tmp_path))
    # Every chunk, in this object and in a new one (a later run), is exactly what the chunk file held.
    for reader in (store, C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)):
        assert reader.done() == list(range(NUM_CHUNKS)) and reader.pending() == []
        assert all(reader.present(i) for i in range(NUM_CHUNKS))
        assert all(reader.load(i).equals(before[i]) and reader.read(i).equals(before[i]) for i in before)
        assert reader.merge().equals(_single_run_bank())
        assert reader.run(lambda i: pytest.fail('recomputed a packed chunk'), progress=False) == []
    # Nothing to pack: the pack is left alone (a re-run of a finished command writes nothing).
    stamp = os.stat(store.pack_path()).st_mtime_ns
    assert C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG).consolidate() == 0
    assert os.stat(store.pack_path()).st_mtime_ns == stamp


def test_a_consolidated_job_continues_and_packs_again(tmp_path):
    store = _finished_store(tmp_path, indices=[0, 1, 2])
    assert store.consolidate() == 3
    calls = []
    rerun = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)     # E.g. a larger --max-batches.
    assert rerun.run(lambda i: calls.append(i) or _compute(i), progress=False) == [3, 4, 5, 6]
    assert calls == [3, 4, 5, 6] and _chunk_files(tmp_path) == [f'chunk-{i:06d}.npz' for i in range(3, 7)]
    assert rerun.consolidate() == 4
    assert sorted(os.listdir(tmp_path)) == ['chunks.json', 'chunks.npz']
    assert C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG).merge().equals(_single_run_bank())
    # Same chunks, same bytes, however they were packed.
    whole = _finished_store(tmp_path / 'whole')
    whole.consolidate()
    assert open(whole.pack_path(), 'rb').read() == open(rerun.pack_path(), 'rb').read()


def test_pack_keeps_chunks_of_different_layouts(tmp_path):
    """Empty chunks, conditional labels, chunks with other arrays: each comes back as it was written."""
    banks = {0: LatentBank(np.zeros([0, 3]), np.zeros([0, 2], dtype=np.float32), w=np.zeros([0, 5], np.float32),
                           meta=dict(histogram=[1, 2], note='empty')),
             1: LatentBank(np.arange(6.).reshape(2, 3), np.eye(2, dtype=np.float32), w=np.ones([2, 5], np.float32),
                           meta=dict(sample=dict(norm=[0.1 + 0.2, 1 / 3]))),
             3: LatentBank(np.ones([1, 3], dtype=np.float32), meta={})}
    store = C.ChunkStore(tmp_path, 4, {})
    for index, bank in banks.items():
        store.write(index, bank)
    expected = {i: store.load(i) for i in banks}
    assert store.consolidate() == 3
    reader = C.ChunkStore(tmp_path, 4, {})
    assert reader.done() == [0, 1, 3] and reader.pending() == [2]
    for index, bank in expected.items():
        got = reader.load(index)
        assert got.equals(bank) and got.keys() == bank.keys()
    with zipfile.ZipFile(reader.pack_path()) as archive:   # Two layouts: two groups of joined arrays.
        assert sorted(archive.namelist()) == ['g0-labels.npy', 'g0-latents.npy', 'g0-w.npy', 'g1-labels.npy',
                                              'g1-latents.npy', 'index.npy']


def _flip_byte_in(path, member, offset=-1):
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data = bytearray(open(path, 'rb').read())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + (offset % info.compress_size)] ^= 0x01
    open(path, 'wb').write(bytes(data))


@pytest.mark.parametrize('damage', ['truncated', 'array bit', 'index bit', 'foreign', 'empty'])
def test_damaged_or_foreign_pack_is_reported_and_recomputed(tmp_path, damage):
    store = _finished_store(tmp_path / 'run')
    store.consolidate()
    pack = store.pack_path()
    if damage == 'truncated':
        data = open(pack, 'rb').read()
        open(pack, 'wb').write(data[:-100])
    elif damage == 'array bit':
        _flip_byte_in(pack, 'g0-score.npy', offset=-3)
    elif damage == 'index bit':
        _flip_byte_in(pack, 'index.npy', offset=40)
    elif damage == 'foreign':   # The pack of a run with another seed, copied over.
        other = C.ChunkStore(tmp_path / 'other', NUM_CHUNKS, dict(CONFIG, seed=2))
        other.run(_compute, progress=False)
        other.consolidate()
        shutil.copy(other.pack_path(), pack)
    else:
        open(pack, 'wb').close()
    notes, calls = [], []
    rerun = C.ChunkStore(tmp_path / 'run', NUM_CHUNKS, CONFIG, log=notes.append)
    assert rerun.run(lambda i: calls.append(i) or _compute(i), progress=False) == list(range(NUM_CHUNKS))
    assert calls == list(range(NUM_CHUNKS))
    assert len(notes) == 1 and '\n' not in notes[0], notes      # One line, once.
    what = {'foreign': 'belongs to another job', 'empty': 'is empty'}.get(damage, 'is truncated or damaged')
    assert notes[0].startswith(f'warning: {pack} {what}') and 'computing its chunks again' in notes[0]
    assert os.path.exists(pack + '.rejected')
    assert rerun.consolidate() == NUM_CHUNKS and rerun.merge().equals(_single_run_bank())


def test_a_bad_chunk_file_beside_the_pack_falls_back_to_the_packed_copy(tmp_path):
    notes = []
    store = _finished_store(tmp_path, log=notes.append)
    store.consolidate()
    open(store.path(2), 'wb').write(b'PK and nothing')
    assert store.run(lambda i: pytest.fail('recomputed a packed chunk'), progress=False) == []
    assert len(notes) == 1 and 'chunk-000002.npz is damaged' in notes[0] and 'copy in chunks.npz' in notes[0]
    assert store.merge().equals(_single_run_bank())


def test_reader_of_an_older_pack_finds_chunks_packed_meanwhile(tmp_path):
    writer = _finished_store(tmp_path, indices=[0, 1])
    writer.consolidate()
    reader = C.ChunkStore(tmp_path, NUM_CHUNKS, CONFIG)
    assert reader.pending() == [2, 3, 4, 5, 6]      # Has read the first pack.
    writer.run(_compute, progress=False)
    writer.consolidate()                            # Removes the chunk files, writes a new pack.
    assert _chunk_files(tmp_path) == [] and reader.pending() == []
    assert reader.merge().equals(_single_run_bank())


def test_consolidation_waits_for_another_packer(tmp_path):
    notes = []
    store = _finished_store(tmp_path, log=notes.append)
    store.poll_interval = 0.05
    sleeper = subprocess.Popen(['sleep', '60'])
    try:
        lock = os.path.join(tmp_path, 'chunks.npz.claim')
        with open(lock, 'w') as f:
            json.dump(dict(host=dnnlib.util.hostname(), pid=sleeper.pid, start=C._process_start_time(sleeper.pid),
                           time=0, nonce='x'), f)
        # A packer that takes too long: the chunk files stay, for a later run to pack.
        store.pack_wait = 0.2
        assert store.consolidate() == 0 and len(_chunk_files(tmp_path)) == NUM_CHUNKS
        assert len(notes) == 1 and 'chunks.npz.claim is held by another process' in notes[0]
        store.pack_wait = 60
        # The other packer "finishes" (here: dies, and is reaped) after 0.5 s.
        threading.Timer(0.5, lambda: (sleeper.kill(), sleeper.wait())).start()
        assert store.consolidate() == NUM_CHUNKS
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(os.listdir(tmp_path)) == ['chunks.json', 'chunks.npz']


def test_chunk_files_are_deflated(tmp_path):
    """A hub batch's statistics are a long JSON text stored as a numpy unicode string (4 bytes a character)."""
    meta = dict(sample=dict(score=list(range(256)), norm=[float(x) for x in np.random.RandomState(0).randn(256)]))
    bank = LatentBank(np.zeros([0, 64]), np.zeros([0, 10], dtype=np.float32), meta=meta)
    bank.save(tmp_path / 'plain.npz')
    store = C.ChunkStore(tmp_path / 'store', 1, {})
    store.write(0, bank)
    assert os.path.getsize(store.path(0)) < os.path.getsize(tmp_path / 'plain.npz') / 4
    assert store.load(0).equals(bank)

# ----------------------------------------------------------------------------
# The scripts on the embedded default network: a finished run leaves its outputs and one pack.

def _invoke(main, *args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


HUBS = ['--num', '20', '--batch-size', '300', '--threshold', '12', '--no-images', '--device', 'cpu']


def test_generate_hubness_leaves_a_pack_and_reruns_from_it(tmp_path, monkeypatch):
    out = tmp_path / 'out'
    result = _invoke(generate_hubness.main, '--outdir', out, *HUBS, '--max-batches', '1')
    assert result.exit_code == 1 and 'not the 20 wanted' in result.output   # Stopped early: outputs written.
    assert sorted(os.listdir(out / 'chunks')) == ['chunks.json', 'chunks.npz']
    # A larger --max-batches continues after the packed batch: only later batches are scored.
    real_score, scored = hub_sampler.score_batch, []
    monkeypatch.setattr(hub_sampler, 'score_batch', lambda G, s, b, **kw: scored.append(b) or real_score(G, s, b, **kw))
    result = _invoke(generate_hubness.main, '--outdir', out, *HUBS)
    assert result.exit_code == 0, result.output
    assert scored and 0 not in scored
    assert sorted(os.listdir(out / 'chunks')) == ['chunks.json', 'chunks.npz']
    assert _invoke(generate_hubness.main, '--outdir', tmp_path / 'fresh', *HUBS).exit_code == 0
    assert_same_arrays(bank_arrays(out / 'hubs.npz'), bank_arrays(tmp_path / 'fresh' / 'hubs.npz'))
    assert (out / 'report.json').read_bytes() == (tmp_path / 'fresh' / 'report.json').read_bytes()
    assert (out / 'chunks' / 'chunks.npz').read_bytes() == (tmp_path / 'fresh' / 'chunks' / 'chunks.npz').read_bytes()

    # The finished command again: nothing scored, neither the bank nor the store rewritten.
    scored.clear()
    before = {p: p.stat().st_mtime_ns for p in [out / 'hubs.npz', *(out / 'chunks').iterdir()]}
    assert _invoke(generate_hubness.main, '--outdir', out, *HUBS).exit_code == 0
    assert scored == [] and sorted(os.listdir(out / 'chunks')) == ['chunks.json', 'chunks.npz']
    assert {p: p.stat().st_mtime_ns for p in before} == before


VOLUMES = ['--num', '6', '--space', 'style', '--method', 'exact', '--top-k', '3', '--chunk-size', '2',
           '--device', 'cpu']


def test_compute_volume_scalars_leaves_a_pack_and_reruns_from_it(tmp_path, monkeypatch):
    out = tmp_path / 'out'
    assert _invoke(compute_volume_scalars.main, '--outdir', out, *VOLUMES).exit_code == 0
    assert sorted(os.listdir(out / 'chunks')) == ['chunks.json', 'chunks.npz']
    reference = bank_arrays(out / 'volumes.npz')
    pack = (out / 'chunks' / 'chunks.npz').read_bytes()

    # The finished command again: nothing computed, the same bank, the pack untouched.
    monkeypatch.setattr(volume_job.VolumeJob, 'compute_chunk', lambda *a, **k: pytest.fail('chunk recomputed'))
    result = _invoke(compute_volume_scalars.main, '--outdir', out, *VOLUMES)
    assert result.exit_code == 0 and 'computed 0 chunk(s) of 3' in result.output, result.output
    assert_same_arrays(bank_arrays(out / 'volumes.npz'), reference)
    assert (out / 'chunks' / 'chunks.npz').read_bytes() == pack

    # Shards keep chunk files until the merge, which packs them into the same pack.
    monkeypatch.undo()
    sharded = tmp_path / 'sharded'
    for shard in ('1/2', '0/2'):
        assert _invoke(compute_volume_scalars.main, '--outdir', sharded, *VOLUMES, '--shard', shard).exit_code == 0
    assert _chunk_files(sharded / 'chunks') == [f'chunk-{i:06d}.npz' for i in range(3)]
    assert _invoke(compute_volume_scalars.main, '--outdir', sharded, *VOLUMES, '--merge').exit_code == 0
    assert sorted(os.listdir(sharded / 'chunks')) == ['chunks.json', 'chunks.npz']
    assert_same_arrays(bank_arrays(sharded / 'volumes.npz'), reference)
    assert (sharded / 'chunks' / 'chunks.npz').read_bytes() == pack

# ----------------------------------------------------------------------------
