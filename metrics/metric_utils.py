"""Shared machinery of the metrics: feature statistics, detectors, the dataset-statistics cache, feature extraction.

The field names, the pickle layout of :class:`FeatureStats` and the cache file naming follow
NVlabs' ``metric_utils`` so that statistics cached by their ``calc_metrics.py`` and by this
project are interchangeable (see ``docs/nvlabs-compat.md``, section 3).
"""

import copy
import hashlib
import inspect
import os
import pickle
import re

import numpy as np
import torch

from dnnlib import util
from torch_utils import safe_pickle

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
        with util.atomic_write(pkl_file) as f:
            pickle.dump(self.__dict__, f)

    @classmethod
    def load(cls, pkl_file):
        """Read a file written by :meth:`save` or by NVlabs' ``FeatureStats.save``.

        Only numpy arrays and plain containers are accepted, so a tampered cache file cannot run
        code on load.
        """
        with open(pkl_file, 'rb') as f:
            state = _load_stats_state(f)
        if not isinstance(state, dict) or 'num_items' not in state:
            raise ValueError(f'{pkl_file} is not a FeatureStats pickle')
        obj = cls(capture_all=state.get('capture_all', False), max_items=state.get('max_items'))
        obj.__dict__.update({key: value for key, value in state.items() if key in obj.__dict__})  # Known fields only.
        return obj

# ----------------------------------------------------------------------------


# numpy 2 writes numpy._core.*, numpy 1 numpy.core.*; NVlabs' EasyDict may appear in old files.
_STATS_GLOBALS = {**safe_pickle.BASIC_GLOBALS, **safe_pickle.NUMPY_GLOBALS, ('dnnlib.util', 'EasyDict'): util.EasyDict}


def _load_stats_state(f):
    try:
        return safe_pickle.load(f, _STATS_GLOBALS)  # Bounded: a tiny tampered cache cannot hang or exhaust memory.
    except safe_pickle.UnsafePickleError as err:
        raise pickle.UnpicklingError(f'FeatureStats pickle refused: {err}') from None

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
# Feature detectors.

# NVlabs' detectors, by the names ``--detector`` accepts. The ada files are TorchScript; the sg3 files are
# pickles that need their embedded code (allow_pickle_code=True).
DETECTOR_URLS = {
    'inception': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt',
    'vgg16': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt',
    'inception-sg3': 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl',
    'vgg16-sg3': 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/vgg16.pkl',
}


class DetectorError(ValueError, util.UserError):
    """A feature detector cannot be found, downloaded or loaded; the message is one line."""


def resolve_detector(name_or_path):
    """URL or path of a detector given by name (:data:`DETECTOR_URLS`), URL or local file.

    Raises
    ------
    DetectorError
        When it is none of those (e.g. a missing file).
    """
    name_or_path = os.fspath(name_or_path)
    if name_or_path in DETECTOR_URLS:
        return DETECTOR_URLS[name_or_path]
    if re.match('^[a-z]+://', name_or_path) or os.path.isfile(name_or_path):
        return name_or_path
    raise DetectorError(f'detector {name_or_path!r} is not a known name ({", ".join(DETECTOR_URLS)}), a URL or an '
                        'existing file')


def is_nvlabs_detector(url):
    """Whether ``url`` is one of NVlabs' published Inception-v3 / VGG16 detectors (comparable numbers)."""
    return url in DETECTOR_URLS.values()


_detector_cache = {}  # (url, device) -> module


def _load_detector_file(f, url, allow_pickle_code):
    if url.lower().split('?')[0].endswith('.pkl'):
        return _load_pickled_detector(f, url, allow_pickle_code)
    try:
        return torch.jit.load(f, map_location='cpu')
    except (RuntimeError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DetectorError(f'{url} is not a TorchScript detector ({message}); pass a file saved with '
                            'torch.jit.save, or a .pkl detector') from None


def _load_pickled_detector(f, url, allow_pickle_code):
    import legacy
    if allow_pickle_code:
        detector = pickle.load(f)
    else:
        # A module rebuilt by the safe loader would need a known architecture; detectors are not one.
        try:
            detector = safe_pickle.load(f, legacy._SAFE_GLOBALS)
        except safe_pickle.UnsafePickleError as err:
            detector = err
        if not isinstance(detector, torch.nn.Module):
            raise DetectorError(f'{url} is a pickle whose code safe loading cannot rebuild; use the TorchScript '
                                'detectors (--detector inception / vgg16, the StyleGAN2-ADA files) or pass '
                                '--allow-pickle-code if you trust the file') from None
    if not isinstance(detector, torch.nn.Module):
        raise DetectorError(f'{url} does not hold a torch module (found {type(detector).__name__})')
    return detector


def get_feature_detector(url, device='cpu', num_gpus=1, rank=0, verbose=False, allow_pickle_code=False):
    """Load a feature detector once per (url, device), through the ``dnnlib.util.open_url`` download cache.

    TorchScript files (NVlabs' StyleGAN2-ADA Inception-v3 / VGG16 ``.pt`` files, or any module saved with
    ``torch.jit.save``) are loaded with ``torch.jit.load``; ``.pkl`` files (the StyleGAN3 repository's
    detectors) only with ``allow_pickle_code=True``, since they hold code. With several processes, rank 0
    downloads first and the others wait for it.

    A custom detector is a module called as ``detector(images)`` with a uint8 NCHW tensor (0-255, three
    channels) and returning features [N, D]. If its ``forward`` accepts any of NVlabs' keyword arguments
    (``return_features``, ``no_output_bias``, ``resize_images``, ``return_lpips``), those are passed too
    (see :func:`run_detector`).

    Returns
    -------
    detector : torch.nn.Module
        In eval mode, on ``device``.

    Raises
    ------
    DetectorError
        With a one-line message when the file cannot be downloaded or loaded.
    """
    device = torch.device(device)
    key = (url, str(device))
    if num_gpus > 1 and rank != 0:
        torch.distributed.barrier()
    try:
        if key not in _detector_cache:
            try:
                with util.open_url(url, verbose=(verbose and rank == 0)) as f:
                    detector = _load_detector_file(f, url, allow_pickle_code)
            except DetectorError:
                raise
            except (OSError, ValueError) as err:
                raise DetectorError(f'cannot get detector {url}: {str(err).splitlines()[0]}; check the path, or '
                                    'download it elsewhere and pass the local file with --detector') from None
            for param in detector.parameters():  # ScriptModules have no requires_grad_().
                param.requires_grad_(False)
            _detector_cache[key] = detector.eval().to(device)
    finally:
        if num_gpus > 1 and rank == 0:
            torch.distributed.barrier()
    return _detector_cache[key]


def _forward_arguments(detector):
    """Names of the keyword arguments ``detector.forward`` (or a method) accepts, or None if it accepts any."""
    forward = getattr(detector, 'forward', detector)
    schema = getattr(forward, 'schema', None)
    if schema is not None:  # TorchScript method.
        return {arg.name for arg in schema.arguments} - {'self'}
    params = inspect.signature(forward).parameters.values()
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def run_detector(detector, images, class_outputs=False, **detector_kwargs):
    """Features of a batch of images: NVlabs' call convention, for NVlabs' and custom detectors.

    Grayscale images are repeated to three channels. Keyword arguments the detector's ``forward`` does not
    accept are dropped, so a custom ``forward(images)`` works with every metric. ``class_outputs=True`` calls
    the detector's ``probabilities`` (else ``logits``) method when it has one: class scores of a classifier.

    Parameters
    ----------
    images : Tensor of shape (N, C, H, W)
        uint8 0-255 (float 0-255 for PPL), on the detector's device.

    Returns
    -------
    features : Tensor of shape (N, D)
    """
    if images.shape[1] == 1:
        images = images.repeat([1, 3, 1, 1])
    forward = detector
    if class_outputs:  # A classifier's class scores rather than its features (the attribute metric).
        forward = next((getattr(detector, name) for name in ('probabilities', 'logits') if hasattr(detector, name)),
                       detector)
    accepted = _forward_arguments(forward)
    if accepted is not None:
        detector_kwargs = {k: v for k, v in detector_kwargs.items() if k in accepted}
    features = forward(images, **detector_kwargs)
    if not isinstance(features, torch.Tensor) or features.ndim < 1 or features.shape[0] != images.shape[0]:
        shape = list(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise DetectorError(f'the detector returned {shape} for {images.shape[0]} images; expected features [N, D]')
    return features.reshape(features.shape[0], -1)

# ----------------------------------------------------------------------------
# Options shared by the metrics.


class MetricOptions(util.EasyDict):
    """What a metric needs: the generator, the dataset, the sampler, the processes, the detectors.

    Parameters
    ----------
    G : generator
        Moved to ``device`` (a copy) by the feature extraction.
    G_kwargs : dict, default={}
        Extra arguments of ``G(z, c, ...)`` (e.g. ``noise_mode``).
    dataset_kwargs : dict, default={}
        The dataset in NVlabs' ``training_set_kwargs`` layout; only ``training.dataset.ImageFolderDataset``
        and its options are admitted (``training.dataset.check_dataset_kwargs``), never another class_name.
    num_gpus, rank : int, default=1, 0
        ``torch.distributed`` world size and rank (one process: 1, 0).
    device : torch.device, default=cpu
    progress : bool, default=False
        Show progress bars (rank 0 only).
    cache : bool, default=True
        Use the dataset statistics cache.
    sampler : Sampler, str or None, default=None
        Where the latents come from (:mod:`sampling.samplers`); None or a spec string is built on first use.
    seed : int, default=0
        Base seed of the whole evaluation.
    detectors : dict, default={}
        Detector URL per role ('inception', 'vgg16'), overriding NVlabs' (:data:`DETECTOR_URLS`).
    fid_stats : tuple (mu, sigma) or None
        Reference statistics that replace the dataset's for FID.
    allow_pickle_code : bool, default=False
        Allow ``.pkl`` detectors (they hold code).
    num_workers : int, default=3
        DataLoader workers for dataset features (NVlabs: 3).
    feature_memo : dict or None, default=None
        If a dict, the generator features of the last (detector, images) combination are kept in it and
        reused by the next metric that needs the same ones (e.g. fid50k_full then kid50k_full): the same
        numbers, half the synthesis. Costs the memory of the features.
    """

    _defaults = dict(G=None, G_kwargs=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None, progress=False,
                     cache=True, sampler=None, seed=0, detectors=None, fid_stats=None, allow_pickle_code=False,
                     num_workers=3, feature_memo=None)

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self._defaults))
        if unknown:
            raise TypeError(f'unknown metric options: {", ".join(unknown)}')
        super().__init__(self._defaults, **kwargs)
        self.G_kwargs = util.EasyDict(self.G_kwargs or {})
        self.dataset_kwargs = util.EasyDict(self.dataset_kwargs or {})
        self.detectors = dict(self.detectors or {})
        self.device = torch.device(self.device if self.device is not None else 'cpu')


def detector_url(opts, role):
    """The detector used for ``role`` ('inception', 'vgg16', 'attribute'): the user's override or NVlabs'."""
    url = opts.detectors.get(role) or DETECTOR_URLS.get(role)
    if url is None:  # 'attribute': there is no default classifier.
        raise DetectorError(f'the {role} metric needs a classifier: pass --detector {role}=PATH (a TorchScript '
                            'module with class outputs)')
    return url


def make_dataset(opts):
    """The dataset described by ``opts.dataset_kwargs``."""
    if not opts.dataset_kwargs:
        raise ValueError('this metric needs a dataset: pass --data (the network pickle records none)')
    from training.dataset import open_dataset
    return open_dataset(**opts.dataset_kwargs)  # Our dataset class only: never imports a class_name from a file.


def dataset_labels(dataset):
    """All labels of a dataset as float32 [N, label_dim] (the pool NVlabs' metrics draw labels from)."""
    if not dataset.has_labels:
        return None
    return np.stack([dataset.get_label(i) for i in range(len(dataset))]).astype(np.float32)


def get_sampler(opts):
    """``opts.sampler`` built for ``opts.G`` (once): a spec string or None (``random``) becomes a Sampler."""
    from sampling import samplers
    if opts.sampler is None or isinstance(opts.sampler, (str, samplers.Spec)):
        spec = samplers.parse(opts.sampler or 'random')
        label_pool = None
        if opts.G.c_dim and opts.dataset_kwargs:
            label_pool = dataset_labels(make_dataset(opts))
        opts.sampler = samplers.build(spec, opts.G, device=opts.device, label_pool=label_pool,
                                      progress=opts.progress and opts.rank == 0)
    return opts.sampler

# ----------------------------------------------------------------------------
# Work split across processes.


def rank_batches(num_items, batch_size, num_gpus, rank):
    """Global batches a rank computes: batch j holds items ``[j * batch_size, (j + 1) * batch_size)``.

    Rank r takes batches r, r + num_gpus, ...; every rank gets the same number of batches (the last round
    is padded with batches past the end, whose items are wrapped around and dropped after the gather), so
    every rank runs the same collective calls. The items of each batch, and hence every computed value,
    are the same as in a single process.

    Returns
    -------
    batches : list of int ndarray
        Item indices (in ``[0, num_items)``) of each of this rank's batches, in order.
    """
    num_batches = -(-num_items // batch_size)
    rounds = -(-num_batches // num_gpus)
    out = []
    for k in range(rounds):
        j = k * num_gpus + rank
        out.append(np.arange(j * batch_size, (j + 1) * batch_size) % num_items)
    return out


def gather_batches(x, num_gpus):
    """Concatenate one equally-shaped batch from every rank, in rank order (the global batch order)."""
    if num_gpus == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(num_gpus)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _broadcast_flag(flag, opts):
    if opts.num_gpus == 1:
        return flag
    value = torch.as_tensor(float(flag), dtype=torch.float32, device=_comm_device(opts))
    torch.distributed.broadcast(value, src=0)
    return bool(value.item())


def _comm_device(opts):
    # gloo works on CPU tensors, nccl on CUDA tensors.
    return opts.device if opts.device.type == 'cuda' else torch.device('cpu')


def _progress(opts, total, desc):
    from tqdm import tqdm
    return tqdm(total=total, unit='img', desc=desc, disable=not (opts.progress and opts.rank == 0), leave=False)

# ----------------------------------------------------------------------------
# Feature statistics of a dataset and of a generator.


def compute_feature_stats_for_dataset(opts, detector_url, detector_kwargs, rel_lo=0, rel_hi=1, batch_size=64,
                                      data_loader_kwargs=None, max_items=None, **stats_kwargs):
    """Detector features of (the first ``max_items`` items of) the dataset, cached on disk.

    The cache file is NVlabs' (:func:`dataset_stats_cache_path` over ``opts.dataset_kwargs``, the detector URL
    and kwargs, and ``stats_kwargs``), written atomically by rank 0. A cached file is used only if it holds
    the expected number of items (NVlabs' name does not encode ``max_items``); otherwise it is recomputed.
    ``rel_lo`` and ``rel_hi`` (NVlabs' progress range) are accepted and ignored.

    Returns
    -------
    FeatureStats
    """
    del rel_lo, rel_hi
    dataset = make_dataset(opts)
    num_items = len(dataset) if max_items is None else min(len(dataset), max_items)
    cache_file = None
    if opts.cache:
        cache_file = dataset_stats_cache_path(dataset.name, detector_url, opts.dataset_kwargs, detector_kwargs,
                                              stats_kwargs)
        stats = None
        if opts.rank == 0 and os.path.isfile(cache_file):
            stats = _load_cached_stats(cache_file, num_items, stats_kwargs)
        if _broadcast_flag(stats is not None, opts):
            return stats if stats is not None else FeatureStats.load(cache_file)

    stats = FeatureStats(max_items=num_items, **stats_kwargs)
    detector = get_feature_detector(detector_url, device=opts.device, num_gpus=opts.num_gpus, rank=opts.rank,
                                    verbose=opts.progress, allow_pickle_code=opts.allow_pickle_code)
    batches = rank_batches(num_items, batch_size, opts.num_gpus, opts.rank)
    if data_loader_kwargs is None:
        data_loader_kwargs = dict(pin_memory=(opts.device.type == 'cuda'), num_workers=opts.num_workers)
        if opts.num_workers > 0:
            data_loader_kwargs['prefetch_factor'] = 2
    items = np.concatenate(batches) if batches else np.zeros([0], dtype=np.int64)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, items.tolist()), batch_size=batch_size,
                                         shuffle=False, **data_loader_kwargs)
    with _progress(opts, num_items, 'Dataset features') as bar:
        for images, _labels in loader:
            images = torch.as_tensor(images).to(opts.device)
            with torch.no_grad():
                features = run_detector(detector, images, **detector_kwargs)
            before = stats.num_items
            stats.append(gather_batches(features, opts.num_gpus).cpu().numpy())
            bar.update(stats.num_items - before)
    if cache_file is not None and opts.rank == 0:
        stats.save(cache_file)
    return stats


def _load_cached_stats(cache_file, num_items, stats_kwargs):
    try:
        stats = FeatureStats.load(cache_file)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError):
        return None
    wanted = FeatureStats(**stats_kwargs)
    if (stats.num_items != num_items or stats.capture_all != wanted.capture_all
            or stats.capture_mean_cov != wanted.capture_mean_cov):
        return None
    return stats


def noise_seed(seed, group):
    """Seed of the torch generator that draws the per-image noise of latent group ``group``."""
    return int(np.random.SeedSequence([int(seed), 2, int(group)]).generate_state(1, np.uint64)[0] >> 1)


def compute_feature_stats_for_generator(opts, detector_url, detector_kwargs, rel_lo=0, rel_hi=1, batch_size=64,
                                        batch_gen=None, **stats_kwargs):
    """Detector features of ``stats_kwargs['max_items']`` images drawn through ``opts.sampler``.

    Latents come from ``sampler.sample(max_items, opts.seed)``, so the result is reproducible. Images are
    synthesised ``batch_gen`` (default 4, NVlabs') latents at a time, with ``G(z, c, truncation_psi=psi,
    **opts.G_kwargs)``; NVlabs' default ``noise_mode='random'`` draws per-image noise, which here comes from
    the global torch generator seeded with :func:`noise_seed` for each group of ``batch_gen`` latents (and
    restored afterwards). Images are converted as NVlabs does, ``(img * 127.5 + 128).clamp(0, 255)`` to
    uint8, then fed to the detector ``batch_size`` at a time. With several processes each rank computes whole
    batches (:func:`rank_batches`), so the numbers equal a single process's.

    Returns
    -------
    FeatureStats
    """
    del rel_lo, rel_hi
    num_items = stats_kwargs.get('max_items')
    if not num_items or num_items < 1:
        raise ValueError('compute_feature_stats_for_generator needs max_items (the number of images) >= 1')
    if batch_gen is None:
        batch_gen = min(batch_size, 4)
    if batch_size % batch_gen != 0:
        raise ValueError(f'batch_size ({batch_size}) must be a multiple of batch_gen ({batch_gen})')
    sampler = get_sampler(opts)
    memo = opts.feature_memo
    key = (detector_url, repr(sorted(detector_kwargs.items())), num_items, opts.seed, id(sampler), id(opts.G),
           repr(sorted(opts.G_kwargs.items())), batch_size, batch_gen, opts.num_gpus, str(opts.device))
    if memo is not None and key in memo:
        rounds = memo[key]
    else:
        rounds = _generator_feature_rounds(opts, sampler, detector_url, detector_kwargs, num_items, batch_size,
                                           batch_gen)
    stats = FeatureStats(**stats_kwargs)
    kept = []
    with _progress(opts, num_items, 'Generator features') as bar:
        for features in rounds:
            before = stats.num_items
            stats.append(features)
            bar.update(stats.num_items - before)
            if memo is not None:
                kept.append(features)
    if memo is not None:
        memo.clear()  # One entry: the metrics of a run that share images usually come one after the other.
        memo[key] = kept
    return stats


def _generator_feature_rounds(opts, sampler, detector_url, detector_kwargs, num_items, batch_size, batch_gen):
    """Yield the gathered features of each round of batches (float32 numpy, global batch order)."""
    z_all, c_all, psi = sampler.sample(num_items, opts.seed)
    G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    detector = get_feature_detector(detector_url, device=opts.device, num_gpus=opts.num_gpus, rank=opts.rank,
                                    verbose=opts.progress, allow_pickle_code=opts.allow_pickle_code)
    G_kwargs = dict(dict(truncation_psi=psi), **opts.G_kwargs)  # An explicit G_kwargs psi wins.
    fork_devices = [opts.device.index or 0] if opts.device.type == 'cuda' else []
    for items in rank_batches(num_items, batch_size, opts.num_gpus, opts.rank):
        images = []
        for i0 in range(0, batch_size, batch_gen):
            sub = items[i0:i0 + batch_gen]
            z = torch.from_numpy(z_all[sub]).to(opts.device)
            c = torch.from_numpy(c_all[sub]).to(opts.device)
            group = (int(items[0]) + i0) // batch_gen  # A global index: the same in any number of processes.
            with torch.no_grad(), torch.random.fork_rng(devices=fork_devices, device_type=opts.device.type):
                torch.manual_seed(noise_seed(opts.seed, group))
                img = G(z=z, c=c, **G_kwargs)
            images.append((img * 127.5 + 128).clamp(0, 255).to(torch.uint8))
        with torch.no_grad():
            features = run_detector(detector, torch.cat(images), **detector_kwargs)
        yield gather_batches(features, opts.num_gpus).cpu().numpy()

# ----------------------------------------------------------------------------
