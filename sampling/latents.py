"""Latents addressed by seeds, and latent banks (one .npz of latents, labels and per-latent scores).

Seed conventions
----------------
* Single seeds, as NVlabs' generate.py: the latent of seed s is ``np.random.RandomState(s).randn(z_dim)``
  (identical to generate.py's ``RandomState(s).randn(1, z_dim)``), float64.
* Batches: row j of batch seed s is row j of ``np.random.RandomState(s).randn(M, z_dim)`` for any M > j. It
  depends only on (s, j, z_dim), not on how many rows are drawn, on chunking or on the number of shards;
  row 0 of batch seed s is the latent of single seed s. A latent is addressed by (batch seed, index).
* Random labels of batch seed s come from ``np.random.RandomState([s, 1]).randint(c_dim, size=M)`` (row j),
  a stream separate from the one that draws z, and are one-hot float32.

Latent bank
-----------
One ``.npz`` file, written atomically and readable without pickle (``np.load(path, allow_pickle=False)``):

* ``latents``: z, [N, z_dim] (the MaGNET authors' key);
* ``labels``: one-hot c, [N, c_dim]; stored as an empty array [0] when the network is unconditional (as in
  the authors' files). In memory a bank always has labels of shape [N, c_dim], c_dim possibly 0;
* optional per-latent arrays, first dimension N: ``w``, ``seeds`` (batch seed of each row), ``indices``
  (row within its batch), scores such as ``hub_score`` or ``svds`` [N, K];
* ``meta``: a JSON string (see :func:`make_meta`): producing command, network file hash, space, k,
  count_self, z_dim, c_dim, versions, free-form extras.

Files without ``meta`` are read as the MaGNET authors' published banks, exactly as their Colab reads them:
``svds`` [num_batches, batch, K] and ``latents`` [num_batches, batch, z_dim] (``np.stack`` of per-batch
arrays; 2-D [N, K] and [N, z_dim] are read too), ``labels`` likewise or empty. Every array is reshaped to
``(-1, last)`` and each row whose ``svds`` sum to zero (padding) is dropped; the count is
``meta['dropped_zero_rows']``. Their conditional (BigGAN) banks are one file per class, named
``{class_index}_{name}.npz`` (e.g. ``933_cheeseburger.npz``); a folder of such files, or several of them,
is read as one conditional bank whose labels come from the class index in each name (the authors draw
from them with top-K = 10).

:func:`load_bank` is the one reader of bank files (scripts, samplers and :meth:`LatentBank.load`).
"""

import glob
import hashlib
import json
import os
import re
import shlex
import sys

import numpy as np

from dnnlib.util import UserError, atomic_write  # noqa: F401 (atomic_write: sampling code imports it from here)

BANK_FORMAT = 1

# Second word of the label stream's seed, so that labels never share a random stream with z.
_LABEL_STREAM = 1

# Rows of z skipped per draw when a batch starts at a later index (bounds the memory of the skip).
_SKIP_CHUNK = 1 << 20

# ----------------------------------------------------------------------------
# Seeds -> latents and labels.

def check_seed(seed):
    """`seed` as an int, refused (ValueError) unless it is an integer in [0, 2**32) (a numpy RandomState seed)."""
    if isinstance(seed, (bool, np.bool_)) or int(seed) != seed or not 0 <= int(seed) < 2 ** 32:
        raise ValueError(f'seeds must be integers in [0, 2**32), got {seed!r}')
    return int(seed)


def z_from_seeds(seeds, z_dim, dtype=np.float64):
    """Latents of single seeds, NVlabs' generate.py convention.

    Parameters
    ----------
    seeds : sequence of int
        Each in [0, 2**32).
    z_dim : int
    dtype : numpy dtype, default=np.float64
        generate.py feeds float64; the networks cast z to float32 before anything else, so float32 gives
        identical images.

    Returns
    -------
    z : ndarray of shape (len(seeds), z_dim)
        Row i is ``np.random.RandomState(seeds[i]).randn(z_dim)``.
    """
    seeds = [check_seed(s) for s in np.asarray(seeds, dtype=object).ravel()]
    z = np.empty([len(seeds), z_dim], dtype=dtype)
    for i, seed in enumerate(seeds):
        z[i] = np.random.RandomState(seed).randn(z_dim)
    return z


def z_batch(batch_seed, num, z_dim, start=0, dtype=np.float64):
    """Rows start .. start+num-1 of batch seed `batch_seed` (see the module docstring).

    The rows before `start` are drawn and discarded in bounded chunks: the normal sampler consumes a
    variable number of uniforms per value, so a stream cannot be advanced without drawing.

    Returns
    -------
    z : ndarray of shape (num, z_dim)
    """
    if num < 0 or start < 0:
        raise ValueError(f'num and start must be >= 0, got num={num}, start={start}')
    rs = np.random.RandomState(check_seed(batch_seed))
    skip = start * z_dim
    while skip > 0:
        rs.standard_normal(min(skip, _SKIP_CHUNK))
        skip -= _SKIP_CHUNK
    return rs.standard_normal(num * z_dim).reshape(num, z_dim).astype(dtype, copy=False)


def one_hot(classes, c_dim):
    """One-hot float32 labels [len(classes), c_dim], NVlabs' label convention."""
    classes = np.asarray(classes, dtype=np.int64).ravel()
    if classes.size and (classes.min() < 0 or classes.max() >= c_dim):
        raise ValueError(f'class indices must be in [0, {c_dim}), got {classes.min()}..{classes.max()}')
    c = np.zeros([classes.size, c_dim], dtype=np.float32)
    c[np.arange(classes.size), classes] = 1
    return c


def random_labels(seed, num, c_dim, start=0):
    """Random one-hot labels of rows start .. start+num-1 of batch seed `seed`.

    Row j is class ``np.random.RandomState([seed, 1]).randint(c_dim, size=M)[j]`` for any M > j. With
    c_dim == 0 (unconditional network) the result is an empty [num, 0] array.

    Returns
    -------
    c : float32 ndarray of shape (num, c_dim)
    """
    if c_dim == 0:
        return np.zeros([num, 0], dtype=np.float32)
    rs = np.random.RandomState([check_seed(seed), _LABEL_STREAM])
    return one_hot(rs.randint(c_dim, size=start + num)[start:], c_dim)

# ----------------------------------------------------------------------------
# Files.

def file_sha256(path, chunk_size=1 << 20):
    """Hex SHA-256 of a file's bytes (identifies the network pickle a bank was computed for)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk_size), b''):
            digest.update(block)
    return digest.hexdigest()


def network_sha256(network):
    """The SHA-256 that identifies a network in bank metadata: of a pickle's bytes (a URL is read through the
    download cache), or of a BigGAN checkpoint's weights file (a checkpoint folder's pytorch_model.bin)."""
    import dnnlib
    from training import load_biggan
    if load_biggan.is_checkpoint_path(network):
        return file_sha256(load_biggan.checkpoint_files(network)[0])
    if os.path.isfile(network):
        return file_sha256(network)
    return file_sha256(dnnlib.util.open_url(network, verbose=False, return_filename=True))


class FileFormatError(ValueError, UserError):
    """A file that cannot be read as what it should be (empty, truncated, damaged, another format); the
    message names the file and is one line."""


def read_npz(path, what='.npz file'):
    """All arrays of an ``.npz`` archive as a dict, read without pickle; every array is read in full, so the
    archive's CRC-32 checks run.

    Raises
    ------
    FileNotFoundError
        When `path` does not exist.
    FileFormatError
        One line naming `path` and `what` it should be: empty, a single ``.npy`` array, a pickle or text
        instead of an archive, truncated or damaged, or holding arrays of Python objects.
    """
    import zipfile
    import zlib

    path = os.fspath(path)
    with open(path, 'rb') as f:
        head = f.read(6)
    if not head:
        raise FileFormatError(f'{path} is empty: it should be a {what}')
    if head.startswith(b'\x93NUMPY'):
        raise FileFormatError(f'{path} is a single .npy array, not a {what} (an .npz archive of named arrays, '
                              f'numpy.savez)')
    if not head.startswith(b'PK'):
        kind = 'a pickle' if head[:1] == b'\x80' else 'not an .npz archive'
        raise FileFormatError(f'{path} is {kind}: it should be a {what} (an .npz archive, numpy.savez)')
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as err:
        if 'pickle' in str(err).lower():
            raise FileFormatError(f'{path} holds arrays of Python objects, which are not read (they would need '
                                  f'pickle): it is not a {what}') from None
        raise FileFormatError(f'{path} is damaged ({_first_line(err)}): it is not a readable {what}') from None
    except (EOFError, zipfile.BadZipFile, zlib.error, KeyError, OSError, UnicodeDecodeError) as err:
        raise FileFormatError(f'{path} is truncated or damaged ({_first_line(err)}): it is not a readable '
                              f'{what}') from None


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f'metadata value of type {type(obj).__name__} is not JSON-serialisable')


def make_meta(command=None, network_sha256=None, space=None, k=None, count_self=None, z_dim=None, c_dim=None,
              **extras):
    """Metadata record of a bank: what produced it, for which network, with which settings.

    Parameters
    ----------
    command : str, optional
        The producing command line (default: this process's ``sys.argv``, shell-quoted).
    network_sha256 : str, optional
        :func:`network_sha256` of the network.
    space, k, count_self : optional
        Scoring settings (e.g. 'w', 5, True for the hubness authors' convention).
    z_dim, c_dim : int, optional
    **extras
        Free-form JSON-serialisable values, stored under ``meta['extras']``.

    Returns
    -------
    dict
    """
    import torch  # Only for its version number.

    if command is None:
        command = ' '.join(shlex.quote(a) for a in sys.argv)
    return dict(
        command=command, network_sha256=network_sha256, space=space, k=k, count_self=count_self,
        z_dim=z_dim, c_dim=c_dim,
        versions=dict(bank_format=BANK_FORMAT, torch=torch.__version__, numpy=np.__version__),
        extras=extras,
    )

# ----------------------------------------------------------------------------

class LatentBank:
    """Latents with their labels, per-latent arrays and metadata; see the module docstring for the file format.

    Parameters
    ----------
    latents : array-like of shape (N, z_dim)
    labels : array-like of shape (N, c_dim), optional
        One-hot labels; None or an empty array for an unconditional network.
    meta : dict, optional
        JSON-serialisable metadata, e.g. from :func:`make_meta`.
    **arrays
        Further per-latent arrays (first dimension N): ``w``, ``seeds``, ``indices``, ``hub_score``, ``svds``...

    Examples
    --------
    >>> bank = LatentBank(z, hub_score=scores, meta=make_meta(k=5))  # doctest: +SKIP
    >>> bank.save('hubs.npz'); LatentBank.load('hubs.npz')['hub_score']  # doctest: +SKIP
    """

    def __init__(self, latents, labels=None, meta=None, **arrays):
        latents = np.asarray(latents)
        if latents.ndim != 2:
            raise ValueError(f"'latents' must have shape [N, z_dim], got {latents.shape}")
        num = latents.shape[0]
        labels = np.zeros([num, 0], dtype=np.float32) if labels is None else np.asarray(labels)
        if labels.size == 0 and labels.ndim < 2:
            labels = np.zeros([num, 0], dtype=labels.dtype if labels.dtype.kind == 'f' else np.float32)
        if labels.ndim != 2 or labels.shape[0] != num:
            raise ValueError(f"'labels' must be empty or have shape [N = {num}, c_dim], got {labels.shape}")
        self._arrays = dict(latents=latents, labels=labels)
        for name, value in arrays.items():
            value = np.asarray(value)
            if value.ndim == 0 or value.shape[0] != num:
                raise ValueError(f"bank array '{name}' must have {num} rows (one per latent), got shape {value.shape}")
            if value.dtype == object:
                raise ValueError(f"bank array '{name}' has dtype object, which cannot be stored without pickle")
            self._arrays[name] = value
        self.meta = dict(meta) if meta is not None else {}
        json.dumps(self.meta, default=_json_default)  # Fail now, not when saving.

    # Access.
    def __len__(self):
        return self._arrays['latents'].shape[0]

    def __getitem__(self, name):
        return self._arrays[name]

    def __contains__(self, name):
        return name in self._arrays

    def get(self, name, default=None):
        return self._arrays.get(name, default)

    def keys(self):
        return list(self._arrays)

    @property
    def num(self):
        return len(self)

    @property
    def latents(self):
        return self._arrays['latents']

    @property
    def labels(self):
        return self._arrays['labels']

    @property
    def z_dim(self):
        return self.latents.shape[1]

    @property
    def c_dim(self):
        return self.labels.shape[1]

    def __repr__(self):
        extra = ', '.join(f'{k}{list(v.shape[1:])}' for k, v in self._arrays.items() if k not in ('latents', 'labels'))
        return f'LatentBank(N={len(self)}, z_dim={self.z_dim}, c_dim={self.c_dim}' + (f', {extra})' if extra else ')')

    def _others(self):
        return {k: v for k, v in self._arrays.items() if k not in ('latents', 'labels')}

    def select(self, rows):
        """A new bank with the given rows (integer indices, in that order, or a boolean mask of length N)."""
        rows = np.asarray(rows)
        if rows.dtype == bool and rows.shape != (len(self),):
            raise ValueError(f'boolean row mask must have shape ({len(self)},), got {rows.shape}')
        pick = {k: v[rows] for k, v in self._arrays.items()}
        return LatentBank(pick.pop('latents'), pick.pop('labels'), meta=json.loads(json.dumps(self.meta)), **pick)

    def equals(self, other):
        """Same arrays (names, dtypes, values) and the same metadata."""
        return (self.keys() == other.keys() and self.meta == other.meta and
                all(self[k].dtype == other[k].dtype and np.array_equal(self[k], other[k]) for k in self.keys()))

    # Files.
    def save(self, path):
        """Write the bank to `path` (.npz) atomically, without pickle."""
        arrays = dict(self._arrays)
        if self.c_dim == 0:
            arrays['labels'] = np.zeros([0], dtype=self.labels.dtype)  # The authors' "no labels".
        arrays['meta'] = np.array(json.dumps(self.meta, default=_json_default))
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path):
        """Read a bank file (ours or the MaGNET authors'), or a folder of per-class files: see :func:`load_bank`."""
        return load_bank(path)


_CLASS_FILE = re.compile(r'(\d+)_.*\.npz')


def load_bank(source, c_dim=None):
    """Read a latent bank: one file, a folder of per-class files, or a list of either (see the module docstring).

    Parameters
    ----------
    source : path, or sequence of paths
        A bank written by :meth:`LatentBank.save`; a MaGNET authors' file (2-D or 3-D arrays); a folder of
        the authors' per-class files ``{class_index}_{name}.npz``; or several such per-class files. A
        sequence of one path is that path.
    c_dim : int, optional
        Classes of the network the bank is for: the width of the one-hot labels made from per-class file
        names (default: the largest class index + 1).

    Returns
    -------
    LatentBank
        Authors' files have ``meta['source'] == 'external'`` and ``meta['dropped_zero_rows']``.

    Raises
    ------
    ValueError
        One line naming the file and what is wrong (FileNotFoundError for a missing path).
    """
    files = bank_files(source)
    if len(files) == 1 and not _is_folder(source):
        bank = _read_bank_file(files[0])
        one_class_file = _CLASS_FILE.fullmatch(os.path.basename(os.fspath(files[0]))) is not None
        if not (c_dim and one_class_file and bank.meta.get('source') == 'external' and bank.c_dim == 0):
            return bank
    return _per_class_bank(files, c_dim)


def _is_folder(source):
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    return any(os.path.isdir(path) for path in paths)


def bank_files(source):
    """The files :func:`load_bank` reads for ``source`` (folders expanded to their .npz files, sorted)."""
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not paths:
        raise ValueError('no latent bank given')
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(glob.escape(os.fspath(path)), '*.npz')))
            if not found:
                raise ValueError(f'{path} is a folder without .npz bank files')
            files += found
        else:
            files.append(path)
    return files


def _per_class_bank(files, c_dim):
    """The authors' one-file-per-class banks joined into one conditional bank."""
    classes = []
    for path in files:
        match = _CLASS_FILE.fullmatch(os.path.basename(os.fspath(path)))
        if match is None:
            raise ValueError(f'{path}: several bank files (or a folder) must be the MaGNET authors\' per-class files, '
                             'named {class_index}_{name}.npz (e.g. 933_cheeseburger.npz); pass a single bank file '
                             'otherwise')
        classes.append(int(match[1]))
    files, classes = [f for _c, f in sorted(zip(classes, files), key=lambda pair: pair[0])], sorted(classes)
    if len(set(classes)) != len(classes):
        raise ValueError(f'two bank files have the same class index: {sorted(map(os.fspath, files))}')
    c_dim = max(classes) + 1 if c_dim is None else int(c_dim)
    if max(classes) >= c_dim:
        raise ValueError(f'bank file {files[classes.index(max(classes))]} is for class {max(classes)}, but the network '
                         f'has {c_dim} classes')
    banks, dropped = [], {}
    for path, class_idx in zip(files, classes):
        bank = _read_bank_file(path)
        if bank.meta.get('source') != 'external':
            raise ValueError(f'{path}: per-class bank files must be MaGNET authors\' files, not banks made here')
        labels = one_hot(np.full([len(bank)], class_idx), c_dim)
        if bank.c_dim and not (bank.labels.shape == labels.shape and np.array_equal(bank.labels, labels)):
            raise ValueError(f'{path}: its labels are not all class {class_idx}, the class in its name')
        banks.append(LatentBank(bank.latents, labels, **bank._others()))
        dropped[os.path.basename(os.fspath(path))] = bank.meta['dropped_zero_rows']
    meta = dict(source='external', source_files=sorted(dropped), classes=sorted(set(classes)),
                dropped_zero_rows=int(sum(dropped.values())), dropped_zero_rows_per_file=dropped)
    return concatenate(banks, meta=meta)


def _read_bank_file(path):
    arrays = read_npz(path, what='latent bank')
    if 'latents' not in arrays:
        raise ValueError(f"{path} is not a latent bank: it has no 'latents' array (keys: {sorted(arrays)})")
    if 'meta' in arrays:
        labels = arrays.pop('labels', None)
        if labels is not None and labels.ndim == 1 and labels.size:
            raise ValueError(f"{path}: 'labels' must be one-hot [N, c_dim] or empty, got shape {labels.shape}")
        meta = _read_meta(path, arrays.pop('meta'))
        fmt = meta.get('versions', {}).get('bank_format', BANK_FORMAT)
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            raise FileFormatError(f"{path}: the bank's meta has an invalid bank_format {fmt!r}")
        if fmt > BANK_FORMAT:
            raise ValueError(f'{path} uses bank format {fmt}, newer than this code ({BANK_FORMAT}); update it')
        try:
            return LatentBank(arrays.pop('latents'), labels, meta=meta, **arrays)
        except ValueError as err:
            raise FileFormatError(f'{path}: {_first_line(err)}') from None
    return _authors_bank(path, arrays)


def _authors_bank(path, arrays):
    """A MaGNET authors' file: [num_batches, batch, ...] or [N, ...] arrays, padding rows (svds sum 0) dropped."""
    latents = arrays.pop('latents')
    if latents.ndim not in (2, 3):
        raise ValueError(f"{path}: 'latents' must be [N, z_dim] or [num_batches, batch, z_dim], got {latents.shape}")
    lead = latents.shape[:-1]
    rows = int(np.prod(lead))
    flat = {}
    for name, value in dict(arrays, latents=latents).items():
        if name == 'labels' and value.size == 0:
            continue
        if value.ndim != latents.ndim or value.shape[:-1] != lead:
            raise ValueError(f"{path}: '{name}' has shape {value.shape}, but 'latents' has {latents.shape}; the "
                             f'arrays of a bank must have one row per latent')
        flat[name] = value.reshape(rows, value.shape[-1])
    keep = np.ones([rows], dtype=bool)
    if 'svds' in flat:
        keep = flat['svds'].sum(axis=1, dtype=np.float64) != 0  # Their rule: rows of zero singular values are padding.
    dropped = int(rows - keep.sum())
    flat = {name: value[keep] for name, value in flat.items()}
    meta = dict(source='external', source_file=os.path.basename(os.fspath(path)), dropped_zero_rows=dropped)
    try:
        return LatentBank(flat.pop('latents'), flat.pop('labels', None), meta=meta, **flat)
    except ValueError as err:
        raise FileFormatError(f'{path}: {_first_line(err)}') from None


def _read_meta(path, array):
    """The JSON object of a bank's ``meta`` array (a 0-d string)."""
    if array.ndim != 0 or array.dtype.kind != 'U':
        raise FileFormatError(f"{path}: the bank's 'meta' must be one JSON string, got a {array.dtype} array of "
                              f'shape {array.shape}')
    try:
        meta = json.loads(str(array[()]))
    except ValueError as err:
        raise FileFormatError(f"{path}: the bank's 'meta' is not valid JSON ({_first_line(err)})") from None
    if not isinstance(meta, dict):
        raise FileFormatError(f"{path}: the bank's 'meta' must be a JSON object, got a JSON {type(meta).__name__}")
    if not isinstance(meta.get('versions', {}), dict) or not isinstance(meta.get('extras', {}), dict):
        raise FileFormatError(f"{path}: the bank's 'meta' has 'versions' or 'extras' that are not JSON objects")
    return meta


def concatenate(banks, meta=None):
    """Join banks row-wise, in order (e.g. the chunks of a sharded run).

    All banks must hold the same arrays (names, trailing shapes, dtypes). The result's metadata is `meta`
    if given, else the first bank's, which then must agree with every other bank's on the settings that
    define the computation (network_sha256, space, k, count_self, z_dim, c_dim).
    """
    banks = list(banks)
    if not banks:
        raise ValueError('concatenate() needs at least one bank')
    first = banks[0]
    for i, bank in enumerate(banks[1:], start=1):
        if bank.keys() != first.keys():
            raise ValueError(f'bank {i} has arrays {bank.keys()}, bank 0 has {first.keys()}')
        for name in first.keys():
            a, b = first[name], bank[name]
            if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                raise ValueError(f"array '{name}': bank {i} has {b.dtype}{list(b.shape[1:])} per row, "
                                 f'bank 0 has {a.dtype}{list(a.shape[1:])}')
        if meta is None:
            for key in ('network_sha256', 'space', 'k', 'count_self', 'z_dim', 'c_dim'):
                if bank.meta.get(key) != first.meta.get(key):
                    raise ValueError(f"cannot join banks made with different {key}: {first.meta.get(key)!r} "
                                     f'(bank 0) vs {bank.meta.get(key)!r} (bank {i})')
    joined = {name: np.concatenate([b[name] for b in banks]) for name in first.keys()}
    meta = json.loads(json.dumps(first.meta if meta is None else meta, default=_json_default))
    return LatentBank(joined.pop('latents'), joined.pop('labels'), meta=meta, **joined)


def check_compatible(meta_or_bank, network_sha256=None, z_dim=None, c_dim=None):
    """Refuse a bank made for another network.

    Parameters
    ----------
    meta_or_bank : LatentBank or dict
    network_sha256 : str, optional
        :func:`network_sha256` of the network about to be used. Banks that recorded no hash (e.g. the MaGNET
        authors' files) cannot be checked on it and pass.
    z_dim, c_dim : int, optional
        The network's dimensions.

    Raises
    ------
    ValueError
        Naming both values, when the bank's recorded hash or dimensions differ from the network's.
    """
    if isinstance(meta_or_bank, LatentBank):
        meta = dict(meta_or_bank.meta, z_dim=meta_or_bank.z_dim, c_dim=meta_or_bank.c_dim)
    else:
        meta = dict(meta_or_bank)
    recorded = meta.get('network_sha256')
    if network_sha256 is not None and recorded is not None and recorded != network_sha256:
        raise ValueError(f'the latent bank was computed for network sha256 {recorded}, but this network is '
                         f'sha256 {network_sha256}; recompute the bank for this network')
    for name, want in (('z_dim', z_dim), ('c_dim', c_dim)):
        have = meta.get(name)
        if want is not None and have is not None and int(have) != int(want):
            raise ValueError(f'the latent bank has {name} = {have}, but the network has {name} = {want}; '
                             f'use a bank made for this network')

# ----------------------------------------------------------------------------
