"""Frechet Inception Distance (FID) between two feature sets or their Gaussian statistics.

FID = ||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2)), with population (divide by N)
covariances as in NVlabs' ``FeatureStats.get_mean_cov``, so that numbers match their
``fid50k_full`` given the same features.
"""

import numpy as np

# ----------------------------------------------------------------------------


def _psd_sqrt(a):
    """Symmetric square root of a symmetric positive semi-definite matrix (negative rounding clipped)."""
    eigval, eigvec = np.linalg.eigh(a)
    return (eigvec * np.sqrt(np.clip(eigval, 0, None))) @ eigvec.T


def trace_sqrtm_product(sigma_a, sigma_b):
    """Tr((sigma_a sigma_b)^(1/2)) for covariance matrices, computed without ``scipy.linalg.sqrtm``.

    ``sigma_a sigma_b`` is similar to the symmetric PSD matrix ``B^(1/2) sigma_a B^(1/2)``
    (``B = sigma_b``), so its square root's trace is the sum of the square roots of that
    matrix's eigenvalues. Unlike ``sqrtm`` of the non-symmetric product this never produces
    complex values or NaN for singular covariances (fewer samples than dimensions).
    """
    sigma_a = np.asarray(sigma_a, dtype=np.float64)
    sigma_b = np.asarray(sigma_b, dtype=np.float64)
    root_b = _psd_sqrt((sigma_b + sigma_b.T) / 2)
    m = root_b @ sigma_a @ root_b
    eigval = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eigval, 0, None)).sum())


def fid_from_stats(mu_a, sigma_a, mu_b, sigma_b):
    """FID between two Gaussians given by their means and covariances.

    Parameters
    ----------
    mu_a, mu_b : array-like of shape (d,)
    sigma_a, sigma_b : array-like of shape (d, d)
        Covariance matrices (population covariances for NVlabs-compatible numbers).

    Returns
    -------
    fid : float
    """
    mu_a = np.asarray(mu_a, dtype=np.float64)
    mu_b = np.asarray(mu_b, dtype=np.float64)
    sigma_a = np.asarray(sigma_a, dtype=np.float64)
    sigma_b = np.asarray(sigma_b, dtype=np.float64)
    d = mu_a.shape[0]
    if mu_a.shape != (d,) or mu_b.shape != (d,) or sigma_a.shape != (d, d) or sigma_b.shape != (d, d):
        raise ValueError(f'Inconsistent shapes: mu {mu_a.shape}, {mu_b.shape}; sigma {sigma_a.shape}, {sigma_b.shape}')
    diff = mu_a - mu_b
    covmean_trace = trace_sqrtm_product(sigma_a, sigma_b)
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * covmean_trace)


def mean_cov(features):
    """Mean and population covariance (divided by N) of ``features`` of shape (N, d), float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f'Expected a non-empty feature array of shape [N, d], got {list(x.shape)}')
    mu = x.mean(axis=0)
    xc = x - mu
    return mu, (xc.T @ xc) / x.shape[0]


def fid_from_features(real, gen):
    """FID between a real and a generated feature set, each of shape (N, d).

    Returns
    -------
    fid : float
    """
    mu_r, sigma_r = mean_cov(real)
    mu_g, sigma_g = mean_cov(gen)
    return fid_from_stats(mu_g, sigma_g, mu_r, sigma_r)

# ----------------------------------------------------------------------------
