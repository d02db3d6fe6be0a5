"""Shards and resumable chunk stores (sampling/chunks.py)."""

import os

import numpy as np
import pytest

from sampling import chunks as C
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

    monkeypatch.setattr(np, 'savez', broken_savez)
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

# ----------------------------------------------------------------------------
