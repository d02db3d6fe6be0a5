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


@pytest.fixture
def isolated_metrics(monkeypatch, tmp_path):
    """A private dnnlib cache, an empty in-memory detector cache, no proxies and no torchrun variables."""
    from dnnlib import util
    from metrics import metric_utils
    for var in ('http_proxy', 'https_proxy', 'all_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY',
                'WORLD_SIZE', 'RANK', 'LOCAL_RANK'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    monkeypatch.setattr(util, '_dnnlib_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setattr(metric_utils, '_detector_cache', {})
