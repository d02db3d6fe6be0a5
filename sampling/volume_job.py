"""Singular values of a generator's Jacobian for a whole latent bank: chunked, resumable, sharded.

This is the driver behind ``compute_volume_scalars.py``. A job is ``num`` latents (``num`` per class with
``class_idx='all'``) of one batch seed (:mod:`sampling.latents`: row ``j`` is row ``j`` of
``np.random.RandomState(seed).randn(M, z_dim)``), cut into chunks of ``chunk_size`` rows. Each chunk is
computed in batches that start at the chunk's first row and is stored atomically as its own bank in a
:class:`~sampling.chunks.ChunkStore`; so the rows of a chunk, the batches they are computed in and
therefore every bit of the result are the same whichever shard computes the chunk, and a killed run
re-run with the same settings resumes where it stopped. :meth:`VolumeJob.merge` joins the chunks into the
final bank, ``volumes.npz``, and then packs the chunk files into one, ``chunks/chunks.npz``, from which a
re-run reads them. The bank has the MaGNET authors' layout plus our metadata:

* ``svds``: [N, top_k] float32, descending (the authors' key and dtype);
* ``latents``: [N, z_dim] float32, exactly the z the values were computed at;
* ``labels``: [N, c_dim] one-hot, or empty for an unconditional network;
* ``seeds``, ``indices``: the address (batch seed, row) of each latent;
* ``meta``: network sha256, space, method, top_k, projection settings, dtype, resize, seed, versions,
  command (:func:`sampling.latents.make_meta`; the job settings are under ``meta['extras']``).

The generator runs with ``noise_mode='const'`` and ``truncation_psi=1``: the papers compute the weights
at psi 1 and truncate at synthesis time.
"""

import os

import numpy as np
import torch

from sampling import chunks, latents, volume

DTYPES = {'float32': torch.float32, 'float64': torch.float64}
BANK_NAME = 'volumes.npz'
CHUNK_DIR = 'chunks'

# ----------------------------------------------------------------------------
# Embedders (feature space).


def load_embedder(path, device, dtype=torch.float32):
    """Load a TorchScript embedding network (feature space) as a callable ``images [B, 3, H, W] in [0, 255] -> [B, ...]``.

    NVlabs' metric detectors (e.g. ``inception-2015-12-05.pt``, ``vgg16.pt``) take a ``return_features``
    argument; when the scripted ``forward`` has one it is called with ``return_features=True`` so the
    Jacobian is that of the feature embedding, as in the polarity paper. Other modules are called as
    ``embedder(images)``.
    """
    module = torch.jit.load(path, map_location=device).eval().to(dtype)
    try:
        names = [arg.name for arg in module.forward.schema.arguments]
    except (AttributeError, RuntimeError):
        names = []
    if 'return_features' in names:
        return lambda x: module(x, return_features=True)
    return module

# ----------------------------------------------------------------------------
# The job.


def parse_class(text):
    """``None``, ``'all'`` or a class index from a ``--class`` value."""
    if text is None or isinstance(text, int):
        return text
    text = str(text).strip().lower()
    if text == 'all':
        return 'all'
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--class must be a class index or 'all', got {text!r}") from None


def _available(method, z_dim, out_dim, num_projections, block_size, num_iters):
    """How many singular values a method returns for a ``[out_dim] x [z_dim]`` Jacobian."""
    if method == 'projected':
        return min(num_projections, z_dim)
    if method == 'lowrank' and block_size * (num_iters + 1) < z_dim:
        return min(block_size * (num_iters + 1), out_dim, z_dim)
    return min(out_dim, z_dim)


class VolumeJob:
    """Top-K Jacobian singular values for the latents of one batch seed, as a resumable chunked job.

    Parameters
    ----------
    G : generator (nn.Module)
        NVlabs API (``z_dim``, ``c_dim``, ``mapping``, ``synthesis``), on the device to compute on, in eval
        mode. It is cast to ``dtype``.
    network_sha256 : str
        :func:`sampling.latents.network_sha256` of the network; recorded so that a bank is never used
        with another network.
    num : int
        Latents, or latents per class when ``class_idx='all'``.
    seed : int, default=0
        Batch seed of the latents.
    space : {'pixel', 'style', 'feature'}, default='pixel'
    method : {'exact', 'projected', 'lowrank'}, default='lowrank'
        See :func:`sampling.volume.jacobian_singular_values`.
    top_k : int, default=30
        Singular values kept per latent; must be below ``z_dim`` for generators that normalise ``z``.
    class_idx : None, int or 'all', default=None
        Labels of a conditional network: one class for every latent, ``num`` latents of each class (class
        ``k`` gets rows ``k * num .. (k + 1) * num - 1``), or ``None``: random classes
        (:func:`sampling.latents.random_labels` of the batch seed).
    dtype : {'float32', 'float64'}, default='float32'
        Precision of the network and its derivatives (the SVD is float64 in any case). NVlabs' StyleGAN2
        and StyleGAN3 cast z and w to float32 internally, so for them float64 changes nothing:
        ``output_dtype`` (also in the config) records the dtype the network actually produced.
    resize : int, optional
        Pixel space: resize the image to ``resize x resize`` first.
    embedder : callable, optional
        Feature space: images in [0, 255] -> features (see :func:`load_embedder`).
    embedder_sha256 : str, optional
        Hash of the embedder file, recorded and checked on resume.
    num_projections, projection_seed :
        Rows and seed of the projection ('projected'); seed of the start block ('lowrank').
    block_size, num_iters :
        Lanczos settings ('lowrank').
    chunk_size : int, default=1000
        Latents per chunk file: the unit of resumption and of sharding.
    batch_size : int, default=8
        Latents per Jacobian computation. Not part of the job's identity: a run resumed with another batch
        size (e.g. after running out of memory) keeps the finished chunks, whose values may then differ
        from an uninterrupted run in the last bits.
    vmap_chunk : int, optional
        Directions pushed through the network at once (``chunk_size`` of
        :func:`~sampling.volume.jacobian_singular_values`); lower it to bound memory.
    """

    def __init__(self, G, network_sha256, num, seed=0, space='pixel', method='lowrank', top_k=30, class_idx=None,
                 dtype='float32', resize=None, embedder=None, embedder_sha256=None, num_projections=128,
                 projection_seed=0, block_size=10, num_iters=15, chunk_size=1000, batch_size=8, vmap_chunk=None):
        if dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
        if int(num) < 1 or int(chunk_size) < 1 or int(batch_size) < 1:
            raise ValueError('num, chunk_size and batch_size must be positive')
        if space not in volume.SPACES:
            raise ValueError(f'space must be one of {volume.SPACES}, got {space!r}')
        if method not in volume.METHODS:
            raise ValueError(f'method must be one of {volume.METHODS}, got {method!r}')
        if space == 'feature' and embedder is None:
            raise ValueError('space feature needs an embedding network: pass --embedder (a TorchScript file)')
        if space != 'feature' and embedder is not None:
            raise ValueError('--embedder applies to space feature only')
        if resize is not None and space != 'pixel':
            raise ValueError('--resize applies to space pixel only')
        self.G = G.to(DTYPES[dtype])
        self.z_dim, self.c_dim = int(G.z_dim), int(G.c_dim)
        self.class_idx = parse_class(class_idx)
        if self.c_dim == 0 and self.class_idx is not None:
            raise ValueError('--class was given but the network is unconditional: leave it out')
        if isinstance(self.class_idx, int) and not 0 <= self.class_idx < self.c_dim:
            raise ValueError(f'--class {self.class_idx} is out of range for {self.c_dim} classes (0..{self.c_dim - 1})')
        self.num_rows = int(num) * (self.c_dim if self.class_idx == 'all' else 1)
        self.num, self.seed = int(num), int(seed)
        self.space, self.method, self.dtype = space, method, dtype
        self.resize, self.embedder = resize, embedder
        self.chunk_size, self.batch_size, self.vmap_chunk = int(chunk_size), int(batch_size), vmap_chunk
        self.jacobian_kwargs = dict(method=method, dtype=DTYPES[dtype], chunk_size=vmap_chunk)
        if method == 'projected':
            self.jacobian_kwargs.update(num_projections=int(num_projections), projection_seed=int(projection_seed))
        if method == 'lowrank':
            self.jacobian_kwargs.update(block_size=int(block_size), num_iters=int(num_iters),
                                        projection_seed=int(projection_seed))
        # NVlabs' StyleGAN2/3 cast z and w to float32 inside, whatever the dtype of their weights.
        out_dim, self.output_dtype, normalizes_z = self._probe()
        self.top_k = self._check_top_k(top_k, out_dim, normalizes_z)
        self.config = dict(
            kind='volume', network_sha256=network_sha256, z_dim=self.z_dim, c_dim=self.c_dim, num=self.num,
            num_rows=self.num_rows, seed=self.seed, class_idx=self.class_idx, space=space, method=method,
            top_k=self.top_k, dtype=dtype, resize=resize, embedder_sha256=embedder_sha256,
            num_projections=self.jacobian_kwargs.get('num_projections'),
            projection_seed=self.jacobian_kwargs.get('projection_seed'),
            block_size=self.jacobian_kwargs.get('block_size'), num_iters=self.jacobian_kwargs.get('num_iters'),
            output_dtype=self.output_dtype, chunk_size=self.chunk_size, truncation_psi=1, noise_mode='const')

    @property
    def device(self):
        return next(self.G.parameters()).device

    @property
    def num_chunks(self):
        return -(-self.num_rows // self.chunk_size)

    def _space_fn(self, c):
        return volume.make_space_fn(self.G, self.space, c=c, resize=self.resize, embedder=self.embedder)

    def _probe(self):
        """One forward pass of the space on the first latent: ``(output size, output dtype name, normalizes_z)``."""
        z, c = self._tensors(*self.inputs(0, 1))
        f = self._space_fn(c)
        with torch.no_grad():
            out = f(z)
        return int(np.prod(out.shape[1:])), str(out.dtype).replace('torch.', ''), f.normalizes_z

    def _check_top_k(self, top_k, out_dim, normalizes_z):
        """Refuse a K that includes the null direction or exceeds what the method returns, before any work."""
        top_k = volume.check_top_k(top_k, self.z_dim, normalizes_z=normalizes_z)
        kw = self.jacobian_kwargs
        if self.method == 'projected' and kw['num_projections'] > out_dim:
            raise ValueError(f'--num-projections {kw["num_projections"]} exceeds the output size {out_dim} of '
                             f'space {self.space}; use at most {out_dim}')
        if self.method == 'lowrank' and top_k > kw['block_size'] * (kw['num_iters'] + 1):
            raise ValueError(f'--top-k {top_k} exceeds the Lanczos dimension {kw["block_size"] * (kw["num_iters"] + 1)}')
        available = _available(self.method, self.z_dim, out_dim, kw.get('num_projections'), kw.get('block_size'),
                               kw.get('num_iters'))
        if top_k > available:
            raise ValueError(f'--top-k {top_k} exceeds the {available} singular values that method {self.method} gives '
                             f'in space {self.space} (output size {out_dim}); lower --top-k')
        return top_k

    # Rows.
    def chunk_rows(self, index):
        """``(start, stop)`` of chunk ``index``."""
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.num_rows)

    def labels(self, start, stop):
        """One-hot float32 labels [stop - start, c_dim] of rows ``start .. stop - 1``."""
        n = stop - start
        if self.c_dim == 0:
            return np.zeros([n, 0], dtype=np.float32)
        if self.class_idx == 'all':
            return latents.one_hot(np.arange(start, stop) // self.num, self.c_dim)
        if self.class_idx is not None:
            return latents.one_hot(np.full([n], self.class_idx), self.c_dim)
        return latents.random_labels(self.seed, n, self.c_dim, start=start)

    def inputs(self, start, stop):
        """``(z, c)`` of rows ``start .. stop - 1`` as float32 numpy arrays."""
        z = latents.z_batch(self.seed, stop - start, self.z_dim, start=start).astype(np.float32)
        return z, self.labels(start, stop)

    # Work.
    def _tensors(self, z, c):
        device, dtype = self.device, DTYPES[self.dtype]
        z = torch.from_numpy(np.asarray(z)).to(device=device, dtype=dtype)
        c = torch.from_numpy(np.asarray(c)).to(device=device, dtype=dtype) if self.c_dim else None
        return z, c

    def singular_values(self, z, c):
        """Top-K singular values [B, top_k] (float64 numpy) of a batch of latents and labels."""
        z, c = self._tensors(z, c)
        svals = volume.jacobian_singular_values(self._space_fn(c), z, top_k=self.top_k, **self.jacobian_kwargs)
        return svals.cpu().numpy()

    def compute_chunk(self, index, progress=None):
        """The bank of chunk ``index``; ``progress(n)`` is called after every batch of ``n`` latents."""
        start, stop = self.chunk_rows(index)
        z, c = self.inputs(start, stop)
        svds = np.empty([stop - start, self.top_k], dtype=np.float32)
        for lo in range(0, stop - start, self.batch_size):
            hi = min(lo + self.batch_size, stop - start)
            svds[lo:hi] = self.singular_values(z[lo:hi], c[lo:hi])
            if progress is not None:
                progress(hi - lo)
        rows = np.arange(start, stop, dtype=np.int64)
        return latents.LatentBank(z, c, meta=dict(chunk=index), svds=svds,
                                  seeds=np.full([stop - start], self.seed, dtype=np.int64), indices=rows)

    def store(self, outdir):
        """The :class:`~sampling.chunks.ChunkStore` of this job under ``outdir`` (refuses other settings)."""
        return chunks.ChunkStore(os.path.join(outdir, CHUNK_DIR), self.num_chunks, config=self.config)

    def run(self, outdir, shard=(0, 1), progress=True):
        """Compute and store the pending chunks of ``shard`` ``(i, n)``; returns the chunk indices computed."""
        from tqdm import tqdm

        store = self.store(outdir)
        todo = store.pending(chunks.chunks_for_shard(self.num_chunks, *shard))
        total = sum(self.chunk_rows(i)[1] - self.chunk_rows(i)[0] for i in todo)
        with tqdm(total=total, unit='latent', desc='Singular values', disable=not progress, smoothing=0.1) as bar:
            def advance(num):
                bar.update(num)
                store.heartbeat()
            # Claims let identical runs and retried SLURM tasks share the chunks (see ChunkStore).
            return store.run(lambda index: self.compute_chunk(index, progress=advance), todo, progress=False)

    def merge(self, outdir, command=None):
        """Join the finished chunks into ``outdir/volumes.npz`` (atomically) and return the bank.

        Then the chunk files are packed into ``chunks/chunks.npz`` (:meth:`~sampling.chunks.ChunkStore.consolidate`):
        a re-run of the finished command reads them from there and computes nothing.

        Raises ValueError naming the missing chunks if some shard has not finished.
        """
        extras = {k: v for k, v in self.config.items() if k not in ('network_sha256', 'space', 'z_dim', 'c_dim')}
        meta = latents.make_meta(command=command, network_sha256=self.config['network_sha256'], space=self.space,
                                 z_dim=self.z_dim, c_dim=self.c_dim, **extras)
        store = self.store(outdir)
        bank = store.merge(meta=meta)
        bank.save(os.path.join(outdir, BANK_NAME))
        store.consolidate()   # The bank is written: one pack file replaces the chunk files.
        return bank

# ----------------------------------------------------------------------------
