"""Exact k-occurrence: this project against scikit-learn and faiss brute force, in one process, on the same X.

For each N (d = 512 float32 standard normal, k = 5, the hubness authors' convention where every point is its
own first neighbour), prints the seconds of

* ours: sampling.hubness.k_occurrence (float32 GEMMs on symmetric block pairs + exact float64 boundary check),
* scikit-learn: NearestNeighbors(algorithm='brute').fit(X).kneighbors_graph(X), column sums,
* faiss: IndexFlatL2 add + search, bincount (skipped, with a note, when faiss is not installed),

their ratios, whether the counts agree, our achieved GFLOP/s (flops of the distance GEMMs actually run)
against the machine's measured matrix-multiply rate (the faster of torch.mm and numpy's BLAS on one large
float32 product; ours runs its CPU tiles through whichever of the two it timed faster on its tile shape), and
the peak memory of ours at a large N (in a subprocess, from /proc/self/status VmHWM) against the N x N float32
matrix a naive method would hold. ``--threads 1`` compares the methods' efficiency without the noise of shared
cores (faiss's OpenMP threads lose much more than ours when other processes hold a core).

    python benchmarks/bench_hubness.py --quick          # N = 10,000 only, no memory run
    python benchmarks/bench_hubness.py                  # N = 10,000 and 50,000, memory at N = 200,000
    python benchmarks/bench_hubness.py --device cuda --sizes 100000 --repeats 2     # GPU, see below

With ``--device cuda`` the comparison is on the GPU instead: ours (the same exact function, computing on the GPU)
against the usual fast approximate recipe, one full N x N float16 matrix G = X X^T turned into squared distances
|x_i|^2 + |x_j|^2 - 2 G in place, top-k per row (self forced first) and a bincount. X starts on the GPU (float32)
for both. Reported: seconds, their ratio, the peak GPU memory of each (torch.cuda.max_memory_allocated) and at how
many points the float16 counts differ from the exact ones. scikit-learn and faiss (CPU) run only with
--cpu-baselines; the CPU memory run is skipped. At N = 100,000 the float16 matrix alone takes 18.6 GiB.

Timings on a shared machine are noisy: each method's best of --repeats runs, interleaved, is reported.
"""

import math
import os
import subprocess
import sys
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sampling import hubness  # noqa: E402

# ----------------------------------------------------------------------------

def make_points(num, dim, seed=0, chunk=8192):
    """Standard normal float32 points, drawn in chunks so that no float64 copy of X ever exists."""
    rs = np.random.RandomState(seed)
    x = np.empty([num, dim], dtype=np.float32)
    for i0 in range(0, num, chunk):
        x[i0 : i0 + chunk] = rs.standard_normal([min(chunk, num - i0), dim])
    return x


def run_ours(x, k):
    return hubness.k_occurrence(x, k, count_self=True).numpy()


def run_sklearn(x, k):
    from sklearn.neighbors import NearestNeighbors

    graph = NearestNeighbors(n_neighbors=k, algorithm='brute').fit(x).kneighbors_graph(x)
    return np.asarray(graph.sum(axis=0)).ravel().astype(np.int64)


def run_faiss(x, k):
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, idx = index.search(x, k)
    return np.bincount(idx.ravel(), minlength=x.shape[0])


def _best_time(fn, repeats):
    fn()  # Warm-up.
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_rates(repeats=3, rows=8192, dim=512):
    """GFLOP/s of a large float32 product on this machine (best of `repeats`): torch.mm and numpy's BLAS."""
    a = torch.randn(rows, dim)
    b = torch.randn(dim, rows)
    flops = 2 * rows * rows * dim
    an, bn = a.numpy(), np.ascontiguousarray(b.numpy())
    return dict(torch=flops / _best_time(lambda: torch.mm(a, b), repeats) / 1e9,
                numpy=flops / _best_time(lambda: an @ bn, repeats) / 1e9)


def faiss_available():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def set_threads(threads):
    torch.set_num_threads(threads)
    os.environ['OMP_NUM_THREADS'] = str(threads)
    if faiss_available():
        import faiss
        faiss.omp_set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)  # BLAS of numpy/scipy (scikit-learn).
    except ImportError:
        pass

# ----------------------------------------------------------------------------

def bench_size(num, dim, k, repeats, rate):
    x = make_points(num, dim)
    methods = [('ours', run_ours), ('scikit-learn', run_sklearn)]
    if faiss_available():
        methods.append(('faiss', run_faiss))
    seconds = {name: float('inf') for name, _ in methods}
    counts = {}
    flops = hubness.distance_gemm_flops(num, dim)
    cpu_seconds = {name: float('inf') for name, _ in methods}
    for _ in range(repeats):
        for name, fn in methods:
            t0, c0 = time.perf_counter(), time.process_time()
            counts[name] = fn(x, k)
            elapsed = time.perf_counter() - t0
            seconds[name] = min(seconds[name], elapsed)
            cpu_seconds[name] = min(cpu_seconds[name], time.process_time() - c0)

    print(f'\nN = {num:,}, d = {dim}, k = {k} (self counted)')
    result = dict(num=num, dim=dim, k=k, repeats=repeats, seconds=seconds, cpu_seconds=cpu_seconds, same={})
    for name, _ in methods:
        line = f'  {name:13s} {seconds[name]:8.3f} s ({cpu_seconds[name]:.3f} CPU s)'
        if name != 'ours':
            same = int((counts[name] == counts['ours']).sum())
            result['same'][name] = same
            ratio = seconds[name] / seconds['ours']
            line += f'   {ratio:5.2f}x slower than ours;' if ratio >= 1 else f'   {1 / ratio:5.2f}x faster than ours;'
            line += f' counts equal for {same:,} / {num:,} points'
        print(line)
    if not faiss_available():
        print('  faiss         skipped (not installed: pip install -r requirements-bench.txt)')
    achieved = flops / seconds['ours'] / 1e9
    full = 2 * num * num * (dim + 2)
    print(f'  ours: {flops / 1e9:.1f} GFLOP in distance GEMMs ({flops / full:.2f} of a full N x N product), '
          f'{achieved:.1f} GFLOP/s = {achieved / rate:.0%} of the measured matrix-multiply rate ({rate:.1f} GFLOP/s)')
    result.update(gflop=flops / 1e9, gflops=achieved, rate=rate)
    return result


def proc_status_bytes(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'no {field} in /proc/self/status')


def measure_memory_here(num, dim, k):
    x = make_points(num, dim)
    before = proc_status_bytes('VmRSS')
    t0 = time.perf_counter()
    hubness.k_occurrence(x, k, count_self=True)
    elapsed = time.perf_counter() - t0
    print(f'{before} {proc_status_bytes("VmHWM")} {elapsed}')


def bench_memory(num, dim, k, threads):
    print(f'\nPeak memory of ours at N = {num:,}, d = {dim} (subprocess; this runs the full computation)...',
          flush=True)
    cmd = [sys.executable, os.path.abspath(__file__), '--memory-child', str(num), '--dim', str(dim), '--k', str(k),
           '--threads', str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    before, peak, elapsed = int(out[0]), int(out[1]), float(out[2])
    gib = 1024 ** 3
    added = max(peak - before, 1)
    naive = num * num * 4
    print(f'  resident before the call {before / gib:.2f} GiB (X itself: {num * dim * 4 / gib:.2f} GiB); '
          f'peak during it {peak / gib:.2f} GiB: ours added at most {added / gib:.2f} GiB')
    print(f'  an N x N float32 distance matrix alone would take {naive / gib:.0f} GiB, {naive / added:.0f}x that '
          f'({elapsed:.0f} s for the run)')
    return dict(num=num, added_gib=added / gib, naive_gib=naive / gib, seconds=elapsed)

# ----------------------------------------------------------------------------
# GPU: ours against one full N x N float16 matrix.

def full_matrix_counts(x, k, dtype=torch.float16, row_chunk=4096):
    """Baseline k-occurrence (self counted) from one N x N matrix of squared distances in `dtype`, on x's device.

    G = X X^T is materialised whole ([N, N] in `dtype`), then overwritten in place, one row chunk at a time, with
    |x_i|^2 + |x_j|^2 - 2 G_ij; each point's own entry is set to -inf so that it is its first neighbour (in float16
    its computed distance to itself need not be the smallest of its row). The k smallest entries of each row are
    its neighbours; their indices are counted. Temporaries beyond G are one chunk's top-k, never another N x N.
    """
    num = x.shape[0]
    xh = x.to(dtype)
    sq = (xh * xh).sum(dim=1)
    dist = xh @ xh.T
    nbrs = torch.empty([num, k], dtype=torch.int64, device=x.device)
    for r0 in range(0, num, row_chunk):
        r1 = min(r0 + row_chunk, num)
        rows = dist[r0:r1]
        rows.mul_(-2).add_(sq[None, :]).add_(sq[r0:r1, None])
        rows.diagonal(offset=r0).fill_(-math.inf)
        nbrs[r0:r1] = rows.topk(k, dim=1, largest=False, sorted=False).indices
    del dist
    return torch.bincount(nbrs.flatten(), minlength=num).cpu()


def run_ours_on(x, k, device):
    return hubness.k_occurrence(x, k, count_self=True, device=device)


def time_on_gpu(fn, device):
    """(result, seconds, peak bytes allocated during the call, bytes allocated before it) of fn() on a CUDA device."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    result = fn()
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    return result, elapsed, torch.cuda.max_memory_allocated(device), before


def bench_size_gpu(num, dim, k, repeats, device, cpu_baselines):
    x_host = make_points(num, dim)
    x = torch.from_numpy(x_host).to(device)
    methods = [('ours', lambda: run_ours_on(x, k, device)),
               ('full float16', lambda: full_matrix_counts(x, k))]
    seconds = {name: float('inf') for name, _ in methods}
    peak, added, counts = {}, {}, {}
    flops = hubness.distance_gemm_flops(num, dim, device=device)
    for _ in range(repeats):
        for name, fn in methods:
            result, elapsed, peak_bytes, before = time_on_gpu(fn, device)
            counts[name] = result.numpy()
            seconds[name] = min(seconds[name], elapsed)
            peak[name] = max(peak.get(name, 0), peak_bytes)
            added[name] = max(added.get(name, 0), peak_bytes - before)

    gib = 1024 ** 3
    print(f'\nN = {num:,}, d = {dim}, k = {k} (self counted), on {device}; X already on the GPU '
          f'({num * dim * 4 / gib:.2f} GiB float32)')
    for name, _ in methods:
        print(f'  {name:13s} {seconds[name]:8.3f} s   peak GPU memory {peak[name] / gib:6.2f} GiB allocated '
              f'({added[name] / gib:6.2f} GiB above what was allocated before the call)')
    print(f'  time ours / full float16: {seconds["ours"] / seconds["full float16"]:.2f}; '
          f'peak memory full float16 / ours: {peak["full float16"] / peak["ours"]:.1f}x '
          f'(an N x N float16 matrix is {num * num * 2 / gib:.2f} GiB)')
    diff = counts['full float16'] != counts['ours']
    print(f'  counts of the float16 baseline differ from the exact ones at {int(diff.sum()):,} / {num:,} points '
          f'({diff.mean():.2%}), max |difference| {int(np.abs(counts["full float16"] - counts["ours"]).max())}')
    print(f'  ours: {flops / 1e9:.1f} GFLOP in float32 distance GEMMs, {flops / seconds["ours"] / 1e12:.2f} TFLOP/s '
          f'over the whole call')
    if cpu_baselines:
        cpu_methods = [('scikit-learn', run_sklearn)] + ([('faiss', run_faiss)] if faiss_available() else [])
        for name, fn in cpu_methods:
            t0 = time.perf_counter()
            result = fn(x_host, k)
            elapsed = time.perf_counter() - t0
            same = int((result == counts['ours']).sum())
            print(f'  {name:13s} {elapsed:8.3f} s on the CPU (one run, X on the host), '
                  f'{elapsed / seconds["ours"]:.1f}x ours on the GPU; counts equal for {same:,} / {num:,} points')
        if not faiss_available():
            print('  faiss         skipped (not installed: pip install -r requirements-bench.txt)')
    return seconds


def warm_up_gpu(dim, k, device, num=4096):
    """Run both GPU methods once on a small N: CUDA context, cuBLAS handles and kernels are then initialised."""
    x = torch.from_numpy(make_points(num, dim, seed=1)).to(device)
    run_ours_on(x, k, device)
    full_matrix_counts(x, k)
    torch.cuda.synchronize(device)

# ----------------------------------------------------------------------------

@click.command()
@click.option('--quick', is_flag=True, help='Only N = 10,000, and no memory run.')
@click.option('--sizes', type=str, default=None, help='Comma-separated N values (default 10000,50000).')
@click.option('--dim', type=click.IntRange(min=1), default=512, show_default=True)
@click.option('--k', type=click.IntRange(min=1), default=5, show_default=True)
@click.option('--repeats', type=click.IntRange(min=1), default=2, show_default=True,
              help='Runs per method (best is reported).')
@click.option('--threads', type=click.IntRange(min=1), default=None,
              help='Threads for every method (default: torch.get_num_threads()).')
@click.option('--memory-n', type=click.IntRange(min=0), default=200_000, show_default=True,
              help='N of the peak-memory run (0: skip).')
@click.option('--device', type=str, default='cpu', show_default=True,
              help="'cpu', or 'cuda' / 'cuda:N': ours on the GPU against a full N x N float16 matrix.")
@click.option('--cpu-baselines', is_flag=True, help='With a CUDA device, also time scikit-learn and faiss on the CPU.')
@click.option('--memory-child', type=int, default=None, hidden=True)
@click.option('--json', 'json_path', type=click.Path(dir_okay=False), help='Also write the CPU results here')
def main(quick, sizes, dim, k, repeats, threads, memory_n, device, cpu_baselines, memory_child, json_path):
    """Time exact k-occurrence: ours vs scikit-learn and faiss brute force (CPU), or vs a float16 N x N matrix (GPU)."""
    device = torch.device(device)
    if device.type not in ('cpu', 'cuda'):
        raise click.BadParameter(f"{device} is neither 'cpu' nor a CUDA device", param_hint='--device')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise click.ClickException(f'--device {device}: CUDA is not available in this torch build / machine')
    threads = threads or torch.get_num_threads()
    set_threads(threads)
    if memory_child is not None:
        measure_memory_here(memory_child, dim, k)
        return
    try:
        sizes = [10_000] if quick else [int(s) for s in (sizes or '10000,50000').split(',')]
    except ValueError:
        raise click.BadParameter(f'{sizes!r} is not a comma-separated list of integers', param_hint='--sizes') from None
    if device.type == 'cuda':
        main_gpu(sizes, dim, k, repeats, threads, device, cpu_baselines)
        return
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise click.ClickException('scikit-learn is needed for the baseline: pip install -r requirements-bench.txt') from None

    print(f'torch {torch.__version__}, {threads} thread(s), CPU: {torch.backends.cpu.get_cpu_capability()}, '
          f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores')
    rates = matmul_rates()
    rate = max(rates.values())
    print(f'measured matrix-multiply rate (8192 x 512 @ 512 x 8192, float32): torch.mm {rates["torch"]:.1f} GFLOP/s, '
          f'numpy {rates["numpy"]:.1f} GFLOP/s')
    results = [bench_size(num, dim, k, repeats, rate) for num in sizes]
    memory = bench_memory(memory_n, dim, k, threads) if not quick and memory_n else None
    if json_path:
        import json
        with open(json_path, 'w') as f:
            json.dump(dict(threads=threads, rates=rates, sizes=results, memory=memory), f, indent=1)


def main_gpu(sizes, dim, k, repeats, threads, device, cpu_baselines):
    if cpu_baselines:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise click.ClickException('scikit-learn is needed for --cpu-baselines: '
                                       'pip install -r requirements-bench.txt') from None
    if device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    torch.cuda.set_device(device)
    props = torch.cuda.get_device_properties(device)
    print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), {device}: {props.name}, '
          f'{props.total_memory / 1024 ** 3:.1f} GiB; float16 GEMM reduced-precision reduction allowed: '
          f'{torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction}; {threads} CPU thread(s)')
    warm_up_gpu(dim, k, device)
    for num in sizes:
        bench_size_gpu(num, dim, k, repeats, device, cpu_baselines)
    print('\nPeak host memory run skipped on a CUDA device (the GPU peaks above are the memory figures).')


if __name__ == '__main__':
    main()
