"""Polarity / MaGNET resampling of candidate latents by their Jacobian volume (Humayun et al., 2022).

Polarity sampling draws latents with density proportional to ``p_z(z) * (prod_{i <= K} sigma_i(z))^rho``:
rho = 0 is the model as trained, rho = 1 is MaGNET ("uniform on the learned manifold"), rho < 0 moves
toward the modes (precision), rho > 0 toward the anti-modes (recall). In practice one draws N candidate
latents, computes their top-K singular values (:mod:`sampling.volume`), and resamples the candidates
with weights ``w = vol^rho``. Everything here works in log space (``log w``, float64): products of 30
singular values overflow or underflow float32.

All randomness comes from ``numpy.random.default_rng(seed)`` (PCG64), or from a ``numpy.random.Generator``
passed as ``seed``. The algorithms below consume it in documented ways (uniforms, exponentials), so a
result is reproducible from its seed for a given NumPy version.

Contents:

* :func:`log_weights` -- ``rho * sum log(sigma_i + eps)``, the paper's weights.
* :func:`resample_with_replacement` -- the paper's Algorithm 1 (softmax of the log weights).
* :func:`resample_without_replacement` -- successive sampling, the semantics of the authors' demo.
* :func:`resample_per_class` -- probabilities normalised within each class (conditional banks).
* :func:`effective_sample_size` -- how many candidates the weights effectively keep.
* :func:`split_counts` -- "20 % MaGNET + 80 % random" as exact counts (mixtures: :mod:`sampling.samplers`).
"""

import math

import numpy as np
import torch

from . import volume

# ----------------------------------------------------------------------------
# Weights.


def _as_float64(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def log_weights(svds, rho, top_k=None, eps=0.0):
    """``rho * sum_{i <= K} log(sigma_i + eps)`` per candidate, float64.

    Parameters
    ----------
    svds : array-like of shape (N, M)
        Singular values per candidate (e.g. the ``svds`` key of the authors' files).
    rho : float
        Polarity. ``rho = 0`` gives zero weights (plain sampling) even where a log-volume is ``-inf``.
    top_k : int, optional
        ``K``; ``None`` uses all ``M`` columns. For a generator that normalises ``z`` keep
        ``K < z_dim`` (see :func:`sampling.volume.check_top_k`).
    eps : float, default=0.0
        Added to each singular value before the log.

    Returns
    -------
    log_w : ndarray of shape (N,), float64
        May hold ``-inf`` (never drawn). ``+inf`` or NaN (a zero singular value with ``rho < 0``, as in
        the all-zero padding rows of the authors' files) raises ``ValueError``.
    """
    logvol = volume.log_volume(_as_float64(svds), top_k=top_k, eps=eps)
    if rho == 0:
        return np.zeros_like(logvol)
    log_w = float(rho) * logvol
    bad = np.flatnonzero(np.isnan(log_w) | (log_w == np.inf))
    if len(bad):
        raise ValueError(f'{len(bad)} candidates (e.g. row {bad[0]}) have a zero or invalid singular value, which '
                         f'gives an infinite weight for rho={rho}: drop those rows (all-zero padding) or set eps > 0')
    return log_w


def _check_log_w(log_w):
    log_w = _as_float64(log_w)
    if log_w.ndim != 1 or len(log_w) == 0:
        raise ValueError(f'log_w must be a non-empty 1-D array, got shape {log_w.shape}')
    if np.isnan(log_w).any() or (log_w == np.inf).any():
        raise ValueError('log_w holds NaN or +inf')
    if log_w.max() == -np.inf:
        raise ValueError('every candidate has zero weight (log_w = -inf)')
    return log_w


def _probabilities(log_w):
    log_w = _check_log_w(log_w)
    p = np.exp(log_w - log_w.max())
    return p / p.sum()


def effective_sample_size(log_w):
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of weights given in log space.

    It is ``N`` for equal weights and 1 when one weight dominates. Computed as ``1 / sum p^2`` with
    ``p = softmax(log_w)``, which never overflows.
    """
    p = _probabilities(log_w)
    return float(1.0 / np.sum(p * p))

# ----------------------------------------------------------------------------
# Resampling a bank of candidates.


def resample_with_replacement(log_w, num, seed=0):
    """Draw ``num`` candidate indices i.i.d. with probabilities ``softmax(log_w)`` (the paper's Algorithm 1).

    Inverse-CDF sampling: ``num`` uniforms from ``rng.random`` are located in the float64 cumulative sum
    of the probabilities; zero-probability candidates are never drawn.

    Parameters
    ----------
    log_w : array-like of shape (N,)
    num : int
    seed : int or numpy.random.Generator, default=0

    Returns
    -------
    idx : ndarray of shape (num,), int64
    """
    p = _probabilities(log_w)
    cdf = np.cumsum(p)
    u = _rng(seed).random(int(num)) * cdf[-1]
    idx = np.searchsorted(cdf, u, side='right')
    return np.minimum(idx, len(p) - 1).astype(np.int64)


def resample_without_replacement(log_w, num, seed=0):
    """Draw ``num`` distinct candidate indices by successive sampling proportional to ``exp(log_w)``.

    Successive sampling draws one index with probability proportional to the weights, removes it,
    renormalises, and repeats. That is the semantics of ``numpy.random.choice(N, num, replace=False,
    p=w / w.sum())``, which the MaGNET authors' demo calls with ``w = clip(prod sigma, 1e-200, 1e200)``.
    We draw the same distribution without their clipping, in log space, by exponential races
    (Efraimidis-Spirakis, equivalently Gumbel-top-k): each candidate gets an arrival time
    ``E_i / w_i`` with ``E_i ~ Exp(1)`` from ``rng.standard_exponential(N)``, and the ``num`` earliest
    arrivals win, returned in arrival order (the order of successive sampling).

    Note that only the first draw is proportional to the weights: the inclusion probability of a
    candidate is *not* proportional to its weight (heavy candidates saturate at 1), so resampling
    without replacement only approximates the polarity density, the more so the larger ``num / N``
    and the more uneven the weights. :func:`resample_with_replacement` is exact.

    Parameters
    ----------
    log_w : array-like of shape (N,)
    num : int
        At most the number of candidates with a finite log weight.
    seed : int or numpy.random.Generator, default=0

    Returns
    -------
    idx : ndarray of shape (num,), int64, distinct
    """
    log_w = _check_log_w(log_w)
    num = int(num)
    available = int(np.count_nonzero(log_w > -np.inf))
    if not 0 <= num <= available:
        raise ValueError(f'cannot draw {num} distinct candidates: {available} have a non-zero weight')
    keys = (log_w - log_w.max()) - np.log(_rng(seed).standard_exponential(len(log_w)))   # -log(arrival time)
    idx = np.argpartition(-keys, num - 1)[:num] if 0 < num < len(keys) else np.arange(num)
    return idx[np.argsort(-keys[idx], kind='stable')].astype(np.int64)


def _class_ids(labels):
    labels = _as_float64(labels)
    if labels.ndim == 2:
        if labels.shape[1] == 0:
            raise ValueError('labels are empty: the bank is unconditional')
        ok = np.all((labels == 0) | (labels == 1), axis=1) & (labels.sum(axis=1) == 1)
        if not ok.all():
            raise ValueError(f'labels must be one-hot; row {int(np.flatnonzero(~ok)[0])} is not')
        return labels.argmax(axis=1), labels.shape[1]
    if labels.ndim == 1:
        if np.any(labels != np.round(labels)) or np.any(labels < 0):
            raise ValueError('integer class labels must be non-negative integers')
        ids = labels.astype(np.int64)
        return ids, int(ids.max()) + 1 if len(ids) else 0
    raise ValueError(f'labels must be one-hot [N, C] or class ids [N], got shape {labels.shape}')


def resample_per_class(log_w, labels, counts, seed=0, replace=True):
    """Resample within each class, with probabilities normalised per class (conditional banks).

    Parameters
    ----------
    log_w : array-like of shape (N,)
    labels : array-like of shape (N, C) one-hot, or (N,) integer class ids
    counts : int, sequence of C ints, or dict {class: int}
        Draws per class: the same number for every class, or one number per class (classes absent
        from a dict get none). To follow a class distribution use ``split_counts(total, probs)``.
    seed : int or numpy.random.Generator, default=0
        One generator serves the classes in increasing class order.
    replace : bool, default=True
        :func:`resample_with_replacement` or :func:`resample_without_replacement` within each class.

    Returns
    -------
    idx : ndarray of shape (sum of counts,), int64
        Indices into the bank, grouped by class in increasing class order.
    """
    log_w = _as_float64(log_w)
    ids, num_classes = _class_ids(labels)
    if len(ids) != len(log_w):
        raise ValueError(f'labels have {len(ids)} rows but log_w has {len(log_w)}')
    if isinstance(counts, dict):
        per_class = {int(k): int(v) for k, v in counts.items()}
    elif np.ndim(counts) == 0:
        per_class = {k: int(counts) for k in range(num_classes)}
    else:
        if len(counts) != num_classes:
            raise ValueError(f'counts has {len(counts)} entries but there are {num_classes} classes')
        per_class = {k: int(v) for k, v in enumerate(counts)}
    rng = _rng(seed)
    draw = resample_with_replacement if replace else resample_without_replacement
    out = []
    for k in sorted(per_class):
        if per_class[k] == 0:
            continue
        members = np.flatnonzero(ids == k)
        if len(members) == 0:
            raise ValueError(f'class {k} has no candidates in the bank')
        out.append(members[draw(log_w[members], per_class[k], rng)])
    return np.concatenate(out) if out else np.zeros([0], dtype=np.int64)

# ----------------------------------------------------------------------------
# Mixtures.


def split_counts(total, fractions):
    """Exact integer counts for a mixture: ``round(total * f)`` for each component but the last, which gets
    the remainder (rounding half up; a component never gets more than what is left).

    >>> split_counts(50000, [0.2, 0.8])
    [10000, 40000]
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f'fractions must be non-negative and sum to 1, got {fractions}')
    total = int(total)
    counts = []
    for f in fractions[:-1]:
        counts.append(min(int(math.floor(total * f + 0.5)), total - sum(counts)))
    counts.append(total - sum(counts))
    return counts

# ----------------------------------------------------------------------------
