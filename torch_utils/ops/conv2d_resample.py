"""2-D convolution with optional FIR-filtered up/downsampling, evaluated along the cheapest exact path."""

import torch.nn.functional as F

from . import conv2d_gradfix
from .upfirdn2d import _get_filter_size, _parse_padding, filter2d_padded_fast, upfirdn2d


def _conv2d_wrapper(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    """conv2d or conv_transpose2d; ``flip_weight=False`` turns the correlation into a true convolution."""
    if not flip_weight:
        w = w.flip([2, 3])
    op = conv2d_gradfix.conv_transpose2d if transpose else conv2d_gradfix.conv2d
    return op(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """Convolve ``x`` [N, I, H, W] with ``w`` [O, I/groups, kh, kw], resampling with the FIR filter ``f``.

    Semantically: zero-upsample by ``up``; pad by ``padding`` plus the filter's own padding; filter
    with gain ``up**2`` (only when ``up > 1``); convolve with ``w`` (``flip_weight=True`` is
    correlation as in ``F.conv2d``, False a true convolution); if ``down > 1`` filter with ``f`` and
    keep every ``down``-th pixel. The special cases below are mathematically the same computation.
    """
    assert x.ndim == 4 and w.ndim == 4 and w.dtype == x.dtype
    assert f is None or (f.ndim in (1, 2) and f.is_floating_point())
    assert isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1
    assert isinstance(groups, int) and groups >= 1
    out_channels, in_channels_per_group, kh, kw = w.shape
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    # The resampling filter needs padding of its own to keep the output aligned.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 kernel + downsampling: filter and decimate first, then the (cheaper) convolution.
    if kw == 1 and kh == 1 and (down > 1 and up == 1):
        x = upfirdn2d(x=x, f=f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d_wrapper(x=x, w=w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel + upsampling: convolve at low resolution, then upsample.
    if kw == 1 and kh == 1 and (up > 1 and down == 1):
        x = _conv2d_wrapper(x=x, w=w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x=x, f=f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)

    # Downsampling only: filter, then a strided convolution.
    if down > 1 and up == 1:
        x = upfirdn2d(x=x, f=f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d_wrapper(x=x, w=w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling: a strided transposed convolution, then the filter.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_channels_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_channels_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv2d_wrapper(x=x, w=w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                            flip_weight=(not flip_weight))
        x = upfirdn2d(x=x, f=f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                      flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x=x, f=f, down=down, flip_filter=flip_filter)
        return x

    # No resampling and symmetric, non-negative padding: a plain convolution.
    if up == 1 and down == 1:
        if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
            return _conv2d_wrapper(x=x, w=w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # General case.
    x = upfirdn2d(x=x, f=(f if up > 1 else None), up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                  flip_filter=flip_filter)
    x = _conv2d_wrapper(x=x, w=w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x=x, f=f, down=down, flip_filter=flip_filter)
    return x


def conv2d_upsample_fast(x, w, f, up=2, padding=0, flip_weight=False, bias=None):
    """``conv2d_resample(x, w, f, up=up, padding=padding, flip_weight=flip_weight)`` plus a per-channel ``bias``,
    for inference (groups=1, no downsampling, a kernel larger than 1x1).

    The same strided transposed convolution and filter as conv2d_resample, but both keep x's memory format
    (channels_last is several times faster on the CPU), the filter's padding happens inside its convolution
    rather than in a padded copy, and the bias is added by the filter's convolution. Float32 rounding may
    differ from conv2d_resample's; NVlabs' networks do not use this.
    """
    assert x.ndim == 4 and w.ndim == 4 and w.dtype == x.dtype and isinstance(up, int) and up > 1
    out_channels, in_channels, kh, kw = w.shape
    assert kh > 1 or kw > 1
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)
    px0 += (fw + up - 1) // 2 - (kw - 1)
    px1 += (fw - up) // 2 - (kw - up)
    py0 += (fh + up - 1) // 2 - (kh - 1)
    py1 += (fh - up) // 2 - (kh - up)
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    w = w.transpose(0, 1)
    if flip_weight:  # conv2d_resample flips for a transposed convolution exactly when the caller did not.
        w = w.flip([2, 3])
    x = F.conv_transpose2d(x, w, stride=up, padding=[pyt, pxt])
    return filter2d_padded_fast(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                                bias=bias)
