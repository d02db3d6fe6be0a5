"""Images/s of batched generation (generate.py) against NVlabs' one-seed-at-a-time loop, same network, same process.

    python benchmarks/bench_generate.py                 # 64 px StyleGAN2, 64 seeds, batch 16
    python benchmarks/bench_generate.py --res 256 --num 32 --device cuda --batch 64
"""

import os
import sys
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sampling.images import to_uint8  # noqa: E402
from sampling.latents import z_from_seeds  # noqa: E402
from sampling.synthesis import synthesize  # noqa: E402
from training.networks_stylegan2 import Generator  # noqa: E402


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def one_at_a_time(G, seeds, device):
    """generate.py's original loop: one float64 z per forward pass."""
    out = []
    label = torch.zeros([1, G.c_dim], device=device)
    for seed in seeds:
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(device)
        img = G(z, label, truncation_psi=1, noise_mode='const')
        out.append(to_uint8(img))
    return np.concatenate(out)


def batched(G, seeds, batch_size):
    z = z_from_seeds(seeds, G.z_dim)
    return np.concatenate([to_uint8(img) for img in synthesize(G, z=z, batch_size=batch_size)])


@click.command()
@click.option('--res', type=int, default=64, show_default=True, help='Image resolution')
@click.option('--num', type=int, default=64, show_default=True, help='Images per method')
@click.option('--batch', type=int, default=16, show_default=True, help='Batch size of the batched path')
@click.option('--device', default='cpu', show_default=True)
@click.option('--fp32', is_flag=True, help='No float16 blocks (on CUDA the default uses 4 fp16 resolutions)')
def main(res, num, batch, device, fp32):
    device = torch.device(device)
    torch.manual_seed(0)
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3, channel_base=16384,
                  channel_max=512, num_fp16_res=0 if fp32 else 4).eval().requires_grad_(False).to(device)
    seeds = list(range(num))
    print(f'StyleGAN2 {res}x{res}, {sum(p.numel() for p in G.parameters()) / 1e6:.1f} M parameters, {device}, '
          f'{torch.get_num_threads()} threads, {num} images')

    batched(G, seeds[:batch], batch)  # Warm-up.
    results = {}
    for name, fn in [('one seed at a time', lambda: one_at_a_time(G, seeds, device)),
                     (f'batched (batch {batch})', lambda: batched(G, seeds, batch))]:
        _sync(device)
        start = time.perf_counter()
        images = fn()
        _sync(device)
        elapsed = time.perf_counter() - start
        results[name] = (num / elapsed, images)
        print(f'{name:24s} {num / elapsed:8.2f} images/s')
    (base_rate, base_images), (ours_rate, ours_images) = results.values()
    print(f'speed-up: {ours_rate / base_rate:.2f}x; max uint8 difference between the two: '
          f'{np.abs(base_images.astype(int) - ours_images.astype(int)).max()}')


if __name__ == '__main__':
    main()
