"""conv2d / conv_transpose2d with a switch to skip weight gradients.

NVlabs needed a custom double-backward for torch < 1.11; current PyTorch differentiates
convolutions to any order, so the forward and all gradients here are torch.nn.functional's.
"""

import contextlib

import torch.nn.functional as F

enabled = False                     # Kept for API compatibility (NVlabs' custom op switch); no effect.
weight_gradients_disabled = False   # While set, convolutions do not propagate gradients to the weights.


@contextlib.contextmanager
def no_weight_gradients(disable=True):
    """Within the block, gradients do not flow into convolution weights (e.g. path-length regularisation)."""
    global weight_gradients_disabled
    old = weight_gradients_disabled
    if disable:
        weight_gradients_disabled = True
    try:
        yield
    finally:
        weight_gradients_disabled = old


def _maybe_detach(weight):
    return weight.detach() if weight_gradients_disabled else weight


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, _maybe_detach(weight), bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return F.conv_transpose2d(input, _maybe_detach(weight), bias, stride=stride, padding=padding,
                              output_padding=output_padding, groups=groups, dilation=dilation)
