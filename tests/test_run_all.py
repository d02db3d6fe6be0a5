"""benchmarks/run_all.py rewrites only the README's marked benchmark table, from the benchmarks' results."""

import importlib.util
import os

from click.testing import CliRunner
from helpers import REPO_ROOT


def _load_run_all():
    spec = importlib.util.spec_from_file_location('run_all', os.path.join(REPO_ROOT, 'benchmarks', 'run_all.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_all_rewrites_the_marked_table_and_keeps_other_rows(tmp_path, monkeypatch):
    run_all = _load_run_all()
    startup = dict(load=[0.12, 0.15], dynamo=False, **{'import': [1.0, 1.25]})
    monkeypatch.setattr(run_all, 'run_benchmark', lambda name, threads, log: startup)
    old_memory = '| what | `python benchmarks/bench_hubness.py --sizes 1000 --memory-n 200000 --repeats 1` | +0.5 GiB |'
    readme = tmp_path / 'README.md'
    readme.write_text(f'# Title\n\nbefore\n{run_all.BEGIN}\nMeasured long ago.\n\n{old_memory}\n| x | `gone` | y |\n'
                      f'{run_all.END}\nafter\n')
    result = CliRunner().invoke(run_all.main, ['--only', 'startup', '--readme', str(readme),
                                               '--log', str(tmp_path / 'log')])
    assert result.exit_code == 0, result.output
    text = readme.read_text()
    assert text.startswith('# Title\n\nbefore\n') and text.endswith(f'{run_all.END}\nafter\n')
    assert '`gone`' not in text
    assert 'import 1.00-1.25 s, then loading the embedded network 0.120-0.150 s; torch._dynamo imported: False' in text
    assert '+0.5 GiB' in text  # A row not rerun keeps its text ...
    assert 'Measured long ago. Rows startup rerun ' in text  # ... and the header says which rows are new.


def test_run_all_refuses_a_readme_without_markers(tmp_path):
    run_all = _load_run_all()
    readme = tmp_path / 'README.md'
    readme.write_text('# no table markers\n')
    result = CliRunner().invoke(run_all.main, ['--only', 'startup', '--readme', str(readme)])
    assert result.exit_code == 1 and 'markers' in result.output
    assert readme.read_text() == '# no table markers\n'
