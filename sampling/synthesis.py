"""Batched image synthesis from latents, independent of the command line.

The generator face
------------------
Every network this toolkit samples has ``z_dim``, ``c_dim``, ``img_resolution``, ``img_channels`` and
``G(z, c, truncation_psi=1, truncation_cutoff=None, noise_mode='const') -> [B, C, H, W]`` in about [-1, 1].
StyleGAN2/3 also split into ``G.mapping(z, c, truncation_psi, truncation_cutoff) -> ws [B, num_ws, w_dim]``
and ``G.synthesis(ws, noise_mode)``; networks without that split (ProGAN, BigGAN, NVAE) are sampled through
``G(...)`` alone, and what needs W (hub scores in W, the 'style' volume space, ``--projected-w``) says so.
"""

import concurrent.futures
import contextlib
import weakref

import numpy as np
import torch

from torch_utils.ops.bias_act import activation_funcs
from torch_utils.ops.conv2d_resample import conv2d_upsample_fast
from torch_utils.ops.upfirdn2d import upsample2d_fast


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


# Blocks whose activations per sample reach this size run one sample at a time, all of them in turn for one
# sample (depth first), so that a sample's activations stay in the cache; smaller blocks run as one batch.
_CPU_BLOCK_BYTES = 4 << 20

# NVlabs' blocks (networks the fast path does not cover) run in sub-batches of activations up to this size.
_CPU_SUB_BATCH_BYTES = 16 << 20

# Activations whose gain can move into the convolution's weights: act(g * x) = g * act(x) for g > 0.
_HOMOGENEOUS = {'linear', 'relu', 'lrelu'}


def uses_cpu_blocks(G, device, batch_size, exact_nvlabs=False):
    """Whether :func:`synthesize` runs this batch through :func:`_cpu_synthesis` rather than NVlabs' forward pass.

    NVlabs' StyleGAN2 picks the fused modulated convolution (one grouped convolution with per-sample weights)
    from the training mode and dtype. On the CPU our own evaluation of the same blocks runs faster (see
    :func:`_cpu_synthesis`): same mathematics, different float32 rounding (uint8 images within 1).
    ``exact_nvlabs`` keeps NVlabs' choice, for bit-level comparisons. StyleGAN3 networks have no such path.
    """
    return not exact_nvlabs and torch.device(device).type == 'cpu' and batch_size > 1 and is_stylegan2(G)


def is_stylegan2(G):
    """Whether ``G`` (ours or NVlabs' code) is a StyleGAN2-family generator built of synthesis blocks."""
    return hasattr(G, 'mapping') and hasattr(getattr(G, 'synthesis', None), 'block_resolutions')


def _cpu_synthesis(synthesis, ws, noise_mode='const'):
    """StyleGAN2 synthesis on the CPU: NVlabs' blocks, evaluated along a faster path of the same mathematics.

    * Activations in channels_last, the memory format in which the CPU's convolutions run fastest.
    * Styles and demodulation coefficients of every layer computed once for the whole batch.
    * Small blocks run as one batch with the activations scaled around one shared convolution (unfused);
      blocks of at least ``_CPU_BLOCK_BYTES`` per sample run one sample at a time through all of them (depth
      first, the sample's activations stay in the cache), its styles and demodulation folded into the weights.
    * T torch threads run T slices of the batch, then T samples, at once, each single-threaded
      (:func:`_single_threaded_workers`).
    * The upsampling convolution is a transposed convolution then a depthwise FIR convolution, both padding
      inside the convolution (no padded copies); the bias rides on the FIR convolution or the convolution, the
      activation gain on the weights; noise, activation and clamp run in place.
    * ToRGB (1x1) is a matrix product per sample (a 1x1 convolution for one sample); the image skip
      upsampling one transposed convolution over batch x channels.

    Networks this does not cover (float16 blocks, the 'resnet' architecture, other kernels) run block by block
    as NVlabs' forward pass, in cache-sized sub-batches (:func:`_cpu_block_synthesis`).
    """
    blocks = [getattr(synthesis, f'b{res}') for res in synthesis.block_resolutions]
    if not all(_fast_block(block) for block in blocks):
        return _cpu_block_synthesis(synthesis, ws, noise_mode=noise_mode)
    ws = ws.to(torch.float32)
    num = len(ws)
    params = []
    w_idx = 0
    for block in blocks:
        block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb).unbind(1)
        w_idx += block.num_conv
        layers = [block.conv0] if block.in_channels != 0 else []
        layers.append(block.conv1)
        p = dict(convs=[_conv_params(layer, w, noise_mode) for layer, w in zip(layers, block_ws)])
        if block.is_last or block.architecture == 'skip':
            p['torgb'] = _torgb_params(block.torgb, block_ws[len(layers)])
        params.append(p)

    images = torch.empty([num, blocks[-1].img_channels, blocks[-1].resolution, blocks[-1].resolution],
                         dtype=torch.float32, device=ws.device)
    split = next((index for index, block in enumerate(blocks)
                  if 4 * block.conv1.weight.shape[0] * block.resolution ** 2 >= _CPU_BLOCK_BYTES), len(blocks))

    def run_batch(samples):
        """The small blocks on a contiguous slice of the batch, as one batch: their activations and image."""
        x = img = None
        for block, p in zip(blocks[:split], params[:split]):
            x, rgb = _fast_block_forward(block, p, x, samples)
            img = _add_rgb(block, p, img, rgb)
        return [(i, None if x is None else x[k:k + 1], None if img is None else img[k:k + 1])
                for k, i in enumerate(range(samples.start, samples.stop))]

    def run_sample(item):
        """The large blocks on one sample, depth first; its image into ``images``."""
        i, x, img = item
        for block, p in zip(blocks[split:], params[split:]):
            x, rgb = _fast_block_forward(block, p, x, slice(i, i + 1))
            img = _add_rgb(block, p, img, rgb)
        images[i:i + 1] = img

    workers = min(torch.get_num_threads(), num)
    with _single_threaded_workers(workers) as map_:
        bounds = [num * k // workers for k in range(workers + 1)]
        samples = [item for part in map_(run_batch, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])])
                   for item in part]
        list(map_(run_sample, samples))
    return images


@contextlib.contextmanager
def _single_threaded_workers(workers):
    """A ``map`` that runs its calls on ``workers`` threads at once, each single-threaded in torch (the builtin
    map for one worker). Single-threaded operations need no synchronisation between threads, which costs more
    than it saves on per-sample operations, and much more when other processes hold the cores."""
    if workers <= 1:
        yield map
        return
    threads = torch.get_num_threads()
    try:
        # set_num_threads sets OpenMP's count for the calling thread (and torch's count process-wide).
        with concurrent.futures.ThreadPoolExecutor(workers, initializer=torch.set_num_threads,
                                                   initargs=(1,)) as pool:
            yield pool.map
    finally:
        torch.set_num_threads(threads)


# What the fast path reads of a block's layers (ours and NVlabs' classes alike).
_LAYER_ATTRS = ('affine', 'weight', 'bias', 'up', 'padding', 'resolution', 'activation', 'act_gain', 'conv_clamp',
                'use_noise', 'resample_filter')


def _fast_block(block):
    """Whether :func:`_cpu_synthesis` covers this block: float32 on the CPU, 'orig' or 'skip', odd kernels,
    every attribute it reads."""
    if not all(hasattr(block, name) for name in ('use_fp16', 'architecture', 'in_channels', 'conv1', 'is_last',
                                                  'resample_filter', 'num_conv', 'num_torgb', 'img_channels')):
        return False
    float32 = not block.use_fp16 or hasattr(block, 'fused_modconv_default')  # StyleGAN3-repository code: fp32 on CPU.
    layers = ([getattr(block, 'conv0', None)] if block.in_channels != 0 else []) + [block.conv1]
    if not all(layer is not None and all(hasattr(layer, name) for name in _LAYER_ATTRS) for layer in layers):
        return False
    torgb = getattr(block, 'torgb', None)
    return (float32 and block.architecture in ('orig', 'skip')
            and all(layer.weight.shape[-1] % 2 == 1 and layer.activation in activation_funcs for layer in layers)
            and (torgb is None or (tuple(torgb.weight.shape[2:]) == (1, 1) and hasattr(torgb, 'weight_gain')))
            and (block.in_channels != 0 or hasattr(block, 'const')))


# Per layer: its weight laid out for the fast path and its squared norms, for as long as the weight is unchanged.
_WEIGHT_CACHE = weakref.WeakKeyDictionary()


def _layer_weight(layer):
    """``layer.weight`` as float32 channels_last (for the transposed convolution: its transpose(0, 1) view is),
    and the sum of its squares over the kernel [out, in]."""
    key = (layer.weight.data_ptr(), layer.weight._version, layer.weight.dtype, layer.weight.device)
    cached = _WEIGHT_CACHE.get(layer)
    if cached is None or cached[0] != key:
        weight = layer.weight.detach().to(torch.float32)
        square_norms = weight.square().sum(dim=[2, 3])
        if getattr(layer, 'up', 1) == 1:
            weight = weight.contiguous(memory_format=torch.channels_last)
        else:
            weight = weight.transpose(0, 1).contiguous(memory_format=torch.channels_last).transpose(0, 1)
        cached = _WEIGHT_CACHE[layer] = (key, weight, square_norms)
    return cached[1], cached[2]


def _conv_params(layer, w, noise_mode):
    """One SynthesisLayer's per-batch constants: styles, demodulation times the activation gain, bias, noise."""
    act_gain = float(layer.act_gain)
    pre_gain = act_gain if layer.activation in _HOMOGENEOUS else 1.0
    weight, square_norms = _layer_weight(layer)
    styles = layer.affine(w)
    # sum_{i,k} (weight_oik * s_i)^2 = sum_i s_i^2 * sum_k weight_oik^2 (NVlabs' demodulation, once per batch).
    dcoefs = (styles.square() @ square_norms.T + 1e-8).rsqrt()
    bias = layer.bias.to(torch.float32) * pre_gain
    noise = None
    if layer.use_noise and noise_mode == 'const':
        noise = layer.noise_const * (layer.noise_strength * pre_gain)
    if layer.use_noise and noise_mode == 'random':  # Drawn here, in sample order, whatever thread runs a sample.
        noise = torch.randn([len(w), 1, layer.resolution, layer.resolution], device=w.device)
        noise = noise * (layer.noise_strength * pre_gain)
    return dict(layer=layer, weight=weight, styles=styles, out_scale=dcoefs * pre_gain, bias=bias, noise=noise,
                random_noise=layer.use_noise and noise_mode == 'random', post_gain=act_gain / pre_gain)


def _torgb_params(torgb, w):
    styles = torgb.affine(w) * torgb.weight_gain
    weight = torgb.weight.to(torch.float32)
    return dict(weight=weight.contiguous(memory_format=torch.channels_last), styles=styles,
                bias=torgb.bias.to(torch.float32), clamp=torgb.conv_clamp)


def _fast_block_forward(block, p, x, samples):
    """The convolutions of one SynthesisBlock ('orig' or 'skip', float32) on ``samples`` of the batch (a slice):
    x and ToRGB's output before its bias (None without ToRGB)."""
    num = samples.stop - samples.start
    if block.in_channels == 0:
        x = block.const.to(torch.float32).unsqueeze(0).expand(num, -1, -1, -1)
        x = x.contiguous(memory_format=torch.channels_last)
    for conv in p['convs']:
        x = _modulated_layer(conv, x, samples)
    rgb = _torgb(p['torgb'], x, samples) if 'torgb' in p else None
    return x, rgb


def _add_rgb(block, p, img, rgb):
    """The block's image: the previous one upsampled plus ToRGB's output, biased and clamped."""
    if img is not None:
        img = upsample2d_fast(img, block.resample_filter)
    if rgb is None:
        return img
    rgb = rgb.add_(p['torgb']['bias'].reshape(1, -1, 1, 1))
    if p['torgb']['clamp'] is not None:
        rgb = rgb.clamp_(-p['torgb']['clamp'], p['torgb']['clamp'])
    return img.add_(rgb) if img is not None else rgb


def _modulated_layer(p, x, samples):
    """SynthesisLayer.forward for ``samples``: per-sample weights for one sample, else unfused."""
    layer = p['layer']
    num = samples.stop - samples.start
    styles, out_scale = p['styles'][samples], p['out_scale'][samples]
    if num == 1:
        weight = p['weight'] * torch.outer(out_scale[0], styles[0]).reshape(*p['weight'].shape[:2], 1, 1)
        bias = p['bias']
    else:
        weight = p['weight']
        bias = None
        x = x * styles.reshape(num, -1, 1, 1)
    if layer.up == 1:
        x = torch.nn.functional.conv2d(x, weight, bias, padding=layer.padding)
    else:
        x = conv2d_upsample_fast(x, weight, layer.resample_filter, up=layer.up, padding=layer.padding, bias=bias)
    noise = p['noise'][samples] if p['random_noise'] else p['noise']
    if num == 1:
        if noise is not None:
            x.add_(noise)
    else:
        # Bias and constant noise as one channels_last tensor (one broadcast NCHW operand would make the
        # channels_last pass strided and slow).
        shift = p['bias'].reshape(1, -1, 1, 1)
        if noise is not None and not p['random_noise']:
            shift = (shift + noise).contiguous(memory_format=torch.channels_last)
        x = x.mul_(out_scale.reshape(num, -1, 1, 1)).add_(shift)
        if p['random_noise']:
            x = x.add_(noise)
    spec = activation_funcs[layer.activation]
    if layer.activation == 'lrelu':
        torch.nn.functional.leaky_relu_(x, spec.def_alpha)
    elif layer.activation == 'relu':
        x.relu_()
    elif layer.activation != 'linear':
        x = spec.func(x, alpha=spec.def_alpha)
    if p['post_gain'] != 1:
        x = x.mul_(p['post_gain'])
    if layer.conv_clamp is not None:
        x.clamp_(-layer.conv_clamp, layer.conv_clamp)
    return x


def _torgb(p, x, samples):
    """ToRGBLayer's modulated 1x1 convolution (no demodulation, no bias): per-sample weights for one sample,
    else one matrix product per sample over the channels_last pixels."""
    num, channels, height, width = x.shape
    styles = p['styles'][samples]
    if num == 1:
        return torch.nn.functional.conv2d(x, p['weight'] * styles.reshape(1, -1, 1, 1)).contiguous()
    weights = p['weight'][:, :, 0, 0].T.unsqueeze(0) * styles.unsqueeze(2)  # [N, in, out]
    y = torch.bmm(x.permute(0, 2, 3, 1).reshape(num, height * width, channels), weights)
    return y.reshape(num, height, width, -1).permute(0, 3, 1, 2).contiguous()


def _cpu_block_synthesis(synthesis, ws, **block_kwargs):
    """NVlabs' blocks one after the other, each in sub-batches whose activations fit the cache.

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
        step = max(1, _CPU_SUB_BATCH_BYTES // sample_bytes)
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
    the CPU runs on a faster path of the same mathematics (:func:`uses_cpu_blocks`, :func:`_cpu_synthesis`);
    ``exact_nvlabs`` runs NVlabs' forward pass as it is.
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
