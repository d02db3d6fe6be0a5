"""Resumable, sharded work in chunks: shard assignment (SLURM arrays) and a directory of finished chunks.

A job is cut into `num_chunks` chunks (e.g. one batch seed each). Shard i of n (one SLURM array task, one
machine) takes chunks i, i + n, i + 2n, ... Every finished chunk is written atomically as its own
:class:`~sampling.latents.LatentBank` file in a :class:`ChunkStore` directory, so a killed or preempted task
re-run with the same arguments skips what is done and never recomputes it, and :meth:`ChunkStore.merge`
joins the chunks in chunk order into one bank identical to the one an unsharded run would produce. Once a
run has written its outputs, :meth:`ChunkStore.consolidate` packs the chunk files into one file,
``chunks.npz``, which later runs read in their place: a finished run leaves two files, not one per chunk.
"""

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import zipfile

import numpy as np

from sampling.latents import LatentBank, atomic_write, concatenate, read_npz

_MANIFEST = 'chunks.json'
_PACK = 'chunks.npz'
_PACK_FORMAT = 1
_CHUNK_RE = re.compile(r'^chunk-(\d+)\.npz$')
_STORE_FORMAT = 2  # 2: every chunk records its job and index (format 1 stores are still read).

# ----------------------------------------------------------------------------
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

# ----------------------------------------------------------------------------

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


class _PackProblem(ValueError):
    """A pack that is readable but not this job's, or inconsistent."""


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

    Files
    -----
    While a job runs, every finished chunk is its own file, ``chunk-NNNNNN.npz`` (a deflated bank), written
    atomically by whichever process computed it. :meth:`consolidate`, called once a run has written its
    outputs, moves them into one pack, ``chunks.npz``: the chunks' arrays joined (chunks with the same arrays
    share one member per array), their metadata in a deflated JSON index, the job digest and every chunk's
    index and rows. Reads look for the chunk file first and then in the pack, so a store is used the same
    way before and after consolidation, and a run that continues a consolidated job (a larger
    ``--max-batches``) adds chunk files that its own consolidation packs.

    Recovery
    --------
    Every chunk records, in its metadata, a digest of the job (settings and number of chunks) and its own
    index; the zip archive's CRC-32 covers its bytes. A chunk that cannot be read in full (truncated,
    damaged) or that belongs to another job or index (e.g. copied from a run with another ``--seed``) is
    reported, moved aside as ``chunk-NNNNNN.npz.rejected`` and taken from the pack or computed again. The
    pack is checked in the same way (CRC-32 of every member, job digest, chunk indices and row ranges) when
    first read; a damaged or foreign pack is reported in one line, moved aside as ``chunks.npz.rejected``,
    and its chunks are computed again. Temporary files left by killed writes are removed when the store is
    opened (those of live writers are kept).

    Concurrency
    -----------
    Before computing a chunk a process claims it by creating ``chunk-NNNNNN.claim`` with
    ``O_CREAT | O_EXCL`` (host, process id and start time inside); other processes skip claimed chunks and,
    when nothing else is left, wait for them. A claim is abandoned when its process no longer runs (same
    machine) or has not refreshed it for `claim_timeout` seconds (another machine), and is then taken over.
    So identical runs into one folder and SLURM array retries share the work. Two processes taking over
    the same abandoned claim at the same instant may both compute that chunk; chunks are deterministic and
    written atomically, so the result is the same. :meth:`consolidate` holds ``chunks.npz.claim`` while it
    packs (a second packer waits), packs only the chunk files present when it starts and removes only
    those; a reader that misses a chunk file just packed finds the chunk in the new pack.
    """

    def __init__(self, directory, num_chunks, config=None, claim_timeout=DEFAULT_CLAIM_TIMEOUT, log=None):
        if int(num_chunks) != num_chunks or num_chunks < 1:
            raise ValueError(f'num_chunks must be a positive integer, got {num_chunks!r}')
        self.directory = os.fspath(directory)
        self.num_chunks = int(num_chunks)
        self.config = _normalise(config if config is not None else {})
        self.claim_timeout = float(claim_timeout)
        self.poll_interval = 1.0
        self.pack_wait = 120.0     # Seconds consolidate() waits for another process's packing.
        self.log = log or _log
        self.job_digest = hashlib.sha256(json.dumps(dict(num_chunks=self.num_chunks, config=self.config),
                                                    sort_keys=True).encode()).hexdigest()[:16]
        self._held = {}            # index -> claim record of the claims this object holds
        self._last_heartbeat = 0.0
        self._pack_cache = None    # ((inode, size, mtime) of the pack, its contents)
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
            import dnnlib
            os.chmod(tmp, 0o666 & ~dnnlib.util._current_umask())  # mkstemp makes 0600 files: readable by all.
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

    def pack_path(self):
        """The pack of a finished run's chunks (see :meth:`consolidate`)."""
        return os.path.join(self.directory, _PACK)

    def _loose(self):
        """Indices of the chunk files present, ascending."""
        found = (_CHUNK_RE.match(name) for name in os.listdir(self.directory))
        return sorted(int(m.group(1)) for m in found if m and int(m.group(1)) < self.num_chunks)

    def done(self):
        """Indices of the chunks present, as files or in the pack, ascending (not checked: see :meth:`pending`)."""
        return sorted(set(self._loose()) | set(self._packed()))

    def present(self, index):
        """Whether chunk `index` has a file or is in the pack (not checked: see :meth:`is_done`)."""
        return os.path.exists(self.path(index)) or index in self._packed()

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
        except FileNotFoundError:   # Packed and removed by another process meanwhile.
            return None, None
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
        """The stored chunk `index`, or None when it is absent or was rejected (see the class docstring).

        A chunk file takes precedence over the pack; a rejected file falls back to the pack's copy.
        """
        bank, problem = self._check(index)
        if problem is not None:
            self._reject(index, problem)
        return bank if bank is not None else self._from_pack(index)

    def _reject(self, index, problem):
        path = self.path(index)
        fallback = 'using its copy in ' + _PACK if index in self._packed() else 'computing it again'
        self.log(f'warning: {path} {problem}; moved aside as {os.path.basename(path)}.rejected, {fallback}')
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, path + '.rejected')

    def pending(self, indices=None):
        """Those of `indices` (default: all chunks) without a sound chunk (damaged ones are rejected)."""
        present = set(self.done())
        indices = range(self.num_chunks) if indices is None else indices
        return [i for i in indices if i not in present or self.load(i) is None]

    def write(self, index, bank):
        """Store chunk `index` (atomically: a crash leaves either no chunk file or a complete one)."""
        if not 0 <= index < self.num_chunks:
            raise ValueError(f'chunk index {index} is outside 0..{self.num_chunks - 1}')
        meta = dict(bank.meta)
        meta[_TAG] = dict(job=self.job_digest, index=int(index))
        arrays = {k: bank[k] for k in bank.keys()}
        if bank.c_dim == 0:
            arrays['labels'] = np.zeros([0], dtype=bank.labels.dtype)  # As LatentBank.save writes it.
        # LatentBank.save's layout, deflated: the metadata (batch statistics) is a numpy unicode string, 4 bytes
        # per character, which deflate shrinks about tenfold.
        arrays['meta'] = np.array(json.dumps(meta))
        with atomic_write(self.path(index)) as f:
            np.savez_compressed(f, **arrays)

    def read(self, index):
        """Chunk `index`; ValueError (one line) when it is absent, damaged or foreign."""
        bank, problem = self._check(index)
        if bank is None:
            bank = self._from_pack(index)
        if bank is None:
            raise ValueError(f'{self.path(index)} {problem or "does not exist"}; run the job again to compute it')
        return bank

    # The pack.
    def _packed(self):
        """Indices of the chunks in the pack (read and checked in full once per version of the pack file)."""
        return self._pack_contents()[1]

    def _from_pack(self, index):
        groups, entries = self._pack_contents()
        entry = entries.get(index)
        if entry is None:
            return None
        group, start, stop, meta = entry
        arrays = {name: value[start:stop] for name, value in groups[group].items()}
        return LatentBank(arrays.pop('latents'), arrays.pop('labels'), meta=json.loads(json.dumps(meta)), **arrays)

    def _pack_contents(self):
        """``(groups, entries)`` of the pack: arrays of each group of alike chunks, and for every chunk index
        its ``(group, first row, end row, meta)``. Empty when there is no pack or it was rejected."""
        path = self.pack_path()
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._pack_cache = None
            return {}, {}
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._pack_cache is not None and self._pack_cache[0] == key:
            return self._pack_cache[1]
        try:
            contents = self._read_pack(path)
        except FileNotFoundError:   # Replaced by another process between stat and read: read the new one.
            return self._pack_contents()
        except ValueError as err:
            self.log(f'warning: {path} {err}; moved aside as {_PACK}.rejected, computing its chunks again')
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, path + '.rejected')
            self._pack_cache = None
            return {}, {}
        self._pack_cache = (key, contents)
        return contents

    def _read_pack(self, path):
        """Read and check the whole pack (zip CRCs, job digest, chunk indices and row ranges).

        Raises ValueError saying what is wrong, as the rest of a sentence that names the file.
        """
        try:
            arrays = read_npz(path, what='chunk pack')
        except ValueError as err:   # One line that starts with the path: 'PATH is truncated or damaged (...)...'
            raise ValueError(str(err).replace(f'{path} ', '', 1)) from None
        try:
            index = json.loads(arrays.pop('index').tobytes().decode('utf-8'))
            if index.get('job') != self.job_digest:
                raise _PackProblem('belongs to another job (other settings, e.g. another --seed or network)')
            if index.get('format') != _PACK_FORMAT:
                raise _PackProblem(f'has pack format {index.get("format")!r}, not {_PACK_FORMAT}')
            groups = []
            for g, names in enumerate(index['groups']):
                group = {name: arrays.pop(f'g{g}-{name}') for name in names}
                if not ('latents' in group and 'labels' in group) or len({len(v) for v in group.values()}) != 1:
                    raise _PackProblem(f'has arrays of different lengths in group {g}')
                for value in group.values():
                    value.flags.writeable = False   # Chunks are views into these arrays.
                groups.append(group)
            entries = {}
            for chunk, group, start, stop, meta in index['chunks']:
                numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (chunk, group, start, stop))
                if not (numbers and 0 <= chunk < self.num_chunks and 0 <= group < len(groups) and
                        0 <= start <= stop <= len(groups[group]['latents']) and isinstance(meta, dict)) \
                        or chunk in entries:
                    raise _PackProblem(f'has an invalid entry for chunk {chunk!r}')
                entries[chunk] = (group, start, stop, meta)
        except _PackProblem:
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:  # Incl. JSON, UTF-8 errors.
            raise ValueError(f'is damaged (its index is unreadable: {type(err).__name__}: {err})') from None
        return groups, entries

    def _write_pack(self, banks):
        """Write `banks` (index -> LatentBank, job tags stripped) as the pack, atomically.

        Chunks with the same arrays (names, dtypes, trailing shapes) form one group whose arrays are stored
        joined, so the pack has a few members whatever the number of chunks. The index (metadata of every
        chunk) is deflated, the arrays are stored as they are.
        """
        signatures, groups, rows, chunks = [], [], [], []
        for chunk in sorted(banks):
            bank = banks[chunk]
            signature = [(name, bank[name].dtype.str, bank[name].shape[1:]) for name in bank.keys()]
            if signature not in signatures:
                signatures.append(signature)
                groups.append([])
                rows.append(0)
            g = signatures.index(signature)
            groups[g].append(bank)
            chunks.append([chunk, g, rows[g], rows[g] + len(bank), bank.meta])
            rows[g] += len(bank)
        index = dict(format=_PACK_FORMAT, job=self.job_digest, num_chunks=self.num_chunks,
                     groups=[[name for name, _, _ in sig] for sig in signatures], chunks=chunks)

        def members():
            yield 'index', np.frombuffer(json.dumps(index).encode('utf-8'), dtype=np.uint8), zipfile.ZIP_DEFLATED
            for g, (sig, alike) in enumerate(zip(signatures, groups)):
                for name, _, _ in sig:   # One joined array at a time.
                    yield f'g{g}-{name}', np.concatenate([b[name] for b in alike]), zipfile.ZIP_STORED

        with atomic_write(self.pack_path()) as f:
            with zipfile.ZipFile(f, 'w', allowZip64=True) as archive:
                for name, value, compression in members():
                    # A fixed date: the same chunks give the same bytes.
                    info = zipfile.ZipInfo(name + '.npy', date_time=(1980, 1, 1, 0, 0, 0))
                    info.compress_type = compression
                    with archive.open(info, 'w', force_zip64=True) as member:
                        np.lib.format.write_array(member, value, allow_pickle=False)

    def consolidate(self):
        """Pack the chunk files into ``chunks.npz`` (with the pack's chunks, if any) and remove them.

        Call it once a run has written its outputs: the folder then holds ``chunks.json`` and ``chunks.npz``
        instead of a file per chunk, and later runs read the chunks from the pack (a re-run of a finished
        command computes nothing; a larger --max-batches continues after the packed batches). Only sound
        chunks are packed (damaged or foreign files are rejected); files that appear meanwhile (other
        processes) are left for their own consolidation. The pack is written atomically, under an exclusive
        claim so that two processes never pack at once; when another process holds it for longer than
        `pack_wait` seconds (e.g. one killed on another machine), the chunk files are left for a later run.
        Returns the number of chunk files packed (0 when there were none: the pack is then left untouched).
        """
        if not self._loose():
            return 0
        lock = os.path.join(self.directory, _PACK + '.claim')
        record, deadline = self._take_claim(lock), time.monotonic() + self.pack_wait
        while record is None:   # Another process is packing, which takes seconds.
            if time.monotonic() > deadline:
                self.log(f'warning: {lock} is held by another process; the chunk files of {self.directory} are '
                         f'left as they are (a later run packs them)')
                return 0
            time.sleep(self.poll_interval)
            record = self._take_claim(lock)
        try:
            loose = {}
            for index in self._loose():
                bank, problem = self._check(index)
                if problem is not None:
                    self._reject(index, problem)
                elif bank is not None:
                    loose[index] = bank
            if not loose:
                return 0
            banks = {index: self._from_pack(index) for index in self._packed()}
            banks.update(loose)
            self._write_pack(banks)
            for index in loose:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path(index))
            return len(loose)
        finally:
            self._drop_claim(lock, record)

    # Claims.
    def _claim_path(self, index):
        return os.path.join(self.directory, f'chunk-{index:06d}.claim')

    def claim(self, index):
        """Try to claim chunk `index` for this process (see the class docstring); True if it is ours now."""
        record = self._take_claim(self._claim_path(index))
        if record is None:
            return False
        self._held[index] = record
        return True

    def _take_claim(self, path):
        """Create the claim file `path` exclusively (taking over an abandoned one); its record, or None."""
        import dnnlib
        record = dict(host=dnnlib.util.hostname(), pid=os.getpid(), start=_process_start_time(os.getpid()),
                      time=time.time(), nonce=os.urandom(8).hex())
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._claim_abandoned(path):
                    return None
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            with os.fdopen(fd, 'w') as f:
                json.dump(record, f)
            return record
        return None

    def _drop_claim(self, path, record):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as f:
                if json.load(f).get('nonce') != record['nonce']:
                    return   # Taken over by another process meanwhile: not ours to remove.
            os.remove(path)

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
            if name.startswith('chunk') and name.endswith('.claim'):   # chunk-NNNNNN.claim, chunks.npz.claim
                path = os.path.join(self.directory, name)
                with contextlib.suppress(OSError):
                    if self._claim_abandoned(path):
                        os.remove(path)

    def release(self, index):
        """Give up the claim on chunk `index` (if this object holds it)."""
        record = self._held.pop(index, None)
        if record is not None:
            self._drop_claim(self._claim_path(index), record)

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
                    if index in computed or self.load(index) is not None:
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

# ----------------------------------------------------------------------------
