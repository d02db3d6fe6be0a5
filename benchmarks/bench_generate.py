"""Images/s of batched generation (generate.py) against NVlabs' algorithm, same network, same process.

Three methods, interleaved on the same seeds in every repeat:
  * per-seed loop: NVlabs' generate.py, one float64 z per forward pass, NVlabs' modulated convolution;
  * batched, NVlabs' mode: our batches with NVlabs' choice of path (generate.py --exact-nvlabs);
  * batched, ours: our batches with the path chosen for the device and batch (generate.py's default; on the
    CPU sampling.synthesis._cpu_synthesis, whose large blocks run one image per torch thread).

    python benchmarks/bench_generate.py                          # 64 and 256 px StyleGAN2, 16 seeds, batch 16
    python benchmarks/bench_generate.py --res 256 --num 32 --device cuda --batch 32

Under load, wall time mostly measures the other processes: the process CPU time is printed beside it.
"""

import json
import os
import sys
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sampling.cli import parse_range  # noqa: E402
from sampling.images import to_uint8  # noqa: E402
from sampling.latents import z_from_seeds  # noqa: E402
from sampling.synthesis import synthesize  # noqa: E402
from torch_utils.threads import set_threads  # noqa: E402
from training.networks_stylegan2 import Generator  # noqa: E402


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def one_at_a_time(G, seeds, device):
    """NVlabs' generate.py loop: one float64 z per forward pass."""
    out = []
    label = torch.zeros([1, G.c_dim], device=device)
    for seed in seeds:
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(device)
        img = G(z, label, truncation_psi=1, noise_mode='const')
        out.append(to_uint8(img))
    return np.concatenate(out)


def conv_flops_per_image(G):
    """Multiply-add FLOPs of the modulated convolutions of one image (the bulk of the work)."""
    total = 0
    for block in (getattr(G.synthesis, f'b{res}') for res in G.synthesis.block_resolutions):
        for name in ('conv0', 'conv1', 'torgb'):
            layer = getattr(block, name, None)
            if layer is not None:
                out_ch, in_ch, kh, kw = layer.weight.shape
                # conv0 upsamples with a stride-2 transposed convolution: kh*kw taps per input pixel.
                pixels = (block.resolution // 2) ** 2 if name == 'conv0' else block.resolution ** 2
                total += 2 * out_ch * in_ch * kh * kw * pixels
    return total


@torch.no_grad()
def conv_rate(device, batch=16):
    """FLOP/s of one large 3x3 convolution per CPU second (the rate the convolutions could reach)."""
    x, w = torch.randn(batch, 512, 32, 32, device=device), torch.randn(512, 512, 3, 3, device=device)
    torch.nn.functional.conv2d(x, w, padding=1)
    best = float('inf')
    for _ in range(3):
        _sync(device)
        start = time.process_time()
        torch.nn.functional.conv2d(x, w, padding=1)
        _sync(device)
        best = min(best, time.process_time() - start)
    return 2 * batch * 512 * 512 * 9 * 32 * 32 / best


def batched(G, seeds, batch_size, exact_nvlabs):
    z = z_from_seeds(seeds, G.z_dim)
    return np.concatenate([to_uint8(img) for img in synthesize(G, z=z, batch_size=batch_size,
                                                                exact_nvlabs=exact_nvlabs)])


def measure(res, num, batch, repeats, device, fp32=True, log=print):
    """Images/s (wall and per CPU second) of the three methods at one resolution; see the module docstring."""
    device = torch.device(device)
    torch.manual_seed(0)
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3, channel_base=16384,
                  channel_max=512, num_fp16_res=0 if fp32 else 4).eval().requires_grad_(False).to(device)
    seeds = list(range(num))
    params = sum(p.numel() for p in G.parameters()) / 1e6
    log(f'StyleGAN2 {res}x{res}, {params:.1f} M parameters, {device}, {torch.get_num_threads()} threads, '
        f'{num} images, batch {batch}, {repeats} repeats')
    methods = {'per-seed loop (NVlabs)': lambda: one_at_a_time(G, seeds, device),
               f'batch {batch}, NVlabs mode': lambda: batched(G, seeds, batch, True),
               f'batch {batch}, ours': lambda: batched(G, seeds, batch, False)}
    batched(G, seeds[:batch], batch, False)  # Warm-up.
    one_at_a_time(G, seeds[:1], device)
    wall = {name: [] for name in methods}
    cpu = {name: [] for name in methods}
    images = {}
    for _ in range(repeats):
        for name, fn in methods.items():
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            images[name] = fn()
            _sync(device)
            wall[name].append(num / (time.perf_counter() - start))
            cpu[name].append(num / (time.process_time() - start_cpu))
    base, nvlabs_batch, ours = methods
    for name in methods:
        log(f'  {name:26s} {min(wall[name]):7.2f}-{max(wall[name]):7.2f} img/s wall, '
            f'{min(cpu[name]):7.2f}-{max(cpu[name]):7.2f} img per CPU second')
    result = dict(res=res, params_m=round(params, 1), num=num, batch=batch, repeats=repeats, device=str(device),
                  threads=torch.get_num_threads(), methods=list(methods), wall=wall, cpu=cpu)
    for ref, key in ((base, 'vs_loop'), (nvlabs_batch, 'vs_nvlabs_batch')):
        # Paired ratios: the two methods ran back to back in each repeat.
        result[key] = dict(wall=[o / b for o, b in zip(wall[ours], wall[ref])],
                           cpu=[o / b for o, b in zip(cpu[ours], cpu[ref])])
        log(f'  ours / {ref}: {min(result[key]["wall"]):.2f}-{max(result[key]["wall"]):.2f}x wall, '
            f'{min(result[key]["cpu"]):.2f}-{max(result[key]["cpu"]):.2f}x CPU')
    flops = conv_flops_per_image(G)
    rate = conv_rate(device)
    result['conv_gflop_per_image'] = flops / 1e9
    result['conv_gflops_per_cpu_s'] = rate / 1e9
    result['bound_img_per_cpu_s'] = rate / flops
    log(f'  bound: {flops / 1e9:.2f} GFLOP of convolutions per image at {rate / 1e9:.0f} GFLOP per CPU second '
        f'(one large convolution) = {rate / flops:.2f} img per CPU second; ours reaches '
        f'{max(cpu[ours]) * flops / rate * 100:.0f} % of it')
    result['max_uint8_diff'] = int(np.abs(images[base].astype(int) - images[ours].astype(int)).max())
    result['nvlabs_batch_max_uint8_diff'] = int(np.abs(images[base].astype(int) -
                                                       images[nvlabs_batch].astype(int)).max())
    log(f'  max uint8 difference from the per-seed loop: ours {result["max_uint8_diff"]}, NVlabs-mode batches '
        f'{result["nvlabs_batch_max_uint8_diff"]}')
    return result


@click.command()
@click.option('--res', type=parse_range, default='64,256', show_default=True, help='Image resolutions')
@click.option('--num', type=int, default=16, show_default=True, help='Images per method and repeat')
@click.option('--batch', type=int, default=16, show_default=True, help='Batch size of the batched paths')
@click.option('--repeats', type=int, default=3, show_default=True, help='Interleaved repeats')
@click.option('--device', default='cpu', show_default=True)
@click.option('--threads', type=click.IntRange(min=1), help='CPU threads [default: one per idle core]')
@click.option('--fp16', is_flag=True, help='Float16 in the 4 highest resolutions (CUDA only, as NVlabs)')
@click.option('--json', 'json_path', type=click.Path(dir_okay=False), help='Also write the results here')
def main(res, num, batch, repeats, device, threads, fp16, json_path):
    set_threads(threads)
    print(f'load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores')
    results = [measure(r, num, batch, repeats, device, fp32=not fp16) for r in res]
    print(f'load average {os.getloadavg()[0]:.2f}')
    if json_path:
        with open(json_path, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
