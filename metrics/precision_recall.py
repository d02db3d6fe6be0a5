"""Improved precision and recall (Kynkaanniemi et al. 2019) of a generated feature set.

Each feature set approximates its manifold by a union of balls: one per point, with the point's
distance to its k-th nearest neighbour as radius. Precision is the fraction of generated points
inside the real manifold, recall the fraction of real points inside the generated manifold.

By default this reproduces NVlabs' ``pr50k3_full`` arithmetic, float16 included:

* the features are rounded to float16 and moved to ``device``;
* on CUDA (and any non-CPU device) the distances of a block are ``torch.cdist`` of the float16
  features, a float16 result, exactly as NVlabs computes them;
* on CPU the distances are ``torch.cdist`` of the float16-rounded features cast to float32
  (CPU float16 arithmetic is slower and less accurate), then rounded to float16, so the
  distances agree with CUDA's to within float16 rounding;
* a point's radius is its (k+1)-th smallest distance to its own set, the self-distance (about 0)
  counting as the first, and is held in float16;
* a probe hits a manifold if its float16 distance to any manifold point is <= that point's
  radius.

``fp16=False`` runs the same algorithm on float64 features and distances instead (the
"exact" metric). Work is split into row x column blocks, so memory holds at most
``row_batch_size x col_batch_size`` distances whatever the number of samples (NVlabs holds a
full row batch against all columns); probes that already hit are not compared again.
"""

import numpy as np
import torch

# ----------------------------------------------------------------------------


def _blocks(num, batch_size):
    for start in range(0, num, batch_size):
        yield slice(start, min(start + batch_size, num))


def to_feature_tensor(features, device=None, fp16=True):
    """Features as a 2-D tensor on ``device``: float16 (via float32, as NVlabs' stats hold) or float64."""
    if device is None:
        device = features.device if isinstance(features, torch.Tensor) else torch.device('cpu')
    x = features if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    if x.ndim != 2:
        raise ValueError(f'Expected features of shape [N, d], got {list(x.shape)}')
    if fp16:
        return x.to(torch.float32).to(device=device, dtype=torch.float16)
    return x.to(device=device, dtype=torch.float64)


def block_distances(x, y):
    """Euclidean distances between the rows of ``x`` and ``y``, in their dtype (see module docstring)."""
    if x.dtype == torch.float16 and x.device.type == 'cpu':
        return torch.cdist(x.float(), y.float()).half()
    return torch.cdist(x.unsqueeze(0), y.unsqueeze(0))[0]


def compute_knn_radii(queries, points, nhood_size=3, row_batch_size=10000, col_batch_size=10000):
    """k-NN radius of each query: its (nhood_size + 1)-th smallest distance to ``points``.

    The queries are expected to be among ``points``, so the first neighbour is the query itself
    and the radius is the distance to its ``nhood_size``-th other neighbour.

    Parameters
    ----------
    queries : Tensor of shape (M, d)
    points : Tensor of shape (N, d), same dtype and device, N > nhood_size

    Returns
    -------
    radii : Tensor of shape (M,), dtype of the inputs
    """
    k = nhood_size + 1
    if points.shape[0] < k:
        raise ValueError(f'Need more than nhood_size={nhood_size} points for k-NN radii, got {points.shape[0]}')
    radii = []
    for rows in _blocks(queries.shape[0], row_batch_size):
        best = None
        for cols in _blocks(points.shape[0], col_batch_size):
            dist = block_distances(queries[rows], points[cols])
            if best is not None:
                dist = torch.cat([best, dist], dim=1)
            best = dist.topk(min(k, dist.shape[1]), dim=1, largest=False).values
        radii.append(best[:, k - 1])
    return torch.cat(radii) if radii else queries.new_zeros([0])


def manifold_hits(probes, manifold, radii, row_batch_size=10000, col_batch_size=10000):
    """Whether each probe lies within the radius of at least one manifold point.

    Parameters
    ----------
    probes : Tensor of shape (P, d)
    manifold : Tensor of shape (M, d), same dtype and device
    radii : Tensor of shape (M,), from :func:`compute_knn_radii`

    Returns
    -------
    hits : BoolTensor of shape (P,)
    """
    hits = []
    for rows in _blocks(probes.shape[0], row_batch_size):
        x = probes[rows]
        hit = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for cols in _blocks(manifold.shape[0], col_batch_size):
            todo = torch.nonzero(~hit)[:, 0]
            if todo.numel() == 0:
                break
            dist = block_distances(x[todo], manifold[cols])
            hit[todo] = (dist <= radii[cols].unsqueeze(0)).any(dim=1)
        hits.append(hit)
    return torch.cat(hits) if hits else torch.zeros([0], dtype=torch.bool, device=probes.device)


def precision_recall_from_features(real, gen, nhood_size=3, row_batch_size=10000, col_batch_size=10000,
                                   device=None, fp16=True):
    """Improved precision and recall of ``gen`` against ``real``, as NVlabs' ``pr50k3``.

    Parameters
    ----------
    real, gen : ndarray or Tensor of shape (N_real, d) and (N_gen, d)
        Detector features (VGG16 for NVlabs-compatible numbers).
    nhood_size : int, default=3
        k of the k-NN radii.
    row_batch_size, col_batch_size : int, default=10000
        Block shape of the distance computations. The result does not depend on it, except
        that ``torch.cdist`` may round a distance differently for another block shape.
    device : torch.device, str or None, default=None
        Where to compute; None uses the device of ``real`` (CPU for numpy input).
    fp16 : bool, default=True
        NVlabs' float16 arithmetic (see the module docstring); False computes in float64.

    Returns
    -------
    precision, recall : float
    """
    if device is None and isinstance(real, torch.Tensor):
        device = real.device
    real = to_feature_tensor(real, device=device, fp16=fp16)
    gen = to_feature_tensor(gen, device=real.device, fp16=fp16)
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f'real and gen features differ in dimension: {real.shape[1]} vs {gen.shape[1]}')
    blocks = dict(row_batch_size=row_batch_size, col_batch_size=col_batch_size)
    real_radii = compute_knn_radii(real, real, nhood_size, **blocks)
    precision = manifold_hits(gen, real, real_radii, **blocks).double().mean().item()
    del real_radii
    gen_radii = compute_knn_radii(gen, gen, nhood_size, **blocks)
    recall = manifold_hits(real, gen, gen_radii, **blocks).double().mean().item()
    return float(precision), float(recall)

# ----------------------------------------------------------------------------
