"""Hubness-aware efficient precision and recall (Liang et al., ICML 2024 follow-up of hubness priors).

Improved precision/recall (:mod:`metrics.precision_recall`) evaluated on the hubs of each feature
set only. Then:

* the manifold of each set is the union of the balls around its hubs, each ball with the hub's
  usual k-NN radius, measured against the *whole* set (the radius a hub has in the full metric);
* the probes are the hubs of the other set: precision is the fraction of generated hubs inside
  the real hub manifold, recall the fraction of real hubs inside the generated hub manifold.

Which samples are hubs (k = ``hub_k``, default ``nhood_size`` = 3; t = ``hub_threshold``, default 3):

* ``count_self=True`` (default, the authors' convention): every sample is its own first neighbour in a
  top-(k+1) list, and a hub's score, ``1 +`` its k-occurrence among the others, exceeds t; i.e. the
  others list it at least t times (N_k >= t, here 3 = k, "at least as often as average").
* ``count_self=False`` (this module's earlier rule): the others list it more than t times (N_k > t),
  one step stricter, so fewer hubs.

The k-occurrence comes from :func:`sampling.hubness.k_occurrence` (duplicate rows: see its docstring).
This is an approximation of the full metric; :func:`efficient_precision_recall_with_error` computes
both and their difference, absolute and relative. The authors report relative errors of 0.4-2.3 %
on Inception/VGG features of real datasets; the README's benchmark table gives ours on synthetic and on
MNIST-classifier features (``benchmarks/bench_metrics.py --errors``): check it on your own features
before relying on it. Its cost is dominated by the exact k-occurrence of both sets.
"""

import torch

from metrics import precision_recall
from sampling.hubness import k_occurrence

# ----------------------------------------------------------------------------


def hub_indices(features, k=3, threshold=3, count_self=True, block_size=None):
    """Indices of the hubs of ``features`` (see the module docstring for the two conventions).

    Parameters
    ----------
    features : Tensor of shape (N, d)
        Scored in float32 on the tensor's device.
    k : int, default=3
        Neighbourhood size (neighbours other than the sample itself).
    threshold : int, default=3
        t: with ``count_self`` a hub is listed by the others at least t times, without it more than t times.
    count_self : bool, default=True
        The authors' convention: the score counts the sample itself once (top k+1) and must exceed t.
    block_size : int or None, default=None
        Passed to :func:`sampling.hubness.k_occurrence`.

    Returns
    -------
    indices : LongTensor of shape (num_hubs,), ascending
    """
    kwargs = dict(block_size=block_size, device=features.device)
    if count_self:
        scores = k_occurrence(features.float(), k + 1, count_self=True, **kwargs)
    else:
        scores = k_occurrence(features.float(), k, count_self=False, **kwargs)
    return torch.nonzero(scores.to(features.device) > threshold)[:, 0]


def _hub_precision_recall(real, gen, nhood_size, hub_k, hub_threshold, count_self, row_batch_size, col_batch_size):
    blocks = dict(row_batch_size=row_batch_size, col_batch_size=col_batch_size)
    real_hubs = hub_indices(real, hub_k, hub_threshold, count_self=count_self)
    gen_hubs = hub_indices(gen, hub_k, hub_threshold, count_self=count_self)
    if real_hubs.numel() == 0 or gen_hubs.numel() == 0:
        rule = f'>= {hub_threshold}' if count_self else f'> {hub_threshold}'
        raise ValueError(f'No hubs with k-occurrence {rule} (real: {real_hubs.numel()}, '
                         f'gen: {gen_hubs.numel()}); lower hub_threshold or use more samples')
    real_h, gen_h = real[real_hubs], gen[gen_hubs]
    real_radii = precision_recall.compute_knn_radii(real_h, real, nhood_size, **blocks)
    precision = precision_recall.manifold_hits(gen_h, real_h, real_radii, **blocks).double().mean().item()
    gen_radii = precision_recall.compute_knn_radii(gen_h, gen, nhood_size, **blocks)
    recall = precision_recall.manifold_hits(real_h, gen_h, gen_radii, **blocks).double().mean().item()
    return dict(precision=float(precision), recall=float(recall),
                num_real_hubs=int(real_hubs.numel()), num_gen_hubs=int(gen_hubs.numel()))


def efficient_precision_recall_from_features(real, gen, nhood_size=3, hub_k=None, hub_threshold=3, count_self=True,
                                             row_batch_size=10000, col_batch_size=10000, device=None, fp16=True):
    """Hubness-aware approximation of :func:`metrics.precision_recall.precision_recall_from_features`.

    Parameters
    ----------
    real, gen : ndarray or Tensor of shape (N_real, d) and (N_gen, d)
    nhood_size : int, default=3
        k of the k-NN radii.
    hub_k : int or None, default=None
        k of the k-occurrence that selects the hubs; None uses ``nhood_size``.
    hub_threshold : int, default=3
        t of the hub rule.
    count_self : bool, default=True
        The authors' hub rule (k-occurrence among the others >= t); False: > t. See the module docstring.
    row_batch_size, col_batch_size, device, fp16
        As in :func:`metrics.precision_recall.precision_recall_from_features`.

    Returns
    -------
    precision, recall : float
    """
    out = _run(real, gen, nhood_size, hub_k, hub_threshold, count_self, row_batch_size, col_batch_size, device, fp16,
               full=False)
    return out['precision'], out['recall']


def efficient_precision_recall_with_error(real, gen, nhood_size=3, hub_k=None, hub_threshold=3, count_self=True,
                                          row_batch_size=10000, col_batch_size=10000, device=None, fp16=True):
    """The efficient metric, the full metric on the same features, and the difference.

    Returns
    -------
    result : dict
        ``precision``, ``recall`` (efficient), ``full_precision``, ``full_recall``,
        ``precision_error``, ``recall_error`` (efficient minus full, absolute units),
        ``precision_rel_error``, ``recall_rel_error`` (the same divided by the full value, as the authors
        report it; NaN when the full value is 0), ``num_real_hubs``, ``num_gen_hubs``.
    """
    return _run(real, gen, nhood_size, hub_k, hub_threshold, count_self, row_batch_size, col_batch_size, device, fp16,
                full=True)


def _run(real, gen, nhood_size, hub_k, hub_threshold, count_self, row_batch_size, col_batch_size, device, fp16, full):
    if device is None and isinstance(real, torch.Tensor):
        device = real.device
    real = precision_recall.to_feature_tensor(real, device=device, fp16=fp16)
    gen = precision_recall.to_feature_tensor(gen, device=real.device, fp16=fp16)
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f'real and gen features differ in dimension: {real.shape[1]} vs {gen.shape[1]}')
    hub_k = nhood_size if hub_k is None else hub_k
    out = _hub_precision_recall(real, gen, nhood_size, hub_k, hub_threshold, count_self, row_batch_size,
                                col_batch_size)
    if full:
        kwargs = dict(nhood_size=nhood_size, row_batch_size=row_batch_size, col_batch_size=col_batch_size, fp16=fp16)
        out['full_precision'], out['full_recall'] = precision_recall.precision_recall_from_features(real, gen, **kwargs)
        out['precision_error'] = out['precision'] - out['full_precision']
        out['recall_error'] = out['recall'] - out['full_recall']
        for name in ('precision', 'recall'):
            full_value = out[f'full_{name}']
            out[f'{name}_rel_error'] = out[f'{name}_error'] / full_value if full_value else float('nan')
    return out

# ----------------------------------------------------------------------------
