"""Singular values of a generator's Jacobian and the log "volume scalar" of MaGNET / polarity sampling.

For a generator ``f`` and a latent ``z``, ``J(z) = d f(z) / d z`` and the volume scalar is the product of
its top-K singular values (Humayun et al., ICLR 2022 and CVPR 2022). This module computes those singular
values for a batch of latents, for any batched map ``f: [B, d] -> [B, ...]`` in which each output row
depends only on its own latent (so one batched forward pass gives every latent's Jacobian-vector
product at once):

* ``method='exact'``: the full Jacobian by forward mode, ``d`` JVPs per latent.
* ``method='projected'``: the authors' estimator: the Jacobian of a fixed random semi-orthogonal
  projection of the flattened output, ``num_projections`` VJPs per latent. Use it to match the scale and
  error structure of the authors' published files (not bit for bit: their projection came from a TF
  random stream).
* ``method='lowrank'``: the top-K values only, by block Lanczos on ``J^T J`` from JVPs and VJPs.

The spaces of the papers (pixel, style, feature) are built from an NVlabs-style generator by
:func:`make_space_fn`.

StyleGAN's mapping network first normalises ``z`` to unit second moment, so ``f(a z) = f(z)`` for every
``a > 0`` and the radial direction is an exact null direction of ``J``: the smallest singular value is
zero up to rounding and a product over *all* of them is meaningless. Always use ``top_k < z_dim``
(the authors use 30 for StyleGAN2, 10 for StyleGAN3 and BigGAN); :func:`check_top_k` enforces it.
"""

import functools
import inspect

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ('exact', 'projected', 'lowrank')
SPACES = ('pixel', 'style', 'feature')

# ----------------------------------------------------------------------------
# Batched Jacobian products.


# Directions x latents per vectorised call when chunk_size is None: one huge call (512 directions x batch)
# falls out of the CPU caches and measured 1.5-4x slower per direction than calls of about 64 rows.
_AUTO_ROWS = 64


# On CPU the explicit derivative (sampling/linearize.py) runs fastest when a chunk's largest tangent feature map
# fits in about this many bytes: at 16 px / 64 channels that is the 64 rows above, at 64 px / 16 channels 16 rows
# (1.22-1.32 CPU s per latent for 'exact' against 1.61-1.70 with 64 rows).
_CPU_CHUNK_BYTES = 4 << 20


def _chunk(chunk_size, batch_size, row_bytes=None, device=None):
    if chunk_size is not None:
        return chunk_size
    rows = _AUTO_ROWS
    if row_bytes and device is not None and device.type == 'cpu':
        rows = min(rows, max(1, _CPU_CHUNK_BYTES // row_bytes))
    return max(1, rows // max(1, batch_size))


def _jvp_fn(f, z, chunk_size=None):
    """Return ``fn`` mapping tangents ``[n, B, d]`` to ``J(z_b) t_{n,b}`` flattened as ``[n, B, D]``.

    A map with a ``linearize`` attribute (``make_space_fn`` on a StyleGAN2) runs its primal once and pushes
    each chunk of tangents through its explicit layer-by-layer derivative; any other map goes through
    ``torch.func.jvp`` under ``vmap``.
    """
    linearize = getattr(f, 'linearize', None)
    if linearize is not None:
        jvp = linearize(z)[1]
        chunk_size = _chunk(chunk_size, z.shape[0], getattr(jvp, 'row_bytes', None), z.device)

        def fn(tangents):
            return jvp(tangents, chunk_size).reshape(tangents.shape[0], z.shape[0], -1).to(z.dtype)
        return fn
    chunk_size = _chunk(chunk_size, z.shape[0])

    def one(t):
        return torch.func.jvp(f, (z,), (t,))[1]

    def fn(tangents):
        out = torch.func.vmap(one, chunk_size=chunk_size)(tangents)
        return out.reshape(tangents.shape[0], z.shape[0], -1)
    return fn


def _jvps(f, z, tangents, chunk_size=None):
    """``J(z_b) t_{n,b}`` for tangents ``[n, B, d]``, returned flattened as ``[n, B, D]``."""
    return _jvp_fn(f, z, chunk_size)(tangents)


def _vjp_fn(f, z, chunk_size=None):
    """Run ``f`` once and return ``(out_shape, fn)``; ``fn`` maps cotangents ``[n, B, D]`` to ``[n, B, d]``."""
    out, pullback = torch.func.vjp(f, z)
    shape = out.shape
    chunk_size = _chunk(chunk_size, z.shape[0])

    def one(u):
        return pullback(u.reshape(shape))[0]

    def fn(cotangents):
        return torch.func.vmap(one, chunk_size=chunk_size)(cotangents)
    return shape, fn


def _svdvals_rows(A):
    """Singular values (descending, float64) of each ``A[b]`` of shape ``[n, D]``, memory-bounded.

    A float32 (or lower precision) matrix with ``D > n`` goes through the float64 Gram matrix
    ``A A^T`` accumulated over slices of ``D``: ``n x n`` memory instead of a float64 copy of ``A``, and
    the Gram step's absolute error (about ``1e-8 * sigma_1``) stays below the rounding already in a
    float32 Jacobian (about ``6e-8 * sigma_1``). Float64 input keeps full precision with a direct SVD.
    """
    B, n, D = A.shape
    if A.dtype == torch.float64 or D <= n:
        return torch.linalg.svdvals(A.to(torch.float64))
    gram = torch.zeros([B, n, n], dtype=torch.float64, device=A.device)
    step = max(1, (1 << 24) // max(1, B * n))
    for start in range(0, D, step):
        block = A[:, :, start:start + step].to(torch.float64)
        gram += block @ block.mT
    eig = torch.linalg.eigvalsh((gram + gram.mT) / 2)
    return eig.clamp(min=0).sqrt().flip(-1)

# ----------------------------------------------------------------------------
# The fixed projection of the authors' estimator.


# One cached projection: at 1024 px it is a 3 GB float64 matrix whose QR takes seconds, reused by every batch.
@functools.lru_cache(maxsize=1)
def _projection_cpu(out_dim, num_projections, seed):
    gen = torch.Generator(device='cpu').manual_seed(int(seed))
    gauss = torch.randn([out_dim, num_projections], generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss, mode='reduced')
    # Fix the column signs (diag(R) > 0) so P is the Gram-Schmidt result, whatever LAPACK's convention.
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(torch.float64)
    return q.T.contiguous()


def projection_matrix(out_dim, num_projections=128, seed=0, dtype=torch.float32, device='cpu'):
    """The fixed random semi-orthogonal projection ``P`` of shape ``[num_projections, out_dim]``.

    Construction (stable across devices, so a projection is addressed by ``(out_dim, num_projections,
    seed)``): a CPU ``torch.Generator`` seeded with ``seed`` draws a float64 standard Gaussian matrix of
    shape ``[out_dim, num_projections]`` with ``torch.randn``; its reduced QR factorisation (float64) gives
    ``Q`` with orthonormal columns; each column is multiplied by the sign of the matching diagonal entry
    of ``R`` (so ``diag(R) > 0``, the Gram-Schmidt convention); ``P = Q^T`` (rows orthonormal), then cast
    to ``dtype`` and moved to ``device``.

    Parameters
    ----------
    out_dim : int
        Length ``D`` of the flattened output.
    num_projections : int, default=128
        Number of rows (the authors use 128). Must not exceed ``out_dim``.
    seed : int, default=0
        Seed of the Gaussian matrix.
    dtype, device :
        Of the returned tensor.

    Returns
    -------
    P : Tensor of shape (num_projections, out_dim)
    """
    if not 1 <= num_projections <= out_dim:
        raise ValueError(f'num_projections must be in [1, {out_dim}] (the output size), got {num_projections}')
    return _projection_cpu(int(out_dim), int(num_projections), int(seed)).to(device=device, dtype=dtype)

# ----------------------------------------------------------------------------
# The three estimators.


def _exact(f, z, chunk_size):
    B, d = z.shape
    basis = torch.eye(d, dtype=z.dtype, device=z.device).unsqueeze(1).expand(d, B, d)
    cols = _jvps(f, z, basis, chunk_size)            # [d, B, D]: column i of every J(z_b)
    return _svdvals_rows(cols.transpose(0, 1))       # J^T has the same singular values


def _projected(f, z, num_projections, projection_seed, chunk_size):
    B = z.shape[0]
    shape, pullback = _vjp_fn(f, z, chunk_size)
    out_dim = int(np.prod(shape[1:]))
    P = projection_matrix(out_dim, num_projections, projection_seed, dtype=z.dtype, device=z.device)
    rows = pullback(P.unsqueeze(1).expand(num_projections, B, out_dim))   # [P, B, d]: rows of P J(z_b)
    return torch.linalg.svdvals(rows.transpose(0, 1).to(torch.float64))


def _orthonormalise(W, basis):
    """Orthonormal columns spanning ``W`` minus its part in ``span(basis)`` (float64, batched)."""
    for _ in range(2):
        # Two passes of projection and QR keep the new block orthogonal to the old ones in floating point,
        # even when W has (numerically) lost rank because the Krylov space has become invariant.
        if basis is not None:
            W = W - basis @ (basis.mT @ W)
        W = torch.linalg.qr(W, mode='reduced')[0]
    return W


def _gram_block(A):
    """``A^T A`` in float64 for ``A`` of shape ``[B, D, b]``, accumulated over slices of ``D``."""
    B, D, b = A.shape
    gram = torch.zeros([B, b, b], dtype=torch.float64, device=A.device)
    step = max(1, (1 << 24) // max(1, B * b))
    for start in range(0, D, step):
        block = A[:, start:start + step].to(torch.float64)
        gram += block.mT @ block
    return gram


def _lowrank(f, z, top_k, block_size, num_iters, tol, projection_seed, chunk_size):
    # Block Golub-Kahan-Lanczos: the Krylov space span{V0, (J^T J) V0, (J^T J)^2 V0, ...} is grown one block
    # at a time from J V_last (JVPs) and J^T (J V_last) (VJPs); the Ritz values are the singular values of
    # J V = sqrt(eig(V^T J^T J V)). Only the Gram matrix G = (J V)^T (J V) is kept, not J V itself (at 1024 px
    # that would be gigabytes): a new block's cross terms come from the VJPs of the old blocks,
    # (J V_old)^T (J V_new) = (J^T J V_old)^T V_new, and its own block from one pass over its JVPs.
    B, d = z.shape
    _, pullback = _vjp_fn(f, z, chunk_size)
    push = _jvp_fn(f, z, chunk_size)

    def jvp_block(V):                                # J V for V [B, d, b] (float64) -> [B, D, b] in z.dtype
        return push(V.permute(2, 0, 1).to(z.dtype)).permute(1, 2, 0)

    def vjp_block(U):                                # J^T U for U [B, D, b] -> [B, d, b] float64
        return pullback(U.permute(2, 0, 1)).permute(1, 2, 0).to(torch.float64)

    def ritz(G):                                     # top-K Ritz values: lower bounds of the truth
        eig = torch.linalg.eigvalsh((G + G.mT) / 2).flip(-1)[:, :top_k]
        return eig.clamp(min=0).sqrt()

    # One random start shared by every latent, so a latent's result does not depend on its batch.
    gen = torch.Generator(device='cpu').manual_seed(int(projection_seed))
    start = torch.randn([d, block_size], generator=gen, dtype=torch.float64).to(z.device)
    V = _orthonormalise(start.expand(B, d, block_size), None)
    JV = jvp_block(V)
    G = _gram_block(JV)
    W = None                                         # J^T J V for every block but the newest
    result = ritz(G) if top_k <= block_size else None
    done = torch.zeros([B], dtype=torch.bool, device=z.device)
    for _ in range(num_iters):
        W_last = vjp_block(JV)
        W = W_last if W is None else torch.cat([W, W_last], dim=2)
        V_new = _orthonormalise(W_last, V)
        JV = jvp_block(V_new)
        cross = W.mT @ V_new
        G = torch.cat([torch.cat([G, cross], dim=2), torch.cat([cross.mT, _gram_block(JV)], dim=2)], dim=1)
        V = torch.cat([V, V_new], dim=2)
        svals = ritz(G)
        if result is None or result.shape[1] < top_k:
            result = svals
            continue
        # Ritz values grow monotonically with the Krylov space; a latent is final once its top-K
        # log-volume moves by less than tol, and later iterations (run for its batch mates) leave it alone.
        gain = (torch.log(svals.clamp(min=1e-300)) - torch.log(result.clamp(min=1e-300))).sum(dim=1)
        result = torch.where(done[:, None], result, svals)
        if tol > 0:
            done |= gain < tol
        if bool(done.all()):
            break
    return result


def jacobian_singular_values(f, z, method='exact', top_k=None, num_projections=128, projection_seed=0,
                             block_size=10, num_iters=15, tol=1e-3, dtype=torch.float32, chunk_size=None):
    """Singular values of ``d f(z) / d z`` for a batch of latents, descending.

    ``f`` maps latents ``[B, d]`` to outputs ``[B, ...]`` (flattened internally) and each output row must
    depend only on its own latent: no batch statistics, no noise re-drawn per call (use
    ``noise_mode='const'``). The work runs under ``torch.no_grad()`` (the functional transforms still
    differentiate with respect to ``z``), on ``z``'s device, with ``z`` cast to ``dtype``; ``f`` must accept
    that dtype (a StyleGAN in float32 needs ``dtype=torch.float32``). Custom ``torch.autograd.Function``
    inside ``f`` must support ``torch.func`` transforms (forward-mode AD and vmap).

    Methods
    -------
    'exact'
        The full Jacobian by forward mode: ``d`` JVPs per latent (vectorised with ``torch.func.vmap``
        over the basis directions; a map from :func:`make_space_fn` on a StyleGAN2 instead pushes them
        as one batch through its explicit derivative, ``sampling/linearize.py``), then the singular
        values in float64. Memory: the Jacobian,
        ``B * d * D`` elements, plus ``chunk_size * B`` outputs in flight.
    'projected'
        The MaGNET authors' estimator: the ``[num_projections, d]`` Jacobian of ``P @ f(z).flatten()``,
        with ``P`` from :func:`projection_matrix`, by ``num_projections`` reverse-mode passes (VJPs),
        then its singular values. ``P`` shrinks every singular value by about ``sqrt(num_projections / D)``
        (a constant offset in log-volume that cancels in the resampling softmax) and adds a per-latent
        error. Returns ``min(num_projections, d)`` values.
    'lowrank'
        The top ``top_k`` values by block Lanczos on ``J^T J`` with full reorthogonalisation: a random
        start block of ``block_size`` vectors (drawn from a CPU generator seeded with ``projection_seed``,
        the same for every latent, so a latent's result does not depend on its batch), then up to
        ``num_iters`` further blocks (block Golub-Kahan-Lanczos), each costing ``block_size`` VJPs and
        ``block_size`` JVPs. After
        each block the top-K Rayleigh-Ritz values are recomputed; they only grow with the Krylov space
        and never exceed the true singular values (the log-volume is biased low), and a latent is final
        once its top-K log-volume grew by less than ``tol`` nats. At most ``block_size * (2 * num_iters +
        1)`` passes (310 by default) instead of the ``d`` JVPs of 'exact'; when that reaches ``d`` the
        exact method runs instead. Measured error of the top-30 log-volume with the defaults
        (``d = 512``, float32 passes, linear maps with known spectra): at most ``2e-5`` nats after 8-13
        blocks for power-law spectra ``sigma_i = i^-a``, ``a`` in [0.25, 1], and for exponential spectra
        falling by ``e^10`` or more over the 512 values; ``5e-5`` nats (16 blocks) when they fall by
        ``e^3``; ``7e-3`` nats (16 blocks) when they fall by ``e^2`` with a null direction, the flattest
        tried. For ``top_k = 10``: at most ``1e-4`` nats in 5-13 blocks. These errors are far below the
        spread of log-volumes across latents (several nats) and the per-latent error of 'projected'.
        Flatter spectra or a larger ``top_k`` need a larger ``num_iters``.

    Parameters
    ----------
    f : callable
        Batched map ``[B, d] -> [B, ...]``.
    z : Tensor of shape (B, d)
    method : {'exact', 'projected', 'lowrank'}, default='exact'
    top_k : int, optional
        Keep only the ``top_k`` largest values. Required for 'lowrank'.
    num_projections : int, default=128
        Rows of the projection ('projected').
    projection_seed : int, default=0
        Seed of the projection ('projected') or of the start block ('lowrank').
    block_size : int, default=10
        Lanczos block size ('lowrank').
    num_iters : int, default=15
        Most Lanczos blocks after the first ('lowrank').
    tol : float, default=1e-3
        Stop a latent when one more block raised its top-K log-volume by less than this many nats
        ('lowrank'); 0 runs all ``num_iters`` blocks.
    dtype : torch.dtype, default=torch.float32
        Dtype in which ``f`` and its derivatives run. The SVD step is always float64.
    chunk_size : int, optional
        Directions (basis vectors, projection rows or block vectors) pushed through ``f`` at once; each
        call multiplies the activation memory of ``f`` by this number. ``None`` picks ``max(1, 64 // B)``,
        which was fastest on CPU (larger calls fall out of the caches); on a GPU a larger value may pay.

    Returns
    -------
    svals : Tensor of shape (B, K), float64, on ``z``'s device
        Descending singular values; ``K`` is ``top_k`` if given, else ``min(D, d)`` ('exact') or
        ``min(num_projections, d)`` ('projected').
    """
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    z = torch.as_tensor(z)
    if z.ndim != 2:
        raise ValueError(f'z must have shape [batch, z_dim], got {tuple(z.shape)}')
    z = z.detach().to(dtype)
    d = z.shape[1]
    if top_k is not None and top_k < 1:
        raise ValueError(f'top_k must be positive, got {top_k}')
    with torch.no_grad():
        if method == 'lowrank':
            if top_k is None:
                raise ValueError("method='lowrank' needs top_k")
            if block_size < 1 or num_iters < 0:
                raise ValueError('block_size must be >= 1 and num_iters >= 0')
            if top_k > block_size * (num_iters + 1):
                raise ValueError(f'top_k={top_k} exceeds the Krylov dimension block_size * (num_iters + 1) = '
                                 f'{block_size * (num_iters + 1)}; raise num_iters or block_size')
            if block_size * (num_iters + 1) >= d:
                svals = _exact(f, z, chunk_size)
            else:
                svals = _lowrank(f, z, top_k, block_size, num_iters, tol, projection_seed, chunk_size)
        elif method == 'projected':
            svals = _projected(f, z, num_projections, projection_seed, chunk_size)
        else:
            svals = _exact(f, z, chunk_size)
    if top_k is not None:
        if top_k > svals.shape[1]:
            raise ValueError(f'top_k={top_k} exceeds the {svals.shape[1]} singular values available')
        svals = svals[:, :top_k]
    return svals

# ----------------------------------------------------------------------------
# Log-volume and the top-K rule.


def log_volume(svals, top_k=None, eps=0.0):
    """``sum_{i <= K} log(sigma_i + eps)`` over the ``K`` largest singular values, in float64.

    Parameters
    ----------
    svals : Tensor or ndarray of shape (N, M)
        Singular values per row, in any order (rows are sorted here).
    top_k : int, optional
        ``K``; ``None`` uses all ``M`` columns.
    eps : float, default=0.0
        Added to each value before the log. With ``eps = 0`` a zero singular value gives ``-inf``.

    Returns
    -------
    logvol : same type as ``svals`` (Tensor or ndarray), float64, shape (N,)
    """
    is_numpy = not isinstance(svals, torch.Tensor)
    s = torch.as_tensor(np.asarray(svals) if is_numpy else svals).to(torch.float64)
    if s.ndim != 2:
        raise ValueError(f'svals must have shape [N, M], got {tuple(s.shape)}')
    K = s.shape[1] if top_k is None else int(top_k)
    if not 1 <= K <= s.shape[1]:
        raise ValueError(f'top_k must be in [1, {s.shape[1]}] (the number of singular values), got {top_k}')
    top = torch.sort(s, dim=1, descending=True).values[:, :K]
    out = torch.log(top + eps).sum(dim=1)
    return out.numpy() if is_numpy else out


def check_top_k(top_k, z_dim, normalizes_z=True):
    """Validate ``K`` for a log-volume: ``1 <= K <= z_dim``, and ``K < z_dim`` if the net normalises ``z``.

    A generator that normalises ``z`` (every StyleGAN) is constant along the radial direction, so its
    ``z``-Jacobian has an exact zero singular value and the product over all ``z_dim`` of them is zero up
    to rounding noise. ``None`` means "all of them" and is treated as ``z_dim``.

    Returns
    -------
    top_k : int
    """
    K = z_dim if top_k is None else int(top_k)
    if not 1 <= K <= z_dim:
        raise ValueError(f'top_k must be in [1, {z_dim}] (z_dim), got {top_k}')
    if normalizes_z and K >= z_dim:
        raise ValueError(f'top_k={K} includes the exact null (radial) direction of a generator that normalises z '
                         f'(every StyleGAN): its log-volume is rounding noise. Use top_k < {z_dim}, e.g. 30 for '
                         f'StyleGAN2 or 10 for StyleGAN3 as in the MaGNET/polarity papers.')
    return K

# ----------------------------------------------------------------------------
# Spaces of an NVlabs-style generator.


def _resize(img, size):
    size = (size, size) if isinstance(size, int) else tuple(size)
    if size[0] <= img.shape[2] and size[1] <= img.shape[3]:
        return F.interpolate(img, size=size, mode='area')
    return F.interpolate(img, size=size, mode='bilinear', align_corners=False)


def _synthesis_layers_take(G, name):
    """Whether the layers below ``G.synthesis`` take the keyword argument ``name`` (StyleGAN2's blocks take
    ``fused_modconv`` and ``force_fp32``, StyleGAN3's layers only ``force_fp32``)."""
    for module in G.synthesis.modules() if isinstance(G.synthesis, torch.nn.Module) else ():
        if module is not G.synthesis and name in inspect.signature(type(module).forward).parameters:
            return True
    return False


def make_space_fn(G, space, c=None, truncation_psi=1, noise_mode='const', resize=None, embedder=None):
    """A batched map ``z -> output`` whose Jacobian defines a MaGNET / polarity "space".

    ``G`` has the NVlabs generator API: ``z_dim``, ``c_dim``, ``mapping(z, c, truncation_psi,
    truncation_cutoff) -> ws [B, num_ws, w_dim]`` and ``synthesis(ws, noise_mode) -> img [B, C, H, W]``
    in [-1, 1]. Put it in eval mode (StyleGAN2-ADA's mapping updates ``w_avg`` in training mode) and
    preferably ``requires_grad_(False)``.

    Spaces
    ------
    'pixel'
        ``z -> image``; with ``resize`` the image is first resized to ``resize`` pixels (an int for a
        square, or ``(H, W)``): ``F.interpolate(mode='area')`` (box average) when shrinking,
        ``mode='bilinear', align_corners=False`` when enlarging.
    'style'
        ``z -> w = ws[:, 0]`` (the mapping network; the authors' exact definition was not published,
        this is the most likely reading).
    'feature'
        ``z -> image -> embedder``: the image is mapped to ``[0, 255]`` as NVlabs' metrics do
        (``img * 127.5 + 128`` clamped to ``[0, 255]``, grayscale repeated to 3 channels) but kept float
        and differentiable (no uint8 rounding), and the embedder's output is flattened. ``embedder`` is
        any callable or module, e.g. ``lambda x: detector(x, return_features=True)``.

    Noise is held fixed by ``noise_mode='const'`` and ``truncation_psi=1`` unless asked: the papers
    compute the weights at psi 1 and truncate at synthesis time. Layers that would run in float16 on CUDA
    (``num_fp16_res``) run in float32 (``force_fp32=True``), so the map is the same on every device. A
    StyleGAN2 synthesis network (one whose blocks take ``fused_modconv``) runs with ``fused_modconv=False``:
    the same function to float32 rounding, with Jacobian-vector products 2-3x cheaper because the
    per-latent modulated weights never get tangents of their own. For a StyleGAN2 in the 'pixel' or 'style'
    space with ``noise_mode`` 'const' or 'none', ``f`` also has ``f.linearize(z) -> (f(z), jvp)``, the
    explicit derivative of :func:`sampling.linearize.linearize_stylegan2`, which
    :func:`jacobian_singular_values` uses for its JVPs.

    Parameters
    ----------
    G : generator (nn.Module)
    space : {'pixel', 'style', 'feature'}
    c : Tensor of shape (B, c_dim) or (1, c_dim), optional
        Labels for a conditional ``G``, broadcast over the batch when it has one row.
    truncation_psi : float, default=1
    noise_mode : str, default='const'
    resize : int or (int, int), optional
        'pixel' only.
    embedder : callable, optional
        Required for 'feature'.

    Returns
    -------
    f : callable ``[B, z_dim] -> [B, ...]``, with attributes ``z_dim``, ``space`` and ``normalizes_z``
        (``G.normalizes_z`` if the generator says, else True, as for every StyleGAN), for
        :func:`check_top_k`.
    """
    if space not in SPACES:
        raise ValueError(f'space must be one of {SPACES}, got {space!r}')
    if space == 'feature' and embedder is None:
        raise ValueError("space='feature' needs an embedder (a callable taking images in [0, 255])")
    if resize is not None and space != 'pixel':
        raise ValueError("resize applies to space='pixel' only")
    c_dim = int(getattr(G, 'c_dim', 0))
    if c_dim > 0 and c is None:
        raise ValueError(f'the generator is conditional (c_dim={c_dim}): pass labels c')

    def labels(z):
        if c is None:
            return torch.zeros([z.shape[0], c_dim], dtype=z.dtype, device=z.device)
        cc = torch.as_tensor(c).to(device=z.device, dtype=z.dtype)
        if cc.ndim != 2 or cc.shape[1] != c_dim:
            raise ValueError(f'c must have shape [batch, {c_dim}], got {tuple(cc.shape)}')
        if cc.shape[0] == 1:
            return cc.expand(z.shape[0], c_dim)
        if cc.shape[0] != z.shape[0]:
            raise ValueError(f'c has {cc.shape[0]} rows but z has {z.shape[0]}: give one row or one per latent')
        return cc

    # StyleGAN2's fused modulated convolution folds each latent's styles into its own conv weights, so under
    # torch.func every direction carries a [out, in, k, k] weight tangent and a grouped convolution; unfused,
    # the weights stay shared and the styles scale activations. The same function to rounding (about 1e-6
    # on images in [-1, 1]), with JVPs and VJPs about 2-3x cheaper on CPU.
    from sampling.synthesis import has_mapping, require_mapping
    if not has_mapping(G):
        if space == 'style':
            require_mapping(G, "the 'style' space")
        return _whole_generator_fn(G, space, labels, truncation_psi, noise_mode, resize, embedder)

    synthesis_kwargs = dict(noise_mode=noise_mode)
    if _synthesis_layers_take(G, 'fused_modconv'):
        synthesis_kwargs['fused_modconv'] = False
    # On CUDA the num_fp16_res highest resolutions run in float16: about 1e-3 rounding, and the large cotangents
    # of 'lowrank' overflowed it (NaN at 256 px on an H100). Jacobians are taken in float32 on every device.
    if _synthesis_layers_take(G, 'force_fp32'):
        synthesis_kwargs['force_fp32'] = True

    def f(z):
        ws = G.mapping(z, labels(z), truncation_psi=truncation_psi, truncation_cutoff=None)
        if space == 'style':
            return ws[:, 0]
        return _image_to_space(G.synthesis(ws, **synthesis_kwargs), space, resize, embedder)

    f.z_dim = int(G.z_dim)
    f.space = space
    f.normalizes_z = bool(getattr(G, 'normalizes_z', True))
    from sampling import linearize
    if space != 'feature' and linearize.supports(G, noise_mode):
        # StyleGAN2: Jacobian-vector products by the explicit layer-by-layer derivative (sampling/linearize.py).
        post = None if resize is None else functools.partial(_resize, size=resize)

        def linearized(z):
            return linearize.linearize_stylegan2(G, z, labels(z), space, truncation_psi, noise_mode, post)
        f.linearize = linearized
    return f


def _image_to_space(img, space, resize, embedder):
    if space == 'pixel':
        return img if resize is None else _resize(img, resize)
    x = (img * 127.5 + 128).clamp(0, 255)
    if x.shape[1] == 1:
        x = x.repeat([1, 3, 1, 1])
    feats = embedder(x)
    return feats.reshape(feats.shape[0], -1)


def _whole_generator_fn(G, space, labels, truncation_psi, noise_mode, resize, embedder):
    """``make_space_fn`` for a generator without a mapping network: z -> ``G(z, c, ...)`` -> space."""
    def f(z):
        img = G(z, labels(z), truncation_psi=truncation_psi, noise_mode=noise_mode)
        return _image_to_space(img, space, resize, embedder)

    f.z_dim = int(G.z_dim)
    f.space = space
    # Only a generator that says so has a null direction in z (StyleGAN's normalisation of z).
    f.normalizes_z = bool(getattr(G, 'normalizes_z', False))
    return f

# ----------------------------------------------------------------------------
