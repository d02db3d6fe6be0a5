"""Hubness-prior sampling (Liang et al., ICML 2022): score seeded batches of latents, keep the hubs.

Batch b of a search draws ``batch_size`` latents from batch seed ``seed + b`` (the batch convention of
:mod:`sampling.latents`), scores each by its exact k-occurrence among the batch (:mod:`sampling.hubness`), in
W (``G.mapping(z, c, truncation_psi=1)[:, 0]``, the authors' choice) or in Z, and keeps the latents a selection
rule accepts. The hubs of a search are those of batches 0, 1, 2, ... in (batch, index) order, and a request
for `num` hubs takes the first `num` of them. Every latent is addressed by (batch seed, index), so the result
does not depend on the synthesis batch size, on interruptions or on how batches are spread over shards.

Each finished batch is stored as one chunk of a :class:`~sampling.chunks.ChunkStore` (its hubs as a latent
bank, its statistics in the chunk's metadata), so a killed run resumes where it stopped and a sharded run
(SLURM array) is merged into exactly the bank a single run writes.
"""

import dataclasses
import math
import os
import sys
import time

import numpy as np
import torch

from sampling.chunks import chunks_for_shard
from sampling.hub_report import score_norm_moments
from sampling.hubness import hubness_stats, k_occurrence
from sampling.latents import LatentBank, concatenate, one_hot, random_labels, z_batch
from sampling.synthesis import has_mapping, require_mapping

# Latents per mapping-network call. Fixed, not tied to any command-line batch size, so that W (and hence every
# score) is computed in the same way whatever the other settings.
_MAP_BLOCK = 4096

# Latents per batch whose (score, ||z||) pairs are kept for the report's scatter plot.
_SCATTER_SAMPLE = 256

# Batches without a single hub after which the user is warned that the rule may never accept anything.
_WARN_AFTER = 10

# Largest number of scoring batches of one search (the chunk store's size): batch seeds stay addressable.
MAX_BATCHES = 1_000_000

# ----------------------------------------------------------------------------

@dataclasses.dataclass
class HubSearch:
    """Settings of a hub search; the defaults are those of the authors' notebook.

    Parameters
    ----------
    space : {'w', 'z'}, default='w'
        Score ``G.mapping(z, c, truncation_psi=1)[:, 0]`` (authors) or z itself.
    k : int, default=5
        Neighbourhood size of the k-occurrence.
    count_self : bool, default=True
        True: the authors' convention, every latent is its own first neighbour (so k=5 means 4 others and the
        score counts the latent itself once). False: the textbook N_k. See :func:`sampling.hubness.k_occurrence`.
    batch_size : int, default=10000
        Latents scored together; k-occurrence is relative to the batch, so this is part of the method.
    seed : int, default=0
        Batch b uses batch seed ``seed + b``.
    threshold, top, quantile : optional, at most one
        Selection rule per batch: score >= threshold; the `top` highest scores (ties: lower index first);
        score >= the `quantile` of the batch's scores (numpy's default linear quantile). Default: threshold=50.
    class_idx : int, 'random' or None
        Labels of a conditional network: one class for all latents, or 'random' for row j of
        :func:`sampling.latents.random_labels` of the batch seed. None for unconditional networks.
    """

    space: str = 'w'
    k: int = 5
    count_self: bool = True
    batch_size: int = 10000
    seed: int = 0
    threshold: float = None
    top: int = None
    quantile: float = None
    class_idx: object = None

    def __post_init__(self):
        if self.space not in ('w', 'z'):
            raise ValueError(f"unknown space {self.space!r}; use 'w' (the authors') or 'z'")
        rules = [name for name in ('threshold', 'top', 'quantile') if getattr(self, name) is not None]
        if len(rules) > 1:
            raise ValueError(f'choose one selection rule, got {" and ".join(rules)}')
        if not rules:
            self.threshold = 50.0
        if self.batch_size < 2:
            raise ValueError(f'batch_size must be at least 2, got {self.batch_size}')
        if not 1 <= self.k < self.batch_size:
            raise ValueError(f'k must be between 1 and batch_size - 1 = {self.batch_size - 1}, got k = {self.k}')
        if self.top is not None and not 1 <= self.top <= self.batch_size:
            raise ValueError(f'top must be between 1 and batch_size = {self.batch_size}, got {self.top}')
        if self.quantile is not None and not 0 <= self.quantile <= 1:
            raise ValueError(f'quantile must be in [0, 1], got {self.quantile}')
        if not 0 <= self.seed < 2 ** 32:
            raise ValueError(f'seed must be in [0, 2**32), got {self.seed}')
        valid_class = isinstance(self.class_idx, (int, np.integer)) and not isinstance(self.class_idx, bool) and \
            self.class_idx >= 0
        if not (self.class_idx is None or self.class_idx == 'random' or valid_class):
            raise ValueError(f"class must be a class index >= 0, 'random' or None, got {self.class_idx!r}")

    @property
    def rule(self):
        """The selection rule as (name, value), e.g. ('threshold', 50.0)."""
        for name in ('threshold', 'top', 'quantile'):
            if getattr(self, name) is not None:
                return name, getattr(self, name)
        raise AssertionError('unreachable: __post_init__ sets a rule')

    def batch_seed(self, batch):
        seed = self.seed + batch
        if seed >= 2 ** 32:
            raise ValueError(f'batch {batch} would use batch seed {seed} >= 2**32; use a smaller seed')
        return seed

    def settings(self):
        """The settings as a JSON-ready dict."""
        return dataclasses.asdict(self)


def select_hubs(scores, threshold=None, top=None, quantile=None):
    """Indices (ascending) of the latents a selection rule accepts, and the rule's score cutoff.

    Exactly one rule: ``scores >= threshold``; the `top` highest scores, ties broken by the lower index;
    ``scores >= np.quantile(scores, quantile)``.

    Returns
    -------
    indices : int64 ndarray
    cutoff : float
        The smallest score the rule accepts (the threshold, the quantile, or the lowest kept score for top;
        nan when top keeps nothing).
    """
    scores = np.asarray(scores).ravel()
    if sum(v is not None for v in (threshold, top, quantile)) != 1:
        raise ValueError('pass exactly one of threshold, top, quantile')
    if top is not None:
        order = np.argsort(-scores.astype(np.int64), kind='stable')[:top]
        indices = np.sort(order)
        return indices.astype(np.int64), float(scores[indices].min()) if indices.size else math.nan
    cutoff = float(threshold) if threshold is not None else float(np.quantile(scores.astype(np.float64), quantile))
    return np.flatnonzero(scores >= cutoff).astype(np.int64), cutoff


def batch_labels(search, batch, c_dim):
    """float32 one-hot labels [batch_size, c_dim] of batch `batch` (empty [batch_size, 0] if unconditional)."""
    num = search.batch_size
    if c_dim == 0:
        return np.zeros([num, 0], dtype=np.float32)
    if search.class_idx is None:
        raise ValueError(f'the network is conditional ({c_dim} classes): choose a class or class_idx="random"')
    if search.class_idx == 'random':
        return random_labels(search.batch_seed(batch), num, c_dim)
    return one_hot(np.full([num], int(search.class_idx)), c_dim)


@torch.no_grad()
def map_to_w(G, z, c, device):
    """float32 W of latents, ``G.mapping(z, c, truncation_psi=1)[:, 0]``, as a tensor on `device`."""
    out = []
    for i0 in range(0, len(z), _MAP_BLOCK):
        zb = torch.as_tensor(z[i0 : i0 + _MAP_BLOCK]).to(device=device, dtype=torch.float32)
        cb = torch.as_tensor(c[i0 : i0 + _MAP_BLOCK]).to(device=device, dtype=torch.float32)
        out.append(G.mapping(zb, cb, truncation_psi=1)[:, 0].to(torch.float32))
    return torch.cat(out) if out else torch.zeros([0, G.w_dim], dtype=torch.float32, device=device)


def score_batch(G, search, batch, device=None, backend='torch', labels=None):
    """Score batch `batch` of a search and keep its hubs.

    `labels`, if given, is ``labels(batch_seed, num)`` -> float32 [num, c_dim] in place of :func:`batch_labels`
    (e.g. labels drawn from a dataset).

    Returns
    -------
    chunk : LatentBank
        The hubs of the batch in index order: ``latents`` (float64 z), ``labels``, ``w`` (float32
        ``G.mapping(z, c, truncation_psi=1)[:, 0]``), ``hub_score`` (int64), ``seeds`` (the batch seed),
        ``indices`` (row in the batch). Its ``meta`` holds the batch's statistics: ``batch``, ``batch_seed``,
        ``num_scored``, ``num_accepted``, ``acceptance_rate``, ``cutoff``, ``histogram`` (count of each score
        0..max), ``hubness`` (:func:`~sampling.hubness.hubness_stats`), ``moments`` (score vs ||z||, for the
        pooled correlation) and ``sample`` (score and ||z|| of the first latents, for plots).
    """
    device = torch.device(device) if device is not None else next(G.parameters()).device
    seed = search.batch_seed(batch)
    z = z_batch(seed, search.batch_size, G.z_dim)
    c = batch_labels(search, batch, G.c_dim) if labels is None else labels(seed, search.batch_size)
    if search.space == 'w':
        require_mapping(G, 'hub scores in W')
    w_all = map_to_w(G, z, c, device) if search.space == 'w' else None
    points = w_all if search.space == 'w' else z
    scores = k_occurrence(points, search.k, count_self=search.count_self, device=device,
                          backend=backend).numpy().astype(np.int64)
    rule, value = search.rule
    keep, cutoff = select_hubs(scores, **{rule: value})
    if w_all is not None:
        w = w_all[torch.as_tensor(keep, device=w_all.device)]
    elif has_mapping(G):
        w = map_to_w(G, z[keep], c[keep], device)
    else:
        w = None  # No W to store for a generator without a mapping network.
    norms = np.sqrt((z * z).sum(axis=1))
    meta = dict(
        batch=batch, batch_seed=seed, num_scored=search.batch_size, num_accepted=int(keep.size),
        acceptance_rate=keep.size / search.batch_size, cutoff=cutoff,
        histogram=np.bincount(scores).tolist(),
        hubness=hubness_stats(scores, search.k, threshold=cutoff if math.isfinite(cutoff) else None),
        moments=score_norm_moments(scores, norms),
        sample=dict(score=scores[:_SCATTER_SAMPLE].tolist(), norm=norms[:_SCATTER_SAMPLE].tolist()),
    )
    arrays = dict(w=w.cpu().numpy()) if w is not None else {}
    return LatentBank(z[keep], c[keep], meta=meta, hub_score=scores[keep],
                      seeds=np.full([keep.size], seed, dtype=np.int64), indices=keep, **arrays)

# ----------------------------------------------------------------------------

@dataclasses.dataclass
class HubResult:
    """Outcome of :func:`collect_hubs`.

    Attributes
    ----------
    bank : LatentBank
        The first `num` hubs in (batch, index) order (fewer if the search stopped at `max_batches`). Its
        metadata is empty; the caller adds its own (:func:`sampling.latents.make_meta`).
    batches : list of dict
        The statistics (chunk metadata) of every batch the hubs were drawn from, in batch order.
    num : int
        Hubs requested.
    """

    bank: LatentBank
    batches: list
    num: int

    @property
    def complete(self):
        """Whether all `num` hubs were found."""
        return len(self.bank) >= self.num


def collect_hubs(store, num, max_batches, compute=None, progress=True):
    """The first `num` hubs of batches 0, 1, ..., reading finished batches from `store`.

    Parameters
    ----------
    store : ChunkStore or None
        One chunk per batch index; None: nothing is stored (the ``hubness`` sampler of :mod:`sampling.samplers`).
    num : int
        Hubs wanted (>= 1).
    max_batches : int
        Give up after this many batches.
    compute : callable, optional
        ``compute(b)`` returns the chunk of batch b (e.g. :func:`score_batch`); it is stored before use.
        None (merging shards): every needed batch must already be in the store.
    progress : bool, default=True

    Returns
    -------
    HubResult

    Raises
    ------
    ValueError
        When `compute` is None and a needed batch is not in the store.
    """
    from tqdm import tqdm

    if num < 1 or max_batches < 1:
        raise ValueError(f'num and max_batches must be >= 1, got {num} and {max_batches}')
    chunks, found = [], 0
    with tqdm(total=num, unit='hub', desc='Hubs', disable=None if progress else True) as bar:
        for batch in range(max_batches):
            if found >= num:
                break
            # Always the stored copy: a resumed run then sees exactly what an uninterrupted one saw.
            chunk = _obtain(store, batch, compute, max_batches)
            chunks.append(chunk)
            bar.update(min(len(chunk), num - found))
            found += len(chunk)
            bar.set_postfix(batches=batch + 1)
            if found == 0 and batch + 1 == _WARN_AFTER:
                best = max(len(c.meta['histogram']) - 1 for c in chunks)
                tqdm.write(f'warning: no hub in the first {_WARN_AFTER} batches (highest score: {best}); the '
                           f'selection rule may be too strict (a lower threshold finds hubs sooner)', file=sys.stderr)
    joined = concatenate(chunks, meta={})
    bank = joined.select(np.arange(min(num, len(joined))))
    return HubResult(bank=bank, batches=[chunk.meta for chunk in chunks], num=num)


def _obtain(store, batch, compute, max_batches):
    """The stored chunk of `batch`, computing it first if needed (None `compute`: it must be there).

    While another process holds the claim on `batch`, a later batch nobody has claimed is computed meanwhile
    (concurrent runs into one folder share the work), else this waits for it.
    """
    if store is None:
        return compute(batch)
    while True:
        chunk = store.load(batch)
        if chunk is not None:
            return chunk
        if compute is None:
            raise ValueError(f'batch {batch} is not finished: run every shard to the end before merging')
        if store.compute_one(batch, compute):
            continue
        for later in range(batch + 1, max_batches):
            if not store.present(later) and store.compute_one(later, compute):
                break
        else:
            time.sleep(store.poll_interval)


def shard_batches(search, num, shard_index, shard_count, max_batches=None):
    """Batches that shard `shard_index` of `shard_count` scores.

    A shard cannot know when the whole search has found `num` hubs, so the sharded job is a fixed set of
    batches 0 .. B-1, dealt out round-robin (shard i takes i, i + n, ...). B is `max_batches` if given; with
    the `top` rule it may be omitted and is then ``ceil(num / top)``, exactly what `num` hubs need. With the
    threshold and quantile rules the number of hubs per batch is not known in advance, so `max_batches` is
    required.
    """
    if max_batches is None:
        if search.top is None:
            raise ValueError('with shards and a threshold or quantile rule, the number of batches must be given '
                             '(max_batches): shards cannot know when enough hubs are found')
        max_batches = -(-num // search.top)
    return chunks_for_shard(max_batches, shard_index, shard_count)

# ----------------------------------------------------------------------------

def image_names(num):
    """File names of the hub images, in hub order."""
    return [f'hub{i:06d}.png' for i in range(num)]


def write_images(G, bank, outdir, truncation_psi=1, noise_mode='const', batch_size=32, progress=True):
    """Render every hub of `bank` to ``outdir/hub000000.png`` ..., skipping complete images already there.

    Images are rendered in groups of `batch_size` consecutive hubs starting at multiples of `batch_size`, the
    same groups whatever was written before, so an interrupted and resumed run writes the same files as an
    uninterrupted one. Returns the paths in hub order.
    """
    from tqdm import tqdm

    from sampling.images import png_problem, save_png, to_uint8
    from sampling.synthesis import synthesize

    paths = [os.path.join(outdir, name) for name in image_names(len(bank))]
    size = int(G.img_resolution)
    sound = []
    for path in paths:
        problem = png_problem(path, size, size) if os.path.exists(path) else 'missing'
        if problem not in (None, 'missing'):
            tqdm.write(f'warning: {path} {problem}; rendering it again', file=sys.stderr)
        sound.append(problem is None)
    starts = [i0 for i0 in range(0, len(bank), batch_size) if not all(sound[i0 : i0 + batch_size])]
    for i0 in tqdm(starts, unit='batch', desc='Images', disable=None if progress else True):
        i1 = min(i0 + batch_size, len(bank))
        images = synthesize(G, z=bank.latents[i0:i1], c=bank.labels[i0:i1], truncation_psi=truncation_psi,
                            noise_mode=noise_mode, batch_size=i1 - i0)
        for path, array, ok in zip(paths[i0:i1], to_uint8(next(images)), sound[i0:i1]):
            if not ok:
                save_png(path, array)
    return paths


def write_grid(paths, path, max_images=64):
    """Tile the first `max_images` images into one grid image at `path`; nothing when there are none."""
    from sampling.images import load_png, make_grid, save_png

    arrays = [load_png(p) for p in paths[:max_images]]
    if not arrays:
        return False
    arrays = np.stack([a[:, :, None] if a.ndim == 2 else a for a in arrays])
    save_png(path, make_grid(arrays))
    return True


def write_outputs(G, result, search, outdir, meta, images=True, truncation_psi=1, noise_mode='const', synth_batch=32,
                  progress=True):
    """Write a search's outputs into `outdir`: hubs.npz, the images and grid.png (if `images`), the report.

    Parameters
    ----------
    G : generator
    result : HubResult
    search : HubSearch
    outdir : str
    meta : dict
        The bank's metadata (:func:`sampling.latents.make_meta`).
    images : bool, default=True
    truncation_psi, noise_mode, synth_batch : synthesis settings, see :func:`write_images`.
    progress : bool, default=True

    Returns
    -------
    report : dict
        See :func:`sampling.hub_report.build_report`.
    """
    from sampling.hub_report import build_report, draw_report, save_report

    os.makedirs(outdir, exist_ok=True)
    hubs = result.bank
    bank = LatentBank(hubs.latents, hubs.labels, meta=meta,
                      **{name: hubs[name] for name in hubs.keys() if name not in ('latents', 'labels')})
    bank_path = os.path.join(outdir, 'hubs.npz')
    if not _same_bank(bank_path, bank):  # An unchanged bank is left alone (a rewritten npz differs in timestamps).
        bank.save(bank_path)
    if images:
        paths = write_images(G, bank, outdir, truncation_psi=truncation_psi, noise_mode=noise_mode,
                             batch_size=synth_batch, progress=progress)
        write_grid(paths, os.path.join(outdir, 'grid.png'))
    report = build_report(result, search)
    save_report(report, draw_report(report, result), os.path.join(outdir, 'report.json'),
                os.path.join(outdir, 'report.png'))
    return report


def _same_bank(path, bank):
    if not os.path.exists(path):
        return False
    try:
        return LatentBank.load(path).equals(bank)
    except (OSError, ValueError) as err:
        print(f'warning: {str(err).splitlines()[0]}; writing it again', file=sys.stderr)
        return False

# ----------------------------------------------------------------------------
