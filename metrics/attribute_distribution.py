"""Attribute distribution of a sampler's images: how a classifier's predicted attributes are spread.

The MaGNET paper reports how resampling changes the attribute balance of a generator's output (its gender
"bias" on StyleGAN2 FFHQ fell by 41.2 %). Here any classifier with class outputs (a TorchScript module whose
``probabilities`` or ``logits`` method, or else its output, scores the classes) labels each image with its
top class, and the histogram of those labels is summarised by:

* ``entropy``: ``H(p) = -sum_i p_i log p_i`` in nats (0 for one class, ``log C`` for a uniform spread);
* ``kl_uniform``: ``KL(p || uniform) = log C - H(p)``;
* ``kl_real``: ``KL(p || q)`` against the histogram ``q`` of the same classifier on the real images
  (infinite when the sampler produces a class the real images never show; NaN without real images);
* ``bias``: the share of the most frequent class (the "majority attribute"), ``max_i p_i``.

Terms with ``p_i = 0`` contribute 0 (the limit of ``p log p``).
"""

import numpy as np


def histogram(predictions, num_classes):
    """Counts [num_classes] (int64) of integer class predictions."""
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if predictions.size and (predictions.min() < 0 or predictions.max() >= num_classes):
        raise ValueError(f'class predictions must lie in [0, {num_classes})')
    return np.bincount(predictions, minlength=num_classes).astype(np.int64)


def _shares(counts):
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if counts.ndim != 1 or total <= 0 or (counts < 0).any():
        raise ValueError('a histogram needs non-negative counts with a positive total')
    return counts / total


def entropy(counts):
    """Entropy in nats of the distribution given by ``counts``."""
    p = _shares(counts)
    nz = p > 0
    return float(-(p[nz] * np.log(p[nz])).sum())


def kl_divergence(counts, reference_counts):
    """``KL(p || q)`` in nats; ``inf`` where p has mass that q lacks."""
    p, q = _shares(counts), _shares(reference_counts)
    if p.shape != q.shape:
        raise ValueError(f'histograms of {p.size} and {q.size} classes cannot be compared')
    nz = p > 0
    if (q[nz] == 0).any():
        return float('inf')
    return float((p[nz] * (np.log(p[nz]) - np.log(q[nz]))).sum())


def summarize(counts, real_counts=None):
    """The figures of the module docstring for a histogram (and optionally the real images' histogram)."""
    p = _shares(counts)
    h = entropy(counts)
    return dict(
        entropy=h,
        kl_uniform=float(np.log(p.size) - h),
        kl_real=kl_divergence(counts, real_counts) if real_counts is not None else float('nan'),
        bias=float(p.max()),
        majority=int(p.argmax()),
    )


def predicted_classes(scores):
    """Top class of each row of class scores [N, C] (probabilities or logits; ties: lowest index)."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f'an attribute classifier must return class scores [N, C] with C >= 2, got shape '
                         f'{list(scores.shape)}')
    return scores.argmax(axis=1)
