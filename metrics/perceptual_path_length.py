"""Perceptual path length (PPL, Karras et al. 2019) of a generator, for a sampling method.

For pairs of latents (z0, z1) and a position t, the images at t and t + epsilon along the path between them
are compared by an LPIPS distance; PPL is the mean of ``distance^2 / epsilon^2`` over the pairs, after
dropping the pairs below the 1st and above the 99th percentile. As NVlabs' ``ppl2_wend`` and ``ppl_*``:

* the path is a lerp of w = ``G.mapping(z, c)`` (space 'w') or a slerp of z (space 'z'); t = 0 ('end') or
  uniform in [0, 1) ('full'); a generator without a mapping network (ProGAN) has only the z path, through
  ``G(z, c, truncation_psi, noise_mode='const')``;
* every ``noise_const`` buffer of (a copy of) the generator is redrawn for each batch, and the images are
  synthesised with ``noise_mode='const', force_fp32=True``, so both images of a pair share their noise;
* optionally cropped to rows [3c, 7c) and columns [2c, 6c), c = resolution / 8 (the face region);
  box-downsampled by ``resolution // 256`` when the resolution exceeds 256; mapped to [0, 255];
* embedded by NVlabs' VGG16 with ``resize_images=False, return_lpips=True`` (or a custom module, see
  :func:`metrics.metric_utils.run_detector`), the distance being the sum of squared differences.

Unlike NVlabs' run, everything is seeded: the pairs are ``sampler.sample(2 * num_samples, seed)`` (rows
2i and 2i + 1 make pair i, with the labels of row 2i and the sampler's truncation psi), and batch b draws
its noise buffers and its t from generators seeded by (seed, b). The percentiles use NumPy's
``method='lower'`` / ``'higher'`` (NVlabs' ``interpolation=`` argument no longer exists).
"""

import copy

import numpy as np
import torch

from metrics import metric_utils
from sampling.synthesis import has_mapping, require_mapping

# ----------------------------------------------------------------------------


def _normalize(x):
    return x / x.norm(dim=-1, keepdim=True)


def slerp(a, b, t):
    """Spherical interpolation between the directions of ``a`` and ``b`` (rows), at fractions ``t``.

    The result has unit length, as in the PPL definition (StyleGAN normalises z anyway).

    Parameters
    ----------
    a, b : Tensor of shape (N, d)
    t : Tensor of shape (N,) or (N, 1)
    """
    a, b = _normalize(a), _normalize(b)
    t = t.reshape(-1, 1)
    cos = (a * b).sum(dim=-1, keepdim=True).clamp(-1, 1)
    angle = t * torch.acos(cos)
    ortho = _normalize(b - cos * a)
    return _normalize(a * torch.cos(angle) + ortho * torch.sin(angle))


def lerp(a, b, t):
    """Linear interpolation ``a + (b - a) * t``, ``t`` broadcast over the trailing dimensions."""
    return a + (b - a) * t.reshape([-1] + [1] * (a.ndim - 1))


def filtered_mean(dist, lo=1, hi=99):
    """Mean of the values between the ``lo``-th percentile ('lower') and the ``hi``-th ('higher'), inclusive."""
    dist = np.asarray(dist, dtype=np.float64)
    lo_value = np.percentile(dist, lo, method='lower')
    hi_value = np.percentile(dist, hi, method='higher')
    return float(dist[(dist >= lo_value) & (dist <= hi_value)].mean())


def _batch_generator(seed, batch):
    gen = torch.Generator(device='cpu')
    gen.manual_seed(int(np.random.SeedSequence([int(seed), 3, int(batch)]).generate_state(1, np.uint64)[0] >> 1))
    return gen


def box_downsample(img, factor):
    """Mean over ``factor x factor`` blocks of NCHW images."""
    if factor <= 1:
        return img
    n, c, h, w = img.shape
    return img.reshape(n, c, h // factor, factor, w // factor, factor).mean(dim=[3, 5])


def path_distances(G, detector, z0, z1, c, psi, epsilon, space, sampling, crop, noise_buffers, gen, detector_kwargs):
    """``distance^2 / epsilon^2`` of one batch of pairs (see the module docstring); float32 [batch]."""
    device = z0.device
    batch = z0.shape[0]
    t = torch.rand([batch], generator=gen).to(device) * (sampling == 'full')
    for buf in noise_buffers:
        buf.copy_(torch.randn(buf.shape, generator=gen).to(buf.device))
    cc = torch.cat([c, c])
    if not has_mapping(G):  # A generator without W (ProGAN): slerp in z through the whole network.
        zt0, zt1 = slerp(z0, z1, t), slerp(z0, z1, t + epsilon)
        img = G(torch.cat([zt0, zt1]), cc, truncation_psi=psi, noise_mode='const')
    else:
        if space == 'w':
            w0, w1 = G.mapping(z=torch.cat([z0, z1]), c=cc, truncation_psi=psi).chunk(2)
            wt0, wt1 = lerp(w0, w1, t), lerp(w0, w1, t + epsilon)
            ws = torch.cat([wt0, wt1])
        else:
            zt0, zt1 = slerp(z0, z1, t), slerp(z0, z1, t + epsilon)
            ws = G.mapping(z=torch.cat([zt0, zt1]), c=cc, truncation_psi=psi)
        img = G.synthesis(ws, noise_mode='const', force_fp32=True)
    if crop:
        assert img.shape[2] == img.shape[3]
        q = img.shape[2] // 8
        img = img[:, :, q * 3:q * 7, q * 2:q * 6]
    img = box_downsample(img, G.img_resolution // 256)
    img = (img + 1) * (255 / 2)
    emb0, emb1 = metric_utils.run_detector(detector, img, **detector_kwargs).chunk(2)
    return (emb0 - emb1).square().sum(dim=1) / epsilon ** 2


def compute_ppl(opts, num_samples, epsilon, space, sampling, crop, batch_size):
    """PPL of ``opts.G`` with the latents of ``opts.sampler`` (NaN on ranks other than 0).

    Parameters
    ----------
    opts : metrics.metric_utils.MetricOptions
    num_samples : int
    epsilon : float
    space : {'w', 'z'}
    sampling : {'end', 'full'}
    crop : bool
    batch_size : int
        Pairs per synthesis call (NVlabs: 2); part of the noise seeding, so keep it fixed to reproduce a run.
    """
    if space not in ('w', 'z') or sampling not in ('end', 'full'):
        raise ValueError(f"space must be 'w' or 'z' and sampling 'end' or 'full', got {space!r}, {sampling!r}")
    if space == 'w':
        require_mapping(opts.G, 'PPL in W')
    sampler = metric_utils.get_sampler(opts)
    z_all, c_all, psi = sampler.sample(2 * num_samples, opts.seed)
    psi = opts.G_kwargs.get('truncation_psi', psi)
    G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    noise_buffers = [buf for name, buf in G.named_buffers() if name.endswith('.noise_const')]
    detector = metric_utils.get_feature_detector(metric_utils.detector_url(opts, 'vgg16'), device=opts.device,
                                                 num_gpus=opts.num_gpus, rank=opts.rank, verbose=opts.progress,
                                                 allow_pickle_code=opts.allow_pickle_code)
    detector_kwargs = dict(resize_images=False, return_lpips=True)
    dist, done = [], 0
    with metric_utils._progress(opts, num_samples, 'PPL') as bar:
        for items in metric_utils.rank_batches(num_samples, batch_size, opts.num_gpus, opts.rank):
            z0 = torch.from_numpy(z_all[2 * items]).to(opts.device)
            z1 = torch.from_numpy(z_all[2 * items + 1]).to(opts.device)
            c = torch.from_numpy(c_all[2 * items]).to(opts.device)
            gen = _batch_generator(opts.seed, items[0] // batch_size)
            with torch.no_grad():
                d = path_distances(G, detector, z0, z1, c, psi, epsilon, space, sampling, crop, noise_buffers, gen,
                                   detector_kwargs)
            d = metric_utils.gather_batches(d.to(torch.float32), opts.num_gpus)
            dist.append(d.cpu().numpy())
            bar.update(min(len(d), num_samples - done))
            done += len(d)
    if opts.rank != 0:
        return float('nan')
    dist = np.concatenate(dist)[:num_samples]
    return filtered_mean(dist)

# ----------------------------------------------------------------------------
