"""Thread policy: threads from the load by default, --threads on the command line."""

import click
import pytest
import threadpoolctl
import torch
from click.testing import CliRunner

from sampling import cli
from torch_utils import threads


@pytest.fixture(autouse=True)
def restore_threads():
    old = torch.get_num_threads()
    yield
    threads.set_threads(old)


@pytest.mark.parametrize('load, expected', [(0.0, 4), (1.4, 3), (2.6, 1), (3.6, 1), (9.0, 1)])
def test_idle_cores_from_the_load(monkeypatch, load, expected):
    monkeypatch.setattr(threads, 'available_cores', lambda: 4)
    assert threads.idle_cores(load) == expected


def _blas_threads():
    return max(info['num_threads'] for info in threadpoolctl.threadpool_info() if info['user_api'] == 'blas')


def test_threads_option_sets_torch_and_blas_threads(monkeypatch):
    seen = []

    @click.command()
    @cli.threads_option
    def main():
        seen.append((torch.get_num_threads(), _blas_threads()))

    assert CliRunner().invoke(main, ['--threads', '1']).exit_code == 0
    assert seen[-1] == (1, 1)
    monkeypatch.setattr(threads, 'idle_cores', lambda load=None: 2)
    assert CliRunner().invoke(main, []).exit_code == 0
    assert seen[-1][0] == 2
    result = CliRunner().invoke(main, ['--threads', '0'])
    assert result.exit_code == 2 and '--threads' in result.output
