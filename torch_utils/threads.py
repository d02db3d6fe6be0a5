"""How many CPU threads the compute loops use: chosen from the measured load, or set by the user.

On shared cores torch's intra-op threads collapse when other processes hold the cores (every parallel
region waits for its slowest thread), so by default we take one thread per core that is idle now.
"""

import os

import torch


def available_cores():
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not Linux.
        return os.cpu_count() or 1


def idle_cores(load=None):
    """Cores left over by the 1-minute load average (at least 1)."""
    cores = available_cores()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def set_threads(threads=None):
    """Use ``threads`` intra-op threads in torch and in numpy's BLAS (None: one per idle core). Returns the count."""
    threads = idle_cores() if threads is None else int(threads)
    torch.set_num_threads(threads)
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(limits=threads, user_api='blas')
    except ImportError:
        pass
    return threads
