"""Upsample, pad, FIR-filter and downsample 2-D images, in one differentiable op (pure PyTorch).

Semantics (per channel): zero-insertion upsampling by ``up``; padding relative to the upsampled
image (negative values crop); a "valid" true convolution with the FIR filter (flipped unless
``flip_filter``) scaled by ``gain**(filter.ndim/2)``; keeping every ``down``-th pixel. A 1-D filter
is separable: applied along x, then along y.
"""

import numpy as np
import torch
import torch.nn.functional as F

from . import conv2d_gradfix


def _parse_scaling(scaling):
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    assert isinstance(scaling, (list, tuple)) and len(scaling) == 2
    sx, sy = scaling
    assert sx >= 1 and sy >= 1
    return int(sx), int(sy)


def _parse_padding(padding):
    if isinstance(padding, int):
        padding = [padding, padding]
    assert isinstance(padding, (list, tuple)) and len(padding) in (2, 4)
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    return [int(p) for p in padding]


def _get_filter_size(f):
    if f is None:
        return 1, 1
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2)
    fw = f.shape[-1]
    fh = f.shape[0]
    return int(fw), int(fh)


def setup_filter(f, device=torch.device('cpu'), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn a filter spec into a float32 tensor for :func:`upfirdn2d`.

    ``None`` becomes the 1-tap identity. A 1-D filter shorter than 8 taps becomes its outer product
    (2-D); longer ones stay 1-D (separable) unless ``separable`` says otherwise. The filter is then
    normalised to sum 1, optionally flipped and multiplied by ``gain**(ndim/2)``.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32, device=torch.device('cpu'))
    assert f.ndim in (0, 1, 2) and f.numel() > 0
    if f.ndim == 0:
        f = f[np.newaxis]
    if separable is None:
        separable = (f.ndim == 1 and f.numel() >= 8)
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    assert f.ndim == (1 if separable else 2)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Upsample, pad, filter and downsample a batch of images ``x`` [N, C, H, W] (see module docstring).

    ``padding`` is an int, ``[x, y]`` or ``[x0, x1, y0, y1]``; ``up``/``down`` an int or ``[x, y]``.
    ``impl`` is accepted for NVlabs compatibility and ignored.
    """
    assert isinstance(x, torch.Tensor) and x.ndim == 4
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert isinstance(f, torch.Tensor) and f.ndim in (1, 2)
    assert f.is_floating_point() and not f.requires_grad
    batch_size, num_channels, in_height, in_width = x.shape
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)

    # Zero-insertion upsampling.
    x = x.reshape([batch_size, num_channels, in_height, 1, in_width, 1])
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape([batch_size, num_channels, in_height * upy, in_width * upx])

    # Pad, then crop where the padding is negative.
    x = F.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[:, :, max(-pady0, 0): x.shape[2] - max(-pady1, 0), max(-padx0, 0): x.shape[3] - max(-padx1, 0)]

    # True convolution with the filter = correlation with the flipped filter.
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f[np.newaxis, np.newaxis].repeat([num_channels, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = conv2d_gradfix.conv2d(input=x, weight=f, groups=num_channels)
    else:
        x = conv2d_gradfix.conv2d(input=x, weight=f.unsqueeze(2), groups=num_channels)
        x = conv2d_gradfix.conv2d(input=x, weight=f.unsqueeze(3), groups=num_channels)

    # Decimate.
    return x[:, :, ::downy, ::downx]


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Filter ``x`` with ``f``, keeping its size ("same" padding)."""
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Upsample ``x`` by ``up`` with the interpolation filter ``f`` (output size ``in * up``)."""
    upx, upy = _parse_scaling(up)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2,
         pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Downsample ``x`` by ``down`` after filtering with the anti-aliasing filter ``f``."""
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2,
         pady0 + (fh - downy + 1) // 2, pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


# ----------------------------------------------------------------------------
# Inference fast paths (sampling.synthesis on the CPU). The same mathematics as upfirdn2d, evaluated as one
# convolution that keeps the input's memory format (channels_last runs several times faster on the CPU) and
# needs no padded copy; float32 rounding may differ from upfirdn2d. NVlabs' networks do not use them.

def _filter_2d(f, gain, dtype, device):
    """``f`` as a 2-D filter times ``gain``: a 1-D (separable) filter becomes its outer product, which upfirdn2d
    applies as two 1-D passes of ``f * gain ** 0.5``."""
    f = torch.outer(f, f) if f.ndim == 1 else f
    return (f * gain).to(device=device, dtype=dtype)


def filter2d_padded_fast(x, f, padding, gain=1, flip_filter=False, bias=None):
    """``upfirdn2d(x, f, padding=padding, gain=gain, flip_filter=flip_filter)`` (no resampling) plus an optional
    per-channel ``bias`` [C], added by the same depthwise convolution."""
    num_channels = x.shape[1]
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    f = _filter_2d(f, gain, x.dtype, x.device)
    if not flip_filter:
        f = f.flip([0, 1])
    weight = f[np.newaxis, np.newaxis].expand(num_channels, 1, *f.shape)
    weight = weight.contiguous(memory_format=torch.channels_last if x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format)
    if padx0 == padx1 and pady0 == pady1 and padx0 >= 0 and pady0 >= 0:
        return F.conv2d(x, weight, bias, padding=[pady0, padx0], groups=num_channels)
    x = F.pad(x, [padx0, padx1, pady0, pady1])  # Negative padding crops.
    return F.conv2d(x, weight, bias, groups=num_channels)


def upsample2d_fast(x, f, up=2):
    """``upsample2d(x, f, up)`` as one depthwise transposed convolution with stride ``up``: zero insertion
    followed by the filter is what a transposed convolution computes."""
    upx, upy = _parse_scaling(up)
    batch_size, num_channels, in_height, in_width = x.shape
    f = _filter_2d(f, upx * upy, x.dtype, x.device)
    fh, fw = f.shape
    # upsample2d pads the zero-inserted image by (f + up - 1) // 2 in front; a transposed convolution with
    # padding p starts f - 1 - p taps in front of the first input pixel.
    px, py = fw - 1 - (fw + upx - 1) // 2, fh - 1 - (fh + upy - 1) // 2
    # Every channel of every image as an image of one channel: one filter, no grouped convolution (which the
    # CPU runs several times slower).
    x = x.reshape(batch_size * num_channels, 1, in_height, in_width)
    x = F.conv_transpose2d(x, f[np.newaxis, np.newaxis], stride=[upy, upx], padding=[max(py, 0), max(px, 0)])
    x = x.reshape(batch_size, num_channels, *x.shape[2:])
    # A negative p is zeros in front; then crop (or pad) to the upsampled size.
    left, top = max(-px, 0), max(-py, 0)
    right, bottom = in_width * upx - x.shape[3] - left, in_height * upy - x.shape[2] - top
    if left or top or right or bottom:
        x = F.pad(x, [left, right, top, bottom])
    return x
