"""Shared machinery of the metrics: streaming feature statistics and the dataset-statistics cache.

The field names, the pickle layout of :class:`FeatureStats` and the cache file naming follow
NVlabs' ``metric_utils`` so that statistics cached by their ``calc_metrics.py`` and by this
project are interchangeable (see ``docs/nvlabs-compat.md``, section 3).
"""

import hashlib
import os
import pickle
import tempfile

import numpy as np
import torch

from dnnlib import util

# ----------------------------------------------------------------------------


class FeatureStats:
    """Accumulate detector features batch by batch: all of them, their moments, or both.

    Parameters
    ----------
    capture_all : bool, default=False
        Keep every feature vector (needed by KID, precision/recall, IS).
    capture_mean_cov : bool, default=False
        Keep the float64 running sums needed for the mean and covariance (FID).
    max_items : int or None, default=None
        Stop accepting items once this many have been appended; a batch that crosses the
        limit is truncated.

    Attributes
    ----------
    num_items : int
        Number of feature vectors appended so far.
    num_features : int or None
        Feature dimension, fixed by the first non-empty batch.
    all_features : list of ndarray of shape (batch, num_features), float32, or None
        The appended batches, when ``capture_all``.
    raw_mean : ndarray of shape (num_features,), float64, or None
        Sum of the feature vectors (a sum, not a mean, as in NVlabs' cache files).
    raw_cov : ndarray of shape (num_features, num_features), float64, or None
        Sum of the outer products ``x^T x`` (not a covariance).
    """

    def __init__(self, capture_all=False, capture_mean_cov=False, max_items=None):
        self.capture_all = capture_all
        self.capture_mean_cov = capture_mean_cov
        self.max_items = max_items
        self.num_items = 0
        self.num_features = None
        self.all_features = None
        self.raw_mean = None
        self.raw_cov = None

    def set_num_features(self, num_features):
        """Fix the feature dimension and allocate the accumulators (idempotent)."""
        if self.num_features is not None:
            if num_features != self.num_features:
                raise ValueError(f'Expected {self.num_features} features per item, got {num_features}')
            return
        self.num_features = num_features
        self.all_features = []
        self.raw_mean = np.zeros([num_features], dtype=np.float64)
        self.raw_cov = np.zeros([num_features, num_features], dtype=np.float64)

    def is_full(self):
        """True once ``max_items`` items have been accepted."""
        return (self.max_items is not None) and (self.num_items >= self.max_items)

    def append(self, x):
        """Add a batch of feature vectors, ``x`` of shape (batch, num_features)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f'Expected features of shape [batch, num_features], got {list(x.shape)}')
        if self.max_items is not None:
            x = x[:max(self.max_items - self.num_items, 0)]
            if x.shape[0] == 0 and self.num_features is not None:
                return
        self.set_num_features(x.shape[1])
        self.num_items += x.shape[0]
        if self.capture_all:
            self.all_features.append(x)
        if self.capture_mean_cov:
            x64 = x.astype(np.float64)
            self.raw_mean += x64.sum(axis=0)
            self.raw_cov += x64.T @ x64

    def append_torch(self, x, num_gpus=1, rank=0):
        """Add a batch held by every process of a ``torch.distributed`` group.

        With ``num_gpus > 1`` the equally-shaped batches of all ranks are gathered and
        interleaved, item ``i`` of rank ``r`` landing at position ``i * num_gpus + r``, which is
        the order NVlabs' metric code produces.
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError('Expected a torch.Tensor of shape [batch, num_features]')
        if not 0 <= rank < num_gpus:
            raise ValueError(f'rank must be in [0, {num_gpus}), got {rank}')
        if num_gpus > 1:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise RuntimeError('append_torch(num_gpus > 1) needs an initialised torch.distributed process group')
            parts = [torch.empty_like(x) for _ in range(num_gpus)]
            torch.distributed.all_gather(parts, x.contiguous())
            x = torch.stack(parts, dim=1).flatten(0, 1)
        self.append(x.detach().cpu().numpy())

    def get_all(self):
        """All captured features as one float32 array of shape (num_items, num_features)."""
        if not self.capture_all:
            raise RuntimeError('FeatureStats was created with capture_all=False')
        if not self.all_features:
            return np.zeros([0, self.num_features or 0], dtype=np.float32)
        return np.concatenate(self.all_features, axis=0)

    def get_all_torch(self):
        """:meth:`get_all` as a CPU torch tensor."""
        return torch.from_numpy(self.get_all())

    def get_mean_cov(self):
        """Mean and population covariance (divided by N, not N - 1), both float64."""
        if not self.capture_mean_cov:
            raise RuntimeError('FeatureStats was created with capture_mean_cov=False')
        if self.num_items == 0:
            raise RuntimeError('FeatureStats holds no items')
        mean = self.raw_mean / self.num_items
        cov = self.raw_cov / self.num_items - np.outer(mean, mean)
        return mean, cov

    def save(self, pkl_file):
        """Pickle the attributes to ``pkl_file`` atomically (temporary file, then rename)."""
        dirname = os.path.dirname(os.path.abspath(pkl_file))
        os.makedirs(dirname, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dirname, prefix='.' + os.path.basename(pkl_file) + '.', suffix='.tmp')
        try:
            with os.fdopen(fd, 'wb') as f:
                pickle.dump(self.__dict__, f)
            os.replace(tmp, pkl_file)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, pkl_file):
        """Read a file written by :meth:`save` or by NVlabs' ``FeatureStats.save``.

        Only numpy arrays and plain containers are accepted, so a tampered cache file cannot run
        code on load.
        """
        with open(pkl_file, 'rb') as f:
            state = _StatsUnpickler(f).load()
        if not isinstance(state, dict) or 'num_items' not in state:
            raise ValueError(f'{pkl_file} is not a FeatureStats pickle')
        obj = cls(capture_all=state.get('capture_all', False), max_items=state.get('max_items'))
        obj.__dict__.update(state)
        return obj

# ----------------------------------------------------------------------------


class _StatsUnpickler(pickle.Unpickler):
    # numpy 2 writes numpy._core.*, numpy 1 numpy.core.*; NVlabs' EasyDict may appear in old files.
    _allowed = {
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
        ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
        ('collections', 'OrderedDict'), ('dnnlib.util', 'EasyDict'),
    }

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f'FeatureStats pickle refers to {module}.{name}, which is not allowed')
        return super().find_class(module, name)

# ----------------------------------------------------------------------------


def get_feature_detector_name(url):
    """Base name of a detector URL or path without its extension, e.g. 'inception-2015-12-05'."""
    return os.path.splitext(url.split('/')[-1])[0]


def dataset_stats_cache_path(dataset_name, detector_url, dataset_kwargs, detector_kwargs, stats_kwargs, cache_dir=None):
    """Path of the cached dataset statistics for one (dataset, detector, options) combination.

    The name is NVlabs': ``<dataset_name>-<detector name>-<md5>.pkl`` in the ``gan-metrics``
    folder of the dnnlib cache, the md5 taken over
    ``repr(sorted(dict(dataset_kwargs=..., detector_url=..., detector_kwargs=..., stats_kwargs=...).items()))``.
    Because ``dataset_kwargs`` is hashed through its repr, its key order and the exact path
    string matter, as they do for NVlabs.

    Parameters
    ----------
    cache_dir : str or None, default=None
        Cache root to use instead of dnnlib's (``dnnlib.util.make_cache_dir_path``); the file
        then lies in ``<cache_dir>/gan-metrics/``.
    """
    args = dict(dataset_kwargs=dataset_kwargs, detector_url=detector_url,
                detector_kwargs=detector_kwargs, stats_kwargs=stats_kwargs)
    md5 = hashlib.md5(repr(sorted(args.items())).encode('utf-8')).hexdigest()
    file_name = f'{dataset_name}-{get_feature_detector_name(detector_url)}-{md5}.pkl'
    if cache_dir is not None:
        return os.path.join(cache_dir, 'gan-metrics', file_name)
    return util.make_cache_dir_path('gan-metrics', file_name)

# ----------------------------------------------------------------------------
