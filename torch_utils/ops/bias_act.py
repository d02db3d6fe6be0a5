"""Fused bias + activation + gain + clamp, in pure PyTorch (differentiable to any order)."""

import numpy as np
import torch
import torch.nn.functional as F

import dnnlib

# The networks read def_gain directly; def_alpha is the negative slope of lrelu.
activation_funcs = {
    'linear':   dnnlib.EasyDict(func=lambda x, **_: x,                          def_alpha=0,   def_gain=1,          ref='',  has_2nd_grad=False),
    'relu':     dnnlib.EasyDict(func=lambda x, **_: F.relu(x),                  def_alpha=0,   def_gain=np.sqrt(2), ref='y', has_2nd_grad=False),
    'lrelu':    dnnlib.EasyDict(func=lambda x, alpha, **_: F.leaky_relu(x, alpha), def_alpha=0.2, def_gain=np.sqrt(2), ref='y', has_2nd_grad=False),
    'tanh':     dnnlib.EasyDict(func=lambda x, **_: torch.tanh(x),              def_alpha=0,   def_gain=1,          ref='y', has_2nd_grad=True),
    'sigmoid':  dnnlib.EasyDict(func=lambda x, **_: torch.sigmoid(x),           def_alpha=0,   def_gain=1,          ref='y', has_2nd_grad=True),
    'elu':      dnnlib.EasyDict(func=lambda x, **_: F.elu(x),                   def_alpha=0,   def_gain=1,          ref='y', has_2nd_grad=True),
    'selu':     dnnlib.EasyDict(func=lambda x, **_: F.selu(x),                  def_alpha=0,   def_gain=1,          ref='y', has_2nd_grad=True),
    'softplus': dnnlib.EasyDict(func=lambda x, **_: F.softplus(x),              def_alpha=0,   def_gain=1,          ref='y', has_2nd_grad=True),
    'swish':    dnnlib.EasyDict(func=lambda x, **_: torch.sigmoid(x) * x,       def_alpha=0,   def_gain=np.sqrt(2), ref='x', has_2nd_grad=True),
}


def bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='cuda'):
    """Add bias ``b`` along ``dim``, apply activation ``act``, multiply by ``gain``, clamp to +-``clamp``.

    ``alpha``/``gain`` default to the activation's ``def_alpha``/``def_gain``; ``clamp=None`` disables
    clamping. ``impl`` is accepted for NVlabs compatibility; every device runs the same PyTorch code.
    """
    x, spec, alpha, gain, clamp = _with_bias(x, b, dim, act, alpha, gain, clamp)
    x = spec.func(x, alpha=alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def _with_bias(x, b, dim, act, alpha, gain, clamp):
    """x + b along `dim`, the activation's spec, and alpha, gain, clamp (-1: none) with their defaults."""
    assert isinstance(x, torch.Tensor)
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    if b is not None:
        assert isinstance(b, torch.Tensor) and b.ndim == 1
        assert 0 <= dim < x.ndim
        assert b.shape[0] == x.shape[dim]
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    return x, spec, alpha, gain, clamp


# Activations whose derivative is piecewise constant, so a forward-mode rule is one multiplication.
PIECEWISE_LINEAR = ('linear', 'relu', 'lrelu')


def bias_act_with_slope(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None):
    """``bias_act(x, b, ...)`` and its elementwise derivative ``dy/dx`` (same shape as ``x``).

    For the piecewise-linear activations (``PIECEWISE_LINEAR``) the derivative is a mask of constants, so a
    tangent ``dx`` of any batch shape broadcast over ``x`` maps to ``dx * slope``: an explicit forward-mode rule
    in plain tensor ops, without running autograd's per-op rules once per tangent. At the kinks the slope is the
    one autograd uses (``x > 0`` for relu/lrelu; clamp passes the gradient where ``-clamp <= y <= clamp``).
    """
    assert isinstance(x, torch.Tensor)
    if act not in PIECEWISE_LINEAR:
        raise ValueError(f'bias_act_with_slope supports {PIECEWISE_LINEAR}, got {act!r}')
    # The same operations as bias_act, so y is bit for bit the network's value.
    x, spec, alpha, gain, clamp = _with_bias(x, b, dim, act, alpha, gain, clamp)
    y = spec.func(x, alpha=alpha)
    if act == 'linear':
        slope = torch.full_like(x, gain)
    else:
        slope = torch.where(x > 0, gain, gain * (alpha if act == 'lrelu' else 0.0)).to(x.dtype)
    if gain != 1:
        y = y * gain
    if clamp >= 0:
        slope = slope * ((y >= -clamp) & (y <= clamp)).to(x.dtype)
        y = y.clamp(-clamp, clamp)
    return y, slope
