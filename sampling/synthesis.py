"""Batched image synthesis from latents, independent of the command line.

The generator face
------------------
Every network this toolkit samples has ``z_dim``, ``c_dim``, ``img_resolution``, ``img_channels`` and
``G(z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='const') -> [B, C, H, W]`` in about [-1, 1].
StyleGAN2/3 also split into ``G.mapping(z, c, truncation_psi, truncation_cutoff) -> ws [B, num_ws, w_dim]``
and ``G.synthesis(ws, noise_mode)``; networks without that split (ProGAN, BigGAN, NVAE) are sampled through
``G(...)`` alone, and what needs W (hub scores in W, the 'style' volume space, ``--projected-w``) says so.
"""

import numpy as np
import torch


def has_mapping(G):
    """Whether ``G`` has a mapping network ``G.mapping`` (z -> ws), as StyleGAN does."""
    return callable(getattr(G, 'mapping', None))


def require_mapping(G, what):
    """Raise a one-line ValueError when ``what`` (e.g. "hub scores in W") needs a mapping network."""
    if not has_mapping(G):
        raise ValueError(f'{what} needs a generator with a mapping network (z -> W), and this '
                         f'{type(G).__name__} has none: use the latent space z instead')


def make_transform(translate=(0, 0), angle=0):
    """StyleGAN3 input transform [[cos, sin, tx], [-sin, cos, ty], [0, 0, 1]] for ``angle`` in degrees."""
    m = np.eye(3)
    s = np.sin(angle / 360.0 * np.pi * 2)
    c = np.cos(angle / 360.0 * np.pi * 2)
    m[0][0], m[0][1], m[0][2] = c, s, translate[0]
    m[1][0], m[1][1], m[1][2] = -s, c, translate[1]
    return m


def set_input_transform(G, translate=(0, 0), angle=0):
    """Write the inverse of ``make_transform`` into a StyleGAN3 generator; no effect on other networks."""
    synthesis_input = getattr(getattr(G, 'synthesis', None), 'input', None)
    if synthesis_input is None or not hasattr(synthesis_input, 'transform'):
        return False
    m = np.linalg.inv(make_transform(translate, angle))
    synthesis_input.transform.copy_(torch.from_numpy(m))
    return True


# On the CPU a block whose activations outgrow the cache runs faster a few samples at a time than as one batch.
_CPU_BLOCK_BYTES = 16 << 20


def uses_cpu_blocks(G, device, batch_size, exact_nvlabs=False):
    """Whether :func:`synthesize` runs this batch through :func:`_cpu_synthesis` rather than NVlabs' forward pass.

    NVlabs' StyleGAN2 picks the fused modulated convolution (one grouped convolution with per-sample weights)
    from the training mode and dtype. On the CPU a batch runs faster unfused (activations scaled before and
    after one shared convolution), and large blocks faster a sample at a time: same mathematics, different
    float32 rounding (uint8 images within 1). ``exact_nvlabs`` keeps NVlabs' choice, for bit-level comparisons.
    StyleGAN3 networks have no such choice.
    """
    return not exact_nvlabs and torch.device(device).type == 'cpu' and batch_size > 1 and is_stylegan2(G)


def is_stylegan2(G):
    """Whether ``G`` (ours or NVlabs' code) is a StyleGAN2-family generator built of synthesis blocks."""
    return hasattr(G, 'mapping') and hasattr(getattr(G, 'synthesis', None), 'block_resolutions')


def _cpu_synthesis(synthesis, ws, **block_kwargs):
    """StyleGAN2 synthesis on the CPU, each block in sub-batches whose activations fit the cache.

    The same blocks and arguments as NVlabs' SynthesisNetwork.forward; small blocks run as one unfused batch,
    large ones a few samples at a time (one sample: NVlabs' fused path, the fastest for a single image).
    """
    ws = ws.to(torch.float32)
    x = img = None
    w_idx = 0
    for res in synthesis.block_resolutions:
        block = getattr(synthesis, f'b{res}')
        block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
        w_idx += block.num_conv
        sample_bytes = 4 * block.conv1.weight.shape[0] * res * res
        step = max(1, _CPU_BLOCK_BYTES // sample_bytes)
        if step >= len(ws):
            x, img = block(x, img, block_ws, fused_modconv=False, **block_kwargs)
            continue
        parts = [block(None if x is None else x[i:i + step], None if img is None else img[i:i + step],
                       block_ws[i:i + step], fused_modconv=(step == 1), **block_kwargs)
                 for i in range(0, len(ws), step)]
        x = torch.cat([part[0] for part in parts])
        img = None if parts[0][1] is None else torch.cat([part[1] for part in parts])
    return img


@torch.no_grad()
def synthesize(G, z=None, c=None, ws=None, truncation_psi=1, truncation_cutoff=None, noise_mode='const',
               batch_size=32, progress=None, exact_nvlabs=False):
    """Yield float32 NCHW images for latents ``z`` [N, z_dim] (or ``ws`` [N, num_ws, w_dim]) in batches.

    ``c`` is [N, c_dim] or [1, c_dim] (broadcast). Latents may be numpy or torch; they are moved to
    G's device. ``progress`` is called with the number of images after each batch. A StyleGAN2 batch on
    the CPU runs block by block in cache-sized sub-batches on the faster modulated-convolution path
    (:func:`uses_cpu_blocks`); ``exact_nvlabs`` runs NVlabs' forward pass as it is.
    """
    device = next(G.parameters()).device
    source = ws if ws is not None else z
    num = len(source)
    for start in range(0, num, batch_size):
        stop = min(start + batch_size, num)
        cpu_blocks = uses_cpu_blocks(G, device, stop - start, exact_nvlabs)
        if ws is not None:
            require_mapping(G, 'synthesis from W vectors')
            batch_ws = torch.as_tensor(np.asarray(ws[start:stop]) if not torch.is_tensor(ws) else ws[start:stop])
            batch_ws = batch_ws.to(device, torch.float32)
            img = (_cpu_synthesis(G.synthesis, batch_ws, noise_mode=noise_mode) if cpu_blocks else
                   G.synthesis(batch_ws, noise_mode=noise_mode))
        else:
            batch_z = torch.as_tensor(z[start:stop]).to(device, torch.float32)
            batch_c = _batch_labels(G, c, start, stop, device)
            if cpu_blocks:
                batch_ws = G.mapping(batch_z, batch_c, truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff)
                img = _cpu_synthesis(G.synthesis, batch_ws, noise_mode=noise_mode)
            else:
                img = G(batch_z, batch_c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                        noise_mode=noise_mode)
        if progress is not None:
            progress(stop - start)
        yield img


def _batch_labels(G, c, start, stop, device):
    if c is None:
        return torch.zeros([stop - start, G.c_dim], device=device)
    c = torch.as_tensor(c).to(device, torch.float32)
    if c.shape[0] == 1:
        return c.expand(stop - start, -1)
    return c[start:stop]


def load_projected_w(path, num_ws, w_dim):
    """The ``w`` array [N, num_ws, w_dim] of a projector's ``.npz`` (NVlabs' projected_w.npz), as float32.

    Raises :class:`sampling.latents.FileFormatError` (one line naming the file) for anything else: not a
    readable ``.npz``, no ``w``, another shape, or values that are not finite (they would render black images).
    """
    from sampling.latents import FileFormatError, read_npz

    arrays = read_npz(path, what='projected-W file')
    if 'w' not in arrays:
        raise FileFormatError(f"{path} has no array 'w' (it has: {', '.join(sorted(arrays)) or 'nothing'}); "
                              f"save the W vectors as numpy.savez(path, w=ws)")
    ws = arrays['w']
    if ws.dtype.kind not in 'fiu' or ws.ndim != 3 or ws.shape[1:] != (num_ws, w_dim) or len(ws) == 0:
        raise FileFormatError(f'{path}: w is a {ws.dtype} array of shape {list(ws.shape)}, expected numbers of '
                              f'shape [N >= 1, {num_ws}, {w_dim}] for this network')
    ws = ws.astype(np.float32)
    if not np.isfinite(ws).all():
        bad = int((~np.isfinite(ws)).any(axis=(1, 2)).sum())
        raise FileFormatError(f'{path}: {bad} of the {len(ws)} W vectors hold NaN or infinite values')
    return ws
