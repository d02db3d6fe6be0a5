"""Shared pytest setup: import the repository's top-level packages and locate the shared fixtures."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# Reference arrays computed with NVlabs' own code (plain arrays, no code): see tests/data/nvlabs/README.md.
FIXTURES_DIR = os.path.join(REPO_ROOT, 'tests', 'data', 'nvlabs')


@pytest.fixture(scope='session')
def fixtures_dir():
    if not os.path.isdir(FIXTURES_DIR):
        pytest.fail(f'NVlabs reference fixtures not found at {FIXTURES_DIR}')
    return FIXTURES_DIR


@pytest.fixture(autouse=True, scope='session')
def _one_torch_thread():
    """Test tensors are tiny: intra-op threads only add barrier waits (10x slower on a busy 2-core machine)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
