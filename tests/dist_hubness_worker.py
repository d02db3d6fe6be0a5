"""torchrun worker for tests/test_hubness.py: k_occurrence_distributed on the CPU with gloo.

Usage: torchrun --standalone --nproc_per_node N tests/dist_hubness_worker.py INPUT.npz OUTPUT.npz

Every rank loads the same points from INPUT (keys x, k, block_size); rank 0 writes the counts for both
conventions to OUTPUT, and whether the ranks noticed being given different points.
"""

import os
import sys

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sampling.hubness import k_occurrence_distributed  # noqa: E402


def main(src, dst):
    dist.init_process_group('gloo')
    with np.load(src) as data:
        x, k, block_size = data['x'], int(data['k']), int(data['block_size'])
    textbook = k_occurrence_distributed(x, k, count_self=False, block_size=block_size)
    authors = k_occurrence_distributed(torch.from_numpy(x), k, count_self=True, block_size=block_size)

    skewed = x.copy()
    skewed[0, 0] += dist.get_rank()
    try:
        k_occurrence_distributed(skewed, k)
        mismatch_detected = False
    except ValueError:
        mismatch_detected = True

    if dist.get_rank() == 0:
        np.savez(dst, textbook=textbook.numpy(), authors=authors.numpy(), mismatch_detected=mismatch_detected,
                 world_size=dist.get_world_size())
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
