"""Small builders shared by the tests (imported as ``helpers``; pytest puts tests/ on sys.path)."""

import os

import torch

from training.networks_stylegan2 import Generator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_generator(c_dim=0, seed=0, z_dim=16):
    """A 16 px StyleGAN2 with non-zero biases and noise strengths, so that every path of the network matters."""
    torch.manual_seed(seed)
    G = Generator(z_dim=z_dim, c_dim=c_dim, w_dim=16, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=32)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith('bias') or name.endswith('noise_strength'):
                param.add_(torch.randn_like(param) * 0.1)
    return G.eval().requires_grad_(False)
