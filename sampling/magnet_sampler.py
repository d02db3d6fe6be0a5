"""MaGNET / polarity selection of latents from a bank of Jacobian singular values (the logic of generate_magnet.py).

A bank (ours from ``compute_volume_scalars.py``, or a MaGNET authors' ``.npz`` with ``svds``, ``latents``
and optional ``labels``) is resampled with log weights ``rho * sum_{i <= K} log sigma_i``
(:mod:`sampling.polarity`). ``mix`` is the fraction of the output drawn from the bank; the rest are plain
random latents, as in the papers' "x % MaGNET" tables. Truncation is applied later, at synthesis.

Randomness: ``numpy.random.SeedSequence(seed)`` spawns two generators, one for the bank draws and one for
the random latents (and their random classes), so each part depends only on the seed and its own count.
"""

import numpy as np

from sampling import latents, polarity, volume


def load_bank(path, c_dim=None):
    """Read a bank with ``svds`` (ours, an authors' file or their per-class files): :func:`sampling.latents.load_bank`."""
    bank = latents.load_bank(path, c_dim=c_dim)
    if 'svds' not in bank:
        raise ValueError(f"{path} has no 'svds' array: it is not a volume bank (make one with compute_volume_scalars.py)")
    if bank['svds'].ndim != 2 or len(bank) == 0:
        raise ValueError(f"{path}: 'svds' must be a non-empty [N, K] array, got shape {bank['svds'].shape}")
    return bank


def check_bank(bank, network_sha256, z_dim, c_dim):
    """Refuse a bank made for another network; returns warnings (strings) for what cannot be checked.

    A bank recording a network hash must match ``network_sha256``; the MaGNET authors' files record none and
    are accepted with a warning. Dimensions are always checked; an unlabelled bank may serve a conditional
    network (with ``class_idx``, see :func:`select`).
    """
    warnings = []
    if bank.meta.get('network_sha256') is None:
        warnings.append('the bank records no network (e.g. a MaGNET authors\' file): cannot check that it was '
                        'computed for this network')
    latents.check_compatible(bank.meta, network_sha256=network_sha256, z_dim=z_dim,
                             c_dim=c_dim if bank.c_dim else None)
    if bank.z_dim != z_dim:
        raise ValueError(f'the bank has z_dim = {bank.z_dim}, but the network has z_dim = {z_dim}; '
                         f'use a bank made for this network')
    if bank.c_dim and bank.c_dim != c_dim:
        raise ValueError(f'the bank has {bank.c_dim} classes, but the network has c_dim = {c_dim}; '
                         f'use a bank made for this network')
    return warnings


def _candidates(bank, c_dim, class_idx):
    """Rows usable for ``class_idx`` and their one-hot labels [rows, c_dim]."""
    rows = np.arange(len(bank))
    if c_dim == 0:
        return rows, np.zeros([len(rows), 0], dtype=np.float32)
    if bank.c_dim == 0:
        if class_idx is None:
            raise ValueError(f'the bank has no labels but the network is conditional ({c_dim} classes): pass --class')
        return rows, latents.one_hot(np.full([len(rows)], class_idx), c_dim)
    labels = bank.labels.astype(np.float32)
    if class_idx is not None:
        rows = np.flatnonzero(labels[:, class_idx] == 1)
        if len(rows) == 0:
            raise ValueError(f'the bank has no latents of class {class_idx}')
    return rows, labels[rows]


def _summary_stats(log_w):
    finite = log_w[np.isfinite(log_w)]
    p = np.exp(log_w - log_w.max())
    p /= p.sum()
    return dict(ess=polarity.effective_sample_size(log_w), max_probability=float(p.max()),
                log_weight_min=float(finite.min()), log_weight_max=float(finite.max()))


def select(bank, num, z_dim, c_dim=0, rho=1.0, top_k=None, mix=1.0, replace=True, per_class=False, class_idx=None,
           seed=0, normalizes_z=True):
    """Choose ``num`` latents: a fraction ``mix`` resampled from the bank with polarity ``rho``, the rest random.

    Parameters
    ----------
    bank : LatentBank
        With ``svds`` [N, M] (see :func:`load_bank`).
    num : int
    z_dim, c_dim : int
        The network's.
    rho : float, default=1
        1 is MaGNET; < 0 toward the modes (precision), > 0 toward the anti-modes (recall); 0 plain.
    top_k : int, optional
        ``K``; default all ``M`` columns. Must be below ``z_dim`` for a generator that normalises z.
    mix : float, default=1
        Fraction of ``num`` from the bank (``polarity.split_counts`` rounding); the rest are
        ``N(0, I)`` latents with random classes (or ``class_idx``).
    replace : bool, default=True
        With replacement: the paper's Algorithm 1, exact. Without: successive sampling, the MaGNET
        authors' demo (``numpy.random.choice(replace=False)``), only approximately proportional.
    per_class : bool, default=False
        Normalise the probabilities within each class of a labelled bank and take the same number
        (up to one) from every class, as the authors do for conditional models.
    class_idx : int, optional
        Only this class (conditional networks).
    seed : int, default=0

    Returns
    -------
    z : ndarray [num, z_dim] float32
    c : ndarray [num, c_dim] float32
    bank_index : ndarray [num] int64
        Row of the (loaded, zero-rows-dropped) bank, -1 for the random latents. Bank rows come first.
    summary : dict
        Counts, settings, effective sample size and weight range (JSON-serialisable).
    """
    num = int(num)
    if num < 1:
        raise ValueError(f'num must be positive, got {num}')
    if not 0 <= mix <= 1:
        raise ValueError(f'mix must be in [0, 1], got {mix}')
    if c_dim == 0 and per_class:
        raise ValueError('--per-class needs a conditional network')
    if class_idx is not None and not 0 <= class_idx < c_dim:
        raise ValueError(f'class {class_idx} is out of range for {c_dim} classes')
    svds = bank['svds']
    top_k = volume.check_top_k(svds.shape[1] if top_k is None else top_k, z_dim, normalizes_z=normalizes_z)
    if top_k > svds.shape[1]:
        raise ValueError(f'top_k={top_k} exceeds the {svds.shape[1]} singular values stored in the bank')
    rows, row_labels = _candidates(bank, c_dim, class_idx)
    log_w = polarity.log_weights(svds[rows], rho, top_k=top_k)
    num_bank, num_random = polarity.split_counts(num, [mix, 1 - mix])
    bank_seq, random_seq = np.random.SeedSequence(seed).spawn(2)
    bank_rng, random_rng = np.random.default_rng(bank_seq), np.random.default_rng(random_seq)

    summary = dict(num=num, num_from_bank=num_bank, num_random=num_random, rho=float(rho), top_k=top_k, mix=float(mix),
                   replace=bool(replace), per_class=bool(per_class), class_idx=class_idx, seed=seed,
                   num_candidates=len(rows), dropped_zero_rows=int(bank.meta.get('dropped_zero_rows', 0)),
                   **_summary_stats(log_w))
    if per_class and num_bank:
        classes = row_labels.argmax(axis=1)
        present = np.unique(classes)
        counts = dict(zip(present.tolist(), polarity.split_counts(num_bank, [1 / len(present)] * len(present))))
        picked = polarity.resample_per_class(log_w, classes, counts, seed=bank_rng, replace=replace)
        summary['ess_per_class'] = {str(k): polarity.effective_sample_size(log_w[classes == k]) for k in present}
    else:
        draw = polarity.resample_with_replacement if replace else polarity.resample_without_replacement
        picked = draw(log_w, num_bank, seed=bank_rng)
    summary['distinct_from_bank'] = int(len(np.unique(picked)))

    z_random = random_rng.standard_normal([num_random, z_dim])
    if c_dim == 0:
        c_random = np.zeros([num_random, 0], dtype=np.float32)
    elif class_idx is not None:
        c_random = latents.one_hot(np.full([num_random], class_idx), c_dim)
    else:
        c_random = latents.one_hot(random_rng.integers(c_dim, size=num_random), c_dim)

    z = np.concatenate([bank.latents[rows[picked]].astype(np.float32), z_random.astype(np.float32)])
    c = np.concatenate([row_labels[picked], c_random]).astype(np.float32)
    bank_index = np.concatenate([rows[picked], np.full([num_random], -1)]).astype(np.int64)
    return z, c, bank_index, summary
