"""Filtered leaky ReLU: bias, FIR upsampling, leaky ReLU with gain and clamp, FIR downsampling.

The nonlinearity of every StyleGAN3 synthesis layer. Running the leaky ReLU at a higher sampling
rate, between a low-pass upsampler and a low-pass downsampler, keeps the aliasing it creates out
of the output band.

This module is the reference path, written with `upfirdn2d` and `bias_act`. It is differentiable
(to any order the two ops support) and runs on any device; NVlabs' fused CUDA kernel computes the
same function, so `impl` is accepted for call compatibility and otherwise ignored.
"""

import numpy as np
import torch

from . import bias_act, upfirdn2d

_SQRT2 = np.sqrt(2)  # Default gain of the leaky ReLU, as in bias_act's 'lrelu'.

# ----------------------------------------------------------------------------

def _parse_padding(padding):
    """Return padding as four ints [x0, x1, y0, y1] (before/after, x then y)."""
    if isinstance(padding, (int, np.integer)):
        return [int(padding)] * 4
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        return [px, px, py, py]
    if len(padding) == 4:
        return padding
    raise ValueError(f'padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding!r}')


def _filter_size(f):
    """Return (width, height) of a FIR filter; None is the 1-tap identity."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    if f.ndim == 2:
        return f.shape[-1], f.shape[0]
    raise ValueError(f'filter must be None, 1-D or 2-D, got shape {tuple(f.shape)}')


def _as_filter(f, x):
    # upfirdn2d needs a tensor; a 1x1 ones filter is the identity, and its gain rule
    # (gain ** (ndim / 2) with ndim = 2) applies the full gain in one pass, like a 1-D filter's two.
    if f is None:
        return torch.ones([1, 1], dtype=torch.float32, device=x.device)
    return f

# ----------------------------------------------------------------------------

def filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=_SQRT2, slope=0.2, clamp=None,
                   flip_filter=False, impl='cuda'):
    """Bias, upsample, leaky ReLU, downsample, for a batch of images.

    Computes, in order:

    1. ``x + b``, with ``b`` broadcast along the channel dimension;
    2. ``upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)``;
    3. leaky ReLU with negative slope ``slope``, times ``gain``, clamped to ``[-clamp, clamp]``;
    4. ``upfirdn2d(x, fd, down=down)`` (no padding).

    The clamp acts on the upsampled signal; the output itself is not clamped again.

    Parameters
    ----------
    x : torch.Tensor of shape (N, C, H, W)
        Input images, float32 or float16.
    fu, fd : torch.Tensor or None, default=None
        Upsampling and downsampling FIR filters: 1-D (separable, applied along x then y),
        2-D ``[fh, fw]``, or None for the identity. Float32 as made by ``upfirdn2d.setup_filter``.
    b : torch.Tensor of shape (C,) or None, default=None
        Bias added before the upsampling.
    up, down : int, default=1
        Integer upsampling and downsampling factors.
    padding : int or list of int, default=0
        Padding of the upsampled image, as an int, ``[px, py]`` or ``[x0, x1, y0, y1]``.
        Negative values crop.
    gain : float, default=sqrt(2)
        Factor applied after the leaky ReLU.
    slope : float, default=0.2
        Negative slope of the leaky ReLU; 1 makes it the identity.
    clamp : float or None, default=None
        Clamp the activations to ``[-clamp, clamp]`` after the gain; None disables it.
    flip_filter : bool, default=False
        False applies the filters as true convolutions, True as correlations.
    impl : str, default='cuda'
        Accepted for compatibility with NVlabs' API; only the reference path exists here.

    Returns
    -------
    y : torch.Tensor of shape (N, C, H_out, W_out)
        Same dtype as ``x``, with
        ``W_out = (W * up + x0 + x1 - (fu_w - 1) - (fd_w - 1) + (down - 1)) // down``
        and ``H_out`` likewise.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError('x must be a 4-D tensor [N, C, H, W]')
    if int(up) != up or up < 1 or int(down) != down or down < 1:
        raise ValueError(f'up and down must be integers >= 1, got up={up!r}, down={down!r}')
    if clamp is not None and clamp < 0:
        raise ValueError(f'clamp must be None or >= 0, got {clamp!r}')
    up, down = int(up), int(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fu_w, fu_h = _filter_size(fu)
    fd_w, fd_h = _filter_size(fd)
    _, _, in_h, in_w = x.shape

    if b is not None:
        x = bias_act.bias_act(x, b, dim=1, act='linear')
    x = upfirdn2d.upfirdn2d(x, _as_filter(fu, x), up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                            flip_filter=flip_filter)
    x = bias_act.bias_act(x, act='lrelu', alpha=slope, gain=gain, clamp=clamp)
    x = upfirdn2d.upfirdn2d(x, _as_filter(fd, x), down=down, flip_filter=flip_filter)

    out_w = (in_w * up + px0 + px1 - (fu_w - 1) - (fd_w - 1) + (down - 1)) // down
    out_h = (in_h * up + py0 + py1 - (fu_h - 1) - (fd_h - 1) + (down - 1)) // down
    assert x.shape[2:] == (out_h, out_w), f'filtered_lrelu: got {tuple(x.shape[2:])}, expected {(out_h, out_w)}'
    return x

# ----------------------------------------------------------------------------
