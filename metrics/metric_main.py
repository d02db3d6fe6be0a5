"""The metrics by name: NVlabs' names and parameters, a size grammar, and NVlabs' result records.

Names
-----
NVlabs' (StyleGAN2-ADA) metrics, with their parameters (``docs/nvlabs-compat.md``, section 3):

=============  ==========================================================================================
fid50k_full    FID, all real images (no mirroring) against 50,000 generated ones, Inception-v3 features
kid50k_full    KID, up to 1,000,000 real images, 50,000 generated, 100 subsets of at most 1,000
pr50k3_full    precision/recall, up to 200,000 real, 50,000 generated, k = 3, VGG16 features
is50k          Inception Score, 50,000 generated images, 10 splits
ppl2_wend      PPL, 50,000 pairs, W space, endpoints, no crop, epsilon 1e-4
fid50k         as fid50k_full with at most 50,000 real images, keeping the dataset's mirroring
kid50k         as kid50k_full with at most 50,000 real images, keeping the dataset's mirroring
pr50k3         as pr50k3_full with at most 50,000 real images, keeping the dataset's mirroring
ppl_zfull,     PPL with the crop of StyleGAN2-ADA's ``ppl_*`` metrics, in Z (slerp) or W (lerp), t uniform
ppl_wfull,     ('full') or t = 0 ('end')
ppl_zend,
ppl_wend
=============  ==========================================================================================

``*_full`` metrics read the dataset with ``max_size=None, xflip=False``; the others only set
``max_size=None`` and so keep the training mirroring.

Size grammar (S is ``{N}k`` for N thousand, or a plain count ``{N}``):

* ``fid{S}_full``, ``fid{S}``: S generated images (and, without ``_full``, at most S real ones);
* ``kid{S}_full``, ``kid{S}``: likewise (``_full``: up to 1,000,000 real images);
* ``pr{N}k{K}_full``, ``pr{N}k{K}``, and with a plain count ``pr{N}_{K}_full``, ``pr{N}_{K}``: k = K;
* ``epr{N}k{K}_full`` ... (same forms): hubness-aware *efficient* precision/recall (Liang et al. 2024), an
  estimate of ``pr`` computed on the hubs only (the authors' rule: listed by at least 3 others among
  their 3 nearest neighbours) -- not an NVlabs metric;
* ``is{S}``;
* ``attr{S}``: the attribute distribution of S generated images (:mod:`metrics.attribute_distribution`) under the
  classifier given as ``--detector attribute=PATH`` (entropy, KL to uniform and to the real images, majority
  share), not an NVlabs metric;
* PPL: ``ppl2_{z|w}{end|full}`` (no crop) and ``ppl_{z|w}{end|full}`` (crop), optionally followed by
  ``_{S}`` for the number of pairs, e.g. ``ppl2_wend_1k``.

So ``fid50k_full`` is the NVlabs metric and ``fid1k_full`` / ``fid500_full`` are the same with fewer images.

Results
-------
:func:`calc_metric` returns NVlabs' record: ``results`` (e.g. ``{'fid50k_full': 2.74}``; P/R give
``<name>_precision`` and ``<name>_recall``, IS ``<name>_mean`` and ``<name>_std``), ``metric``, ``total_time``,
``total_time_str``, ``num_gpus``, plus ``sampler``, ``seed`` and ``detectors`` (what produced the number).
:func:`report_metric` prints it as one JSON line and appends it to ``metric-<name>.jsonl``.
"""

import json
import os
import re
import time

import numpy as np
import torch

import dnnlib
from metrics import metric_utils

# ----------------------------------------------------------------------------
# The metric implementations: opts in, a dict of results out (NaN on ranks other than 0).


def _full_dataset(opts, full):
    if not opts.dataset_kwargs:  # No dataset (IS / PPL of an unconditional network need none).
        return
    opts.dataset_kwargs.update(max_size=None)
    if full:
        opts.dataset_kwargs.update(xflip=False)


def _real_stats(opts, role, detector_kwargs, max_real, **stats_kwargs):
    return metric_utils.compute_feature_stats_for_dataset(
        opts, detector_url=metric_utils.detector_url(opts, role), detector_kwargs=detector_kwargs,
        rel_lo=0, rel_hi=0, max_items=max_real, **stats_kwargs)


def _gen_stats(opts, role, detector_kwargs, num_gen, **stats_kwargs):
    return metric_utils.compute_feature_stats_for_generator(
        opts, detector_url=metric_utils.detector_url(opts, role), detector_kwargs=detector_kwargs,
        rel_lo=0, rel_hi=1, max_items=num_gen, **stats_kwargs)


def fid(opts, name, max_real, num_gen, full):
    from metrics.frechet_inception_distance import fid_from_stats
    detector_kwargs = dict(return_features=True)
    if opts.fid_stats is not None:
        mu_real, sigma_real = opts.fid_stats
    else:
        _full_dataset(opts, full)
        mu_real, sigma_real = _real_stats(opts, 'inception', detector_kwargs, max_real,
                                          capture_mean_cov=True).get_mean_cov()
    mu_gen, sigma_gen = _gen_stats(opts, 'inception', detector_kwargs, num_gen, capture_mean_cov=True).get_mean_cov()
    if opts.rank != 0:
        return {name: float('nan')}
    if np.shape(mu_real) != np.shape(mu_gen):
        raise ValueError(f'the reference statistics have {np.shape(mu_real)[0]} features but the detector gives '
                         f'{np.shape(mu_gen)[0]}; use the detector the statistics were computed with')
    return {name: fid_from_stats(mu_gen, sigma_gen, mu_real, sigma_real)}


def kid(opts, name, max_real, num_gen, full, num_subsets=100, max_subset_size=1000):
    from metrics.kernel_inception_distance import kid_from_features
    _full_dataset(opts, full)
    detector_kwargs = dict(return_features=True)
    real = _real_stats(opts, 'inception', detector_kwargs, max_real, capture_all=True).get_all()
    gen = _gen_stats(opts, 'inception', detector_kwargs, num_gen, capture_all=True).get_all()
    if opts.rank != 0:
        return {name: float('nan')}
    return {name: kid_from_features(real, gen, num_subsets=num_subsets, max_subset_size=max_subset_size,
                                    seed=opts.seed)}


def pr(opts, name, max_real, num_gen, full, nhood_size, efficient=False, row_batch_size=10000,
       col_batch_size=10000):
    from metrics import efficient_precision_recall, precision_recall
    _full_dataset(opts, full)
    detector_kwargs = dict(return_features=True)
    real = _real_stats(opts, 'vgg16', detector_kwargs, max_real, capture_all=True).get_all_torch()
    gen = _gen_stats(opts, 'vgg16', detector_kwargs, num_gen, capture_all=True).get_all_torch()
    if opts.rank != 0:
        return {f'{name}_precision': float('nan'), f'{name}_recall': float('nan')}
    fn = (efficient_precision_recall.efficient_precision_recall_from_features if efficient
          else precision_recall.precision_recall_from_features)
    precision, recall = fn(real, gen, nhood_size=nhood_size, row_batch_size=row_batch_size,
                           col_batch_size=col_batch_size, device=opts.device)
    return {f'{name}_precision': precision, f'{name}_recall': recall}


def inception_score(opts, name, num_gen, num_splits=10):
    from metrics.inception_score import is_from_probs
    _full_dataset(opts, full=True)
    probs = _gen_stats(opts, 'inception', dict(no_output_bias=True), num_gen, capture_all=True).get_all()
    if opts.rank != 0:
        return {f'{name}_mean': float('nan'), f'{name}_std': float('nan')}
    sums = probs.astype(np.float64).sum(axis=1)
    if probs.min() < 0 or np.abs(sums - 1).max() > 1e-3:
        raise ValueError('the Inception Score needs class probabilities (non-negative rows summing to 1), but the '
                         'detector returned other values; use NVlabs\' Inception detector or one that outputs them')
    mean, std = is_from_probs(probs, num_splits=num_splits)
    return {f'{name}_mean': mean, f'{name}_std': std}


def attribute_distribution(opts, name, num_gen):
    from metrics import attribute_distribution as attr
    detector_kwargs = dict(class_outputs=True)
    gen = attr.predicted_classes(_gen_stats(opts, 'attribute', detector_kwargs, num_gen, capture_all=True).get_all())
    real = None
    if opts.dataset_kwargs:
        _full_dataset(opts, full=True)
        real = attr.predicted_classes(_real_stats(opts, 'attribute', detector_kwargs, None,
                                                  capture_all=True).get_all())
    if opts.rank != 0:
        return {f'{name}_{key}': float('nan') for key in ('entropy', 'kl_uniform', 'kl_real', 'bias', 'majority')}
    num_classes = int(max(gen.max(), real.max() if real is not None else 0)) + 1
    gen_counts = attr.histogram(gen, num_classes)
    real_counts = attr.histogram(real, num_classes) if real is not None else None
    results = {f'{name}_{key}': value for key, value in attr.summarize(gen_counts, real_counts).items()}
    details = dict(histogram=gen_counts.tolist(), real_histogram=None if real_counts is None else real_counts.tolist())
    return results, details


def ppl(opts, name, num_samples, space, sampling, crop, epsilon=1e-4, batch_size=2):
    from metrics.perceptual_path_length import compute_ppl
    _full_dataset(opts, full=False)
    return {name: compute_ppl(opts, num_samples=num_samples, epsilon=epsilon, space=space, sampling=sampling,
                              crop=crop, batch_size=batch_size)}

# ----------------------------------------------------------------------------
# Names.

_SIZE = r'(\d+)(k?)'


def _size(number, thousands):
    value = int(number) * (1000 if thousands else 1)
    if value < 1:
        raise ValueError('size must be >= 1')
    return value


def _parse(metric):
    """(function, kwargs, detector roles) of a metric name, or None if it is not one."""
    m = re.fullmatch(rf'fid{_SIZE}(_full)?', metric)
    if m:
        n = _size(m.group(1), m.group(2))
        full = m.group(3) is not None
        return fid, dict(max_real=None if full else n, num_gen=n, full=full), ('inception',)
    m = re.fullmatch(rf'kid{_SIZE}(_full)?', metric)
    if m:
        n = _size(m.group(1), m.group(2))
        full = m.group(3) is not None
        return kid, dict(max_real=1000000 if full else n, num_gen=n, full=full), ('inception',)
    m = re.fullmatch(r'(e?)pr(?:(\d+)k|(\d+)_)(\d+)(_full)?', metric)
    if m:
        n = _size(m.group(2), True) if m.group(2) is not None else _size(m.group(3), False)
        k = int(m.group(4))
        full = m.group(5) is not None
        if k < 1:
            return None
        return pr, dict(max_real=200000 if full else n, num_gen=n, full=full, nhood_size=k,
                        efficient=bool(m.group(1))), ('vgg16',)
    m = re.fullmatch(rf'is{_SIZE}', metric)
    if m:
        return inception_score, dict(num_gen=_size(m.group(1), m.group(2))), ('inception',)
    m = re.fullmatch(rf'attr{_SIZE}', metric)
    if m:
        return attribute_distribution, dict(num_gen=_size(m.group(1), m.group(2))), ('attribute',)
    m = re.fullmatch(rf'ppl(2?)_([zw])(end|full)(?:_{_SIZE})?', metric)
    if m:
        n = 50000 if m.group(4) is None else _size(m.group(4), m.group(5))
        return ppl, dict(num_samples=n, space=m.group(2), sampling=m.group(3), crop=not m.group(1)), ('vgg16',)
    return None


_NVLABS_METRICS = ['fid50k_full', 'kid50k_full', 'pr50k3_full', 'ppl2_wend', 'is50k', 'fid50k', 'kid50k', 'pr50k3',
                   'ppl_zfull', 'ppl_wfull', 'ppl_zend', 'ppl_wend']

_GRAMMAR = ('fid{N}k[_full], kid{N}k[_full], pr{N}k{K}[_full], epr{N}k{K}[_full], is{N}k, attr{N}k, '
            'ppl[2]_{z|w}{end|full}[_{N}k]')


def is_valid_metric(metric):
    """Whether ``metric`` is an NVlabs name or a form of the size grammar (see the module docstring)."""
    try:
        return isinstance(metric, str) and _parse(metric) is not None
    except ValueError:
        return False


def list_valid_metrics():
    """NVlabs' metric names (the grammar accepts more, see the module docstring)."""
    return list(_NVLABS_METRICS)


def unknown_metric_message(metric):
    """One line saying why ``metric`` is not a metric and what is."""
    return (f'unknown metric {metric!r}; use one of {", ".join(_NVLABS_METRICS)}, or a size form such as '
            f'fid1k_full, pr1k3_full ({_GRAMMAR}; a plain count: fid500_full, pr500_3_full)')


def metric_kind(metric):
    """'fid', 'kid', 'pr' (also the efficient P/R), 'is', 'attr' or 'ppl'."""
    return {fid: 'fid', kid: 'kid', pr: 'pr', inception_score: 'is', attribute_distribution: 'attr',
            ppl: 'ppl'}[_parse(metric)[0]]


def detector_roles(metric):
    """Detector roles ('inception', 'vgg16', 'attribute') a metric uses."""
    return _parse(metric)[2]

# ----------------------------------------------------------------------------


def calc_metric(metric, **kwargs):
    """Compute one metric.

    Parameters
    ----------
    metric : str
        A name (see the module docstring).
    **kwargs
        :class:`metrics.metric_utils.MetricOptions` fields: G, G_kwargs, dataset_kwargs, num_gpus, rank,
        device, progress, cache, sampler, seed, detectors, fid_stats, allow_pickle_code, num_workers.

    Returns
    -------
    result : dnnlib.EasyDict
        ``results``, ``metric``, ``total_time``, ``total_time_str``, ``num_gpus``, ``sampler``, ``seed``,
        ``detectors``. With several processes every rank gets rank 0's numbers.
    """
    if not is_valid_metric(metric):
        raise ValueError(unknown_metric_message(metric))
    fn, params, roles = _parse(metric)
    opts = metric_utils.MetricOptions(**kwargs)
    if opts.G is None:
        raise ValueError('calc_metric needs a generator G')

    start = time.time()
    results = fn(opts, metric, **params)
    details = None
    if isinstance(results, tuple):  # (numbers, details such as a histogram) from the attribute metric.
        results, details = results
    total_time = time.time() - start

    # Every rank reports rank 0's numbers.
    for key, value in list(results.items()):
        if opts.num_gpus > 1:
            tensor = torch.as_tensor(float(value), dtype=torch.float64, device=metric_utils._comm_device(opts))
            torch.distributed.broadcast(tensor, src=0)
            value = tensor.item()
        results[key] = float(value)

    sampler = opts.sampler.describe() if hasattr(opts.sampler, 'describe') else (opts.sampler or 'random')
    detectors = {role: metric_utils.detector_url(opts, role) for role in roles}
    if metric.startswith('fid') and opts.fid_stats is not None:
        detectors['reference'] = 'fid_stats'
    record = dnnlib.EasyDict(results=dnnlib.EasyDict(results), metric=metric, total_time=total_time,
                             total_time_str=dnnlib.util.format_time(total_time), num_gpus=opts.num_gpus,
                             sampler=sampler, seed=opts.seed, detectors=detectors)
    if details is not None and opts.rank == 0:
        record.details = details
    return record


def _append_line(path, line):
    # One write() on an O_APPEND descriptor: concurrent writers never interleave a line, and a crash leaves
    # at most an incomplete last line, never a corrupted earlier one.
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + '\n').encode('utf-8'))
    finally:
        os.close(fd)


def report_metric(result_dict, run_dir=None, snapshot_pkl=None, jsonl_file=None):
    """Print a result as one JSON line and append it to ``<run_dir>/metric-<metric>.jsonl`` and ``jsonl_file``.

    As NVlabs: the line is the result plus ``snapshot_pkl`` (relative to ``run_dir`` when both are given
    and the file exists) and ``timestamp`` (``time.time()``).

    Returns
    -------
    line : str
    """
    metric = result_dict['metric']
    if snapshot_pkl is not None and run_dir is not None and os.path.exists(snapshot_pkl):
        snapshot_pkl = os.path.relpath(snapshot_pkl, run_dir)
    line = json.dumps(dict(result_dict, snapshot_pkl=snapshot_pkl, timestamp=time.time()))
    print(line, flush=True)
    if run_dir is not None and os.path.isdir(run_dir):
        _append_line(os.path.join(run_dir, f'metric-{metric}.jsonl'), line)
    if jsonl_file is not None:
        _append_line(jsonl_file, line)
    return line

# ----------------------------------------------------------------------------
