"""BigGAN-deep on a device: CUDA against CPU, images per second, seconds per latent of the pixel-space volume.

Without --network the published 256 px architecture is built with random weights (stored singular vectors set
by power iteration, so spectral norm keeps activations O(1)); with --network, a checkpoint folder.
TF32 is off for matmuls and cuDNN, so both devices compute in IEEE float32.

\b
    python benchmarks/bench_biggan.py --device cuda                       # random 256 px weights
    python benchmarks/bench_biggan.py --device cuda --network biggan-deep-256
    python benchmarks/bench_biggan.py --device cpu --batch 2 --iters 1 --volume-latents 1   # a smoke run

Prints one line per measurement; exit status 1 if CUDA and CPU images differ by more than --tol.
"""

import os
import sys
import time

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import legacy  # noqa: E402
from sampling import volume  # noqa: E402
from training.networks_biggan import Generator, truncated_z  # noqa: E402


def random_biggan(resolution, seed=0, power_iters=10):
    """The published architecture at ``resolution`` with random weights and well-scaled spectral norms."""
    gen = torch.Generator().manual_seed(seed)
    G = Generator(img_resolution=resolution)
    state = G.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name.endswith('running_means'):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
            elif name.endswith('running_vars'):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        for name, tensor in state.items():
            if name.endswith('weight_orig'):
                matrix = tensor.reshape(tensor.shape[0], -1)
                v = torch.randn(matrix.shape[1], generator=gen)
                for _ in range(power_iters):
                    u = torch.nn.functional.normalize(matrix @ v, dim=0)
                    v = torch.nn.functional.normalize(matrix.T @ u, dim=0)
                prefix = name[:-len('weight_orig')]
                state[prefix + 'weight_u'].copy_(u)
                state[prefix + 'weight_v'].copy_(v)
    G.load_state_dict(state)
    return G.eval().requires_grad_(False)


def one_hot(classes, c_dim):
    return torch.nn.functional.one_hot(torch.as_tensor(classes), c_dim).float()


def timed(fn, device, iters):
    fn()  # Warm-up (cuDNN autotuning, allocations).
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


@click.command()
@click.option('--device', default='cuda', show_default=True)
@click.option('--network', help='A BigGAN checkpoint folder (default: random weights)')
@click.option('--resolution', type=click.Choice(['128', '256', '512']), default='256', show_default=True,
              help='Architecture of the random network')
@click.option('--batch', type=int, default=32, show_default=True, help='Images per forward pass for images/s')
@click.option('--iters', type=int, default=5, show_default=True, help='Timed forward passes')
@click.option('--volume-latents', type=int, default=4, show_default=True, help='Latents for the volume timing')
@click.option('--resize', type=int, default=None, help='Pixel space: resize images first (as --resize)')
@click.option('--method', type=click.Choice(volume.METHODS), default='lowrank', show_default=True)
@click.option('--top-k', type=int, default=10, show_default=True)
@click.option('--tol', type=float, default=1e-4, show_default=True, help='Max |CUDA - CPU| on images in [-1, 1]')
def main(device, network, resolution, batch, iters, volume_latents, resize, method, top_k, tol):
    device = torch.device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    G_cpu = legacy.load_network(network) if network else random_biggan(int(resolution))
    G = G_cpu.to(device) if device.type != 'cpu' else G_cpu
    what = network or f'random BigGAN-deep {resolution}'
    click.echo(f'{what} on {torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}')
    failed = False

    if device.type != 'cpu':
        G_cpu = (legacy.load_network(network) if network else random_biggan(int(resolution)))
        z = torch.from_numpy(truncated_z(4, G.z_dim, truncation=0.5, seed=1))
        c = one_hot([1, 207, 933, 980], G.c_dim)
        worst = 0.0
        for psi in (1.0, 0.5, 0.515):
            with torch.no_grad():
                ref = G_cpu(z, c, truncation_psi=psi)
                got = G(z.to(device), c.to(device), truncation_psi=psi).cpu()
            worst = max(worst, float((got - ref).abs().max()))
        failed = worst > tol
        click.echo(f'CUDA vs CPU, 4 images x psi (1, 0.5, 0.515): max |diff| {worst:.2e} '
                   f'({"FAIL" if failed else "PASS"} at {tol:g})')

    z = torch.from_numpy(truncated_z(batch, G.z_dim, truncation=1.0, seed=2)).to(device)
    c = one_hot(torch.arange(batch) % G.c_dim, G.c_dim).to(device)
    with torch.no_grad():
        seconds = timed(lambda: G(z, c, truncation_psi=1.0), device, iters)
    click.echo(f'images/s at batch {batch}: {batch / seconds:.1f} ({seconds:.3f} s per batch, {iters} batches)')

    labels = one_hot([207], G.c_dim).to(device)  # One row: broadcast over the latents.
    f = volume.make_space_fn(G, 'pixel', c=labels, resize=resize)
    z = torch.from_numpy(truncated_z(volume_latents, G.z_dim, truncation=1.0, seed=3)).to(device)
    seconds = timed(lambda: volume.jacobian_singular_values(f, z, method=method, top_k=top_k), device, 1)
    click.echo(f'pixel-space volume, {method}, top {top_k}, resize {resize}: {seconds / volume_latents:.2f} s per '
               f'latent ({volume_latents} latents together)')
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
