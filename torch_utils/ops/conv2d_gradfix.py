"""conv2d / conv_transpose2d as NVlabs' network code calls them.

NVlabs needed a custom double-backward op for torch < 1.11; current PyTorch differentiates
convolutions to any order, so the forward and all gradients here are torch.nn.functional's.
``no_weight_gradients()`` only sets a flag: NVlabs uses it around ``torch.autograd.grad(...,
inputs=[images])`` (R1, path length) to skip computing weight gradients nobody asked for, and
PyTorch's autograd already computes only the requested gradients. It never changes results.
"""

import contextlib

import torch.nn.functional as F

enabled = False                     # Kept for API compatibility (NVlabs' custom op switch); no effect.
weight_gradients_disabled = False   # Set inside no_weight_gradients(); informational only.


@contextlib.contextmanager
def no_weight_gradients(disable=True):
    global weight_gradients_disabled
    old = weight_gradients_disabled
    if disable:
        weight_gradients_disabled = True
    try:
        yield
    finally:
        weight_gradients_disabled = old


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(input, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return F.conv_transpose2d(input, weight, bias, stride=stride, padding=padding, output_padding=output_padding,
                              groups=groups, dilation=dilation)
