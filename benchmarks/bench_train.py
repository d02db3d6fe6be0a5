"""Training speed of the small StyleGAN2 (seconds per thousand images), to plan CPU training runs.

For each network size it times the phases of one training minibatch (G main loss, D main loss, and
the lazy R1 step amortised over its interval of 16) on random 'real' images, and reports wall-clock
and process-CPU seconds per kimg. It compares the modulated-convolution mode train.py uses,
``fused_modconv_default='inference_only'`` (per-sample scaling of activations while training, as
NVlabs' StyleGAN2 config), against the fused grouped convolution (the networks' default), in the
same process on the same inputs.

Examples:

\b
    python benchmarks/bench_train.py --quick
    python benchmarks/bench_train.py --sizes 1024:128,2048:128,4096:128 --threads 1 --iters 5
"""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.loss import StyleGAN2Loss  # noqa: E402
from training.networks_stylegan2 import Discriminator, Generator  # noqa: E402

R1_INTERVAL = 16


def build(cbase, cmax, z_dim, map_layers, resolution, channels, batch, fused):
    torch.manual_seed(0)
    common = dict(channel_base=cbase, channel_max=cmax, num_fp16_res=0, conv_clamp=256)
    G = Generator(z_dim=z_dim, c_dim=0, w_dim=z_dim, img_resolution=resolution, img_channels=channels,
                  mapping_kwargs=dict(num_layers=map_layers), fused_modconv_default=fused, **common)
    D = Discriminator(c_dim=0, img_resolution=resolution, img_channels=channels,
                      epilogue_kwargs=dict(mbstd_group_size=min(batch, 4)), **common)
    return G.train().requires_grad_(False), D.train().requires_grad_(False)


def time_phases(G, D, batch, resolution, channels, iters):
    """Mean (wall, cpu) seconds of each phase over ``iters`` repetitions, after one warm-up."""
    loss = StyleGAN2Loss(G, D, r1_gamma=0.05)
    real = torch.rand(batch, channels, resolution, resolution) * 2 - 1
    c = torch.zeros(batch, 0)
    out = {}
    for phase, module in (('Gmain', G), ('Dmain', D), ('Dreg', D)):
        def step(phase=phase, module=module):
            module.requires_grad_(True)
            loss.accumulate_gradients(phase, real, c, torch.randn(batch, G.z_dim), c, gain=1, cur_nimg=0)
            module.requires_grad_(False)
            module.zero_grad(set_to_none=True)
        step()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(iters):
            step()
        out[phase] = ((time.perf_counter() - wall) / iters, (time.process_time() - cpu) / iters)
    return out


def per_kimg(phases, batch, index):
    per_batch = phases['Gmain'][index] + phases['Dmain'][index] + phases['Dreg'][index] / R1_INTERVAL
    return per_batch * 1000 / batch


@click.command(help=__doc__)
@click.option('--sizes', default='1024:128,2048:128', show_default=True, help='Comma list of channel_base:channel_max')
@click.option('--z-dim', type=int, default=64, show_default=True, help='z = w dimensionality')
@click.option('--map', 'map_layers', type=int, default=2, show_default=True, help='Mapping layers')
@click.option('--res', 'resolution', type=int, default=32, show_default=True, help='Image resolution')
@click.option('--channels', type=int, default=1, show_default=True, help='Image channels')
@click.option('--batch', type=int, default=32, show_default=True, help='Minibatch size')
@click.option('--iters', type=int, default=3, show_default=True, help='Timed repetitions of each phase')
@click.option('--threads', type=int, help="torch CPU threads [default: torch's]")
@click.option('--quick', is_flag=True, help='One size (1024:128), one repetition')
def main(sizes, z_dim, map_layers, resolution, channels, batch, iters, threads, quick):
    if threads is not None:
        torch.set_num_threads(threads)
    if quick:
        sizes, iters = '1024:128', 1
    print(f'{resolution}x{resolution}x{channels}, batch {batch}, z=w={z_dim}, {map_layers} mapping layers, '
          f'{torch.get_num_threads()} threads, R1 every {R1_INTERVAL}; seconds per kimg (wall / process CPU)')
    for size in sizes.split(','):
        cbase, cmax = (int(v) for v in size.split(':'))
        results = {}
        for label, fused in (('inference_only', 'inference_only'), ('fused', True)):
            G, D = build(cbase, cmax, z_dim, map_layers, resolution, channels, batch, fused)
            results[label] = time_phases(G, D, batch, resolution, channels, iters)
        num_params = sum(p.numel() for p in G.parameters()) + sum(p.numel() for p in D.parameters())
        ours, base = results['inference_only'], results['fused']
        print(f'cbase {cbase:5d} cmax {cmax:4d} ({num_params / 1e6:.2f} M params): '
              f'inference_only {per_kimg(ours, batch, 0):7.1f} / {per_kimg(ours, batch, 1):7.1f}   '
              f'fused {per_kimg(base, batch, 0):7.1f} / {per_kimg(base, batch, 1):7.1f}   '
              f'fused/inference_only (CPU) {per_kimg(base, batch, 1) / per_kimg(ours, batch, 1):.2f}x   '
              f'phases (CPU s): ' + ', '.join(f'{k} {v[1]:.2f}' for k, v in ours.items()))


if __name__ == '__main__':
    main()
