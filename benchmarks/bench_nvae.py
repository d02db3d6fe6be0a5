"""NVAE decoder on this machine: sampling time, and the Jacobian (z -> pixels) by 'lowrank' against 'exact'.

The network is an NVAE checkpoint with random weights in NVAE's layout (tests/nvae_writer.py), loaded through
legacy.load_network like a real one; 'mnist' is the release's MNIST configuration (14,400 eps dimensions,
12.7 M parameters), 'small' the tests' configuration (1,728), 'tiny' one with 1 channel per latent group (576),
small enough for 'exact' in minutes. Random weights give other spectra than a trained NVAE: the accuracy
column says how well 'lowrank' does on such a network, not on every network.

    python benchmarks/bench_nvae.py --config mnist --num 2
    python benchmarks/bench_nvae.py --config tiny --num 2 --exact
"""

import os
import sys
import tempfile
import time

import click
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]
import nvae_writer  # noqa: E402

import legacy  # noqa: E402
from sampling import volume  # noqa: E402

CONFIGS = {
    'mnist': nvae_writer.MNIST_ARGS,
    'small': nvae_writer.SMALL_ARGS,
    'tiny': dict(nvae_writer.SMALL_ARGS, num_latent_per_group=1),
}


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@click.command()
@click.option('--config', type=click.Choice(list(CONFIGS)), default='mnist', show_default=True)
@click.option('--num', type=int, default=2, show_default=True, help='Latents for the Jacobian timings')
@click.option('--top-k', type=int, default=10, show_default=True)
@click.option('--exact', is_flag=True, help="Also run 'exact' and report lowrank's error against it")
@click.option('--threads', type=int, default=None, help='torch intra-op threads (default: torch\'s)')
@click.option('--device', default='cpu', show_default=True)
def main(config, num, top_k, exact, threads, device):
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = nvae_writer.write_checkpoint(os.path.join(tmp, 'checkpoint.pt'), args=CONFIGS[config], seed=1)
        t0 = time.perf_counter()
        G = legacy.load_network(path, device=device)
        print(f'{config}: z_dim {G.z_dim}, {sum(p.numel() for p in G.parameters()) / 1e6:.2f} M parameters, '
              f'loaded in {time.perf_counter() - t0:.2f} s; torch threads {torch.get_num_threads()}, {device}')

    z = torch.randn([16, G.z_dim], generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        G(z[:2])
        _sync(device)
        t0 = time.perf_counter()
        img = G(z)
        _sync(device)
    print(f'sampling: {(time.perf_counter() - t0) / len(z) * 1e3:.1f} ms per image (batch {len(z)}), '
          f'pixel std {float(img.std()):.3f}')

    f = volume.make_space_fn(G, 'pixel')
    zz = z[:num]
    t0 = time.perf_counter()
    low = volume.jacobian_singular_values(f, zz, method='lowrank', top_k=top_k).double().cpu()
    _sync(device)
    t_low = (time.perf_counter() - t0) / num
    print(f'lowrank top-{top_k}: {t_low:.1f} s per latent; log-volume {volume.log_volume(low, top_k).numpy().round(3)}')
    if exact:
        t0 = time.perf_counter()
        ex = volume.jacobian_singular_values(f, zz, method='exact').double().cpu()
        _sync(device)
        t_ex = (time.perf_counter() - t0) / num
        err = (volume.log_volume(low, top_k) - volume.log_volume(ex, top_k)).abs().max().item()
        rel = ((low[:, :top_k] - ex[:, :top_k]).abs() / ex[:, :top_k]).max().item()
        print(f'exact: {t_ex:.1f} s per latent; top-{top_k} log-volume error of lowrank {err:.2e} nats, '
              f'largest relative error of a singular value {rel:.2e}; sigma_1/sigma_{top_k} '
              f'{np.mean((ex[:, 0] / ex[:, top_k - 1]).numpy()):.2f}')


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter
