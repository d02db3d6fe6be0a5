"""Fused multiply-add with broadcasting."""

import torch


def fma(a, b, c):
    """Return ``a * b + c`` (torch.addcmul), broadcasting all three; gradients reduce to each shape."""
    return torch.addcmul(c, a, b)
