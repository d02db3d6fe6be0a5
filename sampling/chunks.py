"""Resumable, sharded work in chunks: shard assignment (SLURM arrays) and a directory of finished chunks.

A job is cut into `num_chunks` chunks (e.g. one batch seed each). Shard i of n (one SLURM array task, one
machine) takes chunks i, i + n, i + 2n, ... Every finished chunk is written atomically as its own
:class:`~sampling.latents.LatentBank` file in a :class:`ChunkStore` directory, so a killed or preempted task
re-run with the same arguments skips what is done and never recomputes it, and :meth:`ChunkStore.merge`
joins the chunks in chunk order into one bank identical to the one an unsharded run would produce.
"""

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import time

from sampling.latents import LatentBank, atomic_write, concatenate

_MANIFEST = 'chunks.json'
_CHUNK_RE = re.compile(r'^chunk-(\d+)\.npz$')
_STORE_FORMAT = 2  # 2: every chunk records its job and index (format 1 stores are still read).

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


# Key of the chunk-store record in every chunk's metadata (stripped again when a chunk is read).
_TAG = 'chunk_store'

# A claim by a process of another machine counts as abandoned after this long without a heartbeat.
DEFAULT_CLAIM_TIMEOUT = 3600.0
_HEARTBEAT_EVERY = 30.0


def _process_start_time(pid):
    """Start time of a process of this machine in clock ticks since boot (Linux), or None where unknown.

    Recorded in claims so that a process id reused by a new process is not taken for the claimant.
    """
    try:
        with open(f'/proc/{int(pid)}/stat') as f:
            return int(f.read().rsplit(')', 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _log(message):
    from tqdm import tqdm
    tqdm.write(message, file=sys.stderr)


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
    claim_timeout : float, optional
        Seconds after which a claim of another machine without a heartbeat counts as abandoned.
    log : callable, optional
        Receives one-line notes (a damaged or foreign chunk being recomputed); default: stderr.

    Recovery
    --------
    Every chunk records, in its metadata, a digest of the job (settings and number of chunks) and its own
    index; the zip archive's CRC-32 covers its bytes. A chunk that cannot be read in full (truncated,
    damaged) or that belongs to another job or index (e.g. copied from a run with another ``--seed``) is
    reported, moved aside as ``chunk-NNNNNN.npz.rejected`` and computed again. Temporary files left by
    killed writes are removed when the store is opened (those of live writers are kept).

    Concurrency
    -----------
    Before computing a chunk a process claims it by creating ``chunk-NNNNNN.claim`` with
    ``O_CREAT | O_EXCL`` (host, process id and start time inside); other processes skip claimed chunks and,
    when nothing else is left, wait for them. A claim is abandoned when its process no longer runs (same
    machine) or has not refreshed it for `claim_timeout` seconds (another machine), and is then taken over.
    So identical runs into one folder and SLURM array retries share the work. Two processes taking over
    the same abandoned claim at the same instant may both compute that chunk; chunks are deterministic and
    written atomically, so the result is the same.
    """

    def __init__(self, directory, num_chunks, config=None, claim_timeout=DEFAULT_CLAIM_TIMEOUT, log=None):
        if int(num_chunks) != num_chunks or num_chunks < 1:
            raise ValueError(f'num_chunks must be a positive integer, got {num_chunks!r}')
        self.directory = os.fspath(directory)
        self.num_chunks = int(num_chunks)
        self.config = _normalise(config if config is not None else {})
        self.claim_timeout = float(claim_timeout)
        self.poll_interval = 1.0
        self.log = log or _log
        self.job_digest = hashlib.sha256(json.dumps(dict(num_chunks=self.num_chunks, config=self.config),
                                                    sort_keys=True).encode()).hexdigest()[:16]
        self._held = {}            # index -> claim record of the claims this object holds
        self._last_heartbeat = 0.0
        os.makedirs(self.directory, exist_ok=True)
        self._claim_manifest()
        import dnnlib
        dnnlib.util.remove_stale_temp_files(self.directory)
        self._remove_abandoned_claims()

    # Manifest.
    def _manifest_path(self):
        return os.path.join(self.directory, _MANIFEST)

    def _write_manifest_exclusive(self, want):
        path = self._manifest_path()
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

    def _read_manifest(self):
        try:
            with open(self._manifest_path()) as f:
                have = json.load(f)
            if isinstance(have, dict) and isinstance(have.get('config', {}), dict):
                return have
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        return None

    def _claim_manifest(self):
        path = self._manifest_path()
        want = dict(format=_STORE_FORMAT, num_chunks=self.num_chunks, config=self.config, job=self.job_digest)
        if not os.path.exists(path):
            self._write_manifest_exclusive(want)
        have = self._read_manifest()
        if have is None:
            # Damaged (e.g. a truncated copy): every chunk carries the digest of its job, so chunks of
            # another job are still recognised; the manifest is rewritten with this job's settings.
            self.log(f'warning: {path} is damaged; rewriting it (each chunk is checked against this job)')
            with atomic_write(path, 'w') as f:
                json.dump(want, f, sort_keys=True, indent=1)
            have = want
        if have.get('num_chunks') != self.num_chunks:
            raise ValueError(f'{self.directory} holds a job of {have.get("num_chunks")} chunks, this one has '
                             f'{self.num_chunks}; use another output directory or delete it')
        if have.get('config') != self.config:
            old, new = have.get('config', {}), self.config
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            details = ', '.join(f'{k}: {old.get(k)!r} there, {new.get(k)!r} now' for k in diff)
            raise ValueError(f'{self.directory} was started with other settings ({details}); '
                             f'use another output directory or delete it')
        # Stores made before chunks were tagged with their job hold untagged chunks; accept those there.
        self._untagged_ok = have.get('format', 1) < 2

    # Chunks.
    def path(self, index):
        return os.path.join(self.directory, f'chunk-{index:06d}.npz')

    def done(self):
        """Indices of the chunk files present (not checked: see :meth:`pending`), ascending."""
        found = (_CHUNK_RE.match(name) for name in os.listdir(self.directory))
        return sorted(int(m.group(1)) for m in found if m and int(m.group(1)) < self.num_chunks)

    def is_done(self, index):
        """Whether chunk `index` is present and sound (a damaged or foreign file is rejected)."""
        return self.load(index) is not None

    def problem(self, index):
        """Why the file of chunk `index` cannot be used (one line), or None if it is sound or absent."""
        return self._check(index)[1]

    def _check(self, index):
        path = self.path(index)
        if not os.path.exists(path):
            return None, None
        try:
            bank = LatentBank.load(path)
        except (OSError, ValueError) as err:
            return None, f'is damaged ({str(err).replace(path, "the file")})'
        tag = bank.meta.pop(_TAG, None)
        if tag is None:
            if self._untagged_ok:
                return bank, None
            return None, 'was not written by this job (it has no job record)'
        if not isinstance(tag, dict) or tag.get('job') != self.job_digest:
            return None, 'belongs to another job (other settings, e.g. another --seed or network)'
        if tag.get('index') != index:
            return None, f'is chunk {tag.get("index")!r} of this job, not chunk {index} (a renamed file)'
        return bank, None

    def load(self, index):
        """The stored chunk `index`, or None when it is absent or was rejected (see the class docstring)."""
        bank, problem = self._check(index)
        if problem is not None:
            self._reject(index, problem)
        return bank

    def _reject(self, index, problem):
        path = self.path(index)
        self.log(f'warning: {path} {problem}; computing it again')
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, path + '.rejected')

    def pending(self, indices=None):
        """Those of `indices` (default: all chunks) without a sound chunk file (damaged ones are rejected)."""
        present = set(self.done())
        indices = range(self.num_chunks) if indices is None else indices
        return [i for i in indices if i not in present or self.load(i) is None]

    def write(self, index, bank):
        """Store chunk `index` (atomically: a crash leaves either no chunk file or a complete one)."""
        if not 0 <= index < self.num_chunks:
            raise ValueError(f'chunk index {index} is outside 0..{self.num_chunks - 1}')
        meta = dict(bank.meta)
        meta[_TAG] = dict(job=self.job_digest, index=int(index))
        tagged = LatentBank(bank.latents, bank.labels, meta=meta,
                            **{k: bank[k] for k in bank.keys() if k not in ('latents', 'labels')})
        tagged.save(self.path(index))

    def read(self, index):
        """Chunk `index`; ValueError (one line) when it is absent, damaged or foreign."""
        bank, problem = self._check(index)
        if bank is None:
            raise ValueError(f'{self.path(index)} {problem or "does not exist"}; run the job again to compute it')
        return bank

    # Claims.
    def _claim_path(self, index):
        return os.path.join(self.directory, f'chunk-{index:06d}.claim')

    def claim(self, index):
        """Try to claim chunk `index` for this process (see the class docstring); True if it is ours now."""
        import dnnlib
        path = self._claim_path(index)
        record = dict(host=dnnlib.util.hostname(), pid=os.getpid(), start=_process_start_time(os.getpid()),
                      time=time.time(), nonce=os.urandom(8).hex())
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._claim_abandoned(path):
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            with os.fdopen(fd, 'w') as f:
                json.dump(record, f)
            self._held[index] = record
            return True
        return False

    def _claim_abandoned(self, path):
        import dnnlib
        try:
            with open(path) as f:
                record = json.load(f)
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            record, age = None, time.time() - os.stat(path).st_mtime
        if not isinstance(record, dict):   # Empty or half-written: give its writer a moment.
            return age > 10
        if record.get('host') == dnnlib.util.hostname():
            pid = record.get('pid')
            if not dnnlib.util.process_alive(pid):
                return True
            start = record.get('start')
            return start is not None and _process_start_time(pid) not in (None, start)
        return age > self.claim_timeout

    def _remove_abandoned_claims(self):
        """Claims left by killed processes (e.g. killed just after writing their chunk)."""
        for name in os.listdir(self.directory):
            if name.startswith('chunk-') and name.endswith('.claim'):
                path = os.path.join(self.directory, name)
                with contextlib.suppress(OSError):
                    if self._claim_abandoned(path):
                        os.remove(path)

    def release(self, index):
        """Give up the claim on chunk `index` (if this object holds it)."""
        record = self._held.pop(index, None)
        if record is None:
            return
        path = self._claim_path(index)
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                if json.load(f).get('nonce') != record['nonce']:
                    return   # Taken over by another process meanwhile: not ours to remove.
            os.remove(path)

    def heartbeat(self):
        """Refresh the claims held (at most every 30 s), so other machines do not take them over."""
        now = time.time()
        if now - self._last_heartbeat < _HEARTBEAT_EVERY:
            return
        self._last_heartbeat = now
        for index in list(self._held):
            with contextlib.suppress(OSError):
                os.utime(self._claim_path(index))

    def compute_one(self, index, compute):
        """Claim chunk `index`, compute and store it unless it is already there, release it.

        Returns False when another live process holds the claim (nothing done), else True.
        """
        if not self.claim(index):
            return False
        try:
            if self.load(index) is None:   # Another process may have finished it before our claim.
                self.write(index, compute(index))
        finally:
            self.release(index)
        return True

    def run(self, compute, indices=None, progress=True, desc='chunks', wait=True):
        """Compute and store every pending chunk of `indices`: ``store.write(i, compute(i))``.

        Chunks claimed by other live processes are left to them; with `wait`, this call then waits until
        they are finished (or their claims abandoned, when it computes them itself). Returns the indices
        computed by this call.
        """
        from tqdm import tqdm

        todo = self.pending(indices)
        computed = []
        with tqdm(total=len(todo), desc=desc, unit='chunk', disable=not progress) as bar:
            while todo:
                others = []
                for index in todo:
                    if index in computed or os.path.exists(self.path(index)) and self.load(index) is not None:
                        bar.update(1)
                        continue
                    if not self.claim(index):
                        others.append(index)
                        continue
                    try:
                        if self.load(index) is None:
                            self.write(index, compute(index))
                            computed.append(index)
                    finally:
                        self.release(index)
                    bar.update(1)
                if not wait or len(others) == 0:
                    break
                bar.set_postfix(waiting_for_others=len(others))
                time.sleep(self.poll_interval)
                todo = others
        return computed

    def merge(self, meta=None):
        """All chunks joined in chunk order (see :func:`sampling.latents.concatenate`).

        The merged bank's metadata is `meta` if given, else the store's config. Raises ValueError naming the
        missing chunks if the job is not complete (damaged or foreign chunks count as missing).
        """
        missing = self.pending()
        if missing:
            shown = ', '.join(str(i) for i in missing[:10]) + (', ...' if len(missing) > 10 else '')
            raise ValueError(f'{len(missing)} of {self.num_chunks} chunks are not finished yet ({shown}); '
                             f'run the remaining shards first')
        return concatenate([self.read(i) for i in range(self.num_chunks)],
                           meta=self.config if meta is None else meta)

#----------------------------------------------------------------------------
