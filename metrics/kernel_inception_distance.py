"""Kernel Inception Distance (KID): unbiased MMD^2 with a cubic polynomial kernel, over random subsets.

Same estimator and constants as NVlabs' ``kid50k_full``; unlike theirs, the subsets are drawn
from a seeded ``np.random.RandomState`` so the number is reproducible.
"""

import numpy as np

# ----------------------------------------------------------------------------


def kid_from_features(real, gen, num_subsets=100, max_subset_size=1000, seed=0):
    """KID between a real and a generated feature set.

    With n the feature dimension and m = min(#real, #gen, max_subset_size), each subset adds
    ``(sum(a) - trace(a)) / (m - 1) - 2 * sum(b) / m``, where ``a = (x x^T / n + 1)^3 +
    (y y^T / n + 1)^3`` and ``b = (x y^T / n + 1)^3`` for m real rows x and m generated rows y;
    KID is the total divided by ``num_subsets * m``. Computed in float64.

    Subsets are drawn from ``rnd = np.random.RandomState(seed)`` in this order: for each subset,
    ``rnd.choice(len(real), m, replace=False)`` (real rows), then
    ``rnd.choice(len(gen), m, replace=False)`` (generated rows).

    Parameters
    ----------
    real, gen : array-like of shape (N_real, d) and (N_gen, d)
    num_subsets : int, default=100
    max_subset_size : int, default=1000
    seed : int or None, default=0
        Seed of the subset draws; None draws from fresh OS entropy (NVlabs' unseeded behaviour).

    Returns
    -------
    kid : float
    """
    real = np.asarray(real, dtype=np.float64)
    gen = np.asarray(gen, dtype=np.float64)
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise ValueError(f'Expected feature arrays [N, d] with equal d, got {list(real.shape)} and {list(gen.shape)}')
    n = real.shape[1]
    m = min(real.shape[0], gen.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f'KID needs at least 2 samples per subset, got subset size {m}')
    rnd = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = real[rnd.choice(real.shape[0], m, replace=False)]
        y = gen[rnd.choice(gen.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        total += (a.sum() - np.trace(a)) / (m - 1) - b.sum() * 2 / m
    return float(total / num_subsets / m)

# ----------------------------------------------------------------------------
