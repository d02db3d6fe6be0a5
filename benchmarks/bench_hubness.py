"""Exact k-occurrence: this project against scikit-learn and faiss brute force, in one process, on the same X.

For each N (d = 512 float32 standard normal, k = 5, the hubness authors' convention where every point is its
own first neighbour), prints the seconds of

* ours: sampling.hubness.k_occurrence (float32 GEMMs on symmetric block pairs + exact float64 boundary check),
* scikit-learn: NearestNeighbors(algorithm='brute').fit(X).kneighbors_graph(X), column sums,
* faiss: IndexFlatL2 add + search, bincount (skipped, with a note, when faiss is not installed),

their ratios, whether the counts agree, our achieved GFLOP/s (flops of the distance GEMMs actually run)
against the machine's measured torch.mm rate, and the peak memory of ours at a large N (in a subprocess, from
/proc/self/status VmHWM) against the N x N float32 matrix a naive method would hold.

    python benchmarks/bench_hubness.py --quick          # N = 10,000 only, no memory run
    python benchmarks/bench_hubness.py                  # N = 10,000 and 50,000, memory at N = 200,000

Timings on a shared machine are noisy: each method's best of --repeats runs, interleaved, is reported.
"""

import os
import subprocess
import sys
import time

import click
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sampling import hubness  # noqa: E402

#----------------------------------------------------------------------------

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


class _CountMatmulFlops:
    """Counts the flops of every torch.mm while active (our distance GEMMs are the only ones)."""

    def __enter__(self):
        self.flops = 0
        self._mm = torch.mm

        def counting_mm(a, b, *args, **kwargs):
            self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
            return self._mm(a, b, *args, **kwargs)

        torch.mm = counting_mm
        return self

    def __exit__(self, *exc):
        torch.mm = self._mm


def matmul_rate(repeats=3, rows=8192, dim=512):
    """GFLOP/s of a large float32 torch.mm on this machine (best of `repeats`)."""
    a = torch.randn(rows, dim)
    b = torch.randn(dim, rows)
    torch.mm(a[:512], b[:, :512])  # Warm-up.
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * rows * rows * dim / best / 1e9


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

#----------------------------------------------------------------------------

def bench_size(num, dim, k, repeats, rate):
    x = make_points(num, dim)
    methods = [('ours', run_ours), ('scikit-learn', run_sklearn)]
    if faiss_available():
        methods.append(('faiss', run_faiss))
    seconds = {name: float('inf') for name, _ in methods}
    counts = {}
    flops = 0
    for _ in range(repeats):
        for name, fn in methods:
            with _CountMatmulFlops() as counter:
                t0 = time.perf_counter()
                counts[name] = fn(x, k)
                elapsed = time.perf_counter() - t0
            seconds[name] = min(seconds[name], elapsed)
            if name == 'ours':
                flops = counter.flops

    print(f'\nN = {num:,}, d = {dim}, k = {k} (self counted)')
    for name, _ in methods:
        line = f'  {name:13s} {seconds[name]:8.3f} s'
        if name != 'ours':
            same = int((counts[name] == counts['ours']).sum())
            line += f'   {seconds[name] / seconds["ours"]:5.2f}x slower than ours;' \
                    f' counts equal for {same:,} / {num:,} points'
        print(line)
    if not faiss_available():
        print('  faiss         skipped (not installed: pip install -r requirements-bench.txt)')
    achieved = flops / seconds['ours'] / 1e9
    full = 2 * num * num * (dim + 2)
    print(f'  ours: {flops / 1e9:.1f} GFLOP in distance GEMMs ({flops / full:.2f} of a full N x N product), '
          f'{achieved:.1f} GFLOP/s = {achieved / rate:.0%} of the measured torch.mm rate ({rate:.1f} GFLOP/s)')
    return seconds


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

#----------------------------------------------------------------------------

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
@click.option('--memory-child', type=int, default=None, hidden=True)
def main(quick, sizes, dim, k, repeats, threads, memory_n, memory_child):
    """Time exact k-occurrence: ours vs scikit-learn and faiss brute force."""
    threads = threads or torch.get_num_threads()
    set_threads(threads)
    if memory_child is not None:
        measure_memory_here(memory_child, dim, k)
        return
    try:
        sizes = [10_000] if quick else [int(s) for s in (sizes or '10000,50000').split(',')]
    except ValueError:
        raise click.BadParameter(f'{sizes!r} is not a comma-separated list of integers', param_hint='--sizes') from None
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise click.ClickException('scikit-learn is needed for the baseline: pip install -r requirements-bench.txt') from None

    print(f'torch {torch.__version__}, {threads} thread(s), CPU: {torch.backends.cpu.get_cpu_capability()}, '
          f'load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores')
    rate = matmul_rate()
    print(f'measured torch.mm rate: {rate:.1f} GFLOP/s (8192 x 512 @ 512 x 8192, float32)')
    for num in sizes:
        bench_size(num, dim, k, repeats, rate)
    if not quick and memory_n:
        bench_memory(memory_n, dim, k, threads)


if __name__ == '__main__':
    main()
