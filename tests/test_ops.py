"""Tests for torch_utils.ops: every op against a direct float64 reference of its documented semantics.

The references below are written from docs/nvlabs-compat.md section 1 only, as literally as
possible (explicit zero insertion, explicit padding and cropping, convolution as a sum of shifted
copies, explicit decimation), in numpy float64, so they share no code with the ops under test.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import bias_act, conv2d_gradfix, conv2d_resample, fma, grid_sample_gradfix, upfirdn2d

SQRT2 = np.sqrt(2)

# Filters are float32 by contract and their gain is folded in before the cast to x's dtype (as in
# NVlabs), so a float64 run of a filter op carries float32 rounding of gain * filter: ~1e-7 relative.
FILTER_TOL = 1e-6



# ----------------------------------------------------------------------------
# Float64 references.

def _np(t):
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float64)


def _pad4(padding):
    if isinstance(padding, int):
        return [padding] * 4
    if len(padding) == 2:
        return [padding[0], padding[0], padding[1], padding[1]]
    return list(padding)


def _fsize(f):
    """(width, height) of a filter; None is the 1-tap identity."""
    if f is None:
        return 1, 1
    f = _np(f)
    return (f.shape[0], f.shape[0]) if f.ndim == 1 else (f.shape[1], f.shape[0])


def ref_zero_insert(x, up):
    n, c, h, w = x.shape
    y = np.zeros((n, c, h * up, w * up))
    y[:, :, ::up, ::up] = x
    return y


def ref_pad(x, x0, x1, y0, y1):
    """Zero-pad; negative amounts crop."""
    y = np.pad(x, ((0, 0), (0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
    h, w = y.shape[2:]
    return y[:, :, max(-y0, 0): h - max(-y1, 0), max(-x0, 0): w - max(-x1, 0)]


def ref_correlate_valid(x, k):
    """'Valid' cross-correlation of every channel with the 2-D kernel k, as a sum of shifted copies."""
    kh, kw = k.shape
    ho, wo = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    y = np.zeros(x.shape[:2] + (ho, wo))
    for a in range(kh):
        for b in range(kw):
            y += k[a, b] * x[:, :, a: a + ho, b: b + wo]
    return y


def ref_fir(x, f, flip_filter=False, gain=1):
    """FIR filter as a true convolution (correlation if flip_filter); a 1-D filter acts along x and y."""
    f = np.ones((1, 1)) if f is None else _np(f)
    if f.ndim == 1:
        f = np.outer(f, f)  # Separable x-then-y passes equal one pass with the outer product.
    k = f if flip_filter else f[::-1, ::-1]
    return ref_correlate_valid(x, k) * gain


def ref_upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    y = ref_pad(ref_zero_insert(_np(x), up), *_pad4(padding))
    y = ref_fir(y, f, flip_filter=flip_filter, gain=gain)
    return y[:, :, ::down, ::down]


def ref_conv_valid(x, w, groups=1, flip_weight=True):
    """Grouped 'valid' convolution: correlation (F.conv2d) if flip_weight, else true convolution."""
    w = w if flip_weight else w[:, :, ::-1, ::-1]
    out_c, in_cg, kh, kw = w.shape
    out_cg = out_c // groups
    ho, wo = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    y = np.zeros((x.shape[0], out_c, ho, wo))
    for g in range(groups):
        xg = x[:, g * in_cg: (g + 1) * in_cg]
        wg = w[g * out_cg: (g + 1) * out_cg]
        for a in range(kh):
            for b in range(kw):
                y[:, g * out_cg: (g + 1) * out_cg] += np.einsum('nihw,oi->nohw', xg[:, :, a: a + ho, b: b + wo], wg[:, :, a, b])
    return y


def ref_conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    fw, fh = _fsize(f)
    x0, x1, y0, y1 = _pad4(padding)
    if up > 1:
        x0, x1, y0, y1 = x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2, y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2
    if down > 1:
        x0, x1, y0, y1 = x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2, y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2
    y = ref_pad(ref_zero_insert(_np(x), up), x0, x1, y0, y1)
    if up > 1:
        y = ref_fir(y, f, flip_filter=flip_filter, gain=up ** 2)
    y = ref_conv_valid(y, _np(w), groups=groups, flip_weight=flip_weight)
    if down > 1:
        y = ref_fir(y, f, flip_filter=flip_filter)[:, :, ::down, ::down]
    return y


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# name -> (activation(x, alpha), documented default gain)
REF_ACTS = {
    'linear':   (lambda x, a: x,                                          1),
    'relu':     (lambda x, a: np.maximum(x, 0),                           SQRT2),
    'lrelu':    (lambda x, a: np.where(x >= 0, x, a * x),                 SQRT2),
    'tanh':     (lambda x, a: np.tanh(x),                                 1),
    'sigmoid':  (lambda x, a: _sigmoid(x),                                1),
    'elu':      (lambda x, a: np.where(x >= 0, x, np.expm1(x)),           1),
    'selu':     (lambda x, a: SELU_SCALE * np.where(x >= 0, x, SELU_ALPHA * np.expm1(x)), 1),
    'softplus': (lambda x, a: np.log1p(np.exp(x)),                        1),
    'swish':    (lambda x, a: x * _sigmoid(x),                            SQRT2),
}


def ref_bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None):
    func, def_gain = REF_ACTS[act]
    x = _np(x)
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + _np(b).reshape(shape)
    y = func(x, 0.2 if alpha is None else alpha) * (def_gain if gain is None else gain)
    return y if clamp is None else np.clip(y, -clamp, clamp)

# ----------------------------------------------------------------------------
# Helpers.

def _randn(*shape, seed=0, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


def _rand_filter(*shape, seed=0):
    """An asymmetric positive float32 filter (makes flips and transposes visible)."""
    g = torch.Generator().manual_seed(1000 + seed)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) + 0.1).float()


def _close(actual, expected, tol=1e-10):
    """max |actual - expected| <= tol * max(1, max |expected|): relative to the signal's scale, so
    cancellation in small outputs does not need a looser tolerance."""
    actual = _np(actual)
    assert actual.shape == expected.shape, f'shape {actual.shape} != {expected.shape}'
    err = np.max(np.abs(actual - expected)) if actual.size else 0.0
    scale = max(1.0, np.max(np.abs(expected))) if expected.size else 1.0
    assert err <= tol * scale, f'max abs error {err:.3g} (scale {scale:.3g})'


F4 = upfirdn2d.setup_filter([1, 3, 3, 1])  # The networks' default resample_filter (4x4).

# ----------------------------------------------------------------------------
# setup_filter

def test_setup_filter_default_resample_filter():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert f.dtype == torch.float32 and f.shape == (4, 4)
    expected = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64
    _close(f, expected, tol=1e-7)


def test_setup_filter_none_is_one_tap():
    f = upfirdn2d.setup_filter(None)
    assert f.dtype == torch.float32 and f.shape == (1, 1) and f.item() == 1


@pytest.mark.parametrize('taps', [1, 2, 5, 7])
def test_setup_filter_short_1d_becomes_outer_product(taps):
    raw = np.arange(1, taps + 1, dtype=np.float64)
    f = upfirdn2d.setup_filter(raw)
    assert f.shape == (taps, taps)
    _close(f, np.outer(raw, raw) / raw.sum() ** 2, tol=1e-7)


@pytest.mark.parametrize('taps', [8, 12])
def test_setup_filter_long_1d_stays_separable(taps):
    raw = np.arange(1, taps + 1, dtype=np.float64)
    f = upfirdn2d.setup_filter(raw)
    assert f.shape == (taps,)
    _close(f, raw / raw.sum(), tol=1e-7)


def test_setup_filter_explicit_separable_flag():
    assert upfirdn2d.setup_filter([1, 2, 1], separable=True).shape == (3,)
    assert upfirdn2d.setup_filter(np.ones(10), separable=False).shape == (10, 10)


def test_setup_filter_flip_gain_normalize():
    raw = np.array([1.0, 2.0, 4.0])
    f = upfirdn2d.setup_filter(raw, flip_filter=True, gain=3)
    _close(f, np.outer(raw, raw)[::-1, ::-1] / 49 * 3, tol=1e-6)  # gain ** (2 / 2)
    raw8 = np.arange(1.0, 9.0)
    f = upfirdn2d.setup_filter(raw8, flip_filter=True, gain=4)
    _close(f, raw8[::-1] / 36 * 2, tol=1e-6)  # gain ** (1 / 2)
    f = upfirdn2d.setup_filter(raw, normalize=False)
    _close(f, np.outer(raw, raw), tol=0)
    raw2d = np.array([[1.0, 2.0], [3.0, 6.0]])
    f = upfirdn2d.setup_filter(raw2d, flip_filter=True)
    _close(f, raw2d[::-1, ::-1] / 12, tol=1e-7)

# ----------------------------------------------------------------------------
# upfirdn2d

UPFIRDN_CASES = [
    # (filter, up, down, padding, flip_filter, gain)
    (_rand_filter(3, 3, seed=1),  1, 1, 0,               False, 1),
    (F4,                          2, 1, [2, 1, 2, 1],    False, 4),
    (_rand_filter(4, 4, seed=2),  2, 1, [2, 1, 2, 1],    False, 4),
    (_rand_filter(8, seed=3),     4, 1, 3,               False, 16),
    (_rand_filter(12, seed=4),    2, 1, [6, 5, 7, 4],    False, 4),
    (_rand_filter(4, 4, seed=5),  1, 2, [1, 2],          False, 1),
    (_rand_filter(4, 4, seed=6),  1, 2, [-1, 2, 0, -1],  False, 1),
    (_rand_filter(2, 3, seed=7),  2, 2, [1, 0, 2, 1],    True,  2.5),
    (_rand_filter(3, seed=8),     1, 1, [1, 1, 1, 1],    True,  3.0),
    (_rand_filter(9, seed=9),     4, 2, [-2, 3, 4, -1],  True,  0.5),
    (_rand_filter(4, 5, seed=10), 1, 1, [-1, 0, 0, -1],  False, 1),
]


@pytest.mark.parametrize('f, up, down, padding, flip_filter, gain', UPFIRDN_CASES)
def test_upfirdn2d_matches_reference(f, up, down, padding, flip_filter, gain):
    x = _randn(2, 3, 5, 7, seed=1)  # non-square
    y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    _close(y, ref_upfirdn2d(x, f, up, down, padding, flip_filter, gain), tol=FILTER_TOL)


@pytest.mark.parametrize('f, up, down, padding, flip_filter, gain', UPFIRDN_CASES[1::2])
def test_upfirdn2d_gradients(f, up, down, padding, flip_filter, gain):
    x = _randn(1, 2, 4, 3, seed=2, requires_grad=True)
    fn = lambda x: upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_upfirdn2d_float32_and_float16():
    f = _rand_filter(4, 4, seed=11)
    x = _randn(2, 3, 6, 5, seed=3)
    expected = ref_upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4)
    y32 = upfirdn2d.upfirdn2d(x.float(), f, up=2, padding=[2, 1, 2, 1], gain=4)
    assert y32.dtype == torch.float32
    _close(y32, expected, tol=1e-6)
    y16 = upfirdn2d.upfirdn2d(x.half(), f, up=2, padding=[2, 1, 2, 1], gain=4)
    assert y16.dtype == torch.float16
    _close(y16, expected, tol=5e-3)

# ----------------------------------------------------------------------------
# upsample2d / downsample2d / filter2d: the documented padding formulas.

RESAMPLE_FILTERS = [F4, _rand_filter(4, 4, seed=12), _rand_filter(12, seed=13), _rand_filter(3, 5, seed=14),
                    _rand_filter(3, seed=15)]


@pytest.mark.parametrize('f', RESAMPLE_FILTERS)
@pytest.mark.parametrize('up, padding, flip_filter, gain', [(2, 0, False, 1), (4, [1, -1], True, 2), (2, [0, 1, -1, 2], False, 1)])
def test_upsample2d(f, up, padding, flip_filter, gain):
    x = _randn(1, 2, 5, 4, seed=4)
    fw, fh = _fsize(f)
    x0, x1, y0, y1 = _pad4(padding)
    p = [x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2, y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2]
    y = upfirdn2d.upsample2d(x, f, up=up, padding=padding, flip_filter=flip_filter, gain=gain)
    _close(y, ref_upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * up ** 2), tol=FILTER_TOL)


@pytest.mark.parametrize('f', RESAMPLE_FILTERS)
@pytest.mark.parametrize('down, padding, flip_filter, gain', [(2, 0, False, 1), (2, [1, -1], True, 2), (4, [0, 1, 2, -1], False, 1)])
def test_downsample2d(f, down, padding, flip_filter, gain):
    x = _randn(1, 2, 9, 8, seed=5)
    fw, fh = _fsize(f)
    x0, x1, y0, y1 = _pad4(padding)
    p = [x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2, y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2]
    y = upfirdn2d.downsample2d(x, f, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    _close(y, ref_upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain), tol=FILTER_TOL)


@pytest.mark.parametrize('f', RESAMPLE_FILTERS)
@pytest.mark.parametrize('padding, flip_filter, gain', [(0, False, 1), ([1, -1], True, 2), ([0, 1, 2, -1], False, 1)])
def test_filter2d(f, padding, flip_filter, gain):
    x = _randn(1, 2, 6, 7, seed=6)
    fw, fh = _fsize(f)
    x0, x1, y0, y1 = _pad4(padding)
    p = [x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2]
    y = upfirdn2d.filter2d(x, f, padding=padding, flip_filter=flip_filter, gain=gain)
    _close(y, ref_upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain), tol=FILTER_TOL)


def test_resampling_sizes_and_constant_images():
    # A normalised filter must reproduce a constant image away from the borders, at the documented sizes.
    x = torch.full([1, 1, 8, 6], 0.75, dtype=torch.float64)
    up = upfirdn2d.upsample2d(x, F4)
    assert up.shape == (1, 1, 16, 12)
    _close(up[..., 2:-2, 2:-2], np.full((1, 1, 12, 8), 0.75))
    down = upfirdn2d.downsample2d(x, F4)
    assert down.shape == (1, 1, 4, 3)
    _close(down[..., 1:-1, 1:-1], np.full((1, 1, 2, 1), 0.75))
    filt = upfirdn2d.filter2d(x, upfirdn2d.setup_filter([1, 2, 1]))
    assert filt.shape == x.shape
    _close(filt[..., 1:-1, 1:-1], np.full((1, 1, 6, 4), 0.75))

# ----------------------------------------------------------------------------
# conv2d_resample

CONV_CASES = [
    # (kernel, up, down, padding, groups, flip_weight, filter, flip_filter)
    (3, 1, 1, 1, 1, True,  None,                         False),  # SynthesisLayer / D conv, up=1
    (3, 1, 1, 1, 2, True,  None,                         False),  # fused modconv, up=1
    (3, 1, 1, 0, 1, False, None,                         False),
    (1, 1, 1, 0, 1, True,  None,                         False),  # ToRGB
    (1, 1, 1, 0, 3, True,  None,                         False),
    (3, 2, 1, 1, 1, False, F4,                           False),  # SynthesisLayer up=2, non-fused
    (3, 2, 1, 1, 3, False, F4,                           False),  # SynthesisLayer up=2, fused
    (3, 2, 1, 1, 1, True,  _rand_filter(4, 4, seed=20),  False),
    (3, 2, 1, 1, 3, False, _rand_filter(4, 4, seed=21),  True),
    (3, 2, 1, 0, 1, False, None,                         False),
    (1, 2, 1, 0, 1, False, F4,                           False),  # G resnet skip
    (1, 2, 1, 0, 3, False, _rand_filter(4, 4, seed=22),  False),
    (3, 1, 2, 1, 1, True,  F4,                           False),  # D conv1
    (3, 1, 2, 1, 3, True,  _rand_filter(4, 4, seed=23),  True),
    (3, 1, 2, 1, 1, False, _rand_filter(3, 4, seed=24),  False),
    (3, 1, 2, 1, 1, True,  None,                         False),
    (1, 1, 2, 0, 1, True,  F4,                           False),  # D skip
    (1, 1, 2, 0, 3, True,  _rand_filter(4, 4, seed=25),  False),
    (3, 2, 1, 1, 1, False, _rand_filter(12, seed=26),    False),  # separable filter
    (3, 2, 2, 1, 1, True,  _rand_filter(4, 4, seed=27),  False),  # up and down together
]


def _conv_inputs(k, groups, size=(6, 5), batch=2, in_per_group=3, out_per_group=2, requires_grad=False):
    x = _randn(batch, in_per_group * groups, *size, seed=7, requires_grad=requires_grad)
    w = _randn(out_per_group * groups, in_per_group, k, k, seed=8, requires_grad=requires_grad)
    return x, w


@pytest.mark.parametrize('k, up, down, padding, groups, flip_weight, f, flip_filter', CONV_CASES)
def test_conv2d_resample_matches_reference(k, up, down, padding, groups, flip_weight, f, flip_filter):
    x, w = _conv_inputs(k, groups)
    y = conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=padding, groups=groups,
                                        flip_weight=flip_weight, flip_filter=flip_filter)
    _close(y, ref_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter), tol=FILTER_TOL)


def test_conv2d_resample_network_output_sizes():
    x, w = _conv_inputs(3, 1, size=(8, 8))
    assert conv2d_resample.conv2d_resample(x, w, f=F4, up=2, padding=1, flip_weight=False).shape[2:] == (16, 16)
    assert conv2d_resample.conv2d_resample(x, w, f=F4, down=2, padding=1).shape[2:] == (4, 4)
    assert conv2d_resample.conv2d_resample(x, w, padding=1).shape[2:] == (8, 8)


@pytest.mark.parametrize('k, up, down, padding, groups, flip_weight, f, flip_filter',
                         [CONV_CASES[i] for i in (1, 6, 9, 11, 13, 17)])
def test_conv2d_resample_gradients(k, up, down, padding, groups, flip_weight, f, flip_filter):
    x, w = _conv_inputs(k, groups, size=(4, 3), batch=1, in_per_group=1, out_per_group=2, requires_grad=True)
    fn = lambda x, w: conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=padding, groups=groups,
                                                      flip_weight=flip_weight, flip_filter=flip_filter)
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-5), (torch.float16, 1e-2)])
@pytest.mark.parametrize('k, up, down, padding, groups, flip_weight, f, flip_filter',
                         [CONV_CASES[i] for i in (0, 1, 6, 10, 12, 16)])
def test_conv2d_resample_low_precision(dtype, tol, k, up, down, padding, groups, flip_weight, f, flip_filter):
    x, w = _conv_inputs(k, groups)
    w = w / np.sqrt(w[0].numel())  # Keep outputs O(1) so the fp16 tolerance is meaningful.
    y = conv2d_resample.conv2d_resample(x.to(dtype), w.to(dtype), f=f, up=up, down=down, padding=padding,
                                        groups=groups, flip_weight=flip_weight, flip_filter=flip_filter)
    assert y.dtype == dtype
    _close(y, ref_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter), tol=tol)

# ----------------------------------------------------------------------------
# bias_act

ACT_NAMES = list(REF_ACTS)


def test_bias_act_table():
    for name in ACT_NAMES:
        assert name in bias_act.activation_funcs
        assert np.isclose(bias_act.activation_funcs[name].def_gain, REF_ACTS[name][1])
    assert bias_act.activation_funcs['lrelu'].def_alpha == 0.2
    assert bias_act.activation_funcs['linear'].def_alpha == 0
    assert bias_act.activation_funcs['relu'].def_alpha == 0


@pytest.mark.parametrize('act', ACT_NAMES)
def test_bias_act_defaults(act):
    x = _randn(2, 5, 3, 4, seed=9) * 2
    b = _randn(5, seed=10)
    _close(bias_act.bias_act(x, b, act=act), ref_bias_act(x, b, act=act))
    _close(bias_act.bias_act(x, act=act), ref_bias_act(x, act=act))


@pytest.mark.parametrize('act', ACT_NAMES)
def test_bias_act_explicit_gain_clamp(act):
    x = _randn(2, 5, 3, 4, seed=11) * 2
    b = _randn(5, seed=12)
    alpha = 0.1 if act == 'lrelu' else None
    y = bias_act.bias_act(x, b, act=act, alpha=alpha, gain=0.7, clamp=0.4)
    expected = ref_bias_act(x, b, act=act, alpha=alpha, gain=0.7, clamp=0.4)
    assert np.any(np.abs(expected) == 0.4)  # The clamp is exercised.
    _close(y, expected)


def test_bias_act_lrelu_alpha_and_zero_clamp():
    x = _randn(3, 4, seed=13)
    _close(bias_act.bias_act(x, act='lrelu', alpha=0.5, gain=1), ref_bias_act(x, act='lrelu', alpha=0.5, gain=1))
    _close(bias_act.bias_act(x, act='lrelu', alpha=1, gain=1), _np(x))  # Slope 1: identity (SG3 ToRGB).
    _close(bias_act.bias_act(x, clamp=0), np.zeros((3, 4)))


@pytest.mark.parametrize('shape, dim', [((7, 3), 1), ((4, 3, 5), 0), ((2, 3, 4, 5), 2), ((2, 3, 4, 5), 3)])
def test_bias_act_dim(shape, dim):
    x = _randn(*shape, seed=14)
    b = _randn(shape[dim], seed=15)
    _close(bias_act.bias_act(x, b, dim=dim, act='lrelu'), ref_bias_act(x, b, dim=dim, act='lrelu'))


@pytest.mark.parametrize('act', ACT_NAMES)
def test_bias_act_gradients(act):
    x = _randn(2, 3, 2, 2, seed=16, requires_grad=True)
    b = _randn(3, seed=17, requires_grad=True)
    fn = lambda x, b: bias_act.bias_act(x, b, act=act, gain=1.3, clamp=1.0)
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize('act', ['linear', 'relu', 'lrelu'])
@pytest.mark.parametrize('clamp', [None, 0.4])
def test_bias_act_with_slope(act, clamp):
    # The value is bias_act's bit for bit; the slope is the numpy derivative of the reference, written here.
    x = _randn(2, 5, 3, 4, seed=18).float() * 2
    b = _randn(5, seed=19).float()
    alpha = 0.1 if act == 'lrelu' else None
    y, slope = bias_act.bias_act_with_slope(x, b, act=act, alpha=alpha, gain=0.7, clamp=clamp)
    assert torch.equal(y, bias_act.bias_act(x, b, act=act, alpha=alpha, gain=0.7, clamp=clamp))
    pre = _np(x) + _np(b).reshape(1, -1, 1, 1)
    expected = 0.7 * {'linear': np.ones_like(pre), 'relu': (pre > 0) * 1.0, 'lrelu': np.where(pre > 0, 1, 0.1)}[act]
    if clamp is not None:
        unclamped = ref_bias_act(x, b, act=act, alpha=alpha, gain=0.7)
        assert np.any(np.abs(unclamped) > clamp)  # The clamp's zero slope is exercised.
        expected = expected * (np.abs(unclamped) <= clamp)
    _close(slope, expected, tol=1e-7)  # 0.7 in float32
    with pytest.raises(ValueError, match='tanh'):
        bias_act.bias_act_with_slope(x, act='tanh')


@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-6), (torch.float16, 1e-3)])
def test_bias_act_low_precision(dtype, tol):
    x = _randn(2, 5, 3, 4, seed=18)
    b = _randn(5, seed=19)
    y = bias_act.bias_act(x.to(dtype), b.to(dtype), act='lrelu', clamp=256)
    assert y.dtype == dtype
    _close(y, ref_bias_act(x, b, act='lrelu', clamp=256), tol=tol)

# ----------------------------------------------------------------------------
# fma

@pytest.mark.parametrize('sa, sb, sc', [((2, 3, 4, 5), (2, 3, 1, 1), (2, 3, 4, 5)),
                                        ((2, 3, 4, 5), (2, 3, 1, 1), (1, 3, 1, 5)),
                                        ((3, 1), (1, 4), (4,))])
def test_fma(sa, sb, sc):
    a = _randn(*sa, seed=20, requires_grad=True)
    b = _randn(*sb, seed=21, requires_grad=True)
    c = _randn(*sc, seed=22, requires_grad=True)
    _close(fma.fma(a, b, c), _np(a) * _np(b) + _np(c))
    assert torch.autograd.gradcheck(fma.fma, (a, b, c))
    y32 = fma.fma(a.float(), b.float(), c.float())
    assert y32.dtype == torch.float32

# ----------------------------------------------------------------------------
# conv2d_gradfix / grid_sample_gradfix

@pytest.mark.parametrize('enabled', [False, True])
def test_conv2d_gradfix_matches_functional(enabled, monkeypatch):
    monkeypatch.setattr(conv2d_gradfix, 'enabled', enabled)
    x = _randn(1, 4, 5, 6, seed=23, requires_grad=True)
    w = _randn(4, 2, 3, 3, seed=24, requires_grad=True)
    b = _randn(4, seed=25, requires_grad=True)
    w_dense = _randn(4, 4, 3, 3, seed=32)
    for wk, kwargs in [(w_dense, dict()), (w, dict(stride=2, padding=1, groups=2)),
                       (w, dict(padding=[2, 1], dilation=2, groups=2))]:
        assert torch.equal(conv2d_gradfix.conv2d(x, wk, b, **kwargs), F.conv2d(x, wk, b, **kwargs))
    fn = lambda x, w, b: conv2d_gradfix.conv2d(x, w, b, stride=2, padding=1, groups=2)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))

    wt = _randn(4, 1, 3, 3, seed=26, requires_grad=True)
    bt = _randn(2, seed=27, requires_grad=True)
    kwargs = dict(stride=2, padding=1, output_padding=1, groups=2)
    assert torch.equal(conv2d_gradfix.conv_transpose2d(x, wt, bt, **kwargs), F.conv_transpose2d(x, wt, bt, **kwargs))
    fn = lambda x, w, b: conv2d_gradfix.conv_transpose2d(x, w, b, **kwargs)
    assert torch.autograd.gradcheck(fn, (x, wt, bt))


def test_conv2d_gradfix_no_weight_gradients():
    # NVlabs' pattern (R1): the forward runs outside, the gradient w.r.t. the input inside the block; the
    # second-order gradient must still reach the weights, and nothing inside the block changes values.
    assert conv2d_gradfix.weight_gradients_disabled is False
    x = _randn(1, 2, 5, 5, seed=28, requires_grad=True)
    w = _randn(3, 2, 3, 3, seed=29, requires_grad=True)
    y = conv2d_gradfix.conv2d(x, w)
    with conv2d_gradfix.no_weight_gradients():
        assert conv2d_gradfix.weight_gradients_disabled is True
        (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
        assert torch.equal(conv2d_gradfix.conv2d(x, w), y)
    assert conv2d_gradfix.weight_gradients_disabled is False
    (gw,) = torch.autograd.grad(gx.square().sum(), [w])
    (gx_ref,) = torch.autograd.grad(F.conv2d(x, w).square().sum(), [x], create_graph=True)
    (gw_ref,) = torch.autograd.grad(gx_ref.square().sum(), [w])
    assert torch.allclose(gw, gw_ref) and gw.abs().sum() > 0
    with conv2d_gradfix.no_weight_gradients(False):
        assert conv2d_gradfix.weight_gradients_disabled is False


@pytest.mark.parametrize('enabled', [False, True])
def test_grid_sample_gradfix(enabled, monkeypatch):
    monkeypatch.setattr(grid_sample_gradfix, 'enabled', enabled)
    x = _randn(2, 3, 5, 6, seed=30, requires_grad=True)
    grid = (_randn(2, 4, 7, 2, seed=31) * 0.8).requires_grad_(True)  # Some points fall outside [-1, 1].
    expected = F.grid_sample(x, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    assert torch.equal(grid_sample_gradfix.grid_sample(x, grid), expected)
    assert torch.autograd.gradcheck(grid_sample_gradfix.grid_sample, (x, grid))
    assert grid_sample_gradfix.grid_sample(x.float(), grid.float()).dtype == torch.float32

# ----------------------------------------------------------------------------
