"""reproduce.py: a two-row table end to end offline, byte-identical reruns, resume after a kill, --dry-run."""

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_generator

import legacy
import reproduce
from paper_tables import runner
from paper_tables.tables import TABLES, Bank, Model, Row, Table


class TinyDetector(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32), 4).flatten(1)


TINY = Table(
    name='tiny', title='Two rows', source='a test', models={'net': Model('tiny StyleGAN2', Bank(space='style',
                                                                                               top_k=4))},
    rows=(Row('naive', 'random', 'net', 'random', ('fid', 'precision'), paper=dict(fid=10.0, precision=0.5)),
          Row('polarity', 'polarity rho 1', 'net', 'polarity:bank={bank},rho=1,top_k=4', ('fid', 'precision'),
              paper=dict(fid=9.0, precision=0.4), baseline='naive')),
    num_latents=24, num_samples=40)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp('tables')
    G = tiny_generator()
    legacy.save_network_pkl(root / 'net.pkl', G=G, G_ema=G)
    real = root / 'real'
    real.mkdir()
    rng = np.random.RandomState(0)
    for i in range(30):
        PIL.Image.fromarray(rng.randint(0, 256, [16, 16, 3]).astype(np.uint8)).save(real / f'{i:03d}.png')
    detector = root / 'tiny.pt'
    torch.jit.save(torch.jit.script(TinyDetector()), str(detector))
    return dict(network=str(root / 'net.pkl'), data=str(real), detector=str(detector))


class _Counting:
    """A script's click command that counts its calls and can be told to fail (a kill) on the n-th."""

    def __init__(self, command, fail_on=None):
        self.command, self.fail_on, self.calls = command, fail_on, 0

    def main(self, args, standalone_mode):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        return self.command.main(args=args, standalone_mode=standalone_mode)


def _run(env, outdir, scripts):
    steps, skipped, setup = runner.plan(TINY, [env['network']], [env['data']], str(outdir), device='cpu',
                                        detector=env['detector'], batch=4, workers=0)
    rows = runner.run(steps, str(outdir), scripts, echo=lambda line: None)
    runner.write(runner.build(TINY, steps, skipped, setup, rows), str(outdir))
    return steps


@pytest.mark.usefixtures('isolated_metrics')
def test_two_row_table_end_to_end_resumes_and_is_byte_identical(env, tmp_path):
    first = tmp_path / 'first'
    steps = _run(env, first, reproduce.SCRIPTS)
    doc = json.loads((first / 'table.json').read_text())
    assert [r['status'] for r in doc['rows']] == ['done', 'done']
    naive, polarity = doc['rows']
    assert naive['metrics']['fid']['paper'] == 10.0 and naive['metrics']['fid']['ours'] > 0
    m = polarity['metrics']['precision']
    assert m['difference'] == pytest.approx(m['ours'] - 0.4)
    assert polarity['claims'][0]['metric'] == 'fid' and polarity['claims'][0]['direction'] == '<'
    assert polarity['claims'][0]['holds'] == (polarity['metrics']['fid']['ours'] < naive['metrics']['fid']['ours'])
    assert doc['models']['net']['network_sha256'] == runner.file_sha256(env['network'])
    md = (first / 'table.md').read_text()
    for step in steps:
        assert step.command in md
    # The row's command, run on its own, gives the row's numbers.
    row_record = json.loads((first / 'rows' / 'naive.json').read_text())
    assert row_record['command'] == steps[0].command

    # Again into a new folder: byte-identical files.
    second = tmp_path / 'second'
    _run(env, second, reproduce.SCRIPTS)
    for name in ('table.json', 'table.md'):
        assert (second / name).read_bytes() == (first / name).read_bytes().replace(
            str(first).encode(), str(second).encode())

    # Killed during the second row, then rerun: the first row is not recomputed, the table is the same.
    killed = tmp_path / 'killed'
    metrics = _Counting(reproduce.SCRIPTS['calc_metrics.py'], fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        _run(env, killed, dict(reproduce.SCRIPTS, **{'calc_metrics.py': metrics}))
    assert (killed / 'rows' / 'naive.json').exists() and not (killed / 'rows' / 'polarity.json').exists()
    metrics = _Counting(reproduce.SCRIPTS['calc_metrics.py'])
    _run(env, killed, dict(reproduce.SCRIPTS, **{'calc_metrics.py': metrics}))
    assert metrics.calls == 1
    assert (killed / 'table.json').read_bytes() == (first / 'table.json').read_bytes().replace(
        str(first).encode(), str(killed).encode())


def test_dry_run_lists_every_command_and_a_cost(tmp_path):
    result = CliRunner().invoke(reproduce.main, ['--table=demo', '--data=digits.zip', f'--outdir={tmp_path}',
                                                 '--dry-run', '--num-latents=10', '--num-samples=100', '--probe=1',
                                                 '--device=cpu'])
    assert result.exit_code == 0, result.output
    steps, _skipped, _setup = runner.plan(TABLES['demo'], [], ['digits.zip'], str(tmp_path), 10, 100,
                                          device='cpu')
    for step in steps:
        assert step.command in result.output
    assert len([s for s in steps if s.kind == 'row']) == len(TABLES['demo'].rows)
    assert 'Estimated total' in result.output and not os.path.exists(tmp_path / 'table.md')


def test_rows_of_models_not_given_are_listed_as_not_run(tmp_path):
    steps, skipped, _setup = runner.plan(TABLES['polarity'], ['church-sg2=church.pkl'], ['church-sg2=church.zip'],
                                         str(tmp_path))
    assert {s.key for s in steps if s.kind == 'row'} == {'church-sg2-naive', 'church-sg2-polarity'}
    assert skipped['car-sg2-naive'].startswith('not run: pass --network car-sg2=')
    with pytest.raises(runner.TableError, match='KEY=PATH'):
        runner.plan(TABLES['polarity'], ['church.pkl'], [], str(tmp_path))
    with pytest.raises(runner.TableError, match='--rows: nope not in the polarity table'):
        runner.plan(TABLES['polarity'], [], [], str(tmp_path), only=['nope'])


def test_paper_numbers_and_claims_of_the_magnet_table():
    table = TABLES['magnet']
    fids = {row.id: row.paper['fid'] for row in table.rows}
    assert fids == {'psi1-naive': 2.74, 'psi1-magnet': 2.66, 'psi0.9-naive': 5.05, 'psi0.9-magnet': 4.29,
                    'psi0.7-naive': 21.34, 'psi0.7-magnet': 19.41, 'psi0.5-naive': 58.33, 'psi0.5-magnet': 54.47}
    row = next(r for r in table.rows if r.id == 'psi0.9-magnet')
    assert row.sampler == 'mix:0.2*polarity(bank={bank},rho=1,top_k=30)+0.8*random;trunc=0.9'
    assert table.claims(row) == (('fid', '<'),)


def test_torchrun_two_processes_write_the_table_of_one(tmp_path):
    """Under torchrun the ranks share the bank (shards, then rank 0 merges) and each evaluation; same table."""
    import shutil
    import subprocess
    import sys

    from helpers import REPO_ROOT
    data = tmp_path / 'digits'
    data.mkdir()
    rng = np.random.RandomState(0)
    for i in range(24):
        PIL.Image.fromarray(rng.randint(0, 256, [32, 32]).astype(np.uint8)).save(data / f'{i:03d}.png')
    args = ['--table=demo', '--rows=random,magnet', f'--data={data}', '--num-latents=16', '--num-samples=24',
            '--device=cpu', '--workers=0']
    env = dict(os.environ, OMP_NUM_THREADS='1', DNNLIB_CACHE_DIR=str(tmp_path / 'cache'))
    for var in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK'):
        env.pop(var, None)
    torchrun = shutil.which('torchrun')
    cmd = [torchrun] if torchrun else [sys.executable, '-m', 'torch.distributed.run']
    two = subprocess.run(cmd + ['--standalone', '--nproc_per_node=2', 'reproduce.py', *args,
                                f'--outdir={tmp_path / "two"}'], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run([sys.executable, 'reproduce.py', *args, f'--outdir={tmp_path / "one"}'], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    doc_two = json.loads((tmp_path / 'two' / 'table.json').read_text().replace(str(tmp_path / 'two'), 'OUT'))
    doc_one = json.loads((tmp_path / 'one' / 'table.json').read_text().replace(str(tmp_path / 'one'), 'OUT'))
    assert doc_two == doc_one
    assert [r['status'] for r in doc_one['rows']][:2] == ['done', 'done']
    assert all(r['status'] == 'not run: not in --rows' for r in doc_one['rows'][2:])


def test_dataset_hash_is_of_content(tmp_path):
    import time
    import zipfile
    paths = []
    for i, stamp in enumerate(((2020, 1, 1, 0, 0, 0), (2024, 5, 6, 7, 8, 10))):
        path = tmp_path / f'{i}.zip'
        with zipfile.ZipFile(path, 'w') as archive:
            for name, data in (('b/img1.png', b'\x01' * 10), ('a/img0.png', b'\x00' * 10)):
                archive.writestr(zipfile.ZipInfo(name, date_time=stamp), data)
        paths.append(path)
    time.sleep(0)
    assert paths[0].read_bytes() != paths[1].read_bytes()
    assert runner.data_sha256(str(paths[0])) == runner.data_sha256(str(paths[1]))
    folder = tmp_path / 'folder'
    (folder / 'a').mkdir(parents=True)
    (folder / 'b').mkdir()
    (folder / 'a' / 'img0.png').write_bytes(b'\x00' * 10)
    (folder / 'b' / 'img1.png').write_bytes(b'\x01' * 10)
    assert runner.data_sha256(str(folder)) == runner.data_sha256(str(paths[0]))
    (folder / 'b' / 'img1.png').write_bytes(b'\x02' * 10)
    assert runner.data_sha256(str(folder)) != runner.data_sha256(str(paths[0]))
