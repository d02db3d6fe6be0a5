"""Resumable, sharded work in chunks: shard assignment (SLURM arrays) and a directory of finished chunks.

A job is cut into `num_chunks` chunks (e.g. one batch seed each). Shard i of n (one SLURM array task, one
machine) takes chunks i, i + n, i + 2n, ... Every finished chunk is written atomically as its own
:class:`~sampling.latents.LatentBank` file in a :class:`ChunkStore` directory, so a killed or preempted task
re-run with the same arguments skips what is done and never recomputes it, and :meth:`ChunkStore.merge`
joins the chunks in chunk order into one bank identical to the one an unsharded run would produce.
"""

import contextlib
import json
import os
import re
import tempfile

from sampling.latents import LatentBank, concatenate

_MANIFEST = 'chunks.json'
_CHUNK_RE = re.compile(r'^chunk-(\d+)\.npz$')
_STORE_FORMAT = 1

#----------------------------------------------------------------------------
# Shards.

def parse_shard(text):
    """'i/n' -> (i, n), with 0 <= i < n (shards are numbered from 0)."""
    match = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', str(text))
    if not match:
        raise ValueError(f"shard {text!r} is not of the form i/n, e.g. 0/4 for the first of four shards")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f'shard {text!r}: need 0 <= i < n (shards are numbered from 0), e.g. 0/{max(count, 1)}')
    return index, count


def shard_from_env(environ=None):
    """The shard of this SLURM array task, or None outside a SLURM array.

    Uses SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, relative to SLURM_ARRAY_TASK_MIN (so ``--array=1-8``
    gives shards 0..7) and in steps of SLURM_ARRAY_TASK_STEP (``--array=0-14:2`` gives shards 0..7).
    """
    env = os.environ if environ is None else environ
    task_id = env.get('SLURM_ARRAY_TASK_ID')
    if task_id is None:
        return None
    count = env.get('SLURM_ARRAY_TASK_COUNT')
    if count is None:
        raise ValueError('SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard i/n')
    task_id, count = int(task_id), int(count)
    offset = task_id - int(env.get('SLURM_ARRAY_TASK_MIN', 0))
    step = int(env.get('SLURM_ARRAY_TASK_STEP', 1) or 1)
    index = offset // step
    if offset % step or not 0 <= index < count:
        raise ValueError(f'SLURM array task {task_id} does not map to a shard in 0..{count - 1}: use a range '
                         f'array such as --array=0-{count - 1}, or pass --shard i/n')
    return index, count


def resolve_shard(text=None, environ=None):
    """`text` ('i/n') if given, else the SLURM array shard, else (0, 1): the whole job."""
    if text is not None:
        return parse_shard(text)
    shard = shard_from_env(environ)
    return shard if shard is not None else (0, 1)


def chunks_for_shard(num_chunks, shard_index, shard_count):
    """Chunks of shard `shard_index` of `shard_count`: shard_index, shard_index + shard_count, ..."""
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(f'need 0 <= shard_index < shard_count, got {shard_index}/{shard_count}')
    return list(range(shard_index, num_chunks, shard_count))

#----------------------------------------------------------------------------

def _normalise(config):
    return json.loads(json.dumps(config, sort_keys=True))


class ChunkStore:
    """A directory holding the finished chunks of one job, one ``chunk-NNNNNN.npz`` bank per chunk.

    Parameters
    ----------
    directory : str
        Created if needed. Several shards (processes, machines) may share it.
    num_chunks : int
        Number of chunks of the whole job.
    config : dict, optional
        JSON-serialisable settings that define the job (network hash, k, batch size...). Stored in
        ``chunks.json`` by the first process; a later process with different settings or a different
        `num_chunks` is refused, so chunks of different jobs are never mixed.
    """

    def __init__(self, directory, num_chunks, config=None):
        if int(num_chunks) != num_chunks or num_chunks < 1:
            raise ValueError(f'num_chunks must be a positive integer, got {num_chunks!r}')
        self.directory = os.fspath(directory)
        self.num_chunks = int(num_chunks)
        self.config = _normalise(config if config is not None else {})
        os.makedirs(self.directory, exist_ok=True)
        self._claim_manifest()

    def _claim_manifest(self):
        path = os.path.join(self.directory, _MANIFEST)
        want = dict(format=_STORE_FORMAT, num_chunks=self.num_chunks, config=self.config)
        if not os.path.exists(path):
            # Write a complete temp file, then hard-link it into place: creation is atomic *and* exclusive,
            # so of several shards starting at once exactly one manifest wins and the others compare with it.
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f'.{_MANIFEST}.', suffix='.tmp')
            try:
                with os.fdopen(fd, 'w') as f:
                    json.dump(want, f, sort_keys=True, indent=1)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass
                except OSError:  # File systems without hard links.
                    if not os.path.exists(path):
                        os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
        with open(path) as f:
            have = json.load(f)
        if have.get('num_chunks') != self.num_chunks:
            raise ValueError(f'{self.directory} holds a job of {have.get("num_chunks")} chunks, this one has '
                             f'{self.num_chunks}; use another output directory or delete it')
        if have.get('config') != self.config:
            old, new = have.get('config', {}), self.config
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            details = ', '.join(f'{k}: {old.get(k)!r} there, {new.get(k)!r} now' for k in diff)
            raise ValueError(f'{self.directory} was started with other settings ({details}); '
                             f'use another output directory or delete it')

    def path(self, index):
        return os.path.join(self.directory, f'chunk-{index:06d}.npz')

    def done(self):
        """Indices of the finished chunks, ascending."""
        found = (_CHUNK_RE.match(name) for name in os.listdir(self.directory))
        return sorted(int(m.group(1)) for m in found if m and int(m.group(1)) < self.num_chunks)

    def is_done(self, index):
        return os.path.exists(self.path(index))

    def pending(self, indices=None):
        """Those of `indices` (default: all chunks) not finished yet."""
        finished = set(self.done())
        indices = range(self.num_chunks) if indices is None else indices
        return [i for i in indices if i not in finished]

    def write(self, index, bank):
        """Store chunk `index` (atomically: a crash leaves either no chunk file or a complete one)."""
        if not 0 <= index < self.num_chunks:
            raise ValueError(f'chunk index {index} is outside 0..{self.num_chunks - 1}')
        bank.save(self.path(index))

    def read(self, index):
        return LatentBank.load(self.path(index))

    def run(self, compute, indices=None, progress=True, desc='chunks'):
        """Compute and store every pending chunk of `indices`: ``store.write(i, compute(i))``.

        Returns the indices computed by this call.
        """
        from tqdm import tqdm

        todo = self.pending(indices)
        for index in tqdm(todo, desc=desc, unit='chunk', disable=not progress):
            self.write(index, compute(index))
        return todo

    def merge(self, meta=None):
        """All chunks joined in chunk order (see :func:`sampling.latents.concatenate`).

        The merged bank's metadata is `meta` if given, else the store's config. Raises ValueError naming the
        missing chunks if the job is not complete.
        """
        missing = self.pending()
        if missing:
            shown = ', '.join(str(i) for i in missing[:10]) + (', ...' if len(missing) > 10 else '')
            raise ValueError(f'{len(missing)} of {self.num_chunks} chunks are not finished yet ({shown}); '
                             f'run the remaining shards first')
        return concatenate([self.read(i) for i in range(self.num_chunks)],
                           meta=self.config if meta is None else meta)

#----------------------------------------------------------------------------
