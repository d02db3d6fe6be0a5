"""A tiny BigGAN-deep (32 px, 4-64 channels, 10 classes) with well-scaled random weights, and its checkpoint files."""

import json
import os

import torch

from training.networks_biggan import Generator

# The port's config.json fields for the tiny network. The port fixes gen_z at 16 * channel_width channels, the
# last block at channel_width, and halves channels on the skip path, so the layout keeps those ratios.
TINY_CONFIG = dict(output_dim=32, z_dim=8, class_embed_dim=8, channel_width=4, num_classes=10,
                   layers=[[False, 16, 16], [True, 16, 8], [True, 8, 4], [False, 4, 2], [True, 2, 1]],
                   attention_layer_position=3, eps=1e-4, n_stats=51)


def tiny_biggan(seed=0, stats_blend='port'):
    """Our Generator for TINY_CONFIG with random weights whose stored singular vectors are near the true ones
    (so spectral norm keeps activations O(1)) and 51 distinct sets of batch-norm statistics."""
    from training.load_biggan import generator_kwargs
    G = Generator(**generator_kwargs(TINY_CONFIG), stats_blend=stats_blend)
    randomise(G, seed)
    return G.eval().requires_grad_(False)


def randomise(G, seed):
    gen = torch.Generator().manual_seed(seed)
    state = G.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name.endswith('running_means'):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.3)
            elif name.endswith('running_vars'):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith('gamma'):
                tensor.fill_(0.7)
            elif not name.endswith(('weight_u', 'weight_v')):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (0.5 if name.endswith('bias') else 1.0))
        for name, tensor in state.items():
            if name.endswith('weight_orig'):
                u, _, vh = torch.linalg.svd(tensor.reshape(tensor.shape[0], -1).double(), full_matrices=False)
                prefix = name[:-len('weight_orig')]
                for key, vector in (('weight_u', u[:, 0]), ('weight_v', vh[0])):
                    noisy = vector + 0.05 * torch.randn(vector.shape, generator=gen, dtype=torch.float64) / len(vector) ** 0.5
                    state[prefix + key].copy_(noisy / noisy.norm())
    G.load_state_dict(state)


def write_checkpoint(folder, state_dict, config=TINY_CONFIG, weights_name='pytorch_model.bin',
                     config_name='config.json'):
    """Write the port's checkpoint layout: torch.save(state_dict) and config.json."""
    os.makedirs(folder, exist_ok=True)
    torch.save(dict(state_dict), os.path.join(folder, weights_name))
    with open(os.path.join(folder, config_name), 'w') as f:
        json.dump(config, f)
    return folder
