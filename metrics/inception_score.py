"""Inception Score (IS) from class probabilities of generated images."""

import numpy as np
from scipy.special import xlogy

# ----------------------------------------------------------------------------


def is_from_probs(probs, num_splits=10):
    """Inception Score: mean and standard deviation over splits, as NVlabs' ``is50k``.

    Split ``i`` holds rows ``[i * N // num_splits, (i + 1) * N // num_splits)``; its score is
    ``exp(mean over rows of sum_c p (log p - log p_mean))`` with ``p_mean`` the split's mean
    distribution. The std is the population std (``np.std``). Computed in float64; a zero
    probability contributes 0 (the limit of p log p), where NVlabs' code would give NaN.

    Parameters
    ----------
    probs : array-like of shape (N, num_classes)
        Softmax probabilities, one row per generated image.
    num_splits : int, default=10

    Returns
    -------
    mean, std : float
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] < num_splits:
        raise ValueError(f'Expected probabilities [N, classes] with N >= num_splits={num_splits}, got {list(probs.shape)}')
    num = probs.shape[0]
    scores = []
    for i in range(num_splits):
        part = probs[i * num // num_splits: (i + 1) * num // num_splits]
        mean = part.mean(axis=0, keepdims=True)
        kl = xlogy(part, part) - xlogy(part, mean)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))

# ----------------------------------------------------------------------------
