"""Tests for torch_utils.ops.filtered_lrelu against a float64 composition of its documented steps.

The reference is written from docs/nvlabs-compat.md section 1 in numpy, step by step: add the bias;
zero-insert by `up`, pad/crop, true-convolve with fu, times up**2; leaky ReLU, times gain, clamp;
true-convolve with fd, keep every `down`-th pixel. It shares no code with the op under test.
"""

import numpy as np
import pytest
import torch

from torch_utils.ops import filtered_lrelu

SQRT2 = np.sqrt(2)

# Filters are float32; the op folds each pass's gain into the float32 filter before casting to the
# input dtype, so float64 runs carry ~1e-7 relative rounding.
TOL = 1e-6



# ----------------------------------------------------------------------------
# Float64 reference.

def _np(t):
    return t.detach().cpu().double().numpy()


def _pad4(padding):
    if isinstance(padding, int):
        return [padding] * 4
    if len(padding) == 2:
        return [padding[0], padding[0], padding[1], padding[1]]
    return list(padding)


def _fsize(f):
    """(width, height); None is the 1-tap identity."""
    if f is None:
        return 1, 1
    return (f.shape[0], f.shape[0]) if f.ndim == 1 else (f.shape[1], f.shape[0])


def _ref_upfirdn(x, f, up=1, down=1, padding=(0, 0, 0, 0), flip_filter=False, gain=1):
    n, c, h, w = x.shape
    y = np.zeros((n, c, h * up, w * up))
    y[:, :, ::up, ::up] = x                                       # zero insertion
    x0, x1, y0, y1 = padding
    y = np.pad(y, ((0, 0), (0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
    y = y[:, :, max(-y0, 0): y.shape[2] - max(-y1, 0), max(-x0, 0): y.shape[3] - max(-x1, 0)]  # crop
    k = np.ones((1, 1)) if f is None else _np(f)
    if k.ndim == 1:
        k = np.outer(k, k)                                        # separable x then y == outer product
    if not flip_filter:
        k = k[::-1, ::-1]                                         # true convolution
    kh, kw = k.shape
    ho, wo = y.shape[2] - kh + 1, y.shape[3] - kw + 1
    out = np.zeros((n, c, ho, wo))
    for a in range(kh):
        for b in range(kw):
            out += k[a, b] * y[:, :, a: a + ho, b: b + wo]
    return (out * gain)[:, :, ::down, ::down]


def ref_filtered_lrelu(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=SQRT2, slope=0.2, clamp=None,
                       flip_filter=False):
    y = _np(x)
    if b is not None:
        y = y + _np(b)[None, :, None, None]
    y = _ref_upfirdn(y, fu, up=up, padding=_pad4(padding), flip_filter=flip_filter, gain=up ** 2)
    y = np.where(y >= 0, y, slope * y) * gain
    if clamp is not None:
        y = np.clip(y, -clamp, clamp)
    return _ref_upfirdn(y, fd, down=down, flip_filter=flip_filter)


def ref_output_size(in_w, in_h, fu, fd, up, down, padding):
    x0, x1, y0, y1 = _pad4(padding)
    fu_w, fu_h = _fsize(fu)
    fd_w, fd_h = _fsize(fd)
    out_w = (in_w * up + x0 + x1 - (fu_w - 1) - (fd_w - 1) + (down - 1)) // down
    out_h = (in_h * up + y0 + y1 - (fu_h - 1) - (fd_h - 1) + (down - 1)) // down
    return out_h, out_w


def sg3_padding(in_size, out_size, k, up, down, up_taps, down_taps):
    """A SynthesisLayer's stored padding (stylegan-architecture.md C.5), per axis from (w, h) sizes."""
    pads = []
    for i, o in zip(in_size, out_size):
        total = (o - 1) * down + 1 - (i + k - 1) * up + up_taps + down_taps - 2
        lo = (total + up) // 2
        pads += [lo, total - lo]
    return pads

# ----------------------------------------------------------------------------
# Helpers.

def _randn(*shape, seed=0, scale=1.0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(requires_grad)


def _lowpass(taps, seed):
    """A float32 positive asymmetric 1-D filter summing to 1 (asymmetry makes flips visible)."""
    g = torch.Generator().manual_seed(100 + seed)
    f = torch.hann_window(taps + 2, periodic=False, dtype=torch.float64)[1:-1]
    f = f * (1 + 0.3 * torch.rand(taps, generator=g, dtype=torch.float64))
    return (f / f.sum()).float()


def _radial(n, seed):
    """A float32 asymmetric 2-D filter summing to 1 (stands in for SG3-R's radial filters)."""
    f = _lowpass(n, seed).double()
    f = torch.outer(f, _lowpass(n, seed + 1).double()) + 0.01 * torch.rand(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (f / f.sum()).float()


def _close(actual, expected, tol=TOL):
    actual = _np(actual)
    assert actual.shape == expected.shape, f'shape {actual.shape} != {expected.shape}'
    err = np.max(np.abs(actual - expected))
    scale = max(1.0, np.max(np.abs(expected)))
    assert err <= tol * scale, f'max abs error {err:.3g} (scale {scale:.3g})'

# ----------------------------------------------------------------------------
# Cases: (input h, w), op kwargs. Sizes are small but the configurations are SG3's.

CASES = {
    # ToRGB: no filters, slope 1, gain 1, clamp 256.
    'torgb': ((5, 6), dict(gain=1, slope=1, clamp=256)),
    'torgb_clamped': ((5, 6), dict(gain=1, slope=1, clamp=0.5)),
    # Typical layer: 1-D Kaiser-like filters, up 2 / down 2, padding from the SG3 formula.
    'sep_up2_down2': ((8, 8), dict(fu=_lowpass(12, 1), fd=_lowpass(12, 2), up=2, down=2,
                                   padding=sg3_padding((6, 6), (6, 6), 3, 2, 2, 12, 12), clamp=256)),
    # Channel-count-change layer of the tiny fixture (L5): up 4, 24-tap up filter.
    'sep_up4_down2': ((6, 7), dict(fu=_lowpass(24, 3), fd=_lowpass(12, 4), up=4, down=2,
                                   padding=sg3_padding((5, 4), (6, 5), 3, 4, 2, 24, 12), clamp=0.4)),
    'sep_up2_only': ((5, 4), dict(fu=_lowpass(8, 5), up=2, padding=[4, 3, 3, 4])),
    'sep_down2_only': ((9, 8), dict(fd=_lowpass(6, 6), down=2, padding=[2, 3])),
    # Negative padding (cropping), as in critically sampled layers.
    'crop_down2': ((12, 10), dict(fd=_lowpass(4, 7), down=2, padding=sg3_padding((8, 10), (3, 4), 3, 1, 2, 1, 4))),
    'crop_up2': ((7, 6), dict(fu=_lowpass(6, 8), fd=_lowpass(6, 9), up=2, down=2, padding=[-1, 0, 2, -2])),
    # SG3-R: 2-D (radial) filters, non-square input, flip_filter, explicit slope/gain.
    'radial_up2_down2': ((6, 7), dict(fu=_radial(6, 10), fd=_radial(6, 12), up=2, down=2, padding=4,
                                      slope=0.1, gain=1.5, clamp=1.0, flip_filter=True)),
    'radial_down_only': ((7, 6), dict(fd=_radial(4, 14), down=2, padding=[1, 2, 2, 1])),
    'mixed_1d_2d': ((5, 5), dict(fu=_lowpass(8, 15), fd=_radial(4, 16), up=2, down=2, padding=[5, 4])),
    'no_bias': ((5, 6), dict(fu=_lowpass(4, 17), up=2, padding=2, clamp=0.8), False),
}


def _case(name, requires_grad=False, batch=2, channels=3):
    (h, w), kwargs, *rest = CASES[name]
    use_bias = rest[0] if rest else True
    x = _randn(batch, channels, h, w, seed=1, scale=1.5, requires_grad=requires_grad)
    b = _randn(channels, seed=2, requires_grad=requires_grad) if use_bias else None
    return x, b, kwargs

# ----------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(CASES))
def test_matches_reference(name):
    x, b, kwargs = _case(name)
    y = filtered_lrelu.filtered_lrelu(x, b=b, **kwargs)
    expected = ref_filtered_lrelu(x, b=b, **kwargs)
    assert y.dtype == x.dtype
    _close(y, expected)


@pytest.mark.parametrize('name', list(CASES))
def test_output_size_formula(name):
    x, b, kwargs = _case(name)
    y = filtered_lrelu.filtered_lrelu(x, b=b, **kwargs)
    expected = ref_output_size(x.shape[3], x.shape[2], kwargs.get('fu'), kwargs.get('fd'), kwargs.get('up', 1),
                               kwargs.get('down', 1), kwargs.get('padding', 0))
    assert tuple(y.shape) == (x.shape[0], x.shape[1]) + expected


def test_sg3_padding_gives_out_size():
    # With the stored SG3 padding the op maps a conv output of in_size + k - 1 to exactly out_size.
    x = _randn(1, 2, 13, 11, seed=3)  # conv output of a (9, 11) -> (w, h) layer, k = 3
    fu, fd = _lowpass(12, 20), _lowpass(12, 21)
    padding = sg3_padding((9, 11), (7, 10), 3, 2, 2, 12, 12)
    y = filtered_lrelu.filtered_lrelu(x, fu, fd, up=2, down=2, padding=padding)
    assert y.shape[2:] == (10, 7)


def test_torgb_is_bias_then_clamp():
    x, b, kwargs = _case('torgb_clamped')
    y = filtered_lrelu.filtered_lrelu(x, b=b, **kwargs)
    _close(y, np.clip(_np(x) + _np(b)[None, :, None, None], -0.5, 0.5), tol=1e-12)


def test_clamp_acts_before_downsampling():
    # The clamp bounds the upsampled activations; a normalised positive fd then keeps |y| <= clamp.
    x, b, kwargs = _case('sep_up4_down2')
    y = filtered_lrelu.filtered_lrelu(x, b=b, **kwargs)
    unclamped = ref_filtered_lrelu(x, b=b, **dict(kwargs, clamp=None))
    assert np.abs(unclamped).max() > 2 * kwargs['clamp']  # The case does clamp.
    assert y.abs().max().item() <= kwargs['clamp'] * (1 + 1e-6)


@pytest.mark.parametrize('padding', [3, [3, 2], [3, 3, 2, 2]])
def test_padding_forms_agree(padding):
    x, b, _ = _case('sep_up2_only')
    fu = _lowpass(8, 5)
    y = filtered_lrelu.filtered_lrelu(x, fu, b=b, up=2, padding=padding)
    _close(y, ref_filtered_lrelu(x, fu, b=b, up=2, padding=padding))


@pytest.mark.parametrize('name', ['torgb_clamped', 'sep_up2_down2', 'crop_down2', 'radial_up2_down2', 'mixed_1d_2d',
                                  'no_bias'])
def test_gradients(name):
    x, b, kwargs = _case(name, requires_grad=True, batch=1, channels=2)
    if b is None:
        assert torch.autograd.gradcheck(lambda x: filtered_lrelu.filtered_lrelu(x, **kwargs), (x,))
    else:
        assert torch.autograd.gradcheck(lambda x, b: filtered_lrelu.filtered_lrelu(x, b=b, **kwargs), (x, b))


def test_float32_and_float16():
    x, b, kwargs = _case('sep_up2_down2')
    expected = ref_filtered_lrelu(x, b=b, **kwargs)
    y32 = filtered_lrelu.filtered_lrelu(x.float(), b=b.float(), **kwargs)
    assert y32.dtype == torch.float32
    _close(y32, expected, tol=1e-5)
    # SG3 uses float16 only on CUDA, but the op itself must accept it on any device.
    y16 = filtered_lrelu.filtered_lrelu(x.half(), b=b.half(), **kwargs)
    assert y16.dtype == torch.float16
    _close(y16, expected, tol=1e-2)


@pytest.mark.parametrize('impl', ['cuda', 'ref'])
def test_impl_accepted(impl):
    x, b, kwargs = _case('sep_up2_down2')
    y = filtered_lrelu.filtered_lrelu(x, b=b, impl=impl, **kwargs)
    _close(y, ref_filtered_lrelu(x, b=b, **kwargs))


def test_defaults_are_sg3_layer_defaults():
    # gain sqrt(2), slope 0.2, no clamp, identity filters, no resampling.
    x = _randn(2, 3, 4, 5, seed=4)
    _close(filtered_lrelu.filtered_lrelu(x), np.where(_np(x) >= 0, _np(x), 0.2 * _np(x)) * SQRT2, tol=1e-12)


def test_bad_padding_rejected():
    x = _randn(1, 1, 4, 4, seed=5)
    with pytest.raises(ValueError):
        filtered_lrelu.filtered_lrelu(x, padding=[1, 2, 3])

# ----------------------------------------------------------------------------
