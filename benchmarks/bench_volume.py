"""Seconds per latent of Jacobian singular values (sampling/volume.py) against per-latent baselines.

Same StyleGAN2, same latents, same process. Baselines:

* "authors' loop": one latent at a time, the flattened image projected by the same 128-row semi-orthogonal
  matrix, 128 reverse-mode passes (``torch.autograd.grad``), then the singular values -- the structure of
  the MaGNET authors' TF code.
* "autograd.functional": one latent at a time, ``torch.autograd.functional.jacobian(vectorize=True,
  strategy='forward-mode')``, then the singular values.

Ours: 'projected' (the same estimator, batched), 'exact' (forward mode, batched) and 'lowrank'.
Accuracy columns compare top-K log-volumes with 'exact'.

    python benchmarks/bench_volume.py --quick
    python benchmarks/bench_volume.py --res 64 --z-dim 512 --num 8 --device cuda

The printout ends with a FLOP floor: the matrix-product and convolution FLOPs per latent of each method
(counted with torch.utils.flop_counter's formulas) at the best rate measured on this machine for the network's
own largest kernels, a lower bound on each method's time.

``--lowrank-sweep`` also times 'lowrank' with small Krylov spaces (fixed block counts, no early stop) to show
what its time and error are when it is made to run about as fast as 'projected'.
"""

import os
import sys
import time

import click
import numpy as np
import scipy.stats
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sampling import volume  # noqa: E402
from torch_utils.threads import set_threads  # noqa: E402
from training.networks_stylegan2 import Generator  # noqa: E402


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def authors_loop(f, z, num_projections, seed):
    out = []
    for zz in z:
        zz = zz[None].clone().requires_grad_(True)
        with torch.enable_grad():
            img = f(zz).flatten()
            P = volume.projection_matrix(img.numel(), num_projections, seed, dtype=img.dtype, device=img.device)
            y = P @ img
            rows = [torch.autograd.grad(y[i], zz, retain_graph=True)[0][0] for i in range(num_projections)]
        out.append(torch.linalg.svdvals(torch.stack(rows).double()))
    return torch.stack(out)


def functional_loop(f, z):
    out = []
    for zz in z:
        J = torch.autograd.functional.jacobian(lambda x: f(x[None])[0].flatten(), zz, vectorize=True,
                                               strategy='forward-mode')
        out.append(torch.linalg.svdvals(J.double()))
    return torch.stack(out)


def count_flops(fn):
    """Matrix-product and convolution FLOPs of fn(), forward and backward, by torch.utils.flop_counter's formulas
    (elementwise work is not counted). FlopCounterMode itself refuses torch.autograd.grad (its module hooks),
    so a plain dispatch mode applies the same formulas."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    with Counter() as counter:
        fn()
    return counter.total


def best_rate(channels, res, device, repeats=5):
    """FLOP/s of the fastest of the network's own kernels, run big: its 3x3 convolution at the top resolution
    on 64 images (both memory layouts) and a 4096 x 512 x 512 matrix product."""
    x = torch.randn([64, channels, res, res], device=device)
    w = torch.randn([channels, channels, 3, 3], device=device)
    xc = x.to(memory_format=torch.channels_last)
    a, b = torch.randn([4096, 512], device=device), torch.randn([512, 512], device=device)
    kernels = [(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * x.numel() * channels * 9),
               (lambda: torch.nn.functional.conv2d(xc, w, padding=1), 2 * x.numel() * channels * 9),
               (lambda: a @ b, 2 * 4096 * 512 * 512)]
    rate = 0
    for fn, flops in kernels:
        fn()
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            rate = max(rate, flops / (time.perf_counter() - start))
    return rate


def batched(fn, z, batch):
    return torch.cat([fn(z[i:i + batch]) for i in range(0, len(z), batch)])


@click.command()
@click.option('--res', type=int, default=32, show_default=True, help='Image resolution')
@click.option('--z-dim', type=int, default=128, show_default=True, help='Latent size')
@click.option('--num', type=int, default=8, show_default=True, help='Latents per method')
@click.option('--batch', type=int, default=8, show_default=True,
              help="Batch size of our batched paths (compute_volume_scalars.py's default)")
@click.option('--top-k', type=int, default=30, show_default=True, help='K of the log-volume')
@click.option('--space', type=click.Choice(['pixel', 'style']), default='pixel', show_default=True)
@click.option('--channels', type=int, default=128, show_default=True, help='Feature maps per layer (channel_max)')
@click.option('--device', default='cpu', show_default=True)
@click.option('--threads', type=click.IntRange(min=1), default=None, help='CPU threads [default: one per idle core]')
@click.option('--skip-baselines', is_flag=True, help='Time only our three methods (the per-latent loops are slow)')
@click.option('--lowrank-sweep', is_flag=True, help="Also time 'lowrank' with small Krylov spaces (see above)")
@click.option('--quick', is_flag=True, help='Tiny run (8 px, z_dim 32, 32 channels, 3 latents) to check that it works')
@click.option('--repeats', type=click.IntRange(min=1), default=1, show_default=True,
              help='Interleaved repeats of every method (ranges are printed)')
@click.option('--json', 'json_path', type=click.Path(dir_okay=False), help='Also write the results here')
def main(res, z_dim, num, batch, top_k, space, channels, device, threads, skip_baselines, lowrank_sweep, quick,
         repeats, json_path):
    set_threads(threads)
    if quick:
        res, z_dim, num, batch, top_k, channels = 8, 32, 3, 3, 8, 32
    device = torch.device(device)
    torch.manual_seed(0)
    G = Generator(z_dim=z_dim, c_dim=0, w_dim=z_dim, img_resolution=res, img_channels=3,
                  channel_base=channels * 16, channel_max=channels).eval().requires_grad_(False).to(device)
    f = volume.make_space_fn(G, space)
    z = torch.randn([num, z_dim], generator=torch.Generator().manual_seed(1)).to(device)
    num_projections = min(128, int(np.prod(f(z[:1]).shape[1:])))
    # The defaults (block 10, 16 blocks) need z_dim > 160; smaller latents get a proportionally smaller Krylov space.
    lowrank_block, lowrank_iters = (10, 15) if z_dim > 160 else (max(1, z_dim // 16), 7)
    print(f'StyleGAN2 {res}x{res}, {channels} channels, z_dim {z_dim}, {space} space, {device}, '
          f'{torch.get_num_threads()} threads, {num} latents, batch {batch}, top-{top_k}, lowrank block '
          f'{lowrank_block} x {lowrank_iters + 1}')

    methods = {
        "authors' loop (128 VJPs)": lambda: authors_loop(f, z, num_projections, 0),
        'autograd.functional': lambda: functional_loop(f, z),
        'ours projected': lambda: batched(lambda x: volume.jacobian_singular_values(
            f, x, 'projected', num_projections=num_projections), z, batch),
        'ours exact': lambda: batched(lambda x: volume.jacobian_singular_values(f, x), z, batch),
        'ours lowrank': lambda: batched(lambda x: volume.jacobian_singular_values(
            f, x, 'lowrank', top_k=top_k, block_size=lowrank_block, num_iters=lowrank_iters), z, batch),
    }
    if skip_baselines:
        del methods["authors' loop (128 VJPs)"], methods['autograd.functional']
    cpu_seconds = []

    def timed(fn):
        """Seconds per latent of fn() and the top-K log-volumes of its singular values."""
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        svals = fn()
        _sync(device)
        cpu_seconds.append((time.process_time() - start_cpu) / num)
        return (time.perf_counter() - start) / num, volume.log_volume(svals.cpu(), top_k=top_k).numpy()

    volume.jacobian_singular_values(f, z[:1])  # Warm-up (imports of torch.func, kernels).
    all_times, all_cpu, logvols = {name: [] for name in methods}, {name: [] for name in methods}, {}
    for _ in range(repeats):
        for name, fn in methods.items():
            seconds, logvols[name] = timed(fn)
            all_times[name].append(seconds)
            all_cpu[name].append(cpu_seconds[-1])
    times = {name: min(values) for name, values in all_times.items()}
    for name in methods:
        print(f'{name:26s} {min(all_times[name]):8.3f}-{max(all_times[name]):.3f} s/latent '
              f'({min(all_cpu[name]):.3f}-{max(all_cpu[name]):.3f} CPU s)')

    ref = logvols['ours exact']
    print(f'log-volume spread across latents (exact): {ref.max() - ref.min():.3f} nats')
    for name in methods:
        diff = logvols[name] - ref
        rho = scipy.stats.spearmanr(logvols[name], ref)[0] if num > 2 else float('nan')
        print(f'{name:26s} offset {diff.mean():+8.3f} nats, per-latent error {np.abs(diff - diff.mean()).max():.2e}'
              f' nats, rank corr {rho:.4f}')
    for name in ('ours exact', 'ours lowrank'):
        print(f"time of {name} / ours projected: {times[name] / times['ours projected']:.2f}")
    if lowrank_sweep:
        proj = logvols['ours projected'] - ref
        print(f"lowrank with small Krylov spaces (projected: per-latent error {np.abs(proj - proj.mean()).max():.3f})")
        for block, iters in [(8, 3), (10, 2), (10, 3), (12, 2), (16, 1), (16, 2), (20, 1), (32, 0), (40, 0)]:
            if block * (iters + 1) < top_k or block * (iters + 1) >= z_dim:
                continue
            seconds, logvol = timed(lambda b=block, i=iters: batched(lambda x: volume.jacobian_singular_values(
                f, x, 'lowrank', top_k=top_k, block_size=b, num_iters=i, tol=0), z, batch))
            diff = logvol - ref
            print(f'  block {block:2d} x {iters + 1} blocks ({block * (2 * iters + 1):3d} passes): {seconds:.3f} s/latent, '
                  f'{seconds / times["ours projected"]:.2f} of projected, per-latent error '
                  f'{np.abs(diff - diff.mean()).max():.3f} nats')
    # FLOP floor: the counted FLOPs per latent at the best rate measured here are a lower bound on each method's
    # time (elementwise work, memory traffic and overheads come on top).
    rate = best_rate(channels, res, device)
    flop_runs = {"authors' loop (128 VJPs)": lambda: authors_loop(f, z[:1], num_projections, 0),
                 'ours projected': lambda: volume.jacobian_singular_values(
                     f, z[:batch], 'projected', num_projections=num_projections),
                 'ours exact': lambda: volume.jacobian_singular_values(f, z[:batch]),
                 'ours lowrank': lambda: volume.jacobian_singular_values(
                     f, z[:batch], 'lowrank', top_k=top_k, block_size=lowrank_block, num_iters=lowrank_iters)}
    flops = {name: count_flops(fn) / (1 if name.startswith('authors') else min(batch, num))
             for name, fn in flop_runs.items() if name in methods}
    print(f'FLOP floor at the best measured rate ({rate / 1e9:.0f} GFLOP/s: the 3x3 convolution on 64 images or a '
          f'4096x512x512 matrix product, {torch.get_num_threads()} threads):')
    for name, value in flops.items():
        print(f'  {name:26s} {value / 1e9:6.2f} GFLOP/latent -> at least {value / rate:.3f} s/latent '
              f'(measured {times[name]:.3f}, {min(all_cpu[name]):.3f} CPU s)')
    errors = {}
    for name in methods:
        diff = logvols[name] - ref
        errors[name] = dict(offset=float(diff.mean()), error=float(np.abs(diff - diff.mean()).max()))
    if json_path:
        import json
        with open(json_path, 'w') as f:
            json.dump(dict(res=res, z_dim=z_dim, num=num, batch=batch, channels=channels, top_k=top_k,
                           threads=torch.get_num_threads(), times=all_times, cpu_times=all_cpu, errors=errors,
                           flops_per_latent=flops, best_rate=rate), f, indent=1)
    if skip_baselines:
        return
    base = all_times["authors' loop (128 VJPs)"]
    for name in ('ours projected', 'ours exact', 'ours lowrank'):
        # Paired ratios: each repeat ran the methods back to back.
        ratios = [b / o for b, o in zip(base, all_times[name])]
        cpu_ratios = [b / o for b, o in zip(all_cpu["authors' loop (128 VJPs)"], all_cpu[name])]
        print(f"speed-up of {name} over the authors' loop: {min(ratios):.2f}-{max(ratios):.2f}x "
              f"({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}x in CPU time); "
              f"over autograd.functional: {times['autograd.functional'] / times[name]:.2f}x")


if __name__ == '__main__':
    main()
