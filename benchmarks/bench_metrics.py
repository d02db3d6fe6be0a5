"""Time and peak memory of precision/recall: NVlabs' algorithm vs ours vs the hubness-aware variant.

Each method runs in its own subprocess on the same synthetic features (regenerated from a seed),
so that its peak resident memory (VmHWM) can be read without the others' allocations. The
baseline is a plain re-implementation of the algorithm NVlabs' ``pr50k3`` describes (see
docs/nvlabs-compat.md): each 10000-row batch is compared with *all* columns at once. It uses the
same per-block distance arithmetic as ours on the same device, so the ratios measure the
algorithmic differences (bounded blocks, skipping probes that already hit, hub subsets).

Usage (from the repository root):

    python benchmarks/bench_metrics.py                 # 20000 x 20000 features, d = 512
    python benchmarks/bench_metrics.py --dim 4096
    python benchmarks/bench_metrics.py --quick         # 3000 x 3000, d = 512
    python benchmarks/bench_metrics.py --errors --num 5000 --data datasets/mnist32.zip

``--errors`` measures instead how far the hubness-aware efficient P/R is from the full metric, in
absolute and relative terms, for both hub conventions: on the synthetic features (three seeds) and,
with ``--data``, on the MNIST classifier's features (``pretrained/mnist_classifier.pt``, the detector of
the README's sampler table) of ``--num`` digits of the dataset (all of them, or the seeded subset NVlabs'
``max_size`` keeps) against ``--num`` images of the
embedded network (``pretrained/mnist32-stylegan2.pkl``, seeds 0.., uniform random classes, psi 1).
"""

import json
import os
import subprocess
import sys
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metrics.efficient_precision_recall import (  # noqa: E402
    efficient_precision_recall_from_features,
    efficient_precision_recall_with_error,
)
from metrics.precision_recall import precision_recall_from_features  # noqa: E402

METHODS = ('nvlabs', 'ours', 'efficient')

# ----------------------------------------------------------------------------


def make_features(num, dim, seed=0):
    """Clustered synthetic features, loosely like detector embeddings: real and generated overlap partly."""
    rng = np.random.RandomState(seed)
    centers = rng.randn(64, dim).astype(np.float32) * 1.5
    real = centers[rng.randint(64, size=num)] + rng.randn(num, dim).astype(np.float32)
    # 16 clusters dropped and a slight scale change: precision ~0.68, recall ~0.49 at 3000 x 512.
    gen = centers[rng.randint(48, size=num)] * 1.05 + rng.randn(num, dim).astype(np.float32)
    return real, gen


def _distances(x, y):
    # Same arithmetic as NVlabs on CUDA (float16 cdist); on CPU float32 cdist of the float16 values.
    if x.device.type == 'cpu':
        return torch.cdist(x.float(), y.float()).half()
    return torch.cdist(x.unsqueeze(0), y.unsqueeze(0))[0]


def _nvlabs_rows_vs_all(rows, cols, col_batch_size):
    return torch.cat([_distances(rows, cols[c:c + col_batch_size]) for c in range(0, len(cols), col_batch_size)], dim=1)


def nvlabs_precision_recall(real, gen, nhood_size=3, row_batch_size=10000, col_batch_size=10000, device='cpu'):
    """Baseline: NVlabs' documented algorithm, one full row batch x all columns at a time."""
    real = torch.from_numpy(real).to(device=device, dtype=torch.float16)
    gen = torch.from_numpy(gen).to(device=device, dtype=torch.float16)
    results = []
    for manifold, probes in [(real, gen), (gen, real)]:
        radii = []
        for r in range(0, len(manifold), row_batch_size):
            dist = _nvlabs_rows_vs_all(manifold[r:r + row_batch_size], manifold, col_batch_size)
            radii.append(dist.to(torch.float32).kthvalue(nhood_size + 1, dim=1).values.to(torch.float16))
            del dist
        radii = torch.cat(radii)
        hits = []
        for r in range(0, len(probes), row_batch_size):
            dist = _nvlabs_rows_vs_all(probes[r:r + row_batch_size], manifold, col_batch_size)
            hits.append((dist <= radii.unsqueeze(0)).any(dim=1))
            del dist
        results.append(torch.cat(hits).to(torch.float64).mean().item())
    return tuple(results)

# ----------------------------------------------------------------------------


def _vm_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    return 0


def run_worker(method, num, dim, device):
    real, gen = make_features(num, dim)
    torch.zeros(1, device=device)  # initialise the device before the memory baseline
    base_kib = _vm_kib('VmRSS')
    if device != 'cpu':
        torch.cuda.reset_peak_memory_stats()
    fn = dict(nvlabs=nvlabs_precision_recall, ours=precision_recall_from_features,
              efficient=efficient_precision_recall_from_features)[method]
    start = time.perf_counter()
    precision, recall = fn(real, gen, device=device)
    if device != 'cpu':
        torch.cuda.synchronize()
    out = dict(precision=precision, recall=recall, seconds=time.perf_counter() - start)
    out['extra_rss_mib'] = (_vm_kib('VmHWM') - base_kib) / 1024
    if device != 'cpu':
        out['peak_device_mib'] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(json.dumps(out))


def run_in_subprocess(method, num, dim, device):
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', method, '--num', str(num), '--dim', str(dim),
           '--device', device]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise click.ClickException(f'{method} worker failed:\n{proc.stderr.strip()}')
    return json.loads(proc.stdout.strip().splitlines()[-1])

# ----------------------------------------------------------------------------


# ----------------------------------------------------------------------------
# Error of the efficient metric against the full one.


def mnist_classifier_features(data, num, network='pretrained/mnist32-stylegan2.pkl',
                              detector='pretrained/mnist_classifier.pt', seed=0, batch_size=250):
    """Classifier features of ``num`` digits of ``data`` (its max_size subset) and of ``num`` generated digits."""
    import legacy
    from metrics import metric_utils
    from sampling.images import to_uint8
    from sampling.latents import random_labels, z_from_seeds
    from sampling.synthesis import synthesize
    from training.dataset import ImageFolderDataset

    dataset = ImageFolderDataset(data, max_size=num)
    real = np.stack([dataset[i][0] for i in range(len(dataset))])
    G = legacy.load_network(network)
    z, c = z_from_seeds(range(seed, seed + num), G.z_dim), random_labels(seed, num, G.c_dim)
    gen = np.concatenate([to_uint8(img).transpose(0, 3, 1, 2)
                          for img in synthesize(G, z=z, c=c, noise_mode='const', batch_size=batch_size)])
    net = metric_utils.get_feature_detector(detector)
    with torch.no_grad():
        return [torch.cat([metric_utils.run_detector(net, torch.from_numpy(images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)]).numpy() for images in (real, gen)]


def print_errors(name, real, gen):
    for count_self, rule in ((True, "authors' (N_3 >= 3)"), (False, 'strict (N_3 > 3)')):
        out = efficient_precision_recall_with_error(real, gen, count_self=count_self)
        print(f"| {name} | {rule} | {out['num_real_hubs']} / {out['num_gen_hubs']} | "
              f"{out['full_precision']:.3f} -> {out['precision']:.3f} | {out['precision_error']:+.3f} "
              f"({100 * out['precision_rel_error']:+.1f} %) | {out['full_recall']:.3f} -> {out['recall']:.3f} | "
              f"{out['recall_error']:+.3f} ({100 * out['recall_rel_error']:+.1f} %) |", flush=True)


def run_errors(num, dim, data):
    print('| features | hub rule | hubs real / gen | precision full -> efficient | error (relative) | '
          'recall full -> efficient | error (relative) |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for seed in range(3):
        print_errors(f'synthetic {num} x {num}, d = {dim}, seed {seed}', *make_features(num, dim, seed=seed))
    if data is not None:
        print_errors(f'MNIST classifier, {num} real vs {num} generated', *mnist_classifier_features(data, num))

# ----------------------------------------------------------------------------


@click.command()
@click.option('--num', type=click.IntRange(min=10), default=20000, show_default=True, help='Real and generated samples each')
@click.option('--dim', type=click.IntRange(min=1), default=512, show_default=True, help='Feature dimension (VGG16: 4096)')
@click.option('--device', default='cuda' if torch.cuda.is_available() else 'cpu', show_default=True)
@click.option('--quick', is_flag=True, help='Small run: 3000 samples each')
@click.option('--errors', is_flag=True, help='Measure the efficient metric\'s error instead (see the docstring)')
@click.option('--data', metavar='ZIP', help='With --errors: MNIST dataset (dataset_tool.py output), classifier features')
@click.option('--worker', type=click.Choice(METHODS), default=None, hidden=True)
@click.option('--json', 'json_path', type=click.Path(dir_okay=False), help='Also write the results here')
def main(num, dim, device, quick, errors, data, worker, json_path):
    """Compare precision/recall implementations: time, peak memory, agreement."""
    if quick:
        num = min(num, 3000)
    if errors:
        run_errors(num, dim, data)
        return
    if worker is not None:
        run_worker(worker, num, dim, device)
        return
    print(f'precision/recall, {num} real x {num} generated, d = {dim}, device {device}, '
          f'{torch.get_num_threads()} threads')
    res = {m: run_in_subprocess(m, num, dim, device) for m in METHODS}
    for m in METHODS:
        r = res[m]
        mem = f"extra RSS {r['extra_rss_mib']:8.1f} MiB" + (f", device {r['peak_device_mib']:.1f} MiB" if 'peak_device_mib' in r else '')
        print(f"{m:10s} {r['seconds']:8.2f} s   {mem}   precision {r['precision']:.4f} recall {r['recall']:.4f}")
    base, ours, eff = res['nvlabs'], res['ours'], res['efficient']
    same = (base['precision'], base['recall']) == (ours['precision'], ours['recall'])
    print(f"ours vs nvlabs:      time x{base['seconds'] / ours['seconds']:.2f} faster, "
          f"memory x{ours['extra_rss_mib'] / max(base['extra_rss_mib'], 1e-9):.2f}, identical result: {same}")
    print(f"efficient vs ours:   time x{ours['seconds'] / eff['seconds']:.2f} faster, "
          f"memory x{eff['extra_rss_mib'] / max(ours['extra_rss_mib'], 1e-9):.2f}")
    print(f"efficient error vs full metric: precision {eff['precision'] - ours['precision']:+.4f}, "
          f"recall {eff['recall'] - ours['recall']:+.4f} (absolute)")
    if json_path:
        with open(json_path, 'w') as f:
            json.dump(dict(num=num, dim=dim, device=device, identical=same, **res), f, indent=1)


if __name__ == '__main__':
    main()  # pylint: disable=no-value-for-parameter

# ----------------------------------------------------------------------------
